"""The poverty household registry: its export in, households (一户一档案) out, as FHIR Groups.

The registry (建档立卡 — the national register of poor households since 2014 — and, since
2021, the 防返贫监测 system that monitors households against a return to poverty) exports
one row per household member. ``health registry import FILE`` reads that export and writes
one Group per household, the shape ``health.poverty.households`` documents and reads. This
module owns the mapping, shared with the demo seed (:func:`household_group`), the reading of
the file and the import.

File rules (for the people who prepare the file):

* CSV in UTF-8 (with or without BOM) or GB18030, or an Excel workbook (.xlsx, first sheet);
* a header row, which may sit below a title row or two; Chinese or English names (see
  ``COLUMN_ALIASES``), columns not listed are ignored. Required: 户编号, 乡镇, 行政村, 姓名,
  身份证号码, 与户主关系, 户属性, 主要致贫原因, 家庭年人均纯收入; optional: 其他致贫原因
  (several, separated by 、 or ,), 收入年度;
* 身份证号码 must be valid (GB 11643) and, in a spreadsheet, stored as text: Excel keeps only
  15 digits of a number;
* 家庭年人均纯收入 is yuan per person per year; left empty, the household has no income on
  record and the income rules cannot assess it;
* the household's own columns (乡镇, 行政村, 户属性, 致贫原因, 收入) must agree on every row
  of one 户编号, and a household has exactly one 户主.

How it imports:

* members are linked to Patients by resident identity number. A member with no Patient yet
  is kept in the household by the number alone (``Group.member.entity.identifier``), counts
  in its size, and is reported as unmatched; importing again after the patient is
  registered links them;
* a household whose rows conflict — with each other, with a Patient's name, or with a
  household already on record that holds the same person and is not in this file — is not
  written, and every such row is reported with its row number; the rest are written;
* each household is a conditional update on its 户编号: re-importing the same file writes
  nothing; a Group's other elements (its managing clinic, its tags) are kept.

Rows are numbered as a spreadsheet shows them: the header row's number, then each row below.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

from health.core.bus import MessageBus
from health.core.database import Database
from health.core.naming import (
    HOUSEHOLD_CHARACTERISTIC_SYSTEM,
    HOUSEHOLD_NUMBER_SYSTEM,
    HOUSEHOLD_RELATIONSHIP_URL,
    POVERTY_CAUSE_SYSTEM,
    REGISTRY_STATUS_SYSTEM,
    REGISTRY_STATUSES,
)
from integrations.directory_csv import identifier_query, transaction_bundle
from records.importer import process_bundle
from records.indexing import SearchIndexer
from records.search.engine import SearchEngine
from records.search.parse import SearchParser
from records.store import Change, ResourceStore, StoredVersion
from records.validation.resident_id import RESIDENT_ID_SYSTEM, ResidentIdError, parse_resident_id

Resource = dict[str, Any]

# -- the registry's vocabulary -----------------------------------------------------------

_ROLE_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
#: v3 RoleCode -> English display
ROLE_CODES: dict[str, str] = {
    "ONESELF": "self",
    "SPS": "spouse",
    "SON": "son",
    "DAU": "daughter",
    "CHILD": "child",
    "FTH": "father",
    "MTH": "mother",
    "PRN": "parent",
    "GRNDSON": "grandson",
    "GRNDDAU": "granddaughter",
    "GRNDCHILD": "grandchild",
    "SONINLAW": "son-in-law",
    "DAUINLAW": "daughter-in-law",
    "CHLDINLAW": "child-in-law",
    "BRO": "brother",
    "SIS": "sister",
    "SIB": "sibling",
    "GRPRN": "grandparent",
    "FAMMEMB": "family member",
}
#: 与户主关系 as registries write it -> v3 RoleCode
RELATIONSHIP_NAMES: dict[str, str] = {
    "户主": "ONESELF",
    "本人": "ONESELF",
    "配偶": "SPS",
    "妻": "SPS",
    "妻子": "SPS",
    "夫": "SPS",
    "丈夫": "SPS",
    "子": "SON",
    "之子": "SON",
    "儿子": "SON",
    "长子": "SON",
    "次子": "SON",
    "女": "DAU",
    "之女": "DAU",
    "女儿": "DAU",
    "长女": "DAU",
    "次女": "DAU",
    "子女": "CHILD",
    "父亲": "FTH",
    "之父": "FTH",
    "母亲": "MTH",
    "之母": "MTH",
    "父母": "PRN",
    "孙子": "GRNDSON",
    "之孙子": "GRNDSON",
    "孙女": "GRNDDAU",
    "之孙女": "GRNDDAU",
    "孙子女": "GRNDCHILD",
    "儿媳": "DAUINLAW",
    "之儿媳": "DAUINLAW",
    "女婿": "SONINLAW",
    "之女婿": "SONINLAW",
    "儿媳/女婿": "CHLDINLAW",
    "兄弟": "BRO",
    "兄": "BRO",
    "弟": "BRO",
    "姐妹": "SIS",
    "姐": "SIS",
    "妹": "SIS",
    "兄弟姐妹": "SIB",
    "祖父母": "GRPRN",
    "外祖父母": "GRPRN",
    "其他": "FAMMEMB",
    "其他亲属": "FAMMEMB",
}
#: 户属性 as registries write it -> registry status code (REGISTRY_STATUSES). The three
#: monitored types of 2021 (三类户) are all monitored households.
STATUS_NAMES: dict[str, str] = {
    "建档立卡贫困户": "registered-poor",
    "贫困户": "registered-poor",
    "未脱贫户": "registered-poor",
    "脱贫户": "exited",
    "已脱贫户": "exited",
    "监测户": "monitored",
    "监测对象": "monitored",
    "防返贫监测户": "monitored",
    "脱贫不稳定户": "monitored",
    "边缘易致贫户": "monitored",
    "突发严重困难户": "monitored",
    "一般户": "ordinary",
    "一般农户": "ordinary",
    "非贫困户": "ordinary",
    **{code: code for code in REGISTRY_STATUSES},
    **{name: code for code, name in REGISTRY_STATUSES.items()},
}
#: 致贫原因 -> (code in POVERTY_CAUSE_SYSTEM, English display). Registries number these
#: differently, so only the names are accepted.
POVERTY_CAUSES: dict[str, tuple[str, str]] = {
    "因病": ("illness", "illness"),
    "因残": ("disability", "disability"),
    "因学": ("schooling", "schooling costs"),
    "因灾": ("disaster", "disaster"),
    "因婚": ("marriage", "marriage costs"),
    "因丧": ("funeral", "funeral costs"),
    "缺土地": ("lack-of-land", "lack of land"),
    "缺水": ("lack-of-water", "lack of water"),
    "缺技术": ("lack-of-skills", "lack of skills"),
    "缺劳力": ("lack-of-labour", "lack of labour"),
    "缺劳动力": ("lack-of-labour", "lack of labour"),
    "缺资金": ("lack-of-capital", "lack of capital"),
    "交通条件落后": ("poor-transport", "poor transport"),
    "自身发展动力不足": ("weak-self-motivation", "weak self-motivation"),
    "其他": ("other", "other"),
}
_CAUSE_SEPARATORS = re.compile(r"[、,，;；/]+")


# -- households as FHIR Groups (shared with the demo seed) --------------------------------


@dataclass(frozen=True, slots=True)
class GroupMember:
    name: str
    resident_id: str
    relationship_code: str  # v3 RoleCode
    relationship_text: str  # as the registry wrote it: 户主, 之子...
    #: The entity reference: "Patient/<id>", an in-bundle urn:uuid, or None (not matched).
    reference: str | None


def _characteristic(code: str, display: str, value: Mapping[str, Any]) -> Resource:
    return {
        "code": {
            "coding": [
                {"system": HOUSEHOLD_CHARACTERISTIC_SYSTEM, "code": code, "display": display}
            ]
        },
        **value,
        "exclude": False,
    }


def registry_status_characteristic(status: str, text: str | None = None) -> Resource:
    """The Group.characteristic carrying a household's registry status."""
    return _characteristic(
        "registry-status",
        "建档立卡状态",
        {
            "valueCodeableConcept": {
                "coding": [
                    {
                        "system": REGISTRY_STATUS_SYSTEM,
                        "code": status,
                        "display": REGISTRY_STATUSES[status],
                    }
                ],
                "text": text or REGISTRY_STATUSES[status],
            }
        },
    )


