"""The five rules applied to one household: what each finds, with every figure behind it.

:func:`assess` is pure: a household, its members' bills, diagnoses and family-doctor
contracts, the rule set and the day of assessment go in; one :class:`Finding` per enabled
rule comes out, saying whether it fires, each threshold test it made (:class:`Measure`) and
the resources behind them. Amounts are compared exactly, in Decimal, by multiplying rather
than dividing: ``oop >= 0.40 × capacity`` rather than ``oop / capacity >= 0.40``.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache, partial
from typing import Literal

from health.poverty.costs import CostLine, CostTotals
from health.poverty.households import Household
from health.poverty.money import format_share, format_yuan
from health.poverty.rules import (
    CATASTROPHIC,
    CHRONIC_BURDEN,
    IMPOVERISHING,
    MEDICAL_BILL,
    RULE_NAMES,
    SERIOUS_ILLNESS,
    CatastrophicRule,
    Disease,
    DiseaseRule,
    RuleSet,
    months_before,
)

State = Literal["fires", "clear", "unknown"]
_RATIO_PLACES = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """An active Condition of a household member, as the rules need it."""

    condition_id: str
    patient_id: str
    code: str  # ICD-10, normalised (C16.9)
    display: str | None


@dataclass(frozen=True, slots=True)
class Measure:
    """One threshold test: the figure, the threshold, how they compare and whether it held."""

    code: str
    label: str
    value: Decimal | None  # None when the test has no figure (a diagnosis)
    threshold: Decimal | None
    comparator: str  # ">=", ">", "<" or "in-list"
    unit: str  # "CNY" or "ratio"
    met: bool
    risk: str  # risk-probability code when met: "high" or "moderate"
    #: Builds the rationale a township worker reads; only evidence that is written needs it.
    explain: Callable[[], str] = field(repr=False, compare=False)

    @property
    def rationale(self) -> str:
        return self.explain()


@dataclass(slots=True)
class Finding:
    rule: str
    kind: str  # code of ILLNESS_POVERTY_FLAG_KINDS
    state: State
    measures: list[Measure] = field(default_factory=list)
    #: References behind the finding ("ExplanationOfBenefit/1", "Condition/2"), sorted.
    basis: list[str] = field(default_factory=list)
    #: The period whose bills count, and what they add up to (the income rules).
    period: tuple[dt.date, dt.date] | None = None
    totals: CostTotals | None = None
    #: A remark on the whole finding (the bills' split, why it was not assessed), or what
    #: builds it.
    remark: str | Callable[[], str] | None = None

    @property
    def note(self) -> str | None:
        return self.remark() if callable(self.remark) else self.remark

    @property
    def fires(self) -> bool:
        return self.state == "fires"

    @property
    def risk(self) -> str:
        met = [m.risk for m in self.measures if m.met]
        return "high" if "high" in met or not met else "moderate"


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything known about one household's members, for the window being assessed."""

    household: Household
    costs: Sequence[CostLine]
    diagnoses: Sequence[Diagnosis]
    #: Members with an active family-doctor contract (patient id -> EpisodeOfCare id).
    contracts: dict[str, str]
    #: Member names by patient id, for the rationale a township worker reads.
    names: dict[str, str] = field(default_factory=dict)


def _ratio(part: Decimal, whole: Decimal) -> Decimal:
    return (part / whole).quantize(_RATIO_PLACES, rounding=ROUND_HALF_UP)


def _window(lines: Sequence[CostLine], start: dt.date, end: dt.date) -> list[CostLine]:
    return [line for line in lines if start <= line.on <= end]


def income_kind(household: Household, rules: RuleSet) -> str:
    return (
        "illness-return-risk"
        if household.status in rules.return_to_poverty
        else "illness-poverty-risk"
    )


def _figures(totals: CostTotals, months: int) -> str:
    # No dates here: the window's dates are in the costs extension, and evidence that only
    # moved with the calendar is not rewritten.
    return (
        f"近 {months} 个月医疗总费用 {format_yuan(totals.billed)}，"
        f"基本医保 {format_yuan(totals.basic)}，大病保险 {format_yuan(totals.serious)}，"
        f"医疗救助 {format_yuan(totals.assistance)}，其他 {format_yuan(totals.other)}，"
        f"个人自付 {format_yuan(totals.out_of_pocket)}"
        + (f"（含未结算账单 {totals.unsettled} 张）" if totals.unsettled else "")
    )


