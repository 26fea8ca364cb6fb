"""Township case workers' illness-poverty cases: the list, a case, and its next step — as
pages and as a JSON API.

Only case workers (commission analysts with the case-worker right) open them; analysts
without the right are refused (403), nobody signed in gets 401 (the API) or the login page.
A step goes through :func:`health.poverty.casework.take_step`: the records API as the
person, with ``If-Match``, so it is their AuditEvent and an announcement on the change feed
like any other write, and the case rules (``health.poverty.case_rules``) hold.

JSON (errors are problem JSON naming the ``field`` to fix; a web session's writes carry
``X-CSRF-Token``):

- ``GET /api/cases`` — the cases, the caller's own (assigned to their Practitioner) first,
  then the next due first; ``overdue=1``, ``stage``, ``township``, ``mine=1`` (assigned to
  the caller), ``all=1`` (closed and rejected too), ``limit``, ``offset``.
- ``GET /api/cases/ID`` — the case: household, steps, the steps it may take next; its
  version as ``ETag``.
- ``POST /api/cases/ID/steps`` — ``{"stage", "note"?, "help"?: [...], "reason"?,
  "worker"?}`` with ``If-Match: W/"<version>"`` (or ``"version"`` in the body): 200 with the
  case, 409 if the case cannot take the step now or was changed meanwhile, 412 if the
  version is not the case's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from health.auth.endpoints import api_caller
from health.auth.gate import RequestCaller
from health.core.clock import utcnow
from health.core.database import Database
from health.core.problems import Problem
from health.poverty import dashboard as figures
from health.poverty.case_rules import CaseActor
from health.poverty.cases import (
    ASSIGNED,
    ASSISTANCE_KINDS,
    NEXT_STAGES,
    STAGES,
    CaseStepError,
    CaseView,
    Person,
    is_case_task,
    read_case,
)
from health.poverty.casework import (
    CaseFilter,
    CaseRow,
    count_cases,
    list_cases,
    read_as,
    take_step,
)
from health.web.display import local_time
from health.web.i18n import language_of
from health.web.signed_in import SignedIn, signed_in
from records.access import AccessEvent
from records.api.service import RecordsContext
from records.outcome import FhirError
from records.store import parse_etag

router = APIRouter()
PAGE_SIZE = 100
PAGE_LIMIT = 500
_TITLES = {
    400: "Invalid request",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    412: "Precondition failed",
    422: "Invalid step",
}


@dataclass
class Worker:
    """A case worker at work: their caller (policy, audit trail) and how steps name them."""

    caller: RequestCaller
    person: Person

    @property
    def practitioner(self) -> str | None:
        reference = self.person.reference or ""
        return reference.removeprefix("Practitioner/") if reference else None


def _records(request: Request) -> RecordsContext:
    records: RecordsContext = request.app.state.records
    return records


def _database(request: Request) -> Database:
    database: Database = request.app.state.gate.database
    return database


async def _actor(request: Request, caller: RequestCaller) -> CaseActor:
    actor: CaseActor = await request.app.state.case_actor(caller)
    return actor


async def _api_worker(request: Request) -> Worker:
    caller = await api_caller(request)
    person = (await _actor(request, caller)).case_worker
    if person is None:
        raise Problem(
            403, "Forbidden", "Cases are worked by case workers (users with the case-worker right)"
        )
    return Worker(caller, person)


async def _page_worker(request: Request) -> tuple[SignedIn, Worker]:
    me = await signed_in(request)
    person = (await _actor(request, me.caller)).case_worker
    if person is None:
        _ = me.gettext
        raise me.forbidden(
            _("Cases are worked by case workers (users with the case-worker right).")
        )
    return me, Worker(me.caller, person)


def _problem(error: CaseStepError | FhirError) -> Problem:
    if isinstance(error, CaseStepError):
        return Problem(
            error.status, _TITLES.get(error.status, "Refused"), str(error), field=error.field
        )
    issue = error.issues[0] if error.issues else None
    return Problem(
        error.status,
        _TITLES.get(error.status, "Refused"),
        str(error),
        field=issue.expression[0] if issue and issue.expression else None,
    )


# -- the list ------------------------------------------------------------------------------


def _flag(params: dict[str, str], name: str) -> bool:
    value = (params.get(name) or "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise CaseStepError(name, f"{name}: 1 or 0", status=400)


def _whole(params: dict[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = (params.get(name) or "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise CaseStepError(name, f"{name}: a whole number", status=400) from None
    if value < low or (high is not None and value > high):
        limits = f"{low} to {high}" if high is not None else f"{low} or more"
        raise CaseStepError(name, f"{name}: {limits}", status=400)
    return value


@dataclass(frozen=True)
class ListQuery:
    """A case list's parameters, checked."""

    where: CaseFilter
    overdue: bool
    mine: bool
    everything: bool
    limit: int
    offset: int

    @classmethod
    def parse(cls, params: dict[str, str], worker: Worker, now: dt.datetime) -> ListQuery:
        overdue, mine, everything = (_flag(params, n) for n in ("overdue", "mine", "all"))
        stage = (params.get("stage") or "").strip() or None
        township = (params.get("township") or "").strip() or None
        if township is not None and len(township) > 128:
            raise CaseStepError("township", "township: at most 128 characters", status=400)
        if mine and worker.practitioner is None:
            raise CaseStepError(
                "mine",
                "mine: your account names no Practitioner, so no case is assigned to you",
                status=400,
            )
        where = CaseFilter(
            open_only=not everything,
            overdue_at=now if overdue else None,
            stage=stage,
            township=township,
            owner_id=worker.practitioner if mine else None,
        )
        limit = _whole(params, "limit", PAGE_SIZE, 1, PAGE_LIMIT)
        return cls(where, overdue, mine, everything, limit, _whole(params, "offset", 0, 0, None))

    def query(self, **changes: Any) -> dict[str, str]:
        values = {
            "overdue": "1" if self.overdue else "",
            "stage": self.where.stage or "",
            "township": self.where.township or "",
            "mine": "1" if self.mine else "",
            "all": "1" if self.everything else "",
        }
        values.update(changes)
        return {k: str(v) for k, v in values.items() if v}


