"""Every query the illness-poverty service makes, over the record store's tables.

The store's search index tables (``records.tables``) are derived from the official
SearchParameters and kept in the same transaction as each write, so "the bills of these
patients since that day" or "the active diagnoses in these ICD-10 categories" are indexed
lookups; only the resources that answer are read and parsed. Reads see the current version
of each resource and skip deleted ones.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Select,
    String,
    and_,
    any_,
    case,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    text,
    union,
)
from sqlalchemy.ext.asyncio import AsyncSession

from health.core.clock import fhir_instant
from health.core.naming import (
    FAMILY_DOCTOR_CONTRACT,
    HOUSEHOLD_NUMBER_SYSTEM,
    ILLNESS_POVERTY_TAG,
    TAG_SYSTEM,
)
from health.core.outbox import outbox
from health.poverty.assessment import Diagnosis
from health.poverty.costs import CHINA_TIME, COST_TYPES, CostLine, CostTotals
from health.poverty.derived import ENROLMENT_COLUMNS, RECORD_COLUMNS, household_record
from health.poverty.flags import StoredFlag
from health.poverty.households import HouseholdRecord
from health.poverty.money import from_fen, to_fen
from health.poverty.rules import normalize_icd10
from health.poverty.tables import (
    poverty_assessments,
    poverty_case_steps,
    poverty_cases,
    poverty_costs,
    poverty_flag_changes,
    poverty_flags,
    poverty_household_diseases,
    poverty_household_figures,
    poverty_household_members,
    poverty_households,
)
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


#: Ids to look for: a list, or a subquery of one column that gives them.
Ids = Sequence[str] | Select[Any]


def _among(session: AsyncSession, column: Any, ids: Ids) -> Iterator[ColumnElement[bool]]:
    """Conditions that between them find the rows whose ``column`` is one of ``ids``, one
    statement each: a subquery once; a list as one array on PostgreSQL (a single bound
    value, however long the list, where an IN list binds — and SQLAlchemy renders — one
    parameter per id), and in IN lists of :data:`CHUNK` ids on SQLite."""
    if isinstance(ids, Select):
        yield column.in_(ids)
        return
    values = sorted(set(ids))
    if not values:
        return
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        yield column == any_(literal(values, ARRAY(String)))
        return
    for chunk in _chunks(values):
        yield column.in_(chunk)


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


async def household_rids(session: AsyncSession) -> list[int]:
    """The rid of every household Group (its ``poverty_households`` row), ascending."""
    rows = await session.execute(
        select(poverty_households.c.rid).order_by(poverty_households.c.rid)
    )
    return [row.rid for row in rows]


def households_between(first: int, last: int) -> ColumnElement[bool]:
    """The households whose Group's rid is from ``first`` to ``last``."""
    return poverty_households.c.rid.between(first, last)


def patients_between(first: int, last: int) -> Select[Any]:
    """The patients listed as members of the households whose rid is from ``first`` to
    ``last``, on any day: a subquery for the readers that take :data:`Ids`."""
    m = poverty_household_members.c
    return select(m.patient_id).where(m.rid.between(first, last), m.patient_id.is_not(None))


async def flagged_non_households(session: AsyncSession) -> list[str]:
    """Ids of the Groups with an active illness-poverty flag that are no household now
    (deleted, or no longer a household): their flags are to go."""
    f, h = poverty_flags.c, poverty_households.c
    rows = await session.execute(
        select(f.group_id)
        .where(
            f.active.is_(True),
            ~exists().where(h.group_id == f.group_id),
        )
        .distinct()
        .order_by(f.group_id)
    )
    return [row.group_id for row in rows]


async def groups_watched(session: AsyncSession) -> set[str]:
    """Ids of the Groups with an active illness-poverty flag, an open follow-up case or
    figures kept from their last assessment: whatever their sums say, a recompute reads
    their bills one by one and rewrites their figures."""
    rows = await session.execute(
        union(
            select(poverty_flags.c.group_id).where(poverty_flags.c.active.is_(True)),
            select(poverty_cases.c.group_id).where(poverty_cases.c.open.is_(True)),
            select(poverty_household_figures.c.group_id),
        )
    )
    return {row[0] for row in rows}


