"""Illness-poverty flags as FHIR: a Flag on the household and the RiskAssessment behind it.

One Flag per household and rule while the rule holds:

* ``Flag``: ``subject`` the household Group, ``category`` ``admin``, ``code`` two codings —
  the kind (``ILLNESS_POVERTY_FLAG_SYSTEM``: 因病致贫风险, 因病返贫风险, 高额医疗费用预警,
  大病患者, 慢病负担未签约) and the rule that raised it (``ILLNESS_POVERTY_RULE_SYSTEM``, the
  coding's ``version`` the rule set's version); ``meta.tag`` ``ILLNESS_POVERTY_TAG``;
  ``period.start`` when raised. The standard ``flag-detail`` extension points to the
  RiskAssessment.
* ``RiskAssessment``: the evidence. ``method`` the rule and version, ``basis`` the Group and
  every ExplanationOfBenefit, Claim, Invoice or Condition behind the finding, one
  ``prediction`` per threshold test (its figure, threshold and comparator in the
  ``illness-poverty-measure`` extension, a rationale in Chinese and English), the bills
  split by payer in the ``illness-poverty-costs`` extension, ``mitigation`` what the rule
  set suggests doing. It is updated (a new version; history keeps the old) when the
  evidence changes.

When the rule no longer holds — the bills leave the window, a contract is signed, income is
updated, the rule is disabled, the household is gone — the Flag becomes ``inactive`` with
``period.end`` set, and its RiskAssessment says why. Flags are never deleted. When the cause
comes back a new Flag is raised: each Flag is one episode.

:func:`plan` decides what to write for one household; it is pure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import orjson

from health.core.clock import fhir_instant
from health.core.ids import new_resource_id
from health.core.naming import (
    DEMO_TAG,
    ILLNESS_POVERTY_COSTS_URL,
    ILLNESS_POVERTY_FLAG_KINDS,
    ILLNESS_POVERTY_FLAG_SYSTEM,
    ILLNESS_POVERTY_MEASURE_SYSTEM,
    ILLNESS_POVERTY_MEASURE_URL,
    ILLNESS_POVERTY_RULE_SYSTEM,
    ILLNESS_POVERTY_TAG,
)
from health.poverty.assessment import Finding, Measure
from health.poverty.households import Household
from health.poverty.money import money
from health.poverty.rules import RULE_NAMES, RuleSet

FLAG_DETAIL_URL = "http://hl7.org/fhir/StructureDefinition/flag-detail"
FLAG_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/flag-category"
RISK_PROBABILITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/risk-probability"
_RATIO_PLACES = Decimal("0.0001")


@dataclass(slots=True)
class StoredFlag:
    """An illness-poverty Flag as stored: what deciding its household's writes needs.

    Read from the flag table (``poverty_flags``, with the digest of its RiskAssessment's
    evidence from ``poverty_assessments``), or from the Flag itself (:meth:`of`). The JSON of
    the Flag and of its RiskAssessment is read (``read``) only when a decision needs it:
    ending the flag, or evidence whose digest is not known.
    """

    flag_id: str
    rule: str | None
    kind: str | None
    #: period.start, as FHIR writes an instant: flags of one rule are taken in this order.
    start: str
    active: bool
    assessment_id: str | None = None
    #: :func:`evidence_digest` of the RiskAssessment as stored, when known.
    evidence: str | None = None
    flag: dict[str, Any] | None = None
    assessment: dict[str, Any] | None = None
    #: Whether ``flag`` and ``assessment`` were read (the assessment may be gone).
    read: bool = False

    @classmethod
    def of(cls, flag_id: str, flag: dict[str, Any]) -> StoredFlag:
        """A Flag as stored, its RiskAssessment still to be put in ``assessment``."""

        def coding(system: str) -> dict[str, Any]:
            for coding in (flag.get("code") or {}).get("coding", []):
                if coding.get("system") == system:
                    return dict(coding)
            return {}

        return cls(
            flag_id,
            coding(ILLNESS_POVERTY_RULE_SYSTEM).get("code"),
            coding(ILLNESS_POVERTY_FLAG_SYSTEM).get("code"),
            str((flag.get("period") or {}).get("start", "")),
            flag.get("status") == "active",
            assessment_id_of(flag),
            flag=flag,
            read=True,
        )


def assessment_id_of(flag: dict[str, Any]) -> str | None:
    for extension in flag.get("extension", []):
        if extension.get("url") == FLAG_DETAIL_URL:
            reference = (extension.get("valueReference") or {}).get("reference", "")
            if reference.startswith("RiskAssessment/"):
                return str(reference.split("/", 1)[1])
    return None


@dataclass(frozen=True, slots=True)
class Write:
    """One resource to create (``create``) or to update to ``data``."""

    res_type: str
    res_id: str
    data: dict[str, Any]
    create: bool


@dataclass(frozen=True, slots=True)
class FlagChange:
    """What happened to one flag: the registry feed and case tracking follow these."""

    action: Literal["raised", "updated", "deactivated"]
    group_id: str
    rule: str
    kind: str
    flag_id: str


@dataclass(slots=True)
class Plan:
    writes: list[Write] = field(default_factory=list)
    changes: list[FlagChange] = field(default_factory=list)
    #: Flags whose stored JSON the decision needs: read them (``StoredFlag.read``) and plan
    #: again; until then ``writes`` and ``changes`` are not to be made.
    needs: list[str] = field(default_factory=list)


# -- building the resources ----------------------------------------------------------------


def flag_meta(household: Household | None) -> dict[str, Any]:
    """The illness-poverty tag, and the demo tag and security labels of the household's Group
    (flags about demo households are demo data too, and go when the demo is removed)."""
    meta: dict[str, Any] = {"tag": [dict(ILLNESS_POVERTY_TAG)]}
    if household is None:
        return meta
    if any(
        t.get("system") == DEMO_TAG["system"] and t.get("code") == DEMO_TAG["code"]
        for t in household.meta.get("tag", [])
    ):
        meta["tag"].append(dict(DEMO_TAG))
    if household.meta.get("security"):
        meta["security"] = [dict(label) for label in household.meta["security"]]
    return meta


def _kind_coding(kind: str) -> dict[str, Any]:
    chinese, english = ILLNESS_POVERTY_FLAG_KINDS[kind]
    return {"system": ILLNESS_POVERTY_FLAG_SYSTEM, "code": kind, "display": f"{chinese} {english}"}


def _rule_coding(rule: str, version: str) -> dict[str, Any]:
    chinese, english = RULE_NAMES[rule]
    return {
        "system": ILLNESS_POVERTY_RULE_SYSTEM,
        "version": version,
        "code": rule,
        "display": f"{chinese} {english}",
    }


def _subject(household: Household) -> dict[str, str]:
    return {"reference": f"Group/{household.group_id}", "display": household.label}


def _number(value: Decimal, unit: str) -> dict[str, Any]:
    if unit == "CNY":
        return {"valueMoney": money(value)}
    return {"valueDecimal": float(value.quantize(_RATIO_PLACES))}


def _prediction(measure: Measure) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "measure", "valueCode": measure.code}]
    if measure.value is not None:
        parts.append({"url": "value", **_number(measure.value, measure.unit)})
    if measure.threshold is not None:
        parts.append({"url": "threshold", **_number(measure.threshold, measure.unit)})
    parts.append({"url": "comparator", "valueCode": measure.comparator})
    parts.append({"url": "met", "valueBoolean": measure.met})
    risk = measure.risk if measure.met else "low"
    return {
        "extension": [{"url": ILLNESS_POVERTY_MEASURE_URL, "extension": parts}],
        "outcome": {
            "coding": [{"system": ILLNESS_POVERTY_MEASURE_SYSTEM, "code": measure.code}],
            "text": measure.label,
        },
        "qualitativeRisk": {"coding": [{"system": RISK_PROBABILITY_SYSTEM, "code": risk}]},
        "rationale": measure.rationale,
    }


def _costs_extension(finding: Finding, household: Household) -> dict[str, Any] | None:
    totals = finding.totals
    if totals is None or finding.period is None:
        return None
    start, end = finding.period
    parts: list[dict[str, Any]] = [
        {"url": "period", "valuePeriod": {"start": start.isoformat(), "end": end.isoformat()}},
        {"url": "household-size", "valueInteger": household.size},
    ]
    if household.income_per_capita is not None:
        parts.append({"url": "income-per-capita", "valueMoney": money(household.income_per_capita)})
    for url, amount in (
        ("billed", totals.billed),
        ("basic-medical-insurance", totals.basic),
        ("serious-illness-insurance", totals.serious),
        ("medical-assistance", totals.assistance),
        ("other-benefit", totals.other),
        ("out-of-pocket", totals.out_of_pocket),
    ):
        parts.append({"url": url, "valueMoney": money(amount)})
    parts.append({"url": "bills", "valueInteger": len(totals.sources)})
    if totals.unsettled:
        parts.append({"url": "unsettled-bills", "valueInteger": totals.unsettled})
    return {"url": ILLNESS_POVERTY_COSTS_URL, "extension": parts}


def assessment_resource(
    finding: Finding,
    household: Household,
    rules: RuleSet,
    *,
    at: dt.datetime,
    outcome: str,
) -> dict[str, Any]:
    """The RiskAssessment holding ``finding``'s evidence (``outcome``: what became of the flag)."""
    chinese, english = RULE_NAMES[finding.rule]
    resource: dict[str, Any] = {"resourceType": "RiskAssessment", "meta": flag_meta(household)}
    costs = _costs_extension(finding, household)
    if costs:
        resource["extension"] = [costs]
    resource.update(
        {
            "status": "final",
            "method": {
                "coding": [_rule_coding(finding.rule, rules.version)],
                "text": f"{chinese} {english}（规则版本 rules {rules.version}）",
            },
            "code": {"coding": [_kind_coding(finding.kind)]},
            "subject": _subject(household),
            "occurrenceDateTime": fhir_instant(at),
            "basis": [{"reference": f"Group/{household.group_id}"}]
            + [{"reference": reference} for reference in finding.basis],
        }
    )
    if finding.measures:
        resource["prediction"] = [_prediction(m) for m in finding.measures]
    mitigation = _mitigation(finding.rule, rules)
    if mitigation:
        resource["mitigation"] = mitigation
    notes = [text for text in (finding.note, outcome) if text]
    if notes:
        resource["note"] = [{"text": text} for text in notes]
    return resource


