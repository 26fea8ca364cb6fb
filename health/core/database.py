"""The async SQLAlchemy engine and transactions, for SQLite (embedded) and PostgreSQL.

SQLite runs in WAL mode so readers never wait for the writer. Write transactions start with
``BEGIN IMMEDIATE`` so that two writers are serialised at the start instead of failing with
"database is locked" when the second tries to upgrade its read lock; read transactions start
with a plain ``BEGIN``. PostgreSQL runs at READ COMMITTED and the store takes row locks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

_WRITE = "health_write_transaction"


def _prepare_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, below, decide how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        write = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Database:
    """One engine per process, and the transactions the rest of the code works in."""

    def __init__(self, url: str, **engine_options: Any) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = self.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine_options.setdefault("connect_args", {"timeout": 60})
        else:
            # Search statements differ wildly in selectivity by value (one patient's readings
            # against every reading); a plan cached for one value can be ruinous for the next.
            engine_options.setdefault(
                "connect_args", {"server_settings": {"plan_cache_mode": "force_custom_plan"}}
            )
            engine_options.setdefault("pool_size", 10)
            engine_options.setdefault("max_overflow", 20)
            engine_options.setdefault("pool_pre_ping", True)
        # Statement parameters hold names and resident ids: keep them out of error messages.
        engine_options.setdefault("hide_parameters", True)
        self.engine = create_async_engine(url, **engine_options)
        if self.is_sqlite:
            _prepare_sqlite(self.engine)
        self._write_engine = self.engine.execution_options(**{_WRITE: True})

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed when the block ends, rolled back on error."""
        bind = self._write_engine if write else self.engine
        async with AsyncSession(bind=bind, expire_on_commit=False) as session:
            async with session.begin():
                yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
