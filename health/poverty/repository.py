"""Every query the illness-poverty service makes, over the record store's tables.

The store's search index tables (``records.tables``) are derived from the official
SearchParameters and kept in the same transaction as each write, so "the bills of these
patients since that day" or "the active diagnoses in these ICD-10 categories" are indexed
lookups; only the resources that answer are read and parsed. Reads see the current version
of each resource and skip deleted ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from health.core.naming import (
    FAMILY_DOCTOR_CONTRACT,
    HOUSEHOLD_NUMBER_SYSTEM,
    ILLNESS_POVERTY_TAG,
    TAG_SYSTEM,
)
from health.poverty.assessment import Diagnosis
from health.poverty.costs import CHINA_TIME, COST_TYPES
from health.poverty.flags import StoredFlag, assessment_id_of
from health.poverty.rules import normalize_icd10
from records.datetimes import LATEST
from records.tables import (
    resource_versions,
    resources,
    search_date,
    search_reference,
    search_token,
)

ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
_ACTIVE_CLINICAL = ("active", "recurrence", "relapse")
_NOT_CONFIRMED = ("refuted", "entered-in-error")
#: Bound parameters per IN list, well inside SQLite's and asyncpg's limits.
CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Row:
    res_type: str
    res_id: str
    data: dict[str, Any]


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def _current() -> Any:
    return (
        select(
            resources.c.rid, resources.c.res_type, resources.c.res_id, resource_versions.c.content
        )
        .select_from(resources)
        .join(
            resource_versions,
            and_(
                resource_versions.c.rid == resources.c.rid,
                resource_versions.c.version == resources.c.version,
            ),
        )
        .where(resources.c.deleted.is_(False))
    )


def day_start(day: dt.date) -> dt.datetime:
    """00:00 China Standard Time of ``day``, the instant the index compares with."""
    return dt.datetime.combine(day, dt.time(), CHINA_TIME)


async def household_ids(session: AsyncSession) -> list[str]:
    """Ids of every Group that carries a registry household number, in the order written."""
    numbered = select(search_token.c.rid).where(
        search_token.c.res_type == "Group",
        search_token.c.param == "identifier",
        search_token.c.system == HOUSEHOLD_NUMBER_SYSTEM,
    )
    rows = await session.execute(
        select(resources.c.res_id)
        .where(
            resources.c.res_type == "Group",
            resources.c.rid.in_(numbered),
            resources.c.deleted.is_(False),
        )
        .order_by(resources.c.rid)
    )
    return [row.res_id for row in rows]


async def lock_and_read_groups(
    session: AsyncSession, group_ids: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    """Each Group's current content (None if deleted), locked for this transaction.

    The lock (``FOR UPDATE`` on PostgreSQL; SQLite write transactions are exclusive anyway)
    makes two recomputes of one household take turns, so neither writes from stale reads.
    """
    found: dict[str, dict[str, Any] | None] = {}
    for chunk in _chunks(sorted(group_ids)):
        locked = await session.execute(
            select(resources.c.rid, resources.c.res_id, resources.c.deleted)
            .where(resources.c.res_type == "Group", resources.c.res_id.in_(chunk))
            .order_by(resources.c.rid)
            .with_for_update()
        )
        live = []
        for row in locked:
            found[row.res_id] = None
            if not row.deleted:
                live.append(row.rid)
        if live:
            rows = await session.execute(_current().where(resources.c.rid.in_(live)))
            for row in rows:
                found[row.res_id] = orjson.loads(row.content)
    return found


async def groups_numbered(session: AsyncSession, numbers: Sequence[str]) -> list[str]:
    """Ids of the Groups with these registry household numbers."""
    numbered = select(search_token.c.rid).where(
        search_token.c.res_type == "Group",
        search_token.c.param == "identifier",
        search_token.c.system == HOUSEHOLD_NUMBER_SYSTEM,
        search_token.c.code.in_(list(numbers)),
    )
    rows = await session.execute(
        select(resources.c.res_id)
        .where(resources.c.rid.in_(numbered), resources.c.deleted.is_(False))
        .order_by(resources.c.rid)
    )
    return [row.res_id for row in rows]


async def read_groups(
    session: AsyncSession, group_ids: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    """Each Group's current content, None if deleted; without locking."""
    rows = await session.execute(
        _current().where(resources.c.res_type == "Group", resources.c.res_id.in_(list(group_ids)))
    )
    found: dict[str, dict[str, Any] | None] = dict.fromkeys(group_ids)
    for row in rows:
        found[row.res_id] = orjson.loads(row.content)
    return found


