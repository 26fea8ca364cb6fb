"""Shared fixtures: real PostgreSQL and Redis servers, and the app over real HTTP.

Tests that take ``database_url`` (or anything built on it, such as ``fhir``) run once on
SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from alembic.config import Config

from health.cli import PROJECT_ROOT, run_migrations
from tests.services import SHARED, AppServer, PostgresServer, RedisServer, ServiceUnavailable

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except ServiceUnavailable as error:
        pytest.skip(str(error))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
    except ServiceUnavailable as error:
        pytest.skip(str(error))
    yield server
    server.stop()


def alembic_config(database_url: str) -> Config:
    """The migrations' configuration for ``database_url``, to move it up or down by hand."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def fresh_database(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """A new, migrated database on ``backend``."""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'health.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database(f"health_{uuid.uuid4().hex[:12]}")
    run_migrations(url)
    return url


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return fresh_database(request, request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="session")
def app_server(database_url: str) -> Iterator[AppServer]:
    server = AppServer(database_url).start()
    yield server
    server.stop()


@pytest.fixture
def fhir(app_server: AppServer) -> Iterator[httpx.Client]:
    """An HTTP client on the FHIR base of the running app, as a system client that may do
    everything (``system/*.cruds``): the records' own behaviour, apart from access rules."""
    with httpx.Client(
        base_url=f"{app_server.url}/fhir",
        headers={
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
            **app_server.auth_headers(),
        },
        timeout=60,
    ) as client:
        yield client


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(
            f"{SHARED} is absent: the shared FHIR definitions and Synthea data are not here"
        )
    return SHARED
