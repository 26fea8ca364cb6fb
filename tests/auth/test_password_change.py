"""A password changed by its owner is changed in her live session only, on both databases:
a session ended meanwhile (an administrator reset the password, or disabled her) changes
nothing, so the administrator's password stays the one that works."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from health.auth import accounts
from health.core.database import Database


async def _change(url: str) -> None:
    database = Database(url)
    username = f"doctor-{uuid.uuid4().hex[:8]}"
    now = dt.datetime.now(dt.UTC)

    async def login(password: str) -> bool:
        async with database.transaction(write=True) as session:
            try:
                await accounts.check_password(
                    session,
                    username=username,
                    password=password,
                    now=dt.datetime.now(dt.UTC),
                    lockout_after=100,
                    lockout_seconds=60,
                )
            except accounts.LoginRefused:
                return False
            return True

    try:
        async with database.transaction(write=True) as session:
            await accounts.add_user(
                session, username=username, role="admin", organization_id=None,
                password="first-password-1", now=now,
            )  # fmt: skip
            ended, _ = await accounts.open_session(
                session, username=username, now=now, ttl_seconds=600, address=None
            )
            live, _ = await accounts.open_session(
                session, username=username, now=now, ttl_seconds=600, address=None
            )
        async with database.transaction(write=True) as session:
            await accounts.close_session(session, token=ended)

        async def change_in(web_session: str) -> None:
            async with database.transaction(write=True) as session:
                await accounts.set_password(
                    session, username=username, password="second-password-2",
                    temporary=False, keep_session=web_session,
                )  # fmt: skip

        with pytest.raises(accounts.SessionEnded):
            await change_in(ended)
        assert await login("first-password-1") and not await login("second-password-2")
        await change_in(live)
        assert await login("second-password-2") and not await login("first-password-1")
        async with database.transaction(write=False) as session:
            assert await accounts.find_session(session, token=live, now=now) is not None
    finally:
        await database.dispose()


def test_a_change_in_a_session_that_has_ended_changes_nothing(database_url: str) -> None:
    asyncio.run(_change(database_url))