def _cause_characteristic(code: str, display: str, cause: str) -> Resource:
    cause_code, english = POVERTY_CAUSES[cause]
    return _characteristic(
        code,
        display,
        {
            "valueCodeableConcept": {
                "coding": [
                    {
                        "system": POVERTY_CAUSE_SYSTEM,
                        "code": cause_code,
                        "display": f"{cause} {english}",
                    }
                ],
                "text": cause,
            }
        },
    )


def _text_characteristic(code: str, display: str, text: str) -> Resource:
    return _characteristic(code, display, {"valueCodeableConcept": {"text": text}})


def household_characteristics(
    status: str,
    *,
    status_text: str | None = None,
    main_cause: str | None = None,
    other_causes: Sequence[str] = (),
    income_per_capita: Decimal | None = None,
    income_year: int | None = None,
    township: str | None = None,
    village: str | None = None,
) -> list[Resource]:
    characteristics = [registry_status_characteristic(status, status_text)]
    if main_cause:
        characteristics.append(
            _cause_characteristic("main-poverty-cause", "主要致贫原因", main_cause)
        )
    characteristics.extend(
        _cause_characteristic("other-poverty-cause", "其他致贫原因", cause)
        for cause in other_causes
    )
    if income_per_capita is not None:
        income: Resource = _characteristic(
            "income-per-capita",
            "家庭年人均纯收入",
            {
                "valueQuantity": {
                    "value": float(income_per_capita),
                    "unit": "元/人·年",
                    "system": "urn:iso:std:iso:4217",
                    "code": "CNY",
                }
            },
        )
        if income_year:
            income["period"] = {"start": f"{income_year}-01-01", "end": f"{income_year}-12-31"}
        characteristics.append(income)
    if township:
        characteristics.append(_text_characteristic("township", "乡镇", township))
    if village:
        characteristics.append(_text_characteristic("village", "行政村", village))
    return characteristics


