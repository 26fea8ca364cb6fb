"""Ingest throughput: the Synthea bundles through the real import path, beside the floor.

For SQLite and PostgreSQL (a throwaway cluster with fsync on), prints resources/s of
``health import``'s code path (parse, validate, resolve references, store, index; two worker
processes) and of the floor: the same resources' JSON written by a bare bulk insert into one
table, one transaction per bundle. Then splits one process's time into its parts on a
sample of bundles, to say where the time goes.

    python bench/ingest.py [--bundles N]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from health.cli import run_migrations
from health.core.database import Database
from records.importer import import_files
from records.indexing import SearchIndexer
from records.validation import validate_resource
from tests.services import SHARED, PostgresServer

SYNTHEA = SHARED / "data" / "synthea-r4"


def resources_of(path: Path) -> list[dict]:
    return [e["resource"] for e in orjson.loads(gzip.decompress(path.read_bytes()))["entry"]]


async def bare_insert(url: str, files: list[Path]) -> tuple[int, float]:
    """The floor: each bundle's resources as JSON text into one table, one transaction each."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, Text, insert

    metadata = MetaData()
    raw = Table(
        "bench_raw",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("res_type", String(64)),
        Column("content", Text),
    )
    database = Database(url)
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    bundles = [resources_of(f) for f in files]
    count = 0
    started = time.perf_counter()
    for resources in bundles:
        async with database.transaction(write=True) as session:
            await session.execute(
                insert(raw),
                [
                    {"res_type": r["resourceType"], "content": orjson.dumps(r).decode()}
                    for r in resources
                ],
            )
        count += len(resources)
    elapsed = time.perf_counter() - started
    await database.dispose()
    return count, elapsed


def measure(name: str, url: str, files: list[Path]) -> None:
    run_migrations(url)
    started = time.perf_counter()
    results = import_files(url, files, jobs=2)
    elapsed = time.perf_counter() - started
    failed = [r for r in results if r.error]
    total = sum(r.resources for r in results)
    floor_count, floor_elapsed = asyncio.run(bare_insert(url, files))
    rate, floor_rate = total / elapsed, floor_count / floor_elapsed
    print(
        f"{name:<11} import: {total:>6} resources in {elapsed:6.1f} s = {rate:7.0f} resources/s"
        f"{'  (' + str(len(failed)) + ' files failed)' if failed else ''}"
    )
    print(
        f"{name:<11} floor:  {floor_count:>6} resources in {floor_elapsed:6.1f} s "
        f"= {floor_rate:7.0f} resources/s"
        f"   import/floor = {rate / floor_rate:.2f}"
    )


def breakdown(files: list[Path]) -> None:
    """One process, one sample: parse, then validation, then indexing, each timed alone."""
    raw = [gzip.decompress(f.read_bytes()) for f in files]
    started = time.perf_counter()
    bundles = [orjson.loads(r) for r in raw]
    parse = time.perf_counter() - started
    resources = [e["resource"] for b in bundles for e in b["entry"]]
    started = time.perf_counter()
    for resource in resources:
        validate_resource(resource, scan_identifiers=False)
    validation = time.perf_counter() - started
    indexer = SearchIndexer()
    started = time.perf_counter()
    for resource in resources:
        indexer.extract(resource["resourceType"], resource)
    indexing = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{folder}/one.db"
        run_migrations(url)
        started = time.perf_counter()
        import_files(url, files, jobs=1)
        whole = time.perf_counter() - started
    n = len(resources)
    rest = whole - parse - validation - indexing
    print(
        f"\nwhere one process's time goes ({n} resources, SQLite, one worker): "
        f"{n / whole:.0f} resources/s in all"
    )
    for label, seconds in (
        ("JSON parse", parse),
        ("validation (fhir.resources + bindings)", validation),
        ("search index extraction", indexing),
        ("store, references, SQL", rest),
    ):
        print(f"  {label:<40} {seconds / n * 1e6:7.0f} µs/resource  {seconds / whole:5.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bundles", type=int, default=0, help="use only the first N bundles (0: all)"
    )
    args = parser.parse_args()
    if not SYNTHEA.is_dir():
        print(f"skipped: {SYNTHEA} is absent (the Synthea bundles live in ../shared)")
        return
    files = sorted(SYNTHEA.glob("*.json.gz"))
    if args.bundles:
        files = files[: args.bundles]
    print(f"{len(files)} Synthea bundles, two import workers, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as folder:
        measure("SQLite", f"sqlite+aiosqlite:///{folder}/bench.db", files)
    postgres = PostgresServer(fsync=True).start()
    try:
        measure("PostgreSQL", postgres.create_database("bench_ingest"), files)
    finally:
        postgres.stop()
    breakdown(files[:30])


if __name__ == "__main__":
    main()