async def lock_households(
    session: AsyncSession, group_ids: Sequence[str]
) -> dict[str, HouseholdRecord | None]:
    """Each of these Groups there is, locked for this transaction: its household record
    (``poverty_households``, ``poverty_household_members``), or None if it is deleted or no
    household. Groups never stored are left out.

    The lock (``FOR UPDATE`` on PostgreSQL; SQLite write transactions are exclusive anyway)
    makes two recomputes of one household take turns, so neither writes from stale reads;
    the rows read after it are those of the Group's current version, written in its
    transaction.
    """
    found: dict[str, HouseholdRecord | None] = {}
    for among in _among(session, resources.c.res_id, group_ids):
        locked = await session.execute(
            select(resources.c.rid, resources.c.res_id, resources.c.deleted)
            .where(resources.c.res_type == "Group", among)
            .order_by(resources.c.rid)
            .with_for_update()
        )
        live = []
        for row in locked:
            found[row.res_id] = None
            if not row.deleted:
                live.append(row.res_id)
        for which in _among(session, poverty_households.c.group_id, live):
            for record in await household_records(session, which):
                found[record.group_id] = record
    return found


async def household_records(session: AsyncSession, which: Any) -> list[HouseholdRecord]:
    """The household records whose ``poverty_households`` rows meet ``which``, in rid order."""
    h, m = poverty_households.c, poverty_household_members.c
    rows = (
        await session.execute(select(h.rid, *RECORD_COLUMNS).where(which).order_by(h.rid))
    ).all()
    if not rows:
        return []
    members: dict[int, list[Any]] = {}
    for rid, *member in await session.execute(
        select(m.rid, *ENROLMENT_COLUMNS)
        .join(poverty_households, h.rid == m.rid)
        .where(which)
        .order_by(m.rid, m.position)
    ):
        members.setdefault(rid, []).append(member)
    return [household_record(row, members.get(rid, ())) for rid, *row in rows]


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


async def groups_of_patients(session: AsyncSession, patient_ids: Ids) -> set[str]:
    """Ids of the Groups that list any of these patients as a member."""
    found: set[str] = set()
    for among in _among(session, search_reference.c.target_id, patient_ids):
        members = select(search_reference.c.rid).where(
            search_reference.c.res_type == "Group",
            search_reference.c.param == "member",
            search_reference.c.target_type == "Patient",
            among,
        )
        rows = await session.execute(
            select(resources.c.res_id).where(
                resources.c.rid.in_(members), resources.c.deleted.is_(False)
            )
        )
        found.update(row.res_id for row in rows)
    return found


async def cost_resources(session: AsyncSession, patient_ids: Ids, since: dt.date) -> list[Row]:
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
    for among in _among(session, patient.c.target_id, patient_ids):
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
                among,
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
    session: AsyncSession, patient_ids: Ids, categories: frozenset[str]
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
    for among in _among(session, subject.c.target_id, patient_ids):
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
                among,
                resources.c.deleted.is_(False),
                subject.c.rid.not_in(refuted),
            )
        )
        found.extend(
            Diagnosis(row.res_id, row.target_id, normalize_icd10(row.code), row.text)
            for row in rows
        )
    return found


async def contracts(session: AsyncSession, patient_ids: Ids, on: dt.date) -> dict[str, str]:
    """patient id -> EpisodeOfCare id of an active family-doctor contract covering ``on``."""
    found: dict[str, str] = {}
    kind = search_token.alias("kind")
    status = search_token.alias("status")
    period = search_date.alias("period")
    patient = search_reference.alias("patient")
    start, end = day_start(on), day_start(on + dt.timedelta(days=1))
    for among in _among(session, patient.c.target_id, patient_ids):
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
                among,
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
    for among in _among(session, about.c.target_id, group_ids):
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
                among,
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
            stored = StoredFlag.of(row.res_id, data)
            group_id = str((data.get("subject") or {}).get("reference", "")).split("/", 1)[-1]
            found.setdefault(group_id, []).append(stored)
            flags.append(stored)
    await _attach_assessments(session, [f for f in flags if f.active])
    return found


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


