"""Who may see and do what with the records: the access policy the record store enforces.

The default is deny (health records are sensitive personal information under the PIPL).
A caller sees:

- **directory and definitions** (:data:`SHARED_TYPES`: clinics, practitioners, value sets…),
  whatever the role;
- **patients' records** only through the patients "in their care", decided per role:
  a village doctor's are the patients whose managing organisation is her clinic; a township
  doctor's add the village clinics under the township (``Organization.partOf``); a
  specialist's are the patients shared with him by an active Consent naming him as actor
  (until its period ends, plus :attr:`Settings.consent_grace_seconds`); a commission
  analyst's are the persons and household members under an active illness-poverty Flag.
  Everybody's add the patients they opened by break-glass, until the grant expires;
- **the follow-up Tasks of illness-poverty cases** (``meta.tag`` illness-poverty-case) by
  case workers — commission analysts with the case-worker right — every one of them, open
  or ended, whether or not the household's flags are still active (a case outlives the
  flag whose cause help removed: it is then monitored and closed). A commission analyst
  has no area narrower than the commission's, so neither has a case worker. Of all that a
  caller may see, only a case worker writes a case Task, and only by updating it: cases
  are opened and ended by the service (``health.poverty.case_rules`` then holds each update
  to one legal step, as the caller). Other analysts write nothing;
- **a consult's own workflow resources** (its ServiceRequest, Task, Appointment and CareTeam,
  not the patient's record) by the consult's parties who have no Consent yet: the
  specialists of the department it was sent to (or the practitioner it names), so that
  they can see the request in their queue and accept it, and the practitioners invited to
  it (named in its CareTeam), so that they can find the call. The record itself opens to
  the specialist only through the Consent that accepting the consult writes;
- admins see the directory and the audit trail, and no clinical record.

"In the record of patient P" means in P's compartment (the official CompartmentDefinition),
which the store indexes as ``search_compartment``, and the Tasks ``for`` P (the official
compartment has no Tasks). A doctor's clinics see the records they hold: the store keeps,
for each row in a patient's record, her managing organisations (``search_custodian``, see
:mod:`records.custodians`), so the question is one indexed equality per row, however many
patients the clinics have. The whole rule is one SQL condition
(:meth:`AccessPolicy.visible`) that the store adds to every query. Whoever may see a
patient may see her whole record, which the store relies on: a search of one patient's
record tests whether the caller may see the patient, not each of its rows. SMART scopes
narrow it further by type and interaction, and a token with a patient context
(``patient/`` scopes) sees that patient's record only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    and_,
    bindparam,
    case,
    exists,
    false,
    literal,
    or_,
    select,
    union,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import FromClause

from health.auth.scopes import ScopeSet
from health.auth.tables import access_grants
from health.core.clock import utcnow
from health.core.naming import (
    CONSULT_SYSTEM,
    CONSULTATION_CATEGORY,
    ILLNESS_POVERTY_CASE_TAG,
    ILLNESS_POVERTY_TAG,
    TAG_SYSTEM,
)
from health.core.statements import KeyedOnce
from records.custodians import COMPARTMENT
from records.definitions import resource_types, search_parameters
from records.outcome import FhirError
from records.tables import (
    resources,
    search_compartment,
    search_custodian,
    search_date,
    search_reference,
    search_token,
)

ROLES = ("village_doctor", "township_doctor", "specialist", "commission_analyst", "admin")
#: The role of an API client authenticated with client_credentials: its scopes decide.
SYSTEM_ROLE = "system"
DOCTOR_ROLES = frozenset({"village_doctor", "township_doctor", "specialist"})

#: Types that are nobody's personal record: the directory and shared definitions.
DIRECTORY_TYPES = frozenset(
    {"Organization", "Location", "Practitioner", "PractitionerRole", "HealthcareService"}
)
SHARED_TYPES = DIRECTORY_TYPES | frozenset(
    {
        "Endpoint",
        "Medication",
        "Substance",
        "ValueSet",
        "CodeSystem",
        "ConceptMap",
        "NamingSystem",
        "StructureDefinition",
        "SearchParameter",
        "OperationDefinition",
        "Questionnaire",
        "ActivityDefinition",
        "PlanDefinition",
        "InsurancePlan",
    }
)
#: The audit trail: written by the service only, never through the API.
AUDIT_TYPE = "AuditEvent"
_ALL_TYPES = frozenset(resource_types())
#: What a case worker (an analyst with the case-worker right) may write, and how: the
#: follow-up Tasks of illness-poverty cases, by updating them (``u``; the content rule is
#: ``health.poverty.case_rules``).
CASE_WORKER_WRITES = {"Task": frozenset("u")}
#: What a commission analyst may read of the people in their cases: the household, its
#: flags and their evidence (diagnoses, bills, cover), and the follow-up — not the rest of
#: the clinical record (observations, prescriptions, notes).
ANALYST_READABLE = SHARED_TYPES | frozenset(
    {
        "Patient",
        "Group",
        "Flag",
        "RiskAssessment",
        "Condition",
        "ExplanationOfBenefit",
        "Claim",
        "ClaimResponse",
        "Invoice",
        "Coverage",
        "Task",
    }
)
#: Who reads the audit trail: administrators, and the clinics of the patients it is about.
AUDIT_READERS = frozenset({"admin", "village_doctor", "township_doctor", SYSTEM_ROLE})
WRITES = frozenset("cud")


@dataclass(frozen=True)
class Subject:
    """The authenticated caller of one request."""

    #: ``user:wangfang`` or ``client:<client_id>``.
    id: str
    role: str
    organization: str | None
    practitioner: str | None
    scopes: ScopeSet
    #: The patient of a ``patient/`` launch context, if any.
    patient: str | None = None
    #: The access token's id, for the audit trail.
    token_id: str | None = None
    #: The user's case-worker right (``users.case_worker``): a commission analyst who takes
    #: the steps of illness-poverty cases.
    case_worker: bool = False

    @property
    def username(self) -> str | None:
        return self.id.split(":", 1)[1] if self.id.startswith("user:") else None


class AccessPolicy:
    """:class:`records.access.RecordAccess` for one subject: what the token's scopes and the
    role allow (:meth:`require`, :meth:`types_allowed`), and the rows the subject may see
    (:meth:`visible`, from the :class:`RowPolicy` of everyone who sees the same rows)."""

    def __init__(
        self, subject: Subject, *, consent_grace_seconds: int, rows: RowPolicy | None = None
    ) -> None:
        self.subject = subject
        self.rows = rows or row_policy(_viewer_of(subject), consent_grace_seconds)

    # -- interactions ----------------------------------------------------------------------

    def require(self, res_type: str, interaction: str) -> None:
        if not self.subject.scopes.allows(res_type, interaction):
            raise FhirError.of(
                403,
                f"The access token's scopes do not allow '{interaction}' on {res_type}",
                code="forbidden",
            )
        problem = self._role_refuses(res_type, interaction)
        if problem:
            raise FhirError.of(403, problem, code="forbidden")

    def _role_refuses(self, res_type: str, interaction: str) -> str | None:
        role = self.subject.role
        writing = interaction in WRITES
        if res_type == AUDIT_TYPE and writing:
            return "The audit trail is written by the service only"
        if role == SYSTEM_ROLE:
            return None
        if role == "admin":
            if res_type in DIRECTORY_TYPES or (res_type == AUDIT_TYPE and not writing):
                return None
            if res_type in SHARED_TYPES and not writing:
                return None
            return "Administrators keep the directory and accounts; clinical records are not theirs"
        if role not in ROLES:
            return f"Unknown role {role!r}"
        if res_type == AUDIT_TYPE and role not in AUDIT_READERS:
            return "The audit trail is read by administrators and the patient's own clinic"
        if writing and res_type in SHARED_TYPES:
            return f"{res_type} is directory data, kept by administrators"
        if role == "specialist" and res_type == "Consent" and writing:
            return (
                "Specialists are shared records by the consults they accept; "
                "they do not write Consents"
            )
        if role == "commission_analyst":
            if writing and not self.subject.case_worker:
                return (
                    "Commission analysts follow cases; taking their steps needs the "
                    "case-worker right"
                )
            if writing and interaction not in CASE_WORKER_WRITES.get(res_type, frozenset()):
                if res_type in CASE_WORKER_WRITES:
                    return (
                        "Cases are opened and ended by the service; a case worker takes "
                        "their steps by updating the case's Task"
                    )
                return "Case workers take the steps of cases; they do not write clinical records"
            if res_type not in ANALYST_READABLE:
                return f"Commission analysts follow cases; {res_type} is not part of a case"
        return None

    def types_allowed(self, interaction: str) -> frozenset[str] | None:
        by_scope = self.subject.scopes.types_allowed(interaction)
        by_role: frozenset[str] | None = None
        role = self.subject.role
        if role == "admin":
            by_role = SHARED_TYPES | {AUDIT_TYPE}
        elif role == "commission_analyst":
            by_role = ANALYST_READABLE
        elif role == "specialist":
            by_role = _ALL_TYPES - {AUDIT_TYPE}
        if by_scope is None:
            return by_role
        return by_scope if by_role is None else by_scope & by_role

    def visible(
        self, r: FromClause, types: Collection[str] | None = None
    ) -> ColumnElement[bool] | None:
        return self.rows.visible(r, types)

    async def settled(self, session: AsyncSession, types: Collection[str]) -> AccessPolicy:
        question = self.rows.question(types)
        if question is None:
            return self
        answer = (await session.execute(question)).all()
        return AccessPolicy(
            self.subject,
            consent_grace_seconds=self.rows.grace_seconds,
            rows=self.rows.answered(types, answer),
        )


#: Conditions of a row policy kept per set of searched types (most searches name one type).
MAX_CACHED_CONDITIONS = 64


@cache
def _about_groups() -> frozenset[str]:
    """The types whose ``subject`` may be a Group: those that can be about a household."""
    return frozenset(
        base
        for parameter in search_parameters()
        if parameter["code"] == "subject" and "Group" in (parameter.get("target") or ())
        for base in parameter["base"]
    )


def _any_about_a_household(types: Collection[str]) -> ColumnElement[bool]:
    """Whether any resource of these types is about a household, asked once for the
    statement (an uncorrelated EXISTS, which PostgreSQL makes an InitPlan) from the few
    references to Groups.

    Most types that may be about a household almost never are (a Condition, an
    Observation): when none is, no row pays the per-row lookup of what it is about, 0.013 ms
    a row, 7 ms of a township doctor's count of her ICD-10 I10 conditions.
    """
    about = search_reference.alias()
    return exists().where(
        about.c.target_type == "Group",
        about.c.param == "subject",
        about.c.res_type.in_(sorted(types)),
    )


def _viewer_of(subject: Subject) -> Subject:
    """The subject with only what decides the rows it sees: who, in which role, clinic and
    patient context; not the token's id, nor its scopes (:class:`AccessPolicy` applies
    those by type and interaction)."""
    return replace(subject, scopes=ScopeSet(), token_id=None)


@dataclass(frozen=True)
class Known:
    """What the rows a viewer sees depend on besides themselves, as far as it is known
    (:meth:`RowPolicy.answered`): ``grants``, whether the viewer holds any unexpired
    break-glass grant (None: not known); ``householdless``, types of which no resource is
    about a household; and ``clinics``, a doctor's clinics (None: asked in each statement)."""

    grants: bool | None = None
    householdless: frozenset[str] = frozenset()
    clinics: tuple[str, ...] | None = None


