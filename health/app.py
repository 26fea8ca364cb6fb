"""The FastAPI application factory: the one place that wires every part together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from health.core.bus import create_bus
from health.core.database import Database
from health.core.settings import Settings, get_settings
from health.poverty.listener import start_flag_listener
from records.api.responses import fhir_response
from records.api.routes import RecordsContext
from records.api.routes import router as fhir_router
from records.indexing import SearchIndexer
from records.outcome import FhirError

logger = logging.getLogger(__name__)


def problem(status: int, title: str, detail: str | None = None) -> JSONResponse:
    """RFC 9457 problem JSON, for errors outside ``/fhir``."""
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings.database_url)
        bus = create_bus(settings.redis_url)
        app.state.records = RecordsContext(
            database=database,
            indexer=SearchIndexer(),
            bus=bus,
            base_url=settings.fhir_base_url,
            max_page_size=settings.max_page_size,
            default_page_size=settings.default_page_size,
            max_body_bytes=settings.max_body_bytes,
        )
        flags = await start_flag_listener(database, app.state.records.indexer, bus, settings)
        try:
            yield
        finally:
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
    app.include_router(fhir_router)

    @app.get("/", include_in_schema=False)
    async def index() -> dict[str, str]:
        return {
            "service": "银川移民地区远程医疗与健康档案共享 Yinchuan resettlement-area telemedicine",
            "fhir": "/fhir/metadata",
            "api_docs": "/api/docs",
        }

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def _is_fhir(request: Request) -> bool:
        return request.url.path == "/fhir" or request.url.path.startswith("/fhir/")

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
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        if _is_fhir(request):
            return fhir_response(
                500,
                FhirError.of(
                    500, "Internal server error; the request was not applied", code="exception"
                ).outcome(),
            )
        return problem(500, "Internal server error")

    return app
