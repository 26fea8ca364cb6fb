"""Search latency at a million resources, beside hand-written SQL over the same tables, and
with the access policy applied beside without it.

Loads, through the real import path, the demo network with Chinese patients (two seeds of
2,000) and the Synthea bundles copied under fresh ids until the store holds ``--target``
resources (default 1,000,000), each copied Synthea patient placed under one of the demo's
village clinics; then, for each typical clinic query, sends ``--runs`` requests over HTTP to
``health serve`` with values drawn from the data and prints p50, p95, p99 and requests/s,
beside the p50/p95 of the best SQL we could write for the same question, run directly with
asyncpg. It does so for two callers, a hospital system that sees everything
(``system/*.cruds``) and a township doctor of 闽宁镇 (the policy in every query: the patients
of the township's eight villages), with the values drawn from that township's patients, and
their requests interleaved: each value is asked by both, each first in turn, so that the
ratio of their latencies does not follow the machine's speed as it drifts.

    python bench/search.py [--target 1000000] [--runs 100] [--database-url URL]

``--database-url`` reuses a PostgreSQL database (loading only what is missing), so the
queries can be measured again without reloading.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import re
import sys
import tempfile
import time
import uuid
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
from health.core.naming import ORGANIZATION_CODE_SYSTEM
from health.demo import build_demo_bundles
from health.demo.directory import build_directory
from records.importer import import_files, process_bundle
from records.indexing import SearchIndexer, normalize_text
from records.search.sql import han_gram_keys
from tests.services import SHARED, AppServer, PostgresServer

SYNTHEA = SHARED / "data" / "synthea-r4"
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def copies_of_synthea(folder: Path, copies: int, *, clinics: list[str] | None = None) -> list[Path]:
    """Each Synthea bundle ``copies`` times, every uuid in it replaced consistently; with
    ``clinics`` (directory codes), each copy's patient is managed by one of them in turn."""
    files = []
    turn = 0
    for source in sorted(SYNTHEA.glob("*.json.gz")):
        raw = gzip.decompress(source.read_bytes())
        for copy in range(copies):
            mapping: dict[bytes, bytes] = {}

            def fresh(match: re.Match[bytes], mapping: dict[bytes, bytes] = mapping) -> bytes:
                return mapping.setdefault(match.group(0), str(uuid.uuid4()).encode())

            data = _UUID.sub(fresh, raw)
            if clinics:
                data = _managed_by(data, clinics[turn % len(clinics)])
                turn += 1
            target = folder / f"{source.name[:-8]}-{copy}.json.gz"
            target.write_bytes(gzip.compress(data, compresslevel=1))
            files.append(target)
    return files


def _managed_by(raw: bytes, clinic: str) -> bytes:
    bundle = orjson.loads(raw)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["managingOrganization"] = {
                "reference": f"Organization?identifier={ORGANIZATION_CODE_SYSTEM}|{clinic}"
            }
    return orjson.dumps(bundle)


async def count_resources(url: str) -> int:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return int(await connection.fetchval("SELECT count(*) FROM resources"))
    finally:
        await connection.close()


