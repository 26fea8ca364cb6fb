"""Importing a deployment's clinic directory from CSV: encodings, headers, the bundle, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from health.core.naming import LOCATION_CODE_SYSTEM, ORGANIZATION_CODE_SYSTEM
from integrations.directory_csv import (
    DirectoryFileError,
    directory_bundle_from_csv,
    directory_bundle_from_rows,
)

CHINESE_HEADER = "机构编码,机构名称,机构类型,上级机构编码,地址,电话,经度,纬度"
ENGLISH_HEADER = "code,name,kind,parent_code,address,phone,longitude,latitude"
# The village clinic comes before its township centre: the order must not matter.
NETWORK_ROWS = [
    "640121105201,闽宁镇原隆村卫生室,村卫生室,640121105000,永宁县闽宁镇原隆村,13895000001,106.0312,38.3025",
    "640121105000,永宁县闽宁镇卫生院,乡镇卫生院,,永宁县闽宁镇福宁街8号,0951-5011234,106.0205,38.3101",
    "640100H01,银川市第一人民医院,医院,,兴庆区利群西街2号,0951-6192000,106.262,38.487",
    "640100H01-D01,心血管内科,科室,640100H01,,,,",
]


def write(path: Path, lines: list[str], encoding: str) -> Path:
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
    return path


def by_identifier(
    bundle: dict[str, Any], resource_type: str, system: str
) -> dict[str, dict[str, Any]]:
    return {
        entry["resource"]["identifier"][0]["value"]: entry
        for entry in bundle["entry"]
        if entry["resource"]["resourceType"] == resource_type
        and entry["resource"]["identifier"][0]["system"] == system
    }


def test_utf8_with_bom_and_chinese_headers(tmp_path: Path) -> None:
    path = write(tmp_path / "directory.csv", [CHINESE_HEADER, *NETWORK_ROWS], "utf-8-sig")
    bundle = directory_bundle_from_csv(path)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    organizations = by_identifier(bundle, "Organization", ORGANIZATION_CODE_SYSTEM)
    locations = by_identifier(bundle, "Location", LOCATION_CODE_SYSTEM)
    assert set(organizations) == {"640121105201", "640121105000", "640100H01", "640100H01-D01"}
    assert set(locations) == {
        "640121105201",
        "640121105000",
        "640100H01",
    }  # no Location per department

    village = organizations["640121105201"]
    assert village["request"] == {
        "method": "PUT",
        "url": f"Organization?identifier={ORGANIZATION_CODE_SYSTEM}|640121105201",
    }
    assert village["resource"]["name"] == "闽宁镇原隆村卫生室"
    assert village["resource"]["type"][0]["text"] == "村卫生室"
    assert village["resource"]["partOf"]["reference"] == organizations["640121105000"]["fullUrl"]
    assert (
        organizations["640100H01-D01"]["resource"]["partOf"]["reference"]
        == organizations["640100H01"]["fullUrl"]
    )
    assert village["resource"]["telecom"][0]["value"] == "13895000001"

    location = locations["640121105201"]
    assert location["request"]["url"] == f"Location?identifier={LOCATION_CODE_SYSTEM}|640121105201"
    assert location["resource"]["position"] == {"longitude": 106.0312, "latitude": 38.3025}
    assert location["resource"]["address"]["text"] == "永宁县闽宁镇原隆村"
    assert location["resource"]["managingOrganization"]["reference"] == village["fullUrl"]

    for entry in bundle["entry"]:
        get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
    get_fhir_model_class("Bundle").model_validate(bundle)


def test_gb18030_with_english_headers_gives_the_same_bundle(tmp_path: Path) -> None:
    chinese = directory_bundle_from_csv(
        write(tmp_path / "a.csv", [CHINESE_HEADER, *NETWORK_ROWS], "utf-8")
    )
    english = directory_bundle_from_csv(
        write(tmp_path / "b.csv", [ENGLISH_HEADER, *NETWORK_ROWS], "gb18030")
    )
    assert english == chinese
    names = [
        e["resource"]["name"]
        for e in english["entry"]
        if e["resource"]["resourceType"] == "Organization"
    ]
    assert "银川市第一人民医院" in names


def test_english_kind_names_and_reimport_is_identical(tmp_path: Path) -> None:
    rows = [
        "T1,兴泾镇卫生院,township-health-centre,,,,,",
        "V1,兴泾镇十里村卫生室,village-clinic,T1,,,,",
        "",  # a blank line, as spreadsheets leave
    ]
    path = write(tmp_path / "d.csv", [ENGLISH_HEADER, *rows], "utf-8")
    first, second = directory_bundle_from_csv(path), directory_bundle_from_csv(path)
    assert first == second  # the same fullUrls and requests: re-importing changes nothing
    kinds = [
        e["resource"]["type"][0]["coding"][0]["code"]
        for e in first["entry"]
        if e["resource"]["resourceType"] == "Organization"
    ]
    assert kinds == ["township-health-centre", "village-clinic"]


def test_every_problem_is_reported_with_its_row_and_column(tmp_path: Path) -> None:
    rows = [
        "T1,兴泾镇卫生院,乡镇卫生院,,,,,",  # row 2, fine
        "T2,某某诊所,诊所,,,,,",  # row 3: unknown kind
        ",无编码卫生室,村卫生室,T1,,,,",  # row 4: missing code
        "T1,重复卫生院,乡镇卫生院,,,,,",  # row 5: duplicate code
        "V9,孤儿卫生室,村卫生室,T404,,,,",  # row 6: parent not in file
        "V8,颠倒卫生室,村卫生室,T1,,,38.5,106.2",  # row 7: longitude and latitude swapped
        "V7,无名,村卫生室,,,,,",  # row 8: a village clinic without its township
        "D1,内科,科室,T1,,,,",  # row 9: a department under a township centre
        "V6,,村卫生室,T1,,,abc,38.4",  # row 10: missing name, longitude not a number
    ]
    path = write(tmp_path / "bad.csv", [CHINESE_HEADER, *rows], "gb18030")
    with pytest.raises(DirectoryFileError) as caught:
        directory_bundle_from_csv(path)
    error = caught.value
    assert isinstance(error, ValueError)
    message = str(error)
    assert "bad.csv" in message
    expected = [
        ("row 3, column 机构类型", "诊所"),
        ("row 4, column 机构编码", "missing code"),
        ("row 5, column 机构编码", "duplicate code 'T1' (first on row 2)"),
        ("row 6, column 上级机构编码", "'T404' is not in the file"),
        ("row 7, column 经度", "longitude 38.5 and latitude 106.2 look swapped"),
        ("row 8, column 上级机构编码", "乡镇卫生院"),
        ("row 9, column 上级机构编码", "医院"),
        ("row 10, column 机构名称", "missing name"),
        ("row 10, column 经度", "'abc' is not a number"),
    ]
    for where, what in expected:
        assert any(where in problem and what in problem for problem in error.problems), (
            where,
            message,
        )
    assert len(error.problems) == len(expected)
    assert error.problems == sorted(error.problems, key=lambda p: int(p.split(",")[0].split()[1]))
    assert "row 2" not in message.replace("first on row 2", "")


def test_missing_required_columns_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "cols.csv", ["机构名称,地址", "闽宁镇卫生院,闽宁镇"], "utf-8")
    with pytest.raises(DirectoryFileError) as caught:
        directory_bundle_from_csv(path)
    assert "row 1: missing column 机构编码 / code" in str(caught.value)
    assert "row 1: missing column 机构类型 / kind" in str(caught.value)


def test_rows_can_be_given_without_a_file() -> None:
    bundle = directory_bundle_from_rows(
        [
            ["code", "name", "kind", "parent_code"],
            ["H9-D1", "骨伤科", "department", "H9"],
            ["H9", "银川市中医医院", "医院", ""],
        ]
    )
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "PUT", "PUT"]
    with pytest.raises(DirectoryFileError, match="no clinic rows"):
        directory_bundle_from_rows([["code", "name", "kind"]])