async def _list(request: Request, worker: Worker, query: ListQuery) -> tuple[int, list[CaseRow]]:
    async with _database(request).transaction(write=False) as session:
        total = await count_cases(session, query.where)
        rows = await list_cases(
            session,
            where=query.where,
            own_first=worker.practitioner,
            limit=query.limit,
            offset=query.offset,
        )
    # The list names households (and their heads): on the case worker's audit trail.
    await worker.caller.audit(
        AccessEvent(
            interaction="search-type",
            action="E",
            status=200,
            request="cases?" + urlencode(query.query()),
            resources=tuple(
                item for r in rows for item in (("Task", r.task_id), ("Group", r.group_id))
            ),
        )
    )
    return total, rows


def _row_json(row: CaseRow, worker: Worker, now: dt.datetime) -> dict[str, Any]:
    return {
        "task_id": row.task_id,
        "group_id": row.group_id,
        "household_number": row.household_number,
        "household_name": row.household_name,
        "township": row.township,
        "village": row.village,
        "stage": row.stage,
        "stage_label": STAGES.get(row.stage, (row.stage,))[0],
        "opened_at": row.opened_at.isoformat(),
        "due_at": row.due_at.isoformat() if row.due_at else None,
        "overdue": row.overdue(now),
        "owner": row.owner_name,
        "mine": worker.practitioner is not None and row.owner_id == worker.practitioner,
        "help": (row.help or "").split(),
        "case": f"/api/cases/{row.task_id}",
        "evidence": f"/api/dashboard/households/{row.group_id}",
    }


@router.get("/api/cases")
async def api_cases(request: Request) -> JSONResponse:
    """The cases, the caller's own first, then the next due first."""
    worker = await _api_worker(request)
    now = utcnow()
    try:
        query = ListQuery.parse(dict(request.query_params), worker, now)
    except CaseStepError as error:
        raise _problem(error) from None
    total, rows = await _list(request, worker, query)
    return JSONResponse(
        {
            "filters": query.query(),
            "total": total,
            "limit": query.limit,
            "offset": query.offset,
            "cases": [_row_json(r, worker, now) for r in rows],
        }
    )


