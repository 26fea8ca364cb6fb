"""Recomputing illness-poverty flags: for every household, for some, or for what changed.

One path does all three. Households are taken in batches; each batch is one write
transaction that locks the batch's Groups, reads their members' bills, diagnoses, contracts
and existing flags through indexed lookups (``repository``), applies the rules
(``assessment``), decides the writes (``flags.plan``) and makes them through the record store
with full access, each resource validated like any other write. After the commit the
changes are announced on the change feed. Locking the Groups makes a full recompute and the
incremental listener take turns on a household, so neither writes from what it read before
the other's commit.

Issue 9's registry feed hooks in where :meth:`IllnessPovertyService._recompute_batch` has
the batch's :class:`~health.poverty.flags.FlagChange` list inside the transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from health.core.bus import MessageBus, create_bus
from health.core.clock import utcnow
from health.core.database import Database
from health.poverty import repository
from health.poverty.assessment import Diagnosis, Evidence, assess
from health.poverty.costs import (
    CHINA_TIME,
    COST_TYPES,
    CostLine,
    CostTotals,
    NotCounted,
    cost_line,
    counted_lines,
)
from health.poverty.flags import FlagChange, StoredFlag, Write, plan
from health.poverty.households import Household, household_from_group, is_household
from health.poverty.money import format_yuan
from health.poverty.rules import RULE_NAMES, RuleSet, months_before
from records.feed import announce
from records.indexing import SearchIndexer
from records.store import NewResource, ResourceStore
from records.validation import validate_resource

logger = logging.getLogger(__name__)

#: Flag changes after which a full recompute refreshes the planner's statistics.
_MANY_CHANGES = 5000
#: Resource types whose changes can change a household's flags.
RELEVANT_TYPES = frozenset({"Group", "Condition", "EpisodeOfCare", *COST_TYPES})
_PATIENT_ELEMENT = {
    "ExplanationOfBenefit": "patient",
    "Claim": "patient",
    "Invoice": "subject",
    "Condition": "subject",
    "EpisodeOfCare": "patient",
}


class ChangeRef(Protocol):
    """What the change feed says of a change (``records.store.Change`` is one)."""

    @property
    def res_type(self) -> str: ...
    @property
    def res_id(self) -> str: ...
    @property
    def version(self) -> int: ...


def today_in_china() -> dt.date:
    return dt.datetime.now(CHINA_TIME).date()


@dataclass
class RecomputeReport:
    """What a recompute looked at and did."""

    as_of: dt.date
    rules_version: str
    households: int = 0
    bills: int = 0
    bills_not_counted: Counter[str] = field(default_factory=Counter)
    raised: Counter[str] = field(default_factory=Counter)
    updated: Counter[str] = field(default_factory=Counter)
    deactivated: Counter[str] = field(default_factory=Counter)
    not_assessed: Counter[str] = field(default_factory=Counter)
    changes: list[FlagChange] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def merge(self, other: RecomputeReport) -> None:
        self.households += other.households
        self.bills += other.bills
        for mine, theirs in (
            (self.bills_not_counted, other.bills_not_counted),
            (self.raised, other.raised),
            (self.updated, other.updated),
            (self.deactivated, other.deactivated),
            (self.not_assessed, other.not_assessed),
        ):
            mine.update(theirs)
        self.changes.extend(other.changes)

    def count(self, change: FlagChange) -> None:
        self.changes.append(change)
        {"raised": self.raised, "updated": self.updated, "deactivated": self.deactivated}[
            change.action
        ][change.rule] += 1

    def lines(self) -> list[str]:
        """The report a person reads after ``health poverty recompute``."""
        out = [
            f"因病致贫返贫标记 illness-poverty flags as of {self.as_of.isoformat()}, "
            f"rules {self.rules_version}: {self.households} households, {self.bills} bills, "
            f"{self.seconds:.1f} s",
        ]
        for rule, (chinese, english) in RULE_NAMES.items():
            out.append(
                f"  {chinese} {english}: raised {self.raised[rule]}, "
                f"evidence updated {self.updated[rule]}, deactivated {self.deactivated[rule]}"
                + (
                    f", not assessed (income missing) {self.not_assessed[rule]}"
                    if self.not_assessed[rule]
                    else ""
                )
            )
        for reason, count in self.bills_not_counted.most_common():
            out.append(f"  {count} bills not counted: {reason}")
        if not self.changes:
            out.append("  nothing changed")
        return out


@dataclass
class HouseholdCosts:
    household: Household
    period: tuple[dt.date, dt.date]
    per_person: dict[str, CostTotals]
    total: CostTotals
    flags: list[StoredFlag]

    def lines(self) -> list[str]:
        """The household's costs and flags as a township worker reads them."""
        start, end = self.period
        household = self.household
        income = (
            f"家庭年人均纯收入 {format_yuan(household.income_per_capita)}"
            if household.income_per_capita is not None
            else "家庭年人均纯收入 未登记 income not recorded"
        )
        out = [
            f"{household.label} {household.status_text}，{household.size} 人，{income}",
            f"{start.isoformat()} 至 {end.isoformat()} 医疗费用 medical costs (CNY):",
        ]
        names = {m.patient_id: m.name or m.patient_id for m in household.members if m.patient_id}
        rows = [(names.get(p, p) or p, t) for p, t in self.per_person.items()]
        rows.append(("全户 household", self.total))
        for name, totals in rows:
            out.append(
                f"  {name}: 总费用 billed {totals.billed:,.2f}，基本医保 {totals.basic:,.2f}，"
                f"大病保险 {totals.serious:,.2f}，医疗救助 {totals.assistance:,.2f}，"
                f"其他 {totals.other:,.2f}，个人自付 out-of-pocket {totals.out_of_pocket:,.2f}"
            )
        unlinked = "、".join(str(m.name) for m in household.members if not m.patient_id)
        if unlinked:
            out.append(f"  未关联患者档案 members without a patient record: {unlinked}")
        for stored in sorted(self.flags, key=lambda f: f.start):
            period = stored.flag.get("period") or {}
            text = (stored.flag.get("code") or {}).get("text", "")
            out.append(
                f"  [{stored.flag.get('status')}] {text} (Flag/{stored.flag_id}, "
                f"{period.get('start', '')[:10]}–{period.get('end', '')[:10]})"
            )
        if not self.flags:
            out.append("  无因病致贫返贫标记 no illness-poverty flags")
        return out