@lru_cache(maxsize=4096)
def row_policy(viewer: Subject, consent_grace_seconds: int, known: Known = Known()) -> RowPolicy:
    """The row policy of everyone who sees the rows ``viewer`` sees, made once per process
    for each answer to its questions (:meth:`RowPolicy.question`): building the SQL of a
    township doctor's condition costs 4-9 ms, more than running it."""
    return RowPolicy(viewer, consent_grace_seconds, known)


def _clock(earlier_by: dt.timedelta = dt.timedelta(0)) -> Any:
    """The moment a statement runs (less ``earlier_by``), as a parameter: a row policy's SQL
    is built once and run at many moments."""
    return bindparam(None, callable_=lambda: utcnow() - earlier_by, type_=DateTime(timezone=True))


class RowPolicy:
    """The rows one viewer may see, as SQL conditions built once and reused by every
    request of every subject who sees the same rows (:func:`row_policy`). Every moment in
    them (a grant's or a consent's end, a flag's period) is the moment the statement runs.

    What the rows depend on besides themselves may be :class:`Known` (:meth:`answered`);
    the parts of the conditions that could only match through it are then left out, and
    the clinics are named.
    """

    def __init__(
        self, subject: Subject, consent_grace_seconds: int, known: Known = Known()
    ) -> None:
        self.subject = subject
        self.grace_seconds = consent_grace_seconds
        self.grace = dt.timedelta(seconds=consent_grace_seconds)
        self.known = known
        self._ctes: tuple[Any, Any] | None = None
        self._consults: Any = None
        self._clinics: Any = None
        self._of_resources: dict[frozenset[str] | None, ColumnElement[bool] | None] = {}
        self._questions: dict[frozenset[str], Any] = {}

    def visible(
        self, r: FromClause, types: Collection[str] | None = None
    ) -> ColumnElement[bool] | None:
        """The condition that the ``resources`` row ``r`` is visible; None: everything is.

        ``types``: ``r`` is known to be of one of these types (a search's), so that the parts
        of the condition no row of them can meet are left out. PostgreSQL plans every part of
        a statement whether or not a row ever reaches it: for a Patient search, the Task and
        household parts and the CTEs they read were 2 ms of each statement's planning.
        """
        kinds = None if types is None else frozenset(types)
        if r is not resources:
            return self._visible(r, kinds)
        if kinds not in self._of_resources:
            condition = self._visible(r, kinds)
            if len(self._of_resources) >= MAX_CACHED_CONDITIONS:
                return condition
            self._of_resources[kinds] = None if condition is None else KeyedOnce(condition)
        return self._of_resources[kinds]

    def _sees_all_rows(self) -> bool:
        return self.subject.role == SYSTEM_ROLE and self.subject.patient is None

    def question(self, types: Collection[str]) -> Any:
        """What a search of ``types`` would have this policy know, not known yet, as a SELECT
        of rows ``(fact, value)``: ``grants`` and ``households`` (``1`` or ``0``), and one
        ``clinic`` row per clinic whose records a doctor holds; None when nothing is to be
        asked. All are asked of indexes, at once, in a fraction of a millisecond.

        Left in the search's statements, as subqueries, they cost more each time: the
        grant and household branches (whose answer is almost always no) 2-3 ms of a
        township doctor's ICD-10 search's planning; her clinics as a subquery made every
        row's custodian test a join, 5.9 ms against 3.7 with her nine clinics named.

        Made once per set of types, like the conditions: building it took 0.6 ms."""
        about = (frozenset(types) & _about_groups()) - self.known.householdless
        if about in self._questions:
            return self._questions[about]
        question = self._question(about)
        if len(self._questions) < MAX_CACHED_CONDITIONS:
            self._questions[about] = question
        return question

    def _question(self, about: frozenset[str]) -> Any:
        if self._sees_all_rows() or self.subject.role == "admin":
            return None

        def fact(name: str, holds: ColumnElement[bool]) -> Any:
            return select(literal(name).label("fact"), case((holds, "1"), else_="0"))

        facts = []
        granted = self._granted() if self.known.grants is None else None
        if granted is not None:
            facts.append(fact("grants", granted.exists()))
        if about:
            facts.append(fact("households", _any_about_a_household(about)))
        clinics = self._clinics_in_care() if self.known.clinics is None else None
        if clinics is not None:
            ids = clinics.subquery()
            facts.append(select(literal("clinic").label("fact"), *ids.c))
        if not facts:
            return None
        return union_all(*facts) if len(facts) > 1 else facts[0]

    def answered(self, types: Collection[str], rows: Iterable[Any]) -> RowPolicy:
        """The policy with the answer to :meth:`question` for ``types`` (its rows) known."""
        rows = list(rows)
        told = {fact: value for fact, value in rows if fact != "clinic"}
        known = self.known
        if known.clinics is None and self._clinics_in_care() is not None:
            clinics = tuple(sorted({value for fact, value in rows if fact == "clinic"}))
            known = replace(known, clinics=clinics)
        if "grants" in told:
            known = replace(known, grants=told["grants"] == "1")
        if told.get("households") == "0":
            about = frozenset(types) & _about_groups()
            known = replace(known, householdless=known.householdless | about)
        return row_policy(self.subject, self.grace_seconds, known)

    def _visible(self, r: FromClause, kinds: frozenset[str] | None) -> ColumnElement[bool] | None:
        role = self.subject.role
        if self._sees_all_rows():
            return None
        shared = r.c.res_type.in_(SHARED_TYPES)
        if role == "admin":
            return or_(shared, r.c.res_type == AUDIT_TYPE)
        patients, households = self._in_care()
        in_care = self._in_records_in_care(r, patients)
        about = search_reference.alias()
        # The official Patient compartment holds a Group through its members, but not what
        # is about the Group — a household's Flags and RiskAssessments — which belongs to
        # each member's record just the same.
        # Asked of each row (OFFSET 0), not answered for every row at once: PostgreSQL would
        # otherwise list everything about every household in care before the first row (5 ms
        # for a township's 176), where most rows are about no household and, asked singly,
        # never make it compute the households at all.
        about_household = (
            select(literal(1))
            .where(
                about.c.rid == r.c.rid,
                about.c.param == "subject",
                about.c.target_type == "Group",
                about.c.target_id.in_(select(households.c.id)),
            )
            .offset(0)
            .exists()
        )
        # The official Patient compartment leaves Task out; a Task for a patient (a consult's
        # state, a follow-up) is part of that patient's record here.
        task_for = search_reference.alias()
        task_for_patient = and_(
            r.c.res_type == "Task",
            exists().where(
                task_for.c.rid == r.c.rid,
                task_for.c.param == "subject",
                task_for.c.target_type == "Patient",
                task_for.c.target_id.in_(select(patients.c.id)),
            ),
        )
        rows = [in_care]
        if kinds is None or kinds & SHARED_TYPES:
            rows.append(shared)
        householdless = self.known.householdless
        about_groups = None if kinds is None else (kinds & _about_groups()) - householdless
        if about_groups is None:
            rows.append(about_household)
        elif about_groups:
            rows.append(and_(_any_about_a_household(about_groups), about_household))
        if kinds is None or "Task" in kinds:
            rows.append(task_for_patient)
        consults = self._consults_as_party()
        if consults is not None:
            rows.append(_consult_workflow_rows(r, consults))
        if self.subject.role == "commission_analyst" and self.subject.case_worker:
            rows.append(_case_tasks(r))
        return or_(*rows)

    def _in_records_in_care(self, r: FromClause, patients: Any) -> ColumnElement[bool]:
        """``r`` is in the record of a patient in care: for a clinic's doctor, held by one
        of her clinics (``search_custodian``: one indexed equality per row) or opened by
        break-glass; for the other roles, in the compartment of one of their patients."""
        clinics = self._held_by_clinics()
        if clinics is None:
            return _in_records_of(r, select(patients.c.id))
        held = search_custodian.alias()
        # A test of each row (OFFSET 0 keeps PostgreSQL from hashing every row a township
        # holds, 230,000 at a million resources, to ask about the few a page looks at).
        by_clinic = (
            select(literal(1))
            .where(
                held.c.rid == r.c.rid,
                held.c.param == COMPARTMENT,
                held.c.org_id.in_(clinics),
            )
            .offset(0)
            .exists()
        )
        granted = self._granted()
        if granted is None:
            return by_clinic
        # Whether she holds any grant is asked once for the statement (PostgreSQL makes an
        # uncorrelated EXISTS an InitPlan) and almost always answers no: then no row pays the
        # compartment lookup of the grants' patients, 3 ms on a page of ICD-10 conditions.
        return or_(by_clinic, and_(granted.exists(), _in_records_of(r, granted)))

    def _clinics_in_care(self) -> Any:
        """The organisations whose patients a village or township doctor cares for (their
        ids when known, else a SELECT of them made once per policy), or None for the other
        roles."""
        subject = self.subject
        if subject.role not in ("village_doctor", "township_doctor") or not subject.organization:
            return None
        if self.known.clinics is not None:
            return self.known.clinics
        if self._clinics is None:
            self._clinics = _clinics(subject.organization, subject.role)
        return self._clinics

    def _held_by_clinics(self) -> Any:
        """The clinics whose records are all in care (a SELECT of ids): a doctor's, unless a
        patient launch context narrows her view to one patient; else None."""
        return self._clinics_in_care() if self.subject.patient is None else None

    def _granted(self) -> Any:
        """The patients the subject opened by break-glass, unexpired (a SELECT of ids); None
        when there can be none (a client's, or known to be none)."""
        if self.subject.username is None or self.known.grants is False:
            return None
        return select(access_grants.c.patient_id.label("id")).where(
            access_grants.c.username == self.subject.username,
            access_grants.c.expires_at > _clock(),
        )

    def _consults_as_party(self) -> Any:
        """The consults (ServiceRequest ids, a CTE made once per policy) the subject is a
        party to without a Consent: sent to their department or to them, or inviting them;
        None when there can be none."""
        if self._consults is not None:
            return self._consults
        subject = self.subject
        if subject.role not in DOCTOR_ROLES or subject.patient is not None:
            return None
        sources = []
        targets = []
        if subject.role == "specialist" and subject.organization:
            targets.append(("Organization", subject.organization))
        if subject.role == "specialist" and subject.practitioner:
            targets.append(("Practitioner", subject.practitioner))
        if targets:
            performer = search_reference.alias()
            category = search_token.alias()
            sources.append(
                select(resources.c.res_id.label("id")).where(
                    resources.c.res_type == "ServiceRequest",
                    resources.c.rid.in_(
                        select(performer.c.rid).where(
                            performer.c.res_type == "ServiceRequest",
                            performer.c.param == "performer",
                            or_(
                                *(
                                    and_(performer.c.target_type == t, performer.c.target_id == i)
                                    for t, i in targets
                                )
                            ),
                        )
                    ),
                    resources.c.rid.in_(
                        select(category.c.rid).where(
                            category.c.res_type == "ServiceRequest",
                            category.c.param == "category",
                            category.c.system == CONSULTATION_CATEGORY["system"],
                            category.c.code == CONSULTATION_CATEGORY["code"],
                        )
                    ),
                )
            )
        if subject.practitioner:
            member = search_reference.alias()
            identifier = search_token.alias()
            sources.append(
                select(identifier.c.code.label("id")).where(
                    identifier.c.res_type == "CareTeam",
                    identifier.c.param == "identifier",
                    identifier.c.system == CONSULT_SYSTEM,
                    identifier.c.rid.in_(
                        select(member.c.rid).where(
                            member.c.res_type == "CareTeam",
                            member.c.param == "participant",
                            member.c.target_type == "Practitioner",
                            member.c.target_id == subject.practitioner,
                        )
                    ),
                )
            )
        if not sources:
            return None
        query = union(*sources) if len(sources) > 1 else sources[0]
        self._consults = query.cte("consults_as_party")
        return self._consults

    def _in_care(self) -> tuple[Any, Any]:
        """The patients in care and their households, as CTEs made once per policy.

        A statement names them once at its top, however many of its subqueries (chains over
        every target type, ``_has``, includes) ask the same question; SQLite cannot nest the
        whole condition that deep, and PostgreSQL computes it once.
        """
        if self._ctes is None:
            patients = self.patients_in_care().cte("patients_in_care")
            clinics = self._held_by_clinics()
            if clinics is None:
                households = _groups_of(select(patients.c.id))
            else:
                # A clinic's households are the Groups it holds, found in the custodian
                # index; through the members' records each patient's whole record would be
                # read to find her Group (80 ms for a township's thousand patients).
                households = _held_by("Group", clinics)
                granted = self._granted()
                if granted is not None:
                    households = union(households, _groups_of(granted))
            # Computed once for the statement: a CTE named once is otherwise inlined, and a
            # walk would compute it again for every row it tests (0.13 ms each).
            self._ctes = (
                patients.prefix_with("MATERIALIZED", dialect="postgresql"),
                households.cte("households_in_care").prefix_with(
                    "MATERIALIZED", dialect="postgresql"
                ),
            )
        return self._ctes

    def patients_in_care(self) -> Any:
        """A SELECT of the ids (column ``id``) of the patients whose records the subject may
        see."""
        subject = self.subject
        if subject.patient is not None and subject.role == SYSTEM_ROLE:
            return select(literal(subject.patient).label("id"))
        sources = self._by_role()
        granted = self._granted()
        if granted is not None:
            sources.append(granted)
        patients: Any = union(*sources) if len(sources) > 1 else sources[0]
        if subject.patient is not None:
            # A patient launch context narrows the role's patients to that one.
            inner = patients.subquery()
            return select(inner.c.id).where(inner.c.id == subject.patient)
        return patients

    def _by_role(self) -> list[Any]:
        """The SELECTs whose UNION is the role's patients (flat: SQLite cannot nest UNIONs)."""
        subject = self.subject
        role = subject.role
        clinics = self._clinics_in_care()
        if clinics is not None:
            return [_held_by("Patient", clinics)]
        if role == "specialist" and subject.practitioner:
            return [_patients_sharing_with(subject.practitioner, _clock(self.grace), _clock())]
        if role == "commission_analyst":
            return _patients_flagged(_clock())
        return [select(literal("").label("id")).where(false())]


