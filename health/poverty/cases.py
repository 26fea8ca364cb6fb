"""The follow-up of an illness-poverty case, as one FHIR Task per case.

A case is one household's episode: it opens when a flag is raised on a household that has no
open case, and moves through

    identified (已识别) → verified (已入户核实, the village visit) → assisted (已落实帮扶, which
    help) → monitoring (监测中) → closed (风险消除, risk eliminated)

or ends as rejected (不予认定, with the reason) after identification or verification. More help
may follow help, and a household under monitoring may need help again. Each step records who,
when and a note.

The Task (``meta.tag`` ``ILLNESS_POVERTY_CASE_TAG``):

* ``for`` the household Group, ``focus`` the Flag that opened the case, ``authoredOn`` when;
* ``businessStatus`` the stage (``ILLNESS_POVERTY_STAGE_SYSTEM``), ``status`` what FHIR
  workflow makes of it (requested, in-progress, completed, cancelled);
* ``owner`` the township worker it is assigned to (a Practitioner), ``restriction.period.end``
  when the next step is due — a case past it is overdue;
* one ``ILLNESS_POVERTY_STEP_URL`` extension per step (stage or assignment, time, author,
  note, help given, reason), the notes also as ``note`` so any FHIR client shows them;
  ``output`` the help given, ``statusReason`` the reason of a rejection.

The functions here are pure: they build and advance Task bodies. Opening a case is part of
recording flag changes (``health.poverty.flag_changes``); a person's step is written through
the records API as that person (``health.web.dashboard``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from health.core.clock import fhir_instant
from health.core.naming import (
    ILLNESS_POVERTY_ASSISTANCE_SYSTEM,
    ILLNESS_POVERTY_CASE_TAG,
    ILLNESS_POVERTY_STAGE_SYSTEM,
    ILLNESS_POVERTY_STEP_URL,
    ILLNESS_POVERTY_TASK_SYSTEM,
)

#: stage -> (Chinese, English)
STAGES: dict[str, tuple[str, str]] = {
    "identified": ("已识别", "identified"),
    "verified": ("已入户核实", "verified"),
    "assisted": ("已落实帮扶", "assisted"),
    "monitoring": ("监测中", "monitoring"),
    "closed": ("风险消除", "closed: risk eliminated"),
    "rejected": ("不予认定", "rejected"),
}
OPEN_STAGES = ("identified", "verified", "assisted", "monitoring")
#: Where each open stage may go next.
NEXT_STAGES: dict[str, tuple[str, ...]] = {
    "identified": ("verified", "rejected"),
    "verified": ("assisted", "rejected"),
    "assisted": ("assisted", "monitoring"),
    "monitoring": ("assisted", "closed"),
}
#: Days until the next step is due, from the step that set the stage. The 15 days to verify
#: follow the practice of finishing a township check within 15 working days of an alert (a
#: local rule, NOT VERIFIED as a national one); the rest are the project's defaults: help
#: within a month of the visit, a monitoring review each quarter.
DUE_DAYS: dict[str, int] = {"identified": 15, "verified": 30, "assisted": 30, "monitoring": 90}
_TASK_STATUS = {
    "identified": "requested",
    "verified": "in-progress",
    "assisted": "in-progress",
    "monitoring": "in-progress",
    "closed": "completed",
    "rejected": "cancelled",
}
#: code -> (Chinese, English): the help a case can record.
ASSISTANCE_KINDS: dict[str, tuple[str, str]] = {
    "medical-assistance": ("医疗救助", "medical assistance"),
    "serious-illness-insurance": ("大病保险倾斜支付", "serious-illness insurance"),
    "special-treatment": ("大病专项救治", "special treatment of serious illness"),
    "family-doctor-contract": ("家庭医生签约", "family-doctor contract"),
    "dibao-referral": ("低保转介", "referral to the minimum living allowance (低保)"),
    "temporary-assistance": ("临时救助", "temporary assistance"),
    "other": ("其他帮扶", "other help"),
}
ASSIGNED = "assigned"
#: Who opens cases and ends those of households that are gone.
SERVICE_NAME = "因病致贫返贫标记服务 illness-poverty service"
HOUSEHOLD_GONE = "家庭户已不存在 the household no longer exists"
TASK_CODE = {
    "system": ILLNESS_POVERTY_TASK_SYSTEM,
    "code": "illness-poverty-follow-up",
    "display": "因病致贫返贫帮扶跟进",
}
_NOTE_LIMIT = 2000


class CaseStepError(ValueError):
    """A step that cannot be taken; ``field`` names what to correct."""

    def __init__(self, field: str, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True, slots=True)
class Person:
    """Who did or is given something: a Practitioner reference (or none) and a name."""

    reference: str | None
    name: str

    def fhir(self) -> dict[str, str]:
        return (
            {"reference": self.reference, "display": self.name}
            if self.reference
            else {"display": self.name}
        )


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a case: a stage reached, or an assignment."""

    stage: str  # a key of STAGES, or ASSIGNED
    at: dt.datetime
    author: Person
    note: str | None = None
    help: tuple[str, ...] = ()
    reason: str | None = None
    assignee: Person | None = None