def load(url: str, target: int) -> None:
    run_migrations(url)
    have = asyncio.run(count_resources(url))
    if have >= target:
        print(f"store already holds {have} resources")
        return

    async def demo() -> None:
        database = Database(url)
        indexer = SearchIndexer()
        for seed in (2026, 2027):
            for bundle in build_demo_bundles(seed=seed, patients=2000):
                await process_bundle(database, indexer, bundle)
        await database.dispose()

    started = time.perf_counter()
    asyncio.run(demo())
    have = asyncio.run(count_resources(url))
    copies = max(1, -(-(target - have) // 91216))
    with tempfile.TemporaryDirectory() as folder:
        clinics = [v.code for t in build_directory().townships for v in t.villages]
        files = copies_of_synthea(Path(folder), copies, clinics=clinics)
        print(f"loading {len(files)} Synthea copies after {have} demo resources...", flush=True)
        results = import_files(url, files, jobs=2)
    failed = [r for r in results if r.error]
    total = asyncio.run(count_resources(url))
    elapsed = time.perf_counter() - started
    print(
        f"loaded {total} resources in {elapsed:.0f} s ({(total - have) / elapsed:.0f}/s with indexing)"
        + (f"; {len(failed)} files failed: {failed[0].error}" if failed else "")
    )


@dataclass
class Query:
    label: str
    path: Callable[[dict[str, Any]], str]
    params: Callable[[dict[str, Any]], dict[str, str]]
    sql: str
    sql_args: Callable[[dict[str, Any]], list[Any]]


_PAGE = """SELECT v.content FROM resources r JOIN resource_versions v
  ON v.rid = r.rid AND v.version = r.version WHERE r.res_type = '{type}' AND NOT r.deleted AND {where}
  ORDER BY {order} LIMIT 51"""


def page_sql(res_type: str, where: str, order: str = "r.rid") -> str:
    return _PAGE.format(type=res_type, where=where, order=order)


#: The rows of a Patient's name holding the Han grams in $1, from the index of
#: ``search_han_grams`` (migration 0006), as the service finds 小明 in 马小明.
_HAN_NAMES = (
    "SELECT s.rid FROM search_string s WHERE search_han_grams(s.res_type::text, "
    "s.param::text, s.value_normalized::text) @> $1::text[] AND s.res_type = 'Patient' "
    "AND s.param = 'name'"
)


def _name_grams(text: str) -> list[str]:
    return han_gram_keys("Patient", "name", normalize_text(text))


_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

QUERIES = [
    Query(
        "Patient by Chinese name",
        lambda s: "Patient",
        lambda s: {"name": s["han"]},
        page_sql("Patient", f"r.rid IN ({_HAN_NAMES})"),
        lambda s: [_name_grams(s["han"])],
    ),
    Query(
        "Patient by pinyin initials",
        lambda s: "Patient",
        lambda s: {"phonetic": s["initials"]},
        page_sql(
            "Patient",
            "EXISTS (SELECT 1 FROM search_string s WHERE s.rid = r.rid AND s.param = 'phonetic' "
            "AND s.value_normalized LIKE $1 || '%')",
        ),
        lambda s: [s["initials"]],
    ),
    Query(
        "Patient by resident id",
        lambda s: "Patient",
        lambda s: {"identifier": f"urn:oid:2.16.156.10011.1.3|{s['resident_id']}"},
        page_sql(
            "Patient",
            "r.rid IN (SELECT t.rid FROM search_token t WHERE t.res_type = 'Patient' "
            "AND t.param = 'identifier' AND t.code = $1 AND t.system = 'urn:oid:2.16.156.10011.1.3')",
        ),
        lambda s: [s["resident_id"]],
    ),
    Query(
        "Patient by family name prefix",
        lambda s: "Patient",
        lambda s: {"family": s["family"][:4]},
        page_sql(
            "Patient",
            "EXISTS (SELECT 1 FROM search_string s WHERE s.rid = r.rid AND s.param = 'family' "
            "AND s.value_normalized LIKE $1 || '%')",
        ),
        lambda s: [s["family"][:4].lower()],
    ),
    Query(
        "Observations of a patient by code, last year, newest first",
        lambda s: "Observation",
        lambda s: {
            "patient": s["patient"],
            "code": "http://loinc.org|8302-2",
            "date": "ge2015-01-01",
            "_sort": "-date",
        },
        page_sql(
            "Observation",
            "EXISTS (SELECT 1 FROM search_reference f WHERE f.rid = r.rid AND f.param = 'patient' "
            "AND f.target_type = 'Patient' AND f.target_id = $1) AND EXISTS (SELECT 1 FROM search_token t "
            "WHERE t.rid = r.rid AND t.param = 'code' AND t.code = '8302-2' AND t.system = 'http://loinc.org') "
            "AND EXISTS (SELECT 1 FROM search_date d WHERE d.rid = r.rid AND d.param = 'date' "
            "AND d.\"end\" >= '2014-12-31 16:00:00')",
            "(SELECT max(d.\"end\") FROM search_date d WHERE d.rid = r.rid AND d.param = 'date') DESC",
        ),
        lambda s: [s["patient"]],
    ),
    Query(
        "Encounters in a month at a clinic",
        lambda s: "Encounter",
        lambda s: {"service-provider": s["provider"], "date": ["ge2018-01-01", "lt2019-01-01"]},
        page_sql(
            "Encounter",
            "r.rid IN (SELECT f.rid FROM search_reference f WHERE f.res_type = 'Encounter' "
            "AND f.param = 'service-provider' AND f.target_id = $1) "
            "AND EXISTS (SELECT 1 FROM search_date d WHERE d.rid = r.rid "
            "AND d.param = 'date' AND d.\"end\" >= '2017-12-31 16:00:00' AND d.start < '2018-12-31 16:00:00')",
        ),
        lambda s: [s["provider"].split("/")[1]],
    ),
    Query(
        "Conditions by ICD-10 code",
        lambda s: "Condition",
        lambda s: {"code": "http://hl7.org/fhir/sid/icd-10|I10"},
        page_sql(
            "Condition",
            "r.rid IN (SELECT t.rid FROM search_token t WHERE t.res_type = 'Condition' "
            "AND t.param = 'code' AND t.code = 'I10' AND t.system = 'http://hl7.org/fhir/sid/icd-10')",
        ),
        lambda s: [],
    ),
    Query(
        "Conditions by SNOMED code (Synthea)",
        lambda s: "Condition",
        lambda s: {"code": "http://snomed.info/sct|44054006"},
        page_sql(
            "Condition",
            "r.rid IN (SELECT t.rid FROM search_token t WHERE t.res_type = 'Condition' "
            "AND t.param = 'code' AND t.code = '44054006' AND t.system = 'http://snomed.info/sct')",
        ),
        lambda s: [],
    ),
    Query(
        "Observations chained to patient name",
        lambda s: "Observation",
        lambda s: {"subject:Patient.name": s["han"], "code": "http://loinc.org|85354-9"},
        page_sql(
            "Observation",
            "r.rid IN (SELECT f.rid FROM search_reference f WHERE f.res_type = 'Observation' "
            "AND f.param = 'subject' AND f.target_type = 'Patient' AND f.target_id IN "
            "(SELECT p.res_id FROM resources p WHERE p.res_type = 'Patient' AND NOT p.deleted "
            f"AND p.rid IN ({_HAN_NAMES}))) "
            "AND EXISTS (SELECT 1 FROM search_token t WHERE t.rid = r.rid AND t.res_type = 'Observation' "
            "AND t.param = 'code' AND t.code = '85354-9' AND t.system = 'http://loinc.org')",
        ),
        lambda s: [_name_grams(s["han"])],
    ),
    Query(
        "Encounters of a patient with _include practitioner",
        lambda s: "Encounter",
        lambda s: {"patient": s["patient"], "_include": "Encounter:participant"},
        page_sql(
            "Encounter",
            "r.rid IN (SELECT f.rid FROM search_reference f WHERE f.res_type = 'Encounter' "
            "AND f.param = 'patient' AND f.target_id = $1 AND f.target_type = 'Patient')",
        ),
        lambda s: [s["patient"]],
    ),
    Query(
        "Body heights over 170 cm",
        lambda s: "Observation",
        lambda s: {"code": "http://loinc.org|8302-2", "value-quantity": "gt170", "_count": "20"},
        page_sql(
            "Observation",
            "r.rid IN (SELECT t.rid FROM search_token t WHERE t.res_type = 'Observation' "
            "AND t.param = 'code' AND t.code = '8302-2' AND t.system = 'http://loinc.org') "
            "AND EXISTS (SELECT 1 FROM search_quantity q WHERE q.rid = r.rid "
            "AND q.res_type = 'Observation' AND q.param = 'value-quantity' AND q.value > 170)",
        ),
        lambda s: [],
    ),
    Query(
        # As a SMART app asks for vital signs: the category named first, then the code.
        "Vital-sign body heights over 170 cm, category first",
        lambda s: "Observation",
        lambda s: {
            "category": f"{_CATEGORY}|vital-signs",
            "code": "http://loinc.org|8302-2",
            "value-quantity": "gt170",
            "_count": "20",
        },
        # The heights' index rows in rid order, each tested, up to a page: as the tests of
        # the resource row (the other queries' form) the planner joined every vital sign
        # and every quantity over 170 first, 200 ms.
        page_sql(
            "Observation",
            "r.rid IN (SELECT t.rid FROM search_token t WHERE t.res_type = 'Observation' "
            "AND t.param = 'code' AND t.code = '8302-2' AND t.system = 'http://loinc.org' "
            "AND EXISTS (SELECT 1 FROM search_token c WHERE c.rid = t.rid AND c.res_type = 'Observation' "
            f"AND c.param = 'category' AND c.code = 'vital-signs' AND c.system = '{_CATEGORY}') "
            "AND EXISTS (SELECT 1 FROM search_quantity q WHERE q.rid = t.rid "
            "AND q.res_type = 'Observation' AND q.param = 'value-quantity' AND q.value > 170) "
            "ORDER BY t.rid LIMIT 51)",
        ),
        lambda s: [],
    ),
    Query(
        "Patient $everything, first page",
        lambda s: f"Patient/{s['patient']}/$everything",
        lambda s: {"_count": "50"},
        # The patient's record without her audit trail, as the service's $everything: every
        # look at her record puts an AuditEvent in it, and a patient this bench samples
        # again and again gathers thousands (2,300 to her 98 records once).
        page_sql(
            "Observation",
            "r.rid IN (SELECT c.rid FROM search_compartment c WHERE c.param = 'Patient' "
            "AND c.owner_id = $1 AND c.res_type <> 'AuditEvent')",
        ).replace("r.res_type = 'Observation'", "r.res_type <> 'AuditEvent'"),
        lambda s: [s["patient"]],
    ),
]


_MANAGED_BY = (
    "AND r.rid IN (SELECT m.rid FROM search_reference m WHERE m.res_type = 'Patient' "
    "AND m.param = 'organization' AND m.target_id = ANY($2::text[]))"
)


async def samples(url: str, n: int, clinics: list[str] | None = None) -> list[dict[str, Any]]:
    """Parameter values drawn from the data: patients with Chinese names and Synthea ones,
    and the providers of encounters, in the records of ``clinics`` (Organization ids) when
    given."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    managed = _MANAGED_BY if clinics else "AND $2::text[] IS NULL"
    try:
        chinese = await connection.fetch(
            "SELECT r.res_id, v.content FROM resources r JOIN resource_versions v ON v.rid = r.rid "
            "AND v.version = r.version WHERE r.res_type = 'Patient' AND v.content LIKE '%2.16.156.10011.1.3%' "
            f"{managed} ORDER BY random() LIMIT $1",
            n,
            clinics,
        )
        synthea = await connection.fetch(
            "SELECT r.res_id, v.content FROM resources r JOIN resource_versions v ON v.rid = r.rid "
            "AND v.version = r.version WHERE r.res_type = 'Patient' AND v.content LIKE '%synthea%' "
            f"{managed} ORDER BY random() LIMIT $1",
            n,
            clinics,
        )
        # The providers of encounters in those patients' records: the values a doctor of
        # those clinics asks about (any provider of the city's was empty for her 100 times
        # out of 100).
        held = (
            "AND f.rid IN (SELECT c.rid FROM search_custodian c WHERE c.res_type = 'Encounter' "
            "AND c.param = 'Patient' AND c.org_id = ANY($1::text[]))"
            if clinics
            else "AND $1::text[] IS NULL"
        )
        providers = await connection.fetch(
            "SELECT DISTINCT f.target_type || '/' || f.target_id AS p FROM search_reference f "
            "WHERE f.res_type = 'Encounter' AND f.param = 'service-provider' "
            f"AND f.target_id IS NOT NULL {held} LIMIT 200",
            clinics,
        )
    finally:
        await connection.close()
    from records.pinyin import name_keys

    chosen = []
    rng = random.Random(7)
    for (cid, ccontent), (sid, scontent) in zip(chinese, synthea, strict=False):
        c, s = orjson.loads(ccontent), orjson.loads(scontent)
        name = c["name"][0]
        chosen.append(
            {
                "han": name["text"][-2:] if len(name["text"]) > 2 else name["text"],
                "initials": name_keys(name["text"], name.get("family"))[1],
                "resident_id": next(
                    i["value"] for i in c["identifier"] if i["system"].endswith("10011.1.3")
                ),
                "family": s["name"][0]["family"],
                "patient": sid if rng.random() < 0.7 else cid,
                "provider": rng.choice(providers)["p"],
            }
        )
    return chosen


async def measure_sql(url: str, query: Query, chosen: list[dict[str, Any]]) -> list[float]:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await connection.execute("SET plan_cache_mode = force_custom_plan")  # as the server does
        statement = await connection.prepare(query.sql)
        times = []
        for sample in chosen:
            started = time.perf_counter()
            await statement.fetch(*query.sql_args(sample))
            times.append(time.perf_counter() - started)
        return times
    finally:
        await connection.close()


#: The township whose doctor the policy run acts as: 闽宁镇卫生院 and its eight villages.
TOWNSHIP_CENTRE = "640121105000"


async def township_clinics(url: str) -> list[str]:
    """Organization ids of the township centre and its villages."""
    codes = [TOWNSHIP_CENTRE] + [
        v.code
        for t in build_directory().townships
        if t.centre.code == TOWNSHIP_CENTRE
        for v in t.villages
    ]
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await connection.fetch(
            "SELECT r.res_id FROM resources r JOIN search_token t ON t.rid = r.rid "
            "WHERE r.res_type = 'Organization' AND t.param = 'identifier' AND t.code = ANY($1::text[])",
            codes,
        )
    finally:
        await connection.close()
    return [row["res_id"] for row in rows]


def run_queries(
    url: str, server: AppServer, tokens: dict[str, str], chosen: list[dict[str, Any]]
) -> dict[str, dict[str, tuple[float, float, float]]]:
    """p50/p95/p99 of each query for each caller (``tokens``: name to bearer token), the
    callers' requests interleaved: this machine's speed drifts over minutes, and measured
    one caller after the other, one ran at twice the other's speed on identical SQL."""
    figures: dict[str, dict[str, tuple[float, float, float]]] = {name: {} for name in tokens}
    clients = {
        name: httpx.Client(
            base_url=f"{server.url}/fhir", headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        for name, token in tokens.items()
    }
    names = list(tokens)
    try:
        for query in QUERIES:
            times: dict[str, list[float]] = {name: [] for name in names}
            matched = dict.fromkeys(names, 0)
            for name in names:  # warm
                clients[name].get(f"/{query.path(chosen[0])}", params=query.params(chosen[0]))
            for turn, sample in enumerate(chosen):
                # Each caller first in turn, so neither always follows the other's audit work.
                for name in names[turn % len(names) :] + names[: turn % len(names)]:
                    started = time.perf_counter()
                    response = clients[name].get(
                        f"/{query.path(sample)}", params=query.params(sample)
                    )
                    times[name].append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text[:300]
                    matched[name] += bool(response.json().get("entry"))
            s50, s95, _ = percentiles(asyncio.run(measure_sql(url, query, chosen)))
            print(f"{query.label}   (hand-written SQL p50 {s50:.1f}, p95 {s95:.1f} ms)")
            for name in names:
                p50, p95, p99 = percentiles(times[name])
                figures[name][query.label] = (p50, p95, p99)
                rate = len(times[name]) / sum(times[name])
                print(
                    f"    {name:<54} {p50:7.1f} {p95:7.1f} {p99:7.1f} {rate:7.0f}"
                    f"   ({matched[name]}/{len(chosen)} non-empty)",
                    flush=True,
                )
    finally:
        for client in clients.values():
            client.close()
    return figures


def measure(url: str, runs: int) -> None:
    clinics = asyncio.run(township_clinics(url))
    chosen = asyncio.run(samples(url, runs, clinics))
    server = AppServer(url).start()
    try:
        username = "bench-township"
        if username not in server.cli("user", "list"):
            server.cli(
                "user", "add", username, "--role", "township_doctor", "--org", TOWNSHIP_CENTRE
            )
        doctor = server.cli("user", "token", username, "--ttl", "86400").strip()
        system = "as a hospital system (no policy)"
        township = "as a township doctor (the access policy applied)"
        print(f"\nthe township doctor is of {TOWNSHIP_CENTRE} 闽宁镇卫生院 and its eight villages")
        print(
            f"\n{'query, then each caller':<58} {'p50':>7} {'p95':>7} {'p99':>7} {'req/s':>7}  (ms)"
        )
        figures = run_queries(
            url, server, {system: server.system_token(), township: doctor}, chosen
        )
        print(f"\n{'query':<58} {'p50 ratio':>9} {'p95 ratio':>9}   (policy / no policy)")
        for label, (p50, p95, _) in figures[system].items():
            q50, q95, _ = figures[township][label]
            print(f"{label:<58} {q50 / p50:9.2f} {q95 / p95:9.2f}")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument(
        "--database-url", help="an existing PostgreSQL database to load into and query"
    )
    args = parser.parse_args()
    if not SYNTHEA.is_dir():
        print(f"skipped: {SYNTHEA} is absent (the Synthea bundles live in ../shared)")
        return
    postgres = None
    url = args.database_url
    if url is None:
        postgres = PostgresServer().start()
        url = postgres.create_database("bench_search")
    try:
        load(url, args.target)
        asyncio.run(analyze(url))
        measure(url, args.runs)
    finally:
        if postgres is not None:
            postgres.stop()


async def analyze(url: str) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


if __name__ == "__main__":
    main()
