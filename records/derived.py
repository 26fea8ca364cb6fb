"""Tables derived from the stored resources by other parts of the service, kept by the store.

The search indexes are the store's own derived data. A capability built on the records may
need rows shaped for its own queries — the illness-poverty service wants one row per bill
with its amounts, so that a whole city's costs are one SQL aggregate instead of a million
JSON documents parsed. A :class:`DerivedTable` names the resource types it follows and turns
one resource into rows; the store writes those rows in the same transaction as every version
of those types (create, update, bulk create, reindex), and removes them with the resource's
search index rows when it is deleted. The rows can therefore never disagree with the stored
JSON, and :func:`rebuild` refills them from it when the extraction itself changes.

The store does not know what the tables mean. They are found through the entry point group
``records.derived_tables`` (``pyproject.toml``), so every process that writes records —
the app, an import worker, a benchmark's loader — keeps every table, whatever it imported.
Each table has a ``rid`` column referring to ``resources.rid`` with ``ON DELETE CASCADE``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol

import orjson
from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    Table,
    and_,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from health.core.clock import utcnow
from health.core.database import Database, insert_rows, uniform_rows
from records.tables import reindex_jobs, resource_versions, resources

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "records.derived_tables"
REBUILD_BATCH = 1000


class DerivedTable(Protocol):
    """Rows of ``table`` derived from each current resource of ``resource_types``."""

    @property
    def name(self) -> str:
        """Short name, for progress records and messages (``poverty-costs``)."""
        ...

    @property
    def table(self) -> Table: ...

    @property
    def resource_types(self) -> frozenset[str]: ...

    def rows(self, res_type: str, res_id: str, resource: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows for one resource (without ``rid``, which the store adds); may be none."""
        ...


@cache
def derived_tables() -> tuple[DerivedTable, ...]:
    """Every derived table registered under :data:`ENTRY_POINT_GROUP`, in name order."""
    found: list[DerivedTable] = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        found.append(point.load())
    return tuple(found)


def tables_for(res_type: str) -> list[DerivedTable]:
    return [t for t in derived_tables() if res_type in t.resource_types]


async def write_rows(session: AsyncSession, items: Sequence[tuple[int, str, str, Any]]) -> None:
    """Insert the derived rows of freshly stored resources: (rid, type, id, content) each."""
    batches: dict[str, tuple[DerivedTable, list[dict[str, Any]]]] = {}
    for rid, res_type, res_id, data in items:
        for derived in tables_for(res_type):
            rows = derived.rows(res_type, res_id, data)
            if rows:
                batch = batches.setdefault(derived.name, (derived, []))[1]
                batch.extend({**row, "rid": rid} for row in rows)
    for derived, rows in batches.values():
        await insert_rows(session, derived.table, rows)


async def delete_rows(session: AsyncSession, rid: int, res_type: str) -> None:
    """Remove the derived rows of one resource (before its new version's rows are written)."""
    for derived in tables_for(res_type):
        await session.execute(delete(derived.table).where(derived.table.c.rid == rid))


def _current(types: Sequence[str], after: int) -> Any:
    """Current versions of these types after rid ``after``, in rid order. The bound on the
    versions' rid too keeps the planner's merge join from reading every version from the
    start for each batch."""
    return (
        select(
            resources.c.rid, resources.c.res_type, resources.c.res_id, resource_versions.c.content
        )
        .join(
            resource_versions,
            and_(
                resource_versions.c.rid == resources.c.rid,
                resource_versions.c.version == resources.c.version,
            ),
        )
        .where(
            resources.c.res_type.in_(sorted(types)),
            resources.c.deleted.is_(False),
            resources.c.rid > after,
            resource_versions.c.rid > after,
        )
        .order_by(resources.c.rid)
    )


def _rows_of(derived: DerivedTable, batch: Sequence[Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for row in batch:
        data = orjson.loads(row.content)
        rows.extend({**r, "rid": row.rid} for r in derived.rows(row.res_type, row.res_id, data))
    return rows


def refill(connection: Connection, derived: DerivedTable) -> int:
    """Fill an empty derived table from the stored resources, on a synchronous connection
    (a migration's); returns the number of resources read.

    Only the columns the table has in the database are written: a migration runs the
    extraction of today's code against the table as that migration left it, and a later
    migration that adds a column fills that column itself."""
    present = {column["name"] for column in inspect(connection).get_columns(derived.table.name)}
    columns = [column for column in derived.table.columns if column.name in present]
    table = Table(derived.table.name, MetaData(), *(Column(c.name, c.type) for c in columns))
    read = 0
    last = 0
    while True:
        batch = connection.execute(
            _current(sorted(derived.resource_types), last).limit(REBUILD_BATCH)
        ).all()
        if not batch:
            return read
        rows = [
            {key: value for key, value in row.items() if key in present}
            for row in _rows_of(derived, batch)
        ]
        if rows:
            connection.execute(insert(table), uniform_rows(rows))
        read += len(batch)
        last = batch[-1].rid


async def rebuild(
    database: Database,
    derived: DerivedTable,
    *,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Rewrite a derived table from the stored JSON, a batch of resources per transaction.

    How far it got is kept in ``reindex_jobs`` (scope ``derived:<name>``), so a run that is
    stopped resumes. Each batch replaces the rows of a ``rid`` range — deleted resources'
    leftovers included — so the table is whole at every commit, and writes that happen
    meanwhile keep their rows as the store writes them.
    """
    scope = f"derived:{derived.name}"[:64]
    types = sorted(derived.resource_types)
    async with database.transaction(write=True) as session:
        last = (
            await session.execute(
                select(reindex_jobs.c.last_rid).where(reindex_jobs.c.scope == scope)
            )
        ).scalar_one_or_none()
        if last is None:
            await session.execute(
                insert(reindex_jobs).values(scope=scope, last_rid=0, started=utcnow())
            )
            last = 0
        remaining = (
            await session.execute(
                select(func.count())
                .select_from(resources)
                .where(
                    resources.c.res_type.in_(types),
                    resources.c.deleted.is_(False),
                    resources.c.rid > last,
                )
            )
        ).scalar_one()
    if on_start is not None:
        on_start(remaining)
    done = 0
    while True:
        async with database.transaction(write=True) as session:
            batch = (
                await session.execute(
                    _current(types, last)
                    .limit(REBUILD_BATCH)
                    # A write to one of these resources meanwhile waits for this batch, so
                    # its new rows are not replaced by the rows of what it replaced.
                    .with_for_update(read=True, of=resources)
                )
            ).all()
            table = derived.table
            if not batch:
                await session.execute(delete(table).where(table.c.rid > last))
                await session.execute(delete(reindex_jobs).where(reindex_jobs.c.scope == scope))
                break
            upto = batch[-1].rid
            await session.execute(delete(table).where(table.c.rid > last, table.c.rid <= upto))
            rows = _rows_of(derived, batch)
            if rows:
                await insert_rows(session, table, rows)
            await session.execute(
                update(reindex_jobs).where(reindex_jobs.c.scope == scope).values(last_rid=upto)
            )
            last = upto
        done += len(batch)
        if on_batch is not None:
            on_batch(len(batch))
    logger.info("derived table %s rebuilt from %d resources", derived.name, done)
    return done
