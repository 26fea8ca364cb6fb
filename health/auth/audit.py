"""The audit trail: a FHIR AuditEvent for every look at a record, every write, every login,
failed login and break-glass, kept append-only in a hash chain.

AuditEvents are stored in the record store like any resource, so the trail is searched with
FHIR search (``AuditEvent?entity=Patient/123``) under the same access policy as everything
else. Each one is also appended to ``audit_chain``: entry *n* holds an HMAC over entry
*n − 1*'s hash, the event's id and the exact JSON text stored for it, keyed by a key derived
from the service's secret. Changing, removing or reordering a stored AuditEvent, or adding
one by hand, breaks the chain from that entry on, and without the key the chain cannot be
recomputed to hide it (:func:`verify`, ``health audit verify``).

Appending takes the chain's head under a lock (an advisory lock on PostgreSQL; SQLite's
write transactions are exclusive already). A write's event is appended in the write's own
transaction; everything else goes through :class:`AuditWriter`, which gathers the events of
concurrent requests into one transaction. A read's events are handed to it without waiting
(unless ``HEALTH_AUDIT_READS_WAIT``), as HAPI FHIR's audit sink does: they commit within the
next batch, so a search does not pay for its records' transaction in its response time.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from health.auth.tables import audit_chain
from health.core.clock import fhir_instant
from health.core.database import Database, insert_rows
from health.core.ids import new_resource_id
from health.core.log_redaction import redact_query
from health.core.naming import NAMESPACE
from records.access import AccessEvent
from records.indexing import SearchIndexer
from records.store import NewResource, ResourceStore
from records.tables import resource_versions, resources

logger = logging.getLogger(__name__)

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
#: The project's codes for the roles of its users (village_doctor, specialist...).
ROLE_SYSTEM = f"{NAMESPACE}/CodeSystem/user-role"
#: Login names of users and ids of API clients, as AuditEvent.agent.who.identifier.
USERNAME_SYSTEM = f"{NAMESPACE}/sid/username"
CLIENT_SYSTEM = f"{NAMESPACE}/sid/api-client"
#: Events of this service's own security (break-glass) that DICOM has no code for.
SECURITY_EVENT_SYSTEM = f"{NAMESPACE}/CodeSystem/security-event"
#: An extension on AuditEvent.agent naming the Organization the user acted for.
AGENT_ORGANIZATION_URL = f"{NAMESPACE}/StructureDefinition/audit-agent-organization"

#: Key for ``pg_advisory_xact_lock``: one lock for the chain's head ("audit" in ASCII).
_CHAIN_LOCK = 0x6175646974
_GENESIS = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who acted, as the audit trail names them."""

    #: ``user:wangfang`` or ``client:<client_id>``; None when nobody could be identified.
    id: str | None
    role: str | None = None
    organization: str | None = None
    practitioner: str | None = None
    display: str | None = None
    #: The client's network address.
    address: str | None = None
    #: Why they acted, when they said (break-glass): a v3-ActReason code.
    purpose: str | None = None