class IllnessPovertyService:
    """Keeps every household's illness-poverty flags in step with its records."""

    def __init__(
        self,
        database: Database,
        indexer: SearchIndexer,
        rules: RuleSet,
        *,
        bus: MessageBus | None = None,
    ) -> None:
        self.database = database
        self.indexer = indexer
        self.rules = rules
        self.bus = bus

    # -- entry points --------------------------------------------------------------------

    async def recompute_all(
        self,
        *,
        as_of: dt.date | None = None,
        batch_size: int = 500,
        concurrency: int | None = None,
    ) -> RecomputeReport:
        """Every household, and every Group with an active flag that is no household now."""
        started = time.perf_counter()
        as_of = as_of or today_in_china()
        report = RecomputeReport(as_of, self.rules.version)
        group_ids = await self.household_ids()
        await self.run_batches(group_ids, as_of, report, batch_size, concurrency)
        await self.refresh_statistics_after(report)
        report.seconds = time.perf_counter() - started
        return report

    async def refresh_statistics_after(self, report: RecomputeReport) -> None:
        """After writing many flags, let the planner know they are there."""
        if len(report.changes) >= _MANY_CHANGES:
            async with self.database.transaction(write=False) as session:
                await repository.refresh_statistics(session)

    async def household_ids(self) -> list[str]:
        """Every household, then every Group with an active flag that is no household now."""
        async with self.database.transaction(write=False) as session:
            group_ids = await repository.household_ids(session)
            flagged = await repository.groups_with_active_flags(session)
        return group_ids + sorted(flagged - set(group_ids))

    async def recompute_groups(
        self, group_ids: Iterable[str], *, as_of: dt.date | None = None
    ) -> RecomputeReport:
        started = time.perf_counter()
        as_of = as_of or today_in_china()
        report = RecomputeReport(as_of, self.rules.version)
        await self.run_batches(sorted(set(group_ids)), as_of, report, 500, 1)
        report.seconds = time.perf_counter() - started
        return report

    async def household_costs(
        self, number: str, *, as_of: dt.date | None = None
    ) -> HouseholdCosts | None:
        """A household's bills over the rules' window, per person and in all, and its flags
        as stored: what ``health poverty household`` shows. None: no such household."""
        as_of = as_of or today_in_china()
        async with self.database.transaction(write=False) as session:
            group_ids = await repository.groups_numbered(session, [number])
            if not group_ids:
                return None
            group_id = group_ids[0]
            (data,) = (await repository.read_groups(session, [group_id])).values()
            if data is None:
                return None
            household = household_from_group(group_id, data, as_of)
            start = months_before(as_of, self.rules.catastrophic.window_months)
            lines = []
            for row in await repository.cost_resources(session, household.patient_ids, start):
                try:
                    lines.append(cost_line(row.res_type, row.res_id, row.data))
                except NotCounted:
                    continue
            counted = [
                line
                for line in counted_lines(lines, unsettled_claims=self.rules.unsettled_claims)
                if start <= line.on <= as_of
            ]
            flags = (await repository.flags_of_groups(session, [group_id])).get(group_id, [])
        per_person = {
            patient_id: CostTotals.of(line for line in counted if line.patient_id == patient_id)
            for patient_id in household.patient_ids
        }
        return HouseholdCosts(household, (start, as_of), per_person, CostTotals.of(counted), flags)

    async def recompute_for_changes(
        self, changes: Iterable[ChangeRef], *, as_of: dt.date | None = None
    ) -> RecomputeReport:
        """The households that the changed resources belong to (before and after the change)."""
        relevant = [c for c in changes if c.res_type in RELEVANT_TYPES]
        group_ids = {c.res_id for c in relevant if c.res_type == "Group"}
        wanted = [(c.res_type, c.res_id, c.version) for c in relevant if c.res_type != "Group"]
        if wanted:
            async with self.database.transaction(write=False) as session:
                rows = await repository.versions_and_previous(session, wanted)
                patients = {
                    patient for row in rows if (patient := _patient_of(row.res_type, row.data))
                }
                group_ids |= await repository.groups_of_patients(session, sorted(patients))
        return await self.recompute_groups(group_ids, as_of=as_of)

    # -- the batches ---------------------------------------------------------------------

    async def run_batches(
        self,
        group_ids: Sequence[str],
        as_of: dt.date,
        report: RecomputeReport,
        batch_size: int,
        concurrency: int | None,
    ) -> None:
        if not group_ids:
            return
        # SQLite runs one write transaction at a time: a second would only wait.
        limit = 1 if self.database.is_sqlite else max(1, concurrency or 2)
        gate = asyncio.Semaphore(limit)
        now = utcnow()

        async def run(batch: Sequence[str]) -> None:
            async with gate:
                await self._recompute_batch(batch, as_of, now, report)

        batches = [group_ids[i : i + batch_size] for i in range(0, len(group_ids), batch_size)]
        await asyncio.gather(*(run(batch) for batch in batches))

    async def _recompute_batch(
        self, group_ids: Sequence[str], as_of: dt.date, now: dt.datetime, report: RecomputeReport
    ) -> None:
        rules = self.rules
        async with self.database.transaction(write=True) as session:
            store = ResourceStore(session, self.indexer)
            groups = await repository.lock_and_read_groups(session, group_ids)
            households: dict[str, Household] = {
                group_id: household_from_group(group_id, data, as_of)
                for group_id, data in groups.items()
                if data is not None and is_household(data)
            }
            patients = sorted({p for h in households.values() for p in h.patient_ids})
            lines: dict[str, list[CostLine]] = defaultdict(list)
            for row in await repository.cost_resources(
                session, patients, rules.window_start(as_of)
            ):
                try:
                    line = cost_line(row.res_type, row.res_id, row.data)
                except NotCounted as reason:
                    report.bills_not_counted[f"{row.res_type} {reason}"] += 1
                    continue
                lines[line.patient_id].append(line)
                report.bills += 1
            diagnoses: dict[str, list[Diagnosis]] = defaultdict(list)
            for diagnosis in await repository.diagnoses(
                session, patients, rules.condition_categories
            ):
                diagnoses[diagnosis.patient_id].append(diagnosis)
            contracts = await repository.contracts(session, patients, as_of)
            existing = await repository.flags_of_groups(session, list(groups))
            writes: list[Write] = []
            changes: list[FlagChange] = []
            for group_id in group_ids:
                household = households.get(group_id)
                flags = existing.get(group_id, [])
                if household is None:
                    if any(f.active for f in flags):
                        decided = plan(None, group_id, [], flags, rules, now)
                        writes += decided.writes
                        changes += decided.changes
                    continue
                members = set(household.patient_ids)
                evidence = Evidence(
                    household,
                    counted_lines(
                        (line for p in household.patient_ids for line in lines.get(p, ())),
                        unsettled_claims=rules.unsettled_claims,
                    ),
                    [d for p in household.patient_ids for d in diagnoses.get(p, ())],
                    {p: contracts[p] for p in members if p in contracts},
                    {m.patient_id: m.name for m in household.members if m.patient_id and m.name},
                )
                findings = assess(evidence, rules, as_of)
                for finding in findings:
                    if finding.state == "unknown":
                        report.not_assessed[finding.rule] += 1
                decided = plan(household, group_id, findings, flags, rules, now)
                writes += decided.writes
                changes += decided.changes
            await self._write(store, writes)
        report.households += len(households)
        for change in changes:
            report.count(change)
        if self.bus is not None and store.changes:
            await announce(self.bus, store.changes)

    async def _write(self, store: ResourceStore, writes: Sequence[Write]) -> None:
        for write in writes:
            validate_resource(write.data)
        creates = [NewResource(w.res_type, w.res_id, w.data) for w in writes if w.create]
        if creates:
            await store.create_many(creates)
        for write in writes:
            if not write.create:
                await store.update(write.res_type, write.res_id, write.data)


