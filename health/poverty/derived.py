"""The rows the record store derives for the illness-poverty service (``records.derived``).

Each object below is registered under the ``records.derived_tables`` entry point group
(``pyproject.toml``); the store calls its ``rows`` for every version of the types it follows,
in the write's transaction. Every row is a function of one resource alone, so nothing here
can go stale when another resource changes: a bill's household is not copied into its row
but joined through the household's members when asked.

* :data:`BILL_AMOUNTS` — ``poverty_costs``: each bill as :func:`health.poverty.costs.cost_line`
  reads it, or why it does not count;
* :data:`HOUSEHOLDS`, :data:`HOUSEHOLD_MEMBERS` — the household Groups: all that the rules
  read of one (:class:`~health.poverty.households.HouseholdRecord`, which
  :func:`household_record` gives back from the rows), every member with the period they
  belong, so a recompute on any day never parses a Group;
* :data:`FLAGS` — the illness-poverty Flags, :data:`ASSESSMENTS` — a digest of the evidence
  of each of their RiskAssessments;
* :data:`CASES`, :data:`CASE_STEPS` — the follow-up Tasks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Table

from health.core.naming import (
    ILLNESS_POVERTY_FLAG_SYSTEM,
    ILLNESS_POVERTY_RULE_SYSTEM,
    ILLNESS_POVERTY_TAG,
    REGISTRY_STATUSES,
    TAG_SYSTEM,
)
from health.poverty.cases import ASSIGNED, is_case_task, read_case
from health.poverty.costs import COST_TYPES, NotCounted, china_date, cost_line
from health.poverty.flags import assessment_id_of, evidence_digest
from health.poverty.households import (
    Enrolment,
    HouseholdRecord,
    Member,
    is_household,
    read_household,
)
from health.poverty.money import from_fen, to_fen
from health.poverty.tables import (
    poverty_assessments,
    poverty_case_steps,
    poverty_cases,
    poverty_costs,
    poverty_flags,
    poverty_household_members,
    poverty_households,
)

Rows = Callable[[str, str, dict[str, Any]], list[dict[str, Any]]]
_PATIENT_ELEMENT = {"ExplanationOfBenefit": "patient", "Claim": "patient", "Invoice": "subject"}
_DATE_ELEMENT = {"ExplanationOfBenefit": "created", "Claim": "created", "Invoice": "date"}
CHINA_TIME = dt.timezone(dt.timedelta(hours=8), "CST")


@dataclass(frozen=True)
class Derived:
    """A ``records.derived.DerivedTable``."""

    name: str
    table: Table
    resource_types: frozenset[str]
    extract: Rows

    def rows(self, res_type: str, res_id: str, resource: dict[str, Any]) -> list[dict[str, Any]]:
        return self.extract(res_type, res_id, resource)


# -- bills ---------------------------------------------------------------------------------


def _patient_of(res_type: str, bill: dict[str, Any]) -> str | None:
    reference = str((bill.get(_PATIENT_ELEMENT[res_type]) or {}).get("reference") or "")
    return reference.split("/", 2)[1] if reference.startswith("Patient/") else None


def _date_of(res_type: str, bill: dict[str, Any]) -> dt.date | None:
    value = bill.get(_DATE_ELEMENT[res_type])
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        return china_date(value)
    except ValueError:
        return None


def _currency_of(bill: dict[str, Any]) -> str | None:
    moneys = [t.get("amount") for t in bill.get("total") or [] if isinstance(t, dict)]
    for key in ("total", "totalGross", "totalNet"):
        if isinstance(bill.get(key), dict):
            moneys.append(bill[key])
    for money in moneys:
        if isinstance(money, dict) and money.get("value") is not None:
            return str(money.get("currency") or "CNY")[:8]
    return None


def bill_rows(res_type: str, res_id: str, bill: dict[str, Any]) -> list[dict[str, Any]]:
    row: dict[str, Any] = {
        "res_type": res_type,
        "res_id": res_id,
        "patient_id": _patient_of(res_type, bill),
        "settled_on": _date_of(res_type, bill),
        "currency": _currency_of(bill),
        "provider": None,
        "answers": None,
        "settled": res_type != "Claim",
    }
    try:
        line = cost_line(res_type, res_id, bill)
    except NotCounted as reason:
        return [{**row, "counted": False, "not_counted": str(reason)}]
    provider = line.provider
    return [
        {
            **row,
            "patient_id": line.patient_id,
            "settled_on": line.on,
            "counted": True,
            "not_counted": None,
            "settled": line.settled,
            "answers": line.answers,
            "currency": "CNY",
            "provider": provider[:255] if provider else None,
            "billed": to_fen(line.billed),
            "basic": to_fen(line.basic),
            "serious": to_fen(line.serious),
            "assistance": to_fen(line.assistance),
            "other": to_fen(line.other),
            "out_of_pocket": to_fen(line.out_of_pocket),
        }
    ]


BILL_AMOUNTS = Derived("poverty-costs", poverty_costs, frozenset(COST_TYPES), bill_rows)


# -- households ----------------------------------------------------------------------------


def _today() -> dt.date:
    return dt.datetime.now(CHINA_TIME).date()


def _meta_kept(meta: dict[str, Any]) -> dict[str, Any]:
    """The parts of a Group's meta that its flags copy (``health.poverty.flags.flag_meta``)."""
    return {key: meta[key] for key in ("tag", "security") if meta.get(key)}


