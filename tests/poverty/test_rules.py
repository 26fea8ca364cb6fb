"""The rule file: the shipped defaults, the commission's edits, and faults named by key."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from health.poverty.rules import (
    DEFAULT_RULES_PATH,
    Icd10Range,
    RuleFileError,
    load_rules,
    months_before,
    normalize_icd10,
    parse_rules,
)
from tests.records.test_import import run_health


def test_the_shipped_defaults_are_the_issue_s_numbers() -> None:
    rules = load_rules()
    assert rules.version == "2026.1"
    assert rules.catastrophic.capacity_to_pay_share == Decimal("0.40")
    assert (rules.catastrophic.budget_share_moderate, rules.catastrophic.budget_share_high) == (
        Decimal("0.10"),
        Decimal("0.25"),
    )
    assert rules.impoverishing.line_for(2021) == (2021, Decimal("6000.00"))
    assert rules.impoverishing.line_for(2026) == (2021, Decimal("6000.00"))  # latest earlier
    assert rules.impoverishing.line_for(2020) is None
    assert rules.medical_bill.priority_ratio == Decimal("0.50")
    assert rules.medical_bill.other_ratio == Decimal("1.00")
    assert rules.medical_bill.income_for(2024) == (2023, Decimal("17772.00"))
    assert {"exited", "monitored"} <= rules.medical_bill.priority_statuses
    assert len(rules.serious_illness.diseases) == 25
    names = {d.name for d in rules.chronic_burden.diseases}
    assert {"高血压", "糖尿病", "结核病", "严重精神障碍"} <= names
    # Decimals are read exactly, not through binary floating point.
    assert isinstance(rules.catastrophic.capacity_to_pay_share, Decimal)


@pytest.mark.parametrize(
    ("code", "disease"),
    [
        ("C16.9", "胃癌"),
        ("c169", "胃癌"),  # written without the dot, in lower case
        ("C16.900x001", "胃癌"),  # the Chinese national clinical edition's extension
        ("C18.2", "结肠癌"),
        ("C20", "直肠癌"),
        ("C21.0", None),
        ("N18.5", "终末期肾病"),
        ("N18.4", None),
        ("N18", None),
        ("Q24.9", "儿童先天性心脏病"),
        ("Q25.0", None),
        ("I64", "脑卒中"),
        ("I65", None),
    ],
)
def test_the_disease_list_matches_its_icd10_ranges(code: str, disease: str | None) -> None:
    found = load_rules().serious_illness.disease_of(normalize_icd10(code), [])
    assert (found.name if found else None) == disease


def test_a_code_that_needs_a_second_code() -> None:
    rule = load_rules().serious_illness
    assert rule.disease_of("A15.0", ["A15.0"]) is None
    found = rule.disease_of("A15.0", ["A15.0", "U84.3"])
    assert found is not None and found.name == "耐多药结核病"


def test_windows() -> None:
    assert months_before(dt.date(2026, 10, 31), 12) == dt.date(2025, 11, 1)
    assert months_before(dt.date(2026, 3, 31), 1) == dt.date(2026, 3, 1)
    assert months_before(dt.date(2024, 2, 29), 12) == dt.date(2023, 3, 1)
    assert Icd10Range.parse("C18-C20").contains("C19.1")
    with pytest.raises(ValueError, match="not an ICD-10 code"):
        Icd10Range.parse("cancer")
    with pytest.raises(ValueError, match="lower to a higher"):
        Icd10Range.parse("C20-C18")


def edited(**replacements: str) -> str:
    text = DEFAULT_RULES_PATH.read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def test_an_edited_file_is_read_as_edited() -> None:
    rules = parse_rules(
        edited(
            **{
                'version = "2026.1"': 'version = "2027.1-yinchuan"',
                "capacity_to_pay_share = 0.40": "capacity_to_pay_share = 0.35",
                "2021 = 6000.00": "2021 = 6000.00\n2026 = 7200.50",
            }
        )
    )
    assert rules.version == "2027.1-yinchuan"
    assert rules.catastrophic.capacity_to_pay_share == Decimal("0.35")
    assert rules.impoverishing.line_for(2026) == (2026, Decimal("7200.50"))


def test_every_fault_is_named_by_its_key() -> None:
    text = edited(
        **{
            'version = "2026.1"\n': "",
            "capacity_to_pay_share = 0.40": 'capacity_to_pay_share = "forty"',
            "budget_share_high = 0.25": "budget_share_high = 25",
            'return_to_poverty = ["exited", "monitored"]': 'return_to_poverty = ["exited", "rich"]',
            'icd10 = ["C16"]': 'icd10 = ["stomach"]',
            'unsettled_claims = "count-in-full"': 'unsettled_claims = "guess"',
            "2021 = 6000.00": "twenty = 6000.00",
        }
    )
    with pytest.raises(RuleFileError) as error:
        parse_rules(text, "commission.toml")
    message = str(error.value)
    assert message.startswith("commission.toml: 7 problem(s)")
    for expected in (
        "version: missing",
        "catastrophic-expenditure.capacity_to_pay_share: must be a number, got 'forty'",
        "catastrophic-expenditure.budget_share_high: must be from 0 to 10, got 25",
        "statuses.return_to_poverty: unknown status 'rich'",
        "serious-illness.diseases[3].icd10: 'stomach' is not an ICD-10 code",
        "costs.unsettled_claims: must be one of count-in-full, ignore, got 'guess'",
        "impoverishing-expenditure.monitoring_line.twenty: the key must be a year",
    ):
        assert expected in message
    with pytest.raises(RuleFileError, match="not valid TOML"):
        parse_rules("version = ")


def test_check_rules_command(tmp_path: Path) -> None:
    good = run_health(
        "sqlite+aiosqlite:///unused.db", "poverty", "check-rules", str(DEFAULT_RULES_PATH)
    )
    assert good.returncode == 0 and "rules version 2026.1, valid" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(edited(**{"priority_ratio = 0.50": "priority_ratio = -1"}), encoding="utf-8")
    result = run_health("sqlite+aiosqlite:///unused.db", "poverty", "check-rules", str(bad))
    assert result.returncode != 0 and "medical-bill-alert.priority_ratio" in result.stderr
