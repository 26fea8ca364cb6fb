"""Settings from environment variables ``HEALTH_*``, with embedded defaults.

With nothing set the service runs on one machine: a SQLite file under ``var/`` and the
in-process message bus. Production sets ``HEALTH_DATABASE_URL`` (PostgreSQL) and
``HEALTH_REDIS_URL``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

VAR_DIR = Path("var")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEALTH_", extra="ignore")

    #: SQLAlchemy async URL: ``sqlite+aiosqlite:///var/health.db`` or
    #: ``postgresql+asyncpg://user:pass@host/db``. ``postgresql://`` is accepted and given
    #: the asyncpg driver.
    database_url: str = f"sqlite+aiosqlite:///{VAR_DIR}/health.db"
    #: ``redis://host:6379/0``; unset means the in-process bus (one process only).
    redis_url: str | None = None
    #: The public base of the FHIR API, used in Location headers and Bundle links when set;
    #: otherwise taken from each request.
    fhir_base_url: str | None = None
    #: Largest page a search or history may return (``_count`` is capped to it).
    max_page_size: int = 1000
    default_page_size: int = 50
    #: Largest request body accepted, in bytes (a Bundle of a few thousand entries fits).
    max_body_bytes: int = 64 * 1024 * 1024

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if value.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + value.split(":///", 1)[1]
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@cache
def get_settings() -> Settings:
    return Settings()
