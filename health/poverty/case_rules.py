"""The rule every write of a case's Task is held to, whichever door it comes in by.

A write hook (``records.hooks``) that the application registers on the records API. The
access policy already lets only case workers (commission analysts with the case-worker
right) update Tasks at all, and lets them see every case Task; this hook looks at what a
write does to the follow-up Task of an illness-poverty case (``health.poverty.cases``):

- a system client (its scopes decide) writes it as it likes, as the service itself does;
- anybody else but a case worker is refused (403): a doctor sees the case of her
  patient's household, but its steps are the township's;
- a case worker's write is one step of the case, taken as themselves: the Task as
  :func:`health.poverty.cases.advance` makes it from the version before, by the step the
  write adds — a transition the case may take, authored by the caller, at the time of the
  write. Opening a case, deleting it, rewriting its history or taking two steps at once is
  refused, with the field to correct. ``POST /api/cases/ID/steps`` writes exactly this.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from health.core.clock import utcnow
from health.poverty.cases import (
    ASSIGNED,
    CaseStepError,
    Person,
    Step,
    advance,
    is_case_task,
    read_case,
)
from records.access import Caller
from records.hooks import WriteContext
from records.outcome import FhirError

#: How far a step's time may be from the server's clock (a back-dated visit would hide an
#: overdue case).
STEP_TIME_TOLERANCE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CaseActor:
    """Who writes a case Task, as the application identified the caller."""

    #: A system client, whose scopes decide (a registry integration, a migration).
    system: bool = False
    #: A person with the case-worker right, as their steps name them.
    case_worker: Person | None = None


Identify = Callable[[Caller], Awaitable[CaseActor]]


def _refuse(status: int, message: str, expression: str, code: str = "business-rule") -> FhirError:
    return FhirError.of(status, message, code=code, expression=expression)


def _comparable(task: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in task.items() if k != "id"}
    body["meta"] = {
        k: v for k, v in (task.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    return body


class CaseRules:
    """The hook: register it on ``RecordsContext.write_hooks``."""

    def __init__(self, *, identify: Identify) -> None:
        self.identify = identify

    async def __call__(self, write: WriteContext) -> None:
        items = []
        for change in write.changes:
            if change.res_type != "Task":
                continue
            after = await write.content(change)
            before = await write.previous(change) if change.version > 1 else None
            if any(v is not None and is_case_task(v) for v in (before, after)):
                items.append((before, after))
        if not items:
            return
        actor = await self.identify(write.caller)
        if actor.system:
            return
        worker = actor.case_worker
        if worker is None:
            raise _refuse(
                403,
                "Only case workers (users with the case-worker right) take the steps of "
                "illness-poverty cases",
                "Task",
                code="forbidden",
            )
        now = utcnow()
        for before, after in items:
            step = _one_step(before, after, worker, now)
            if step.stage == ASSIGNED and step.assignee is not None:
                reference = step.assignee.reference or ""
                kind, _, worker_id = reference.partition("/")
                if kind != "Practitioner" or await write.resource(kind, worker_id) is None:
                    raise _refuse(
                        422, f"{reference or 'the assignee'} is not in the directory", "Task.owner"
                    )


def _one_step(
    before: dict[str, Any] | None, after: dict[str, Any] | None, worker: Person, now: dt.datetime
) -> Step:
    """The step ``after`` takes from ``before``, if it is one legal step by ``worker``."""
    if before is None or not is_case_task(before):
        raise _refuse(
            403,
            "Cases are opened by the service when a household is flagged; a case worker "
            "takes the steps of an existing case",
            "Task.meta.tag",
            code="forbidden",
        )
    if after is None:
        raise _refuse(
            403,
            "A case ends with a step (closed or rejected), not by deleting its Task",
            "Task",
            code="forbidden",
        )
    if not is_case_task(after):
        raise _refuse(422, "A case's Task keeps its case tag", "Task.meta.tag")
    had, has = read_case(None, before).steps, read_case(None, after).steps
    if len(has) != len(had) + 1:
        raise _refuse(
            422,
            "A case worker takes one step at a time and keeps the steps before",
            "Task.extension",
        )
    step = has[-1]
    if (step.author.reference, step.author.name) != (worker.reference, worker.name):
        raise _refuse(
            403,
            "A case worker's step is their own: its author is the case worker",
            "Task.extension.author",
            code="forbidden",
        )
    if abs(step.at - now) > STEP_TIME_TOLERANCE:
        raise _refuse(
            422, "A step is taken now: its time is the time of the write", "Task.extension.time"
        )
    try:
        expected = advance(before, step)
    except CaseStepError as error:
        raise _refuse(error.status, str(error), f"Task.extension.{error.field}") from None
    if _comparable(expected) != _comparable(after):
        raise _refuse(
            422,
            "A step changes the case's Task as the step does and in no other way "
            "(as POST /api/cases/ID/steps writes it)",
            "Task",
        )
    return step
