"""Importing the poverty registry's export: CSV in UTF-8 and GB18030, XLSX, and bad rows.

Real files, the real import into SQLite and PostgreSQL, and the households read back over the
FHIR API of a running ``health serve``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from openpyxl import Workbook

from health.core.database import Database
from health.core.naming import HOUSEHOLD_CHARACTERISTIC_SYSTEM, HOUSEHOLD_NUMBER_SYSTEM
from health.poverty.households import household_from_group
from integrations.household_registry import (
    RegistryFileError,
    import_registry,
    parse_registry,
    read_registry_file,
)
from records.importer import process_bundle
from records.indexing import SearchIndexer
from records.validation.resident_id import RESIDENT_ID_SYSTEM
from tests.poverty.factories import new_resident_id
from tests.records.test_import import run_health
from tests.services import AppServer

HEADER = [
    "户编号",
    "乡镇",
    "行政村",
    "姓名",
    "身份证号码",
    "与户主关系",
    "户属性",
    "主要致贫原因",
    "家庭年人均纯收入",
]


def number() -> str:
    return f"6401211052{uuid.uuid4().int % 10**8:08d}"


async def register_patients(database_url: str, people: list[tuple[str, str]]) -> dict[str, str]:
    """Patients for (name, resident id); returns resident id -> Patient id."""
    entries = [
        {
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": resident_id}],
                "name": [{"text": name}],
            },
            "request": {"method": "POST", "url": "Patient"},
        }
        for name, resident_id in people
    ]
    database = Database(database_url)
    try:
        outcome = await process_bundle(
            database,
            SearchIndexer(),
            {"resourceType": "Bundle", "type": "transaction", "entry": entries},
        )
    finally:
        await database.dispose()
    return {
        resident_id: entry["response"]["location"].split("/")[1]
        for (_, resident_id), entry in zip(people, outcome.response["entry"], strict=True)
    }


def write_csv(path: Path, rows: list[list[str]], encoding: str) -> Path:
    path.write_bytes(
        ("\r\n".join(",".join(row) for row in [HEADER, *rows]) + "\r\n").encode(encoding)
    )
    return path


def household(client: httpx.Client, household_number: str) -> dict[str, Any] | None:
    bundle = client.get(
        "Group", params={"identifier": f"{HOUSEHOLD_NUMBER_SYSTEM}|{household_number}"}
    ).json()
    assert bundle["total"] <= 1
    return bundle["entry"][0]["resource"] if bundle.get("entry") else None


def characteristic(group: dict[str, Any], code: str) -> dict[str, Any]:
    return next(
        c
        for c in group["characteristic"]
        if c["code"]["coding"][0]["system"] == HOUSEHOLD_CHARACTERISTIC_SYSTEM
        and c["code"]["coding"][0]["code"] == code
    )


class Case:
    """A file's worth of households: linked, unmatched, conflicting and rejected rows."""

    def __init__(self) -> None:
        self.good = number()
        self.disagreeing = number()
        self.renamed = number()
        self.rejected = number()
        self.head, self.spouse, self.child = (
            new_resident_id("male"),
            new_resident_id("female"),
            new_resident_id("male"),
        )
        self.other, self.renamed_id = new_resident_id("female"), new_resident_id("male")
        valid = new_resident_id("female")
        self.bad_check = valid[:-1] + ("0" if valid[-1] != "0" else "1")

    def rows(self) -> list[list[str]]:
        return [
            [
                self.good,
                "闽宁镇",
                "原隆村",
                "马国军",
                self.head,
                "户主",
                "脱贫户",
                "因病",
                "8650.5",
            ],
            [
                self.good,
                "闽宁镇",
                "原隆村",
                "杨秀兰",
                self.spouse,
                "配偶",
                "脱贫户",
                "因病",
                "8650.5",
            ],
            [
                self.good,
                "闽宁镇",
                "原隆村",
                "马文斌",
                self.child,
                "之子",
                "脱贫户",
                "因病",
                "8650.5",
            ],
            [
                self.disagreeing,
                "闽宁镇",
                "原隆村",
                "丁海",
                self.other,
                "户主",
                "监测户",
                "因残",
                "7000",
            ],
            [
                self.disagreeing,
                "闽宁镇",
                "原隆村",
                "丁小海",
                new_resident_id("male"),
                "之子",
                "一般户",
                "因残",
                "7000",
            ],
            [
                self.renamed,
                "兴泾镇",
                "十里村",
                "海福成",
                self.renamed_id,
                "户主",
                "一般户",
                "",
                "15000",
            ],
            [
                self.rejected,
                "兴泾镇",
                "十里村",
                "纳金花",
                self.bad_check,
                "户主",
                "一般户",
                "",
                "12000",
            ],
        ]


