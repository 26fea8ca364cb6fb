"""The commission's dashboard API on the ``bench/poverty.py`` city: p50 and p95 of each call.

Runs ``health serve`` on the given PostgreSQL database (the city ``bench/poverty.py`` loaded
and recomputed; migrate it first), as an analyst of the health commission (an Organization
and a user ``bench-analyst`` are added if missing), and times every dashboard call over HTTP
``--samples`` times after three warm-up calls. In the same run it prints the floors: the
service's ``/healthz`` round trip (HTTP and the app, no database) and the township figure's
aggregate as one raw SQL statement through asyncpg.

    python bench/dashboard.py --database-url postgresql+asyncpg://... [--samples 30]

Goal (issue 9): p95 <= 300 ms per dashboard API call on PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.figures import percentiles
from health.core.naming import ORGANIZATION_CODE_SYSTEM
from tests.services import AppServer

COMMISSION_CODE = "bench-commission"
ANALYST = "bench-analyst"
GOAL_MS = 300.0


def plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def timed(call: Callable[[], httpx.Response], samples: int) -> list[float]:
    for _ in range(3):
        call().raise_for_status()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        call().raise_for_status()
        times.append(time.perf_counter() - start)
    return times


def analyst_token(server: AppServer) -> str:
    """A token of the bench's analyst, made once in the database."""
    system = httpx.Client(base_url=f"{server.url}/fhir", headers=server.auth_headers(), timeout=60)
    found = system.get(
        "/Organization", params={"identifier": f"{ORGANIZATION_CODE_SYSTEM}|{COMMISSION_CODE}"}
    ).json()
    if found.get("entry"):
        organization = found["entry"][0]["resource"]["id"]
    else:
        created = system.post(
            "/Organization",
            json={
                "resourceType": "Organization",
                "identifier": [{"system": ORGANIZATION_CODE_SYSTEM, "value": COMMISSION_CODE}],
                "name": "银川市卫生健康委员会（基准测试）",
            },
        )
        created.raise_for_status()
        organization = created.json()["id"]
    if ANALYST not in server.cli("user", "list"):
        server.cli("user", "add", ANALYST, "--role", "commission_analyst", "--org", organization)
    return server.cli("user", "token", ANALYST).strip()


async def sql_floor(url: str, samples: int) -> list[float]:
    connection = await asyncpg.connect(plain(url))
    query = (
        "SELECT h.township, count(*) FROM poverty_cases c "
        "LEFT JOIN poverty_households h ON h.group_id = c.group_id "
        "WHERE c.open GROUP BY h.township"
    )
    try:
        for _ in range(3):
            await connection.fetch(query)
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            await connection.fetch(query)
            times.append(time.perf_counter() - start)
        return times
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", required=True, help="the loaded city (PostgreSQL)")
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()

    server = AppServer(args.database_url).start()
    try:
        token = analyst_token(server)
        api = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        figures = api.get("/api/dashboard/figures").json()
        township = figures["township"][0]["key"]
        village = figures["village"][0]
        rule = figures["rule"][0]["key"]
        first = api.get("/api/dashboard/households", params={"limit": 1}).json()
        household = first["households"][0]["group_id"]
        print(
            f"city: {figures['households']:,} open cases in {len(figures['township'])} townships, "
            f"{len(figures['village'])} villages; {figures['time_to_help']['helped']:,} helped",
            flush=True,
        )
        village_query = urlencode({"township": village["township"], "village": village["key"]})
        calls: list[tuple[str, str]] = [
            ("every figure at once", "/api/dashboard/figures"),
            *[
                (f"figure: {name}", f"/api/dashboard/{name}")
                for name in (
                    "township",
                    "village",
                    "rule",
                    "disease_group",
                    "month",
                    "band",
                    "time_to_help",
                )
            ],
            (
                "figures of one township and rule",
                "/api/dashboard/figures?" + urlencode({"township": township, "rule": rule}),
            ),
            ("households, first page of 50", "/api/dashboard/households"),
            ("households, page 100 of 50", "/api/dashboard/households?offset=4950"),
            ("households of one village", f"/api/dashboard/households?{village_query}"),
            ("a household's evidence", f"/api/dashboard/households/{household}"),
            (
                f"export CSV of one village ({village['households']} households)",
                f"/api/dashboard/households.csv?{village_query}",
            ),
            (
                f"export XLSX of one village ({village['households']} households)",
                f"/api/dashboard/households.xlsx?{village_query}",
            ),
        ]
        health = timed(lambda: api.get("/healthz"), args.samples)
        p50, p95, _ = percentiles(health)
        print(f"floor: GET /healthz (HTTP, no database): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
        sql = asyncio.run(sql_floor(args.database_url, args.samples))
        p50, p95, _ = percentiles(sql)
        print(f"floor: the township aggregate as raw SQL: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
        worst = 0.0
        for name, path in calls:
            p50, p95, _ = percentiles(timed(lambda path=path: api.get(path), args.samples))
            worst = max(worst, p95) if not name.startswith("export") else worst
            print(f"{name:52} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms", flush=True)
        verdict = "met" if worst <= GOAL_MS else "NOT met"
        print(
            f"goal: p95 <= {GOAL_MS:.0f} ms per dashboard API call (exports aside): {verdict}, "
            f"worst p95 {worst:.1f} ms"
        )
        api.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