def household_rows(res_type: str, res_id: str, group: dict[str, Any]) -> list[dict[str, Any]]:
    if not is_household(group):
        return []
    record = read_household(res_id, group)
    meta = _meta_kept(record.meta)
    return [
        {
            "group_id": res_id,
            "number": record.number or "",
            "name": record.name,
            "status": record.status,
            "size": record.on(_today()).size,
            "township": record.township or None,
            "village": record.village or None,
            "main_cause": record.main_cause or None,
            "income_per_capita": to_fen(record.income_per_capita)
            if record.income_per_capita is not None
            else None,
            "quantity": record.quantity,
            "status_text": record.status_text,
            "income_year": record.income_year,
            "other_causes": orjson.dumps(record.other_causes).decode()
            if record.other_causes
            else None,
            "meta": orjson.dumps(meta).decode() if meta else None,
        }
    ]


def member_rows(res_type: str, res_id: str, group: dict[str, Any]) -> list[dict[str, Any]]:
    if not is_household(group):
        return []
    return [
        {
            "group_id": res_id,
            "position": enrolment.position,
            "patient_id": enrolment.member.patient_id,
            "name": enrolment.member.name,
            "resident_id": enrolment.resident_id and str(enrolment.resident_id)[:32],
            "relationship": enrolment.member.relationship,
            "period_start": enrolment.start,
            "period_end": enrolment.end,
        }
        for enrolment in read_household(res_id, group).enrolments
    ]


#: The columns :func:`household_record` reads, in its order (rows are unpacked: a city's
#: worth of records is read at once, and a tuple unpacks faster than a row names its fields).
RECORD_COLUMNS = tuple(
    poverty_households.c[name]
    for name in (
        "group_id",
        "number",
        "name",
        "status",
        "status_text",
        "quantity",
        "income_per_capita",
        "income_year",
        "main_cause",
        "other_causes",
        "township",
        "village",
        "meta",
    )
)
ENROLMENT_COLUMNS = tuple(
    poverty_household_members.c[name]
    for name in (
        "position",
        "patient_id",
        "name",
        "relationship",
        "resident_id",
        "period_start",
        "period_end",
    )
)


def household_record(row: Sequence[Any], members: Sequence[Sequence[Any]]) -> HouseholdRecord:
    """The :class:`HouseholdRecord` that :func:`household_rows` and :func:`member_rows` wrote:
    a ``poverty_households`` row of :data:`RECORD_COLUMNS` and its members' rows of
    :data:`ENROLMENT_COLUMNS`, by position."""
    (
        group_id,
        number,
        name,
        status,
        status_text,
        quantity,
        income_per_capita,
        income_year,
        main_cause,
        other_causes,
        township,
        village,
        meta,
    ) = row
    return HouseholdRecord(
        group_id=group_id,
        number=number or None,
        name=name,
        status=status,
        status_text=status_text or REGISTRY_STATUSES[status],
        quantity=quantity or 0,
        enrolments=[
            Enrolment(position, Member(patient, member_name, relationship), resident, start, end)
            for position, patient, member_name, relationship, resident, start, end in members
        ],
        income_per_capita=from_fen(income_per_capita) if income_per_capita is not None else None,
        income_year=income_year,
        main_cause=main_cause,
        other_causes=tuple(orjson.loads(other_causes)) if other_causes else (),
        township=township,
        village=village,
        meta=orjson.loads(meta) if meta else {},
    )


