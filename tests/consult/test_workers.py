"""Several workers behind Redis: one owns each room, signalling reaches it from any other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from consult.client import ConsultClientError
from tests.consult.conftest import (
    DEADLINE,
    SPECIALIST,
    TOWNSHIP_DOCTOR,
    VILLAGE_DOCTOR,
    SignallingWorker,
    WorkerProcess,
    eventually,
)
from tests.consult.test_call import sees
from tests.services import RedisServer

Workers = Callable[..., Any]


async def test_signalling_on_another_worker_reaches_the_room_owner(
    redis_workers: Workers,
) -> None:
    first: SignallingWorker = await redis_workers()
    second: SignallingWorker = await redis_workers()
    async with first.client("consult-w", VILLAGE_DOCTOR) as village:
        # The village doctor's worker took the room; the specialist's socket lands elsewhere.
        assert list(first.rooms.owned_rooms()) == ["consult-w"]
        async with (
            second.client("consult-w", SPECIALIST) as specialist,
            second.client("consult-w", TOWNSHIP_DOCTOR) as township,
        ):
            for viewer, other in [
                (village, specialist),
                (specialist, village),
                (township, specialist),
                (specialist, township),
            ]:
                await viewer.wait_for(lambda c, o=other: sees(c, o), DEADLINE)
            # One room, on the owner: its hub answered everyone and carries all the media.
            assert second.rooms.owned_rooms() == {} and second.rooms.hub.rooms == {}
            assert [p.id for p in first.rooms.owned_rooms()["consult-w"]] == [
                VILLAGE_DOCTOR.id,
                SPECIALIST.id,
                TOWNSHIP_DOCTOR.id,
            ]
            assert set(first.rooms.hub.stats()["consult-w"]["participants"]) == {
                VILLAGE_DOCTOR.id,
                SPECIALIST.id,
                TOWNSHIP_DOCTOR.id,
            }
            assert specialist.received(VILLAGE_DOCTOR.id, "video").picture_of == VILLAGE_DOCTOR.id
        # Leaving through the other worker is seen at the owner.
        await village.wait_for(lambda c: not c.present, DEADLINE)
        assert [p.id for p in first.rooms.owned_rooms()["consult-w"]] == [VILLAGE_DOCTOR.id]
    await eventually(lambda: first.rooms.owned_rooms() == {}, "the owner closed the room")


async def test_a_dead_owners_room_is_taken_over_when_its_lease_runs_out(
    redis_server: RedisServer, redis_workers: Workers
) -> None:
    doomed = await WorkerProcess(redis_server.url, lease_seconds=1.0).ready()
    survivor: SignallingWorker = await redis_workers(lease_seconds=1.0)
    try:
        village = doomed.client("consult-t", VILLAGE_DOCTOR)
        await village.join()
        assert await survivor.bus.claim("consult.room.consult-t", "somebody", 1.0) != "somebody"
        doomed.kill()
        await village.wait_for(lambda c: not c.signalling_open, DEADLINE)
        await village.leave()
        # The lease lapses unrenewed, and the other worker can take the room.
        lease, survivor_id = "consult.room.consult-t", survivor.rooms.worker_id
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while await survivor.bus.claim(lease, survivor_id, 1.0) != survivor_id:
            assert asyncio.get_running_loop().time() < deadline, "the dead worker's lease held"
            await asyncio.sleep(0.05)
        async with (
            survivor.client("consult-t", VILLAGE_DOCTOR) as village_again,
            survivor.client("consult-t", SPECIALIST) as specialist,
        ):
            await specialist.wait_for(lambda c: sees(c, village_again), DEADLINE)
            await village_again.wait_for(lambda c: sees(c, specialist), DEADLINE)
            assert "consult-t" in survivor.rooms.owned_rooms()
    finally:
        doomed.kill()


async def test_a_dead_owner_gets_the_participant_a_clear_error_until_then(
    redis_server: RedisServer, redis_workers: Workers
) -> None:
    doomed = await WorkerProcess(redis_server.url, lease_seconds=60.0).ready()
    survivor: SignallingWorker = await redis_workers(reply_seconds=1.0)
    try:
        holder = doomed.client("consult-s", SPECIALIST)
        await holder.join()
        doomed.kill()  # the room's lease stays the dead worker's for a minute
        await holder.leave()
        late = survivor.client("consult-s", TOWNSHIP_DOCTOR)
        with pytest.raises(ConsultClientError, match="owner-unavailable"):
            await late.join()
        await late.leave()
    finally:
        doomed.kill()