def group_member(member: GroupMember) -> Resource:
    entity: Resource = {}
    if member.reference:
        entity["reference"] = member.reference
    entity["identifier"] = {"system": RESIDENT_ID_SYSTEM, "value": member.resident_id}
    entity["display"] = member.name
    return {
        "extension": [relationship_extension(member.relationship_code, member.relationship_text)],
        "entity": entity,
        "inactive": False,
    }


def relationship_extension(role_code: str, text: str) -> Resource:
    """A member's relationship to the head of the household (a v3 RoleCode, and its words)."""
    return {
        "url": HOUSEHOLD_RELATIONSHIP_URL,
        "valueCodeableConcept": {
            "coding": [
                {"system": _ROLE_CODE_SYSTEM, "code": role_code, "display": ROLE_CODES[role_code]}
            ],
            "text": text,
        },
    }


_REGISTRY_CHARACTERISTICS = frozenset(
    {
        "registry-status",
        "main-poverty-cause",
        "other-poverty-cause",
        "income-per-capita",
        "township",
        "village",
    }
)


def household_group(
    number: str,
    members: Sequence[GroupMember],
    characteristics: Sequence[Resource],
    *,
    base: Mapping[str, Any] | None = None,
) -> Resource:
    """The household Group: ``base`` (a stored Group, or the demo's extras) with the registry's
    elements — 户编号, name, size, characteristics, members — put in its place."""
    base = dict(base or {})
    head = next((m for m in members if m.relationship_code == "ONESELF"), members[0])
    identifiers = [
        i for i in base.get("identifier", []) if i.get("system") != HOUSEHOLD_NUMBER_SYSTEM
    ]
    kept = [
        c
        for c in base.get("characteristic", [])
        if not any(
            coding.get("system") == HOUSEHOLD_CHARACTERISTIC_SYSTEM
            and coding.get("code") in _REGISTRY_CHARACTERISTICS
            for coding in (c.get("code") or {}).get("coding", [])
        )
    ]
    group: Resource = {"resourceType": "Group"}
    meta = {
        k: v for k, v in (base.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    if meta:
        group["meta"] = meta
    group["identifier"] = [{"system": HOUSEHOLD_NUMBER_SYSTEM, "value": number}, *identifiers]
    group["active"] = True
    group["type"] = "person"
    group["actual"] = True
    group["code"] = base.get("code") or {"text": "家庭户"}
    group["name"] = f"{head.name}户"
    group["quantity"] = len(members)
    for key, value in base.items():
        if key not in group and key not in ("id", "characteristic", "member"):
            group[key] = value
    group["characteristic"] = [*characteristics, *kept]
    group["member"] = [group_member(m) for m in members]
    return group


# -- the file ---------------------------------------------------------------------------


class RegistryFileError(ValueError):
    """The file cannot be imported at all; ``problems`` says why."""

    def __init__(self, problems: Sequence[str], source: str = "registry file") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


#: Header names a file may use, Chinese or English, for each field.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "household_number": ("户编号", "household_number"),
    "township": ("乡镇", "乡（镇）", "乡(镇)", "township"),
    "village": ("行政村", "village"),
    "name": ("姓名", "name"),
    "resident_id": ("身份证号码", "身份证号", "证件号码", "resident_id"),
    "relationship": ("与户主关系", "relationship"),
    "status": ("户属性", "household_type"),
    "main_cause": ("主要致贫原因", "main_poverty_cause"),
    "income": ("家庭年人均纯收入", "人均纯收入", "income_per_capita"),
    "other_causes": ("其他致贫原因", "次要致贫原因", "other_poverty_causes"),
    "income_year": ("收入年度", "income_year"),
}
REQUIRED_COLUMNS = (
    "household_number",
    "township",
    "village",
    "name",
    "resident_id",
    "relationship",
    "status",
    "main_cause",
    "income",
)
_FIELD_BY_HEADER = {
    alias.casefold(): name for name, aliases in COLUMN_ALIASES.items() for alias in aliases
}
_HOUSEHOLD_NUMBER = re.compile(r"^[0-9A-Za-z-]{1,40}$")
#: Header search: a title may stand above the header in the first rows.
_HEADER_SEARCH_ROWS = 10


@dataclass(frozen=True, slots=True)
class Cell:
    text: str
    #: A number in a spreadsheet (an identity number stored so has lost its last digits).
    numeric: bool = False


@dataclass(frozen=True, slots=True)
class Sheet:
    source: str
    #: (row number as the spreadsheet shows it, cells)
    rows: list[tuple[int, list[Cell]]]


def read_registry_file(path: Path) -> Sheet:
    """The rows of a CSV (UTF-8 or GB18030) or XLSX export."""
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        return _read_workbook(path)
    data = path.read_bytes()
    if data[:4] == b"PK\x03\x04":
        return _read_workbook(path)
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError as error:
            failure = error
    else:
        raise RegistryFileError(
            [f"byte {failure.start}: the file is neither UTF-8 nor GB18030 text"], str(path)
        )
    rows = csv.reader(io.StringIO(text, newline=""))
    return Sheet(str(path), [(n, [Cell(c) for c in row]) for n, row in enumerate(rows, start=1)])


def _cell(value: Any) -> Cell:
    if value is None:
        return Cell("")
    if isinstance(value, bool):
        return Cell(str(value))
    if isinstance(value, int):
        return Cell(str(value), numeric=True)
    if isinstance(value, float):
        text = str(int(value)) if value.is_integer() else repr(value)
        return Cell(text, numeric=True)
    return Cell(str(value))


def _read_workbook(path: Path) -> Sheet:
    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, OSError, KeyError, ValueError) as error:
        raise RegistryFileError([f"not a readable .xlsx workbook: {error}"], str(path)) from None
    try:
        sheet = workbook.worksheets[0]
        rows = [
            (number, [_cell(value) for value in values])
            for number, values in enumerate(sheet.iter_rows(values_only=True), start=1)
        ]
    finally:
        workbook.close()
    return Sheet(str(path), rows)