async def groups_of_patients(session: AsyncSession, patient_ids: Sequence[str]) -> set[str]:
    """Ids of the Groups that list any of these patients as a member."""
    found: set[str] = set()
    for chunk in _chunks(sorted(set(patient_ids))):
        members = select(search_reference.c.rid).where(
            search_reference.c.res_type == "Group",
            search_reference.c.param == "member",
            search_reference.c.target_type == "Patient",
            search_reference.c.target_id.in_(chunk),
        )
        rows = await session.execute(
            select(resources.c.res_id).where(
                resources.c.rid.in_(members), resources.c.deleted.is_(False)
            )
        )
        found.update(row.res_id for row in rows)
    return found


async def cost_resources(
    session: AsyncSession, patient_ids: Sequence[str], since: dt.date
) -> list[Row]:
    """ExplanationOfBenefits, Claims and Invoices of these patients dated ``since`` or later.

    From the patients' reference rows to the bills' date rows by ``rid``: the work grows with
    the patients asked about, not with every bill in the window.
    """
    found: list[Row] = []
    seen: set[tuple[str, str]] = set()
    start = day_start(since)
    types = list(COST_TYPES)
    patient = search_reference.alias("patient")
    dated = search_date.alias("dated")
    for chunk in _chunks(sorted(set(patient_ids))):
        rows = await session.execute(
            select(resources.c.res_type, resources.c.res_id, resource_versions.c.content)
            .select_from(patient)
            .join(
                dated,
                and_(
                    dated.c.rid == patient.c.rid,
                    dated.c.param.in_(set(COST_TYPES.values())),
                    dated.c.end >= start,
                ),
            )
            .join(resources, resources.c.rid == patient.c.rid)
            .join(
                resource_versions,
                and_(
                    resource_versions.c.rid == resources.c.rid,
                    resource_versions.c.version == resources.c.version,
                ),
            )
            .where(
                patient.c.res_type.in_(types),
                patient.c.param == "patient",
                patient.c.target_type == "Patient",
                patient.c.target_id.in_(chunk),
                dated.c.res_type == patient.c.res_type,
                resources.c.deleted.is_(False),
            )
        )
        for row in rows:
            if (row.res_type, row.res_id) not in seen:  # a bill with two dates of one kind
                seen.add((row.res_type, row.res_id))
                found.append(Row(row.res_type, row.res_id, orjson.loads(row.content)))
    return found


