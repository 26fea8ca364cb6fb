"""The ``health`` command as an operator runs it, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from health.core.naming import ORGANIZATION_CODE_SYSTEM, TAG_SYSTEM
from tests.conftest import BACKENDS, fresh_database
from tests.records.test_import import run_health
from tests.services import AppServer


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_database(request, request.param, tmp_path)


def total(server: AppServer, path: str, **params: str) -> int:
    response = httpx.get(
        f"{server.url}/fhir/{path}",
        params={**params, "_summary": "count"},
        headers=server.auth_headers(),
    )
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


def test_seed_demo_loads_the_network_once(empty_database: str) -> None:
    first = run_health(empty_database, "seed", "--demo", "--patients", "60")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "already up to date" in first.stdout
    second = run_health(empty_database, "seed", "--demo", "--patients", "60")
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.startswith("demo data: 0 resources written")
    server = AppServer(empty_database).start()
    try:
        assert total(server, "Patient") == 60
        # 10 township centres, 56 village clinics, 3 hospitals and their departments, an insurer.
        assert total(server, "Organization") >= 70
        # Everything the demo writes carries the demo tag, so a deployment can find it.
        assert total(server, "Patient", _tag=f"{TAG_SYSTEM}|demo") == 60
        assert total(server, "Organization", _tag=f"{TAG_SYSTEM}|demo") == total(
            server, "Organization"
        )
        assert total(server, "Patient", identifier="urn:oid:2.16.156.10011.1.3|") == 60
    finally:
        server.stop()


def test_directory_import_loads_and_reloads(empty_database: str, tmp_path: Path) -> None:
    csv = tmp_path / "network.csv"
    csv.write_bytes(
        (
            "机构编码,机构名称,机构类型,上级机构编码,地址,电话,经度,纬度\r\n"
            "640121105201,闽宁镇原隆村卫生室,村卫生室,640121105000,永宁县闽宁镇原隆村,13895000001,106.0312,38.3025\r\n"
            "640121105000,永宁县闽宁镇卫生院,乡镇卫生院,,永宁县闽宁镇福宁街8号,0951-5011234,106.0205,38.3101\r\n"
        ).encode("gb18030")
    )
    for _ in range(2):
        result = run_health(empty_database, "directory", "import", str(csv))
        assert result.returncode == 0, result.stderr[-2000:]
    server = AppServer(empty_database).start()
    try:
        village = httpx.get(
            f"{server.url}/fhir/Organization",
            params={"identifier": f"{ORGANIZATION_CODE_SYSTEM}|640121105201"},
            headers=server.auth_headers(),
        ).json()
        assert village["total"] == 1
        organization = village["entry"][0]["resource"]
        assert organization["name"] == "闽宁镇原隆村卫生室"
        assert organization["meta"]["versionId"] == "1"  # the reload changed nothing
        township = httpx.get(
            f"{server.url}/fhir/{organization['partOf']['reference']}",
            headers=server.auth_headers(),
        ).json()
        assert township["name"] == "永宁县闽宁镇卫生院"
    finally:
        server.stop()


def test_directory_import_reports_bad_rows(empty_database: str, tmp_path: Path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("机构编码,机构名称,机构类型\n640121105201,某卫生室,诊所\n", encoding="utf-8")
    result = run_health(empty_database, "directory", "import", str(csv))
    assert result.returncode != 0
    assert "诊所" in result.stderr