@lru_cache(maxsize=256)  # a power with a fractional exponent takes ~40 µs; sizes are few
def _subsistence(per_person: Decimal, exponent: Decimal, size: Decimal) -> Decimal:
    """The household's subsistence spending: per person times size to the equivalence
    exponent (WHO)."""
    return per_person * size**exponent


def _catastrophic(evidence: Evidence, rules: RuleSet, as_of: dt.date) -> Finding:
    rule = rules.catastrophic
    household = evidence.household
    start = months_before(as_of, rule.window_months)
    lines = _window(evidence.costs, start, as_of)
    totals = CostTotals.of(lines)
    finding = Finding(
        CATASTROPHIC,
        income_kind(household, rules),
        "clear",
        period=(start, as_of),
        totals=totals,
        basis=sorted(totals.sources),
    )
    income = household.income
    if income is None:
        finding.state = "unknown"
        finding.remark = "家庭年人均纯收入缺失，无法评估 per-capita income missing: not assessed"
        return finding
    oop = totals.out_of_pocket
    size = Decimal(household.size)
    subsistence = _subsistence(rule.subsistence_per_person, rule.equivalence_exponent, size)
    capacity = income - subsistence
    if capacity > 0:
        met = oop >= rule.capacity_to_pay_share * capacity
        share = _ratio(oop, capacity)

        rationale = partial(_capacity_text, oop, capacity, income, subsistence, share, rule)
    else:
        met = oop > 0
        share = None

        rationale = partial(_no_capacity_text, oop, income, subsistence)

    finding.measures.append(
        Measure(
            "capacity-to-pay-share",
            "自付占支付能力（WHO）out-of-pocket share of capacity to pay (WHO)",
            share,
            rule.capacity_to_pay_share,
            ">=",
            "ratio",
            met,
            "high",
            rationale,
        )
    )
    for code, threshold, risk in (
        ("budget-share-10", rule.budget_share_moderate, "moderate"),
        ("budget-share-25", rule.budget_share_high, "high"),
    ):
        met = oop > threshold * income if income > 0 else oop > 0
        share = _ratio(oop, income) if income > 0 else None
        finding.measures.append(
            Measure(
                code,
                f"自付占家庭收入（SDG 3.8.2，> {format_share(threshold)}）"
                f"out-of-pocket share of household income (SDG 3.8.2)",
                share,
                threshold,
                ">",
                "ratio",
                met,
                risk,
                partial(_budget_text, oop, income, share, threshold),
            )
        )
    if any(m.met for m in finding.measures):
        finding.state = "fires"
    finding.remark = partial(_figures, totals, rule.window_months)
    return finding


def _impoverishing(evidence: Evidence, rules: RuleSet, as_of: dt.date) -> Finding:
    rule = rules.impoverishing
    household = evidence.household
    start = months_before(as_of, rule.window_months)
    lines = _window(evidence.costs, start, as_of)
    totals = CostTotals.of(lines)
    finding = Finding(
        IMPOVERISHING,
        income_kind(household, rules),
        "clear",
        period=(start, as_of),
        totals=totals,
        basis=sorted(totals.sources),
    )
    line = rule.line_for(as_of.year)
    if household.income_per_capita is None or line is None:
        finding.state = "unknown"
        finding.remark = (
            "家庭年人均纯收入缺失，无法评估 per-capita income missing: not assessed"
            if household.income_per_capita is None
            else f"规则未给出 {as_of.year} 年及以前的监测线 no monitoring line for {as_of.year}"
        )
        return finding
    line_year, monitoring_line = line
    size = Decimal(household.size)
    oop = totals.out_of_pocket
    income_pc = household.income_per_capita
    remaining = ((income_pc * size - oop) / size).quantize(Decimal("0.01"), ROUND_HALF_UP)
    met = oop > 0 and income_pc * size - oop < monitoring_line * size
    pushed_below = income_pc >= monitoring_line
    finding.measures.append(
        Measure(
            "income-after-health-spending-per-capita",
            "扣除自付医疗费用后的人均纯收入 per-capita income after out-of-pocket spending",
            remaining,
            monitoring_line,
            "<",
            "CNY",
            met,
            "high" if pushed_below else "moderate",
            partial(
                _impoverishing_text,
                income_pc,
                oop,
                size,
                remaining,
                line_year,
                monitoring_line,
                met,
            ),
        )
    )
    finding.state = "fires" if met else "clear"
    finding.remark = partial(_figures, totals, rule.window_months)
    return finding


def medical_bill_start(rules: RuleSet, as_of: dt.date) -> dt.date:
    """The first day of the medical-bill alert's period: the insurance year, or 12 months."""
    if rules.medical_bill.period == "calendar-year":
        return dt.date(as_of.year, 1, 1)
    return months_before(as_of, 12)