@pytest.fixture
async def case(database_url: str) -> Case:
    case = Case()
    await register_patients(
        database_url, [("马国军", case.head), ("杨秀兰", case.spouse), ("海福全", case.renamed_id)]
    )
    return case


async def test_utf8_file_links_members_and_reports_the_rest(
    case: Case, database_url: str, app_server: AppServer, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "registry.csv", case.rows(), "utf-8-sig")
    database = Database(database_url)
    try:
        report = await import_registry(database, SearchIndexer(), read_registry_file(path))
        again = await import_registry(database, SearchIndexer(), read_registry_file(path))
    finally:
        await database.dispose()

    assert report.households_written == 1 and report.members_linked == 2
    assert [(n.row, n.name) for n in report.unmatched] == [(4, "马文斌")]
    conflicts = {(n.row, n.household_number): n.message for n in report.conflicts}
    assert (
        "户属性" in conflicts[(6, case.disagreeing)]
        and "监测户" in conflicts[(6, case.disagreeing)]
    )
    assert "海福全" in conflicts[(7, case.renamed)]  # the name on record differs
    (rejected,) = report.rejected
    assert (
        rejected.row == 8
        and "身份证号码" in rejected.message
        and "check character" in rejected.message
    )
    assert report.households_skipped == 3
    text = "\n".join(report.lines())
    assert "row 8" in text and "row 7" in text and "row 4" in text

    # Re-importing the same file changes nothing.
    assert again.households_written == 0 and again.households_unchanged == 1
    with httpx.Client(
        base_url=f"{app_server.url}/fhir", headers=app_server.auth_headers(), timeout=30
    ) as client:
        group = household(client, case.good)
        assert group is not None and group["meta"]["versionId"] == "1"
        assert (
            household(client, case.disagreeing) is None and household(client, case.renamed) is None
        )
    assert group["type"] == "person" and group["actual"] is True and group["quantity"] == 3
    assert group["name"] == "马国军户"
    members = group["member"]
    assert [m["extension"][0]["valueCodeableConcept"]["text"] for m in members] == [
        "户主",
        "配偶",
        "之子",
    ]
    assert [m["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] for m in members] == [
        "ONESELF",
        "SPS",
        "SON",
    ]
    assert members[0]["entity"]["reference"].startswith("Patient/")
    assert "reference" not in members[2]["entity"]  # unmatched: kept by identity number
    assert members[2]["entity"]["identifier"] == {"system": RESIDENT_ID_SYSTEM, "value": case.child}
    status = characteristic(group, "registry-status")["valueCodeableConcept"]
    assert status["coding"][0]["code"] == "exited" and status["text"] == "脱贫户"
    assert characteristic(group, "main-poverty-cause")["valueCodeableConcept"]["text"] == "因病"
    income = characteristic(group, "income-per-capita")["valueQuantity"]
    assert income == {
        "value": 8650.5,
        "unit": "元/人·年",
        "system": "urn:iso:std:iso:4217",
        "code": "CNY",
    }
    model = household_from_group(group["id"], group, dt.date(2026, 6, 30))
    assert (
        model.size == 3
        and model.income_per_capita == Decimal("8650.50")
        and model.status == "exited"
    )
    assert model.township == "闽宁镇" and model.village == "原隆村" and len(model.patient_ids) == 2


async def test_gb18030_and_xlsx_give_the_same_households(
    case: Case, database_url: str, tmp_path: Path
) -> None:
    rows = case.rows()[:3]
    utf8 = write_csv(tmp_path / "a.csv", rows, "utf-8")
    gb = write_csv(tmp_path / "b.csv", rows, "gb18030")
    assert gb.read_bytes() != utf8.read_bytes()
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(["永宁县防返贫监测对象信息表"])  # a title above the header, as exports have
    sheet.append(HEADER)
    for row in rows:
        sheet.append([*row[:8], float(row[8])])  # income as a number, as Excel keeps it
    sheet.append(
        [number(), "闽宁镇", "原隆村", "马玲", 640121199001011235, "户主", "一般户", "", 9000]
    )
    workbook.save(tmp_path / "c.xlsx")
    xlsx = tmp_path / "c.xlsx"

    database = Database(database_url)
    try:
        first = await import_registry(database, SearchIndexer(), read_registry_file(gb))
        from_utf8 = await import_registry(database, SearchIndexer(), read_registry_file(utf8))
        from_xlsx = await import_registry(database, SearchIndexer(), read_registry_file(xlsx))
    finally:
        await database.dispose()
    assert first.households_written == 1 and first.members_linked == 2
    assert from_utf8.households_written == 0 and from_utf8.households_unchanged == 1
    assert from_xlsx.households_written == 0 and from_xlsx.households_unchanged == 1
    (stored_as_number,) = from_xlsx.rejected
    assert stored_as_number.row == 6 and "stored as a number" in stored_as_number.message


async def test_a_person_on_record_in_another_household_is_a_conflict(
    case: Case, database_url: str, tmp_path: Path
) -> None:
    database = Database(database_url)
    try:
        await import_registry(
            database,
            SearchIndexer(),
            read_registry_file(write_csv(tmp_path / "a.csv", case.rows()[:3], "utf-8")),
        )
        moved = number()
        report = await import_registry(
            database,
            SearchIndexer(),
            read_registry_file(
                write_csv(
                    tmp_path / "b.csv",
                    [
                        [
                            moved,
                            "闽宁镇",
                            "原隆村",
                            "杨秀兰",
                            case.spouse,
                            "户主",
                            "一般户",
                            "",
                            "9000",
                        ]
                    ],
                    "utf-8",
                )
            ),
        )
    finally:
        await database.dispose()
    (conflict,) = report.conflicts
    assert conflict.row == 2 and case.good in conflict.message
    assert report.households_written == 0


def test_bad_files_say_what_is_wrong(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    missing.write_text("户编号,姓名,身份证号码\n1,马国军,110101195001010011\n", encoding="utf-8")
    with pytest.raises(RegistryFileError) as error:
        parse_registry(read_registry_file(missing))
    assert "missing column 乡镇" in str(error.value) and "家庭年人均纯收入" in str(error.value)

    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x81\x30\x81\xff\xfe\x00garbage")
    with pytest.raises(RegistryFileError, match="neither UTF-8 nor GB18030"):
        read_registry_file(binary)

    no_header = tmp_path / "no-header.csv"
    no_header.write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    with pytest.raises(RegistryFileError, match="no header row"):
        parse_registry(read_registry_file(no_header))

    values = write_csv(
        tmp_path / "values.csv",
        [
            [
                "H1",
                "闽宁镇",
                "原隆村",
                "马国军",
                new_resident_id(),
                "户长",
                "富裕户",
                "因穷",
                "八千",
            ],
            ["H2", "闽宁镇", "原隆村", "", new_resident_id(), "户主", "一般户", "", "-5"],
        ],
        "utf-8",
    )
    parsed = parse_registry(read_registry_file(values))
    assert parsed.rows == []
    first, second = parsed.rejected
    assert first.row == 2 and second.row == 3
    for expected in (
        "与户主关系",
        "户长",
        "户属性",
        "富裕户",
        "主要致贫原因",
        "因穷",
        "家庭年人均纯收入",
        "八千",
    ):
        assert expected in first.message
    assert "姓名: missing" in second.message and "-5" in second.message


def test_the_command_prints_the_report_and_fails_when_households_were_left_out(
    database_url: str, tmp_path: Path
) -> None:
    good = [
        [
            number(),
            "闽宁镇",
            "原隆村",
            "马学梅",
            new_resident_id("female"),
            "户主",
            "脱贫户",
            "因学",
            "9100",
        ]
    ]
    bad = [[number(), "闽宁镇", "原隆村", "马海龙", "123", "户主", "脱贫户", "因学", "9100"]]
    ok = run_health(
        database_url, "registry", "import", str(write_csv(tmp_path / "ok.csv", good, "gb18030"))
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "households written 1" in ok.stdout and "1 unmatched" in ok.stdout
    failed = run_health(
        database_url, "registry", "import", str(write_csv(tmp_path / "bad.csv", bad, "utf-8"))
    )
    assert failed.returncode == 1
    assert "row 2" in failed.stdout and "must be 18 characters" in failed.stdout
    unreadable = run_health(database_url, "registry", "import", str(tmp_path / "missing-file.csv"))
    assert unreadable.returncode != 0