#: The tables a recompute writes to, whose planner statistics it refreshes: the records'
#: and, derived from them or written beside them, the flags', cases', figures' and outbox's.
_WRITTEN_TABLES = (
    resources,
    resource_versions,
    search_token,
    search_date,
    search_reference,
    poverty_flags,
    poverty_assessments,
    poverty_cases,
    poverty_case_steps,
    poverty_flag_changes,
    poverty_household_figures,
    poverty_household_diseases,
    outbox,
)


async def refresh_statistics(session: AsyncSession) -> None:
    """ANALYZE the tables a large recompute wrote to (PostgreSQL).

    The first full recompute of a city adds a hundred thousand Flags and RiskAssessments to
    tables of millions of rows: too few for autovacuum to re-analyze, enough that a planner
    still believing "no Flag rows" picks nested loops that take minutes; the flag and case
    tables it fills from next to nothing mislead the next run's plans the same way.
    """
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        names = ", ".join(table.name for table in _WRITTEN_TABLES)
        await session.execute(text(f"ANALYZE {names}"))


# -- the derived tables (health.poverty.tables) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    """What one patient's counted bills in one date range add up to, in 分."""

    patient_id: str
    bucket: int
    bills: int
    unsettled: int
    billed: int
    basic: int
    serious: int
    assistance: int
    other: int
    out_of_pocket: int


def _counted(since: dt.date, until: dt.date, unsettled_claims: str) -> Any:
    """The bills that count, from ``since`` to ``until``: settled ones, and Claims that no
    ExplanationOfBenefit answers when the rule set counts those in full — the same test for
    the aggregates and for the lines of the evidence, so the two always agree."""
    answer = poverty_costs.alias("answer")
    answered = exists().where(
        answer.c.answers == literal("Claim/") + poverty_costs.c.res_id,
        answer.c.counted.is_(True),
        answer.c.settled_on >= since,
    )
    claims = not_(answered) if unsettled_claims == "count-in-full" else false()
    return and_(
        poverty_costs.c.counted.is_(True),
        poverty_costs.c.settled_on >= since,
        poverty_costs.c.settled_on <= until,
        or_(poverty_costs.c.settled.is_(True), claims),
    )


async def cost_buckets(
    session: AsyncSession,
    patient_ids: Ids,
    starts: Sequence[dt.date],
    until: dt.date,
    unsettled_claims: str,
) -> list[Bucket]:
    """Per patient, the counted bills summed in ranges: bucket k runs from ``starts[k]`` to
    the day before ``starts[k + 1]`` (the last to ``until``). ``starts`` ascending."""
    bucket: Any = literal(0)
    if len(starts) > 1:
        bucket = case(
            *[
                (poverty_costs.c.settled_on >= start, literal(index))
                for index, start in reversed(list(enumerate(starts)))
                if index > 0
            ],
            else_=literal(0),
        )
    bucket = bucket.label("bucket")
    c = poverty_costs.c
    found: list[Bucket] = []
    for among in _among(session, c.patient_id, patient_ids):
        rows = await session.execute(
            select(
                c.patient_id,
                bucket,
                func.count(),
                func.sum(case((c.settled.is_(False), 1), else_=0)),
                func.sum(c.billed),
                func.sum(c.basic),
                func.sum(c.serious),
                func.sum(c.assistance),
                func.sum(c.other),
                func.sum(c.out_of_pocket),
            )
            .where(among, _counted(starts[0], until, unsettled_claims))
            .group_by(c.patient_id, bucket)
        )
        found.extend(Bucket(row[0], *(int(v or 0) for v in row[1:])) for row in rows)
    return found


