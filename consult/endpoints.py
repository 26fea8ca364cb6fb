"""The consult's JSON API and WebSockets.

JSON (errors are problem JSON naming the ``field`` to fix), for a bearer token or a web
session (writes then carry ``X-CSRF-Token``):

- ``POST /api/consults`` — a request: ``{"patient", "department" | "specialist",
  "priority": "routine|urgent|asap|stat", "reason", "reasonCode"?, "supportingInfo"?:
  ["Observation/1"], "note"?, "preferredTime"?}``; 201 with the consult.
- ``GET /api/consults`` — the consults the caller can see, newest first;
  ``GET /api/consults/queue`` — a specialist's queue (``waiting``: most pressing, then
  longest waiting, first; ``mine``: accepted by him); ``GET /api/consults/{id}``.
- ``POST /api/consults/{id}/accept`` (``{"start"?, "minutes"?}``), ``/reject``
  (``{"reason"}``), ``/cancel`` (``{"reason"?}``), ``/start``, ``/schedule``
  (``{"start", "minutes"}``), ``/no-show``, ``/invite`` (``{"practitioner"}``),
  ``/report`` (``{"conclusion", "recommendations"}``), ``/recording-consent``
  (``{"agreed": true|false}``: the patient's consent to recording the call, recorded or
  withdrawn by the requesting clinic; the consult's ``recordingConsent`` names it).

WebSockets, for the consult's people (a session cookie from this site's pages, or a bearer
token), refused before the handshake completes for anyone else:

- ``/consult/{id}/ws`` — the call's signalling (``consult.protocol``), for the requester's
  side, the accepting specialist (or, once accepted, a specialist of the department) and the
  invited, while the consult is accepted or in progress. The accepting specialist's joining
  starts the consult (in progress: its Encounter opens).
- ``/consult/{id}/events`` — the consult's state (the JSON of ``GET /api/consults/{id}``)
  at once and after every change, for anyone who may see the consult.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime, BaseModel, Field, StrictBool
from starlette.websockets import WebSocketDisconnect

from consult.rooms import ConsultRooms
from consult.service import ConsultInputError, ConsultService, NewConsult
from consult.signalling import SignallingSession
from consult.workflow import EVENTS_CHANNEL, Identify, Party
from health.core.bus import MessageBus
from health.core.problems import problem
from records.access import AccessEvent, Caller
from records.api.service import RecordsContext
from records.outcome import FhirError

logger = logging.getLogger(__name__)

router = APIRouter()

#: WebSocket close codes sent instead of completing the handshake (HTTP 403 to the client).
NOT_ALLOWED = 4403


@dataclass
class ConsultContext:
    """What the consult routes need, set on ``app.state.consult`` by the application."""

    service: ConsultService
    identify: Identify
    rooms: ConsultRooms
    bus: MessageBus


def _context(connection: Request | WebSocket) -> ConsultContext:
    context: ConsultContext = connection.app.state.consult
    return context


def _records(connection: Request | WebSocket) -> RecordsContext:
    records: RecordsContext = connection.app.state.records
    return records


def _base(connection: Request | WebSocket) -> str:
    records = _records(connection)
    if records.base_url:
        return records.base_url.rstrip("/")
    return str(connection.base_url).rstrip("/") + "/fhir"


def refused(error: FhirError | ConsultInputError) -> Response:
    """An error as problem JSON: the message and the field (a FHIR path, or a JSON field)."""
    if isinstance(error, ConsultInputError):
        return problem(error.status, error.message, field=error.field)
    issue = error.issues[0] if error.issues else None
    return problem(
        error.status,
        issue.diagnostics if issue else str(error),
        field=issue.expression[0] if issue and issue.expression else None,
        headers={k: v for k, v in error.headers.items() if k.lower() == "www-authenticate"},
    )


async def _who(request: Request) -> tuple[Caller, Party]:
    caller = await _records(request).authenticate(request)
    return caller, await _context(request).identify(caller)


class NewConsultBody(BaseModel):
    patient: str = Field(min_length=1, max_length=64)
    department: str | None = Field(default=None, max_length=64)
    specialist: str | None = Field(default=None, max_length=64)
    priority: str = "routine"
    reason: str = Field(min_length=1, max_length=2000)
    reasonCode: str | None = Field(default=None, max_length=16)
    supportingInfo: list[str] = Field(default_factory=list, max_length=50)
    note: str | None = Field(default=None, max_length=4000)
    preferredTime: AwareDatetime | None = None


class AcceptBody(BaseModel):
    start: AwareDatetime | None = None
    minutes: int = Field(default=30, ge=5, le=240)


class ReasonBody(BaseModel):
    reason: str = Field(default="", max_length=2000)


class ScheduleBody(BaseModel):
    start: AwareDatetime
    minutes: int = Field(default=30, ge=5, le=240)


class InviteBody(BaseModel):
    practitioner: str = Field(min_length=1, max_length=64)


class RecordingConsentBody(BaseModel):
    agreed: StrictBool


class ReportBody(BaseModel):
    conclusion: str = Field(max_length=20000)
    recommendations: str = Field(max_length=20000)


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


@router.post("/api/consults")
async def create_consult(body: NewConsultBody, request: Request) -> Response:
    try:
        caller, party = await _who(request)
        consult = await _context(request).service.create(
            caller,
            party,
            NewConsult(
                patient=body.patient,
                department=body.department,
                specialist=body.specialist,
                priority=body.priority,
                reason=body.reason,
                reason_code=body.reasonCode,
                supporting_info=body.supportingInfo,
                note=body.note,
                preferred_time=body.preferredTime,
            ),
            base_url=_base(request),
        )
    except (FhirError, ConsultInputError) as error:
        return refused(error)
    return _json(consult.summary(), 201)


@router.get("/api/consults")
async def list_consults(request: Request) -> Response:
    try:
        caller, _party = await _who(request)
        consults = await _context(request).service.list_visible(caller, base_url=_base(request))
    except (FhirError, ConsultInputError) as error:
        return refused(error)
    return _json({"consults": [c.summary() for c in consults]})


@router.get("/api/consults/queue")
async def consult_queue(request: Request) -> Response:
    try:
        caller, party = await _who(request)
        if party.role != "specialist":
            raise ConsultInputError("role", "The queue is a specialist's", 403)
        queue = await _context(request).service.queue(caller, party, base_url=_base(request))
    except (FhirError, ConsultInputError) as error:
        return refused(error)
    return _json({name: [c.summary() for c in items] for name, items in queue.items()})


@router.get("/api/consults/{consult_id}")
async def read_consult(consult_id: str, request: Request) -> Response:
    try:
        caller, _party = await _who(request)
        consult = await _context(request).service.load(caller, consult_id, base_url=_base(request))
    except (FhirError, ConsultInputError) as error:
        return refused(error)
    return _json(consult.summary())


async def _act(request: Request, consult_id: str, action: str, **arguments: Any) -> Response:
    try:
        caller, party = await _who(request)
        method = getattr(_context(request).service, action)
        consult = await method(caller, party, consult_id, base_url=_base(request), **arguments)
    except (FhirError, ConsultInputError) as error:
        if isinstance(error, FhirError) and error.status == 412:
            return problem(
                409, "Someone acted on this consult at the same moment; reload and try again"
            )
        return refused(error)
    return _json(consult.summary())


@router.post("/api/consults/{consult_id}/accept")
async def accept_consult(consult_id: str, body: AcceptBody, request: Request) -> Response:
    return await _act(request, consult_id, "accept", start=body.start, minutes=body.minutes)


@router.post("/api/consults/{consult_id}/reject")
async def reject_consult(consult_id: str, body: ReasonBody, request: Request) -> Response:
    return await _act(request, consult_id, "reject", reason=body.reason)


@router.post("/api/consults/{consult_id}/cancel")
async def cancel_consult(consult_id: str, body: ReasonBody, request: Request) -> Response:
    return await _act(request, consult_id, "cancel", reason=body.reason)


@router.post("/api/consults/{consult_id}/start")
async def start_consult(consult_id: str, request: Request) -> Response:
    return await _act(request, consult_id, "start")


@router.post("/api/consults/{consult_id}/schedule")
async def schedule_consult(consult_id: str, body: ScheduleBody, request: Request) -> Response:
    return await _act(request, consult_id, "schedule", start=body.start, minutes=body.minutes)


@router.post("/api/consults/{consult_id}/no-show")
async def no_show(consult_id: str, request: Request) -> Response:
    return await _act(request, consult_id, "no_show")


@router.post("/api/consults/{consult_id}/invite")
async def invite(consult_id: str, body: InviteBody, request: Request) -> Response:
    return await _act(request, consult_id, "invite", practitioner=body.practitioner)


@router.post("/api/consults/{consult_id}/recording-consent")
async def recording_consent(
    consult_id: str, body: RecordingConsentBody, request: Request
) -> Response:
    return await _act(request, consult_id, "consent_to_recording", agreed=body.agreed)


@router.post("/api/consults/{consult_id}/report")
async def report(consult_id: str, body: ReportBody, request: Request) -> Response:
    return await _act(
        request,
        consult_id,
        "report",
        conclusion=body.conclusion,
        recommendations=body.recommendations,
    )


# -- WebSockets ----------------------------------------------------------------------------


async def _refuse_socket(
    websocket: WebSocket, caller: Caller | None, consult_id: str, why: str
) -> None:
    """Close before the handshake completes (the client sees 403), on the audit trail."""
    if caller is not None:
        with contextlib.suppress(Exception):
            await caller.audit(
                AccessEvent(
                    interaction="operation",
                    action="E",
                    status=403,
                    request=f"GET /consult/{consult_id}/ws",
                    resources=(("ServiceRequest", consult_id),),
                    problem=why,
                )
            )
    await websocket.close(code=NOT_ALLOWED)


@router.websocket("/consult/{consult_id}/ws")
async def consult_socket(websocket: WebSocket, consult_id: str) -> None:
    """The call's signalling, for the consult's participants only."""
    context = _context(websocket)
    caller: Caller | None = None
    try:
        caller = await _records(websocket).authenticate(websocket)
        party = await context.identify(caller)
        consult = await context.service.load(caller, consult_id, base_url=_base(websocket))
    except FhirError as error:
        logger.info("consult %s signalling refused: %s", consult_id, error.status)
        await _refuse_socket(websocket, caller, consult_id, "not-a-participant")
        return
    participant = context.service.participant(consult, party)
    if participant is None:
        await _refuse_socket(websocket, caller, consult_id, "not-a-participant")
        return
    if consult.status == "accepted" and party.practitioner == consult.owner_practitioner:
        try:
            await context.service.start(caller, party, consult_id, base_url=_base(websocket))
        except FhirError as error:  # someone changed it meanwhile: the call goes on
            logger.info("consult %s not started on join: %s", consult_id, error)
    await websocket.accept()
    await SignallingSession(
        consult_id=consult_id,
        participant=participant,
        socket=websocket,
        rooms=context.rooms,
    ).run()


@router.websocket("/consult/{consult_id}/events")
async def consult_events(websocket: WebSocket, consult_id: str) -> None:
    """The consult's state now and after each change, for those who may see it."""
    context = _context(websocket)
    base = _base(websocket)
    try:
        caller = await _records(websocket).authenticate(websocket)
        consult = await context.service.load(caller, consult_id, base_url=base)
    except FhirError:
        await websocket.close(code=NOT_ALLOWED)
        return
    subscription = await context.bus.subscribe(EVENTS_CHANNEL.format(consult_id))
    await websocket.accept()

    async def send(consult_summary: dict[str, Any], events: list[str]) -> None:
        await websocket.send_text(
            orjson.dumps({"type": "state", "events": events, "consult": consult_summary}).decode()
        )

    async def forward() -> None:
        await send(consult.summary(), [])
        async for message in subscription:
            try:
                latest = await context.service.load(caller, consult_id, base_url=base)
            except FhirError:  # no longer the caller's to see
                return
            await send(latest.summary(), list(message.get("events") or []))

    async def until_closed() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    tasks = [asyncio.create_task(forward()), asyncio.create_task(until_closed())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await subscription.close()
        with contextlib.suppress(Exception):
            await websocket.close()


def parse_local_time(value: str, *, offset_hours: int = 8) -> dt.datetime | None:
    """A ``datetime-local`` form value, in China's time (UTC+8) unless it says otherwise."""
    if not value.strip():
        return None
    moment = dt.datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone(dt.timedelta(hours=offset_hours)))
    return moment


__all__ = ["ConsultContext", "router"]
