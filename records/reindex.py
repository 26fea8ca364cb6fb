"""Rebuilding the search indexes from the stored resources (``health reindex``).

Needed when the search parameters or the way values are extracted change. Works through the
current versions in ``rid`` order, a batch per transaction, and records how far it got in
``reindex_jobs``: a run that crashes or is stopped resumes from its last batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, insert, select, update

from health.core.clock import utcnow
from health.core.database import Database
from records.indexing import SearchIndexer
from records.store import ResourceStore
from records.tables import reindex_jobs, resource_versions, resources

BATCH = 500


@dataclass(frozen=True)
class ReindexReport:
    resources: int
    resumed_from: int | None


async def reindex(
    database: Database,
    indexer: SearchIndexer,
    *,
    res_type: str | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ReindexReport:
    """Re-extract the index rows of every current resource (of ``res_type``, or all)."""
    scope = res_type or "*"
    conditions = [resources.c.deleted.is_(False)]
    if res_type is not None:
        conditions.append(resources.c.res_type == res_type)
    async with database.transaction(write=True) as session:
        last_rid = (
            await session.execute(
                select(reindex_jobs.c.last_rid).where(reindex_jobs.c.scope == scope)
            )
        ).scalar_one_or_none()
        if last_rid is None:
            await session.execute(
                insert(reindex_jobs).values(scope=scope, last_rid=0, started=utcnow())
            )
        resumed_from = last_rid
        last_rid = last_rid or 0
        remaining = (
            await session.execute(
                select(func.count())
                .select_from(resources)
                .where(*conditions, resources.c.rid > last_rid)
            )
        ).scalar_one()
    if on_start is not None:
        on_start(remaining)
    done = 0
    while True:
        async with database.transaction(write=True) as session:
            rows = (
                await session.execute(
                    select(resources.c.rid, resources.c.res_type, resource_versions.c.content)
                    .join(
                        resource_versions,
                        and_(
                            resource_versions.c.rid == resources.c.rid,
                            resource_versions.c.version == resources.c.version,
                        ),
                    )
                    .where(*conditions, resources.c.rid > last_rid)
                    .order_by(resources.c.rid)
                    .limit(BATCH)
                )
            ).all()
            if not rows:
                await session.execute(delete(reindex_jobs).where(reindex_jobs.c.scope == scope))
                break
            await ResourceStore(session, indexer).reindex(
                [(r.rid, r.res_type, r.content) for r in rows]
            )
            last_rid = rows[-1].rid
            await session.execute(
                update(reindex_jobs).where(reindex_jobs.c.scope == scope).values(last_rid=last_rid)
            )
        done += len(rows)
        if on_batch is not None:
            on_batch(len(rows))
    return ReindexReport(resources=done, resumed_from=resumed_from)
