"""Who holds each patient record: the ``search_custodian`` index, kept by the store.

A resource in a patient's record (her Patient compartment) is held by the organisations that
manage her (``Patient.managingOrganization``, in FHIR "the custodian of the patient
record"). Clinics see the records they hold, so the question every clinical read asks is
"is this row held by one of these clinics?": with this index it is one indexed equality on
the row itself, where before it was a lookup of the row's patients among all the clinics'
patients, which cost as much as the clinics have patients for every row a search looked at.

Two kinds of write change the index. A resource written (created, updated, reindexed) gets
the custodians of the patients it now belongs to. A Patient written or deleted passes her
custodians to everything in her record, already stored or written in the same transaction,
so a patient who moves to another clinic takes her whole record along, and a record written
before its patient (a Bundle in any order, an import) is held once she is.

On PostgreSQL a write takes a share lock on the rows of the patients whose custodians it
copies, so a concurrent move of one of those patients (which locks her row for update) waits
for it, or it for the move, and neither copies an organisation the other just replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import and_, delete, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from health.core.database import insert_rows
from records.tables import resources, search_compartment, search_custodian, search_reference

#: The compartment whose owners' organisations are the custodians.
COMPARTMENT = "Patient"
#: How many rids one statement names (SQLite allows 32,766 parameters a statement).
CHUNK = 5000


def fill_all() -> Any:
    """INSERT of every resource's custodian rows into an empty ``search_custodian`` (a
    migration's; over the whole store the planner's hash joins are the right plan)."""
    member = search_compartment
    patient = resources.alias("patient")
    managing = search_reference.alias("managing")
    rows = (
        select(member.c.rid, member.c.res_type, literal(COMPARTMENT), managing.c.target_id)
        .distinct()
        .select_from(
            member.join(
                patient,
                and_(
                    patient.c.res_type == "Patient",
                    patient.c.res_id == member.c.owner_id,
                    patient.c.deleted.is_(False),
                ),
            ).join(managing, _managing(patient, managing))
        )
        .where(member.c.param == COMPARTMENT)
    )
    return insert(search_custodian).from_select(["rid", "res_type", "param", "org_id"], rows)


async def keep(
    session: AsyncSession,
    written: Sequence[tuple[int, str, Iterable[str]]],
    patients: Iterable[str],
    held_by: Mapping[str, frozenset[str]] | None = None,
) -> None:
    """Give the resources ``written`` — (rid, type, the patients whose records it is in)
    each, just indexed, their old custodian rows gone — the custodians of those patients,
    and pass the custodians of the Patients ``patients`` (ids just written or deleted) to
    everything in their records.

    ``held_by``: the organisations that managed some of ``patients`` before this write. A
    patient still managed by the same ones passes nothing: her record's rows stand (a
    change of her address rewrote all of them, 72-560 for the first 20 Synthea patients).

    The rows are made here from the patients' organisations, looked up by id: a statement
    joining the compartment index to the patients leaves the choice of where to start to
    the planner, which started from every patient of the city (450 ms for one audit event).
    """
    members: dict[int, tuple[str, set[str]]] = {
        rid: (res_type, set(owners)) for rid, res_type, owners in written
    }
    before = held_by or {}
    organizations = await organizations_of(session, sorted(before))
    moved = [
        p
        for p in sorted(set(patients))
        if p not in before or frozenset(organizations.get(p, ())) != before[p]
    ]
    for part in _chunks(moved):
        rows = await session.execute(
            select(
                search_compartment.c.rid,
                search_compartment.c.res_type,
                search_compartment.c.owner_id,
            ).where(
                search_compartment.c.param == COMPARTMENT,
                search_compartment.c.owner_id.in_(part),
            )
        )
        stale: set[int] = set()
        for row in rows:
            if row.rid not in members:
                stale.add(row.rid)
            members.setdefault(row.rid, (row.res_type, set()))
        for rids in _chunks(sorted(stale)):
            await session.execute(delete(search_custodian).where(search_custodian.c.rid.in_(rids)))
            # Whose records they are besides: their other patients hold them too.
            others = await session.execute(
                select(search_compartment.c.rid, search_compartment.c.owner_id).where(
                    search_compartment.c.param == COMPARTMENT,
                    search_compartment.c.rid.in_(rids),
                )
            )
            for other in others:
                members[other.rid][1].add(other.owner_id)
    owners = {owner for _, found in members.values() for owner in found}
    organizations.update(await organizations_of(session, sorted(owners - before.keys())))
    held = [
        {"rid": rid, "res_type": res_type, "param": COMPARTMENT, "org_id": org}
        for rid, (res_type, found) in sorted(members.items())
        for org in sorted({o for owner in found for o in organizations.get(owner, ())})
    ]
    if held:
        await insert_rows(session, search_custodian, held)


async def organizations_of(session: AsyncSession, patients: Sequence[str]) -> dict[str, set[str]]:
    """The managing organisations of these Patients (ids), the deleted having none. On
    PostgreSQL their rows are share-locked until the transaction ends (see the module)."""
    found: dict[str, set[str]] = {}
    postgresql = session.bind is not None and session.bind.dialect.name == "postgresql"
    patient = resources.alias("patient")
    managing = search_reference.alias("managing")
    for part in _chunks(patients):
        statement = (
            select(patient.c.res_id, managing.c.target_id)
            .select_from(patient.outerjoin(managing, _managing(patient, managing)))
            .where(
                patient.c.res_type == "Patient",
                patient.c.res_id.in_(part),
                patient.c.deleted.is_(False),
            )
        )
        if postgresql:
            statement = statement.with_for_update(read=True, of=patient)
        for row in await session.execute(statement):
            if row.target_id is not None:
                found.setdefault(row.res_id, set()).add(row.target_id)
    return found


def _managing(patient: Any, managing: Any) -> Any:
    """The join of a Patient's row to its index rows naming her managing organisations."""
    return and_(
        managing.c.rid == patient.c.rid,
        managing.c.res_type == "Patient",
        managing.c.param == "organization",
        managing.c.target_type == "Organization",
        managing.c.target_id.is_not(None),
    )


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