# -- a case --------------------------------------------------------------------------------


async def _read_case(request: Request, worker: Worker, task_id: str) -> tuple[CaseView, int]:
    """The case as the records show it to the case worker (an audited read)."""
    records = _records(request)
    found = await read_as(
        records, worker.caller, "Task", task_id, base_url=records.fhir_base(request)
    )
    if found is None or not is_case_task(found[0]):
        raise CaseStepError("task", f"there is no case Task/{task_id}", status=404)
    case = read_case(task_id, found[0])
    if case.group_id is None:
        raise CaseStepError("task", f"Task/{task_id} is no illness-poverty case", status=404)
    return case, found[1]


async def _household(request: Request, worker: Worker, group_id: str) -> dict[str, Any]:
    """The household of a case, with its members' names (a case worker's right), audited."""
    async with _database(request).transaction(write=False) as session:
        found = await figures.household(session, group_id)
        members = (await figures.members(session, [group_id])).get(group_id, [])
    patients: dict[str, tuple[tuple[str, str], ...]] = {
        m.patient_id: (("Patient", m.patient_id),) for m in members if m.patient_id
    }
    await worker.caller.audit(
        AccessEvent(
            interaction="read",
            action="R",
            status=200,
            request=f"cases/household/{group_id}",
            resources=(("Group", group_id),),
            patients=patients,
        )
    )
    return {
        "group_id": group_id,
        "number": found.number if found else None,
        "township": found.township if found else None,
        "village": found.village if found else None,
        "size": found.size if found else None,
        "members": [
            {"name": m.name, "resident_id": m.resident_id, "relationship": m.relationship}
            for m in members
        ],
        "evidence": f"/api/dashboard/households/{group_id}",
    }


def _next(case: CaseView) -> list[str]:
    return list(NEXT_STAGES.get(case.stage, ())) if case.open else []


def _case_json(case: CaseView, version: int, now: dt.datetime) -> dict[str, Any]:
    return {
        "task_id": case.task_id,
        "version": version,
        "group_id": case.group_id,
        "flag_id": case.flag_id,
        "stage": case.stage,
        "stage_label": STAGES[case.stage][0],
        "open": case.open,
        "opened_at": case.opened_at.isoformat(),
        "due_at": case.due_at.isoformat() if case.due_at else None,
        "overdue": case.overdue(now),
        "owner": case.owner.fhir() if case.owner else None,
        "help": list(case.help),
        "reason": case.reason,
        "steps": [
            {
                "stage": s.stage,
                "at": s.at.isoformat(),
                "author": s.author.fhir(),
                "note": s.note,
                "help": list(s.help),
                "reason": s.reason,
                "assignee": s.assignee.fhir() if s.assignee else None,
            }
            for s in case.steps
        ],
        "next": _next(case),
        "assistance_kinds": {code: names[0] for code, names in ASSISTANCE_KINDS.items()},
    }


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'W/"{version}"'}


@router.get("/api/cases/{task_id}")
async def api_case(request: Request, task_id: str) -> JSONResponse:
    """A case: its household, its steps and the steps it may take next."""
    worker = await _api_worker(request)
    try:
        case, version = await _read_case(request, worker, task_id)
    except (CaseStepError, FhirError) as error:
        raise _problem(error) from None
    body = _case_json(case, version, utcnow())
    assert case.group_id is not None
    body["household"] = await _household(request, worker, case.group_id)
    return JSONResponse(body, headers=_etag(version))


