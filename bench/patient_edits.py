"""The cost of writing a Patient, by what the write changes, beside a plain write of her record.

Imports ``--bundles`` Synthea bundles through the real import path into SQLite and into a
throwaway PostgreSQL (fsync on), puts each bundle's patient under one of two clinics, then
times, through the store, one transaction each, ``--rounds`` times per patient:

- an edit: her telecom changed, her clinic kept — her record's custodian rows stand;
- a move: her clinic changed — every resource of her record is given its new custodian;
- the floor: an update of one Observation of hers (a resource's own index rows only).

Each kind in a pass over every patient, so that no write warms the rows of the next of the
same record; the passes' order turns with the rounds. It prints p50 and p95 of each, and
the records' sizes. A move costs what it must; an edit should cost about the floor (before
the store compared her clinics, it cost a move).

    python bench/patient_edits.py [--bundles 20] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import percentiles
from health.cli import run_migrations
from health.core.database import Database
from records.importer import import_files
from records.indexing import SearchIndexer
from records.store import ResourceStore
from records.tables import resources, search_compartment
from tests.services import SHARED, PostgresServer

SYNTHEA = SHARED / "data" / "synthea-r4"
CLINICS = ("bench-clinic-a", "bench-clinic-b")
INDEXER = SearchIndexer()  # compiled once, as by the server


async def _write(database: Database, res_type: str, res_id: str, data: dict[str, Any]) -> float:
    started = time.perf_counter()
    async with database.transaction(write=True) as session:
        await ResourceStore(session, INDEXER).update(res_type, res_id, data)
    return time.perf_counter() - started


async def _current(database: Database, res_type: str, res_id: str) -> dict[str, Any]:
    async with database.transaction(write=False) as session:
        stored = await ResourceStore(session, INDEXER).read(res_type, res_id)
    assert stored.content is not None
    return orjson.loads(stored.content)


async def _records(database: Database) -> list[tuple[str, int, str]]:
    """Each Patient's id, the size of her record, and one Observation in it."""
    async with database.transaction(write=False) as session:
        patients = (
            await session.execute(
                select(resources.c.res_id).where(
                    resources.c.res_type == "Patient", resources.c.deleted.is_(False)
                )
            )
        ).scalars()
        found = []
        for patient in sorted(patients):
            members = search_compartment.c
            size = (
                await session.execute(
                    select(func.count()).where(
                        members.param == "Patient", members.owner_id == patient
                    )
                )
            ).scalar_one()
            observation = (
                await session.execute(
                    select(resources.c.res_id)
                    .join(resources, resources.c.rid == members.rid)
                    .where(
                        members.param == "Patient",
                        members.owner_id == patient,
                        members.res_type == "Observation",
                    )
                    .limit(1)
                )
            ).scalar_one_or_none()
            if observation is not None:
                found.append((patient, int(size), observation))
    return found


async def _measure(url: str, rounds: int) -> dict[str, list[float]]:
    database = Database(url)
    times: dict[str, list[float]] = {"edit": [], "move": [], "floor": []}
    try:
        for clinic in CLINICS:
            organization = {"resourceType": "Organization", "id": clinic, "name": clinic}
            await _write(database, "Organization", clinic, organization)
        records = await _records(database)
        for turn, (patient, _, _) in enumerate(records):
            data = await _current(database, "Patient", patient)
            data["managingOrganization"] = {"reference": f"Organization/{CLINICS[turn % 2]}"}
            await _write(database, "Patient", patient, data)
        clinic_of = {patient: turn % 2 for turn, (patient, _, _) in enumerate(records)}

        async def edit(patient: str, observation: str, round_: int) -> float:
            data = await _current(database, "Patient", patient)
            data["telecom"] = [{"system": "phone", "value": f"1390951{round_:04d}"}]
            return await _write(database, "Patient", patient, data)

        async def move(patient: str, observation: str, round_: int) -> float:
            data = await _current(database, "Patient", patient)
            clinic_of[patient] = 1 - clinic_of[patient]
            data["managingOrganization"] = {
                "reference": f"Organization/{CLINICS[clinic_of[patient]]}"
            }
            return await _write(database, "Patient", patient, data)

        async def floor(patient: str, observation: str, round_: int) -> float:
            reading = await _current(database, "Observation", observation)
            reading["issued"] = f"2026-12-{round_ + 1:02d}T08:00:00+08:00"
            return await _write(database, "Observation", observation, reading)

        # Each kind of write in a pass over every patient, the passes' order turning with
        # the rounds: one write does not warm the rows of the next of the same record.
        kinds = [("edit", edit), ("move", move), ("floor", floor)]
        for round_ in range(rounds):
            turned = kinds[round_ % 3 :] + kinds[: round_ % 3]
            for name, write in turned:
                for patient, _, observation in records:
                    times[name].append(await write(patient, observation, round_))
        sizes = [size for _, size, _ in records]
        print(
            f"  {len(records)} patients, records of {min(sizes)}-{max(sizes)} resources "
            f"(median {statistics.median(sizes):.0f}), {rounds} rounds"
        )
    finally:
        await database.dispose()
    return times


def _report(name: str, times: dict[str, list[float]]) -> None:
    labels = {
        "edit": "edit (telecom; same clinic)",
        "move": "move (another clinic)",
        "floor": "floor (one Observation updated)",
    }
    for key, label in labels.items():
        p50, p95, _ = percentiles(times[key])
        print(f"  {name:<11} {label:<34} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")


def run(name: str, url: str, files: list[Path], rounds: int) -> None:
    run_migrations(url)
    failed = [r for r in import_files(url, files, jobs=2) if r.error]
    if failed:
        raise SystemExit(f"{len(failed)} bundles failed to import: {failed[0].error}")
    print(name)
    _report(name, asyncio.run(_measure(url, rounds)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundles", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if not SYNTHEA.is_dir():
        print(f"skipped: {SYNTHEA} is absent (the Synthea bundles live in ../shared)")
        return
    files = sorted(SYNTHEA.glob("*.json.gz"))[: args.bundles]
    with tempfile.TemporaryDirectory() as folder:
        run("SQLite", f"sqlite+aiosqlite:///{folder}/bench.db", files, args.rounds)
    postgres = PostgresServer(fsync=True).start()
    try:
        run("PostgreSQL", postgres.create_database("bench_edits"), files, args.rounds)
    finally:
        postgres.stop()


if __name__ == "__main__":
    main()
