"""What the recompute leaves behind besides the Flags: the bill table it sums, the log of flag
changes, the follow-up cases, and the registry's export file. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from health.auth import accounts
from health.core.database import Database
from health.poverty.cases import is_case_task, read_case
from health.poverty.casework import list_cases
from health.poverty.rules import load_rules
from health.poverty.service import IllnessPovertyService, RecomputeReport
from health.poverty.tables import poverty_cases, poverty_costs, poverty_flag_changes
from integrations.registry_export import HEADERS
from records.indexing import SearchIndexer
from records.store import ResourceStore
from tests.poverty.factories import House, Town
from tests.records.test_import import run_health

AS_OF = dt.date(2026, 6, 30)


async def rows(database: Database, query: Any) -> list[Any]:
    async with database.transaction(write=False) as session:
        return list((await session.execute(query)).all())


async def recompute(database: Database, indexer: SearchIndexer) -> RecomputeReport:
    return await IllnessPovertyService(database, indexer, load_rules()).recompute_all(as_of=AS_OF)


class TestBillTable:
    async def test_a_bill_s_row_follows_its_every_version(self, database_url: str) -> None:
        town = Town()
        house = town.household("F90001", ["马国军"], income="5000")
        town.eob(
            house.members[0], "2026-03-15", billed="1000.50", basic="600", out_of_pocket="400.5"
        )
        database = Database(database_url)
        indexer = SearchIndexer()
        patient = ""
        try:
            await town.write(database, indexer)
            patient = house.members[0].id or ""
            c = poverty_costs.c
            query = select(c.res_id, c.billed, c.basic, c.out_of_pocket, c.counted).where(
                c.patient_id == patient
            )
            ((eob_id, billed, basic, oop, counted),) = await rows(database, query)
            assert (billed, basic, oop, counted) == (100050, 60000, 40050, True)

            async with database.transaction(write=True) as session:
                store = ResourceStore(session, indexer)
                current = await store.current("ExplanationOfBenefit", eob_id)
                assert current is not None and current.content is not None
                bill = orjson.loads(current.content)
                bill["status"] = "cancelled"
                await store.update("ExplanationOfBenefit", eob_id, bill)
            ((_, _, _, _, counted),) = await rows(database, query)
            assert counted is False

            async with database.transaction(write=True) as session:
                await ResourceStore(session, indexer).delete("ExplanationOfBenefit", eob_id)
            assert await rows(database, query) == []
        finally:
            await database.dispose()

    def test_rebuild_costs_gives_back_the_same_rows(self, database_url: str) -> None:
        async def write_and_read() -> list[Any]:
            town = Town()
            house = town.household("F90002", ["马学梅", "马海龙"], income="8000")
            town.eob(house.members[0], "2026-01-09", billed="300", out_of_pocket="120")
            town.eob(house.members[1], "2025-11-30", billed="80.2", out_of_pocket="80.2")
            town.eob(house.members[1], "2026-02-01", billed="10", status="entered-in-error")
            database = Database(database_url)
            try:
                await town.write(database, SearchIndexer())
            finally:
                await database.dispose()
            return await table()

        async def table() -> list[Any]:
            database = Database(database_url)
            try:
                return sorted(await rows(database, select(poverty_costs)))
            finally:
                await database.dispose()

        before = asyncio.run(write_and_read())
        assert len([r for r in before if r.counted]) >= 2
        assert any(not r.counted and r.not_counted for r in before)
        result = run_health(database_url, "poverty", "rebuild-costs")
        assert result.returncode == 0, result.stderr[-2000:]
        assert "bill amounts rebuilt from" in result.stdout
        assert asyncio.run(table()) == before


@pytest.fixture(scope="module")
def city(database_url: str) -> dict[str, Any]:
    async def build() -> dict[str, Any]:
        town = Town()
        poor = town.household("F91001", ["杨秀兰", "马文斌"], status="monitored", income="5000")
        town.eob(poor.members[0], "2026-04-02", billed="9000", out_of_pocket="9000")
        quiet = town.household("F91002", ["海福成"], income="30000")
        database = Database(database_url)
        indexer = SearchIndexer()
        try:
            await town.write(database, indexer)
            first = await recompute(database, indexer)
            second = await recompute(database, indexer)
            changes = await rows(
                database,
                select(poverty_flag_changes)
                .where(poverty_flag_changes.c.group_id.in_([poor.id, quiet.id]))
                .order_by(poverty_flag_changes.c.seq),
            )
        finally:
            await database.dispose()
        return {
            "poor": poor,
            "quiet": quiet,
            "first": first,
            "second": second,
            "changes": changes,
        }

    return asyncio.run(build())


class TestFlagChangesAndCases:
    def test_every_raised_flag_is_logged_once_with_its_household(
        self, city: dict[str, Any]
    ) -> None:
        poor: House = city["poor"]
        ours = {poor.id, city["quiet"].id}
        logged = city["changes"]
        raised = [c for c in city["first"].changes if c.group_id in ours]
        assert logged and len(logged) == len(raised)
        assert city["second"].changes == []
        assert {row.group_id for row in logged} == {poor.id}
        assert {row.flag_id for row in logged} == {c.flag_id for c in raised}
        assert all(row.action == "raised" for row in logged)
        assert all(
            (row.household_number, row.township, row.village) == ("F91001", "闽宁镇", "原隆村")
            for row in logged
        )
        assert [row.seq for row in logged] == sorted(row.seq for row in logged)

    async def test_a_flagged_household_gets_one_open_case(
        self, city: dict[str, Any], database_url: str
    ) -> None:
        poor: House = city["poor"]
        database = Database(database_url)
        try:
            ours = [poor.id, city["quiet"].id]
            cases = await rows(
                database, select(poverty_cases).where(poverty_cases.c.group_id.in_(ours))
            )
            assert [(c.group_id, c.stage, c.open) for c in cases] == [(poor.id, "identified", True)]
            async with database.transaction(write=False) as session:
                stored = await ResourceStore(session, SearchIndexer()).current(
                    "Task", cases[0].task_id
                )
        finally:
            await database.dispose()
        assert stored is not None and stored.content is not None
        task = orjson.loads(stored.content)
        assert is_case_task(task)
        assert task["for"]["reference"] == f"Group/{poor.id}"
        assert task["focus"]["reference"] in {f"Flag/{r.flag_id}" for r in city["changes"]}
        view = read_case(cases[0].task_id, task)
        assert view.stage == "identified" and view.due_at is not None
        assert view.due_at > view.opened_at

    def test_the_export_writes_the_log_with_the_registry_s_headers(
        self, city: dict[str, Any], database_url: str, tmp_path: Path
    ) -> None:
        logged = city["changes"]
        path = tmp_path / "变更.csv"
        result = run_health(database_url, "registry", "export", str(path))
        assert result.returncode == 0, result.stderr[-2000:]
        assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # Excel reads the Chinese right
        lines = list(csv.reader(io.StringIO(path.read_text("utf-8-sig"))))
        assert tuple(lines[0]) == HEADERS
        seqs = [int(line[0]) for line in lines[1:]]
        assert seqs == sorted(seqs)  # in the order the changes were made
        ours = [line for line in lines[1:] if line[2] == "F91001"]
        assert [int(line[0]) for line in ours] == [row.seq for row in logged]
        assert all(line[6] == "新增预警" and line[4] == "闽宁镇" for line in ours)

        gb = tmp_path / "变更-gb.csv"
        result = run_health(database_url, "registry", "export", str(gb), "--encoding", "gb18030")
        assert result.returncode == 0, result.stderr[-2000:]
        assert gb.read_bytes().decode("gb18030").splitlines()[0].split(",")[0] == "变更序号"

        book = tmp_path / "变更.xlsx"
        after = logged[0].seq
        result = run_health(database_url, "registry", "export", str(book), "--after", str(after))
        assert result.returncode == 0, result.stderr[-2000:]
        sheet = load_workbook(book).active
        assert sheet is not None
        table = list(sheet.iter_rows(values_only=True))
        assert table[0] == HEADERS
        assert all(r[0] > after for r in table[1:])
        assert [r[0] for r in table[1:] if r[2] == "F91001"] == [row.seq for row in logged[1:]]

    def test_an_export_file_of_another_kind_is_refused_by_name(
        self, database_url: str, tmp_path: Path
    ) -> None:
        result = run_health(database_url, "registry", "export", str(tmp_path / "changes.pdf"))
        assert result.returncode == 2
        assert "FILE" in result.stderr and ".csv or .xlsx" in result.stderr


class TestCaseSteps:
    """A township worker's steps on a case, through ``health poverty case-step --as``."""

    def test_a_case_goes_from_identified_to_closed_and_wrong_steps_are_named(
        self, city: dict[str, Any], database_url: str
    ) -> None:
        poor: House = city["poor"]

        suffix = uuid.uuid4().hex[:8]
        worker_user, analyst_user = f"cw-{suffix}", f"an-{suffix}"

        async def case_and_worker() -> tuple[str, str]:
            database = Database(database_url)
            try:
                ((task_id,),) = await rows(
                    database,
                    select(poverty_cases.c.task_id).where(poverty_cases.c.group_id == poor.id),
                )
                async with database.transaction(write=True) as session:
                    store = ResourceStore(session, SearchIndexer())
                    worker = await store.create(
                        {"resourceType": "Practitioner", "name": [{"text": "马小燕"}]}
                    )
                    office = await store.create({"resourceType": "Organization", "name": "卫健委"})
                    for username, right in ((worker_user, True), (analyst_user, False)):
                        await accounts.add_user(
                            session,
                            username=username,
                            role="commission_analyst",
                            organization_id=office.res_id,
                            practitioner_id=worker.res_id if right else None,
                            display_name="马小燕" if right else "分析员",
                            password=None,
                            case_worker=right,
                            now=dt.datetime.now(dt.UTC),
                        )
                return task_id, worker.res_id
            finally:
                await database.dispose()

        task_id, worker = asyncio.run(case_and_worker())

        def step(*args: str, by: str = worker_user) -> Any:
            return run_health(database_url, "poverty", "case-step", task_id, *args, "--as", by)

        refused = step("verified", "--note", "入户核实属实", by=analyst_user)
        assert refused.returncode == 2 and "--as" in refused.stderr
        assert "case-worker right" in refused.stderr
        refused = step("verified")
        assert refused.returncode == 2 and "--note" in refused.stderr
        refused = step("assigned", "--worker", "no-such-worker")
        assert refused.returncode == 2 and "--worker" in refused.stderr
        done = step("assigned", "--worker", worker)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "马小燕" in done.stdout
        done = step("verified", "--note", "入户核实属实")
        assert done.returncode == 0, done.stderr[-2000:]
        refused = step("assisted")
        assert refused.returncode == 2 and "--help-given" in refused.stderr
        refused = step("assisted", "--help-given", "cash")
        assert refused.returncode == 2 and "'cash' is not a kind of help" in refused.stderr
        done = step("assisted", "--help-given", "medical-assistance")
        assert done.returncode == 0, done.stderr[-2000:]
        refused = step("closed")
        assert refused.returncode == 2 and "STAGE" in refused.stderr
        assert "goes on to assisted, monitoring" in refused.stderr
        for stage in ("monitoring", "closed"):
            done = step(stage)
            assert done.returncode == 0, done.stderr[-2000:]
        assert "风险消除" in done.stdout

        async def the_case() -> tuple[Any, Any]:
            database = Database(database_url)
            try:
                (case,) = await rows(
                    database, select(poverty_cases).where(poverty_cases.c.task_id == task_id)
                )
                async with database.transaction(write=False) as session:
                    stored = await ResourceStore(session, SearchIndexer()).current("Task", task_id)
                return case, stored
            finally:
                await database.dispose()

        case, stored = asyncio.run(the_case())
        assert (case.stage, case.open, case.owner_name) == ("closed", False, "马小燕")
        assert case.first_assisted_at is not None and case.closed_at is not None
        assert case.help == "medical-assistance"
        task = orjson.loads(stored.content)
        assert task["status"] == "completed" and task["owner"]["display"] == "马小燕"
        steps = read_case(task_id, task).steps
        assert [s.stage for s in steps] == [
            "identified",
            "assigned",
            "verified",
            "assisted",
            "monitoring",
            "closed",
        ]
        # Each step is the case worker's own, written through the records as them.
        assert {s.author.reference for s in steps[1:]} == {f"Practitioner/{worker}"}
        listed = run_health(database_url, "poverty", "cases", "--all")
        assert listed.returncode == 0 and task_id in listed.stdout and "风险消除" in listed.stdout

    async def test_overdue_cases_are_listed(self, database_url: str) -> None:
        town = Town()
        house = town.household("F92001", ["马玲"], status="monitored", income="5000")
        town.eob(house.members[0], "2026-05-02", billed="9000", out_of_pocket="9000")
        database = Database(database_url)
        indexer = SearchIndexer()
        try:
            await town.write(database, indexer)
            await recompute(database, indexer)
            async with database.transaction(write=False) as session:
                now = dt.datetime.now(dt.UTC)
                soon = await list_cases(session, overdue_at=now)
                later = await list_cases(session, overdue_at=now + dt.timedelta(days=16))
        finally:
            await database.dispose()
        assert house.id not in {c.group_id for c in soon}
        (case,) = [c for c in later if c.group_id == house.id]
        assert case.stage == "identified" and case.household_number == "F92001"
        assert case.overdue(now + dt.timedelta(days=16)) and not case.overdue(now)
