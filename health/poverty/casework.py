"""Working on illness-poverty cases: listing them (overdue ones first) and taking a step.

A case is a follow-up Task (``health.poverty.cases``); its row in ``poverty_cases`` (derived
by the record store from the Task) says where it stands. :func:`take_step` reads the Task
and writes its next version through the records API as the person taking the step
(``RecordsContext.perform``: their access policy, their AuditEvent, the change feed's
announcement, the write hooks of ``health.poverty.case_rules``), advancing it with
:func:`health.poverty.cases.advance` — which refuses a step the case cannot take, naming the
field to correct. The write carries ``If-Match`` with the version read (or the version the
person last saw), so two workers stepping the same case at once cannot both succeed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from health.poverty.cases import (
    STAGES,
    CaseStepError,
    CaseView,
    Person,
    Step,
    advance,
    is_case_task,
    read_case,
)
from health.poverty.tables import poverty_cases, poverty_households
from records.access import Caller
from records.api.service import RecordsContext, resources_of
from records.interactions import FhirRequest
from records.outcome import FhirError


@dataclass(frozen=True, slots=True)
class CaseRow:
    """One case as a list shows it."""

    task_id: str
    group_id: str
    household_number: str | None
    household_name: str | None
    township: str | None
    village: str | None
    stage: str
    opened_at: dt.datetime
    due_at: dt.datetime | None
    owner_name: str | None
    help: str | None
    #: The Practitioner the case is assigned to.
    owner_id: str | None = None

    def overdue(self, now: dt.datetime) -> bool:
        return self.due_at is not None and _aware(self.due_at) < now


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class CaseFilter:
    """Which cases a list keeps; None (or False) means any."""

    #: Open cases only (identified to monitoring), unless False.
    open_only: bool = True
    #: Only the open cases whose next step was due before this moment.
    overdue_at: dt.datetime | None = None
    stage: str | None = None
    township: str | None = None
    #: Only the cases assigned to this Practitioner.
    owner_id: str | None = None

    def __post_init__(self) -> None:
        if self.stage is not None and self.stage not in STAGES:
            raise CaseStepError("stage", f"stage: one of {', '.join(STAGES)}", status=400)


_c, _h = poverty_cases.c, poverty_households.c


def _conditions(where: CaseFilter) -> list[Any]:
    conditions: list[Any] = []
    if (where.open_only and where.stage not in STAGES) or where.overdue_at is not None:
        conditions.append(_c.open.is_(True))
    if where.overdue_at is not None:
        conditions.append(_c.due_at < where.overdue_at)
    if where.stage is not None:
        conditions.append(_c.stage == where.stage)
    if where.township is not None:
        conditions.append(_h.township == where.township)
    if where.owner_id is not None:
        conditions.append(_c.owner_id == where.owner_id)
    return conditions


_CASES_FROM = poverty_cases.outerjoin(poverty_households, _h.group_id == _c.group_id)


async def count_cases(session: AsyncSession, where: CaseFilter = CaseFilter()) -> int:
    query = select(func.count()).select_from(_CASES_FROM).where(*_conditions(where))
    return int((await session.execute(query)).scalar_one())


async def list_cases(
    session: AsyncSession,
    *,
    open_only: bool = True,
    overdue_at: dt.datetime | None = None,
    where: CaseFilter | None = None,
    own_first: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[CaseRow]:
    """Cases, those due first (open ones only, unless ``open_only`` is false); with
    ``overdue_at``, only the open cases whose next step was due before then. ``where``
    narrows further (and then stands for ``open_only`` and ``overdue_at``); ``own_first``
    puts the cases assigned to that Practitioner before the others."""
    where = where or CaseFilter(open_only=open_only, overdue_at=overdue_at)
    order: list[Any] = [_c.due_at.is_(None), _c.due_at, _c.opened_at, _c.task_id]
    if own_first is not None:
        order.insert(0, case((_c.owner_id == own_first, 0), else_=1))
    query = (
        select(
            _c.task_id,
            _c.group_id,
            _h.number,
            _h.name,
            _h.township,
            _h.village,
            _c.stage,
            _c.opened_at,
            _c.due_at,
            _c.owner_name,
            _c.help,
            _c.owner_id,
        )
        .select_from(_CASES_FROM)
        .where(*_conditions(where))
        .order_by(*order)
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    rows = await session.execute(query)
    return [
        CaseRow(
            row.task_id,
            row.group_id,
            row.number,
            row.name,
            row.township,
            row.village,
            row.stage,
            _aware(row.opened_at),
            _aware(row.due_at) if row.due_at else None,
            row.owner_name,
            row.help,
            row.owner_id,
        )
        for row in rows
    ]


async def take_step(
    records: RecordsContext,
    caller: Caller,
    task_id: str,
    *,
    base_url: str,
    stage: str,
    author: Person,
    at: dt.datetime,
    note: str | None = None,
    help: tuple[str, ...] = (),
    reason: str | None = None,
    worker: str | None = None,
    if_match: int | None = None,
) -> tuple[CaseView, int]:
    """Take one step on the case ``task_id`` as ``caller`` (``stage`` a stage, or
    ``assigned`` with the ``worker``'s Practitioner id); the case as it now stands and the
    Task's new version.

    ``if_match``: the version of the Task the person decided on; a case changed since is
    refused (412) before anything is written. CaseStepError names what is wrong with the
    step (409 for a step the case cannot take now, or a change by someone else meanwhile);
    a FhirError is the records API's refusal (403: not the caller's to change).
    """
    current = await read_as(records, caller, "Task", task_id, base_url=base_url)
    if current is None or not is_case_task(current[0]):
        raise CaseStepError("task", f"there is no case Task/{task_id}", status=404)
    task, version = current
    if if_match is not None and if_match != version:
        raise CaseStepError(
            "If-Match",
            f"the case is at version {version}, not {if_match}: someone changed it since you "
            "read it; look again",
            status=412,
        )
    assignee = None
    if worker is not None:
        found = await read_as(records, caller, "Practitioner", worker, base_url=base_url)
        if found is None:
            raise CaseStepError("worker", f"there is no Practitioner/{worker}", status=422)
        assignee = Person(f"Practitioner/{worker}", _name(found[0]))
    body = advance(task, Step(stage, at, author, note, help, reason, assignee))
    body["id"] = task_id
    try:
        result = await records.perform(
            caller,
            FhirRequest("PUT", f"Task/{task_id}", body=body, if_match=f'W/"{version}"'),
            base_url=base_url,
        )
    except FhirError as error:
        if error.status == 412:
            raise CaseStepError(
                "task", "someone else changed the case meanwhile; look again", status=409
            ) from None
        raise
    (stored,) = resources_of(result)
    assert result.version is not None
    return read_case(task_id, stored), result.version.version


async def read_as(
    records: RecordsContext, caller: Caller, res_type: str, res_id: str, *, base_url: str
) -> tuple[dict[str, Any], int] | None:
    """A resource and its version, read as ``caller``; None if it is not there for them."""
    try:
        result = await records.perform(
            caller, FhirRequest("GET", f"{res_type}/{res_id}"), base_url=base_url
        )
    except FhirError as error:
        if error.status in (400, 404, 410):
            return None
        raise
    found = resources_of(result)
    if not found or result.version is None:
        return None
    return found[0], result.version.version


def _name(practitioner: dict[str, Any]) -> str:
    for name in practitioner.get("name") or []:
        if isinstance(name, dict):
            text = name.get("text") or "".join(
                [str(name.get("family") or ""), *map(str, name.get("given") or [])]
            )
            if text:
                return str(text)
    return str(practitioner.get("id") or "")