async def cost_lines(
    session: AsyncSession,
    patient_ids: Ids,
    since: dt.date,
    until: dt.date,
    unsettled_claims: str,
) -> list[CostLine]:
    """The counted bills of these patients from ``since`` to ``until``, read from their rows."""
    c = poverty_costs.c
    found: list[CostLine] = []
    for among in _among(session, c.patient_id, patient_ids):
        rows = await session.execute(
            select(
                c.res_type,
                c.res_id,
                c.patient_id,
                c.settled_on,
                c.provider,
                c.billed,
                c.basic,
                c.serious,
                c.assistance,
                c.other,
                c.out_of_pocket,
                c.settled,
                c.answers,
            )
            .where(among, _counted(since, until, unsettled_claims))
            .order_by(c.settled_on, c.rid)
        )
        found.extend(
            CostLine(
                f"{row.res_type}/{row.res_id}",
                row.patient_id,
                row.settled_on,
                row.provider,
                from_fen(row.billed),
                from_fen(row.basic),
                from_fen(row.serious),
                from_fen(row.assistance),
                from_fen(row.other),
                from_fen(row.out_of_pocket),
                bool(row.settled),
                row.answers,
            )
            for row in rows
        )
    return found


async def bills_not_counted(
    session: AsyncSession, patient_ids: Ids, since: dt.date
) -> Counter[str]:
    """ "<type> <reason>" -> how many of these patients' bills since ``since`` do not count."""
    c = poverty_costs.c
    found: Counter[str] = Counter()
    for among in _among(session, c.patient_id, patient_ids):
        rows = await session.execute(
            select(c.res_type, c.not_counted, func.count())
            .where(among, c.counted.is_(False), c.settled_on >= since)
            .group_by(c.res_type, c.not_counted)
        )
        for res_type, reason, count in rows:
            found[f"{res_type} {reason}"] += count
    return found


async def groups_with_active_flags_among(
    session: AsyncSession, group_ids: Sequence[str]
) -> set[str]:
    found: set[str] = set()
    for among in _among(session, poverty_flags.c.group_id, group_ids):
        rows = await session.execute(
            select(poverty_flags.c.group_id)
            .where(among, poverty_flags.c.active.is_(True))
            .distinct()
        )
        found.update(row.group_id for row in rows)
    return found


async def open_cases_of(session: AsyncSession, group_ids: Sequence[str]) -> dict[str, str]:
    """group id -> the id of its open follow-up Task."""
    found: dict[str, str] = {}
    for among in _among(session, poverty_cases.c.group_id, group_ids):
        rows = await session.execute(
            select(poverty_cases.c.group_id, poverty_cases.c.task_id)
            .where(among, poverty_cases.c.open.is_(True))
            .order_by(poverty_cases.c.opened_at)
        )
        for row in rows:
            found.setdefault(row.group_id, row.task_id)
    return found


async def groups_ever_followed(session: AsyncSession, group_ids: Sequence[str]) -> set[str]:
    """The households among these that have had a follow-up case, open or not."""
    found: set[str] = set()
    for among in _among(session, poverty_cases.c.group_id, group_ids):
        rows = await session.execute(select(poverty_cases.c.group_id).where(among).distinct())
        found.update(row.group_id for row in rows)
    return found


async def active_flags_of_groups(
    session: AsyncSession, group_ids: Sequence[str]
) -> dict[str, list[StoredFlag]]:
    """group id -> its active illness-poverty Flags, from the flag table with the digest of
    each one's evidence: all that deciding a household's writes needs while nothing is to
    end (an inactive flag never changes again). :func:`read_flags` reads the rest."""
    f, a = poverty_flags.c, poverty_assessments.c
    flags = poverty_flags.outerjoin(poverty_assessments, a.assessment_id == f.assessment_id)
    found: dict[str, list[StoredFlag]] = {}
    for among in _among(session, f.group_id, group_ids):
        rows = await session.execute(
            select(f.group_id, f.flag_id, f.rule, f.kind, f.started_at, f.assessment_id, a.evidence)
            .select_from(flags)
            .where(among, f.active.is_(True))
        )
        for row in rows:
            found.setdefault(row.group_id, []).append(
                StoredFlag(
                    row.flag_id,
                    row.rule,
                    row.kind,
                    fhir_instant(row.started_at) if row.started_at else "",
                    True,
                    row.assessment_id,
                    row.evidence,
                )
            )
    return found


