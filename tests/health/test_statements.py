"""A condition keyed once (``KeyedOnce``) reads the rows its own values name, whichever
condition of the same shape SQLAlchemy compiled the statement for first: it is how one
clinic's access policy and the next clinic's share a compiled search."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import DateTime, and_, bindparam, insert, or_, select

from health.core.clock import utcnow
from health.core.database import Database
from health.core.statements import KeyedOnce
from records.tables import resources


async def _stored(database: Database, kind: str, ids: list[str], updated: dt.datetime) -> None:
    async with database.transaction(write=True) as session:
        await session.execute(
            insert(resources),
            [
                {
                    "res_type": kind,
                    "res_id": res_id,
                    "version": 1,
                    "last_updated": updated,
                    "deleted": False,
                }
                for res_id in ids
            ],
        )


def _seen_by(kind: str, ids: list[str], since: object) -> KeyedOnce:
    # The shape of a policy: an OR of ANDs, with a moment computed when the statement runs.
    return KeyedOnce(
        or_(
            and_(resources.c.res_type == kind, resources.c.res_id.in_(ids)),
            and_(resources.c.res_type == kind, resources.c.last_updated > since),
        )
    )


async def test_conditions_of_one_shape_read_their_own_rows(database_url: str) -> None:
    database = Database(database_url)
    kind = f"Basic{uuid.uuid4().hex[:8]}"
    first, second = [uuid.uuid4().hex for _ in range(3)], [uuid.uuid4().hex for _ in range(2)]
    late = [uuid.uuid4().hex]
    now = utcnow()
    try:
        await _stored(database, kind, first + second, now - dt.timedelta(days=2))
        await _stored(database, kind, late, now)
        moment = {"at": now + dt.timedelta(days=1)}
        since = bindparam(None, callable_=lambda: moment["at"], type_=DateTime(timezone=True))
        conditions = {
            "first": _seen_by(kind, first, since),
            "second": _seen_by(kind, second, since),
        }

        async def ids(condition: KeyedOnce) -> set[str]:
            async with database.transaction(write=False) as session:
                statement = select(resources.c.res_id).where(
                    resources.c.deleted.is_(False), condition
                )
                return set((await session.scalars(statement)).all())

        for _ in range(2):  # the second round runs from the compiled cache
            assert await ids(conditions["first"]) == set(first)
            assert await ids(conditions["second"]) == set(second)
        # The moment is the one of each execution, not of the first.
        moment["at"] = now - dt.timedelta(days=1)
        assert await ids(conditions["first"]) == set(first + late)
        # Inside a subquery and ANDed with more, the condition keeps its parentheses.
        async with database.transaction(write=False) as session:
            inner = select(resources.c.rid).where(
                resources.c.res_id != late[0], conditions["second"]
            )
            counted = await session.scalars(
                select(resources.c.res_id).where(resources.c.rid.in_(inner))
            )
            assert set(counted.all()) == set(second)
    finally:
        await database.dispose()