@dataclass(slots=True)
class CaseView:
    """What a Task says of its case."""

    task_id: str | None
    group_id: str | None
    flag_id: str | None
    stage: str
    opened_at: dt.datetime
    due_at: dt.datetime | None
    owner: Person | None
    reason: str | None
    steps: list[Step] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.stage in OPEN_STAGES

    @property
    def help(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for step in self.steps:
            seen.update(dict.fromkeys(step.help))
        return tuple(seen)

    def stage_at(self) -> dt.datetime:
        times = [s.at for s in self.steps if s.stage != ASSIGNED]
        return times[-1] if times else self.opened_at

    def first(self, stage: str) -> dt.datetime | None:
        return next((s.at for s in self.steps if s.stage == stage), None)

    def overdue(self, now: dt.datetime) -> bool:
        return self.open and self.due_at is not None and self.due_at < now


def is_case_task(task: dict[str, Any]) -> bool:
    return task.get("resourceType") == "Task" and any(
        t.get("system") == ILLNESS_POVERTY_CASE_TAG["system"]
        and t.get("code") == ILLNESS_POVERTY_CASE_TAG["code"]
        for t in (task.get("meta") or {}).get("tag", [])
    )


def _stage_concept(stage: str) -> dict[str, Any]:
    chinese, english = STAGES[stage]
    return {
        "coding": [{"system": ILLNESS_POVERTY_STAGE_SYSTEM, "code": stage, "display": chinese}],
        "text": f"{chinese} {english}",
    }


def _help_coding(code: str) -> dict[str, str]:
    chinese, _english = ASSISTANCE_KINDS[code]
    return {"system": ILLNESS_POVERTY_ASSISTANCE_SYSTEM, "code": code, "display": chinese}


def _step_extension(step: Step) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"url": "stage", "valueCode": step.stage},
        {"url": "time", "valueDateTime": fhir_instant(step.at)},
        {"url": "author", "valueReference": step.author.fhir()},
    ]
    if step.note:
        parts.append({"url": "note", "valueString": step.note})
    parts.extend({"url": "help", "valueCoding": _help_coding(code)} for code in step.help)
    if step.reason:
        parts.append({"url": "reason", "valueString": step.reason})
    if step.assignee is not None:
        parts.append({"url": "assignee", "valueReference": step.assignee.fhir()})
    return {"url": ILLNESS_POVERTY_STEP_URL, "extension": parts}


