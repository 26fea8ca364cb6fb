"""Errors outside ``/fhir`` as RFC 9457 problem JSON (``/fhir`` answers OperationOutcomes)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class Problem(Exception):
    """A request refused outside ``/fhir``; ``field`` names the input to fix, if one is wrong."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return problem(self.status, self.title, self.detail, field=self.field, headers=self.headers)


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if field:
        body["field"] = field
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )
