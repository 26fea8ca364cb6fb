"""Chinese name and address search on PostgreSQL, with and without its substring indexes.

Loads ``--patients`` made-up patients of the resettlement villages (Chinese names, resident
ids, village addresses; the demo's name and id makers) through the real import path into a
throwaway PostgreSQL, then, for each query, sends ``--runs`` requests over HTTP to
``health serve`` with values drawn from the data and prints p50, p95 and requests/s. Beside
them, from the same run and database, two SQL timings with asyncpg:

- ``now``: the statement the server runs for the page (``records.search``), which asks the
  Han gram index (migration 0006) and lets PostgreSQL use the trigram index;
- ``before``: the statement of the same question as it was before migration 0006 (a LIKE
  over the string rows of the type), run in a transaction that drops the two GIN indexes and
  is rolled back, which is what the query cost before them.

    python bench/names.py [--patients 100000] [--runs 50] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import percentiles
from health.cli import run_migrations
from health.core.database import Database
from health.demo.directory import COUNTIES, build_directory
from health.demo.people import ResidentIdMaker, random_mobile, random_name
from records.importer import import_files
from records.indexing import SearchIndexer
from records.search.engine import SearchEngine
from records.search.parse import SearchParser
from records.validation.resident_id import RESIDENT_ID_SYSTEM
from tests.services import AppServer, PostgresServer


def made_up_patients(count: int, seed: int = 11) -> list[dict[str, Any]]:
    """Patients spread over the demo's villages, as the demo makes them, without records."""
    rng = random.Random(seed)
    directory = build_directory()
    villages = [v for t in directory.townships for v in t.villages]
    ids = ResidentIdMaker(rng)
    patients = []
    for n in range(count):
        village = rng.choice(villages)
        gender = rng.choice(("male", "female"))
        born = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(80 * 365))
        name = random_name(rng, gender)
        line = f"{village.township}{village.village}{rng.randint(1, 9)}组{rng.randint(1, 80)}号"
        patients.append(
            {
                "resourceType": "Patient",
                "id": f"name-bench-{n}",
                "identifier": [
                    {
                        "system": RESIDENT_ID_SYSTEM,
                        "value": ids.make(COUNTIES[village.county][0], born, gender),
                    }
                ],
                "name": [name.as_fhir()],
                "telecom": [{"system": "phone", "value": random_mobile(rng), "use": "mobile"}],
                "gender": gender,
                "birthDate": born.isoformat(),
                "address": [
                    {
                        "use": "home",
                        "text": f"宁夏回族自治区银川市{village.county}{line}",
                        "line": [line],
                        "city": "银川市",
                        "district": village.county,
                        "state": "宁夏回族自治区",
                    }
                ],
            }
        )
    return patients


def load(url: str, count: int) -> None:
    run_migrations(url)
    have = asyncio.run(_fetchval(url, "SELECT count(*) FROM resources WHERE res_type = 'Patient'"))
    if have >= count:
        print(f"store already holds {have} patients")
        return
    patients = made_up_patients(count)[have:]
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for start in range(0, len(patients), 10_000):
            path = Path(folder) / f"patients-{start}.ndjson"
            path.write_bytes(b"\n".join(orjson.dumps(p) for p in patients[start : start + 10_000]))
            files.append(path)
        started = time.perf_counter()
        results = import_files(url, files, jobs=2)
        elapsed = time.perf_counter() - started
    failed = [r for r in results if r.error]
    print(
        f"loaded {len(patients)} patients in {elapsed:.0f} s ({len(patients) / elapsed:.0f}/s)"
        + (f"; {len(failed)} files failed: {failed[0].error}" if failed else "")
    )


async def _fetchval(url: str, sql: str) -> Any:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


@dataclass
class Query:
    label: str
    params: Callable[[dict[str, str]], dict[str, str]]
    #: The question as one statement before migration 0006: LIKE over the type's string rows.
    before: str
    before_args: Callable[[dict[str, str]], list[Any]]


_BEFORE = """SELECT v.content FROM resources r JOIN resource_versions v
  ON v.rid = r.rid AND v.version = r.version WHERE r.res_type = 'Patient' AND NOT r.deleted
  AND EXISTS (SELECT 1 FROM search_string s WHERE s.rid = r.rid AND s.res_type = 'Patient'
  AND s.param = '{param}' AND s.value_normalized LIKE '%' || $1 || '%')
  ORDER BY r.rid LIMIT 51"""

QUERIES = [
    Query(
        "Given name, two characters (name=建国)",
        lambda s: {"name": s["given2"]},
        _BEFORE.format(param="name"),
        lambda s: [s["given2"]],
    ),
    Query(
        "Whole name, three characters (name=马建国)",
        lambda s: {"name": s["full"]},
        _BEFORE.format(param="name"),
        lambda s: [s["full"]],
    ),
    Query(
        "A rare surname, one character (family=锁)",
        lambda s: {"family": "锁"},
        _BEFORE.format(param="family"),
        lambda s: ["锁"],
    ),
    Query(
        "The commonest surname (family=马, 30% of patients)",
        lambda s: {"family": "马"},
        _BEFORE.format(param="family"),
        lambda s: ["马"],
    ),
    Query(
        "A village in the address (address=原隆村)",
        lambda s: {"address": s["village"]},
        _BEFORE.format(param="address"),
        lambda s: [s["village"]],
    ),
]


def samples(count: int, n: int) -> list[dict[str, str]]:
    """Values from the loaded patients: two-character given names, whole names, villages."""
    rng = random.Random(5)
    chosen = []
    patients = made_up_patients(count)
    while len(chosen) < n:
        p = rng.choice(patients)
        name = p["name"][0]
        if len(name["given"][0]) != 2:
            continue
        line = p["address"][0]["line"][0]
        chosen.append(
            {
                "given2": name["given"][0],
                "full": name["text"],
                "village": line[line.index("镇") + 1 : line.index("村") + 1]
                if "镇" in line and "村" in line
                else line[:3],
            }
        )
    return chosen


async def engine_statements(url: str, queries: list[dict[str, str]]) -> list[tuple[str, list[Any]]]:
    """The page statement the server runs for each ``Patient?params``, ready for asyncpg."""
    indexer = SearchIndexer()
    parser = SearchParser(indexer, max_count=1000, default_count=50)
    database = Database(url)
    statements = []
    try:
        async with database.transaction(write=False) as session:
            engine = SearchEngine(session, indexer, base_url="")
            dialect = session.get_bind().dialect
            for params in queries:
                query = parser.parse("Patient", list(params.items()), strict=True)
                compiled = engine.page_statement(query).compile(
                    dialect=dialect, compile_kwargs={"render_postcompile": True}
                )
                names = compiled.positiontup or []
                statements.append((str(compiled), [compiled.params[n] for n in names]))
    finally:
        await database.dispose()
    return statements


async def time_sql(url: str, statements: list[tuple[str, list[Any]]], before: bool) -> list[float]:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await connection.execute("SET plan_cache_mode = force_custom_plan")  # as the server does
        transaction = connection.transaction()
        await transaction.start()
        if before:
            await connection.execute("DROP INDEX ix_search_string_han_grams")
            await connection.execute("DROP INDEX ix_search_string_value_trigrams")
        times = []
        for sql, args in statements:
            started = time.perf_counter()
            await connection.fetch(sql, *args)
            times.append(time.perf_counter() - started)
        await transaction.rollback()
        return times
    finally:
        await connection.close()


def measure(url: str, count: int, runs: int) -> None:
    chosen = samples(count, runs)
    server = AppServer(url).start()
    try:
        with httpx.Client(base_url=f"{server.url}/fhir", timeout=120) as client:
            print(
                f"\n{'query':<52} {'p50':>7} {'p95':>7} {'req/s':>6} | {'SQL now':>7} {'p95':>7}"
                f" | {'before':>7} {'p95':>7} | before/now  (ms, p50)"
            )
            for query in QUERIES:
                client.get("/Patient", params=query.params(chosen[0]))  # warm
                times, matched = [], 0
                for sample in chosen:
                    started = time.perf_counter()
                    response = client.get("/Patient", params=query.params(sample))
                    times.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text[:300]
                    matched += len(response.json().get("entry", []))
                statements = asyncio.run(engine_statements(url, [query.params(s) for s in chosen]))
                now = asyncio.run(time_sql(url, statements, False))
                before = asyncio.run(
                    time_sql(
                        url,
                        [(query.before, query.before_args(s)) for s in chosen],
                        True,
                    )
                )
                p50, p95, _ = percentiles(times)
                n50, n95, _ = percentiles(now)
                b50, b95, _ = percentiles(before)
                print(
                    f"{query.label:<52} {p50:7.1f} {p95:7.1f} {len(times) / sum(times):6.0f} | "
                    f"{n50:7.1f} {n95:7.1f} | {b50:7.1f} {b95:7.1f} | {b50 / n50:6.1f}x"
                    f"   ({matched / len(chosen):.0f} on the first page)",
                    flush=True,
                )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--database-url", help="an existing PostgreSQL database to use")
    args = parser.parse_args()
    postgres = None
    url = args.database_url
    if url is None:
        postgres = PostgresServer().start()
        url = postgres.create_database("bench_names")
    try:
        load(url, args.patients)
        asyncio.run(_fetchval(url, "ANALYZE"))
        measure(url, args.patients, args.runs)
    finally:
        if postgres is not None:
            postgres.stop()


if __name__ == "__main__":
    main()
