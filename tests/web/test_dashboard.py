"""The commission's dashboard API on both databases: its figures against what the test wrote,
names and identity numbers for case workers only, other roles refused, bad parameters named.

The households are written into two townships of the test's own, so the demo households of
the shared app do not enter the counts; the expected figures come from what was written and
from the Flags read back through the FHIR API, never from the tables the dashboard reads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from health.core.database import Database
from health.core.naming import ILLNESS_POVERTY_RULE_SYSTEM
from records.indexing import SearchIndexer
from tests.poverty.factories import House, Town
from tests.web.conftest import Session, WebApp, in_thread

CHINA = dt.timezone(dt.timedelta(hours=8))


@dataclass
class Written:
    east: str  # township names of this run
    west: str
    houses: dict[str, tuple[House, str, str, str]]  # number -> (house, township, village, oop)
    flagged: set[str]  # group ids with an active flag
    rules: dict[str, set[str]]  # group id -> rules of its active flags
    helped_task: str


def _write(web: WebApp) -> Written:
    tag = uuid.uuid4().hex[:6]
    east, west = f"东测{tag}镇", f"西测{tag}镇"
    town = Town()
    plan = [
        ("east-1", east, "甲村", "60000", "3000"),
        ("east-2", east, "甲村", "30000", "2500"),
        ("east-3", east, "乙村", "25000", "2000"),
        ("west-1", west, "丙村", "12000", "1500"),
        ("west-quiet", west, "丙村", None, "40000"),
    ]
    houses: dict[str, tuple[House, str, str, str]] = {}
    for suffix, township, village, oop, income in plan:
        number = f"T{tag}{suffix}"
        names = [f"测{tag}{suffix}甲", f"测{tag}{suffix}乙"]
        house = town.household(
            number, names, income=income, township=township, village=village, status="monitored"
        )
        if oop is not None:
            town.eob(
                house.members[0],
                dt.datetime.now(CHINA).date().isoformat(),
                billed=oop,
                out_of_pocket=oop,
            )
        houses[number] = (house, township, village, oop or "0")

    async def write() -> None:
        database = Database(web.server.database_url)
        try:
            await town.write(database, SearchIndexer())
        finally:
            await database.dispose()

    in_thread(asyncio.run, write())
    web.server.cli("poverty", "recompute")
    flagged: set[str] = set()
    rules: dict[str, set[str]] = {}
    for house, _t, _v, _o in houses.values():
        found = web.system.get(
            "/Flag", params={"subject": f"Group/{house.id}", "status": "active"}
        ).json()
        for entry in found.get("entry", []):
            flag = entry["resource"]
            if flag["resourceType"] != "Flag":
                continue
            for coding in flag["code"]["coding"]:
                if coding["system"] == ILLNESS_POVERTY_RULE_SYSTEM:
                    rules.setdefault(str(house.id), set()).add(coding["code"])
            flagged.add(str(house.id))
    worker = Session(web, "case-worker")
    try:
        listed = worker.http.get("/api/dashboard/households", params={"township": east}).json()
    finally:
        worker.close()
    task = listed["households"][0]["task_id"]
    web.server.cli(
        "poverty", "case-step", task, "verified", "--as", "case-worker", "--note", "入户核实"
    )
    web.server.cli(
        "poverty", "case-step", task, "assisted", "--as", "case-worker", "--help-given",
        "medical-assistance",
    )  # fmt: skip
    return Written(east, west, houses, flagged, rules, task)


@pytest.fixture(scope="module")
def written(web: WebApp) -> Written:
    return _write(web)


@pytest.fixture(scope="module")
def analyst(web: WebApp) -> Any:
    session = Session(web, "analyst")
    yield session.http
    session.close()


@pytest.fixture(scope="module")
def case_worker(web: WebApp) -> Any:
    session = Session(web, "case-worker")
    yield session.http
    session.close()


def _by_key(items: list[dict[str, Any]]) -> dict[str, int]:
    return {item["key"]: item["households"] for item in items}


def _ours(written: Written) -> list[tuple[House, str, str, str]]:
    return [v for v in written.houses.values() if str(v[0].id) in written.flagged]


def _secrets(written: Written) -> list[str]:
    return [
        value
        for house, _t, _v, _o in written.houses.values()
        for person in house.members
        for value in (person.name, person.resident_id)
    ]


class TestFigures:
    def test_the_flags_opened_cases_for_the_costly_households(self, written: Written) -> None:
        assert len(written.flagged) >= 3  # the test's premise: its bills flag households
        quiet = written.houses[next(n for n in written.houses if n.endswith("west-quiet"))]
        assert str(quiet[0].id) not in written.flagged

    def test_townships_and_villages_count_the_open_cases(
        self, analyst: httpx.Client, written: Written
    ) -> None:
        body = analyst.get("/api/dashboard/figures").json()
        ours = _ours(written)
        expected_townships = Counter(t for _h, t, _v, _o in ours)
        townships = _by_key(body["township"])
        for township, count in expected_townships.items():
            assert townships[township] == count
        villages = {(item["township"], item["key"]): item["households"] for item in body["village"]}
        for (township, village), count in Counter((t, v) for _h, t, v, _o in ours).items():
            assert villages[(township, village)] == count

    def test_rules_disease_groups_bands_and_months_of_one_township(
        self, analyst: httpx.Client, written: Written
    ) -> None:
        ours = [v for v in _ours(written) if v[1] == written.east]
        body = analyst.get("/api/dashboard/figures", params={"township": written.east}).json()
        assert body["households"] == len(ours)
        rules = Counter(rule for h, _t, _v, _o in ours for rule in written.rules[str(h.id)])
        assert _by_key(body["rule"]) == dict(rules)
        assert _by_key(body["disease_group"]) == {"none": len(ours)}  # no diagnoses written

        def band(oop: str) -> str:
            amount = float(oop)
            edges = [(5000, "0-5k"), (10000, "5k-10k"), (20000, "10k-20k"), (50000, "20k-50k")]
            return next((code for edge, code in edges if amount < edge), "50k+")

        bands = {k: v for k, v in _by_key(body["band"]).items() if v}
        assert bands == dict(Counter(band(o) for _h, _t, _v, o in ours))
        month = dt.datetime.now(CHINA).strftime("%Y-%m")
        assert _by_key(body["month"]) == {month: len(ours)}

    def test_time_to_help_counts_the_helped_case(
        self, analyst: httpx.Client, written: Written
    ) -> None:
        ours = [v for v in _ours(written) if v[1] == written.east]
        waiting = analyst.get("/api/dashboard/time_to_help", params={"township": written.east})
        assert waiting.status_code == 200
        body = waiting.json()
        assert body["helped"] == 1 and body["waiting"] == len(ours) - 1
        assert body["median_days"] is not None and 0 <= body["median_days"] < 1
        assert body["p90_days"] == body["median_days"]

    def test_each_bar_links_to_the_households_it_counts(
        self, analyst: httpx.Client, written: Written
    ) -> None:
        body = analyst.get("/api/dashboard/figures", params={"township": written.east}).json()
        for kind in ("village", "rule", "band"):
            for item in body[kind]:
                if not item["households"]:
                    continue
                listed = analyst.get(item["list"] + "&limit=500").json()
                assert listed["total"] == item["households"] == len(listed["households"])


class TestWhoSeesWhat:
    def test_an_analyst_never_sees_a_name_or_an_identity_number(
        self, analyst: httpx.Client, written: Written
    ) -> None:
        params = {"township": written.east}
        listed = analyst.get("/api/dashboard/households", params=params)
        group = listed.json()["households"][0]["group_id"]
        seen = [
            analyst.get("/api/dashboard/figures", params=params).text,
            listed.text,
            analyst.get(f"/api/dashboard/households/{group}").text,
            analyst.get("/dashboard/households", params=params).text,
            analyst.get(f"/dashboard/households/{group}").text,
            analyst.get("/api/dashboard/households.csv", params=params).content.decode("utf-8-sig"),
            _xlsx_text(analyst.get("/dashboard/households.xlsx", params=params).content),
        ]
        assert "name" not in listed.json()["households"][0]
        for text in seen:
            for secret in _secrets(written):
                assert secret not in text

    def test_a_case_worker_sees_names_and_identity_numbers(
        self, case_worker: httpx.Client, written: Written
    ) -> None:
        params = {"township": written.east}
        listed = case_worker.get("/api/dashboard/households", params=params).json()
        ours = {str(h.id): h for h, _t, _v, _o in _ours(written) if _t == written.east}
        for item in listed["households"]:
            house = ours[item["group_id"]]
            assert [m["resident_id"] for m in item["members"]] == [
                p.resident_id for p in house.members
            ]
        csv = case_worker.get("/api/dashboard/households.csv", params=params)
        text = csv.content.decode("utf-8-sig")
        assert text.splitlines()[0].split(",")[:3] == ["户编号", "乡镇", "村"]
        assert "身份证号" in text.splitlines()[0]
        for house in ours.values():
            assert house.members[0].resident_id in text
        workbook = case_worker.get("/api/dashboard/households.xlsx", params=params)
        assert house.members[1].name in _xlsx_text(workbook.content)

    def test_reading_a_household_is_on_the_reader_s_audit_trail(
        self, web: WebApp, case_worker: httpx.Client, written: Written
    ) -> None:
        house = next(h for h, t, _v, _o in _ours(written) if t == written.west)
        assert case_worker.get(f"/api/dashboard/households/{house.id}").status_code == 200
        with web.as_user("admin") as admin:
            events = admin.get(
                "/AuditEvent", params={"altid": "case-worker", "_count": "200", "_sort": "-date"}
            ).json()
        descriptions = [
            entity.get("description", "")
            for entry in events.get("entry", [])
            for entity in entry["resource"].get("entity", [])
        ]
        assert f"dashboard/households/{house.id}" in descriptions

    @pytest.mark.parametrize(
        "username", ["village-doctor", "township-doctor", "specialist", "admin"]
    )
    def test_other_roles_are_refused(self, web: WebApp, username: str) -> None:
        session = Session(web, username)
        try:
            for path in (
                "/api/dashboard/figures",
                "/api/dashboard/households",
                "/api/dashboard/households.csv",
            ):
                assert session.http.get(path).status_code == 403
            assert session.http.get("/dashboard").status_code == 403
        finally:
            session.close()
        with httpx.Client(base_url=web.url) as nobody:
            assert nobody.get("/api/dashboard/figures").status_code == 401

    def test_an_analyst_s_token_works_as_the_web_session(
        self, web: WebApp, written: Written
    ) -> None:
        token = web.token("analyst")
        answer = httpx.get(
            f"{web.url}/api/dashboard/township",
            headers={"Authorization": f"Bearer {token}"},
            params={"township": written.west},
        )
        assert answer.status_code == 200
        assert _by_key(answer.json()["township"]) == {
            written.west: len([v for v in _ours(written) if v[1] == written.west])
        }


class TestBadParameters:
    @pytest.mark.parametrize(
        ("path", "name", "value"),
        [
            ("/api/dashboard/figures", "rule", "no-such-rule"),
            ("/api/dashboard/figures", "month", "2026-13"),
            ("/api/dashboard/band", "band", "lots"),
            ("/api/dashboard/households", "disease_group", "XXX"),
            ("/api/dashboard/households", "limit", "0"),
            ("/api/dashboard/households", "offset", "-1"),
            ("/api/dashboard/households", "limit", "many"),
        ],
    )
    def test_a_bad_parameter_is_a_400_that_names_it(
        self, analyst: httpx.Client, path: str, name: str, value: str
    ) -> None:
        answer = analyst.get(path, params={name: value})
        assert answer.status_code == 400
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["field"] == name

    def test_an_unknown_household_or_figure_is_a_404(self, analyst: httpx.Client) -> None:
        assert analyst.get(f"/api/dashboard/households/{uuid.uuid4()}").status_code == 404
        assert analyst.get("/api/dashboard/nothing").status_code == 404
        assert analyst.get("/api/dashboard/households.pdf").status_code == 400


def _xlsx_text(data: bytes) -> str:
    sheet = load_workbook(io.BytesIO(data), read_only=True).active
    assert sheet is not None
    return "\n".join(
        ",".join("" if v is None else str(v) for v in row)
        for row in sheet.iter_rows(values_only=True)
    )
