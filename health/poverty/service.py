"""Recomputing illness-poverty flags: for every household, for some, or for what changed.

One path decides and writes: households are taken in batches; each batch is one write
transaction that locks the batch's Groups, reads their household records (the rows the
record store keeps beside each household Group, never the Group's JSON), their members'
bills, diagnoses, contracts and existing flags through indexed lookups (``repository``),
applies the rules (``assessment``), decides the writes (``flags.plan``) and makes them
through the record store with full access, each resource validated like any other write.
After the commit the changes are announced on the change feed. Locking the Groups makes a
full recompute and the incremental listener take turns on a household, so neither writes
from what it read before the other's commit.

The full recompute first screens a whole part of the city at once (:meth:`screen`): every
household's record and every member's bills summed per window range in SQL from the bill
table (``health.poverty.tables.poverty_costs``), one statement each for the part, the rules
applied to the sums. Only the households where a rule fires, a flag is active, a case is
open or figures are kept go on to the batches, which read their bills one by one — rows,
never the stored JSON — and compare them with the stored flags and evidence. A household
the screen passes over has nothing to write; one that changes meanwhile is the listener's.

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
    Finding,
    assess,
    medical_bill_start,
    totals_in,
)
from health.poverty.costs import CHINA_TIME, COST_TYPES, CostLine, CostTotals
from health.poverty.derived import (
    ASSESSMENTS,
    BILL_AMOUNTS,
    CASES,
    FLAGS,
    HOUSEHOLD_MEMBERS,
    HOUSEHOLDS,
)
from health.poverty.disease_groups import chapter_of
from health.poverty.flag_changes import record_flag_changes
from health.poverty.flags import FlagChange, Plan, StoredFlag, Write, plan
from health.poverty.households import Household, household_from_group
from health.poverty.money import format_yuan, from_fen
from health.poverty.rules import RULE_NAMES, RuleSet, months_before
from records.derived import derived_tables
from records.feed import announce
from records.indexing import SearchIndexer
from records.store import NewResource, ResourceStore
from records.validation import validate_resource

logger = logging.getLogger(__name__)

#: The derived tables the recompute reads instead of the stored JSON.
READ_TABLES = (BILL_AMOUNTS, HOUSEHOLDS, HOUSEHOLD_MEMBERS, FLAGS, ASSESSMENTS, CASES)
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


#: Households screened in one pass: their records and sums are held in memory meanwhile
#: (a few KB a household), so a province is screened in ranges of this many.
SCREENED_AT_ONCE = 50_000


@dataclass(frozen=True, slots=True)
class Part:
    """A share of a full recompute: the households whose Group's rid is in one of
    ``ranges`` (first, last; their ``poverty_households`` rows), and ``others``, Groups with
    an active flag that are no household now."""

    ranges: tuple[tuple[int, int], ...]
    others: tuple[str, ...] = ()


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
            flag = stored.flag or {}
            period = flag.get("period") or {}
            text = (flag.get("code") or {}).get("text", "")
            out.append(
                f"  [{flag.get('status')}] {text} (Flag/{stored.flag_id}, "
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
        missing = [d.name for d in READ_TABLES if d not in derived_tables()]
        if missing:
            # Without them the store writes none of their rows, and every bill (or household,
            # or flag) written since would seem gone.
            raise RuntimeError(
                f"the illness-poverty tables {', '.join(missing)} are not registered with the "
                "record store: reinstall the package (pip install -e .) so its entry points "
                "are known"
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
        (part,) = await self.parts(1)
        await self.recompute_part(part, as_of, report, batch_size, concurrency)
        await self.refresh_statistics_after(report)
        report.seconds = time.perf_counter() - started
        return report

    async def refresh_statistics_after(self, report: RecomputeReport) -> None:
        """After writing many flags, let the planner know they are there."""
        if len(report.changes) >= _MANY_CHANGES:
            async with self.database.transaction(write=False) as session:
                await repository.refresh_statistics(session)

    async def parts(self, count: int) -> list[Part]:
        """A full recompute in ``count`` parts of about as many households each, in ranges
        of at most :data:`SCREENED_AT_ONCE`; the first part also takes the Groups with an
        active flag that are no household now."""
        async with self.database.transaction(write=False) as session:
            rids = await repository.household_rids(session)
            others = tuple(await repository.flagged_non_households(session))
        cuts = [len(rids) * k // count for k in range(count + 1)]
        parts = []
        for k in range(count):
            mine = rids[cuts[k] : cuts[k + 1]]
            ranges = tuple(
                (mine[i], mine[min(i + SCREENED_AT_ONCE, len(mine)) - 1])
                for i in range(0, len(mine), SCREENED_AT_ONCE)
            )
            if ranges or k == 0:
                parts.append(Part(ranges, others if k == 0 else ()))
        return parts

    async def recompute_part(
        self,
        part: Part,
        as_of: dt.date,
        report: RecomputeReport,
        batch_size: int = 500,
        concurrency: int | None = None,
    ) -> None:
        """One part of the full recompute: each range of its households screened on their
        sums in one pass (:meth:`screen`), then those that need it recomputed in locked
        batches; then the Groups that are no household now."""
        for first, last in part.ranges:
            started = time.perf_counter()
            households = report.households
            candidates = await self.screen(first, last, as_of, report)
            screened = time.perf_counter()
            await self.run_batches(candidates, as_of, report, batch_size, concurrency, counted=True)
            logger.info(
                "screened %d households in %.1f s, recomputed %d of them in %.1f s",
                report.households - households,
                screened - started,
                len(candidates),
                time.perf_counter() - screened,
            )
        await self.run_batches(
            list(part.others), as_of, report, batch_size, concurrency, counted=True
        )

    async def screen(
        self, first: int, last: int, as_of: dt.date, report: RecomputeReport
    ) -> list[str]:
        """The households whose Group's rid is from ``first`` to ``last`` that a recompute
        must look at one by one, in rid order: those where a rule fires on the sums of their
        bills, or that have an active flag, an open case or figures. Set-based, in one read
        transaction: every household's record, every member's bills summed per window range,
        diagnoses and contracts, a statement each for the whole range. Counts what it read
        in ``report``, for all the households; the locked batches that follow decide again,
        from what they read under the lock, and write."""
        rules = self.rules
        since = rules.window_start(as_of)
        starts = window_starts(rules, as_of)
        async with self.database.transaction(write=False) as session:
            records = await repository.household_records(
                session, repository.households_between(first, last)
            )
            patients = repository.patients_between(first, last)
            sums: dict[str, list[CostLine]] = defaultdict(list)
            for bucket in await repository.cost_buckets(
                session, patients, starts, as_of, rules.unsettled_claims
            ):
                sums[bucket.patient_id].append(bucket_line(bucket, starts))
                report.bills += bucket.bills
            report.bills_not_counted.update(
                await repository.bills_not_counted(session, patients, since)
            )
            diagnoses = await self._diagnoses(session, patients)
            contracts = await repository.contracts(session, patients, as_of)
            watched = await repository.groups_watched(session)
        candidates = []
        for record in records:
            household = record.on(as_of)
            members = household.patient_ids
            findings = assess(
                evidence(
                    household, [s for p in members for s in sums.get(p, ())], diagnoses, contracts
                ),
                rules,
                as_of,
            )
            report.households += 1
            for finding in findings:
                if finding.state == "unknown":
                    report.not_assessed[finding.rule] += 1
            if record.group_id in watched or any(f.fires for f in findings):
                candidates.append(record.group_id)
        return candidates

    async def _diagnoses(
        self, session: AsyncSession, patients: repository.Ids
    ) -> dict[str, list[Diagnosis]]:
        found: dict[str, list[Diagnosis]] = defaultdict(list)
        for diagnosis in await repository.diagnoses(
            session, patients, self.rules.condition_categories
        ):
            found[diagnosis.patient_id].append(diagnosis)
        return found

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
        *,
        counted: bool = False,
    ) -> None:
        """``group_ids`` in batches of ``batch_size``, each in its own transaction, up to
        ``concurrency`` at once. ``counted``: the households and bills were counted in
        ``report`` already (by :meth:`screen`), only the flag changes are added."""
        if not group_ids:
            return
        # SQLite runs one write transaction at a time: a second would only wait.
        limit = 1 if self.database.is_sqlite else max(1, concurrency or 2)
        gate = asyncio.Semaphore(limit)
        now = utcnow()

        async def run(batch: Sequence[str]) -> None:
            async with gate:
                await self._recompute_batch(batch, as_of, now, report, counted=counted)

        batches = [group_ids[i : i + batch_size] for i in range(0, len(group_ids), batch_size)]
        await asyncio.gather(*(run(batch) for batch in batches))

    async def _recompute_batch(
        self,
        group_ids: Sequence[str],
        as_of: dt.date,
        now: dt.datetime,
        report: RecomputeReport,
        *,
        counted: bool = False,
    ) -> None:
        """One batch in one transaction: the households' records read under their Groups'
        locks, their bills one by one from the bill table, their diagnoses and contracts;
        the rules applied; only the households where a rule fires, a flag is active or a
        case is open have their stored flags and evidence read and compared, and figures
        kept."""
        rules = self.rules
        since = rules.window_start(as_of)
        async with self.database.transaction(write=True) as session:
            store = ResourceStore(session, self.indexer)
            groups = await repository.lock_households(session, group_ids)
            households: dict[str, Household] = {
                group_id: record.on(as_of)
                for group_id, record in groups.items()
                if record is not None
            }
            patients = sorted({p for h in households.values() for p in h.patient_ids})
            lines: dict[str, list[CostLine]] = defaultdict(list)
            for line in await repository.cost_lines(
                session, patients, since, as_of, rules.unsettled_claims
            ):
                lines[line.patient_id].append(line)
            if not counted:
                report.households += len(households)
                report.bills += sum(len(found) for found in lines.values())
                report.bills_not_counted.update(
                    await repository.bills_not_counted(session, patients, since)
                )
            diagnoses = await self._diagnoses(session, patients)
            contracts = await repository.contracts(session, patients, as_of)
            flagged = await repository.groups_with_active_flags_among(session, list(groups))
            followed = await repository.open_cases_of(session, list(households))

            candidates: list[str] = []
            findings_of: dict[str, tuple[Evidence, list[Finding]]] = {}
            for group_id in group_ids:
                household = households.get(group_id)
                if household is None:
                    if group_id in flagged:
                        candidates.append(group_id)
                    continue
                members = household.patient_ids
                found = evidence(
                    household, [x for p in members for x in lines.get(p, ())], diagnoses, contracts
                )
                findings = assess(found, rules, as_of)
                if not counted:
                    for finding in findings:
                        if finding.state == "unknown":
                            report.not_assessed[finding.rule] += 1
                if group_id in flagged or group_id in followed or any(f.fires for f in findings):
                    candidates.append(group_id)
                    findings_of[group_id] = (found, findings)

            existing = await repository.active_flags_of_groups(session, candidates)

            def decide(group_id: str) -> Plan:
                household = households.get(group_id)
                flags = existing.get(group_id, [])
                if household is None:
                    return plan(None, group_id, [], flags, rules, now)
                return plan(household, group_id, findings_of[group_id][1], flags, rules, now)

            plans = {group_id: decide(group_id) for group_id in candidates}
            # Flags to end, or whose evidence has no digest: read them, and decide again.
            unread = {g for g, decided in plans.items() if decided.needs}
            if unread:
                await repository.read_flags(session, [f for g in unread for f in existing[g]])
                plans.update((group_id, decide(group_id)) for group_id in unread)
            writes = [w for decided in plans.values() for w in decided.writes]
            changes = [c for decided in plans.values() for c in decided.changes]
            figures = [
                household_figures(findings_of[group_id][0], rules, as_of)
                for group_id in candidates
                if group_id in findings_of
            ]
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


def evidence(
    household: Household,
    costs: Sequence[CostLine],
    diagnoses: dict[str, list[Diagnosis]],
    contracts: dict[str, str],
) -> Evidence:
    """What the rules are given about one household: its members' bills (or sums), their
    diagnoses and family-doctor contracts, and their names for the rationales."""
    members = household.patient_ids
    return Evidence(
        household,
        costs,
        [d for p in members for d in diagnoses.get(p, ())],
        {p: contracts[p] for p in members if p in contracts},
        {m.patient_id: m.name for m in household.members if m.patient_id and m.name},
    )


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


def _recompute_in_process(
    database_url: str,
    redis_url: str | None,
    rules: RuleSet,
    part: Part,
    as_of: dt.date,
    batch_size: int,
) -> RecomputeReport:
    async def run() -> RecomputeReport:
        database = Database(database_url)
        bus = create_bus(redis_url, _namespace(database_url)) if redis_url else None
        try:
            service = IllnessPovertyService(database, SearchIndexer(), rules, bus=bus)
            report = RecomputeReport(as_of, rules.version)
            await service.recompute_part(part, as_of, report, batch_size, 2)
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
    """The full recompute spread over ``processes`` worker processes (one per core), each
    taking one :class:`Part` of the households.

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
        parts = await service.parts(processes)
    finally:
        if bus is not None:
            await bus.close()
        await database.dispose()
    report = RecomputeReport(as_of, rules.version)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=processes) as pool:
        reports = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool,
                    _recompute_in_process,
                    database_url,
                    redis_url,
                    rules,
                    part,
                    as_of,
                    batch_size,
                )
                for part in parts
            )
        )
    for part_report in reports:
        report.merge(part_report)
    database = Database(database_url)
    try:
        await IllnessPovertyService(database, SearchIndexer(), rules).refresh_statistics_after(
            report
        )
    finally:
        await database.dispose()
    report.seconds = time.perf_counter() - started
    return report