def _mitigation(rule: str, rules: RuleSet) -> str:
    return {
        "catastrophic-expenditure": rules.catastrophic.mitigation,
        "impoverishing-expenditure": rules.impoverishing.mitigation,
        "medical-bill-alert": rules.medical_bill.mitigation,
        "serious-illness": rules.serious_illness.mitigation,
        "chronic-burden": rules.chronic_burden.mitigation,
    }[rule]


def flag_resource(
    finding: Finding,
    household: Household,
    rules: RuleSet,
    *,
    start: dt.datetime,
    assessment_id: str,
) -> dict[str, Any]:
    kind_chinese, kind_english = ILLNESS_POVERTY_FLAG_KINDS[finding.kind]
    rule_chinese, rule_english = RULE_NAMES[finding.rule]
    return {
        "resourceType": "Flag",
        "meta": flag_meta(household),
        "extension": [
            {
                "url": FLAG_DETAIL_URL,
                "valueReference": {"reference": f"RiskAssessment/{assessment_id}"},
            }
        ],
        "status": "active",
        "category": [
            {
                "coding": [
                    {"system": FLAG_CATEGORY_SYSTEM, "code": "admin", "display": "Administrative"}
                ],
                "text": "行政管理 administrative",
            }
        ],
        "code": {
            "coding": [_kind_coding(finding.kind), _rule_coding(finding.rule, rules.version)],
            "text": f"{kind_chinese}：{rule_chinese} · {kind_english}: {rule_english}",
        },
        "subject": _subject(household),
        "period": {"start": fhir_instant(start)},
    }