def _consult_workflow_rows(r: FromClause, consults: Any) -> ColumnElement[bool]:
    """Rows of the consults' ServiceRequests, and the Tasks, Appointments and CareTeams of
    those consults."""
    consult_ids = select(consults.c.id)

    def based_on(param: str) -> ColumnElement[bool]:
        link = search_reference.alias()
        return exists().where(
            link.c.rid == r.c.rid,
            link.c.param == param,
            link.c.target_type == "ServiceRequest",
            link.c.target_id.in_(consult_ids),
        )

    team = search_token.alias()
    return or_(
        and_(r.c.res_type == "ServiceRequest", r.c.res_id.in_(consult_ids)),
        and_(r.c.res_type == "Task", based_on("focus")),
        and_(r.c.res_type == "Appointment", based_on("based-on")),
        and_(
            r.c.res_type == "CareTeam",
            exists().where(
                team.c.rid == r.c.rid,
                team.c.param == "identifier",
                team.c.system == CONSULT_SYSTEM,
                team.c.code.in_(consult_ids),
            ),
        ),
    )


def _case_tasks(r: FromClause) -> ColumnElement[bool]:
    """Rows of the follow-up Tasks of illness-poverty cases (by their ``meta.tag``)."""
    tag = search_token.alias()
    return and_(
        r.c.res_type == "Task",
        exists().where(
            tag.c.rid == r.c.rid,
            tag.c.param == "_tag",
            tag.c.system == ILLNESS_POVERTY_CASE_TAG["system"],
            tag.c.code == ILLNESS_POVERTY_CASE_TAG["code"],
        ),
    )