@dataclass(frozen=True, slots=True)
class RegistryRow:
    row: int
    household_number: str
    township: str
    village: str
    name: str
    resident_id: str
    relationship_code: str
    relationship_text: str
    status: str
    status_text: str
    main_cause: str | None
    other_causes: tuple[str, ...]
    income: Decimal | None
    income_year: int | None

    def household_fields(self) -> dict[str, Any]:
        return {
            "乡镇": self.township,
            "行政村": self.village,
            "户属性": self.status_text,
            "主要致贫原因": self.main_cause or "",
            "其他致贫原因": "、".join(self.other_causes),
            "家庭年人均纯收入": "" if self.income is None else f"{self.income}",
            "收入年度": self.income_year or "",
        }


@dataclass(frozen=True, slots=True)
class RowNote:
    """A row the import reports, and why."""

    row: int
    household_number: str
    name: str
    message: str

    def __str__(self) -> str:
        who = f"户编号 {self.household_number}" + (f" {self.name}" if self.name else "")
        return f"row {self.row} ({who}): {self.message}"


@dataclass
class ParsedFile:
    rows: list[RegistryRow]
    rejected: list[RowNote]


def _find_header(sheet: Sheet) -> tuple[int, dict[str, int], list[str]]:
    for index, (row_number, cells) in enumerate(sheet.rows[:_HEADER_SEARCH_ROWS]):
        names = [cell.text.strip().lstrip("\ufeff").casefold() for cell in cells]
        columns: dict[str, int] = {}
        for position, name in enumerate(names):
            field_name = _FIELD_BY_HEADER.get(name)
            if field_name is not None and field_name not in columns:
                columns[field_name] = position
        if "resident_id" in columns and "household_number" in columns:
            missing = [" / ".join(COLUMN_ALIASES[f]) for f in REQUIRED_COLUMNS if f not in columns]
            if missing:
                raise RegistryFileError(
                    [f"row {row_number}: missing column {m}" for m in missing], sheet.source
                )
            return index, columns, [cell.text.strip() for cell in cells]
    raise RegistryFileError(
        [
            f"no header row in the first {_HEADER_SEARCH_ROWS} rows: expected columns "
            + ", ".join(COLUMN_ALIASES[f][0] for f in REQUIRED_COLUMNS)
        ],
        sheet.source,
    )


