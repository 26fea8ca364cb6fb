"""Who holds each patient record (``search_custodian``), as the store keeps it and as the
migration fills it: the clinics that manage the patients a resource belongs to, following
every write of the resource and of its patients. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import select

from health.core.database import Database
from records.indexing import SearchIndexer
from records.store import ResourceStore
from records.tables import resources, search_custodian
from tests.conftest import BACKENDS, alembic_config, fresh_database


def patient(res_id: str, clinic: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {"resourceType": "Patient", "id": res_id, "name": [{"text": res_id}]}
    if clinic:
        data["managingOrganization"] = {"reference": f"Organization/{clinic}"}
    return data


def reading(res_id: str, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": res_id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{subject}"},
    }


def household(res_id: str, members: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Group",
        "id": res_id,
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members],
    }


async def holders(database: Database) -> dict[str, set[str]]:
    """``Type/id`` of every resource with custodians, and their organisation ids."""
    async with database.transaction(write=False) as session:
        rows = (
            await session.execute(
                select(resources.c.res_type, resources.c.res_id, search_custodian.c.org_id).join(
                    search_custodian, search_custodian.c.rid == resources.c.rid
                )
            )
        ).all()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(f"{row.res_type}/{row.res_id}", set()).add(row.org_id)
    return found


async def put(database: Database, *items: dict[str, Any]) -> None:
    async with database.transaction(write=True) as session:
        store = ResourceStore(session, SearchIndexer())
        for item in items:
            await store.update(item["resourceType"], item["id"], item)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_write_of_a_record_or_its_patient_keeps_its_custodians(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    database_url = fresh_database(request, backend, tmp_path)

    async def scenario() -> None:
        database = Database(database_url)
        try:
            # A record written before its patient, in the same transaction and in another.
            await put(database, reading("early", "ma"), patient("ma", "yuanlong"))
            await put(database, reading("later", "yang"))
            assert await holders(database) == {
                "Observation/early": {"yuanlong"},
                "Patient/ma": {"yuanlong"},
            }
            await put(
                database,
                patient("yang", "funing"),
                household("home", ["ma", "yang"]),
                patient("ding", None),
                reading("nobody-s", "ding"),
            )
            expected = {
                "Observation/early": {"yuanlong"},
                "Observation/later": {"funing"},
                "Patient/ma": {"yuanlong"},
                "Patient/yang": {"funing"},
                "Group/home": {"yuanlong", "funing"},
            }
            assert await holders(database) == expected
            # A new name for Yang, at the same clinic: her record stays where it is, also
            # when a reading of hers is written in the same transaction.
            renamed = {**patient("yang", "funing"), "name": [{"text": "杨秀兰"}]}
            await put(database, renamed, reading("third", "yang"))
            expected["Observation/third"] = {"funing"}
            assert await holders(database) == expected
            # Yang moves to her sister's village: her record, and her share of the household.
            await put(database, patient("yang", "yuanlong"))
            expected.update(
                {
                    "Observation/later": {"yuanlong"},
                    "Observation/third": {"yuanlong"},
                    "Patient/yang": {"yuanlong"},
                    "Group/home": {"yuanlong"},
                }
            )
            assert await holders(database) == expected
            # A reading moved to another patient's record goes with it.
            await put(database, reading("early", "ding"))
            del expected["Observation/early"]
            assert await holders(database) == expected
            # Ma deleted: nothing is held for her any more.
            async with database.transaction(write=True) as session:
                await ResourceStore(session, SearchIndexer()).delete("Patient", "ma")
            del expected["Patient/ma"]
            assert await holders(database) == expected
        finally:
            await database.dispose()

    asyncio.run(scenario())
    database = Database(database_url)
    try:
        kept = asyncio.run(holders(database))
    finally:
        asyncio.run(database.dispose())
    # The migration fills the index from what is stored with the same result.
    command.downgrade(alembic_config(database_url), "0012")
    command.upgrade(alembic_config(database_url), "head")
    database = Database(database_url)
    try:
        assert asyncio.run(holders(database)) == kept
    finally:
        asyncio.run(database.dispose())