def _clinics(organization: str, role: str) -> Any:
    """The clinic itself, and for a township doctor the village clinics under the township."""
    own = select(literal(organization))
    if role != "township_doctor":
        return own
    part_of = search_reference.alias()
    children = select(resources.c.res_id).where(
        resources.c.rid.in_(
            select(part_of.c.rid).where(
                part_of.c.res_type == "Organization",
                part_of.c.param == "partof",
                part_of.c.target_type == "Organization",
                part_of.c.target_id == organization,
            )
        ),
        resources.c.deleted.is_(False),
    )
    return union(own, children)


def _in_records_of(r: FromClause, patients: Any) -> ColumnElement[bool]:
    """``r`` is in the Patient compartment of one of ``patients`` (a SELECT of ids)."""
    member = search_compartment.alias()
    return exists().where(
        member.c.rid == r.c.rid,
        member.c.param == COMPARTMENT,
        member.c.owner_id.in_(patients),
    )


def _held_by(res_type: str, clinics: Any) -> Any:
    """The ids of the resources of ``res_type`` held by one of ``clinics`` (custodians)."""
    held = search_custodian.alias()
    row = resources.alias()
    return select(row.c.res_id.label("id")).where(
        row.c.res_type == res_type,
        row.c.rid.in_(
            select(held.c.rid).where(
                held.c.param == COMPARTMENT,
                held.c.org_id.in_(clinics),
                held.c.res_type == res_type,
            )
        ),
    )