async def diagnoses(
    session: AsyncSession, patient_ids: Sequence[str], categories: frozenset[str]
) -> list[Diagnosis]:
    """Active, not refuted ICD-10 Conditions of these patients in these 3-character categories."""
    if not categories:
        return []
    code = search_token.alias("code")
    clinical = search_token.alias("clinical")
    subject = search_reference.alias("subject")
    refuted = select(search_token.c.rid).where(
        search_token.c.res_type == "Condition",
        search_token.c.param == "verification-status",
        search_token.c.code.in_(_NOT_CONFIRMED),
    )
    found: list[Diagnosis] = []
    for chunk in _chunks(sorted(set(patient_ids))):
        rows = await session.execute(
            select(resources.c.res_id, code.c.code, code.c.text, subject.c.target_id)
            .select_from(subject)
            .join(
                code,
                and_(
                    code.c.rid == subject.c.rid,
                    code.c.res_type == "Condition",
                    code.c.param == "code",
                    code.c.system == ICD10_SYSTEM,
                    func.upper(func.substr(code.c.code, 1, 3)).in_(sorted(categories)),
                ),
            )
            .join(
                clinical,
                and_(
                    clinical.c.rid == subject.c.rid,
                    clinical.c.res_type == "Condition",
                    clinical.c.param == "clinical-status",
                    clinical.c.code.in_(_ACTIVE_CLINICAL),
                ),
            )
            .join(resources, resources.c.rid == subject.c.rid)
            .where(
                subject.c.res_type == "Condition",
                subject.c.param == "subject",
                subject.c.target_type == "Patient",
                subject.c.target_id.in_(chunk),
                resources.c.deleted.is_(False),
                subject.c.rid.not_in(refuted),
            )
        )
        found.extend(
            Diagnosis(row.res_id, row.target_id, normalize_icd10(row.code), row.text)
            for row in rows
        )
    return found


async def contracts(
    session: AsyncSession, patient_ids: Sequence[str], on: dt.date
) -> dict[str, str]:
    """patient id -> EpisodeOfCare id of an active family-doctor contract covering ``on``."""
    found: dict[str, str] = {}
    kind = search_token.alias("kind")
    status = search_token.alias("status")
    period = search_date.alias("period")
    patient = search_reference.alias("patient")
    start, end = day_start(on), day_start(on + dt.timedelta(days=1))
    for chunk in _chunks(sorted(set(patient_ids))):
        rows = await session.execute(
            select(resources.c.res_id, patient.c.target_id)
            .select_from(kind)
            .join(resources, resources.c.rid == kind.c.rid)
            .join(
                status,
                and_(
                    status.c.rid == kind.c.rid,
                    status.c.param == "status",
                    status.c.code == "active",
                ),
            )
            .join(
                patient,
                and_(
                    patient.c.rid == kind.c.rid,
                    patient.c.res_type == "EpisodeOfCare",
                    patient.c.param == "patient",
                ),
            )
            .join(
                period,
                and_(
                    period.c.rid == kind.c.rid,
                    period.c.param == "date",
                    period.c.start < end,
                    period.c.end >= start,
                ),
            )
            .where(
                kind.c.res_type == "EpisodeOfCare",
                kind.c.param == "type",
                kind.c.system == FAMILY_DOCTOR_CONTRACT["system"],
                kind.c.code == FAMILY_DOCTOR_CONTRACT["code"],
                patient.c.target_type == "Patient",
                patient.c.target_id.in_(chunk),
                resources.c.deleted.is_(False),
            )
            .order_by(resources.c.res_id)
        )
        for row in rows:
            found.setdefault(row.target_id, row.res_id)
    return found


def _tagged_flags() -> Any:
    return select(search_token.c.rid).where(
        search_token.c.res_type == "Flag",
        search_token.c.param == "_tag",
        search_token.c.system == TAG_SYSTEM,
        search_token.c.code == ILLNESS_POVERTY_TAG["code"],
    )