def _medical_bill(evidence: Evidence, rules: RuleSet, as_of: dt.date) -> Finding:
    rule = rules.medical_bill
    household = evidence.household
    start = medical_bill_start(rules, as_of)
    span = "本医保年度" if rule.period == "calendar-year" else "近 12 个月"
    lines = _window(evidence.costs, start, as_of)
    finding = Finding(MEDICAL_BILL, "medical-bill-alert", "clear", period=(start, as_of))
    figure = rule.income_for(as_of.year)
    if figure is None:
        finding.state = "unknown"
        finding.remark = f"规则未给出 {as_of.year - 1} 年农村居民人均可支配收入 no income figure"
        return finding
    income_year, income = figure
    priority = household.status in rule.priority_statuses
    ratio = rule.priority_ratio if priority else rule.other_ratio
    threshold = (ratio * income).quantize(Decimal("0.01"), ROUND_HALF_UP)
    per_person: dict[str, list[CostLine]] = defaultdict(list)
    for line in lines:
        per_person[line.patient_id].append(line)
    ranked = sorted(
        (
            (CostTotals.of(person_lines), patient_id)
            for patient_id, person_lines in per_person.items()
        ),
        key=lambda item: (-item[0].out_of_pocket, item[1]),
    )
    basis: set[str] = set()
    for totals, patient_id in ranked:
        if totals.out_of_pocket <= 0:
            continue
        met = totals.out_of_pocket > ratio * income
        name = evidence.names.get(patient_id, f"Patient/{patient_id}")
        finding.measures.append(
            Measure(
                "person-out-of-pocket",
                f"{name} 年度个人自付 annual out-of-pocket of {name}",
                totals.out_of_pocket,
                threshold,
                ">",
                "CNY",
                met,
                "high",
                partial(
                    _bill_text, name, span, totals, income_year, income, ratio, threshold, household
                ),
            )
        )
        if met:
            basis.update(totals.sources)
    if not basis:
        basis.update(line.source for line in lines)
    finding.basis = sorted(basis)
    finding.state = "fires" if any(m.met for m in finding.measures) else "clear"
    return finding


def _diagnoses_by_person(evidence: Evidence) -> dict[str, list[Diagnosis]]:
    found: dict[str, list[Diagnosis]] = defaultdict(list)
    members = set(evidence.household.patient_ids)
    for diagnosis in evidence.diagnoses:
        if diagnosis.patient_id in members:
            found[diagnosis.patient_id].append(diagnosis)
    return found


def _qualifying(rule: DiseaseRule, evidence: Evidence) -> list[tuple[Diagnosis, Disease]]:
    found = []
    for diagnoses in _diagnoses_by_person(evidence).values():
        codes = [d.code for d in diagnoses]
        for diagnosis in diagnoses:
            disease = rule.disease_of(diagnosis.code, codes)
            if disease is not None:
                found.append((diagnosis, disease))
    return sorted(found, key=lambda item: (item[0].patient_id, item[0].code, item[0].condition_id))


def _serious_illness(evidence: Evidence, rules: RuleSet, as_of: dt.date) -> Finding:
    rule = rules.serious_illness
    finding = Finding(SERIOUS_ILLNESS, "serious-illness", "clear")
    if not rule.applies_to(evidence.household.status):
        finding.remark = f"规则不适用于{evidence.household.status_text} not applied to this status"
        return finding
    for diagnosis, disease in _qualifying(rule, evidence):
        name = evidence.names.get(diagnosis.patient_id, f"Patient/{diagnosis.patient_id}")
        finding.measures.append(
            Measure(
                "special-treatment-disease",
                f"{name}：{disease.name} {disease.english}",
                None,
                None,
                "in-list",
                "ratio",
                True,
                "high",
                partial(_serious_text, name, diagnosis, disease),
            )
        )
        finding.basis.append(f"Condition/{diagnosis.condition_id}")
    finding.basis.sort()
    finding.state = "fires" if finding.measures else "clear"
    return finding


def _chronic_burden(evidence: Evidence, rules: RuleSet, as_of: dt.date) -> Finding:
    rule = rules.chronic_burden
    finding = Finding(CHRONIC_BURDEN, "chronic-burden", "clear")
    if not rule.applies_to(evidence.household.status):
        finding.remark = f"规则不适用于{evidence.household.status_text} not applied to this status"
        return finding
    for diagnosis, disease in _qualifying(rule, evidence):
        if diagnosis.patient_id in evidence.contracts:
            continue
        name = evidence.names.get(diagnosis.patient_id, f"Patient/{diagnosis.patient_id}")
        finding.measures.append(
            Measure(
                "chronic-without-contract",
                f"{name}：{disease.name} {disease.english}",
                None,
                None,
                "in-list",
                "ratio",
                True,
                "moderate",
                partial(_chronic_text, name, diagnosis, disease),
            )
        )
        finding.basis.append(f"Condition/{diagnosis.condition_id}")
    finding.basis.sort()
    finding.state = "fires" if finding.measures else "clear"
    return finding