def _groups_of(patients: Any) -> Any:
    """The ids of the Groups (households) with one of ``patients`` (a SELECT of ids) as member."""
    group = resources.alias()
    member = search_compartment.alias()
    return select(group.c.res_id.label("id")).where(
        group.c.res_type == "Group",
        group.c.rid.in_(
            select(member.c.rid).where(
                member.c.res_type == "Group",
                member.c.param == COMPARTMENT,
                member.c.owner_id.in_(patients),
            )
        ),
    )


def _patients_sharing_with(practitioner: str, ended_after: Any, now: Any) -> Any:
    """Patients of Consents that are active, name the practitioner as actor, and whose period
    has begun and did not end before ``ended_after`` (the grace period)."""
    actor = search_reference.alias()
    status = search_token.alias()
    period = search_date.alias()
    consent = search_compartment.alias()
    return select(consent.c.owner_id.label("id")).where(
        consent.c.res_type == "Consent",
        consent.c.param == "Patient",
        consent.c.rid.in_(
            select(actor.c.rid).where(
                actor.c.res_type == "Consent",
                actor.c.param == "actor",
                actor.c.target_type == "Practitioner",
                actor.c.target_id == practitioner,
            )
        ),
        consent.c.rid.in_(
            select(status.c.rid).where(
                status.c.res_type == "Consent",
                status.c.param == "status",
                status.c.code == "active",
            )
        ),
        consent.c.rid.in_(
            select(period.c.rid).where(
                period.c.res_type == "Consent",
                period.c.param == "period",
                period.c.start <= now,
                period.c.end >= ended_after,
            )
        ),
    )