def parse_registry(sheet: Sheet) -> ParsedFile:
    """Check every row; the good ones become RegistryRows, the bad ones RowNotes naming the
    column and what is wrong. Raises RegistryFileError when there is nothing to import."""
    if not sheet.rows:
        raise RegistryFileError(["the file is empty: expected a header row"], sheet.source)
    header_index, columns, header = _find_header(sheet)
    parsed = ParsedFile([], [])
    for row_number, cells in sheet.rows[header_index + 1 :]:
        values = {name: (cells[i] if i < len(cells) else Cell("")) for name, i in columns.items()}
        if not any(cell.text.strip() for cell in values.values()):
            continue  # blank rows, often left at the end by spreadsheets
        row, problems = _read_row(row_number, values, columns, header)
        if problems:
            parsed.rejected.append(
                RowNote(
                    row_number,
                    values["household_number"].text.strip(),
                    values["name"].text.strip(),
                    "; ".join(problems),
                )
            )
        elif row is not None:
            parsed.rows.append(row)
    if not parsed.rows and not parsed.rejected:
        raise RegistryFileError(["the file has a header but no member rows"], sheet.source)
    return parsed


def _read_row(
    row_number: int, values: Mapping[str, Cell], columns: Mapping[str, int], header: Sequence[str]
) -> tuple[RegistryRow | None, list[str]]:
    problems: list[str] = []

    def text(name: str) -> str:
        return values[name].text.strip() if name in values else ""

    def problem(name: str, message: str) -> None:
        problems.append(f"column {header[columns[name]]}: {message}")

    number = text("household_number")
    if not number:
        problem("household_number", "missing")
    elif values["household_number"].numeric and len(number) > 15:
        problem("household_number", "stored as a number, which loses digits: format it as text")
    elif not _HOUSEHOLD_NUMBER.match(number):
        problem("household_number", f"'{number}' may hold only letters, digits and '-'")
    name = text("name")
    if not name:
        problem("name", "missing")
    resident_id = text("resident_id").upper()
    if not resident_id:
        problem("resident_id", "missing")
    elif values["resident_id"].numeric:
        problem(
            "resident_id",
            f"'{resident_id}' is stored as a number, which keeps only 15 digits: "
            "format the column as text",
        )
    else:
        try:
            resident_id = parse_resident_id(resident_id).number
        except ResidentIdError as error:
            problem("resident_id", f"'{resident_id}' is not a valid identity number: {error}")
    relationship = text("relationship")
    relationship_code = RELATIONSHIP_NAMES.get(relationship)
    if relationship_code is None:
        problem(
            "relationship",
            f"unknown relationship '{relationship}' (expected 户主, 配偶, 之子, 之女, 父亲, 母亲, "
            "孙子, 孙女, 儿媳, 女婿, 兄弟姐妹, 其他 ...)"
            if relationship
            else "missing",
        )
    status_text = text("status")
    status = STATUS_NAMES.get(status_text)
    if status is None:
        problem(
            "status",
            f"unknown 户属性 '{status_text}' (expected 脱贫户, 监测户, 一般户, 建档立卡贫困户 ...)"
            if status_text
            else "missing",
        )
    main_cause = text("main_cause") or None
    if main_cause is not None and main_cause not in POVERTY_CAUSES:
        problem(
            "main_cause",
            f"unknown cause '{main_cause}' (expected {'、'.join(list(POVERTY_CAUSES)[:8])} ...)",
        )
    other_causes: list[str] = []
    for cause in _CAUSE_SEPARATORS.split(text("other_causes")):
        cause = cause.strip()
        if not cause:
            continue
        if cause not in POVERTY_CAUSES:
            problem("other_causes", f"unknown cause '{cause}'")
        elif cause not in other_causes and cause != main_cause:
            other_causes.append(cause)
    income: Decimal | None = None
    income_text = text("income").replace(",", "").replace("，", "")
    if income_text:
        try:
            income = Decimal(income_text)
        except InvalidOperation:
            problem("income", f"'{income_text}' is not an amount in yuan")
        else:
            if not income.is_finite() or income < 0:
                problem("income", f"'{income_text}' must be zero or more yuan")
                income = None
            else:
                income = income.quantize(Decimal("0.01"))
    income_year: int | None = None
    year_text = text("income_year")
    if year_text:
        if year_text.isdigit() and 2000 <= int(year_text) <= 2100:
            income_year = int(year_text)
        else:
            problem("income_year", f"'{year_text}' is not a year")
    if problems:
        return None, problems
    assert relationship_code is not None and status is not None
    return (
        RegistryRow(
            row=row_number,
            household_number=number,
            township=text("township"),
            village=text("village"),
            name=name,
            resident_id=resident_id,
            relationship_code=relationship_code,
            relationship_text=relationship,
            status=status,
            status_text=status_text
            if status_text not in REGISTRY_STATUSES
            else REGISTRY_STATUSES[status],
            main_cause=main_cause,
            other_causes=tuple(other_causes),
            income=income,
            income_year=income_year,
        ),
        [],
    )