@dataclass(frozen=True)
class StepInput:
    """A step as a person asks for it, checked for its shape (the case decides the rest)."""

    stage: str
    note: str | None = None
    help: tuple[str, ...] = ()
    reason: str | None = None
    worker: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> StepInput:
        if not isinstance(data, dict):
            raise CaseStepError("body", "the body is a JSON object", status=400)
        for name in ("stage", "note", "reason", "worker"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise CaseStepError(name, f"{name}: a string", status=400)
        stage = data.get("stage")
        if not stage:
            raise CaseStepError(
                "stage", f"stage: one of {', '.join(STAGES)}, or assigned", status=400
            )
        kinds = data.get("help", [])
        if kinds is None:
            kinds = []
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
            raise CaseStepError("help", "help: a list of kinds of help", status=400)
        if len(kinds) > len(ASSISTANCE_KINDS):
            raise CaseStepError("help", "help: each kind of help at most once", status=400)
        worker = data.get("worker") or None
        if worker is not None and len(worker) > 64:
            raise CaseStepError("worker", "worker: a Practitioner id", status=400)
        return cls(stage, data.get("note"), tuple(kinds), data.get("reason"), worker)


async def _step(
    request: Request, worker: Worker, task_id: str, step: StepInput, version: int | None
) -> tuple[CaseView, int]:
    records = _records(request)
    return await take_step(
        records,
        worker.caller,
        task_id,
        base_url=records.fhir_base(request),
        stage=step.stage,
        author=worker.person,
        at=utcnow(),
        note=step.note,
        help=step.help,
        reason=step.reason,
        worker=step.worker,
        if_match=version,
    )


@router.post("/api/cases/{task_id}/steps")
async def api_step(request: Request, task_id: str) -> JSONResponse:
    """Take the case's next step, on the version the caller read (``If-Match``)."""
    worker = await _api_worker(request)
    try:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise CaseStepError("body", "the body is not JSON", status=400) from None
        step = StepInput.from_json(data)
        try:
            version = parse_etag(request.headers.get("if-match"))
        except FhirError:
            raise CaseStepError("If-Match", 'If-Match: W/"<version>"', status=400) from None
        sent = data.get("version")
        if sent is not None and (not isinstance(sent, int) or isinstance(sent, bool)):
            raise CaseStepError(
                "version", "version: the case's version, a whole number", status=400
            )
        if sent is not None and version is not None and sent != version:
            raise CaseStepError(
                "version", "version and If-Match name different versions", status=400
            )
        case, new_version = await _step(
            request, worker, task_id, step, version if version is not None else sent
        )
    except (CaseStepError, FhirError) as error:
        raise _problem(error) from None
    return JSONResponse(_case_json(case, new_version, utcnow()), headers=_etag(new_version))


# -- the pages -----------------------------------------------------------------------------


def _stage_name(stage: str, english: bool) -> str:
    return STAGES.get(stage, (stage, stage))[1 if english else 0]


def _day(moment: dt.datetime | None) -> str:
    return local_time(moment.isoformat())[:10] if moment else ""


@router.get("/cases", response_class=HTMLResponse)
async def cases_page(request: Request) -> Response:
    me, worker = await _page_worker(request)
    _ = me.gettext
    now = utcnow()
    try:
        query = ListQuery.parse(dict(request.query_params), worker, now)
    except CaseStepError as error:
        return me.message(_("That did not work"), str(error), status=400, back="/cases")
    total, rows = await _list(request, worker, query)
    async with _database(request).transaction(write=False) as session:
        townships = [c.key for c in await figures.by_township(session, figures.Filters()) if c.key]
    if query.where.township and query.where.township not in townships:
        townships.append(query.where.township)
    english = language_of(request) == "en"
    return me.render(
        "cases/list.html",
        query=query,
        total=total,
        rows=[
            {
                "row": r,
                "stage": _stage_name(r.stage, english),
                "due": _day(r.due_at),
                "overdue": r.overdue(now),
                "mine": worker.practitioner is not None and r.owner_id == worker.practitioner,
            }
            for r in rows
        ],
        stages=[(code, names[1 if english else 0]) for code, names in STAGES.items()],
        townships=sorted(townships),
        can_mine=worker.practitioner is not None,
        next_link=(
            "/cases?" + urlencode(query.query(offset=query.offset + query.limit))
            if query.offset + query.limit < total
            else None
        ),
    )


def _error_text(me: SignedIn, error: CaseStepError | FhirError) -> tuple[str, str]:
    """(form field, message in the page's language) for a refused step."""
    _ = me.gettext
    if isinstance(error, FhirError):
        if error.status == 403:
            return "", _("Only case workers take the steps of cases.")
        return "", _("The step could not be saved; look at the case again and retry.")
    if error.field in ("task", "If-Match") and error.status in (409, 412):
        return "", _(
            "Someone else took a step on this case meanwhile. The page shows the case as it "
            "is now; look again before you take the next step."
        )
    if error.field == "stage" and error.status == 400:
        return "stage", _("Choose the next step")
    messages = {
        "stage": _("This case cannot take that step from where it stands."),
        "note": _("Note what the village visit found (at most 2000 characters)."),
        "reason": _("Say why the case is rejected (at most 2000 characters)."),
        "help": _("Choose the help given, with the step “assisted” only."),
        "worker": _("Choose a township worker from the directory."),
    }
    return error.field, messages.get(
        error.field, _("The step could not be saved; look at the case again and retry.")
    )


async def _case_page(
    request: Request,
    me: SignedIn,
    worker: Worker,
    task_id: str,
    *,
    errors: dict[str, str] | None = None,
    form: dict[str, Any] | None = None,
    status: int = 200,
) -> Response:
    _ = me.gettext
    try:
        case, version = await _read_case(request, worker, task_id)
    except CaseStepError:
        raise me.not_found(
            _("Not found"), _("There is no such case, or it is not yours to see."), "/cases"
        ) from None
    assert case.group_id is not None
    household = await _household(request, worker, case.group_id)
    english = language_of(request) == "en"
    now = utcnow()
    choices = [(stage, _stage_name(stage, english)) for stage in _next(case)]
    if (
        case.open
        and worker.practitioner
        and (case.owner is None or case.owner.reference != worker.person.reference)
    ):
        choices.append((ASSIGNED, _("Assign the case to me")))
    return me.render(
        "cases/case.html",
        status=status,
        case=case,
        version=version,
        household=household,
        stage=_stage_name(case.stage, english),
        opened=_day(case.opened_at),
        due=_day(case.due_at),
        overdue=case.overdue(now),
        steps=[
            {
                "step": s,
                "at": local_time(s.at.isoformat()),
                "stage": _("Assigned") if s.stage == ASSIGNED else _stage_name(s.stage, english),
                "help": [ASSISTANCE_KINDS.get(h, (h, h))[1 if english else 0] for h in s.help],
            }
            for s in case.steps
        ],
        choices=choices,
        kinds=[(code, names[1 if english else 0]) for code, names in ASSISTANCE_KINDS.items()],
        help_given=[ASSISTANCE_KINDS.get(h, (h, h))[1 if english else 0] for h in case.help],
        errors=errors or {},
        form=form or {},
        done=request.query_params.get("done") == "1",
    )


@router.get("/cases/{task_id}", response_class=HTMLResponse)
async def case_page(request: Request, task_id: str) -> Response:
    me, worker = await _page_worker(request)
    return await _case_page(request, me, worker, task_id)


@router.post("/cases/{task_id}/steps")
async def case_step_form(request: Request, task_id: str) -> Response:
    me, worker = await _page_worker(request)
    form = await me.form()
    stage = str(form.get("stage") or "")
    note, reason = str(form.get("note") or ""), str(form.get("reason") or "")
    kinds = [str(h) for h in form.getlist("help")]
    entered = {"stage": stage, "note": note, "reason": reason, "help": kinds}
    raw_version = str(form.get("version") or "")
    step = StepInput(
        stage,
        note=note or None,
        help=tuple(kinds),
        reason=reason or None,
        worker=worker.practitioner if stage == ASSIGNED else None,
    )
    try:
        if not stage:
            raise CaseStepError("stage", "choose the next step", status=400)
        await _step(
            request, worker, task_id, step, int(raw_version) if raw_version.isdigit() else None
        )
    except (CaseStepError, FhirError) as error:
        field, message = _error_text(me, error)
        stale = isinstance(error, CaseStepError) and error.field in ("task", "If-Match")
        return await _case_page(
            request,
            me,
            worker,
            task_id,
            errors={field: message},
            form={} if stale else entered,
            status=error.status if error.status in _TITLES else 400,
        )
    return RedirectResponse(f"/cases/{task_id}?done=1", status_code=303)