def _outcome(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (refused), 8 serious failure."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def _agent(actor: Actor) -> dict[str, Any]:
    who: dict[str, Any] = {}
    name = None
    if actor.id is not None:
        kind, _, name = actor.id.partition(":")
        who["identifier"] = {
            "system": USERNAME_SYSTEM if kind == "user" else CLIENT_SYSTEM,
            "value": name,
        }
    if actor.practitioner:
        who["reference"] = f"Practitioner/{actor.practitioner}"
    who["display"] = actor.display or (actor.id or "unidentified")
    person = (actor.id or "").startswith("user:")
    agent: dict[str, Any] = {
        "type": {
            "coding": [
                {
                    "system": SECURITY_ROLE_TYPE,
                    "code": "humanuser" if person else "dataprocessor",
                }
            ]
        },
        "who": who,
        "requestor": True,
    }
    if name:
        agent["altId"] = name  # searchable: AuditEvent?altid=wangfang
    if actor.role:
        agent["role"] = [{"coding": [{"system": ROLE_SYSTEM, "code": actor.role}]}]
    if actor.organization:
        agent["extension"] = [
            {
                "url": AGENT_ORGANIZATION_URL,
                "valueReference": {"reference": f"Organization/{actor.organization}"},
            }
        ]
    if actor.address:
        agent["network"] = {"address": actor.address, "type": "2"}
    if actor.purpose:
        agent["purposeOfUse"] = [{"coding": [{"system": ACT_REASON, "code": actor.purpose}]}]
    return agent


def _base(
    actor: Actor,
    *,
    type_: dict[str, str],
    subtype: dict[str, str],
    action: str,
    status: int,
    now: dt.datetime,
    description: str | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": type_,
        "subtype": [subtype],
        "action": action,
        "recorded": fhir_instant(now),
        "outcome": _outcome(status),
        "agent": [_agent(actor)],
        "source": {
            "site": "yinchuan-health",
            "observer": {"display": "银川移民地区远程医疗 Yinchuan resettlement-area telemedicine"},
            "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
    }
    if description:
        event["outcomeDesc"] = description
    return event


def _patient_entity(patient: str, *, what: str = "Patient") -> dict[str, Any]:
    return {
        "what": {"reference": f"{what}/{patient}"},
        "type": {"system": ENTITY_TYPE, "code": "1"},
        "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
    }


#: Resources named one by one in an event; past this many the description gives the count.
MAX_NAMED_RESOURCES = 50


def _resource_entity(res_type: str, res_id: str) -> dict[str, Any]:
    return {
        "what": {"reference": f"{res_type}/{res_id}"},
        "type": {"system": ENTITY_TYPE, "code": "2"},
        "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
    }


def record_access_events(
    actor: Actor, event: AccessEvent, *, now: dt.datetime
) -> list[dict[str, Any]]:
    """The AuditEvents of one FHIR API request: one for each patient whose record it showed
    or wrote (as IHE BALP does, so each patient's access history holds only what concerns
    that patient), or a single one when it touched no patient's record.

    The request is kept with its query, whose identifying values (names, resident IDs...)
    are replaced (:func:`~health.core.log_redaction.redact_query`): the trail is long-lived
    and append-only, and the patients a search showed are named in its entities anyway."""
    target, question, query = event.request.partition("?")
    request = target + question + redact_query(query)
    request_entity: dict[str, Any] = {
        "type": {"system": ENTITY_TYPE, "code": "2"},
        "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
        "description": request[:1000],
    }
    if event.action == "E":
        request_entity["query"] = base64.b64encode(request.encode()).decode()
    groups: list[tuple[str | None, tuple[tuple[str, str], ...]]] = (
        list(event.patients.items()) if event.patients else [(None, event.resources)]
    )
    records = []
    for patient, shown in groups:
        named = [r for r in shown if not (r[0] == "Patient" and r[1] == patient)]
        description = f"HTTP {event.status}" + (f": {event.problem}" if event.problem else "")
        if len(named) > MAX_NAMED_RESOURCES:
            description += f"; {len(named)} resources, the first {MAX_NAMED_RESOURCES} named"
        audit = _base(
            actor,
            type_={"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
            subtype={"system": RESTFUL_INTERACTION, "code": event.interaction},
            action=event.action,
            status=event.status,
            now=now,
            description=description,
        )
        entities = [_patient_entity(patient)] if patient else []
        entities.append(request_entity)
        entities += [_resource_entity(t, i) for t, i in named[:MAX_NAMED_RESOURCES]]
        audit["entity"] = entities
        records.append(audit)
    return records


def login_event(
    actor: Actor, *, succeeded: bool, method: str, now: dt.datetime, problem: str | None = None
) -> dict[str, Any]:
    """A login (web form, token endpoint) or a refused one; ``method`` says which door."""
    return _base(
        actor,
        type_={"system": DICOM, "code": "110114", "display": "User Authentication"},
        subtype={"system": DICOM, "code": "110122", "display": "Login"},
        action="E",
        status=200 if succeeded else 401,
        now=now,
        description=method + (f": {problem}" if problem else ""),
    )


def logout_event(actor: Actor, *, now: dt.datetime) -> dict[str, Any]:
    return _base(
        actor,
        type_={"system": DICOM, "code": "110114", "display": "User Authentication"},
        subtype={"system": DICOM, "code": "110123", "display": "Logout"},
        action="E",
        status=200,
        now=now,
    )


def break_glass_event(
    actor: Actor, *, patient: str, reason: str, expires: dt.datetime, now: dt.datetime
) -> dict[str, Any]:
    """A user opened a patient's record outside their care, for a stated reason."""
    audit = _base(
        actor,
        type_={"system": DICOM, "code": "110113", "display": "Security Alert"},
        subtype={
            "system": SECURITY_EVENT_SYSTEM,
            "code": "break-glass",
            "display": "紧急访问 break-glass",
        },
        action="E",
        status=200,
        now=now,
        description=f"break-glass until {fhir_instant(expires)}",
    )
    entity = _patient_entity(patient)
    entity["description"] = reason[:1000]
    audit["entity"] = [entity]
    return audit


#: What an administrator did to an account (AuditEvent.subtype in SECURITY_EVENT_SYSTEM).
ACCOUNT_CHANGES = {
    "user-create": ("C", "创建用户 user created"),
    "user-update": ("U", "修改用户 user changed"),
    "user-disable": ("U", "停用用户 user disabled"),
    "user-enable": ("U", "启用用户 user enabled"),
    "user-password": ("U", "重置密码 password reset"),
}


def account_event(
    actor: Actor, *, change: str, username: str, now: dt.datetime, description: str
) -> dict[str, Any]:
    """A user account changed, by an administrator or (her own password) by the person:
    who, which account, what (never a password).

    The account is the event's entity, by its login name (``USERNAME_SYSTEM``), so an
    account's history is ``AuditEvent?entity-role=...`` or a search by its identifier.
    """
    action, display = ACCOUNT_CHANGES[change]
    audit = _base(
        actor,
        type_={"system": DICOM, "code": "110136", "display": "Security Roles Changed"},
        subtype={"system": SECURITY_EVENT_SYSTEM, "code": change, "display": display},
        action=action,
        status=200,
        now=now,
        description=description[:1000],
    )
    audit["entity"] = [
        {
            "what": {
                "identifier": {"system": USERNAME_SYSTEM, "value": username},
                "display": username,
            },
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "11", "display": "Security User Entity"},
            "description": description[:1000],
        }
    ]
    return audit


# -- the chain -----------------------------------------------------------------------------


def chain_key(secret: bytes) -> bytes:
    """The chain's HMAC key, derived from the service secret (never the signing key itself)."""
    return hashlib.sha256(b"yinchuan-health audit chain\x00" + secret).digest()


def link_hash(key: bytes, previous: str, event_id: str, content: str) -> str:
    message = f"{previous}\n{event_id}\n".encode() + content.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


async def _lock_head(session: AsyncSession) -> tuple[int, str]:
    """Take the chain's head for this transaction: (last position, last hash)."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    row = (
        await session.execute(
            select(audit_chain.c.position, audit_chain.c.hash)
            .order_by(audit_chain.c.position.desc())
            .limit(1)
        )
    ).first()
    return (row.position, row.hash) if row else (0, _GENESIS)


async def append(
    session: AsyncSession, indexer: SearchIndexer, key: bytes, events: Sequence[dict[str, Any]]
) -> list[str]:
    """Store ``events`` as AuditEvents and chain them, in ``session``'s transaction; their ids."""
    if not events:
        return []
    store = ResourceStore(session, indexer)
    stored = await store.create_many(
        [NewResource("AuditEvent", new_resource_id(), event) for event in events]
    )
    position, previous = await _lock_head(session)
    rows = []
    for version in stored:
        assert version.content is not None
        position += 1
        previous = link_hash(key, previous, version.res_id, version.content)
        rows.append({"position": position, "event_id": version.res_id, "hash": previous})
    await insert_rows(session, audit_chain, rows)
    return [v.res_id for v in stored]


@dataclass
class _Pending:
    events: list[dict[str, Any]]
    done: asyncio.Future[None] | None


#: Events waiting to be written beyond which recording waits for the writer (backpressure):
#: if the trail cannot be written, requests stop rather than pile up unrecorded.
MAX_BACKLOG = 5_000
#: Events written in one transaction at most (see :class:`AuditWriter`): about 90 ms, of which
#: 15 ms of this process's time (indexing, stamping, chaining) that no request can use.
BATCH_EVENTS = 100
#: Pause before writing a batch again after the database refused it.
RETRY_SECONDS = 0.5


@dataclass
class AuditWriter:
    """Group commit for the audit trail: one transaction for the events of many requests.

    ``record(..., wait=True)`` returns once its events have committed (or raises if they
    could not be). ``wait=False`` hands them over and returns (reads, so that a search does
    not also pay for its audit records' transaction); they commit with a later batch, are
    retried if the database refuses them, are all written before :meth:`close` returns, and
    past :data:`MAX_BACKLOG` every caller waits again. What a ``kill -9`` can lose is what
    has not committed yet.

    A batch holds at most :data:`BATCH_EVENTS` events, those of waiting callers first: a
    search that shows fifty patients hands over fifty events, and when searches came faster
    than the trail was written, one transaction took the whole backlog, thousands of events,
    while a caller who had to wait (a write, or anyone past the backlog's limit) waited
    seconds for all of it. Now a waiting caller waits for one batch. Small batches also keep
    each stretch of the writer's own work short: it shares the event loop with the
    requests, and a batch of 500 held it for 50–100 ms at a time.
    """

    database: Database
    indexer: SearchIndexer
    key: bytes
    _queue: list[_Pending] = field(default_factory=list)
    _flusher: asyncio.Task[None] | None = None

    def _backlog(self) -> int:
        return sum(len(p.events) for p in self._queue)

    async def record(self, *events: dict[str, Any], wait: bool = True) -> None:
        wait = wait or self._backlog() >= MAX_BACKLOG
        done = asyncio.get_running_loop().create_future() if wait else None
        self._queue.append(_Pending(list(events), done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        if done is not None:
            await done

    def _next_batch(self) -> list[_Pending]:
        """Take from the queue the waiting callers' events, then the oldest of the others, up
        to :data:`BATCH_EVENTS` (and at least one caller's, however many they are)."""
        waiting = [p for p in self._queue if p.done is not None]
        others = [p for p in self._queue if p.done is None]
        batch: list[_Pending] = []
        size = 0
        for pending in [*waiting, *others]:
            if batch and size + len(pending.events) > BATCH_EVENTS:
                break
            batch.append(pending)
            size += len(pending.events)
        taken = {id(p) for p in batch}
        self._queue = [p for p in self._queue if id(p) not in taken]
        return batch

    async def _flush(self) -> None:
        while self._queue:
            batch = self._next_batch()
            try:
                async with self.database.transaction(write=True) as session:
                    await append(
                        session, self.indexer, self.key, [e for p in batch for e in p.events]
                    )
            except Exception as error:
                logger.exception(
                    "could not write %d audit events", sum(len(p.events) for p in batch)
                )
                waiting = [p for p in batch if p.done is not None]
                for pending in waiting:
                    if not pending.done.done():  # type: ignore[union-attr]
                        pending.done.set_exception(error)  # type: ignore[union-attr]
                # Nobody waits for the others: keep them, first in line, and try again.
                self._queue[:0] = [p for p in batch if p.done is None]
                await asyncio.sleep(RETRY_SECONDS)
            else:
                for pending in batch:
                    if pending.done is not None and not pending.done.done():
                        pending.done.set_result(None)

    async def close(self) -> None:
        """Write everything handed over so far."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.gather(self._flusher, return_exceptions=True)


# -- verification --------------------------------------------------------------------------


@dataclass
class ChainReport:
    checked: int = 0
    #: Human-readable descriptions of what is wrong, first break first.
    problems: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


async def _chain_rows(database: Database, batch: int) -> AsyncIterator[list[Any]]:
    last = 0
    while True:
        async with database.transaction(write=False) as session:
            rows = list(
                (
                    await session.execute(
                        select(
                            audit_chain.c.position,
                            audit_chain.c.event_id,
                            audit_chain.c.hash,
                            resources.c.version,
                            resources.c.deleted,
                            resource_versions.c.content,
                        )
                        .select_from(audit_chain)
                        .outerjoin(
                            resources,
                            and_(
                                resources.c.res_type == "AuditEvent",
                                resources.c.res_id == audit_chain.c.event_id,
                            ),
                        )
                        .outerjoin(
                            resource_versions,
                            and_(
                                resource_versions.c.rid == resources.c.rid,
                                resource_versions.c.version == 1,
                            ),
                        )
                        .where(audit_chain.c.position > last)
                        .order_by(audit_chain.c.position)
                        .limit(batch)
                    )
                ).all()
            )
        if not rows:
            return
        yield rows
        last = rows[-1].position


async def verify(database: Database, key: bytes, *, batch: int = 2000) -> ChainReport:
    """Walk the chain from the start and report every place where it does not hold."""
    report = ChainReport()
    previous = _GENESIS
    expected_position = 1
    async for rows in _chain_rows(database, batch):
        for row in rows:
            report.checked += 1
            where = f"audit entry {row.position} (AuditEvent/{row.event_id})"
            if row.position != expected_position:
                report.problems.append(
                    f"audit entries {expected_position}–{row.position - 1} are missing"
                )
            expected_position = row.position + 1
            if row.content is None:
                report.problems.append(f"{where}: the AuditEvent is gone from the store")
            else:
                if row.version != 1 or row.deleted:
                    report.problems.append(f"{where}: the AuditEvent was changed or deleted")
                if link_hash(key, previous, row.event_id, row.content) != row.hash:
                    report.problems.append(
                        f"{where}: its content or the chain before it was altered"
                    )
            previous = row.hash
    async with database.transaction(write=False) as session:
        unchained = (
            await session.execute(
                select(func.count())
                .select_from(resources)
                .where(
                    resources.c.res_type == "AuditEvent",
                    resources.c.res_id.not_in(select(audit_chain.c.event_id)),
                )
            )
        ).scalar_one()
    if unchained:
        report.problems.append(
            f"{unchained} AuditEvent(s) are in the store but not in the chain (added by hand)"
        )
    return report
