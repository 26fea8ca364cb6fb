"""The FastAPI application factory: the one place that wires every part together."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from consult.call_records import RecordsRefused
from consult.endpoints import ConsultContext
from consult.endpoints import router as consult_router
from consult.fhir_call_records import Callers, FhirCallRecords, ParticipantOnRecord
from consult.protocol import Participant
from consult.recordings_api import router as recordings_router
from consult.rooms import ConsultRooms
from consult.service import ConsultService
from consult.workflow import ConsultWorkflow, Party
from health.auth import accounts
from health.auth.audit import AuditWriter, chain_key
from health.auth.endpoints import capability_security
from health.auth.endpoints import router as auth_router
from health.auth.gate import USER_SCOPES, Gate, RequestCaller, actor_of, user_subject
from health.auth.logins import LoginThrottle
from health.auth.policy import SYSTEM_ROLE
from health.auth.scopes import parse_scopes
from health.auth.tokens import TokenSigner, service_secret
from health.core.bus import MessageBus, create_bus
from health.core.database import Database
from health.core.outbox import Deliverer, OutboxDelivery
from health.core.problems import Problem, problem
from health.core.settings import VAR_DIR, Settings, get_settings
from health.poverty.case_rules import CaseActor, CaseRules
from health.poverty.case_rules import Identify as CaseIdentify
from health.poverty.cases import Person
from health.poverty.listener import start_flag_listener
from health.web.pages import router as pages_router
from health.web.routes import install_pages
from health.web.security_headers import SecurityHeaders
from integrations.notifications import NOTIFICATION_TOPIC, notifier
from integrations.registry_feed import TOPIC as REGISTRY_TOPIC
from integrations.registry_feed import registry_feed
from records.access import Caller
from records.api.responses import fhir_response
from records.api.routes import router as fhir_router
from records.api.service import RecordsContext
from records.indexing import SearchIndexer
from records.outcome import FhirError
from records.resident_ids import one_patient_per_resident_id

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "web" / "static"
CONSULT_STATIC_DIR = Path(__file__).parent.parent / "consult" / "static"
#: The base of references in what calls write when HEALTH_FHIR_BASE_URL is not set.
DEFAULT_FHIR_BASE = "https://fhir.yinchuan-health.cn/fhir"


def outbox_delivery(database: Database, settings: Settings) -> OutboxDelivery:
    """The outbox's delivery with every deliverer the settings configure: the notifications
    and, with ``HEALTH_REGISTRY_URL``, the registry feed. ``health serve`` runs it (unless
    ``HEALTH_DELIVER_IN_SERVE=false``), and so does each ``health worker``."""
    deliverers: dict[str, Deliverer] = {NOTIFICATION_TOPIC: notifier(settings)}
    feed = registry_feed(settings)
    if feed is not None:
        deliverers[REGISTRY_TOPIC] = feed
    return OutboxDelivery(
        database,
        deliverers,
        max_attempts=settings.outbox_max_attempts,
        retry_base_seconds=settings.outbox_retry_base_seconds,
        retry_max_seconds=settings.outbox_retry_max_seconds,
        poll_seconds=settings.outbox_poll_seconds,
        lease_seconds=settings.outbox_lease_seconds,
    )


def consult_party(gate: Gate) -> Any:
    """How the consult workflow tells who a caller is: a user (with their directory
    identity and name) or a system."""

    async def identify(caller: Caller) -> Party:
        if not isinstance(caller, RequestCaller):
            return Party(kind="system")
        subject = caller.subject
        if subject.role == SYSTEM_ROLE or subject.username is None:
            return Party(kind="system", role=subject.role)
        async with gate.database.transaction(write=False) as session:
            user = await accounts.get_user(session, username=subject.username)
        return Party(
            kind="user",
            username=subject.username,
            role=subject.role,
            practitioner=subject.practitioner,
            organization=subject.organization,
            display=(user.display_name if user else None) or subject.username,
            scopes=str(subject.scopes),
        )

    return identify


def participant_on_record(gate: Gate) -> Callers:
    """How a call's writes are made as the participant: the signalling route names each
    participant by their username (``ConsultService.participant``); their caller is that
    user's, with a user's scopes — narrowed to those of the token their socket opened with —
    their clinic's access policy and their audit trail."""

    async def caller_of(participant: Participant) -> ParticipantOnRecord:
        async with gate.database.transaction(write=False) as session:
            user = await accounts.get_user(session, username=participant.id)
        if user is None or user.disabled:
            raise RecordsRefused(f"{participant.id} has no account here")
        scopes = parse_scopes(USER_SCOPES)
        if participant.scopes is not None:
            scopes = parse_scopes(participant.scopes).narrow(scopes)
        subject = user_subject(user, scopes)
        caller = RequestCaller(subject, gate.policy(subject), actor_of(subject, None), gate)
        reference = f"Practitioner/{user.practitioner_id}" if user.practitioner_id else None
        return ParticipantOnRecord(caller=caller, reference=reference)

    return caller_of


def case_actor(gate: Gate) -> CaseIdentify:
    """How the case rules tell who a caller is: a system, a case worker (as their steps name
    them: their Practitioner and name), or anybody else."""

    async def identify(caller: Caller) -> CaseActor:
        if not isinstance(caller, RequestCaller) or caller.subject.role == SYSTEM_ROLE:
            return CaseActor(system=True)
        subject = caller.subject
        if not subject.case_worker or subject.username is None:
            return CaseActor()
        if subject.role != "commission_analyst":
            return CaseActor()
        async with gate.database.transaction(write=False) as session:
            user = await accounts.get_user(session, username=subject.username)
        # The right as it stands now, not as the token was issued with it.
        if user is None or user.disabled or not user.case_worker:
            return CaseActor()
        reference = f"Practitioner/{user.practitioner_id}" if user.practitioner_id else None
        return CaseActor(case_worker=Person(reference, user.display_name or user.username))

    return identify


def gate_for(settings: Settings, database: Database, indexer: SearchIndexer, secret: bytes) -> Gate:
    """The process's gate: who callers are, their policies, their audit trail."""
    return Gate(
        settings=settings,
        database=database,
        indexer=indexer,
        signer=TokenSigner(secret, issuer=settings.issuer),
        audit=AuditWriter(database, indexer, chain_key(secret)),
    )


def records_context(settings: Settings, gate: Gate, bus: MessageBus) -> RecordsContext:
    """The records API as every door uses it (``/fhir``, the pages, the JSON APIs, the
    commands that act as a person), with the rules of consults and of illness-poverty
    cases, which hold for every write whichever door it came through."""
    return RecordsContext(
        database=gate.database,
        indexer=gate.indexer,
        bus=bus,
        base_url=settings.fhir_base_url,
        max_page_size=settings.max_page_size,
        default_page_size=settings.default_page_size,
        max_body_bytes=settings.max_body_bytes,
        authenticate=gate.authenticate,
        security=capability_security,
        write_hooks=[
            one_patient_per_resident_id,
            ConsultWorkflow(identify=consult_party(gate), bus=bus),
            CaseRules(identify=case_actor(gate)),
        ],
    )


#: Allocations between the collector's youngest passes (Python's default is 700). A search
#: allocates tens of thousands of short-lived objects; at 700 many of them lived through two
#: passes, were promoted, and were found dead only by the full passes that walk the whole heap.
YOUNG_COLLECTION_THRESHOLD = 10_000


