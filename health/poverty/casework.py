"""Working on illness-poverty cases: listing them (overdue ones first) and taking a step.

A case is a follow-up Task (``health.poverty.cases``); its row in ``poverty_cases`` (derived
by the record store from the Task) says where it stands. :func:`take_step` reads the Task,
advances it with :func:`health.poverty.cases.advance` — which refuses a step the case cannot
take, naming the field to correct — and writes the new version in one transaction, with the
version it read as the precondition, so two workers stepping the same case at once cannot
both succeed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from health.core.database import Database
from health.poverty.cases import CaseStepError, CaseView, Person, Step, advance, read_case
from health.poverty.tables import poverty_cases, poverty_households
from records.indexing import SearchIndexer
from records.outcome import FhirError
from records.store import ResourceStore
from records.validation import validate_resource


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

    def overdue(self, now: dt.datetime) -> bool:
        return self.due_at is not None and _aware(self.due_at) < now


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def list_cases(
    session: AsyncSession, *, open_only: bool = True, overdue_at: dt.datetime | None = None
) -> list[CaseRow]:
    """Cases, those due first (open ones only, unless ``open_only`` is false); with
    ``overdue_at``, only the open cases whose next step was due before then."""
    c, h = poverty_cases.c, poverty_households.c
    query = (
        select(
            c.task_id,
            c.group_id,
            h.number,
            h.name,
            h.township,
            h.village,
            c.stage,
            c.opened_at,
            c.due_at,
            c.owner_name,
            c.help,
        )
        .select_from(poverty_cases.outerjoin(poverty_households, h.group_id == c.group_id))
        .order_by(c.due_at.is_(None), c.due_at, c.opened_at, c.task_id)
    )
    if open_only or overdue_at is not None:
        query = query.where(c.open.is_(True))
    if overdue_at is not None:
        query = query.where(c.due_at < overdue_at)
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
        )
        for row in rows
    ]


async def take_step(
    database: Database,
    indexer: SearchIndexer,
    task_id: str,
    *,
    stage: str,
    author: Person,
    at: dt.datetime,
    note: str | None = None,
    help: tuple[str, ...] = (),
    reason: str | None = None,
    worker: str | None = None,
) -> CaseView:
    """Take one step on the case ``task_id`` (``stage`` a stage, or ``assigned`` with the
    ``worker``'s Practitioner id) and return the case as it now stands; CaseStepError names
    what is wrong with the step."""
    async with database.transaction(write=True) as session:
        store = ResourceStore(session, indexer)
        current = await store.current("Task", task_id)
        if current is None or current.content is None:
            raise CaseStepError("task", f"there is no case Task/{task_id}", status=404)
        task = orjson.loads(current.content)
        if read_case(task_id, task).group_id is None:
            raise CaseStepError("task", f"Task/{task_id} is no illness-poverty case", status=404)
        assignee = None
        if worker is not None:
            practitioner = await store.current("Practitioner", worker)
            if practitioner is None or practitioner.content is None:
                raise CaseStepError("worker", f"there is no Practitioner/{worker}", status=422)
            assignee = Person(f"Practitioner/{worker}", _name(orjson.loads(practitioner.content)))
        body = advance(task, Step(stage, at, author, note, help, reason, assignee))
        validate_resource(body)
        try:
            await store.update("Task", task_id, body, if_match=current.version)
        except FhirError as error:
            if error.status == 412:
                raise CaseStepError(
                    "task", "someone else changed the case meanwhile; look again", status=409
                ) from None
            raise
    return read_case(task_id, body)


def _name(practitioner: dict[str, object]) -> str:
    for name in practitioner.get("name") or []:  # type: ignore[attr-defined]
        if isinstance(name, dict):
            text = name.get("text") or "".join(
                [str(name.get("family") or ""), *map(str, name.get("given") or [])]
            )
            if text:
                return str(text)
    return str(practitioner.get("id") or "")