HOUSEHOLDS = Derived("poverty-households", poverty_households, frozenset({"Group"}), household_rows)
HOUSEHOLD_MEMBERS = Derived(
    "poverty-household-members", poverty_household_members, frozenset({"Group"}), member_rows
)


# -- flags ---------------------------------------------------------------------------------


def _instant(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _coding(flag: dict[str, Any], system: str) -> dict[str, Any]:
    return next(
        (c for c in (flag.get("code") or {}).get("coding", []) if c.get("system") == system), {}
    )


def flag_rows(res_type: str, res_id: str, flag: dict[str, Any]) -> list[dict[str, Any]]:
    subject = str((flag.get("subject") or {}).get("reference") or "")
    if not _tagged(flag) or not subject.startswith("Group/"):
        return []
    rule = _coding(flag, ILLNESS_POVERTY_RULE_SYSTEM)
    period = flag.get("period") or {}
    return [
        {
            "flag_id": res_id,
            "group_id": subject.split("/", 1)[1],
            "rule": rule.get("code"),
            "kind": _coding(flag, ILLNESS_POVERTY_FLAG_SYSTEM).get("code"),
            "rules_version": (rule.get("version") or None) and str(rule["version"])[:64],
            "active": flag.get("status") == "active" and not period.get("end"),
            "started_at": _instant(period.get("start")),
            "ended_at": _instant(period.get("end")),
            "assessment_id": assessment_id_of(flag),
        }
    ]


FLAGS = Derived("poverty-flags", poverty_flags, frozenset({"Flag"}), flag_rows)


def _tagged(resource: dict[str, Any]) -> bool:
    return any(
        t.get("system") == TAG_SYSTEM and t.get("code") == ILLNESS_POVERTY_TAG["code"]
        for t in (resource.get("meta") or {}).get("tag", [])
    )


def assessment_rows(res_type: str, res_id: str, assessment: dict[str, Any]) -> list[dict[str, Any]]:
    if not _tagged(assessment):
        return []
    return [{"assessment_id": res_id, "evidence": evidence_digest(assessment)}]


ASSESSMENTS = Derived(
    "poverty-assessments", poverty_assessments, frozenset({"RiskAssessment"}), assessment_rows
)


# -- cases ---------------------------------------------------------------------------------


def case_rows(res_type: str, res_id: str, task: dict[str, Any]) -> list[dict[str, Any]]:
    if not is_case_task(task):
        return []
    case = read_case(res_id, task)
    if case.group_id is None:
        return []
    closed = case.first("closed") or case.first("rejected")
    return [
        {
            "task_id": res_id,
            "group_id": case.group_id,
            "stage": case.stage,
            "open": case.open,
            "opened_at": case.opened_at,
            "stage_at": case.stage_at(),
            "first_assisted_at": case.first("assisted"),
            "closed_at": None if case.open else (closed or case.stage_at()),
            "due_at": case.due_at if case.open else None,
            "owner_id": _practitioner(case.owner.reference) if case.owner else None,
            "owner_name": case.owner.name[:128] if case.owner and case.owner.name else None,
            "help": " ".join(case.help)[:255] or None,
            "reason": case.reason,
        }
    ]


def _practitioner(reference: str | None) -> str | None:
    if reference and reference.startswith("Practitioner/"):
        return reference.split("/", 1)[1]
    return None


def step_rows(res_type: str, res_id: str, task: dict[str, Any]) -> list[dict[str, Any]]:
    if not is_case_task(task):
        return []
    return [
        {
            "task_id": res_id,
            "position": position,
            "stage": step.stage,
            "at": step.at,
            "author": step.author.name[:128] or None,
            "note": step.note,
            "help": " ".join(step.help)[:255] or None,
            "reason": step.reason,
            "assignee": step.assignee.name[:128]
            if step.stage == ASSIGNED and step.assignee
            else None,
        }
        for position, step in enumerate(read_case(res_id, task).steps)
    ]


CASES = Derived("poverty-cases", poverty_cases, frozenset({"Task"}), case_rows)
CASE_STEPS = Derived("poverty-case-steps", poverty_case_steps, frozenset({"Task"}), step_rows)
