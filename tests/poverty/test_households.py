"""The rows the store keeps for the recompute, and the recomputes that read them instead of the
JSON: household records follow every version of the Group — members added, removed or
leaving on a day, a new registry status, deletion — and a recompute after the change sees
the household as it now is; each RiskAssessment's evidence digest follows it, and a flag
without one is read and compared. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic import command
from sqlalchemy import delete, select

from health.core.database import Database
from health.poverty import repository
from health.poverty import service as service_module
from health.poverty.flags import evidence_digest, flag_meta
from health.poverty.households import HouseholdRecord, read_household
from health.poverty.rules import load_rules
from health.poverty.service import IllnessPovertyService, RecomputeReport
from health.poverty.tables import (
    poverty_assessments,
    poverty_flags,
    poverty_household_members,
    poverty_households,
)
from integrations.household_registry import household_characteristics
from records.indexing import SearchIndexer
from records.store import Change, ResourceStore
from tests.conftest import BACKENDS, alembic_config, fresh_database
from tests.poverty.factories import House, Town

AS_OF = dt.date(2026, 6, 30)
CHRONIC, BILL = "chronic-burden", "medical-bill-alert"


async def stored_group(database: Database, house: House) -> dict[str, Any]:
    async with database.transaction(write=False) as session:
        current = await ResourceStore(session, SearchIndexer()).current("Group", house.id or "")
    assert current is not None and current.content is not None
    return dict(orjson.loads(current.content))


async def change_group(
    database: Database, house: House, edit: Callable[[dict[str, Any]], None]
) -> list[Change]:
    """Read the household's Group, ``edit`` it and store it as a new version."""
    group = await stored_group(database, house)
    edit(group)
    async with database.transaction(write=True) as session:
        store = ResourceStore(session, SearchIndexer())
        await store.update("Group", house.id or "", group)
        return list(store.changes)


async def record_of(database: Database, house: House) -> HouseholdRecord | None:
    async with database.transaction(write=False) as session:
        records = await repository.household_records(
            session, poverty_households.c.group_id == house.id
        )
    return records[0] if records else None


async def assert_record_is_the_group_s(database: Database, house: House) -> HouseholdRecord:
    """The record read from the rows is what the Group says, on any day."""
    record = await record_of(database, house)
    assert record is not None
    group = await stored_group(database, house)
    from_json = read_household(house.id or "", group)
    for day in (dt.date(2025, 12, 31), AS_OF, dt.date(2026, 12, 31)):
        from_rows, expected = record.on(day), from_json.on(day)
        assert flag_meta(from_rows) == flag_meta(expected)
        from_rows.meta = expected.meta = {}
        assert from_rows == expected
    return record


def set_status(status: str) -> Callable[[dict[str, Any]], None]:
    def edit(group: dict[str, Any]) -> None:
        for characteristic in group["characteristic"]:
            if characteristic["code"]["coding"][0]["code"] == "registry-status":
                (replacement,) = [
                    c
                    for c in household_characteristics(status)
                    if c["code"]["coding"][0]["code"] == "registry-status"
                ]
                characteristic.update(replacement)

    return edit


async def active_rules(database: Database, house: House) -> set[str]:
    f = poverty_flags.c
    async with database.transaction(write=False) as session:
        rows = await session.execute(
            select(f.rule).where(f.group_id == house.id, f.active.is_(True))
        )
        return {row.rule for row in rows}


def service(database: Database) -> IllnessPovertyService:
    return IllnessPovertyService(database, SearchIndexer(), load_rules())