def _patient_of(res_type: str, data: dict[str, Any]) -> str | None:
    element = _PATIENT_ELEMENT.get(res_type)
    reference = str((data.get(element) or {}).get("reference", "")) if element else ""
    return reference.split("/", 1)[1] if reference.startswith("Patient/") else None


# -- the full recompute on several processes ------------------------------------------------


def _recompute_slice(
    database_url: str,
    redis_url: str | None,
    rules: RuleSet,
    group_ids: Sequence[str],
    as_of: dt.date,
    batch_size: int,
) -> RecomputeReport:
    async def run() -> RecomputeReport:
        database = Database(database_url)
        bus = create_bus(redis_url) if redis_url else None
        try:
            service = IllnessPovertyService(database, SearchIndexer(), rules, bus=bus)
            report = RecomputeReport(as_of, rules.version)
            await service.run_batches(group_ids, as_of, report, batch_size, 2)
            return report
        finally:
            if bus is not None:
                await bus.close()
            await database.dispose()

    return asyncio.run(run())


async def recompute_all_in_processes(
    database_url: str,
    rules: RuleSet,
    *,
    redis_url: str | None = None,
    as_of: dt.date | None = None,
    processes: int = 2,
    batch_size: int = 500,
) -> RecomputeReport:
    """The full recompute spread over ``processes`` worker processes (one per core).

    Households are independent and each batch locks its own, so the workers need no other
    coordination; rule evaluation is Python and would otherwise use one core. SQLite, which
    writes one transaction at a time, runs in this process.
    """
    started = time.perf_counter()
    as_of = as_of or today_in_china()
    database = Database(database_url)
    bus = create_bus(redis_url) if redis_url else None
    try:
        service = IllnessPovertyService(database, SearchIndexer(), rules, bus=bus)
        if database.is_sqlite or processes <= 1:
            return await service.recompute_all(as_of=as_of, batch_size=batch_size)
        group_ids = await service.household_ids()
    finally:
        if bus is not None:
            await bus.close()
        await database.dispose()
    batches = [group_ids[i : i + batch_size] for i in range(0, len(group_ids), batch_size)]
    slices = [[g for batch in batches[k::processes] for g in batch] for k in range(processes)]
    report = RecomputeReport(as_of, rules.version)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=processes) as pool:
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool, _recompute_slice, database_url, redis_url, rules, part, as_of, batch_size
                )
                for part in slices
                if part
            )
        )
    for part in parts:
        report.merge(part)
    database = Database(database_url)
    try:
        await IllnessPovertyService(database, SearchIndexer(), rules).refresh_statistics_after(
            report
        )
    finally:
        await database.dispose()
    report.seconds = time.perf_counter() - started
    return report