def new_case(
    group_id: str, flag_id: str, *, at: dt.datetime, meta: dict[str, Any], opened_by: str
) -> dict[str, Any]:
    """The Task of a case opened by the Flag ``flag_id`` on household ``group_id``.

    ``meta`` carries the household's demo tag and security labels; the case tag is added.
    """
    tags = [dict(ILLNESS_POVERTY_CASE_TAG)] + [
        t for t in meta.get("tag", []) if t.get("code") != ILLNESS_POVERTY_CASE_TAG["code"]
    ]
    body: dict[str, Any] = {
        "resourceType": "Task",
        "meta": {**{k: v for k, v in meta.items() if k == "security"}, "tag": tags},
        "status": _TASK_STATUS["identified"],
        "businessStatus": _stage_concept("identified"),
        "intent": "order",
        "code": {"coding": [dict(TASK_CODE)], "text": "因病致贫返贫帮扶跟进 follow-up"},
        "focus": {"reference": f"Flag/{flag_id}"},
        "for": {"reference": f"Group/{group_id}"},
        "authoredOn": fhir_instant(at),
        "lastModified": fhir_instant(at),
        "restriction": {"period": {"end": fhir_instant(due(at, "identified"))}},
    }
    body["extension"] = [_step_extension(Step("identified", at, Person(None, opened_by)))]
    return body


def due(at: dt.datetime, stage: str) -> dt.datetime:
    return at + dt.timedelta(days=DUE_DAYS[stage])


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _person(value: Any) -> Person | None:
    if not isinstance(value, dict):
        return None
    return Person(value.get("reference"), str(value.get("display") or value.get("reference") or ""))


def _step(extension: dict[str, Any]) -> Step | None:
    parts = extension.get("extension") or []
    stage = next((p.get("valueCode") for p in parts if p.get("url") == "stage"), None)
    at = next((_parse_time(p.get("valueDateTime")) for p in parts if p.get("url") == "time"), None)
    if stage not in (*STAGES, ASSIGNED) or at is None:
        return None
    author = next(
        (_person(p.get("valueReference")) for p in parts if p.get("url") == "author"), None
    )
    return Step(
        stage,
        at,
        author or Person(None, ""),
        note=next((p.get("valueString") for p in parts if p.get("url") == "note"), None),
        help=tuple(
            str((p.get("valueCoding") or {}).get("code"))
            for p in parts
            if p.get("url") == "help" and (p.get("valueCoding") or {}).get("code")
        ),
        reason=next((p.get("valueString") for p in parts if p.get("url") == "reason"), None),
        assignee=next(
            (_person(p.get("valueReference")) for p in parts if p.get("url") == "assignee"), None
        ),
    )


def read_case(task_id: str | None, task: dict[str, Any]) -> CaseView:
    """The case a Task describes (a Task written by other tools reads as far as it can)."""
    steps = [
        s
        for e in task.get("extension", [])
        if e.get("url") == ILLNESS_POVERTY_STEP_URL and (s := _step(e)) is not None
    ]
    stage = next(
        (
            c.get("code")
            for c in (task.get("businessStatus") or {}).get("coding", [])
            if c.get("system") == ILLNESS_POVERTY_STAGE_SYSTEM and c.get("code") in STAGES
        ),
        None,
    )
    if stage is None:
        staged = [s.stage for s in steps if s.stage != ASSIGNED]
        stage = staged[-1] if staged else "identified"
    opened = _parse_time(task.get("authoredOn")) or (steps[0].at if steps else None)
    group = str((task.get("for") or {}).get("reference", ""))
    flag = str((task.get("focus") or {}).get("reference", ""))
    return CaseView(
        task_id=task_id,
        group_id=group.split("/", 1)[1] if group.startswith("Group/") else None,
        flag_id=flag.split("/", 1)[1] if flag.startswith("Flag/") else None,
        stage=stage,
        opened_at=opened or dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        due_at=_parse_time(((task.get("restriction") or {}).get("period") or {}).get("end")),
        owner=_person(task.get("owner")),
        reason=(task.get("statusReason") or {}).get("text"),
        steps=steps,
    )


def _clean(text: str | None, field: str) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if len(text) > _NOTE_LIMIT:
        raise CaseStepError(field, f"{field} is longer than {_NOTE_LIMIT} characters")
    return text or None


