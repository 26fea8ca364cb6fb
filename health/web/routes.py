"""The pages' routers and their one exception handler, installed on the application."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from health.web import admin, cases, chart, consults, dashboard, icd10, patients, visits
from health.web.signed_in import PageRefused


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageRefused)
    return exc.response


def install_pages(app: FastAPI) -> None:
    """Add the patient, chart, visit, consult, ICD-10, admin, dashboard and case pages
    (before /fhir)."""
    for router in (
        patients.router,
        chart.router,
        visits.router,
        consults.router,
        icd10.router,
        admin.router,
        dashboard.router,
        cases.router,
    ):
        app.include_router(router)
    app.add_exception_handler(PageRefused, _refused)