def _settle_heap() -> None:
    """Keep the garbage collector's full passes off the requests' path.

    The process holds about half a million long-lived objects once it serves (the compiled
    search parameters, the FHIR models, SQLAlchemy's caches), and each full collection walked
    them all: 220–290 ms, about once in 80 searches. Those built by start-up are moved out of
    the collector's sight (``gc.freeze``), and the youngest generation is collected less
    often. With ``bench/search.py``'s queries the full passes then take less than half the
    time they did.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, oldest)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    secret = service_secret(settings.secret_key, VAR_DIR / "secret.key")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings.database_url)
        bus = create_bus(settings.redis_url, settings.bus_prefix)
        gate = gate_for(settings, database, SearchIndexer(), secret)
        audit = gate.audit
        app.state.gate = gate
        app.state.settings = settings
        app.state.bus = bus
        app.state.login_throttle = LoginThrottle(bus, settings.logins_per_address_per_minute)
        records = records_context(settings, gate, bus)
        app.state.records = records
        app.state.case_actor = case_actor(gate)
        # This worker's consult rooms and media hub: the consult signalling route hands each
        # participant's WebSocket to consult.signalling.SignallingSession with these. What a
        # call keeps (readings, chat, files, recordings) goes through records.perform as the
        # participant.
        app.state.consult_rooms = await ConsultRooms.create(
            bus=bus,
            settings=settings,
            lease_seconds=settings.consult_room_lease_seconds,
            records=FhirCallRecords(
                records,
                callers=participant_on_record(gate),
                base_url=settings.fhir_base_url or DEFAULT_FHIR_BASE,
            ),
        )
        identify = consult_party(gate)
        app.state.consult = ConsultContext(
            service=ConsultService(records, identify),
            identify=identify,
            rooms=app.state.consult_rooms,
            bus=bus,
        )
        delivery = outbox_delivery(database, settings)
        if settings.deliver_in_serve:
            delivery.start()
        app.state.outbox = delivery
        flags = await start_flag_listener(database, records.indexer, bus, settings)
        _settle_heap()
        try:
            yield
        finally:
            await delivery.close()
            for deliverer in delivery.deliverers.values():
                await deliverer.close()
            await audit.close()
            await app.state.consult_rooms.close()
            if flags is not None:
                await flags.stop()
            await bus.close()
            await database.dispose()

    app = FastAPI(
        title="银川移民地区远程医疗 Yinchuan resettlement-area telemedicine",
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
    )
    # The SMART configuration under /fhir must be routed before the FHIR catch-all.
    app.include_router(auth_router)
    app.include_router(pages_router)
    install_pages(app)
    app.include_router(consult_router)
    app.include_router(fhir_router)
    # Recorded consult files, for those the records let read the recording's DocumentReference.
    app.include_router(recordings_router)
    app.mount("/static/consult", StaticFiles(directory=CONSULT_STATIC_DIR), name="consult-static")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.cors_origins.strip():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()],
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "If-None-Exist", "Prefer"],
            expose_headers=["ETag", "Location", "Last-Modified"],
        )
    # Pages, assets and API answers compressed for the villages' thin links (gzip only
    # when the client asks for it; small answers are not worth it).
    app.add_middleware(GZipMiddleware, minimum_size=500)
    app.add_middleware(SecurityHeaders)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def _is_fhir(request: Request) -> bool:
        return request.url.path == "/fhir" or request.url.path.startswith("/fhir/")

    @app.exception_handler(Problem)
    async def refused(request: Request, exc: Problem) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_fhir(request):
            return fhir_response(
                exc.status_code,
                FhirError.of(exc.status_code, str(exc.detail), code="processing").outcome(),
            )
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        if _is_fhir(request):
            return fhir_response(400, FhirError.of(400, f"Invalid request: {fields}").outcome())
        return problem(400, "Invalid request", f"Check these fields: {fields}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # The type only: an exception's message may quote a record's values.
        logger.error(
            "unhandled %s on %s %s",
            type(exc).__name__,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        if _is_fhir(request):
            return fhir_response(
                500,
                FhirError.of(
                    500, "Internal server error; the request was not applied", code="exception"
                ).outcome(),
            )
        return problem(500, "Internal server error")

    return app
