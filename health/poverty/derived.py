"""The rows the record store derives for the illness-poverty service (``records.derived``).

Each object below is registered under the ``records.derived_tables`` entry point group
(``pyproject.toml``); the store calls its ``rows`` for every version of the types it follows,
in the write's transaction. Every row is a function of one resource alone, so nothing here
can go stale when another resource changes: a bill's household is not copied into its row
but joined through the household's members when asked.

* :data:`BILL_AMOUNTS` — ``poverty_costs``: each bill as :func:`health.poverty.costs.cost_line`
  reads it, or why it does not count;
* :data:`HOUSEHOLDS`, :data:`HOUSEHOLD_MEMBERS` — the household Groups;
* :data:`FLAGS` — the illness-poverty Flags;
* :data:`CASES`, :data:`CASE_STEPS` — the follow-up Tasks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table

from health.core.naming import (
    ILLNESS_POVERTY_FLAG_SYSTEM,
    ILLNESS_POVERTY_RULE_SYSTEM,
    ILLNESS_POVERTY_TAG,
    TAG_SYSTEM,
)
from health.poverty.cases import ASSIGNED, is_case_task, read_case
from health.poverty.costs import COST_TYPES, NotCounted, china_date, cost_line
from health.poverty.flags import assessment_id_of
from health.poverty.households import household_from_group, is_household
from health.poverty.money import to_fen
from health.poverty.tables import (
    poverty_case_steps,
    poverty_cases,
    poverty_costs,
    poverty_flags,
    poverty_household_members,
    poverty_households,
)
from records.validation.resident_id import RESIDENT_ID_SYSTEM

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


def household_rows(res_type: str, res_id: str, group: dict[str, Any]) -> list[dict[str, Any]]:
    if not is_household(group):
        return []
    household = household_from_group(res_id, group, _today())
    return [
        {
            "group_id": res_id,
            "number": (household.number or "")[:64],
            "name": household.name[:128],
            "status": household.status,
            "size": household.size,
            "township": (household.township or None) and household.township[:128],
            "village": (household.village or None) and household.village[:128],
            "main_cause": (household.main_cause or None) and household.main_cause[:64],
            "income_per_capita": to_fen(household.income_per_capita)
            if household.income_per_capita is not None
            else None,
        }
    ]


def member_rows(res_type: str, res_id: str, group: dict[str, Any]) -> list[dict[str, Any]]:
    if not is_household(group):
        return []
    household = household_from_group(res_id, group, _today())
    active = {(m.patient_id, m.name) for m in household.members}
    rows = []
    for position, member in enumerate(group.get("member", [])):
        entity = member.get("entity") or {}
        reference = str(entity.get("reference") or "")
        patient_id = reference.split("/", 1)[1] if reference.startswith("Patient/") else None
        name = entity.get("display")
        if (patient_id, name) not in active:
            continue
        identifier = entity.get("identifier") or {}
        resident_id = (
            identifier.get("value") if identifier.get("system") == RESIDENT_ID_SYSTEM else None
        )
        relationship = next(
            (
                m.relationship
                for m in household.members
                if (m.patient_id, m.name) == (patient_id, name)
            ),
            None,
        )
        rows.append(
            {
                "group_id": res_id,
                "position": position,
                "patient_id": patient_id,
                "name": (name or None) and str(name)[:128],
                "resident_id": (resident_id or None) and str(resident_id)[:32],
                "relationship": (relationship or None) and relationship[:32],
            }
        )
    return rows


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
    tagged = any(
        t.get("system") == TAG_SYSTEM and t.get("code") == ILLNESS_POVERTY_TAG["code"]
        for t in (flag.get("meta") or {}).get("tag", [])
    )
    subject = str((flag.get("subject") or {}).get("reference") or "")
    if not tagged or not subject.startswith("Group/"):
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
