"""The demo seed and the benchmark's city feed the flags: valid FHIR, incomes, causes,
family-doctor contracts and bills that the cost reader accepts."""

from __future__ import annotations

import datetime as dt
from collections import Counter

from health.core.naming import FAMILY_DOCTOR_CONTRACT, HOUSEHOLD_CHARACTERISTIC_SYSTEM
from health.demo import DEMO_AS_OF, build_demo_bundles
from health.demo.city import city_shard
from health.poverty.costs import cost_line
from health.poverty.households import household_from_group
from records.validation import validate_resource


def codes(group: dict) -> list[str]:
    return [
        c["code"]["coding"][0]["code"]
        for c in group["characteristic"]
        if c["code"]["coding"][0]["system"] == HOUSEHOLD_CHARACTERISTIC_SYSTEM
    ]


def test_demo_households_carry_what_the_rules_read() -> None:
    bundles = build_demo_bundles(patients=300)
    resources = [e["resource"] for b in bundles[1:] for e in b["entry"]]
    groups = [r for r in resources if r["resourceType"] == "Group"]
    households = [household_from_group(str(i), g, DEMO_AS_OF) for i, g in enumerate(groups)]
    assert all(h.township and h.village for h in households)
    with_income = [h for h in households if h.income_per_capita is not None]
    assert 0.8 * len(households) <= len(with_income) < len(households)
    assert all(h.income_year == DEMO_AS_OF.year - 1 for h in with_income)

    def mean(status: str) -> float:
        found = [float(h.income_per_capita or 0) for h in with_income if h.status == status]
        return sum(found) / len(found)

    assert mean("registered-poor") < mean("monitored") < mean("exited") < mean("ordinary")
    causes = Counter(h.main_cause for h in households if h.status != "ordinary")
    assert causes["因病"] == max(causes.values())
    assert all(h.main_cause is None for h in households if h.status == "ordinary")
    contracts = [r for r in resources if r["resourceType"] == "EpisodeOfCare"]
    assert contracts and all(r["type"][0]["coding"][0] == FAMILY_DOCTOR_CONTRACT for r in contracts)
    for resource in groups + contracts:
        validate_resource(resource)


def test_the_city_is_valid_and_heavy_enough() -> None:
    as_of = dt.date(2026, 12, 1)
    items = city_shard(3, 60, as_of=as_of)
    assert city_shard(3, 60, as_of=as_of)[0].data == items[0].data  # the same shard every time
    counts = Counter(item.res_type for item in items)
    assert counts["Group"] == 60 and counts["ExplanationOfBenefit"] >= 10 * 60
    for item in items:
        validate_resource(item.data)
    bills = [
        cost_line(i.res_type, i.res_id, i.data)
        for i in items
        if i.res_type == "ExplanationOfBenefit"
    ]
    assert all(b.billed == b.basic + b.serious + b.assistance + b.out_of_pocket for b in bills)
    assert max(b.billed for b in bills) > 10000  # the serious illnesses
    assert min(b.on for b in bills) >= as_of - dt.timedelta(days=3 * 365)
