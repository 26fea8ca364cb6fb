"""The ``/fhir`` REST API: every FHIR interaction under one catch-all route.

Each request runs in one database transaction (a write transaction for anything but GET),
through :class:`records.interactions.Interactions` or, for a Bundle posted to the base, the
:class:`records.transactions.BundleProcessor`. After the commit the store's changes go out on
the bus channel :data:`CHANGES_CHANNEL`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError, IntegrityError

from health.core.bus import MessageBus
from health.core.database import Database
from health.core.ids import is_valid_resource_id
from records.access import AccessEvent, Caller
from records.api.responses import (
    check_format,
    error_response,
    fhir_response,
    http_instant,
    prefer,
    read_body,
    render,
)
from records.capability import capability_statement
from records.indexing import SearchIndexer
from records.interactions import FhirRequest, Interactions
from records.outcome import FhirError
from records.store import ResourceStore
from records.transactions import BundleProcessor
from records.validation import may_carry_resident_id

logger = logging.getLogger(__name__)

#: Bus channel announcing each committed change: {"type", "id", "versionId", "method"}.
CHANGES_CHANNEL = "records.changes"

router = APIRouter()


@dataclass
class RecordsContext:
    """What the FHIR API needs from the application, set on ``app.state.records``."""

    database: Database
    indexer: SearchIndexer
    bus: MessageBus
    base_url: str | None
    max_page_size: int
    default_page_size: int
    max_body_bytes: int
    #: Who is asking: the caller of a request, or a FhirError (401) if nobody we know.
    authenticate: Callable[[Request], Awaitable[Caller]]
    #: ``CapabilityStatement.rest.security`` for a request (how clients get their tokens).
    security: Callable[[Request], dict[str, Any]] | None = None


def _software_version() -> str:
    try:
        return version("yinchuan-health")
    except PackageNotFoundError:
        return "0"


def _base_url(request: Request, context: RecordsContext) -> str:
    if context.base_url:
        return context.base_url.rstrip("/")
    return str(request.base_url).rstrip("/") + "/fhir"


async def _publish(context: RecordsContext, store: ResourceStore) -> None:
    for change in store.changes:
        try:
            await context.bus.publish(
                CHANGES_CHANNEL,
                {
                    "type": change.res_type,
                    "id": change.res_id,
                    "versionId": change.version,
                    "method": change.method,
                },
            )
        except Exception:  # the record is committed; a listener that missed it can re-read history
            logger.exception("could not announce %s/%s on the bus", change.res_type, change.res_id)


@router.api_route(
    "/fhir", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"], include_in_schema=False
)
@router.api_route("/fhir/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
async def fhir_endpoint(request: Request, path: str = "") -> Response:
    """FHIR R4B RESTful API (JSON).

    Every request but ``metadata`` needs a caller; what the caller did, or was refused, goes
    on the audit trail before the response leaves: a write's record in the write's own
    transaction, a read's in one of its own.
    """
    context: RecordsContext = request.app.state.records
    base_url = _base_url(request, context)
    path = path.strip("/")
    method = request.method.upper()
    caller: Caller | None = None
    fhir_request: FhirRequest | None = None
    try:
        check_format(request)
        if path == "metadata" and method in ("GET", "HEAD"):
            return fhir_response(
                200,
                capability_statement(
                    base_url=base_url,
                    indexer=context.indexer,
                    software_version=_software_version(),
                    security=context.security(request) if context.security else None,
                ),
            )
        caller = await context.authenticate(request)
        query = request.url.query
        if method == "POST" and (path == "_search" or path.endswith("/_search")):
            # Search by POST: the criteria come as a form, added to any in the URL.
            form = (await request.body()).decode("utf-8", "replace")
            query = "&".join(q for q in (query, form) if q)
            path, method = path[: -len("_search")].rstrip("/"), "GET"
            body, raw = None, b""
        else:
            body, raw = await read_body(request, max_bytes=context.max_body_bytes)
        fhir_request = FhirRequest(
            method="GET" if method == "HEAD" else method,
            path=path,
            query=query,
            body=body,
            content_type=request.headers.get("content-type"),
            if_match=request.headers.get("if-match"),
            if_none_exist=request.headers.get("if-none-exist"),
            if_none_match=request.headers.get("if-none-match"),
            if_modified_since=http_instant(request.headers.get("if-modified-since")),
            scan_identifiers=may_carry_resident_id(raw) if raw else True,
            handling_strict=prefer(request, "handling") == "strict",
        )
        is_write = fhir_request.method != "GET"
        async with context.database.transaction(write=is_write) as session:
            store = ResourceStore(session, context.indexer, access=caller.access)
            interactions = Interactions(
                store,
                base_url=base_url,
                max_page_size=context.max_page_size,
                default_page_size=context.default_page_size,
            )
            if path == "" and method == "POST":
                processor = BundleProcessor(
                    interactions, return_resources=prefer(request, "return") == "representation"
                )
                result_body = await processor.process(
                    body, scan_identifiers=fhir_request.scan_identifiers
                )
                response = fhir_response(200, result_body)
            else:
                result = await interactions.perform(fhir_request)
                response = render(
                    result,
                    base_url=base_url,
                    return_preference=prefer(request, "return"),
                    is_write=is_write,
                )
            touched = [*interactions.shown, *((c.res_type, c.res_id) for c in store.changes)]
            event = _event(
                fhir_request,
                response.status_code,
                resources=touched,
                owners=await store.owners_of(touched),
            )
            if is_write:
                await caller.audit(event, session=session)
        if not is_write:
            await caller.audit(event)
        await _publish(context, store)
        return response
    except FhirError as error:
        return await _refused(caller, fhir_request, error, method, path)
    except IntegrityError:
        logger.info("write conflict on %s %s", method, path)
        return await _refused(
            caller,
            fhir_request,
            FhirError.of(
                409,
                "Another request changed the same record at the same moment; try again",
                code="conflict",
            ),
            method,
            path,
        )
    except DBAPIError as error:
        if _is_retryable(error):
            return await _refused(
                caller,
                fhir_request,
                FhirError.of(
                    409,
                    "The database could not serialise this change with a concurrent one; try again",
                    code="transient",
                ),
                method,
                path,
            )
        raise


def _event(
    request: FhirRequest,
    status: int,
    *,
    resources: list[tuple[str, str]] | None = None,
    owners: dict[tuple[str, str], set[str]] | None = None,
    problem: str | None = None,
) -> AccessEvent:
    interaction, action = request.interaction
    target = request.path + (f"?{request.query}" if request.query else "")
    shown = tuple(dict.fromkeys(resources or ()))
    patients: dict[str, list[tuple[str, str]]] = {}
    for resource in shown:
        for patient in sorted((owners or {}).get(resource, ())):
            patients.setdefault(patient, []).append(resource)
    return AccessEvent(
        interaction=interaction,
        action=action,
        status=status,
        request=f"{request.method} {target}",
        resources=shown,
        patients={p: tuple(r) for p, r in sorted(patients.items())},
        problem=problem,
    )


async def _refused(
    caller: Caller | None,
    request: FhirRequest | None,
    error: FhirError,
    method: str,
    path: str,
) -> Response:
    """The error response; a refusal of a known caller goes on the audit trail too."""
    if caller is not None:
        described = request or FhirRequest(method=method, path=path)
        # The reason kept is the error code, not the message: messages may quote values.
        codes = ", ".join(sorted({i.code for i in error.issues})) or str(error.status)
        # What was asked for, if it names a resource: a patient's clinic then sees the attempt.
        segments = described.segments
        named = (
            [(segments[0], segments[1])]
            if len(segments) >= 2
            and segments[0][:1].isupper()
            and segments[1][:1] not in ("_", "$")
            and is_valid_resource_id(segments[1])
            else []
        )
        owners = {(t, i): {i} for t, i in named if t == "Patient"}
        await caller.audit(
            _event(described, error.status, resources=named, owners=owners, problem=codes)
        )
    return error_response(error)


def _is_retryable(error: DBAPIError) -> bool:
    text = str(error.orig).lower()
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked"))
