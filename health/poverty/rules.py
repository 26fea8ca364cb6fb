"""The illness-poverty rule set: a TOML file the health commission can edit, and its checks.

``rules.toml`` beside this module holds the defaults and documents every choice; a
deployment points ``HEALTH_POVERTY_RULES`` at its own copy. :func:`load_rules` reads the
file with ``tomllib`` (decimals read as :class:`~decimal.Decimal`, never as binary floats)
and checks every value, raising :class:`RuleFileError` that names each faulty key.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from health.core.naming import REGISTRY_STATUSES

DEFAULT_RULES_PATH = Path(__file__).with_name("rules.toml")

CATASTROPHIC = "catastrophic-expenditure"
IMPOVERISHING = "impoverishing-expenditure"
MEDICAL_BILL = "medical-bill-alert"
SERIOUS_ILLNESS = "serious-illness"
CHRONIC_BURDEN = "chronic-burden"
#: rule id -> (Chinese name, English name), in the order flags are evaluated and listed.
RULE_NAMES: dict[str, tuple[str, str]] = {
    CATASTROPHIC: ("灾难性卫生支出", "catastrophic health expenditure"),
    IMPOVERISHING: ("致贫性卫生支出", "impoverishing health expenditure"),
    MEDICAL_BILL: ("高额医疗费用预警", "medical-bill alert"),
    SERIOUS_ILLNESS: ("大病", "serious illness"),
    CHRONIC_BURDEN: ("慢病未签约家庭医生", "chronic disease without a family doctor"),
}

_ICD10_BOUND = re.compile(r"^[A-Z][0-9]{2}(?:\.[0-9A-Z]{1,4})?$")


class RuleFileError(ValueError):
    """The rule file cannot be used; ``problems`` names each faulty key."""

    def __init__(self, problems: Sequence[str], source: str = "rule file") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


def normalize_icd10(code: str) -> str:
    """Upper case, no spaces, a dot after the category: ``c169`` -> ``C16.9``."""
    text = code.strip().upper().replace(" ", "")
    if len(text) > 3 and "." not in text and text[3].isalnum():
        text = f"{text[:3]}.{text[3:]}"
    return text


@dataclass(frozen=True, slots=True)
class Icd10Range:
    """``C18-C20``, ``C16`` or ``N18.5``: the codes that begin with a category in the range."""

    first: str
    last: str

    @classmethod
    def parse(cls, text: str) -> Icd10Range:
        first, _, last = (part.strip().upper() for part in text.partition("-"))
        last = last or first
        for bound in (first, last):
            if not _ICD10_BOUND.match(bound):
                raise ValueError(f"'{text}' is not an ICD-10 code or range such as C18-C20")
        if len(first) != len(last) or first > last:
            raise ValueError(f"'{text}' is not a range from a lower to a higher code")
        return cls(first, last)

    def contains(self, code: str) -> bool:
        prefix = code[: len(self.first)]
        return self.first <= prefix <= self.last

    def __str__(self) -> str:
        return self.first if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class Disease:
    """One entry of a disease list: a name and the ICD-10 codes that mean it."""

    name: str
    english: str
    codes: tuple[Icd10Range, ...]
    #: The person must also carry one of these (drug resistance beside tuberculosis).
    with_any_of: tuple[Icd10Range, ...] = ()

    def matches(self, code: str) -> bool:
        return any(r.contains(code) for r in self.codes)

    def confirmed_by(self, codes: Sequence[str]) -> bool:
        return not self.with_any_of or any(r.contains(c) for r in self.with_any_of for c in codes)

    @property
    def label(self) -> str:
        return f"{self.name} {self.english} ({', '.join(str(c) for c in self.codes)})"

    @property
    def categories(self) -> frozenset[str]:
        """The three-character categories the entry can match, for an indexed prefilter."""
        found: set[str] = set()
        for code_range in (*self.codes, *self.with_any_of):
            letter = code_range.first[0]
            for number in range(int(code_range.first[1:3]), int(code_range.last[1:3]) + 1):
                found.add(f"{letter}{number:02d}")
        return frozenset(found)


@dataclass(frozen=True, slots=True)
class CatastrophicRule:
    enabled: bool
    window_months: int
    capacity_to_pay_share: Decimal
    subsistence_per_person: Decimal
    equivalence_exponent: Decimal
    budget_share_moderate: Decimal
    budget_share_high: Decimal
    mitigation: str


@dataclass(frozen=True, slots=True)
class ImpoverishingRule:
    enabled: bool
    window_months: int
    monitoring_line: Mapping[int, Decimal]
    mitigation: str

    def line_for(self, year: int) -> tuple[int, Decimal] | None:
        """(year whose line applies, line): ``year``'s own, else the latest earlier one."""
        known = [y for y in self.monitoring_line if y <= year]
        if not known:
            return None
        chosen = max(known)
        return chosen, self.monitoring_line[chosen]