def advance(task: dict[str, Any], step: Step) -> dict[str, Any]:
    """The Task after ``step``; CaseStepError names what is wrong with it."""
    case = read_case(None, task)
    if step.stage == ASSIGNED:
        if not case.open:
            raise CaseStepError("stage", "a closed or rejected case is not assigned", status=409)
        if step.assignee is None or not step.assignee.reference:
            raise CaseStepError("worker", "choose the township worker to assign the case to")
    elif step.stage not in STAGES:
        raise CaseStepError("stage", f"'{step.stage}' is not a stage: one of {', '.join(STAGES)}")
    elif not case.open:
        raise CaseStepError(
            "stage", f"the case is already {case.stage}; it takes no more steps", status=409
        )
    elif step.stage not in NEXT_STAGES[case.stage]:
        allowed = ", ".join(NEXT_STAGES[case.stage])
        raise CaseStepError(
            "stage",
            f"a case that is {case.stage} goes on to {allowed}, not {step.stage}",
            status=409,
        )
    unknown = [code for code in step.help if code not in ASSISTANCE_KINDS]
    if unknown:
        raise CaseStepError(
            "help", f"'{unknown[0]}' is not a kind of help: {', '.join(ASSISTANCE_KINDS)}"
        )
    if step.stage == "assisted" and not step.help:
        raise CaseStepError("help", "say which help was given")
    if step.stage != "assisted" and step.help:
        raise CaseStepError("help", "help is recorded with the step 'assisted'")
    note = _clean(step.note, "note")
    reason = _clean(step.reason, "reason")
    if step.stage == "rejected" and not reason:
        raise CaseStepError("reason", "say why the case is rejected")
    if step.stage == "verified" and not note:
        raise CaseStepError("note", "note what the village visit found")
    step = Step(step.stage, step.at, step.author, note, step.help, reason, step.assignee)

    body = {k: v for k, v in task.items() if k != "id"}
    body["meta"] = {
        k: v for k, v in (task.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    body["extension"] = [*task.get("extension", []), _step_extension(step)]
    body["lastModified"] = fhir_instant(step.at)
    if note:
        body["note"] = [
            *task.get("note", []),
            {
                **({"authorReference": step.author.fhir()} if step.author.reference else {}),
                **({} if step.author.reference else {"authorString": step.author.name}),
                "time": fhir_instant(step.at),
                "text": f"{STAGES.get(step.stage, ('指派', 'assigned'))[0]}：{note}",
            },
        ]
    if step.stage == ASSIGNED:
        assert step.assignee is not None
        body["owner"] = step.assignee.fhir()
        return body
    body["businessStatus"] = _stage_concept(step.stage)
    body["status"] = _TASK_STATUS[step.stage]
    if step.help:
        body["output"] = [
            *task.get("output", []),
            *(
                {
                    "type": {"coding": [_help_coding(code)]},
                    "valueDateTime": fhir_instant(step.at),
                }
                for code in step.help
            ),
        ]
    if step.stage in OPEN_STAGES:
        body["restriction"] = {"period": {"end": fhir_instant(due(step.at, step.stage))}}
    else:
        body.pop("restriction", None)
        body["executionPeriod"] = {
            "start": task.get("authoredOn") or fhir_instant(step.at),
            "end": fhir_instant(step.at),
        }
    if step.stage == "rejected":
        body["statusReason"] = {"text": reason}
    return body


def ended_with_household(task: dict[str, Any], at: dt.datetime) -> dict[str, Any]:
    """An open case whose household Group is gone: rejected, saying so, whatever its stage
    (the service decides it, not a person, so the usual transitions do not apply)."""
    body = {k: v for k, v in task.items() if k != "id"}
    body["meta"] = {
        k: v for k, v in (task.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    step = Step("rejected", at, Person(None, SERVICE_NAME), reason=HOUSEHOLD_GONE)
    body["extension"] = [*task.get("extension", []), _step_extension(step)]
    body["businessStatus"] = _stage_concept("rejected")
    body["status"] = _TASK_STATUS["rejected"]
    body["statusReason"] = {"text": HOUSEHOLD_GONE}
    body["lastModified"] = fhir_instant(at)
    body.pop("restriction", None)
    return body