class TestHouseholdRecord:
    async def test_the_rows_follow_the_group_s_every_version(self, database_url: str) -> None:
        town = Town()
        house = town.household("H70001", ["马国军", "杨秀兰"], status="exited", income="6000")
        database = Database(database_url)
        try:
            await town.write(database, SearchIndexer())
            record = await assert_record_is_the_group_s(database, house)
            assert (record.status, record.income_per_capita, record.quantity) == (
                "exited",
                6000,
                2,
            )
            assert [e.member.name for e in record.enrolments] == ["马国军", "杨秀兰"]

            # A member leaves at the end of March, a newborn joins, one is marked inactive,
            # the household is monitored now and carries a security label.
            def reshape(group: dict[str, Any]) -> None:
                head, wife = group["member"]
                wife["period"] = {"start": "2020-01-01", "end": "2026-03-31T12:00:00+08:00"}
                baby = {**head, "entity": {"display": "马小宝"}, "period": {"start": "2026-05-01"}}
                gone = {**head, "entity": {"display": "马老汉"}, "inactive": True}
                group["member"] = [head, wife, baby, gone]
                group["quantity"] = 3
                group["meta"] = {"security": [{"system": "urn:test", "code": "V"}]}

            await change_group(database, house, reshape)
            await change_group(database, house, set_status("monitored"))
            record = await assert_record_is_the_group_s(database, house)
            assert record.status == "monitored"
            assert [(e.member.name, e.start, e.end) for e in record.enrolments] == [
                ("马国军", None, None),
                ("杨秀兰", "2020-01-01", "2026-03-31"),
                ("马小宝", "2026-05-01", None),
            ]
            assert [m.name for m in record.on(AS_OF).members] == ["马国军", "马小宝"]
            assert record.on(dt.date(2026, 3, 1)).size == 3  # the Group's quantity
            assert flag_meta(record.on(AS_OF))["security"] == [{"system": "urn:test", "code": "V"}]

            # No longer a household (no person group): no rows, as when it is deleted.
            await change_group(database, house, lambda group: group.update(type="animal"))
            assert await record_of(database, house) is None
            await change_group(database, house, lambda group: group.update(type="person"))
            assert await record_of(database, house) is not None
            async with database.transaction(write=True) as session:
                await ResourceStore(session, SearchIndexer()).delete("Group", house.id or "")
            assert await record_of(database, house) is None
            async with database.transaction(write=False) as session:
                m = poverty_household_members.c
                left = await session.execute(select(m.id).where(m.group_id == house.id))
                assert left.all() == []
        finally:
            await database.dispose()


