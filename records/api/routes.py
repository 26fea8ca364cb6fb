"""The ``/fhir`` REST API: every FHIR interaction under one catch-all route.

The route reads the HTTP request into a :class:`records.interactions.FhirRequest`, has
:meth:`records.api.service.RecordsContext.perform` run it for the authenticated caller, and
writes the FHIR response.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request
from fastapi.responses import Response

from records.access import Caller
from records.api.responses import (
    check_format,
    error_response,
    fhir_response,
    http_instant,
    prefer,
    read_body,
    render,
)
from records.api.service import RecordsContext
from records.capability import capability_statement
from records.interactions import FhirRequest
from records.outcome import FhirError
from records.validation import may_carry_resident_id

logger = logging.getLogger(__name__)

router = APIRouter()


def _software_version() -> str:
    try:
        return version("yinchuan-health")
    except PackageNotFoundError:
        return "0"


@router.api_route(
    "/fhir", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"], include_in_schema=False
)
@router.api_route("/fhir/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
async def fhir_endpoint(request: Request, path: str = "") -> Response:
    """FHIR R4B RESTful API (JSON). Every request but ``metadata`` needs a caller."""
    context: RecordsContext = request.app.state.records
    base_url = context.fhir_base(request)
    path = path.strip("/")
    method = request.method.upper()
    caller: Caller | None = None
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
            try:
                body, raw = await read_body(request, max_bytes=context.max_body_bytes)
            except FhirError as error:
                await context.audit_refusal(caller, FhirRequest(method=method, path=path), error)
                raise
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
        returning = prefer(request, "return")
        result = await context.perform(
            caller,
            fhir_request,
            base_url=base_url,
            return_resources=returning == "representation",
        )
        if fhir_request.path == "" and fhir_request.method == "POST":
            return fhir_response(result.status, result.body)
        return render(
            result,
            base_url=base_url,
            return_preference=returning,
            is_write=fhir_request.method != "GET",
        )
    except FhirError as error:
        return error_response(error)
