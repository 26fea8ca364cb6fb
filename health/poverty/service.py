"""Recomputing illness-poverty flags: for every household, for some, or for what changed.

One path does all three. Households are taken in batches; each batch is one write
transaction that locks the batch's Groups, reads their members' bills, diagnoses, contracts
and existing flags through indexed lookups (``repository``), applies the rules
(``assessment``), decides the writes (``flags.plan``) and makes them through the record store
with full access, each resource validated like any other write. After the commit the
changes are announced on the change feed. Locking the Groups makes a full recompute and the
incremental listener take turns on a household, so neither writes from what it read before
the other's commit.

The costs come from the bill table the store keeps beside the bills
(``health.poverty.tables.poverty_costs``): a batch sums them in SQL, applies the rules to
the sums, and goes back to the bills one by one — rows, never the stored JSON — only for the
households where a rule fires, a flag is active or a case is open; only theirs are compared
with the stored flags and evidence.

Every batch hands its :class:`~health.poverty.flags.FlagChange` list, inside its transaction,
to :func:`health.poverty.flag_changes.record_flag_changes`: the change log, the follow-up
cases, and the registry feed's outbox (issue 9) go there.
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

from sqlalchemy.ext.asyncio import AsyncSession

from health.core.bus import MessageBus, bus_namespace, create_bus
from health.core.clock import utcnow
from health.core.database import Database
from health.core.settings import get_settings
from health.poverty import repository
from health.poverty.assessment import (
    Diagnosis,
    Evidence,
    assess,
    medical_bill_start,
    totals_in,
)
from health.poverty.costs import CHINA_TIME, COST_TYPES, CostLine, CostTotals
from health.poverty.derived import BILL_AMOUNTS
from health.poverty.disease_groups import chapter_of
from health.poverty.flag_changes import record_flag_changes
from health.poverty.flags import FlagChange, StoredFlag, Write, plan
from health.poverty.households import Household, household_from_group, is_household
from health.poverty.money import format_yuan, from_fen
from health.poverty.rules import RULE_NAMES, RuleSet, months_before
from records.derived import derived_tables
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
        if BILL_AMOUNTS not in derived_tables():
            # Without it the store writes no bill rows, and every bill would seem gone.
            raise RuntimeError(
                "the illness-poverty bill table is not registered with the record store: "
                "reinstall the package (pip install -e .) so its entry points are known"
            )
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
            counted = await repository.cost_lines(
                session, household.patient_ids, start, as_of, self.rules.unsettled_claims
            )
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
        """One batch in one transaction: the households' costs summed in SQL from the bill
        table, the rules applied to the sums; only the households where a rule fires, a flag
        is active or a case is open are assessed again from their bills one by one, and only
        their stored flags and evidence are read and compared."""
        rules = self.rules
        since = rules.window_start(as_of)
        async with self.database.transaction(write=True) as session:
            store = ResourceStore(session, self.indexer)
            groups = await repository.lock_and_read_groups(session, group_ids)
            households: dict[str, Household] = {
                group_id: household_from_group(group_id, data, as_of)
                for group_id, data in groups.items()
                if data is not None and is_household(data)
            }
            patients = sorted({p for h in households.values() for p in h.patient_ids})
            starts = window_starts(rules, as_of)
            sums: dict[str, list[CostLine]] = defaultdict(list)
            for bucket in await repository.cost_buckets(
                session, patients, starts, as_of, rules.unsettled_claims
            ):
                sums[bucket.patient_id].append(bucket_line(bucket, starts))
                report.bills += bucket.bills
            report.bills_not_counted.update(
                await repository.bills_not_counted(session, patients, since)
            )
            diagnoses: dict[str, list[Diagnosis]] = defaultdict(list)
            for diagnosis in await repository.diagnoses(
                session, patients, rules.condition_categories
            ):
                diagnoses[diagnosis.patient_id].append(diagnosis)
            contracts = await repository.contracts(session, patients, as_of)
            flagged = await repository.groups_with_active_flags_among(session, list(groups))
            followed = await repository.open_cases_of(session, list(households))

            def evidence(household: Household, costs: Sequence[CostLine]) -> Evidence:
                members = household.patient_ids
                return Evidence(
                    household,
                    costs,
                    [d for p in members for d in diagnoses.get(p, ())],
                    {p: contracts[p] for p in members if p in contracts},
                    {m.patient_id: m.name for m in household.members if m.patient_id and m.name},
                )

            candidates: list[str] = []
            for group_id in group_ids:
                household = households.get(group_id)
                if household is None:
                    if group_id in flagged:
                        candidates.append(group_id)
                    continue
                findings = assess(
                    evidence(household, [s for p in household.patient_ids for s in sums[p]]),
                    rules,
                    as_of,
                )
                for finding in findings:
                    if finding.state == "unknown":
                        report.not_assessed[finding.rule] += 1
                if group_id in flagged or group_id in followed or any(f.fires for f in findings):
                    candidates.append(group_id)

            lines: dict[str, list[CostLine]] = defaultdict(list)
            for line in await repository.cost_lines(
                session,
                sorted(
                    {p for g in candidates if g in households for p in households[g].patient_ids}
                ),
                since,
                as_of,
                rules.unsettled_claims,
            ):
                lines[line.patient_id].append(line)
            existing = await repository.active_flags_of_groups(session, candidates)
            writes: list[Write] = []
            changes: list[FlagChange] = []
            figures: list[repository.Figures] = []
            for group_id in candidates:
                household = households.get(group_id)
                flags = existing.get(group_id, [])
                if household is None:
                    decided = plan(None, group_id, [], flags, rules, now)
                    writes += decided.writes
                    changes += decided.changes
                    continue
                found = evidence(household, [x for p in household.patient_ids for x in lines[p]])
                findings = assess(found, rules, as_of)
                decided = plan(household, group_id, findings, flags, rules, now)
                writes += decided.writes
                changes += decided.changes
                figures.append(household_figures(found, rules, as_of))
            await self._write(store, writes)
            await record_flag_changes(
                store,
                changes,
                households=households,
                at=now,
                rules_version=rules.version,
                unfollowed=await self._unfollowed(session, existing, changes, followed),
            )
            await repository.save_figures(session, list(groups), figures, now)
        report.households += len(households)
        for change in changes:
            report.count(change)
        if self.bus is not None and store.changes:
            await announce(self.bus, store.changes)

    @staticmethod
    async def _unfollowed(
        session: AsyncSession,
        existing: dict[str, list[StoredFlag]],
        changes: Sequence[FlagChange],
        followed: dict[str, str],
    ) -> dict[str, str]:
        """Households whose flags stay active and that never had a case (flags raised before
        cases were followed up): group id -> the flag to open one with."""
        ended = {c.flag_id for c in changes if c.action == "deactivated"}
        raised = {c.group_id for c in changes if c.action == "raised"}
        staying: dict[str, str] = {}
        for group_id, flags in existing.items():
            if group_id in followed or group_id in raised:
                continue
            for flag in sorted(flags, key=lambda f: (f.start, f.flag_id)):
                if flag.flag_id not in ended:
                    staying.setdefault(group_id, flag.flag_id)
        if not staying:
            return {}
        ever = await repository.groups_ever_followed(session, list(staying))
        return {g: f for g, f in staying.items() if g not in ever}

    async def _write(self, store: ResourceStore, writes: Sequence[Write]) -> None:
        for write in writes:
            validate_resource(write.data)
        creates = [NewResource(w.res_type, w.res_id, w.data) for w in writes if w.create]
        if creates:
            await store.create_many(creates)
        for write in writes:
            if not write.create:
                await store.update(write.res_type, write.res_id, write.data)


def window_starts(rules: RuleSet, as_of: dt.date) -> list[dt.date]:
    """The first days of the rules' windows, ascending: the bills' sums are kept per range
    between them, so that every window's sum is a sum of whole ranges."""
    return sorted(
        {
            rules.window_start(as_of),
            months_before(as_of, rules.catastrophic.window_months),
            months_before(as_of, rules.impoverishing.window_months),
            medical_bill_start(rules, as_of),
        }
    )


