"""Rows written in bulk (``insert_rows``): the same rows and the same refusals on SQLite and
on PostgreSQL, where they go in by COPY."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from health.core.clock import utcnow
from health.core.database import Database, insert_rows
from records.tables import resources, search_token


async def test_rows_go_in_with_nulls_where_they_say_nothing(database_url: str) -> None:
    database = Database(database_url)
    try:
        async with database.transaction(write=True) as session:
            (rid,) = (
                await session.execute(
                    insert(resources)
                    .values(
                        res_type="Basic",
                        res_id=uuid.uuid4().hex,
                        version=1,
                        last_updated=utcnow(),
                        deleted=False,
                    )
                    .returning(resources.c.rid)
                )
            ).one()
            await insert_rows(
                session,
                search_token,
                [
                    {"rid": rid, "res_type": "Basic", "param": "code", "code": "a", "text": "甲"},
                    {"rid": rid, "res_type": "Basic", "param": "code", "code": "b"},
                ],
            )
        async with database.transaction(write=False) as session:
            rows = (
                await session.execute(
                    select(search_token.c.code, search_token.c.system, search_token.c.text)
                    .where(search_token.c.rid == rid)
                    .order_by(search_token.c.code)
                )
            ).all()
        assert [tuple(row) for row in rows] == [("a", None, "甲"), ("b", None, None)]
    finally:
        await database.dispose()


async def test_a_row_that_breaks_a_constraint_is_an_integrity_error(database_url: str) -> None:
    """The API answers 409 to an IntegrityError; a COPY's refusal must read the same."""
    database = Database(database_url)
    param = f"p-{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(IntegrityError):
            async with database.transaction(write=True) as session:
                await session.execute(select(1))  # the transaction has begun, as in the store
                await insert_rows(
                    session,
                    search_token,
                    # No resource: ``rid`` is NOT NULL (index rows have no foreign key).
                    [{"rid": None, "res_type": "Basic", "param": param, "code": "x"}],
                )
        async with database.transaction(write=False) as session:
            left = (
                await session.execute(
                    select(search_token.c.rid).where(search_token.c.param == param)
                )
            ).all()
        assert left == []
    finally:
        await database.dispose()
