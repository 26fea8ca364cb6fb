"""ICD-10 with Chinese names: the catalogue the diagnosis picker searches.

Two sources, one shape (code, Chinese name, English name):

* **the village list** shipped with the service (``icd10_village.csv``): the few hundred
  codes a village or township clinic actually writes — common infections, the chronic
  diseases followed up at the village (hypertension, diabetes, COPD, arthritis), the serious
  illnesses that drive households into poverty, injuries, pregnancy, symptoms and Z codes —
  with the Chinese titles of the national edition (GB/T 14396) and the WHO English titles.
  It holds every code the demo data uses. It is what the picker searches until an operator
  loads more;
* **a deployment's full national edition** (国家临床版 or the GB/T 14396 list the province
  uses), loaded from a CSV file with ``health icd10 import FILE.csv``. It is stored in the
  record store as one FHIR CodeSystem (id :data:`CODESYSTEM_ID`, url the ICD-10 system,
  concept display in Chinese, an English designation when the file has one), so every worker
  and host sees the same list and it survives a restore; it then replaces the village list.

The CSV file (UTF-8 with or without BOM, or GB18030 as Excel saves it on Chinese Windows)
has a header row with Chinese or English names: 编码/疾病编码/诊断编码/code,
名称/疾病名称/诊断名称/name_zh (required), 英文名称/name_en (optional).

Searching is in memory (a few tens of thousands of short strings): by code (``E11``,
``e119`` without the dot), by Chinese words (``高血压``), by English words (``hypertension``)
and by the pinyin initials or full pinyin of the Chinese name (``gxy``, ``gaoxueya``).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pypinyin import Style, lazy_pinyin

ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
#: The id of the CodeSystem resource holding a deployment's imported edition.
CODESYSTEM_ID = "icd10-cn"
VILLAGE_LIST = Path(__file__).with_name("icd10_village.csv")

#: Header names a file may use, for each column.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "code": ("编码", "疾病编码", "诊断编码", "代码", "code"),
    "name_zh": ("名称", "疾病名称", "诊断名称", "中文名称", "name_zh", "name"),
    "name_en": ("英文名称", "name_en", "english"),
}
# A letter, two digits, then what editions add after them: ``.9``, ``.900``, ``.x00x002``,
# and the dagger/asterisk marks of dual classification.
_CODE = re.compile(r"^[A-Za-z][0-9]{2}[0-9A-Za-z.]{0,12}[+*†]?$")
_NOT_CODE = re.compile(r"[^0-9a-z]")
_WORD = re.compile(r"[a-z0-9]+")


class Icd10FileError(ValueError):
    """The file cannot be loaded; ``problems`` lists every fault, by row."""

    def __init__(self, problems: Sequence[str], source: str = "ICD-10 file") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}{more}")


@dataclass(frozen=True, slots=True)
class Concept:
    code: str
    name_zh: str
    name_en: str = ""

    def coding(self) -> dict[str, str]:
        return {"system": ICD10_SYSTEM, "code": self.code, "display": self.name_zh}


@dataclass(frozen=True, slots=True)
class _Entry:
    concept: Concept
    code_key: str  # e119
    zh: str
    en: str  # lower case
    en_words: tuple[str, ...]
    pinyin: str  # gaoxueya
    initials: str  # gxy


def _pinyin_keys(name: str) -> tuple[str, str]:
    han = re.sub(r"[^\u3400-\u9fff]", "", name)
    syllables = lazy_pinyin(han, errors="ignore")
    initials = lazy_pinyin(han, style=Style.FIRST_LETTER, errors="ignore")
    return "".join(syllables).lower(), "".join(initials).lower()


class Catalogue:
    """A searchable list of ICD-10 concepts."""

    def __init__(self, concepts: Iterable[Concept], *, source: str) -> None:
        self.source = source
        self._by_code: dict[str, Concept] = {}
        entries = []
        for concept in concepts:
            self._by_code[concept.code.upper()] = concept
            pinyin, initials = _pinyin_keys(concept.name_zh)
            english = concept.name_en.lower()
            entries.append(
                _Entry(
                    concept,
                    _NOT_CODE.sub("", concept.code.lower()),
                    concept.name_zh,
                    english,
                    tuple(_WORD.findall(english)),
                    pinyin,
                    initials,
                )
            )
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, code: str) -> Concept | None:
        return self._by_code.get(code.strip().upper())

    def search(self, query: str, *, limit: int = 15) -> list[Concept]:
        """The best matches for what a doctor typed, best first."""
        text = query.strip()
        if not text:
            return []
        lowered = text.lower()
        code_key = _NOT_CODE.sub("", lowered)
        words = _WORD.findall(lowered)
        has_han = bool(re.search(r"[\u3400-\u9fff]", text))
        letters_only = bool(re.fullmatch(r"[a-z ]+", lowered))
        scored: list[tuple[int, int, str, Concept]] = []
        for entry in self._entries:
            rank: int | None = None
            if code_key and entry.code_key == code_key:
                rank = 0
            elif (
                code_key
                and re.match(r"^[a-z][0-9]", code_key)
                and entry.code_key.startswith(code_key)
            ):
                rank = 1
            elif has_han:
                if entry.zh.startswith(text):
                    rank = 2
                elif text in entry.zh:
                    rank = 3
            else:
                squeezed = lowered.replace(" ", "")
                if letters_only and entry.initials.startswith(squeezed):
                    rank = 2
                elif letters_only and len(squeezed) >= 2 and entry.pinyin.startswith(squeezed):
                    rank = 2
                elif letters_only and len(squeezed) >= 2 and squeezed in entry.initials:
                    rank = 3
                elif words and all(
                    any(w.startswith(word) for w in entry.en_words) for word in words
                ):
                    rank = 4
                elif letters_only and len(squeezed) >= 3 and squeezed in entry.pinyin:
                    rank = 5
            if rank is not None:
                scored.append((rank, len(entry.concept.code), entry.concept.code, entry.concept))
        scored.sort(key=lambda item: item[:3])
        return [item[3] for item in scored[:limit]]


# -- reading files -------------------------------------------------------------------------


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as error:
        raise Icd10FileError(
            [f"byte {error.start}: the file is neither UTF-8 nor GB18030 text"], source
        ) from None


def concepts_from_csv(data: bytes, *, source: str = "ICD-10 file") -> list[Concept]:
    """The concepts of a CSV file's bytes; Icd10FileError listing every faulty row."""
    rows = list(csv.reader(io.StringIO(_decode(data, source), newline="")))
    if not rows:
        raise Icd10FileError(["the file is empty: expected a header row"], source)
    by_header = {
        alias.casefold(): field for field, aliases in COLUMN_ALIASES.items() for alias in aliases
    }
    columns: dict[str, int] = {}
    for index, header in enumerate(rows[0]):
        field = by_header.get(header.strip().casefold())
        if field and field not in columns:
            columns[field] = index
    problems = [
        f"row 1: no {' / '.join(COLUMN_ALIASES[f])} column"
        for f in ("code", "name_zh")
        if f not in columns
    ]
    if problems:
        raise Icd10FileError(problems, source)
    concepts: list[Concept] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue

        def cell(field: str, row: list[str] = row) -> str:
            index = columns.get(field)
            return row[index].strip() if index is not None and index < len(row) else ""

        code, name_zh, name_en = cell("code"), cell("name_zh"), cell("name_en")
        if not _CODE.match(code):
            problems.append(f"row {number}: code {code!r} is not an ICD-10 code (such as I10)")
            continue
        if not name_zh:
            problems.append(f"row {number}: {code} has no Chinese name")
            continue
        if code.upper() in seen:
            problems.append(f"row {number}: {code} is already on row {seen[code.upper()]}")
            continue
        seen[code.upper()] = number
        concepts.append(Concept(code, name_zh, name_en))
    if not concepts and not problems:
        problems.append("the file has a header but no codes")
    if problems:
        raise Icd10FileError(problems, source)
    return concepts


