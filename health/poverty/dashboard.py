"""The health commission's dashboard: where the illness-poverty cases are and what is behind them.

Every figure is one SQL aggregate over the derived tables (``poverty_cases`` joined to
``poverty_households``, ``poverty_flags``, ``poverty_household_figures`` and
``poverty_household_diseases``), never a loop over resources, and reads the same on SQLite
and PostgreSQL; the two dialects differ only in how a month and a duration are computed
(:func:`_month`, :func:`_seconds`). The figures count **open** cases (identified to
monitoring) — with ``overdue``, only those whose next step was due before the query ran
(:func:`overdue_by_township`); the time from flag to assistance counts every case that
was ever helped, open or closed, since closing a case does not undo how long its help
took.

:class:`Filters` narrow all of it alike, so that a figure's drill-down list
(:func:`households`) holds exactly the households the figure counted. Names and resident
identity numbers reach the page only from :func:`members`, which the web layer shows to users
with the case-worker right. A household's evidence (:func:`evidence`) is read from the stored
JSON of its own flags' RiskAssessments and its own members' Conditions, in two statements; the
web layer audits the read.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import orjson
from sqlalchemy import and_, case, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement, Select

from health.core.clock import utcnow
from health.poverty.costs import CHINA_TIME
from health.poverty.disease_groups import CHAPTERS, NO_LISTED_DISEASE
from health.poverty.rules import RULE_NAMES
from health.poverty.tables import (
    poverty_cases,
    poverty_flags,
    poverty_household_diseases,
    poverty_household_figures,
    poverty_household_members,
    poverty_households,
)
from records.tables import resource_versions, resources

#: Out-of-pocket bands of the household's twelve months, in yuan: code -> (low, high).
#: The edges follow the rule set's orders of magnitude (a 5,000-yuan bill alert, 10,000 and
#: 20,000 as the common local thresholds of serious-illness help, 50,000 and more as
#: catastrophic for nearly any resettled household).
BANDS: dict[str, tuple[int, int | None]] = {
    "0-5k": (0, 5_000),
    "5k-10k": (5_000, 10_000),
    "10k-20k": (10_000, 20_000),
    "20k-50k": (20_000, 50_000),
    "50k+": (50_000, None),
}
#: The band of a household without figures yet (the next recompute writes them).
NO_FIGURES = "none"
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
#: The list's page size at most; an export takes every row, up to EXPORT_LIMIT.
PAGE_LIMIT = 500
EXPORT_LIMIT = 100_000


class BadParameter(ValueError):
    """A filter or paging value that cannot be used; ``name`` is the query parameter."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True, slots=True)
class Filters:
    """What the figures and lists are narrowed to; None means any."""

    township: str | None = None
    village: str | None = None
    rule: str | None = None
    disease_group: str | None = None
    month: str | None = None
    band: str | None = None
    #: "1": only the cases whose next step is overdue (due before the moment of the query).
    overdue: str | None = None

    @classmethod
    def parse(cls, params: dict[str, str]) -> Filters:
        """From query parameters, each checked; BadParameter names the first one wrong."""
        values = {f.name: (params.get(f.name) or "").strip() or None for f in fields(cls)}
        overdue = (values["overdue"] or "").lower()
        if overdue not in ("", "0", "false", "1", "true"):
            raise BadParameter("overdue", "overdue: 1 (only overdue cases) or 0")
        values["overdue"] = "1" if overdue in ("1", "true") else None
        for name, value in values.items():
            if value is not None and len(value) > 128:
                raise BadParameter(name, f"{name}: at most 128 characters")
        if values["rule"] is not None and values["rule"] not in RULE_NAMES:
            raise BadParameter("rule", f"rule: one of {', '.join(RULE_NAMES)}")
        group = values["disease_group"]
        if group is not None and group not in CHAPTERS and group != NO_LISTED_DISEASE:
            raise BadParameter(
                "disease_group", f"disease_group: an ICD-10 chapter (I…XXII) or {NO_LISTED_DISEASE}"
            )
        if values["month"] is not None and not MONTH.match(values["month"]):
            raise BadParameter("month", "month: a month as YYYY-MM, e.g. 2026-04")
        if values["band"] is not None and values["band"] not in (*BANDS, NO_FIGURES):
            raise BadParameter("band", f"band: one of {', '.join((*BANDS, NO_FIGURES))}")
        return cls(**values)

    def query(self) -> dict[str, str]:
        """The filters as query parameters (for links that keep them)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def narrowed(self, **changes: str | None) -> Filters:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Filters(**values)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _month(column: Any, dialect: str) -> ColumnElement[str]:
    """YYYY-MM of an instant in China Standard Time."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("Asia/Shanghai", column), "YYYY-MM")
    return func.strftime("%Y-%m", column, "+8 hours")


