"""The five rules on real households in the store, at, just below and just above each threshold.

One town of households, each built to sit on one side of one threshold, is written through the
import path; one full recompute runs (and a second, which must change nothing); the flags are
then read back over the FHIR API of a running ``health serve``, as a commission analyst's
tools would read them. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest

from health.core.database import Database
from health.core.naming import (
    ILLNESS_POVERTY_COSTS_URL,
    ILLNESS_POVERTY_FLAG_SYSTEM,
    ILLNESS_POVERTY_RULE_SYSTEM,
    ILLNESS_POVERTY_TAG,
)
from health.poverty.rules import load_rules
from health.poverty.service import IllnessPovertyService, RecomputeReport
from records.indexing import SearchIndexer
from records.store import ResourceStore
from tests.poverty.factories import House, Town
from tests.records.test_import import run_health
from tests.services import AppServer

AS_OF = dt.date(2026, 6, 30)
CHE, IMP, BILL, SERIOUS, CHRONIC = (
    "catastrophic-expenditure",
    "impoverishing-expenditure",
    "medical-bill-alert",
    "serious-illness",
    "chronic-burden",
)


@dataclass(frozen=True)
class Scenario:
    key: str
    build: Callable[[Town, str], House]
    #: rule -> whether an active flag of that rule is expected; rules not named are not checked.
    expect: dict[str, bool]


def single(oop: str, *, income: str | None = "5000", status: str = "ordinary", size: int = 1):
    """A household of ``size`` whose head paid ``oop`` out of pocket on one bill."""

    def build(town: Town, number: str) -> House:
        names = ["马国军", "杨秀兰", "马文斌", "马学梅", "马海龙", "马玲"][:size]
        house = town.household(number, names, status=status, income=income)
        if oop != "0":
            town.eob(
                house.members[0],
                "2026-03-15",
                billed=str(Decimal(oop) * 2),
                basic=oop,
                out_of_pocket=oop,
            )
        return house

    return build


def with_bills(status: str, income: str | None, size: int, bills: list[tuple[int, str, str, str]]):
    """``bills``: (member index, date, provider, out-of-pocket)."""

    def build(town: Town, number: str) -> House:
        names = ["马国军", "杨秀兰", "马文斌", "马学梅", "马海龙", "马玲"][:size]
        house = town.household(number, names, status=status, income=income)
        for member, on, provider, oop in bills:
            town.eob(house.members[member], on, billed=oop, out_of_pocket=oop, provider=provider)
        return house

    return build


def diagnosed(
    status: str, *codes: str, clinical: str = "active", contract: tuple[str, str] | None = None
):
    def build(town: Town, number: str) -> House:
        house = town.household(number, ["海福成", "丁秀英"], status=status, income="20000")
        for code in codes:
            town.condition(house.members[0], code, status=clinical)
        if contract:
            town.contract(house.members[0], *contract)
        return house

    return build


def claim_only(settled: bool):
    def build(town: Town, number: str) -> House:
        house = town.household(number, ["纳建明"], income="20000")
        claim = town.claim(house.members[0], "2026-04-02", "20000")
        if settled:
            town.eob(
                house.members[0],
                "2026-04-05",
                billed="20000",
                basic="18000",
                out_of_pocket="2000",
                claim=claim,
            )
        return house

    return build


def invoiced(town: Town, number: str) -> House:
    house = town.household(number, ["冶金花"], income="20000")
    town.invoice(house.members[0], "2026-02-10", gross="25000", basic="6000", net="19000")
    return house


def standard_totals_only(town: Town, number: str) -> House:
    house = town.household(number, ["白志伟"], income="20000")
    town.eob(house.members[0], "2026-05-01", billed="30000", basic="12227.99", layers=False)
    return house


def cancelled(town: Town, number: str) -> House:
    house = town.household(number, ["摆玉兰"], income="20000")
    town.eob(
        house.members[0], "2026-05-01", billed="40000", out_of_pocket="40000", status="cancelled"
    )
    return house


SCENARIOS = [
    # WHO capacity to pay, >= 40 %: one person, income 5,000, subsistence 4,000 -> capacity 1,000.
    Scenario("ctp-below", single("399.99"), {CHE: False}),
    Scenario("ctp-at", single("400.00"), {CHE: True}),
    Scenario("ctp-above", single("400.01"), {CHE: True}),
    # No capacity to pay at all (income under subsistence): any out-of-pocket is catastrophic.
    Scenario("no-capacity", single("0.01", income="3000"), {CHE: True}),
    Scenario("no-capacity-no-bills", single("0", income="3000"), {CHE: False, IMP: False}),
    # SDG 3.8.2, > 10 % of income: two people at 20,000 -> 40,000; capacity 32,000 (40 %: 12,800).
    Scenario("sdg10-below", single("3999.99", income="20000", size=2), {CHE: False}),
    Scenario("sdg10-at", single("4000.00", income="20000", size=2), {CHE: False}),
    Scenario("sdg10-above", single("4000.01", income="20000", size=2), {CHE: True}),
    # > 25 %: 10,000 (the flag holds from 10 % on; the 25 % test itself is checked below).
    Scenario("sdg25-below", single("9999.99", income="20000", size=2), {CHE: True}),
    Scenario("sdg25-at", single("10000.00", income="20000", size=2), {CHE: True}),
    Scenario("sdg25-above", single("10000.01", income="20000", size=2), {CHE: True}),
    # Impoverishing: three people at 8,000; line 6,000 -> out-of-pocket over 6,000 fires.
    Scenario("impoverishing-below", single("5999.99", income="8000", size=3), {IMP: False}),
    Scenario("impoverishing-at", single("6000.00", income="8000", size=3), {IMP: False}),
    Scenario("impoverishing-above", single("6000.01", income="8000", size=3), {IMP: True}),
    Scenario("further-below", single("0.01", income="5000"), {IMP: True, CHE: False}),
    # Medical bill: exited, 50 % of 17,772 = 8,886; ordinary, 100 % = 17,772. Strictly above.
    Scenario(
        "bill-exited-below",
        single("8885.99", income="20000", status="exited", size=2),
        {BILL: False},
    ),
    Scenario(
        "bill-exited-at", single("8886.00", income="20000", status="exited", size=2), {BILL: False}
    ),
    Scenario(
        "bill-exited-above",
        single("8886.01", income="20000", status="exited", size=2),
        {BILL: True},
    ),
    Scenario("bill-ordinary-at", single("17772.00", income="20000", size=2), {BILL: False}),
    Scenario("bill-ordinary-above", single("17772.01", income="20000", size=2), {BILL: True}),
    Scenario(
        "bill-spread-over-clinics",
        with_bills(
            "exited",
            "20000",
            2,
            [
                (0, "2026-01-20", "银川市第一人民医院", "3000.00"),
                (0, "2026-03-02", "闽宁镇卫生院", "3000.00"),
                (0, "2026-06-30", "原隆村卫生室", "2886.01"),
                (0, "2025-12-20", "宁夏医科大学总医院", "5000.00"),  # last insurance year
            ],
        ),
        {BILL: True},
    ),
    Scenario(
        "bill-two-members-each-below",
        with_bills(
            "exited",
            "20000",
            3,
            [
                (0, "2026-02-01", "银川市第一人民医院", "5000.00"),
                (1, "2026-02-01", "银川市中医医院", "5000.00"),
            ],
        ),
        {BILL: False},
    ),
    Scenario("bill-standard-totals-only", standard_totals_only, {BILL: True}),
    Scenario("bill-cancelled", cancelled, {BILL: False, CHE: False}),
    Scenario("claim-unsettled", claim_only(settled=False), {BILL: True}),
    Scenario("claim-settled-by-eob", claim_only(settled=True), {BILL: False}),
    Scenario("invoice", invoiced, {BILL: True}),
    Scenario(
        "missing-income",
        single("20000.00", income=None, size=2),
        {CHE: False, IMP: False, BILL: True},
    ),
    Scenario(
        "many-members",
        with_bills(
            "exited",
            "9000",
            6,
            [(i, "2026-04-01", "银川市第一人民医院", "1000.00") for i in range(6)],
        ),
        {CHE: True, IMP: False, BILL: False},
    ),
    Scenario(
        "no-costs",
        single("0", income="20000"),
        {CHE: False, IMP: False, BILL: False, SERIOUS: False, CHRONIC: False},
    ),
    # Serious illness: the ICD-10 list, at the edges of its ranges.
    Scenario("serious-gastric", diagnosed("ordinary", "C16.9"), {SERIOUS: True}),
    Scenario(
        "serious-resolved", diagnosed("ordinary", "C16.9", clinical="resolved"), {SERIOUS: False}
    ),
    Scenario("serious-esrd", diagnosed("ordinary", "N18.5"), {SERIOUS: True}),
    Scenario("serious-ckd-stage-4", diagnosed("ordinary", "N18.4"), {SERIOUS: False}),
    Scenario("serious-rectum-c20", diagnosed("ordinary", "C20"), {SERIOUS: True}),
    Scenario("serious-anus-c21", diagnosed("ordinary", "C21.0"), {SERIOUS: False}),
    Scenario("serious-mdr-tb", diagnosed("ordinary", "A15.0", "U84.3"), {SERIOUS: True}),
    Scenario(
        "tb-without-resistance", diagnosed("ordinary", "A15.0"), {SERIOUS: False, CHRONIC: False}
    ),
    # Chronic burden without a family doctor, registered and monitored households only.
    Scenario("chronic-uncontracted", diagnosed("exited", "I10"), {CHRONIC: True, SERIOUS: False}),
    Scenario(
        "chronic-contracted",
        diagnosed("exited", "I10", contract=("2026-01-01", "2026-12-31")),
        {CHRONIC: False},
    ),
    Scenario(
        "chronic-contract-expired",
        diagnosed("monitored", "E11.9", contract=("2025-01-01", "2025-12-31")),
        {CHRONIC: True},
    ),
    Scenario("chronic-ordinary", diagnosed("ordinary", "I10"), {CHRONIC: False}),
    Scenario("chronic-schizophrenia", diagnosed("monitored", "F20.0"), {CHRONIC: True}),
    Scenario("chronic-f06-without-epilepsy", diagnosed("monitored", "F06.3"), {CHRONIC: False}),
    Scenario("chronic-sign-later", diagnosed("exited", "I11.9"), {CHRONIC: True}),
]


@dataclass
class City:
    database_url: str
    town: Town
    houses: dict[str, House]
    flags: dict[str, list[dict[str, Any]]]
    assessments: dict[str, dict[str, Any]]
    first: RecomputeReport
    second: RecomputeReport


async def read_flags(client: httpx.AsyncClient, house: House) -> list[dict[str, Any]]:
    response = await client.get("Flag", params={"subject": f"Group/{house.id}", "_count": "100"})
    assert response.status_code == 200, response.text
    return [entry["resource"] for entry in response.json().get("entry", [])]


def rule_of(flag: dict[str, Any]) -> str:
    return next(
        c["code"] for c in flag["code"]["coding"] if c["system"] == ILLNESS_POVERTY_RULE_SYSTEM
    )


async def assessment_of(client: httpx.AsyncClient, flag: dict[str, Any]) -> dict[str, Any]:
    reference = flag["extension"][0]["valueReference"]["reference"]
    response = await client.get(reference)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
async def city(database_url: str, app_server: AppServer) -> City:
    town = Town()
    houses = {s.key: s.build(town, f"T8{index:04d}") for index, s in enumerate(SCENARIOS)}
    database = Database(database_url)
    indexer = SearchIndexer()
    try:
        await town.write(database, indexer)
        service = IllnessPovertyService(database, indexer, load_rules())
        first = await service.recompute_all(as_of=AS_OF)
        second = await service.recompute_all(as_of=AS_OF)
    finally:
        await database.dispose()
    flags: dict[str, list[dict[str, Any]]] = {}
    assessments: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(
        base_url=f"{app_server.url}/fhir", headers=app_server.auth_headers(), timeout=60
    ) as client:
        for key, house in houses.items():
            flags[key] = await read_flags(client, house)
            for flag in flags[key]:
                assessments[flag["id"]] = await assessment_of(client, flag)
    return City(database_url, town, houses, flags, assessments, first, second)


def active_rules(city: City, key: str) -> set[str]:
    return {rule_of(f) for f in city.flags[key] if f["status"] == "active"}


def measure(city: City, key: str, rule: str, code: str) -> dict[str, Any]:
    (flag,) = [f for f in city.flags[key] if rule_of(f) == rule and f["status"] == "active"]
    assessment = city.assessments[flag["id"]]
    for prediction in assessment["prediction"]:
        parts = {p["url"]: p for p in prediction["extension"][0]["extension"]}
        if parts["measure"]["valueCode"] == code:
            return {"parts": parts, "prediction": prediction}
    raise AssertionError(f"no measure {code} in {assessment}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.key for s in SCENARIOS])
def test_each_rule_on_either_side_of_its_threshold(city: City, scenario: Scenario) -> None:
    flagged = active_rules(city, scenario.key)
    for rule, expected in scenario.expect.items():
        assert (rule in flagged) is expected, (rule, city.flags[scenario.key])


def test_the_25_percent_test_itself_at_below_and_above(city: City) -> None:
    met = {
        key: measure(city, key, CHE, "budget-share-25")["parts"]["met"]["valueBoolean"]
        for key in ("sdg25-below", "sdg25-at", "sdg25-above")
    }
    assert met == {"sdg25-below": False, "sdg25-at": False, "sdg25-above": True}
    above = measure(city, "sdg25-above", CHE, "budget-share-25")["prediction"]
    assert above["qualitativeRisk"]["coding"][0]["code"] == "high"
    ten = measure(city, "sdg25-at", CHE, "budget-share-10")["prediction"]
    assert ten["qualitativeRisk"]["coding"][0]["code"] == "moderate"


def test_a_flag_says_why_it_was_raised(city: City) -> None:
    (flag,) = [f for f in city.flags["ctp-at"] if rule_of(f) == CHE]
    assert ILLNESS_POVERTY_TAG in [
        {k: t[k] for k in ("system", "code", "display")} for t in flag["meta"]["tag"]
    ]
    assert flag["status"] == "active"
    assert "start" in flag["period"] and "end" not in flag["period"]
    assert flag["category"][0]["coding"][0]["code"] == "admin"
    assert flag["subject"]["reference"] == f"Group/{city.houses['ctp-at'].id}"
    kind = next(c for c in flag["code"]["coding"] if c["system"] == ILLNESS_POVERTY_FLAG_SYSTEM)
    assert kind["code"] == "illness-poverty-risk" and "因病致贫" in kind["display"]
    rule = next(c for c in flag["code"]["coding"] if c["system"] == ILLNESS_POVERTY_RULE_SYSTEM)
    assert rule["version"] == load_rules().version

    assessment = city.assessments[flag["id"]]
    assert assessment["subject"] == flag["subject"]
    assert assessment["method"]["coding"][0]["version"] == rule["version"]
    basis = [b["reference"] for b in assessment["basis"]]
    assert basis[0] == flag["subject"]["reference"]
    assert any(b.startswith("ExplanationOfBenefit/") for b in basis)
    ctp = measure(city, "ctp-at", CHE, "capacity-to-pay-share")["parts"]
    assert ctp["value"]["valueDecimal"] == 0.4 and ctp["threshold"]["valueDecimal"] == 0.4
    assert ctp["comparator"]["valueCode"] == ">=" and ctp["met"]["valueBoolean"] is True
    rationale = measure(city, "ctp-at", CHE, "capacity-to-pay-share")["prediction"]["rationale"]
    assert "400.00 元" in rationale and "1,000.00 元" in rationale and "40.0%" in rationale
    costs = {
        p["url"]: p
        for p in next(e for e in assessment["extension"] if e["url"] == ILLNESS_POVERTY_COSTS_URL)[
            "extension"
        ]
    }
    assert costs["out-of-pocket"]["valueMoney"] == {"value": 400.0, "currency": "CNY"}
    assert costs["billed"]["valueMoney"]["value"] == 800.0
    assert costs["basic-medical-insurance"]["valueMoney"]["value"] == 400.0
    assert costs["household-size"]["valueInteger"] == 1
    assert costs["period"]["valuePeriod"] == {"start": "2025-07-01", "end": "2026-06-30"}
    assert assessment["mitigation"]


def test_a_return_to_poverty_household_gets_the_return_kind(city: City) -> None:
    (flag,) = [f for f in city.flags["many-members"] if rule_of(f) == CHE]
    kind = next(
        c["code"] for c in flag["code"]["coding"] if c["system"] == ILLNESS_POVERTY_FLAG_SYSTEM
    )
    assert kind == "illness-return-risk"


def test_costs_from_three_clinics_add_up_and_last_year_does_not_count(city: City) -> None:
    (flag,) = [f for f in city.flags["bill-spread-over-clinics"] if rule_of(f) == BILL]
    assessment = city.assessments[flag["id"]]
    bills = [
        b["reference"]
        for b in assessment["basis"]
        if b["reference"].startswith("ExplanationOfBenefit/")
    ]
    assert len(bills) == 3
    person = measure(city, "bill-spread-over-clinics", BILL, "person-out-of-pocket")["parts"]
    assert person["value"]["valueMoney"]["value"] == 8886.01
    assert person["threshold"]["valueMoney"]["value"] == 8886.0
    # The household's twelve months include December's bill too.
    (che,) = [f for f in city.flags["bill-spread-over-clinics"] if rule_of(f) == CHE]
    costs = next(
        e for e in city.assessments[che["id"]]["extension"] if e["url"] == ILLNESS_POVERTY_COSTS_URL
    )
    oop = next(p for p in costs["extension"] if p["url"] == "out-of-pocket")
    assert oop["valueMoney"]["value"] == 13886.01


def test_missing_income_is_not_assessed_but_the_bill_alert_still_works(city: City) -> None:
    assert city.first.not_assessed[CHE] >= 1 and city.first.not_assessed[IMP] >= 1
    assert active_rules(city, "missing-income") == {BILL}


def test_a_second_run_changes_nothing(city: City) -> None:
    assert city.first.changed
    assert city.second.changes == []
    for flags in city.flags.values():
        for flag in flags:
            assert flag["meta"]["versionId"] == "1"
            assert city.assessments[flag["id"]]["meta"]["versionId"] == "1"


async def test_a_flag_whose_cause_goes_becomes_inactive_not_deleted(
    city: City, app_server: AppServer
) -> None:
    town = city.town
    house = city.houses["chronic-sign-later"]
    town.contract(house.members[0], "2026-06-01", "2027-05-31")
    database = Database(city.database_url)
    indexer = SearchIndexer()
    try:
        changes = await town.write(database, indexer)
        report = await IllnessPovertyService(database, indexer, load_rules()).recompute_for_changes(
            changes, as_of=AS_OF
        )
    finally:
        await database.dispose()
    assert report.deactivated[CHRONIC] == 1
    async with httpx.AsyncClient(
        base_url=f"{app_server.url}/fhir", headers=app_server.auth_headers(), timeout=60
    ) as client:
        (flag,) = await read_flags(client, house)
        assert flag["status"] == "inactive" and flag["period"]["end"] >= flag["period"]["start"]
        assert flag["meta"]["versionId"] == "2"
        assessment = await assessment_of(client, flag)
        assert any("no longer holds" in note["text"] for note in assessment["note"])
        assert "prediction" not in assessment  # nothing uncontracted is left
        history = (await client.get(f"Flag/{flag['id']}/_history")).json()
        assert [e["resource"]["status"] for e in history["entry"]] == ["inactive", "active"]


def test_the_household_command_shows_costs_per_person_and_the_flags(city: City) -> None:
    number = next(i for i, s in enumerate(SCENARIOS) if s.key == "bill-spread-over-clinics")
    result = run_health(
        city.database_url, "poverty", "household", f"T8{number:04d}", "--as-of", AS_OF.isoformat()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert (
        lines[0].startswith("马国军户（T8") and "脱贫户" in lines[0] and "20,000.00 元" in lines[0]
    )
    assert "2025-07-01 至 2026-06-30" in lines[1]
    head = next(line for line in lines if line.strip().startswith("马国军:"))
    assert "个人自付 out-of-pocket 13,886.01" in head
    assert any("全户 household" in line and "13,886.01" in line for line in lines)
    assert any(line.strip().startswith("[active] 高额医疗费用预警") for line in lines)
    missing = run_health(city.database_url, "poverty", "household", "NO-SUCH-HOUSEHOLD")
    assert missing.returncode != 0 and "no household" in missing.stderr


async def test_a_household_that_is_gone_has_its_flags_deactivated(
    city: City, app_server: AppServer
) -> None:
    house = city.houses["serious-esrd"]
    database = Database(city.database_url)
    indexer = SearchIndexer()
    try:
        async with database.transaction(write=True) as session:
            store = ResourceStore(session, indexer)
            await store.delete("Group", house.id or "")
            changes = list(store.changes)
        report = await IllnessPovertyService(database, indexer, load_rules()).recompute_for_changes(
            changes, as_of=AS_OF
        )
    finally:
        await database.dispose()
    assert report.deactivated[SERIOUS] == 1
    async with httpx.AsyncClient(
        base_url=f"{app_server.url}/fhir", headers=app_server.auth_headers(), timeout=60
    ) as client:
        (flag,) = await read_flags(client, house)
        assert flag["status"] == "inactive" and "end" in flag["period"]
        assessment = await assessment_of(client, flag)
        assert "household no longer exists" in assessment["note"][-1]["text"]