@cache
def village_list() -> Catalogue:
    """The list shipped with the service."""
    return Catalogue(
        concepts_from_csv(VILLAGE_LIST.read_bytes(), source=VILLAGE_LIST.name),
        source="village",
    )


# -- the CodeSystem in the store -------------------------------------------------------------


def codesystem(concepts: Sequence[Concept], *, title: str) -> dict[str, Any]:
    """The CodeSystem resource holding an imported edition."""
    return {
        "resourceType": "CodeSystem",
        "id": CODESYSTEM_ID,
        "url": ICD10_SYSTEM,
        "name": "ICD10CN",
        "title": title,
        "status": "active",
        "language": "zh-CN",
        "content": "complete",
        "count": len(concepts),
        "concept": [
            {
                "code": c.code,
                "display": c.name_zh,
                **({"designation": [{"language": "en", "value": c.name_en}]} if c.name_en else {}),
            }
            for c in concepts
        ],
    }


def concepts_of(resource: dict[str, Any]) -> list[Concept]:
    concepts = []
    for concept in resource.get("concept") or []:
        english = next(
            (
                d.get("value", "")
                for d in concept.get("designation") or []
                if str(d.get("language", "")).startswith("en")
            ),
            "",
        )
        concepts.append(Concept(concept["code"], concept.get("display", ""), english))
    return concepts


def import_bundle(concepts: Sequence[Concept], *, title: str) -> dict[str, Any]:
    """The transaction Bundle writing (or replacing) the deployment's edition."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": codesystem(concepts, title=title),
                "request": {"method": "PUT", "url": f"CodeSystem/{CODESYSTEM_ID}"},
            }
        ],
    }