async def flags_of_groups(
    session: AsyncSession, group_ids: Sequence[str]
) -> dict[str, list[StoredFlag]]:
    """group id -> its illness-poverty Flags (active and not), each with its RiskAssessment."""
    found: dict[str, list[StoredFlag]] = {}
    flags: list[StoredFlag] = []
    about = search_reference.alias("about")
    for chunk in _chunks(sorted(set(group_ids))):
        rows = await session.execute(
            select(resources.c.res_id, resource_versions.c.content)
            .select_from(about)
            .join(resources, resources.c.rid == about.c.rid)
            .join(
                resource_versions,
                and_(
                    resource_versions.c.rid == resources.c.rid,
                    resource_versions.c.version == resources.c.version,
                ),
            )
            .where(
                about.c.res_type == "Flag",
                about.c.param == "subject",
                about.c.target_type == "Group",
                about.c.target_id.in_(chunk),
                resources.c.deleted.is_(False),
            )
        )
        for row in rows:
            data = orjson.loads(row.content)
            # A household has few Flags; telling ours from others' here keeps the query to the
            # subject index, whatever the planner believes about the tag rows.
            if not any(
                t.get("system") == TAG_SYSTEM and t.get("code") == ILLNESS_POVERTY_TAG["code"]
                for t in (data.get("meta") or {}).get("tag", [])
            ):
                continue
            stored = StoredFlag(row.res_id, data, assessment_id_of(data))
            group_id = str((data.get("subject") or {}).get("reference", "")).split("/", 1)[-1]
            found.setdefault(group_id, []).append(stored)
            flags.append(stored)
    wanted = sorted({f.assessment_id for f in flags if f.assessment_id and f.active})
    assessments: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(wanted):
        rows = await session.execute(
            _current().where(
                resources.c.res_type == "RiskAssessment", resources.c.res_id.in_(chunk)
            )
        )
        assessments.update((row.res_id, orjson.loads(row.content)) for row in rows)
    for stored in flags:
        if stored.assessment_id:
            stored.assessment = assessments.get(stored.assessment_id)
    return found


async def groups_with_active_flags(session: AsyncSession) -> set[str]:
    """Ids of every Group an active illness-poverty Flag is about (its period has no end)."""
    tag = search_token.alias("tag")
    period = search_date.alias("period")
    rows = await session.execute(
        select(search_reference.c.target_id)
        .select_from(search_reference)
        .join(
            tag,
            and_(
                tag.c.rid == search_reference.c.rid,
                tag.c.res_type == "Flag",
                tag.c.param == "_tag",
                tag.c.system == TAG_SYSTEM,
                tag.c.code == ILLNESS_POVERTY_TAG["code"],
            ),
        )
        .join(
            period,
            and_(
                period.c.rid == search_reference.c.rid,
                period.c.res_type == "Flag",
                period.c.param == "date",
                period.c.end >= LATEST - dt.timedelta(days=1),
            ),
        )
        .where(
            search_reference.c.res_type == "Flag",
            search_reference.c.param == "subject",
            search_reference.c.target_type == "Group",
        )
    )
    return {row.target_id for row in rows}


async def versions_and_previous(
    session: AsyncSession, wanted: Sequence[tuple[str, str, int]]
) -> list[Row]:
    """The content of each (type, id, version) and of the version before it, where it has
    content: what a change made a resource say, and what it said before (a deletion or an
    edit may take a bill away from one patient)."""
    by_type: dict[str, dict[str, int]] = {}
    for res_type, res_id, version in wanted:
        by_type.setdefault(res_type, {})[res_id] = version
    found: list[Row] = []
    for res_type, versions in sorted(by_type.items()):
        ids = sorted(versions)
        for chunk in _chunks(ids):
            rows = await session.execute(
                select(resources.c.res_id, resource_versions.c.version, resource_versions.c.content)
                .select_from(resources)
                .join(resource_versions, resource_versions.c.rid == resources.c.rid)
                .where(resources.c.res_type == res_type, resources.c.res_id.in_(chunk))
            )
            for row in rows:
                version = versions[row.res_id]
                if row.version in (version, version - 1) and row.content:
                    found.append(Row(res_type, row.res_id, orjson.loads(row.content)))
    return found


#: The record tables a recompute writes to, whose planner statistics it refreshes.
_WRITTEN_TABLES = (resources, resource_versions, search_token, search_date, search_reference)


async def refresh_statistics(session: AsyncSession) -> None:
    """ANALYZE the tables a large recompute wrote to (PostgreSQL).

    The first full recompute of a city adds a hundred thousand Flags and RiskAssessments to
    tables of millions of rows: too few for autovacuum to re-analyze, enough that a planner
    still believing "no Flag rows" picks nested loops that take minutes.
    """
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        names = ", ".join(table.name for table in _WRITTEN_TABLES)
        await session.execute(text(f"ANALYZE {names}"))