async def read_flags(session: AsyncSession, flags: Sequence[StoredFlag]) -> None:
    """Read each flag's Flag and RiskAssessment onto it (``flag``, ``assessment``, ``read``)."""
    contents: dict[str, dict[str, Any]] = {}
    for among in _among(session, resources.c.res_id, [f.flag_id for f in flags]):
        rows = await session.execute(_current().where(resources.c.res_type == "Flag", among))
        contents.update((row.res_id, orjson.loads(row.content)) for row in rows)
    for stored in flags:
        stored.flag = contents.get(stored.flag_id)
        stored.read = True
    await _attach_assessments(session, flags)


async def _attach_assessments(session: AsyncSession, flags: Sequence[StoredFlag]) -> None:
    """Read each flag's RiskAssessment onto ``stored.assessment``."""
    wanted = sorted({f.assessment_id for f in flags if f.assessment_id})
    assessments: dict[str, dict[str, Any]] = {}
    for among in _among(session, resources.c.res_id, wanted):
        rows = await session.execute(
            _current().where(resources.c.res_type == "RiskAssessment", among)
        )
        assessments.update((row.res_id, orjson.loads(row.content)) for row in rows)
    for stored in flags:
        if stored.assessment_id:
            stored.assessment = assessments.get(stored.assessment_id)


@dataclass(frozen=True, slots=True)
class Figures:
    """The last assessment's twelve-month figures of a household under follow-up."""

    group_id: str
    as_of: dt.date
    window_start: dt.date
    totals: CostTotals
    disease_groups: frozenset[str]


async def save_figures(
    session: AsyncSession,
    assessed: Sequence[str],
    figures: Sequence[Figures],
    at: dt.datetime,
) -> None:
    """Replace the figures of the households ``assessed``: ``figures`` for those followed up,
    none for the rest."""
    for among in _among(session, poverty_household_diseases.c.group_id, assessed):
        await session.execute(delete(poverty_household_diseases).where(among))
    for among in _among(session, poverty_household_figures.c.group_id, assessed):
        await session.execute(delete(poverty_household_figures).where(among))
    if not figures:
        return
    await session.execute(
        insert(poverty_household_figures),
        [
            {
                "group_id": f.group_id,
                "assessed_at": at,
                "as_of": f.as_of,
                "window_start": f.window_start,
                "bills": len(f.totals.sources),
                "billed": to_fen(f.totals.billed),
                "basic": to_fen(f.totals.basic),
                "serious": to_fen(f.totals.serious),
                "assistance": to_fen(f.totals.assistance),
                "other": to_fen(f.totals.other),
                "out_of_pocket": to_fen(f.totals.out_of_pocket),
            }
            for f in figures
        ],
    )
    diseases = [
        {"group_id": f.group_id, "disease_group": group}
        for f in figures
        for group in sorted(f.disease_groups)
    ]
    if diseases:
        await session.execute(insert(poverty_household_diseases), diseases)


async def last_group_content(session: AsyncSession, group_id: str) -> dict[str, Any] | None:
    """The last content a Group had, deleted or not (what a gone household was)."""
    content = (
        await session.execute(
            select(resource_versions.c.content)
            .join(resources, resources.c.rid == resource_versions.c.rid)
            .where(
                resources.c.res_type == "Group",
                resources.c.res_id == group_id,
                resource_versions.c.content.is_not(None),
            )
            .order_by(resource_versions.c.version.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    return orjson.loads(content) if content else None
