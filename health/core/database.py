"""The async SQLAlchemy engine and transactions, for SQLite (embedded) and PostgreSQL.

SQLite runs in WAL mode so readers never wait for the writer. Write transactions start with
``BEGIN IMMEDIATE`` so that two writers are serialised at the start instead of failing with
"database is locked" when the second tries to upgrade its read lock; read transactions start
with a plain ``BEGIN``. PostgreSQL runs at READ COMMITTED and the store takes row locks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import Table, event, insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
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


async def insert_rows(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``rows`` into ``table`` in the session's transaction; a key no row has is left
    to the column's default, and one that some rows lack is NULL in those.

    On PostgreSQL the rows go in by one binary ``COPY``, which spares the executor's start-up
    for each row that ``executemany`` pays: on this machine 21 µs a search-index row instead of
    40. The index tables take a few dozen rows for each resource written and each AuditEvent,
    so this is most of what writing costs the database. A ``COPY`` takes no part in
    SQLAlchemy's transaction bookkeeping, so it is used only once that transaction has begun
    (any statement before it begins it; the store's writes always have one).
    """
    if not rows:
        return
    keys = set().union(*rows)
    names = [column.name for column in table.columns if column.name in keys]
    if session.get_bind().dialect.name == "postgresql":
        connection = await session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        if driver is not None and driver.is_in_transaction():
            dialect = connection.dialect
            processors = [
                table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
            ]
            if not any(processors):
                try:
                    await driver.copy_records_to_table(
                        table.name,
                        records=[tuple(map(row.get, names)) for row in rows],
                        columns=names,
                    )
                except asyncpg.PostgresError as error:
                    # As SQLAlchemy reports what its own statements meet, so that callers
                    # tell a conflict (409) or a deadlock (retry) the same way.
                    kind = (
                        IntegrityError
                        if isinstance(error, asyncpg.IntegrityConstraintViolationError)
                        else DBAPIError
                    )
                    raise kind(f"COPY {table.name}", None, error) from error
                return
    await session.execute(insert(table), uniform_rows(rows))


def uniform_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows with the same keys (None where one says nothing), as one multi-row INSERT needs."""
    keys = set().union(*rows)
    if all(len(row) == len(keys) for row in rows):
        return list(rows)
    return [{key: row.get(key) for key in keys} for row in rows]