def deactivated(flag: dict[str, Any], at: dt.datetime) -> dict[str, Any]:
    body = {k: v for k, v in flag.items() if k not in ("id",)}
    body["meta"] = {
        k: v for k, v in (flag.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    body["status"] = "inactive"
    body["period"] = {**(flag.get("period") or {}), "end": fhir_instant(at)}
    return body


def _comparable(resource: dict[str, Any] | None) -> dict[str, Any] | None:
    """A RiskAssessment without what moves with the day of assessment alone: server meta, id,
    when assessed and the dates of the window. Evidence whose figures, thresholds and bills
    are the same is the same evidence, and is not written again."""
    if resource is None:
        return None
    body = {k: v for k, v in resource.items() if k not in ("id", "occurrenceDateTime")}
    body["meta"] = {
        k: v
        for k, v in (resource.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated")
    }
    body["extension"] = [
        {**e, "extension": [p for p in e.get("extension", []) if p.get("url") != "period"]}
        if e.get("url") == ILLNESS_POVERTY_COSTS_URL
        else e
        for e in resource.get("extension", [])
    ]
    return body


def evidence_digest(assessment: dict[str, Any]) -> str:
    """A digest of what a RiskAssessment says (:func:`_comparable`, as sorted JSON): two with
    the same digest say the same, so the stored one need not be read to tell. A digest made
    otherwise (by an older version of this function) only costs a read: after changing it,
    rebuild ``poverty_assessments`` (``records.derived.rebuild``) to save those reads."""
    text = orjson.dumps(_comparable(assessment), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(text, digest_size=16).hexdigest()


def _same_evidence(body: dict[str, Any], stored: StoredFlag) -> bool | None:
    """Whether ``body`` says what the flag's stored RiskAssessment says; None: that cannot be
    told without reading it. Equal digests mean the same; different ones may yet compare
    equal (``400`` and ``400.0`` written for one amount), so they are read and compared."""
    if stored.read:
        return _comparable(body) == _comparable(stored.assessment)
    if stored.evidence is not None and evidence_digest(body) == stored.evidence:
        return True
    return None


# -- deciding what to write ----------------------------------------------------------------

_RAISED = "规则触发，标记有效 the rule holds: flag active"
_CLEARED = "规则不再触发，标记失效（风险消除）the rule no longer holds: flag inactive"
_DISABLED = (
    "规则已在版本 {version} 中停用，标记失效 rule disabled in rules {version}: flag inactive"
)
_GONE = "家庭户已不存在，标记失效 the household no longer exists: flag inactive"


def plan(
    household: Household | None,
    group_id: str,
    findings: list[Finding],
    existing: list[StoredFlag],
    rules: RuleSet,
    now: dt.datetime,
) -> Plan:
    """What to write so that the household's flags say what ``findings`` found.

    ``household`` None: the Group is gone or is no household any more — every active flag
    goes inactive. A finding whose state is ``unknown`` (income missing) leaves that rule's
    flags as they are.
    """
    result = Plan()
    active: dict[str, list[StoredFlag]] = {}
    for stored in existing:
        if stored.active and stored.rule:
            active.setdefault(stored.rule, []).append(stored)
    for flags in active.values():
        flags.sort(key=lambda f: (f.start, f.flag_id))
    by_rule = {finding.rule: finding for finding in findings}

    def deactivate(stored: StoredFlag, finding: Finding | None, outcome: str) -> None:
        if not stored.read:
            result.needs.append(stored.flag_id)
            return
        if stored.flag is None:  # gone since the flag table was read
            return
        result.writes.append(Write("Flag", stored.flag_id, deactivated(stored.flag, now), False))
        if household is not None and finding is not None and stored.assessment_id:
            body = assessment_resource(finding, household, rules, at=now, outcome=outcome)
            body["code"] = {"coding": [_kind_coding(stored.kind or finding.kind)]}
            if not _same_evidence(body, stored):
                result.writes.append(Write("RiskAssessment", stored.assessment_id, body, False))
        elif stored.assessment_id and stored.assessment is not None:
            body = dict(_comparable(stored.assessment) or {})
            body["occurrenceDateTime"] = fhir_instant(now)
            body["note"] = [*stored.assessment.get("note", []), {"text": outcome}]
            result.writes.append(Write("RiskAssessment", stored.assessment_id, body, False))
        result.changes.append(
            FlagChange(
                "deactivated", group_id, stored.rule or "", stored.kind or "", stored.flag_id
            )
        )

    if household is None:
        for flags in active.values():
            for stored in flags:
                deactivate(stored, None, _GONE)
        return result

    for rule, flags in active.items():
        if rule not in by_rule:
            for stored in flags:
                deactivate(stored, None, _DISABLED.format(version=rules.version))

    for finding in findings:
        flags = active.get(finding.rule, [])
        if finding.state == "unknown":
            continue
        if finding.state == "clear":
            for stored in flags:
                deactivate(stored, finding, _CLEARED)
            continue
        keep = next((f for f in flags if f.kind == finding.kind), None)
        for stored in flags:
            if stored is not keep:
                deactivate(stored, finding, _CLEARED)
        if keep is None:
            assessment_id = new_resource_id()
            flag_id = new_resource_id()
            result.writes.append(
                Write(
                    "RiskAssessment",
                    assessment_id,
                    assessment_resource(finding, household, rules, at=now, outcome=_RAISED),
                    True,
                )
            )
            result.writes.append(
                Write(
                    "Flag",
                    flag_id,
                    flag_resource(
                        finding, household, rules, start=now, assessment_id=assessment_id
                    ),
                    True,
                )
            )
            result.changes.append(
                FlagChange("raised", group_id, finding.rule, finding.kind, flag_id)
            )
            continue
        if not keep.assessment_id:
            continue
        body = assessment_resource(finding, household, rules, at=now, outcome=_RAISED)
        same = _same_evidence(body, keep)
        if same is None:
            result.needs.append(keep.flag_id)
        elif not same:
            result.writes.append(Write("RiskAssessment", keep.assessment_id, body, False))
            result.changes.append(
                FlagChange("updated", group_id, finding.rule, finding.kind, keep.flag_id)
            )
    return result
