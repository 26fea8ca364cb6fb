"""The registry feed: every flag change reaches the registry exactly once, in order per
household, signed — through a receiver on loopback that fails, times out, answers 500,
drops connections and acknowledges repeats, while the delivering ``health worker`` processes
are killed (``kill -9``) twice. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from health.core.database import Database
from health.core.naming import REGISTRY_FLAG_TOPIC
from health.core.outbox import DELIVERED, outbox
from health.poverty.rules import load_rules
from health.poverty.service import IllnessPovertyService
from health.poverty.tables import poverty_flag_changes
from integrations.http_delivery import signature
from records.indexing import SearchIndexer
from records.store import ResourceStore
from tests.conftest import BACKENDS, fresh_database
from tests.poverty.factories import House, Town
from tests.receivers import CLOSE, HANG, Received, Receiver
from tests.services import PROJECT_ROOT, AppServer

SECRET = "registry-shared-secret"
AS_OF = __import__("datetime").date(2026, 6, 30)
#: How the registry answers, in turn, before it answers 200 to everything.
SCRIPT = [500, HANG, 200, CLOSE, 503, 200, 429, HANG, 500, CLOSE, 200, 502, HANG, CLOSE, 500]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_database(request, request.param, tmp_path)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    instance = Receiver(fail_with=list(SCRIPT), hang_seconds=2.5).start()
    yield instance
    instance.stop()


def feed_settings(receiver: Receiver) -> dict[str, str]:
    return {
        "HEALTH_REGISTRY_URL": receiver.url,
        "HEALTH_REGISTRY_SECRET": SECRET,
        "HEALTH_REGISTRY_TIMEOUT_SECONDS": "1",
        "HEALTH_OUTBOX_LEASE_SECONDS": "4",
        "HEALTH_OUTBOX_RETRY_BASE_SECONDS": "0.2",
        "HEALTH_OUTBOX_RETRY_MAX_SECONDS": "1",
        "HEALTH_OUTBOX_POLL_SECONDS": "0.2",
        "HEALTH_OUTBOX_MAX_ATTEMPTS": "1000",
    }


class Worker:
    """``health worker`` in its own process."""

    def __init__(self, database_url: str, settings: dict[str, str], log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTH_")}
        env.update(settings, HEALTH_DATABASE_URL=database_url)
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "health.cli", "worker"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        self.log.close()


async def flagged_town(database: Database, indexer: SearchIndexer, count: int) -> list[House]:
    town = Town()
    houses = []
    for index in range(count):
        house = town.household(
            f"R{index:05d}", ["杨秀兰", "马文斌"], status="monitored", income="5000"
        )
        town.eob(house.members[0], "2026-04-02", billed="9000", out_of_pocket="9000")
        houses.append(house)
    await town.write(database, indexer)
    return houses


async def remove_households(
    database: Database, indexer: SearchIndexer, houses: list[House]
) -> None:
    async with database.transaction(write=True) as session:
        store = ResourceStore(session, indexer)
        for house in houses:
            await store.delete("Group", house.id or "")
        changes = list(store.changes)
    await IllnessPovertyService(database, indexer, load_rules()).recompute_for_changes(
        changes, as_of=AS_OF
    )


def first_acceptances(requests: list[Received]) -> list[Received]:
    seen: set[str] = set()
    first = []
    for request in requests:
        key = request.headers.get("idempotency-key", "")
        if request.status in (200, HANG) and key not in seen:
            seen.add(key)
            first.append(request)
    return first


def check_signature(request: Received) -> None:
    timestamp = request.headers["x-signature-timestamp"]
    assert abs(time.time() - int(timestamp)) < 3600
    assert request.headers["x-signature"] == signature(SECRET.encode(), timestamp, request.raw)


async def test_every_change_arrives_once_in_order_across_kills(
    database_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    database = Database(database_url)
    indexer = SearchIndexer()
    service = IllnessPovertyService(database, indexer, load_rules())
    settings = feed_settings(receiver)
    log = tmp_path / "workers.log"
    workers: list[Worker] = []
    try:
        houses = await flagged_town(database, indexer, 6)
        report = await service.recompute_all(as_of=AS_OF)
        assert len(report.changes) >= 12
        workers = [Worker(database_url, settings, log) for _ in range(2)]
        # More changes while the workers deliver: three households leave the registry.
        await remove_households(database, indexer, houses[:3])
        async with database.transaction(write=False) as session:
            logged = (await session.execute(select(poverty_flag_changes).order_by("seq"))).all()
        expected = {f"{REGISTRY_FLAG_TOPIC}:{row.seq}": row for row in logged}
        assert any(row.action == "deactivated" for row in logged)

        def accepted_at_least(share: float) -> None:
            receiver.wait_for(
                lambda _r: len(receiver.accepted_keys) >= share * len(expected), within=300
            )

        for share, index in ((1 / 3, 0), (2 / 3, 1)):
            await asyncio.to_thread(accepted_at_least, share)
            workers[index].kill()
            workers[index] = Worker(database_url, settings, log)
        await asyncio.to_thread(accepted_at_least, 1.0)

        # The last acceptance may still be on its way back to the worker: wait for the
        # outbox to record it, with a deadline.
        deadline = time.monotonic() + 120
        while True:
            async with database.transaction(write=False) as session:
                statuses = (
                    await session.execute(
                        select(outbox.c.idempotency_key, outbox.c.status).where(
                            outbox.c.topic == REGISTRY_FLAG_TOPIC
                        )
                    )
                ).all()
            if {status for _key, status in statuses} == {DELIVERED} or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        for worker in workers:
            worker.stop()
        await database.dispose()

    # Exactly once: every change accepted, nothing else, each idempotency key once.
    assert sorted(receiver.accepted_keys) == sorted(expected)
    assert len(set(receiver.accepted_keys)) == len(receiver.accepted_keys)
    # The script's misbehaviour did happen: repeats of accepted messages, dropped connections.
    keys = [r.headers.get("idempotency-key") for r in receiver.requests]
    assert len(keys) > len(set(keys))
    assert {CLOSE, HANG, 500} <= {r.status for r in receiver.requests}
    # In order per household, as the changes were made.
    per_household: dict[str, list[int]] = {}
    for request in first_acceptances(receiver.requests):
        body: dict[str, Any] = request.body
        per_household.setdefault(body["household"]["reference"], []).append(body["seq"])
        row = expected[body["idempotencyKey"]]
        assert (body["action"], body["flag"]["reference"]) == (row.action, f"Flag/{row.flag_id}")
        assert body["household"]["number"] == row.household_number
    assert per_household and all(seqs == sorted(seqs) for seqs in per_household.values())
    for request in receiver.requests:
        check_signature(request)
    assert {status for _key, status in statuses} == {DELIVERED}


async def test_health_serve_delivers_the_feed_by_default(
    database_url: str, receiver: Receiver
) -> None:
    receiver.fail_with.clear()
    database = Database(database_url)
    indexer = SearchIndexer()
    try:
        await flagged_town(database, indexer, 1)
        report = await IllnessPovertyService(database, indexer, load_rules()).recompute_all(
            as_of=AS_OF
        )
    finally:
        await database.dispose()
    server = AppServer(database_url, settings=feed_settings(receiver)).start()
    try:
        await asyncio.to_thread(
            receiver.wait_for, lambda r: len(r) >= len(report.changes), within=120
        )
    finally:
        server.stop()
    assert len(receiver.accepted_keys) == len(report.changes)
    assert {r.body["flag"]["reference"] for r in receiver.requests} == {
        f"Flag/{c.flag_id}" for c in report.changes
    }
    for request in receiver.requests:
        check_signature(request)