def _seconds(later: Any, earlier: Any, dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.extract("epoch", later - earlier)
    return (func.julianday(later) - func.julianday(earlier)) * 86400.0


def _band() -> ColumnElement[str]:
    oop = poverty_household_figures.c.out_of_pocket
    whens: list[tuple[ColumnElement[bool], str]] = [(oop.is_(None), NO_FIGURES)]
    for code, (_low, high) in BANDS.items():
        if high is not None:
            whens.append((oop < high * 100, code))
    return case(*whens, else_=literal("50k+"))


_c, _h = poverty_cases.c, poverty_households.c
_FROM = poverty_cases.outerjoin(poverty_households, _h.group_id == _c.group_id).outerjoin(
    poverty_household_figures, poverty_household_figures.c.group_id == _c.group_id
)


def _where(filters: Filters, dialect: str, *, open_only: bool = True) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if open_only:
        conditions.append(_c.open.is_(True))
    if filters.township is not None:
        conditions.append(_h.township == filters.township)
    if filters.village is not None:
        conditions.append(_h.village == filters.village)
    if filters.rule is not None:
        f = poverty_flags.c
        conditions.append(
            exists().where(f.group_id == _c.group_id, f.active.is_(True), f.rule == filters.rule)
        )
    if filters.disease_group is not None:
        d = poverty_household_diseases.c
        if filters.disease_group == NO_LISTED_DISEASE:
            conditions.append(~exists().where(d.group_id == _c.group_id))
        else:
            conditions.append(
                exists().where(d.group_id == _c.group_id, d.disease_group == filters.disease_group)
            )
    if filters.month is not None:
        conditions.append(_month(_c.opened_at, dialect) == filters.month)
    if filters.band is not None:
        conditions.append(_band() == filters.band)
    if filters.overdue is not None:
        conditions.append(_c.due_at < utcnow())
    return conditions


def _scope(filters: Filters, dialect: str, *, open_only: bool = True) -> Any:
    """The cases the filters keep, as a subquery of (task_id, group_id, township, village)."""
    return (
        select(_c.task_id, _c.group_id, _h.township, _h.village)
        .select_from(_FROM)
        .where(*_where(filters, dialect, open_only=open_only))
        .subquery("scope")
    )


@dataclass(frozen=True, slots=True)
class Count:
    """One bar of a figure: its key (what a drill-down filters on), an optional parent key
    (a village's township) and the number of households."""

    key: str
    households: int
    parent: str | None = None


@dataclass(frozen=True, slots=True)
class Waiting:
    """Time from the flag (the case opening) to the first help, in days."""

    helped: int
    median_days: float | None
    p90_days: float | None
    #: Open cases not helped yet.
    waiting: int


async def _counts(session: AsyncSession, query: Select[Any, Any]) -> list[Count]:
    rows = await session.execute(query)
    return [Count(str(row[0] if row[0] is not None else ""), int(row[1]), *row[2:]) for row in rows]


async def by_township(session: AsyncSession, filters: Filters) -> list[Count]:
    s = _scope(filters, _dialect(session))
    n = func.count()
    return await _counts(
        session, select(s.c.township, n).group_by(s.c.township).order_by(n.desc(), s.c.township)
    )


async def overdue_by_township(session: AsyncSession, filters: Filters) -> list[Count]:
    """Open cases whose next step is overdue, by township."""
    return await by_township(session, filters.narrowed(overdue="1"))


async def by_village(session: AsyncSession, filters: Filters) -> list[Count]:
    s = _scope(filters, _dialect(session))
    n = func.count()
    rows = await session.execute(
        select(s.c.village, n, s.c.township)
        .group_by(s.c.township, s.c.village)
        .order_by(n.desc(), s.c.township, s.c.village)
    )
    return [Count(row[0] or "", int(row[1]), row[2] or "") for row in rows]


async def by_rule(session: AsyncSession, filters: Filters) -> list[Count]:
    s = _scope(filters, _dialect(session))
    f = poverty_flags.c
    n = func.count(func.distinct(s.c.group_id))
    return await _counts(
        session,
        select(f.rule, n)
        .select_from(s.join(poverty_flags, and_(f.group_id == s.c.group_id, f.active.is_(True))))
        .group_by(f.rule)
        .order_by(n.desc(), f.rule),
    )


async def by_disease_group(session: AsyncSession, filters: Filters) -> list[Count]:
    s = _scope(filters, _dialect(session))
    d = poverty_household_diseases.c
    group = func.coalesce(d.disease_group, NO_LISTED_DISEASE)
    n = func.count(func.distinct(s.c.group_id))
    return await _counts(
        session,
        select(group, n)
        .select_from(s.outerjoin(poverty_household_diseases, d.group_id == s.c.group_id))
        .group_by(group)
        .order_by(n.desc(), group),
    )


async def by_month(session: AsyncSession, filters: Filters) -> list[Count]:
    """Open cases by the month (China time) they were opened, oldest first."""
    dialect = _dialect(session)
    month = _month(_c.opened_at, dialect)
    n = func.count()
    return await _counts(
        session,
        select(month, n)
        .select_from(_FROM)
        .where(*_where(filters, dialect))
        .group_by(month)
        .order_by(month),
    )


async def by_band(session: AsyncSession, filters: Filters) -> list[Count]:
    """Open cases by the household's twelve-month out-of-pocket band, in BANDS order."""
    band = _band()
    rows = await session.execute(
        select(band, func.count())
        .select_from(_FROM)
        .where(*_where(filters, _dialect(session)))
        .group_by(band)
    )
    found = {row[0]: int(row[1]) for row in rows}
    return [Count(code, found.get(code, 0)) for code in (*BANDS, NO_FIGURES)]


async def time_to_help(session: AsyncSession, filters: Filters) -> Waiting:
    """Median and 90th percentile (nearest rank, the same on both databases) of the days from
    the case's opening to its first help, over every case helped; and the open cases still
    waiting."""
    dialect = _dialect(session)
    where = [*_where(filters, dialect, open_only=False), _c.first_assisted_at.is_not(None)]
    seconds = _seconds(_c.first_assisted_at, _c.opened_at, dialect)
    helped = int(
        (await session.execute(select(func.count()).select_from(_FROM).where(*where))).scalar_one()
    )
    waiting = int(
        (
            await session.execute(
                select(func.count())
                .select_from(_FROM)
                .where(*_where(filters, dialect), _c.first_assisted_at.is_(None))
            )
        ).scalar_one()
    )

    async def rank(share: float) -> float | None:
        if helped == 0:
            return None
        offset = max(math.ceil(share * helped), 1) - 1
        value = (
            await session.execute(
                select(seconds).select_from(_FROM).where(*where).order_by(seconds).offset(offset)
            )
        ).first()
        return round(float(value[0]) / 86400, 1) if value else None

    return Waiting(helped, await rank(0.5), await rank(0.9), waiting)


@dataclass(frozen=True, slots=True)
class HouseholdRow:
    """One household of a drill-down list: its open case, where it is, what flagged it."""

    group_id: str
    household_number: str
    township: str | None
    village: str | None
    task_id: str
    stage: str
    opened_at: dt.datetime
    due_at: dt.datetime | None
    owner_name: str | None
    out_of_pocket_fen: int | None
    rules: tuple[str, ...]
    disease_groups: tuple[str, ...]
    #: The household's name (户主): only for a case worker (see :func:`members`).
    name: str | None = None


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


async def count_households(session: AsyncSession, filters: Filters) -> int:
    query = select(func.count()).select_from(_FROM).where(*_where(filters, _dialect(session)))
    return int((await session.execute(query)).scalar_one())


async def households(
    session: AsyncSession,
    filters: Filters,
    *,
    limit: int,
    offset: int = 0,
    with_names: bool = False,
) -> list[HouseholdRow]:
    """The households of the open cases the filters keep, longest-open first; names only
    ``with_names`` (the case-worker right)."""
    fig = poverty_household_figures.c
    columns = [
        _c.group_id,
        _h.number,
        _h.township,
        _h.village,
        _c.task_id,
        _c.stage,
        _c.opened_at,
        _c.due_at,
        _c.owner_name,
        fig.out_of_pocket,
    ]
    if with_names:
        columns.append(_h.name)
    rows = (
        await session.execute(
            select(*columns)
            .select_from(_FROM)
            .where(*_where(filters, _dialect(session)))
            .order_by(_c.opened_at, _c.task_id)
            .limit(limit)
            .offset(offset)
        )
    ).all()
    ids = [row.group_id for row in rows]
    rules: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}
    if ids:
        f, d = poverty_flags.c, poverty_household_diseases.c
        for group_id, rule in await session.execute(
            select(f.group_id, f.rule)
            .where(f.group_id.in_(ids), f.active.is_(True), f.rule.is_not(None))
            .distinct()
            .order_by(f.group_id, f.rule)
        ):
            rules.setdefault(group_id, []).append(rule)
        for group_id, disease in await session.execute(
            select(d.group_id, d.disease_group)
            .where(d.group_id.in_(ids))
            .distinct()
            .order_by(d.group_id, d.disease_group)
        ):
            groups.setdefault(group_id, []).append(disease)
    return [
        HouseholdRow(
            group_id=row.group_id,
            household_number=row.number or "",
            township=row.township,
            village=row.village,
            task_id=row.task_id,
            stage=row.stage,
            opened_at=_aware(row.opened_at) or dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
            due_at=_aware(row.due_at),
            owner_name=row.owner_name,
            out_of_pocket_fen=row.out_of_pocket,
            rules=tuple(rules.get(row.group_id, ())),
            disease_groups=tuple(groups.get(row.group_id, ())),
            name=row.name if with_names else None,
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class Household:
    """One household's dashboard facts: place, figures, case and active flags."""

    group_id: str
    number: str
    township: str | None
    village: str | None
    size: int
    status: str
    income_per_capita_fen: int | None
    figures: dict[str, Any] | None
    cases: list[dict[str, Any]]
    flags: list[dict[str, Any]]
    disease_groups: tuple[str, ...]


async def household(session: AsyncSession, group_id: str) -> Household | None:
    """The household ``group_id`` if it has ever had a case (the dashboard shows no other)."""
    h = (await session.execute(select(poverty_households).where(_h.group_id == group_id))).first()
    cases = (
        (
            await session.execute(
                select(poverty_cases)
                .where(_c.group_id == group_id)
                .order_by(_c.opened_at.desc(), _c.task_id)
            )
        )
        .mappings()
        .all()
    )
    if h is None or not cases:
        return None
    f = poverty_flags.c
    flags = (
        (
            await session.execute(
                select(f.flag_id, f.rule, f.kind, f.started_at, f.assessment_id)
                .where(f.group_id == group_id, f.active.is_(True))
                .order_by(f.started_at, f.flag_id)
            )
        )
        .mappings()
        .all()
    )
    figures = (
        (
            await session.execute(
                select(poverty_household_figures).where(
                    poverty_household_figures.c.group_id == group_id
                )
            )
        )
        .mappings()
        .first()
    )
    d = poverty_household_diseases.c
    diseases = (
        await session.execute(
            select(d.disease_group)
            .where(d.group_id == group_id)
            .distinct()
            .order_by(d.disease_group)
        )
    ).scalars()
    return Household(
        group_id=group_id,
        number=h.number,
        township=h.township,
        village=h.village,
        size=h.size,
        status=h.status,
        income_per_capita_fen=h.income_per_capita,
        figures=dict(figures) if figures else None,
        cases=[dict(c) for c in cases],
        flags=[dict(x) for x in flags],
        disease_groups=tuple(diseases),
    )


@dataclass(frozen=True, slots=True)
class Member:
    patient_id: str | None
    name: str | None
    resident_id: str | None
    relationship: str | None


def _belonging_today() -> list[ColumnElement[bool]]:
    """The members whose period covers today in China (the household as it is now): the
    table lists every member with the days they belong
    (``health.poverty.households.Enrolment.active_on``)."""
    today = dt.datetime.now(CHINA_TIME).date().isoformat()
    m = poverty_household_members.c
    return [
        or_(m.period_start.is_(None), m.period_start <= today),
        or_(m.period_end.is_(None), m.period_end >= today),
    ]


async def members(session: AsyncSession, group_ids: Sequence[str]) -> dict[str, list[Member]]:
    """Names and resident identity numbers of the households' members, for case workers."""
    if not group_ids:
        return {}
    m = poverty_household_members.c
    found: dict[str, list[Member]] = {}
    for row in await session.execute(
        select(m.group_id, m.patient_id, m.name, m.resident_id, m.relationship)
        .where(m.group_id.in_(list(group_ids)), *_belonging_today())
        .order_by(m.group_id, m.position)
    ):
        found.setdefault(row.group_id, []).append(
            Member(row.patient_id, row.name, row.resident_id, row.relationship)
        )
    return found


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a household's active flags rest on: their RiskAssessments by id, and the
    Conditions those name that are the household members' own, by id."""

    assessments: dict[str, dict[str, Any]]
    conditions: dict[str, dict[str, Any]]


def _current_of(res_type: str, ids: Sequence[str]) -> Select[Any]:
    return (
        select(resources.c.res_id, resource_versions.c.content)
        .select_from(resources)
        .join(
            resource_versions,
            and_(
                resource_versions.c.rid == resources.c.rid,
                resource_versions.c.version == resources.c.version,
            ),
        )
        .where(
            resources.c.res_type == res_type,
            resources.c.res_id.in_(list(ids)),
            resources.c.deleted.is_(False),
        )
    )


async def evidence(session: AsyncSession, group_id: str) -> Evidence:
    """The stored evidence of the household's active flags, read in two statements. Only the
    assessments its own flags point to, and only Conditions of its own members: the
    dashboard shows nothing of any other household's record."""
    f, m = poverty_flags.c, poverty_household_members.c
    ids = (
        await session.execute(
            select(f.assessment_id).where(
                f.group_id == group_id, f.active.is_(True), f.assessment_id.is_not(None)
            )
        )
    ).scalars()
    assessments = {
        row.res_id: orjson.loads(row.content)
        for row in await session.execute(_current_of("RiskAssessment", sorted(set(ids))))
        if row.content
    }
    wanted = sorted(
        {
            reference.split("/", 1)[1]
            for assessment in assessments.values()
            for basis in assessment.get("basis") or []
            if (reference := str(basis.get("reference") or "")).startswith("Condition/")
        }
    )
    members = {
        f"Patient/{patient}"
        for patient in (
            await session.execute(
                select(m.patient_id).where(
                    m.group_id == group_id, m.patient_id.is_not(None), *_belonging_today()
                )
            )
        ).scalars()
    }
    conditions = {}
    if wanted:
        for row in await session.execute(_current_of("Condition", wanted)):
            condition = orjson.loads(row.content) if row.content else {}
            if (condition.get("subject") or {}).get("reference") in members:
                conditions[row.res_id] = condition
    return Evidence(assessments, conditions)