# -- the import ---------------------------------------------------------------------------


@dataclass
class RegistryImport:
    """What an import did, and every row it could not use as given."""

    source: str
    rows: int = 0
    households_written: int = 0
    households_unchanged: int = 0
    members_linked: int = 0
    unmatched: list[RowNote] = field(default_factory=list)
    conflicts: list[RowNote] = field(default_factory=list)
    rejected: list[RowNote] = field(default_factory=list)
    changes: tuple[Change, ...] = ()

    @property
    def households_skipped(self) -> int:
        return len({n.household_number for n in (*self.conflicts, *self.rejected)})

    def lines(self) -> list[str]:
        out = [
            f"{self.source}: {self.rows} member rows; households written "
            f"{self.households_written}, unchanged {self.households_unchanged}, "
            f"not imported {self.households_skipped}; {self.members_linked} members linked "
            f"to patients, {len(self.unmatched)} unmatched"
        ]
        for title, notes in (
            ("rejected (bad values)", self.rejected),
            ("conflicting (household not imported)", self.conflicts),
            (
                "unmatched (kept by identity number; no patient with that number yet)",
                self.unmatched,
            ),
        ):
            if notes:
                out.append(f"{len(notes)} rows {title}:")
                out.extend(f"  {note}" for note in notes)
        return out


@dataclass
class _Household:
    number: str
    rows: list[RegistryRow]


