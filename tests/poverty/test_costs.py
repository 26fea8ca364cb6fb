"""What each kind of bill counts for: ExplanationOfBenefit with and without the layers, Claim,
Invoice, and the bills that do not count, with the reason."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from health.core.naming import PAYMENT_LAYER_SYSTEM
from health.demo import build_demo_bundles
from health.poverty.costs import NotCounted, cost_line, counted_lines

ADJUDICATION = "http://terminology.hl7.org/CodeSystem/adjudication"


def total(system: str, code: str, value: float, currency: str = "CNY") -> dict[str, Any]:
    return {
        "category": {"coding": [{"system": system, "code": code}]},
        "amount": {"value": value, "currency": currency},
    }


def eob(*totals: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ExplanationOfBenefit",
        "status": "active",
        "use": "claim",
        "outcome": "complete",
        "patient": {"reference": "Patient/p1"},
        "created": "2026-03-31T23:30:00+08:00",
        "provider": {"display": "闽宁镇卫生院"},
        "total": list(totals),
        **extra,
    }


def test_the_three_layers_and_the_family_s_share() -> None:
    line = cost_line(
        "ExplanationOfBenefit",
        "e1",
        eob(
            total(ADJUDICATION, "submitted", 12345.67),
            total(ADJUDICATION, "benefit", 10000.0),
            total(PAYMENT_LAYER_SYSTEM, "basic-medical-insurance", 7000.0),
            total(PAYMENT_LAYER_SYSTEM, "serious-illness-insurance", 2000.0),
            total(PAYMENT_LAYER_SYSTEM, "medical-assistance", 1000.0),
            total(PAYMENT_LAYER_SYSTEM, "out-of-pocket", 2345.67),
        ),
    )
    assert (
        line.billed,
        line.basic,
        line.serious,
        line.assistance,
        line.other,
        line.out_of_pocket,
    ) == (
        Decimal("12345.67"),
        Decimal("7000.00"),
        Decimal("2000.00"),
        Decimal("1000.00"),
        Decimal("0.00"),
        Decimal("2345.67"),
    )
    assert line.on == dt.date(2026, 3, 31) and line.patient_id == "p1"
    assert line.provider == "闽宁镇卫生院"


def test_any_fhir_source_submitted_minus_benefit() -> None:
    line = cost_line(
        "ExplanationOfBenefit",
        "e2",
        eob(total(ADJUDICATION, "submitted", 800.1), total(ADJUDICATION, "benefit", 500.05)),
    )
    assert line.out_of_pocket == Decimal("300.05") and line.other == Decimal("500.05")
    assert line.basic == Decimal("0")
    paid = cost_line(
        "ExplanationOfBenefit",
        "e3",
        eob(
            total(ADJUDICATION, "submitted", 800.0),
            payment={"amount": {"value": 600.0, "currency": "CNY"}},
        ),
    )
    assert paid.out_of_pocket == Decimal("200.00")
    alone = cost_line("ExplanationOfBenefit", "e4", eob(total(ADJUDICATION, "submitted", 99.99)))
    assert alone.out_of_pocket == Decimal("99.99")


def test_a_late_evening_in_utc_is_the_next_day_in_china() -> None:
    line = cost_line(
        "ExplanationOfBenefit",
        "e5",
        eob(total(ADJUDICATION, "submitted", 1.0), created="2026-06-30T17:00:00Z"),
    )
    assert line.on == dt.date(2026, 7, 1)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": "cancelled"}, "status is cancelled"),
        ({"status": "entered-in-error"}, "status is entered-in-error"),
        ({"use": "preauthorization"}, "preauthorization"),
        ({"outcome": "error"}, "adjudication failed"),
        ({"patient": {"reference": "Group/g1"}}, "names no Patient"),
        ({"total": [total(ADJUDICATION, "submitted", 10.0, "USD")]}, "in USD, not CNY"),
        ({"total": []}, "no submitted total"),
    ],
)
def test_bills_that_do_not_count_say_why(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(NotCounted, match=reason):
        cost_line(
            "ExplanationOfBenefit", "x", {**eob(total(ADJUDICATION, "submitted", 10.0)), **changes}
        )


def test_a_claim_counts_until_its_explanation_of_benefit_arrives() -> None:
    claim = {
        "resourceType": "Claim",
        "status": "active",
        "use": "claim",
        "patient": {"reference": "Patient/p1"},
        "created": "2026-04-02",
        "total": {"value": 5000.0, "currency": "CNY"},
    }
    unsettled = cost_line("Claim", "c1", claim)
    assert not unsettled.settled and unsettled.out_of_pocket == Decimal("5000.00")
    assert counted_lines([unsettled], unsettled_claims="count-in-full") == [unsettled]
    assert counted_lines([unsettled], unsettled_claims="ignore") == []
    answer = cost_line(
        "ExplanationOfBenefit",
        "e1",
        eob(
            total(ADJUDICATION, "submitted", 5000.0),
            total(ADJUDICATION, "benefit", 4000.0),
            claim={"reference": "Claim/c1"},
        ),
    )
    assert counted_lines([unsettled, answer], unsettled_claims="count-in-full") == [answer]


def test_an_invoice_with_its_deductions() -> None:
    line = cost_line(
        "Invoice",
        "i1",
        {
            "resourceType": "Invoice",
            "status": "issued",
            "subject": {"reference": "Patient/p1"},
            "date": "2026-02-10",
            "totalPriceComponent": [
                {
                    "type": "deduction",
                    "code": {
                        "coding": [
                            {"system": PAYMENT_LAYER_SYSTEM, "code": "basic-medical-insurance"}
                        ]
                    },
                    "amount": {"value": 6000.0, "currency": "CNY"},
                },
                {
                    "type": "deduction",
                    "code": {
                        "coding": [{"system": PAYMENT_LAYER_SYSTEM, "code": "medical-assistance"}]
                    },
                    "amount": {"value": 1000.0, "currency": "CNY"},
                },
            ],
            "totalGross": {"value": 25000.0, "currency": "CNY"},
        },
    )
    assert (line.billed, line.basic, line.assistance, line.out_of_pocket) == (
        Decimal("25000.00"),
        Decimal("6000.00"),
        Decimal("1000.00"),
        Decimal("18000.00"),
    )
    with pytest.raises(NotCounted, match="status is draft"):
        cost_line("Invoice", "i2", {"resourceType": "Invoice", "status": "draft"})


def test_every_demo_bill_reads_back_to_its_settlement() -> None:
    for bundle in build_demo_bundles(patients=60)[1:]:
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] != "ExplanationOfBenefit":
                continue
            resource = {**resource, "patient": {"reference": "Patient/p"}}
            line = cost_line("ExplanationOfBenefit", "x", resource)
            layers = {
                t["category"]["coding"][0]["code"]: Decimal(repr(t["amount"]["value"]))
                for t in resource["total"]
            }
            assert line.billed == layers["submitted"]
            assert line.out_of_pocket == layers["out-of-pocket"]
            assert line.basic + line.serious + line.assistance + line.out_of_pocket == line.billed
            assert line.other == 0