def bucket_line(bucket: repository.Bucket, starts: Sequence[dt.date]) -> CostLine:
    """A patient's bills in one range as one line dated the range's first day: the rules see
    the same sums in every window, so they fire or not exactly as on the bills themselves."""
    return CostLine(
        f"sum:{bucket.patient_id}:{bucket.bucket}",
        bucket.patient_id,
        starts[bucket.bucket],
        None,
        from_fen(bucket.billed),
        from_fen(bucket.basic),
        from_fen(bucket.serious),
        from_fen(bucket.assistance),
        from_fen(bucket.other),
        from_fen(bucket.out_of_pocket),
        bucket.unsettled == 0,
    )


def household_figures(evidence: Evidence, rules: RuleSet, as_of: dt.date) -> repository.Figures:
    """The household's twelve-month costs and the disease groups of its listed diagnoses."""
    start = months_before(as_of, rules.catastrophic.window_months)
    groups: set[str] = set()
    for diagnosis in evidence.diagnoses:
        codes = [d.code for d in evidence.diagnoses if d.patient_id == diagnosis.patient_id]
        listed = rules.serious_illness.disease_of(diagnosis.code, codes) or (
            rules.chronic_burden.disease_of(diagnosis.code, codes)
        )
        chapter = chapter_of(diagnosis.code) if listed else None
        if chapter:
            groups.add(chapter)
    return repository.Figures(
        evidence.household.group_id,
        as_of,
        start,
        totals_in(evidence.costs, start, as_of),
        frozenset(groups),
    )


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
        bus = create_bus(redis_url, _namespace(database_url)) if redis_url else None
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


def _namespace(database_url: str) -> str:
    return bus_namespace(database_url, get_settings().bus_namespace)


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
    bus = create_bus(redis_url, _namespace(database_url)) if redis_url else None
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