class TestRecomputeAfterAHouseholdChange:
    async def test_a_new_status_and_a_member_who_leaves_change_the_flags(
        self, database_url: str
    ) -> None:
        town = Town()
        # Hypertension without a family doctor: a chronic burden for a monitored household
        # only. The wife's bill is over the ordinary household's medical-bill threshold.
        house = town.household("H70002", ["海福成", "丁秀英"], income="20000")
        town.condition(house.members[0], "I10")
        town.eob(house.members[1], "2026-05-02", billed="40000", out_of_pocket="20000")
        database = Database(database_url)
        try:
            await town.write(database, SearchIndexer())
            first = await service(database).recompute_all(as_of=AS_OF)
            assert await active_rules(database, house) >= {BILL}
            assert CHRONIC not in await active_rules(database, house)
            assert first.raised[BILL] >= 1

            # The registry now monitors the household: the full recompute reads the new status.
            await change_group(database, house, set_status("monitored"))
            full = await service(database).recompute_all(as_of=AS_OF)
            assert full.raised[CHRONIC] == 1
            assert CHRONIC in await active_rules(database, house)

            # The wife left the household on 1 April: her May bill is not the household's,
            # as the listener's recompute of the changed Group finds.
            def leaves(group: dict[str, Any]) -> None:
                group["member"][1]["period"] = {"end": "2026-03-31"}

            changes = await change_group(database, house, leaves)
            report: RecomputeReport = await service(database).recompute_for_changes(
                changes, as_of=AS_OF
            )
            assert report.deactivated[BILL] == 1
            assert BILL not in await active_rules(database, house)
            assert CHRONIC in await active_rules(database, house)
            again = await service(database).recompute_all(as_of=AS_OF)
            assert [c for c in again.changes if c.group_id == house.id] == []
        finally:
            await database.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_migration_fills_the_records_from_the_stored_groups(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    database_url = fresh_database(request, backend, tmp_path)
    town = Town()
    one = town.household("H70003", ["马学梅"], status="monitored", income=None)
    two = town.household("H70004", ["马海龙", "马玲", "马文斌"], status="exited", income="7000")

    async def write() -> None:
        database = Database(database_url)
        try:
            await town.write(database, SearchIndexer())
            await change_group(
                database, two, lambda group: group["member"][2].update(period={"end": "2025-12-31"})
            )
        finally:
            await database.dispose()

    async def table_rows() -> list[Any]:
        database = Database(database_url)
        try:
            for house in (one, two):
                await assert_record_is_the_group_s(database, house)
            async with database.transaction(write=False) as session:
                households = (await session.execute(select(poverty_households))).all()
                members = (
                    await session.execute(
                        select(*(c for c in poverty_household_members.c if c.name != "id"))
                    )
                ).all()
        finally:
            await database.dispose()
        return sorted(households) + sorted(members, key=lambda r: (r.rid, r.position))

    asyncio.run(write())
    before = asyncio.run(table_rows())
    command.downgrade(alembic_config(database_url), "0011")
    command.upgrade(alembic_config(database_url), "head")
    assert asyncio.run(table_rows()) == before


class TestEvidenceDigest:
    async def test_a_flag_s_evidence_is_told_by_its_digest_or_read_without_one(
        self, database_url: str
    ) -> None:
        town = Town()
        house = town.household("H70005", ["冶金花"], status="exited", income="5000")
        town.eob(house.members[0], "2026-04-10", billed="20000", out_of_pocket="10000")
        database = Database(database_url)
        a = poverty_assessments.c
        try:
            await town.write(database, SearchIndexer())
            first = await service(database).recompute_all(as_of=AS_OF)
            assert first.raised[BILL] == 1
            async with database.transaction(write=False) as session:
                flags = (await repository.active_flags_of_groups(session, [house.id or ""]))[
                    house.id or ""
                ]
                await repository.read_flags(session, flags)
            for flag in flags:
                assert flag.assessment is not None
                assert flag.evidence == evidence_digest(flag.assessment)

            # Without the digests (rows of another version's making, say) the evidence is
            # read and compared: the same, nothing is written.
            async with database.transaction(write=True) as session:
                ids = [f.assessment_id for f in flags]
                await session.execute(delete(poverty_assessments).where(a.assessment_id.in_(ids)))
            again = await service(database).recompute_all(as_of=AS_OF)
            assert [c for c in again.changes if c.group_id == house.id] == []

            # A new bill changes the evidence: the assessment is rewritten, its digest too.
            town.eob(house.members[0], "2026-05-10", billed="2000", out_of_pocket="1000")
            changes = await town.write(database, SearchIndexer())
            report = await service(database).recompute_for_changes(changes, as_of=AS_OF)
            assert report.updated[BILL] == 1
            async with database.transaction(write=False) as session:
                flags = (await repository.active_flags_of_groups(session, [house.id or ""]))[
                    house.id or ""
                ]
                await repository.read_flags(session, flags)
            bill = next(f for f in flags if f.rule == BILL)
            assert bill.assessment is not None and bill.evidence == evidence_digest(bill.assessment)
        finally:
            await database.dispose()


class TestScreeningInRanges:
    async def test_a_city_screened_a_few_households_at_a_time_gets_the_same_flags(
        self, database_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        town = Town()
        houses = [
            town.household(f"H7010{i}", ["马国军", "杨秀兰"], status="exited", income="20000")
            for i in range(4)
        ]
        for house in houses[::2]:
            town.eob(house.members[1], "2026-05-02", billed="30000", out_of_pocket="10000")
        database = Database(database_url)
        try:
            await town.write(database, SearchIndexer())
            monkeypatch.setattr(service_module, "SCREENED_AT_ONCE", 3)
            (part,) = await service(database).parts(1)
            assert len(part.ranges) >= 2  # the test's four households at least
            report = await service(database).recompute_all(as_of=AS_OF)
            raised = {c.group_id for c in report.changes if c.rule == BILL}
            assert raised >= {h.id for h in houses[::2]}
            assert not raised & {h.id for h in houses[1::2]}
            monkeypatch.undo()
            again = await service(database).recompute_all(as_of=AS_OF)
            assert [c for c in again.changes if c.group_id in {h.id for h in houses}] == []
        finally:
            await database.dispose()