_RULES = {
    CATASTROPHIC: _catastrophic,
    IMPOVERISHING: _impoverishing,
    MEDICAL_BILL: _medical_bill,
    SERIOUS_ILLNESS: _serious_illness,
    CHRONIC_BURDEN: _chronic_burden,
}


def assess(evidence: Evidence, rules: RuleSet, as_of: dt.date) -> list[Finding]:
    """One finding per enabled rule, in the order of RULE_NAMES."""
    return [_RULES[rule](evidence, rules, as_of) for rule in RULE_NAMES if rules.enabled(rule)]


def totals_in(lines: Sequence[CostLine], start: dt.date, end: dt.date) -> CostTotals:
    """What the bills dated from ``start`` to ``end`` add up to."""
    return CostTotals.of(_window(lines, start, end))


# -- what a township worker reads (built only for evidence that is written) ---------------


def _capacity_text(
    oop: Decimal,
    capacity: Decimal,
    income: Decimal,
    subsistence: Decimal,
    share: Decimal,
    rule: CatastrophicRule,
) -> str:
    return (
        f"家庭自付 {format_yuan(oop)} 占支付能力 {format_yuan(capacity)}"
        f"（收入 {format_yuan(income)} − 生存性支出 {format_yuan(subsistence)}）的 "
        f"{format_share(share)}，阈值 ≥ {format_share(rule.capacity_to_pay_share)} · "
        f"household out-of-pocket is {format_share(share)} of its capacity to pay"
    )


def _no_capacity_text(oop: Decimal, income: Decimal, subsistence: Decimal) -> str:
    return (
        f"家庭收入 {format_yuan(income)} 不高于生存性支出 {format_yuan(subsistence)}，"
        f"无支付能力，自付 {format_yuan(oop)} · no capacity to pay, "
        f"so any out-of-pocket spending is catastrophic"
    )


def _budget_text(oop: Decimal, income: Decimal, share: Decimal | None, threshold: Decimal) -> str:
    return (
        f"家庭自付 {format_yuan(oop)} 占家庭年纯收入 {format_yuan(income)} 的 "
        f"{format_share(share) if share is not None else '—'}，阈值 > "
        f"{format_share(threshold)} · out-of-pocket share of income"
    )


def _impoverishing_text(
    income_pc: Decimal,
    oop: Decimal,
    size: Decimal,
    remaining: Decimal,
    line_year: int,
    monitoring_line: Decimal,
    met: bool,
) -> str:
    if not met:
        outcome = " · per-capita income after out-of-pocket spending"
    elif income_pc >= monitoring_line:
        outcome = "，因医疗支出跌破监测线 pushed below the line"
    else:
        outcome = "，收入本已低于监测线，医疗支出使其更低 pushed further below the line"
    return (
        f"人均纯收入 {format_yuan(income_pc)} − 人均自付 {format_yuan(oop / size)} = "
        f"{format_yuan(remaining)}，{line_year} 年监测线 {format_yuan(monitoring_line)}{outcome}"
    )


def _bill_text(
    name: str,
    span: str,
    totals: CostTotals,
    income_year: int,
    income: Decimal,
    ratio: Decimal,
    threshold: Decimal,
    household: Household,
) -> str:
    return (
        f"{name} {span}个人自付 {format_yuan(totals.out_of_pocket)}"
        f"（医疗总费用 {format_yuan(totals.billed)}），阈值为 {income_year} 年农村居民"
        f"人均可支配收入 {format_yuan(income)} 的 {format_share(ratio)}"
        f" = {format_yuan(threshold)}（{household.status_text}）"
    )


def _serious_text(name: str, diagnosis: Diagnosis, disease: Disease) -> str:
    return (
        f"{name} 诊断 {diagnosis.display or diagnosis.code}（{diagnosis.code}），"
        f"属国家大病专项救治病种：{disease.label}"
    )


def _chronic_text(name: str, diagnosis: Diagnosis, disease: Disease) -> str:
    return (
        f"{name} 患{disease.name}（{diagnosis.code}），无有效家庭医生签约服务 · "
        f"no family-doctor contract"
    )