@dataclass(frozen=True, slots=True)
class MedicalBillRule:
    enabled: bool
    period: str  # "calendar-year" or "last-12-months"
    priority_statuses: frozenset[str]
    priority_ratio: Decimal
    other_ratio: Decimal
    rural_disposable_income: Mapping[int, Decimal]
    mitigation: str

    def income_for(self, assessment_year: int) -> tuple[int, Decimal] | None:
        """The previous year's income figure, else the latest earlier one known."""
        known = [y for y in self.rural_disposable_income if y <= assessment_year - 1]
        if not known:
            return None
        chosen = max(known)
        return chosen, self.rural_disposable_income[chosen]


@dataclass(frozen=True, slots=True)
class DiseaseRule:
    enabled: bool
    statuses: frozenset[str]  # empty: every household
    diseases: tuple[Disease, ...]
    mitigation: str
    #: code -> the diseases whose codes it matches: a city has few distinct codes, and the
    #: full recompute asked every range of every disease for each diagnosis of each person.
    _matching: dict[str, tuple[Disease, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def applies_to(self, status: str) -> bool:
        return not self.statuses or status in self.statuses

    def disease_of(self, code: str, person_codes: Sequence[str]) -> Disease | None:
        matching = self._matching.get(code)
        if matching is None:
            matching = tuple(d for d in self.diseases if d.matches(code))
            self._matching[code] = matching
        for disease in matching:
            if disease.confirmed_by(person_codes):
                return disease
        return None

    @property
    def categories(self) -> frozenset[str]:
        return frozenset().union(*(d.categories for d in self.diseases))


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Every rule, with the version that each flag it raises records."""

    version: str
    source: str
    return_to_poverty: frozenset[str]
    unsettled_claims: str  # "count-in-full" or "ignore"
    catastrophic: CatastrophicRule
    impoverishing: ImpoverishingRule
    medical_bill: MedicalBillRule
    serious_illness: DiseaseRule
    chronic_burden: DiseaseRule

    def enabled(self, rule: str) -> bool:
        return bool(getattr(self, _RULE_FIELDS[rule]).enabled)

    def window_start(self, as_of: dt.date) -> dt.date:
        """The first day any rule looks at: the widest window ending on ``as_of``."""
        months = max(self.catastrophic.window_months, self.impoverishing.window_months, 12)
        return months_before(as_of, months)

    @property
    def condition_categories(self) -> frozenset[str]:
        return self.serious_illness.categories | self.chronic_burden.categories


#: rule id -> the RuleSet field that holds it.
_RULE_FIELDS = {
    CATASTROPHIC: "catastrophic",
    IMPOVERISHING: "impoverishing",
    MEDICAL_BILL: "medical_bill",
    SERIOUS_ILLNESS: "serious_illness",
    CHRONIC_BURDEN: "chronic_burden",
}


@lru_cache(maxsize=1024)  # a recompute asks for the same few windows for every household
def months_before(day: dt.date, months: int) -> dt.date:
    """The first day of the ``months`` months ending on ``day``: 2026-10-31, 12 -> 2025-11-01."""
    month_index = day.year * 12 + day.month - 1 - months
    year, month = divmod(month_index, 12)
    month += 1
    # The same day of the month ``months`` back (clamped to that month's length), plus one.
    last_day = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return dt.date(year, month, min(day.day, last_day)) + dt.timedelta(days=1)


# -- reading the file ---------------------------------------------------------------------


class _Reader:
    """Reads typed values out of the parsed TOML, collecting a message per bad key."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.problems: list[str] = []

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key)
        if not isinstance(value, dict):
            self.problems.append(f"[{key}]: missing table")
            return {}
        return value

    def _get(self, table: Mapping[str, Any], path: str, key: str) -> Any:
        if key not in table:
            self.problems.append(f"{path}.{key}: missing")
            return None
        return table[key]

    def boolean(self, table: Mapping[str, Any], path: str, key: str) -> bool:
        value = self._get(table, path, key)
        if value is not None and not isinstance(value, bool):
            self.problems.append(f"{path}.{key}: must be true or false, got {value!r}")
        return bool(value)

    def text(self, table: Mapping[str, Any], path: str, key: str) -> str:
        value = self._get(table, path, key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            self.problems.append(f"{path}.{key}: must be a non-empty string, got {value!r}")
            return ""
        return value or ""

    def choice(self, table: Mapping[str, Any], path: str, key: str, options: Sequence[str]) -> str:
        value = self.text(table, path, key)
        if value and value not in options:
            self.problems.append(
                f"{path}.{key}: must be one of {', '.join(options)}, got {value!r}"
            )
        return value

    def number(
        self,
        table: Mapping[str, Any],
        path: str,
        key: str,
        *,
        low: Decimal = Decimal(0),
        high: Decimal | None = None,
    ) -> Decimal:
        value = self._get(table, path, key)
        return (
            self._decimal(value, f"{path}.{key}", low=low, high=high)
            if value is not None
            else Decimal(0)
        )

    def _decimal(self, value: Any, where: str, *, low: Decimal, high: Decimal | None) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            self.problems.append(f"{where}: must be a number, got {value!r}")
            return Decimal(0)
        number = Decimal(value)
        if not number.is_finite() or number < low or (high is not None and number > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            self.problems.append(f"{where}: must be {span}, got {value}")
        return number

    def months(self, table: Mapping[str, Any], path: str, key: str) -> int:
        value = self._get(table, path, key)
        if value is None:
            return 12
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 36:
            self.problems.append(f"{path}.{key}: must be a whole number of months, 1 to 36")
            return 12
        return value

    def statuses(self, table: Mapping[str, Any], path: str, key: str) -> frozenset[str]:
        value = self._get(table, path, key)
        if value is None:
            return frozenset()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problems.append(f"{path}.{key}: must be a list of registry statuses")
            return frozenset()
        unknown = [v for v in value if v not in REGISTRY_STATUSES]
        if unknown:
            known = ", ".join(f"{code} ({name})" for code, name in REGISTRY_STATUSES.items())
            self.problems.append(f"{path}.{key}: unknown status {unknown[0]!r} (known: {known})")
        return frozenset(v for v in value if v in REGISTRY_STATUSES)

    def yearly(self, table: Mapping[str, Any], path: str, key: str) -> dict[int, Decimal]:
        value = self._get(table, path, key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not value:
            self.problems.append(f"{path}.{key}: must be a table of year = amount")
            return {}
        found: dict[int, Decimal] = {}
        for year, amount in value.items():
            if not (year.isdigit() and 2000 <= int(year) <= 2100):
                self.problems.append(f"{path}.{key}.{year}: the key must be a year such as 2021")
                continue
            found[int(year)] = self._decimal(
                amount, f"{path}.{key}.{year}", low=Decimal(0), high=None
            )
        return found

    def diseases(self, table: Mapping[str, Any], path: str, key: str) -> tuple[Disease, ...]:
        value = self._get(table, path, key)
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            self.problems.append(f"{path}.{key}: must list at least one [[{path}.{key}]] entry")
            return ()
        found = []
        for index, entry in enumerate(value):
            where = f"{path}.{key}[{index}]"
            if not isinstance(entry, dict):
                self.problems.append(f"{where}: must be a table")
                continue
            name = self.text(entry, where, "name")
            english = self.text(entry, where, "english")
            codes = self._codes(entry, where, "icd10", required=True)
            with_any_of = self._codes(entry, where, "with_any_of", required=False)
            if name and codes:
                found.append(Disease(name, english, codes, with_any_of))
        return tuple(found)

    def _codes(
        self, entry: Mapping[str, Any], where: str, key: str, *, required: bool
    ) -> tuple[Icd10Range, ...]:
        value = entry.get(key)
        if value is None:
            if required:
                self.problems.append(f"{where}.{key}: missing")
            return ()
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.problems.append(f'{where}.{key}: must be a list of ICD-10 codes such as ["C16"]')
            return ()
        ranges = []
        for text in value:
            try:
                ranges.append(Icd10Range.parse(text))
            except ValueError as error:
                self.problems.append(f"{where}.{key}: {error}")
        return tuple(ranges)


_RATIO = {"low": Decimal(0), "high": Decimal(10)}


def parse_rules(text: str, source: str = "rule file") -> RuleSet:
    """The rule set in TOML ``text``; raises RuleFileError naming every faulty key."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as error:
        raise RuleFileError([f"not valid TOML: {error}"], source) from None
    read = _Reader(data)
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        read.problems.append('version: missing; give the rule set a version such as "2026.1"')
        version = ""

    statuses = read.table("statuses")
    costs = read.table("costs")
    c = read.table(CATASTROPHIC)
    i = read.table(IMPOVERISHING)
    m = read.table(MEDICAL_BILL)
    s = read.table(SERIOUS_ILLNESS)
    h = read.table(CHRONIC_BURDEN)
    rules = RuleSet(
        version=version.strip(),
        source=source,
        return_to_poverty=read.statuses(statuses, "statuses", "return_to_poverty"),
        unsettled_claims=read.choice(
            costs, "costs", "unsettled_claims", ("count-in-full", "ignore")
        ),
        catastrophic=CatastrophicRule(
            enabled=read.boolean(c, CATASTROPHIC, "enabled"),
            window_months=read.months(c, CATASTROPHIC, "window_months"),
            capacity_to_pay_share=read.number(c, CATASTROPHIC, "capacity_to_pay_share", **_RATIO),
            subsistence_per_person=read.number(c, CATASTROPHIC, "subsistence_per_person"),
            equivalence_exponent=read.number(
                c, CATASTROPHIC, "equivalence_exponent", high=Decimal(1)
            ),
            budget_share_moderate=read.number(c, CATASTROPHIC, "budget_share_moderate", **_RATIO),
            budget_share_high=read.number(c, CATASTROPHIC, "budget_share_high", **_RATIO),
            mitigation=read.text(c, CATASTROPHIC, "mitigation"),
        ),
        impoverishing=ImpoverishingRule(
            enabled=read.boolean(i, IMPOVERISHING, "enabled"),
            window_months=read.months(i, IMPOVERISHING, "window_months"),
            monitoring_line=read.yearly(i, IMPOVERISHING, "monitoring_line"),
            mitigation=read.text(i, IMPOVERISHING, "mitigation"),
        ),
        medical_bill=MedicalBillRule(
            enabled=read.boolean(m, MEDICAL_BILL, "enabled"),
            period=read.choice(m, MEDICAL_BILL, "period", ("calendar-year", "last-12-months")),
            priority_statuses=read.statuses(m, MEDICAL_BILL, "priority_statuses"),
            priority_ratio=read.number(m, MEDICAL_BILL, "priority_ratio", **_RATIO),
            other_ratio=read.number(m, MEDICAL_BILL, "other_ratio", **_RATIO),
            rural_disposable_income=read.yearly(m, MEDICAL_BILL, "rural_disposable_income"),
            mitigation=read.text(m, MEDICAL_BILL, "mitigation"),
        ),
        serious_illness=DiseaseRule(
            enabled=read.boolean(s, SERIOUS_ILLNESS, "enabled"),
            statuses=read.statuses(s, SERIOUS_ILLNESS, "statuses"),
            diseases=read.diseases(s, SERIOUS_ILLNESS, "diseases"),
            mitigation=read.text(s, SERIOUS_ILLNESS, "mitigation"),
        ),
        chronic_burden=DiseaseRule(
            enabled=read.boolean(h, CHRONIC_BURDEN, "enabled"),
            statuses=read.statuses(h, CHRONIC_BURDEN, "statuses"),
            diseases=read.diseases(h, CHRONIC_BURDEN, "conditions"),
            mitigation=read.text(h, CHRONIC_BURDEN, "mitigation"),
        ),
    )
    if rules.catastrophic.budget_share_moderate > rules.catastrophic.budget_share_high:
        read.problems.append(
            f"{CATASTROPHIC}.budget_share_moderate must not exceed budget_share_high"
        )
    if read.problems:
        raise RuleFileError(read.problems, source)
    return rules


def load_rules(path: Path | None = None) -> RuleSet:
    """The rule set at ``path``, or the shipped defaults."""
    path = path or DEFAULT_RULES_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RuleFileError([f"cannot read: {error.strerror or error}"], str(path)) from None
    except UnicodeDecodeError:
        raise RuleFileError(["the file is not UTF-8 text"], str(path)) from None
    return parse_rules(text, str(path))