def _patients_flagged(now: Any) -> list[Any]:
    """Persons under an active illness-poverty Flag, and members of flagged households."""
    tag = search_token.alias()
    period = search_date.alias()
    flags = select(tag.c.rid).where(
        tag.c.res_type == "Flag",
        tag.c.param == "_tag",
        tag.c.system == TAG_SYSTEM,
        tag.c.code == ILLNESS_POVERTY_TAG["code"],
        tag.c.rid.in_(
            select(period.c.rid).where(
                period.c.res_type == "Flag",
                period.c.param == "date",
                period.c.start <= now,
                period.c.end >= now,
            )
        ),
    )
    subject = search_reference.alias()
    member = search_reference.alias()
    flagged_persons = select(search_compartment.c.owner_id.label("id")).where(
        search_compartment.c.res_type == "Flag", search_compartment.c.rid.in_(flags)
    )
    household_members = select(member.c.target_id).where(
        member.c.res_type == "Group",
        member.c.param == "member",
        member.c.target_type == "Patient",
        member.c.rid.in_(
            select(resources.c.rid).where(
                resources.c.res_type == "Group",
                resources.c.res_id.in_(
                    select(subject.c.target_id).where(
                        subject.c.res_type == "Flag",
                        subject.c.param == "subject",
                        subject.c.target_type == "Group",
                        subject.c.rid.in_(flags),
                    )
                ),
            )
        ),
    )
    return [flagged_persons, household_members]