def _group_rows(parsed: ParsedFile, report: RegistryImport) -> list[_Household]:
    """Households in file order, with the ones whose rows disagree taken out and reported."""
    by_number: dict[str, list[RegistryRow]] = defaultdict(list)
    for row in parsed.rows:
        by_number[row.household_number].append(row)
    blocked = {note.household_number for note in parsed.rejected}
    households_of_id: dict[str, set[str]] = defaultdict(set)
    for row in parsed.rows:
        households_of_id[row.resident_id].add(row.household_number)

    households = []
    for number, rows in by_number.items():
        notes: list[RowNote] = []
        first = rows[0]
        for row in rows[1:]:
            for column, value in row.household_fields().items():
                expected = first.household_fields()[column]
                if value != expected:
                    notes.append(
                        RowNote(
                            row.row,
                            number,
                            row.name,
                            f"column {column}: '{value}' disagrees with '{expected}' on row "
                            f"{first.row} of the same household",
                        )
                    )
        heads = [row for row in rows if row.relationship_code == "ONESELF"]
        if len(heads) != 1:
            notes.append(
                RowNote(
                    first.row,
                    number,
                    first.name,
                    "the household has no 户主 (head)"
                    if not heads
                    else f"the household has {len(heads)} 户主 (rows "
                    + ", ".join(str(h.row) for h in heads)
                    + ")",
                )
            )
        seen: dict[str, int] = {}
        for row in rows:
            if row.resident_id in seen:
                notes.append(
                    RowNote(
                        row.row,
                        number,
                        row.name,
                        f"身份证号码 {row.resident_id} is listed twice "
                        f"(also row {seen[row.resident_id]})",
                    )
                )
            seen.setdefault(row.resident_id, row.row)
            others = households_of_id[row.resident_id] - {number}
            if others:
                notes.append(
                    RowNote(
                        row.row,
                        number,
                        row.name,
                        f"身份证号码 {row.resident_id} is also in household "
                        + ", ".join(sorted(others)),
                    )
                )
        if notes:
            report.conflicts.extend(notes)
        elif number in blocked:
            report.rejected.append(
                RowNote(
                    first.row,
                    number,
                    first.name,
                    "household not imported: another of its rows was rejected",
                )
            )
        else:
            households.append(_Household(number, rows))
    return households


async def _search(
    store: ResourceStore, res_type: str, params: list[tuple[str, str]]
) -> list[StoredVersion]:
    """Every match of a search, page after page, through the store's own search."""
    parser = SearchParser(store.indexer, max_count=1000, default_count=1000)
    engine = SearchEngine(store.session, store.indexer, base_url="", access=store.access)
    found: list[StoredVersion] = []
    cursor: str | None = None
    while True:
        page = params + ([("_cursor", cursor)] if cursor else [])
        result = await engine.run(parser.parse(res_type, page, strict=True))
        found.extend(result.matches)
        cursor = result.next_cursor
        if not cursor:
            return found


def _name_of(patient: Resource) -> str:
    for name in patient.get("name", []):
        if name.get("text"):
            return str(name["text"])
        if name.get("family") or name.get("given"):
            return str(name.get("family", "")) + "".join(name.get("given", []))
    return ""


