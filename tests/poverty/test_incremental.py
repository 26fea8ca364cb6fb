"""A new bill posted to the running service raises its household's flag, with no full recompute.

``health serve`` on Redis; the test listens on the change feed (``records.changes``) as any
other service would, and waits — with a deadline, never a fixed sleep — for the Flag the
listener writes. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from health.cli import run_migrations
from health.core.bus import bus_namespace
from health.core.database import Database
from health.core.naming import (
    ILLNESS_POVERTY_RULE_SYSTEM,
    ILLNESS_POVERTY_TAG,
)
from health.poverty.service import today_in_china
from records.feed import CHANGES_CHANNEL
from records.indexing import SearchIndexer
from tests.poverty.factories import Town, eob_resource
from tests.services import AppServer, RedisServer


@pytest.fixture
def service(database_url: str, redis_server: RedisServer) -> Iterator[AppServer]:
    server = AppServer(database_url, redis_url=redis_server.url).start()
    yield server
    server.stop()


def bill(patient_id: str, out_of_pocket: float) -> dict[str, Any]:
    """Today's bill, half paid by basic medical insurance, ``out_of_pocket`` left."""
    left = str(out_of_pocket)
    return eob_resource(
        {"reference": f"Patient/{patient_id}"},
        today_in_china().isoformat(),
        billed=str(out_of_pocket * 2),
        basic=left,
        out_of_pocket=left,
    )


def rules_of(flag: dict[str, Any]) -> set[str]:
    return {c["code"] for c in flag["code"]["coding"] if c["system"] == ILLNESS_POVERTY_RULE_SYSTEM}


async def wait_for_flag(
    pubsub: Any, client: httpx.AsyncClient, group_id: str, method: str, deadline: float
) -> dict[str, Any]:
    """The first medical-bill Flag about ``group_id`` the feed announces with ``method``."""
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is None:
            continue
        change = orjson.loads(message["data"])
        if change["type"] != "Flag" or change["method"] != method:
            continue
        flag = (await client.get(f"Flag/{change['id']}")).json()
        if flag["subject"]["reference"] == f"Group/{group_id}" and rules_of(flag) == {
            "medical-bill-alert"
        }:
            return flag
    raise AssertionError(f"no Flag {method} for Group/{group_id} before the deadline")


async def test_a_posted_bill_raises_the_flag_and_its_deletion_clears_it(
    database_url: str, redis_server: RedisServer, service: AppServer
) -> None:
    town = Town()
    house = town.household("T9INCR0001", ["锁志强"], income="30000")
    database = Database(database_url)
    try:
        await town.write(database, SearchIndexer())
    finally:
        await database.dispose()
    head = house.members[0]

    redis = Redis.from_url(redis_server.url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"{bus_namespace(database_url)}:{CHANGES_CHANNEL}")
    try:
        async with httpx.AsyncClient(
            base_url=f"{service.url}/fhir", headers=service.auth_headers(), timeout=30
        ) as client:
            before = (await client.get("Flag", params={"subject": f"Group/{house.id}"})).json()
            assert before["total"] == 0
            posted = await client.post(
                "ExplanationOfBenefit",
                content=orjson.dumps(bill(head.id or "", 25000.0)),
                headers={"Content-Type": "application/fhir+json"},
            )
            assert posted.status_code == 201, posted.text
            eob_id = posted.json()["id"]
            flag = await wait_for_flag(
                pubsub, client, house.id or "", "POST", time.monotonic() + 60
            )

            assert flag["status"] == "active" and "end" not in flag["period"]
            assert any(t["code"] == ILLNESS_POVERTY_TAG["code"] for t in flag["meta"]["tag"])
            assessment = (
                await client.get(flag["extension"][0]["valueReference"]["reference"])
            ).json()
            assert {"reference": f"ExplanationOfBenefit/{eob_id}"} in assessment["basis"]
            assert "25,000.00 元" in assessment["prediction"][0]["rationale"]

            # The bill was entered in error: deleting it takes the cause away.
            deleted = await client.delete(f"ExplanationOfBenefit/{eob_id}")
            assert deleted.status_code in (200, 204)
            cleared = await wait_for_flag(
                pubsub, client, house.id or "", "PUT", time.monotonic() + 60
            )
            assert cleared["id"] == flag["id"]
            assert (
                cleared["status"] == "inactive"
                and cleared["period"]["end"] >= cleared["period"]["start"]
            )
    finally:
        await pubsub.aclose()
        await redis.aclose()


@pytest.fixture
def neighbour(redis_server: RedisServer, tmp_path: Path, service: AppServer) -> Iterator[AppServer]:
    """Another deployment (its own database) on the same Redis server."""
    other = AppServer(fresh_database_url(tmp_path), redis_url=redis_server.url).start()
    yield other
    other.stop()


def fresh_database_url(folder: Path) -> str:
    url = f"sqlite+aiosqlite:///{folder / 'neighbour.db'}"
    run_migrations(url)
    return url


async def test_a_deployment_sharing_the_redis_server_does_not_take_the_changes(
    database_url: str, redis_server: RedisServer, service: AppServer, neighbour: AppServer
) -> None:
    town = Town()
    houses = [
        town.household(f"T9NEIG000{n}", ["马" + "文武"[n % 2] + "成"], income="30000")
        for n in range(4)
    ]
    database = Database(database_url)
    try:
        await town.write(database, SearchIndexer())
    finally:
        await database.dispose()
    redis = Redis.from_url(redis_server.url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"{bus_namespace(database_url)}:{CHANGES_CHANNEL}")
    try:
        async with httpx.AsyncClient(
            base_url=f"{service.url}/fhir", headers=service.auth_headers(), timeout=30
        ) as client:
            # Each bill must raise its flag here, where the household is: the neighbour on
            # the same Redis server neither hears the change nor takes it.
            for house in houses:
                posted = await client.post(
                    "ExplanationOfBenefit",
                    content=orjson.dumps(bill(house.members[0].id or "", 25000.0)),
                    headers={"Content-Type": "application/fhir+json"},
                )
                assert posted.status_code == 201, posted.text
                flag = await wait_for_flag(
                    pubsub, client, house.id or "", "POST", time.monotonic() + 60
                )
                assert flag["status"] == "active"
    finally:
        await pubsub.aclose()
        await redis.aclose()
