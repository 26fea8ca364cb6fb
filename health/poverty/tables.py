"""The illness-poverty service's tables.

Two kinds, and the difference matters:

* **Derived from the stored resources** (``records.derived``; the rows of
  :mod:`health.poverty.derived` write them): ``poverty_costs`` (one row per bill — an
  ExplanationOfBenefit, Claim or Invoice — with its amounts), ``poverty_households`` and
  ``poverty_household_members`` (the household Groups and every member they list, with
  the period each belongs), ``poverty_flags`` (the illness-poverty Flags),
  ``poverty_assessments`` (a digest of each of their RiskAssessments), ``poverty_cases``
  and ``poverty_case_steps`` (the follow-up Tasks).
  The record store writes them in the same transaction as each version of those resources,
  so they never disagree with the JSON; ``health poverty rebuild-costs`` (and
  ``records.derived.rebuild`` for the others) refills them.
* **Written by the recompute** in the transaction that changes the flags:
  ``poverty_flag_changes`` (every flag raised, updated or deactivated: what the registry
  feed and ``health registry export`` send) and ``poverty_household_figures`` with
  ``poverty_household_diseases`` (the last assessment's figures of each household under
  follow-up, for the commission's dashboard).

Money is kept in 分 (fen, 1 元 = 100 分) as integers: sums are exact on SQLite and PostgreSQL
alike, and :func:`health.poverty.money.from_fen` gives the Decimal yuan back.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from health.core.schema import SurrogateKey, metadata


def _rid(*, primary: bool = True) -> Column:
    return Column(
        "rid",
        SurrogateKey,
        ForeignKey("resources.rid", ondelete="CASCADE"),
        primary_key=primary,
        nullable=False,
    )


def _fen(name: str) -> Column:
    return Column(name, BigInteger, nullable=True)


poverty_costs = Table(
    "poverty_costs",
    metadata,
    _rid(),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    #: The patient the bill names (None: it names none, and does not count).
    Column("patient_id", String(64), nullable=True),
    #: The day it was settled, in China Standard Time (None: no usable date).
    Column("settled_on", Date, nullable=True),
    #: Whether it counts at all (an active, CNY, dated bill for a patient); if not, why not.
    Column("counted", Boolean, nullable=False),
    Column("not_counted", Text, nullable=True),
    #: False for a Claim: no adjudication yet, so its split is not known.
    Column("settled", Boolean, nullable=False),
    #: ``Claim/<id>`` that an ExplanationOfBenefit answers (the Claim then drops out).
    Column("answers", String(128), nullable=True),
    Column("currency", String(8), nullable=True),
    Column("provider", String(255), nullable=True),
    _fen("billed"),
    _fen("basic"),
    _fen("serious"),
    _fen("assistance"),
    _fen("other"),
    _fen("out_of_pocket"),
    Index(None, "patient_id", "settled_on"),
    Index(None, "answers"),
)

poverty_households = Table(
    "poverty_households",
    metadata,
    _rid(),
    Column("group_id", String(64), nullable=False, unique=True),
    Column("number", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("status", String(32), nullable=False),
    #: Members on the day the row was written (the dashboard's figure; the rules count the
    #: members of the day of assessment, from ``quantity`` and the members' periods).
    Column("size", Integer, nullable=False),
    Column("township", Text, nullable=True),
    Column("village", Text, nullable=True),
    Column("main_cause", Text, nullable=True),
    _fen("income_per_capita"),
    #: The rest of what the rules read (``health.poverty.households.HouseholdRecord``):
    #: Group.quantity, the status's words, the income's year, the other causes (a JSON
    #: array) and the Group's meta tags and security labels (a JSON object) that flags copy.
    Column("quantity", Integer, nullable=True),
    Column("status_text", Text, nullable=True),
    Column("income_year", Integer, nullable=True),
    Column("other_causes", Text, nullable=True),
    Column("meta", Text, nullable=True),
    Index(None, "township", "village"),
    Index(None, "number"),
)

poverty_household_members = Table(
    "poverty_household_members",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    _rid(primary=False),
    Column("group_id", String(64), nullable=False),
    Column("position", Integer, nullable=False),
    Column("patient_id", String(64), nullable=True),
    Column("name", Text, nullable=True),
    Column("resident_id", String(32), nullable=True),
    Column("relationship", Text, nullable=True),
    #: The first ten characters of the member's period (``YYYY-MM-DD``; None: open): a
    #: member belongs on the days from ``period_start`` to ``period_end``.
    Column("period_start", String(10), nullable=True),
    Column("period_end", String(10), nullable=True),
    Index(None, "rid"),
    Index(None, "group_id"),
    Index(None, "patient_id"),
)

poverty_flags = Table(
    "poverty_flags",
    metadata,
    _rid(),
    Column("flag_id", String(64), nullable=False),
    Column("group_id", String(64), nullable=False),
    Column("rule", String(64), nullable=True),
    Column("kind", String(64), nullable=True),
    Column("rules_version", String(64), nullable=True),
    Column("active", Boolean, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("assessment_id", String(64), nullable=True),
    Index(None, "group_id", "active"),
    Index(None, "active", "rule"),
)

poverty_assessments = Table(
    "poverty_assessments",
    metadata,
    _rid(),
    Column("assessment_id", String(64), nullable=False, unique=True),
    #: ``health.poverty.flags.evidence_digest`` of what the RiskAssessment says: a recompute
    #: tells whether a flag's evidence changed without reading it.
    Column("evidence", String(64), nullable=False),
)

poverty_cases = Table(
    "poverty_cases",
    metadata,
    _rid(),
    Column("task_id", String(64), nullable=False, unique=True),
    Column("group_id", String(64), nullable=False),
    #: identified, verified, assisted, monitoring, closed, rejected (health.poverty.cases).
    Column("stage", String(32), nullable=False),
    Column("open", Boolean, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("stage_at", DateTime(timezone=True), nullable=False),
    Column("first_assisted_at", DateTime(timezone=True), nullable=True),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    Column("due_at", DateTime(timezone=True), nullable=True),
    #: The township worker the Task is assigned to (Practitioner id and name).
    Column("owner_id", String(64), nullable=True),
    Column("owner_name", String(128), nullable=True),
    #: Help given so far, codes of ASSISTANCE_KINDS joined by spaces.
    Column("help", String(255), nullable=True),
    Column("reason", Text, nullable=True),
    Index(None, "open", "stage"),
    Index(None, "group_id"),
    Index(None, "owner_id"),
)

poverty_case_steps = Table(
    "poverty_case_steps",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    _rid(primary=False),
    Column("task_id", String(64), nullable=False),
    Column("position", Integer, nullable=False),
    Column("stage", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("author", String(128), nullable=True),
    Column("note", Text, nullable=True),
    Column("help", String(255), nullable=True),
    Column("reason", Text, nullable=True),
    Column("assignee", String(128), nullable=True),
    Index(None, "rid"),
    Index(None, "task_id"),
)

poverty_flag_changes = Table(
    "poverty_flag_changes",
    metadata,
    #: The order changes were committed in, per database: the export's and feed's cursor.
    Column("seq", SurrogateKey, primary_key=True, autoincrement=True),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    #: raised, updated, deactivated
    Column("action", String(16), nullable=False),
    Column("group_id", String(64), nullable=False),
    Column("household_number", String(64), nullable=True),
    Column("household_name", String(128), nullable=True),
    Column("township", String(128), nullable=True),
    Column("village", String(128), nullable=True),
    Column("rule", String(64), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("flag_id", String(64), nullable=False),
    Column("rules_version", String(64), nullable=False),
    Index(None, "changed_at"),
    Index(None, "group_id", "seq"),
)

poverty_household_figures = Table(
    "poverty_household_figures",
    metadata,
    Column("group_id", String(64), primary_key=True),
    Column("assessed_at", DateTime(timezone=True), nullable=False),
    Column("as_of", Date, nullable=False),
    #: The rules' twelve-month household window.
    Column("window_start", Date, nullable=False),
    Column("bills", Integer, nullable=False),
    _fen("billed"),
    _fen("basic"),
    _fen("serious"),
    _fen("assistance"),
    _fen("other"),
    _fen("out_of_pocket"),
)

poverty_household_diseases = Table(
    "poverty_household_diseases",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    Column("group_id", String(64), nullable=False),
    #: ICD-10 chapter of the diagnosis (health.poverty.disease_groups).
    Column("disease_group", String(16), nullable=False),
    Index(None, "group_id"),
    Index(None, "disease_group"),
)