async def import_registry(
    database: Database,
    indexer: SearchIndexer,
    sheet: Sheet,
    *,
    bus: MessageBus | None = None,
    households_per_transaction: int = 500,
) -> RegistryImport:
    """Import a registry export: link members, write households, report what did not fit."""
    parsed = parse_registry(sheet)
    report = RegistryImport(sheet.source, rows=len(parsed.rows) + len(parsed.rejected))
    report.rejected.extend(parsed.rejected)
    households = _group_rows(parsed, report)
    changes: list[Change] = []
    for start in range(0, len(households), households_per_transaction):
        chunk = households[start : start + households_per_transaction]
        ids = sorted({row.resident_id for h in chunk for row in h.rows})
        numbers = [h.number for h in chunk]
        async with database.transaction(write=False) as session:
            store = ResourceStore(session, indexer)
            patients: dict[str, tuple[str, Resource]] = {}
            for i in range(0, len(ids), 200):
                query = ",".join(f"{RESIDENT_ID_SYSTEM}|{n}" for n in ids[i : i + 200])
                for version in await _search(store, "Patient", [("identifier", query)]):
                    data = orjson.loads(version.content or "{}")
                    for identifier in data.get("identifier", []):
                        if identifier.get("system") == RESIDENT_ID_SYSTEM:
                            patients[str(identifier.get("value", "")).upper()] = (
                                version.res_id,
                                data,
                            )
            existing: dict[str, Resource] = {}
            for i in range(0, len(numbers), 200):
                query = ",".join(f"{HOUSEHOLD_NUMBER_SYSTEM}|{n}" for n in numbers[i : i + 200])
                for version in await _search(store, "Group", [("identifier", query)]):
                    data = orjson.loads(version.content or "{}")
                    for identifier in data.get("identifier", []):
                        if identifier.get("system") == HOUSEHOLD_NUMBER_SYSTEM:
                            existing[str(identifier.get("value"))] = data
            patient_ids = [pid for pid, _ in patients.values()]
            holder: dict[str, str] = {}  # patient id -> household number on record
            for i in range(0, len(patient_ids), 200):
                query = ",".join(f"Patient/{p}" for p in patient_ids[i : i + 200])
                for version in await _search(store, "Group", [("member", query)]):
                    data = orjson.loads(version.content or "{}")
                    number = next(
                        (
                            str(x.get("value"))
                            for x in data.get("identifier", [])
                            if x.get("system") == HOUSEHOLD_NUMBER_SYSTEM
                        ),
                        f"Group/{version.res_id}",
                    )
                    for member in data.get("member", []):
                        reference = (member.get("entity") or {}).get("reference", "")
                        if reference.startswith("Patient/") and not member.get("inactive"):
                            holder[reference.split("/", 1)[1]] = number

        in_file = {h.number for h in households}
        entries = []
        for household in chunk:
            notes: list[RowNote] = []
            unmatched: list[RowNote] = []
            members = []
            for row in household.rows:
                found = patients.get(row.resident_id)
                reference = None
                if found is None:
                    unmatched.append(
                        RowNote(
                            row.row,
                            household.number,
                            row.name,
                            f"no patient has 身份证号码 {row.resident_id}",
                        )
                    )
                else:
                    patient_id, patient = found
                    reference = f"Patient/{patient_id}"
                    recorded = _name_of(patient)
                    if recorded and recorded != row.name:
                        notes.append(
                            RowNote(
                                row.row,
                                household.number,
                                row.name,
                                f"身份证号码 {row.resident_id} belongs to {reference}, whose name "
                                f"on record is {recorded}",
                            )
                        )
                    other = holder.get(patient_id)
                    if other and other != household.number and other not in in_file:
                        notes.append(
                            RowNote(
                                row.row,
                                household.number,
                                row.name,
                                f"{reference} is a member of household {other} on record, "
                                "which this file does not include",
                            )
                        )
                members.append(
                    GroupMember(
                        row.name,
                        row.resident_id,
                        row.relationship_code,
                        row.relationship_text,
                        reference,
                    )
                )
            if notes:
                report.conflicts.extend(notes)
                continue
            report.unmatched.extend(unmatched)
            report.members_linked += sum(1 for m in members if m.reference)
            first = household.rows[0]
            group = household_group(
                household.number,
                members,
                household_characteristics(
                    first.status,
                    status_text=first.status_text,
                    main_cause=first.main_cause,
                    other_causes=first.other_causes,
                    income_per_capita=first.income,
                    income_year=first.income_year,
                    township=first.township,
                    village=first.village,
                ),
                base=existing.get(household.number),
            )
            entries.append(
                {
                    "resource": group,
                    "request": {
                        "method": "PUT",
                        "url": identifier_query("Group", HOUSEHOLD_NUMBER_SYSTEM, household.number),
                    },
                }
            )
        if not entries:
            continue
        outcome = await process_bundle(database, indexer, transaction_bundle(entries), bus=bus)
        written = {c.res_id for c in outcome.written if c.res_type == "Group"}
        report.households_written += len(written)
        report.households_unchanged += len(entries) - len(written)
        changes.extend(outcome.written)
    report.changes = tuple(changes)
    return report
