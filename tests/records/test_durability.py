"""Concurrent writers and crashes: what a busy clinic network and a power cut do to the store."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BACKENDS, fresh_database
from tests.services import AppServer, query_database, wait_until

SYSTEM = "https://fhir.yinchuan-health.cn/sid/test"


def test_two_updates_with_the_same_if_match_exactly_one_wins(fhir: httpx.Client) -> None:
    for _ in range(5):
        patient = fhir.post("/Patient", json={"resourceType": "Patient", "gender": "male"}).json()
        barrier = threading.Barrier(2)
        statuses: list[int] = []

        def update(
            gender: str,
            patient: dict = patient,
            barrier: threading.Barrier = barrier,
            statuses: list[int] = statuses,
        ) -> None:
            with httpx.Client(
                base_url=str(fhir.base_url), headers=_authorization(fhir), timeout=60
            ) as client:
                barrier.wait()
                response = client.put(
                    f"/Patient/{patient['id']}",
                    json={**patient, "gender": gender},
                    headers={"If-Match": 'W/"1"', "Content-Type": "application/fhir+json"},
                )
                statuses.append(response.status_code)

        threads = [threading.Thread(target=update, args=(g,)) for g in ("female", "other")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(statuses) == [200, 412]
        assert fhir.get(f"/Patient/{patient['id']}").json()["meta"]["versionId"] == "2"


def test_concurrent_creates_with_one_client_id_make_one_resource(fhir: httpx.Client) -> None:
    res_id = f"race-{uuid.uuid4().hex[:12]}"
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def create() -> None:
        with httpx.Client(
            base_url=str(fhir.base_url), headers=_authorization(fhir), timeout=60
        ) as client:
            barrier.wait()
            response = client.put(
                f"/Patient/{res_id}",
                json={"resourceType": "Patient", "id": res_id},
                headers={"Content-Type": "application/fhir+json"},
            )
            statuses.append(response.status_code)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(201) == 1
    assert all(s in (200, 201) for s in statuses)
    assert fhir.get(f"/Patient/{res_id}/_history").json()["total"] == 1


def _authorization(fhir: httpx.Client) -> dict[str, str]:
    return {"Authorization": fhir.headers["Authorization"]}


def _counts(database_url: str) -> tuple[int, int]:
    ((n_resources, n_versions),) = query_database(
        database_url,
        # The clinical records: the audit trail grows with every request, this test's too.
        "SELECT (SELECT count(*) FROM resources WHERE res_type <> 'AuditEvent'), "
        "(SELECT count(*) FROM resource_versions WHERE res_type <> 'AuditEvent')",
    )
    return int(n_resources), int(n_versions)


@pytest.fixture(params=BACKENDS)
def crash_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield fresh_database(request, request.param, tmp_path)


def test_kill_9_during_a_large_transaction_leaves_no_partial_data(
    crash_database: str, tmp_path: Path
) -> None:
    server = AppServer(crash_database).start()
    try:
        baseline = httpx.post(
            f"{server.url}/fhir/Patient",
            json={"resourceType": "Patient"},
            headers={"Content-Type": "application/fhir+json", **server.auth_headers()},
        )
        assert baseline.status_code == 201
        before = _counts(crash_database)
        marker = uuid.uuid4().hex
        entries = [
            {
                "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": SYSTEM, "value": marker}],
                },
                "request": {"method": "POST", "url": "Patient"},
            }
        ]
        for i in range(6000):
            entries.append(
                {
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "identifier": [{"system": SYSTEM, "value": f"{marker}-{i}"}],
                        "code": {
                            "coding": [
                                {
                                    "system": "http://loinc.org",
                                    "code": "8867-4",
                                    "display": "Heart rate",
                                }
                            ],
                            "text": "心率 " + "x" * 400,
                        },
                        "subject": {"reference": entries[0]["fullUrl"]},
                        "valueQuantity": {
                            "value": 60 + i % 40,
                            "unit": "/min",
                            "system": "http://unitsofmeasure.org",
                            "code": "/min",
                        },
                    },
                    "request": {"method": "POST", "url": "Observation"},
                }
            )
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}

        sqlite_path = crash_database.split(":///", 1)[1] if "sqlite" in crash_database else None
        wal = Path(sqlite_path + "-wal") if sqlite_path else None
        wal_before = wal.stat().st_size if wal and wal.exists() else 0

        def send() -> None:
            try:
                httpx.post(
                    f"{server.url}/fhir",
                    json=bundle,
                    headers={"Content-Type": "application/fhir+json", **headers},
                    timeout=300,
                )
            except httpx.HTTPError:
                pass  # the server dies under it

        headers = server.auth_headers()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        wait_until(
            lambda: _writing(crash_database, wal, wal_before),
            what="the transaction's writes",
            timeout=240,
        )
        server.kill()
        sender.join(timeout=30)

        server = AppServer(crash_database).start()
        assert _counts(crash_database) == before
        search = httpx.get(
            f"{server.url}/fhir/Patient",
            params={"identifier": f"{SYSTEM}|{marker}"},
            headers=server.auth_headers(),
        ).json()
        assert search["total"] == 0
        after = httpx.post(
            f"{server.url}/fhir/Patient",
            json={"resourceType": "Patient"},
            headers={"Content-Type": "application/fhir+json", **server.auth_headers()},
        )
        assert after.status_code == 201
    finally:
        server.stop()


def _writing(database_url: str, wal: Path | None, wal_before: int) -> bool:
    if wal is not None:
        # SQLite spills the open transaction's pages into the WAL as the inserts run.
        return wal.exists() and wal.stat().st_size > wal_before + 1_000_000
    import asyncio

    import asyncpg

    async def open_writes() -> bool:
        connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            # The app's transaction has inserted rows (it holds a transaction id) and not committed.
            rows = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
            )
            return bool(rows)
        finally:
            await connection.close()

    return asyncio.run(open_writes())
