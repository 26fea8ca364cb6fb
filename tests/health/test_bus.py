"""The message bus, in-process and on a real Redis, and the records change feed on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from health.core.bus import InProcessBus, MessageBus, RedisBus, bus_namespace
from records.feed import CHANGES_CHANNEL
from tests.services import AppServer, RedisServer


@pytest.fixture(params=["in-process", "redis"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[MessageBus]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        instance: MessageBus = RedisBus(server.url)
    else:
        instance = InProcessBus()
    yield instance
    await instance.close()


async def next_message(subscription: Any) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        async for message in subscription:
            return message
        raise AssertionError("subscription ended")

    return await asyncio.wait_for(first(), timeout=10)


async def test_a_subscriber_receives_what_is_published(bus: MessageBus) -> None:
    subscription = await bus.subscribe("consult.room.1")
    other = await bus.subscribe("consult.room.2")
    await bus.publish("consult.room.1", {"type": "offer", "sdp": "v=0", "from": "村医"})
    assert await next_message(subscription) == {"type": "offer", "sdp": "v=0", "from": "村医"}
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(next_message(other), timeout=0.5)
    await subscription.close()
    await other.close()


async def test_hits_are_counted_per_key_in_the_window(bus: MessageBus) -> None:
    key = f"login:address:{id(bus)}"
    assert await bus.hits(key, 3600) == 0
    assert [await bus.hit(key, 3600) for _ in range(3)] == [1, 2, 3]
    assert await bus.hits(key, 3600) == 3
    assert await bus.hits(f"{key}-other", 3600) == 0


async def test_every_subscriber_of_a_channel_gets_each_message(bus: MessageBus) -> None:
    first = await bus.subscribe("broadcast")
    second = await bus.subscribe("broadcast")
    await bus.publish("broadcast", {"n": 1})
    assert await next_message(first) == {"n": 1}
    assert await next_message(second) == {"n": 1}
    await first.close()
    await second.close()


async def test_committed_writes_are_announced_on_redis(
    redis_server: RedisServer, database_url: str
) -> None:
    server = AppServer(database_url, redis_url=redis_server.url).start()
    listener = RedisBus(redis_server.url, bus_namespace(database_url))
    try:
        subscription = await listener.subscribe(CHANGES_CHANNEL)
        async with httpx.AsyncClient(
            base_url=f"{server.url}/fhir", headers=server.auth_headers()
        ) as client:
            created = await client.post(
                "/Patient",
                json={"resourceType": "Patient"},
                headers={"Content-Type": "application/fhir+json"},
            )
            assert created.status_code == 201
            message = await next_message(subscription)
            assert message == {
                "type": "Patient",
                "id": created.json()["id"],
                "versionId": 1,
                "method": "POST",
            }
            refused = await client.post(
                "/Patient",
                json={"resourceType": "Patient", "gender": "robot"},
                headers={"Content-Type": "application/fhir+json"},
            )
            assert refused.status_code == 422
            deleted = await client.delete(f"/Patient/{created.json()['id']}")
            assert deleted.status_code == 200
            # The refused write announced nothing: the next message is the delete.
            message = await next_message(subscription)
            assert message["method"] == "DELETE" and message["versionId"] == 2
        await subscription.close()
    finally:
        await listener.close()
        server.stop()


async def test_a_lease_has_one_holder_until_it_is_released(bus: MessageBus) -> None:
    assert await bus.claim("consult.room.1", "worker-a", 30) == "worker-a"
    assert await bus.claim("consult.room.1", "worker-b", 30) == "worker-a"
    # Claiming again renews it for its holder.
    assert await bus.claim("consult.room.1", "worker-a", 30) == "worker-a"
    await bus.release("consult.room.1", "worker-b")  # not theirs: nothing happens
    assert await bus.claim("consult.room.1", "worker-b", 30) == "worker-a"
    await bus.release("consult.room.1", "worker-a")
    assert await bus.claim("consult.room.1", "worker-b", 30) == "worker-b"
    await bus.release("consult.room.1", "worker-b")


async def test_a_lease_that_is_not_renewed_passes_to_the_next_claimant(bus: MessageBus) -> None:
    assert await bus.claim("consult.room.2", "worker-a", 0.2) == "worker-a"
    assert await bus.claim("consult.room.2", "worker-b", 30) == "worker-a"
    deadline = asyncio.get_running_loop().time() + 10
    while (holder := await bus.claim("consult.room.2", "worker-b", 30)) != "worker-b":
        assert holder == "worker-a"
        assert asyncio.get_running_loop().time() < deadline, "the lease never expired"
        await asyncio.sleep(0.05)
    await bus.release("consult.room.2", "worker-b")


async def test_deployments_sharing_a_redis_server_keep_to_their_own(
    redis_server: RedisServer,
) -> None:
    """Production and a staging service on one Redis: neither hears the other's messages,
    counts the other's hits or holds the other's leases."""
    production = RedisBus(redis_server.url, bus_namespace("postgresql+asyncpg://h:secret@db/city"))
    staging = RedisBus(redis_server.url, bus_namespace("postgresql+asyncpg://h:secret@db/staging"))
    also_production = RedisBus(
        redis_server.url, bus_namespace("postgresql+asyncpg://h:other-password@db/city")
    )
    try:
        heard_by_staging = await staging.subscribe(CHANGES_CHANNEL)
        heard_by_production = await also_production.subscribe(CHANGES_CHANNEL)
        await production.publish(CHANGES_CHANNEL, {"type": "Patient", "id": "p1"})
        assert await next_message(heard_by_production) == {"type": "Patient", "id": "p1"}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(next_message(heard_by_staging), timeout=0.5)
        key = f"login:account:village-doctor:{id(production)}"
        assert [await production.hit(key, 3600) for _ in range(2)] == [1, 2]
        assert await staging.hits(key, 3600) == 0
        assert await also_production.hits(key, 3600) == 2
        room = f"consult.room.{id(production)}"
        assert await production.claim(room, "worker-a", 30) == "worker-a"
        assert await staging.claim(room, "worker-b", 30) == "worker-b"
        assert await also_production.claim(room, "worker-c", 30) == "worker-a"
        await heard_by_staging.close()
        await heard_by_production.close()
    finally:
        for bus in (production, staging, also_production):
            await bus.close()
    assert bus_namespace("sqlite+aiosqlite:///x.db", "chosen") == "chosen"
