"""HTTP on the FHIR side: reading request bodies and headers, writing FHIR responses.

Responses are ``application/fhir+json``; a stored resource is sent as its stored text.
``Prefer: return=minimal | representation | OperationOutcome`` decides what a write returns.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from health.core.clock import http_date
from records.interactions import FhirResult
from records.outcome import FhirError, Issue, operation_outcome

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = (
    "application/fhir+json",
    "application/json",
    "application/json-patch+json",
    "text/json",
)


def fhir_response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Response:
    if body is None:
        content = b""
    elif isinstance(body, (bytes, str)):
        content = body.encode() if isinstance(body, str) else body
    else:
        content = orjson.dumps(body)
    return Response(
        content=content if status != 304 else b"",
        status_code=status,
        headers=headers,
        media_type=f"{FHIR_JSON}; charset=utf-8" if content and status != 304 else None,
    )


def error_response(error: FhirError) -> Response:
    return fhir_response(error.status, error.outcome(), error.headers)


def check_format(request: Request) -> None:
    """Refuse a ``_format`` or ``Accept`` that asks only for XML or another non-JSON format."""
    requested = request.query_params.get("_format")
    if requested and not any(t in requested for t in ("json", "JSON")):
        raise FhirError.of(
            406,
            f"This server speaks JSON only; _format={requested} is not available",
            code="not-supported",
        )
    accept = request.headers.get("accept", "")
    if accept and "xml" in accept and not any(t in accept for t in ("json", "*/*")):
        raise FhirError.of(
            406, "This server speaks JSON only (application/fhir+json)", code="not-supported"
        )


async def read_body(request: Request, *, max_bytes: int) -> tuple[Any, bytes]:
    """The parsed JSON body and its raw bytes; 413/415/400 for what cannot be taken."""
    raw = await request.body()
    if not raw:
        return None, raw
    if len(raw) > max_bytes:
        raise FhirError.of(413, f"The body is larger than {max_bytes} bytes", code="too-costly")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type not in _JSON_TYPES:
        raise FhirError.of(
            415,
            f"Content-Type {content_type} is not accepted; send application/fhir+json",
            code="not-supported",
        )
    try:
        return orjson.loads(raw), raw
    except orjson.JSONDecodeError as error:
        raise FhirError.of(400, f"The body is not valid JSON: {error}", code="structure") from None


def http_instant(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def prefer(request: Request, key: str) -> str | None:
    for part in request.headers.get("prefer", "").split(";"):
        for item in part.split(","):
            name, _, value = item.strip().partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"')
    return None


def render(
    result: FhirResult, *, base_url: str, return_preference: str | None, is_write: bool
) -> Response:
    headers = dict(result.headers)
    version = result.version
    if version is not None:
        headers["ETag"] = version.etag
        headers["Last-Modified"] = http_date(version.last_updated)
        if result.location:
            headers["Location"] = f"{base_url}/{version.versioned_path}"
    if result.status == 304:
        return fhir_response(304, None, headers)
    if result.body is not None:
        return fhir_response(result.status, result.body, headers)
    if is_write:
        if return_preference == "minimal":
            return fhir_response(result.status, None, headers)
        if return_preference == "OperationOutcome":
            issues = result.issues or [
                Issue(
                    f"{result.status} {version.path if version else ''}".strip(),
                    code="informational",
                    severity="information",
                )
            ]
            return fhir_response(result.status, operation_outcome(issues), headers)
    if version is not None and version.content is not None:
        return fhir_response(result.status, version.content, headers)
    if result.issues and result.status != 204:
        return fhir_response(result.status, operation_outcome(result.issues), headers)
    return fhir_response(result.status, None, headers)
