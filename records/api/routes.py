"""The ``/fhir`` REST API: every FHIR interaction under one catch-all route.

Each request runs in one database transaction (a write transaction for anything but GET),
through :class:`records.interactions.Interactions` or, for a Bundle posted to the base, the
:class:`records.transactions.BundleProcessor`. After the commit the store's changes go out on
the bus channel :data:`CHANGES_CHANNEL`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError, IntegrityError

from health.core.bus import MessageBus
from health.core.database import Database
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
from records.feed import CHANGES_CHANNEL as CHANGES_CHANNEL  # where listeners look for it
from records.feed import announce
from records.indexing import SearchIndexer
from records.interactions import FhirRequest, Interactions
from records.outcome import FhirError
from records.store import ResourceStore
from records.transactions import BundleProcessor
from records.validation import may_carry_resident_id

logger = logging.getLogger(__name__)

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
    await announce(context.bus, store.changes)


@router.api_route(
    "/fhir", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"], include_in_schema=False
)
@router.api_route("/fhir/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
async def fhir_endpoint(request: Request, path: str = "") -> Response:
    """FHIR R4B RESTful API (JSON)."""
    context: RecordsContext = request.app.state.records
    base_url = _base_url(request, context)
    path = path.strip("/")
    method = request.method.upper()
    try:
        check_format(request)
        if path == "metadata" and method in ("GET", "HEAD"):
            return fhir_response(
                200,
                capability_statement(
                    base_url=base_url, indexer=context.indexer, software_version=_software_version()
                ),
            )
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
            store = ResourceStore(session, context.indexer)
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
        await _publish(context, store)
        return response
    except FhirError as error:
        return error_response(error)
    except IntegrityError:
        logger.info("write conflict on %s %s", method, path, exc_info=True)
        return error_response(
            FhirError.of(
                409,
                "Another request changed the same record at the same moment; try again",
                code="conflict",
            )
        )
    except DBAPIError as error:
        if _is_retryable(error):
            return error_response(
                FhirError.of(
                    409,
                    "The database could not serialise this change with a concurrent one; try again",
                    code="transient",
                )
            )
        raise


def _is_retryable(error: DBAPIError) -> bool:
    text = str(error.orig).lower()
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked"))
