"""The ICD-10 list the diagnosis picker searches: the village list shipped with the service,
and a deployment's national edition loaded with ``health icd10 import``."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from health.demo.clinical import DISEASES
from health.terminology.icd10 import (
    VILLAGE_LIST,
    Icd10FileError,
    concepts_from_csv,
    village_list,
)
from tests.conftest import BACKENDS
from tests.services import AppServer
from tests.web.conftest import Session, WebApp, in_thread


class TestVillageList:
    def test_holds_every_code_the_demo_writes_with_the_same_chinese_name(self) -> None:
        catalogue = village_list()
        for disease in DISEASES.values():
            concept = catalogue.get(disease.icd10)
            assert concept is not None, disease.icd10
            assert concept.name_zh == disease.display

    def test_is_several_hundred_checked_codes(self) -> None:
        rows = list(csv.DictReader(VILLAGE_LIST.open(encoding="utf-8")))
        assert 300 <= len(rows) == len(village_list())
        codes = [r["code"] for r in rows]
        assert codes == sorted(codes) and len(set(codes)) == len(codes)
        assert all(r["name_zh"] and r["name_en"] for r in rows)

    @pytest.mark.parametrize(
        ("query", "code"),
        [
            ("I10", "I10"),
            ("i10", "I10"),
            ("e119", "E11.9"),
            ("高血压", "I10"),
            ("糖尿病", "E11.9"),
            ("gxy", "I10"),
            ("tnb", "E11.9"),
            ("gaoxueya", "I10"),
            ("hypertension", "I10"),
            ("chronic obstructive", "J44.9"),
            ("感冒", "J00"),
        ],
    )
    def test_finds_by_code_chinese_pinyin_and_english(self, query: str, code: str) -> None:
        assert code in [c.code for c in village_list().search(query)]

    def test_an_exact_code_comes_first(self) -> None:
        assert village_list().search("J44.9")[0].code == "J44.9"
        assert village_list().search("nonsense words") == []


class TestReadingAFile:
    def test_gb18030_with_chinese_headers(self) -> None:
        text = "疾病编码,疾病名称,英文名称\nI10.x00,原发性高血压,Essential hypertension\n"
        concepts = concepts_from_csv(text.encode("gb18030"))
        assert [(c.code, c.name_zh, c.name_en) for c in concepts] == [
            ("I10.x00", "原发性高血压", "Essential hypertension")
        ]

    def test_every_faulty_row_is_named(self) -> None:
        text = "code,name\nI10,高血压\nnot-a-code,某病\nE11.9,\nI10,重复\n"
        with pytest.raises(Icd10FileError) as raised:
            concepts_from_csv(text.encode())
        problems = raised.value.problems
        assert problems[0].startswith("row 3:") and "not an ICD-10 code" in problems[0]
        assert problems[1].startswith("row 4:") and "no Chinese name" in problems[1]
        assert problems[2].startswith("row 5:") and "already on row 2" in problems[2]

    def test_a_file_without_the_name_column_is_refused(self) -> None:
        with pytest.raises(Icd10FileError, match="row 1: no 编码"):
            concepts_from_csv("名称\n高血压\n".encode())


@pytest.fixture(scope="module", params=BACKENDS)
def lone_web(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebApp]:
    from health.cli import run_migrations
    from tests.services import PostgresServer

    folder = tmp_path_factory.mktemp(f"icd10-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{folder / 'health.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = in_thread(postgres.create_database, f"health_icd10_{folder.name[-8:]}")
    in_thread(run_migrations, url)
    server = AppServer(url)
    server.cli("seed", "--demo", "--patients", "0")
    server.start()
    try:
        yield WebApp(server, request.param, None, "")  # type: ignore[arg-type]
    finally:
        server.stop()


def test_a_national_edition_replaces_the_village_list_in_running_servers(
    lone_web: WebApp, tmp_path: Path
) -> None:
    session = Session(lone_web, "village-doctor")
    before = session.http.get("/icd10", params={"q": "原发性"}).json()
    assert [m["code"] for m in before] == ["I10"]

    edition = tmp_path / "国家临床版2.0.csv"
    edition.write_bytes(
        (
            "疾病编码,疾病名称\nI10.x00,原发性高血压\nI10.x00x002,高血压1级\nE11.900,2型糖尿病\n"
        ).encode("gb18030")
    )
    output = lone_web.server.cli("icd10", "import", str(edition), "--title", "国家临床版2.0")
    assert "3 codes" in output
    after = session.http.get("/icd10", params={"q": "gxy"}).json()
    assert [m["code"] for m in after] == ["I10.x00x002", "I10.x00"]
    assert session.http.get("/icd10", params={"q": "E11.900"}).json()[0]["zh"] == "2型糖尿病"
    session.close()


def test_a_faulty_file_loads_nothing_and_says_which_rows(lone_web: WebApp, tmp_path: Path) -> None:
    faulty = tmp_path / "bad.csv"
    faulty.write_text("code,name_zh\nI10,高血压\n12345,错误\n", encoding="utf-8")
    done = lone_web.server.run("icd10", "import", str(faulty))
    assert done.returncode != 0
    assert "row 3: code '12345' is not an ICD-10 code" in done.stderr
