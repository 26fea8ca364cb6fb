"""The consult workflow's rules, as a write hook: they hold for every write of a consult's
resources, whether it comes through ``/fhir`` (a hospital system driving a consult in plain
FHIR), the consult JSON API or the pages — those two build FHIR writes and go through the
same door.

The consult's state is its Task's ``status`` (see ``consult.resources``)::

    requested ──accept──▶ accepted ──start──▶ in-progress ──report──▶ completed
        │  └──reject (reason)──▶ rejected        │
        └────────cancel──────────────────────────┴──▶ cancelled

plus ``scheduled`` and ``no-show`` through the consult's Appointment while it is accepted.

Who may do what:

- **the requester side** — the requesting practitioner, or a doctor of the requesting
  clinic — sends the request (ServiceRequest and Task), edits it while it waits, cancels
  it before the call starts, schedules, invites, marks a no-show, and may withdraw the
  shared record (Consent ``status: inactive``);
- **the performer side** — a specialist of the department the consult was sent to, or
  the practitioner it names — accepts it (the Task's ``owner`` becomes the accepting
  specialist) or rejects it with a reason; then **the owner** starts the call, schedules,
  invites, marks a no-show, cancels, and completes it with his report;
- **a system** (a hospital system with ``system/`` scopes) may make any legal transition.

What follows from a transition, in the same transaction: accepting writes the Consent that
shares the patient's record with the specialist from now on; starting opens the Encounter
(class VR); completing finishes it and the ServiceRequest; completing or cancelling ends
the Consent (``period.end`` = now, so the access policy's grace then runs); rejecting or
cancelling revokes the ServiceRequest and any Appointment. Each transition, new request,
schedule, no-show and invitation puts a notification for the other side in the outbox
(``integrations.notifications``) and, after the commit, announces the change on the bus
channel ``consult.events.<consult id>`` for the live status page.

Choices where the issue is silent, as a telehealth service for these clinics needs them:

- the record is shared with the one specialist who accepts, from acceptance (so that he can
  prepare) until the consult ends plus the policy's grace; invited people (a township
  doctor, an interpreter, a second specialist) join the call but are not shared the record
  — whoever needs it sees it already or is sent a consult of their own;
- the call may be joined while the consult is accepted or in progress; the accepting
  specialist's joining starts it (and opens the Encounter); the Encounter stays open until
  his report completes the consult, so the opinion written after the call still belongs
  to it, and a consult without video ("review the record and write") is started and
  reported the same way;
- a new Task's ``authoredOn`` must be now (±5 minutes): the queue orders by waiting time,
  which a back-dated request would cheat;
- a call is booked from an hour ago on (a call being held now), a no-show needs its time to
  have come, and a consult holds one live Appointment (rescheduling changes it);
- notifications go to the side that did not act, to the practitioner's own mobile when the
  directory has one, else to their clinic's telephone; SMS carry no patient data.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from consult import resources as shapes
from consult.resources import (
    ACCEPTED,
    CANCELLED,
    COMPLETED,
    IN_PROGRESS,
    MAX_INVITED,
    OPEN_STATES,
    PRIORITY_RANK,
    REJECTED,
    REPORT_TYPES,
    REQUEST_STATUS,
    REQUESTED,
    TRANSITIONS,
    consult_of_identifiers,
    is_consult_request,
    reference_text,
    split_reference,
)
from health.core.bus import MessageBus
from health.core.clock import fhir_instant, utcnow
from health.core.naming import CONSULT_SYSTEM
from health.core.outbox import enqueue
from records.access import Caller
from records.hooks import WriteContext
from records.outcome import FhirError
from records.store import Change

logger = logging.getLogger(__name__)

#: Bus channel of one consult's changes, for live status: ``{"consult": id, "event": ...}``.
EVENTS_CHANNEL = "consult.events.{}"
#: The outbox topic the notifications go to (``integrations.notifications``).
NOTIFICATION_TOPIC = "notification"
#: How far a new Task's ``authoredOn`` may be from the server's clock (queue order is by
#: waiting time: a back-dated request would jump the queue).
AUTHORED_TOLERANCE = dt.timedelta(minutes=5)
#: How long before now an appointment may still be booked (a call being held right now).
BOOKING_PAST = dt.timedelta(hours=1)
WATCHED = frozenset({"ServiceRequest", "Task", "Appointment", "Encounter", "CareTeam", "Consent"})
DOCTORS_AT_CLINICS = frozenset({"village_doctor", "township_doctor"})


@dataclass(frozen=True)
class Party:
    """Who acts on a consult, as the application identified the caller."""

    kind: str  # "user" or "system"
    username: str | None = None
    role: str | None = None
    practitioner: str | None = None
    organization: str | None = None
    display: str | None = None
    #: The scopes the caller's token carries (None: not a token's, or not said).
    scopes: str | None = None

    @property
    def is_system(self) -> bool:
        return self.kind == "system"


#: The application's way of telling who a caller is.
Identify = Callable[[Caller], Awaitable[Party]]


@dataclass(frozen=True)
class Requester:
    """The requesting practitioner and clinic of a consult (either may be unknown)."""

    practitioner: str | None
    organization: str | None


def refuse(status: int, message: str, expression: str, code: str = "business-rule") -> FhirError:
    return FhirError.of(status, message, code=code, expression=expression)


@dataclass
class _Item:
    change: Change
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass
class _Consult:
    """One consult as this write leaves it."""

    id: str
    request: dict[str, Any]
    task: dict[str, Any] | None
    requester: Requester
    items: list[_Item] = field(default_factory=list)

    @property
    def status(self) -> str | None:
        return self.task.get("status") if self.task else None

    @property
    def owner(self) -> tuple[str, str] | None:
        return split_reference(self.task.get("owner")) if self.task else None

    @property
    def owner_practitioner(self) -> str | None:
        owner = self.owner
        return owner[1] if owner and owner[0] == "Practitioner" else None

    @property
    def ref(self) -> str:
        return f"ServiceRequest/{self.id}"


class ConsultWorkflow:
    """The hook: register it on ``RecordsContext.write_hooks``."""

    def __init__(self, *, identify: Identify, bus: MessageBus) -> None:
        self.identify = identify
        self.bus = bus

    async def __call__(self, write: WriteContext) -> None:
        relevant = [c for c in write.changes if c.res_type in WATCHED]
        if not relevant:
            return
        consults: dict[str, list[_Item]] = {}
        for change in relevant:
            # Most writes of these types are not a consult's: find out from the new content
            # first, and read the version before only when it can matter.
            after = await write.content(change)
            consult_id = await self._consult_of(write, change, None, after)
            before = await write.previous(change) if change.version > 1 else None
            if consult_id is None and before is not None:
                consult_id = await self._consult_of(write, change, before, None)
            if consult_id is not None:
                consults.setdefault(consult_id, []).append(_Item(change, before, after))
        if not consults:
            return
        party = await self.identify(write.caller)
        for consult_id, items in consults.items():
            await self._apply(write, party, consult_id, items)

    # -- which consult ---------------------------------------------------------------------

    async def _consult_of(
        self,
        write: WriteContext,
        change: Change,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> str | None:
        kind = change.res_type
        versions = [v for v in (after, before) if v is not None]
        if kind == "ServiceRequest":
            return change.res_id if any(is_consult_request(v) for v in versions) else None
        if kind in ("CareTeam", "Consent"):
            return next((c for v in versions if (c := consult_of_identifiers(v))), None)
        for version in versions:
            links = [version.get("focus")] if kind == "Task" else version.get("basedOn") or []
            for link in links:
                target = split_reference(link)
                if target and target[0] == "ServiceRequest":
                    found = await write.resource("ServiceRequest", target[1])
                    if is_consult_request(found):
                        return target[1]
                    if found is None and kind == "Task":
                        raise refuse(
                            422,
                            f"Task.focus: ServiceRequest/{target[1]} is not known",
                            "Task.focus",
                            code="not-found",
                        )
        return None

    # -- rules -----------------------------------------------------------------------------

    async def _apply(
        self, write: WriteContext, party: Party, consult_id: str, items: list[_Item]
    ) -> None:
        request = await write.resource("ServiceRequest", consult_id)
        if request is None:
            if any(i.change.res_type == "ServiceRequest" for i in items):
                raise refuse(
                    409,
                    "A consult is not deleted: cancel it (its Task's status cancelled)",
                    "ServiceRequest",
                    code="conflict",
                )
            raise refuse(
                422, f"ServiceRequest/{consult_id} is not known", "identifier", "not-found"
            )
        tasks = await write.search("Task", f"focus=ServiceRequest/{consult_id}")
        if len(tasks) > 1:
            raise refuse(
                409, f"ServiceRequest/{consult_id} has a Task already", "Task.focus", "duplicate"
            )
        consult = _Consult(
            id=consult_id,
            request=request,
            task=tasks[0] if tasks else None,
            requester=await self._requester(write, request),
            items=items,
        )
        transition: tuple[str, str] | None = None
        created_task = False
        for item in sorted(items, key=lambda i: _ORDER.get(i.change.res_type, 9)):
            kind = item.change.res_type
            if kind == "ServiceRequest":
                await self._check_request(write, party, consult, item)
            elif kind == "Task":
                if item.after is None:
                    raise refuse(
                        409, "A consult's Task is not deleted: cancel it", "Task", "conflict"
                    )
                if item.before is None:
                    await self._check_new_task(party, consult, item.after)
                    created_task = True
                else:
                    transition = await self._check_task(write, party, consult, item)
            elif kind == "Appointment":
                await self._check_appointment(write, party, consult, item)
            elif kind == "CareTeam":
                await self._check_care_team(party, consult, item)
            elif kind == "Consent":
                self._check_consent(party, consult, item)
            elif kind == "Encounter":
                self._check_encounter(item)
        await self._follow(write, party, consult, transition, created_task)

    async def _requester(self, write: WriteContext, request: dict[str, Any]) -> Requester:
        target = split_reference(request.get("requester"))
        if target is None:
            return Requester(None, None)
        kind, ident = target
        if kind == "Practitioner":
            return Requester(ident, None)
        if kind == "Organization":
            return Requester(None, ident)
        if kind == "PractitionerRole":
            role = await write.resource("PractitionerRole", ident) or {}
            practitioner = split_reference(role.get("practitioner"))
            organization = split_reference(role.get("organization"))
            return Requester(
                practitioner[1] if practitioner else None,
                organization[1] if organization else None,
            )
        return Requester(None, None)

    # Who is who.

    def _requests(self, party: Party, consult: _Consult) -> bool:
        if party.is_system:
            return True
        requester = consult.requester
        if party.practitioner and party.practitioner == requester.practitioner:
            return True
        return bool(
            party.organization
            and party.organization == requester.organization
            and party.role in DOCTORS_AT_CLINICS
        )

    def _performs(self, party: Party, consult: _Consult) -> bool:
        """Whether the party is of the department (or is the practitioner) asked."""
        if party.is_system:
            return True
        if party.role != "specialist":
            return False
        for performer in consult.request.get("performer") or []:
            target = split_reference(performer)
            if target == ("Organization", party.organization) or target == (
                "Practitioner",
                party.practitioner,
            ):
                return True
        return False

    def _owns(self, party: Party, consult: _Consult) -> bool:
        if party.is_system:
            return True
        return bool(party.practitioner) and party.practitioner == consult.owner_practitioner

    # The request.

    async def _check_request(
        self, write: WriteContext, party: Party, consult: _Consult, item: _Item
    ) -> None:
        after, before = item.after, item.before
        if after is None:
            raise refuse(
                409, "A consult is not deleted: cancel it instead", "ServiceRequest", "conflict"
            )
        if before is None:
            await self._check_new_request(write, party, consult, after)
            return
        for element in ("subject", "category", "requester", "intent"):
            if before.get(element) != after.get(element):
                raise refuse(
                    422,
                    f"A consult's {element} cannot change",
                    f"ServiceRequest.{element}",
                )
        status = consult.status
        if after.get("status") != before.get("status"):
            expected = REQUEST_STATUS.get(status or "", "revoked" if status is None else "")
            if after.get("status") != expected:
                raise refuse(
                    422,
                    "A consult's ServiceRequest.status follows its Task: change the Task's status",
                    "ServiceRequest.status",
                )
        changed = {
            key
            for key in set(before) | set(after)
            if key not in ("meta", "status", "text") and before.get(key) != after.get(key)
        }
        if not changed:
            return
        if status not in (None, REQUESTED):
            raise refuse(
                422,
                f"The request cannot change once the consult is {status}",
                f"ServiceRequest.{sorted(changed)[0]}",
            )
        if not self._requests(party, consult):
            raise refuse(
                403,
                "Only the requesting doctor's side may change a consult request",
                "ServiceRequest",
                "forbidden",
            )
        await self._check_request_content(write, after)
        performers = {reference_text(p) for p in after.get("performer") or []}
        if consult.task is not None and reference_text(consult.task.get("owner")) not in performers:
            raise refuse(
                422,
                "Sending the consult elsewhere: change the Task's owner with the performer",
                "Task.owner",
            )

    async def _check_new_request(
        self, write: WriteContext, party: Party, consult: _Consult, request: dict[str, Any]
    ) -> None:
        if request.get("status") != "active":
            raise refuse(422, "A consult request is sent active", "ServiceRequest.status", "value")
        if request.get("intent") != "order":
            raise refuse(
                422, "A consult request's intent is order", "ServiceRequest.intent", "value"
            )
        requester = split_reference(request.get("requester"))
        if requester is None or requester[0] not in (
            "Practitioner",
            "PractitionerRole",
            "Organization",
        ):
            raise refuse(
                422,
                "Name the requesting doctor (a Practitioner or PractitionerRole) or clinic",
                "ServiceRequest.requester",
                "required",
            )
        if not party.is_system and not self._requests(party, consult):
            raise refuse(
                403,
                "A consult is requested in your own name (ServiceRequest.requester is you)",
                "ServiceRequest.requester",
                "forbidden",
            )
        await self._check_request_content(write, request)

    async def _check_request_content(self, write: WriteContext, request: dict[str, Any]) -> None:
        subject = split_reference(request.get("subject"))
        if subject is None or subject[0] != "Patient":
            raise refuse(422, "A consult is about a Patient", "ServiceRequest.subject", "value")
        performers = request.get("performer") or []
        if len(performers) != 1:
            raise refuse(
                422,
                "Send the consult to one department (an Organization) or one specialist",
                "ServiceRequest.performer",
                "required",
            )
        performer = split_reference(performers[0])
        if performer is None or performer[0] not in ("Organization", "Practitioner"):
            raise refuse(
                422,
                "ServiceRequest.performer is a department (Organization) or a Practitioner",
                "ServiceRequest.performer",
                "value",
            )
        if await write.resource(*performer) is None:
            raise refuse(
                422,
                f"{performer[0]}/{performer[1]} is not in the directory",
                "ServiceRequest.performer",
                "not-found",
            )
        priority = request.get("priority", "routine")
        if priority not in PRIORITY_RANK:
            raise refuse(
                422,
                f"priority is one of {', '.join(PRIORITY_RANK)}",
                "ServiceRequest.priority",
                "value",
            )
        if not (request.get("reasonCode") or request.get("reasonReference") or request.get("note")):
            raise refuse(
                422,
                "Say why the consult is needed (reasonCode or note)",
                "ServiceRequest.reasonCode",
                "required",
            )
        for index, info in enumerate(request.get("supportingInfo") or []):
            target = split_reference(info)
            where = f"ServiceRequest.supportingInfo[{index}]"
            if target is None or await write.resource(*target) is None:
                raise refuse(422, f"{where} is not a record here", where, "not-found")
            if subject[1] not in await write.patients_of(*target):
                raise refuse(
                    422,
                    f"{where} ({target[0]}/{target[1]}) is not in this patient's record",
                    where,
                    "value",
                )

    # The Task.

    async def _check_new_task(self, party: Party, consult: _Consult, task: dict[str, Any]) -> None:
        request = consult.request
        if task.get("status") != REQUESTED:
            raise refuse(422, "A consult's Task starts as requested", "Task.status", "value")
        if task.get("intent") != "order":
            raise refuse(422, "A consult's Task intent is order", "Task.intent", "value")
        if reference_text(task.get("for")) != reference_text(request.get("subject")):
            raise refuse(422, "Task.for is the consult's patient", "Task.for", "value")
        owners = [reference_text(p) for p in request.get("performer") or []]
        if reference_text(task.get("owner")) not in owners:
            raise refuse(
                422,
                "Task.owner is the department or specialist the consult is sent to "
                "(ServiceRequest.performer)",
                "Task.owner",
                "value",
            )
        if task.get("requester") and reference_text(task["requester"]) != reference_text(
            request.get("requester")
        ):
            raise refuse(422, "Task.requester is the consult's requester", "Task.requester")
        authored = _instant(task.get("authoredOn"))
        if authored is None or abs(authored - utcnow()) > AUTHORED_TOLERANCE:
            raise refuse(
                422,
                "Task.authoredOn is when the consult is requested: now",
                "Task.authoredOn",
                "value",
            )
        if not self._requests(party, consult):
            raise refuse(
                403,
                "Only the requesting doctor's side may send a consult",
                "Task.requester",
                "forbidden",
            )

    async def _check_task(
        self, write: WriteContext, party: Party, consult: _Consult, item: _Item
    ) -> tuple[str, str] | None:
        before, after = item.before, item.after
        assert before is not None and after is not None
        for element in ("focus", "for", "intent", "requester"):
            if before.get(element) != after.get(element):
                raise refuse(422, f"A consult's Task.{element} cannot change", f"Task.{element}")
        old, new = before.get("status", ""), after.get("status", "")
        if old == new:
            if before.get("owner") != after.get("owner"):
                if old != REQUESTED or not self._requests(party, consult):
                    raise refuse(
                        422,
                        "Task.owner changes by accepting the consult, or by the requester "
                        "sending it elsewhere while it waits",
                        "Task.owner",
                    )
                owners = [reference_text(p) for p in consult.request.get("performer") or []]
                if reference_text(after.get("owner")) not in owners:
                    raise refuse(
                        422, "Task.owner is the consult's performer", "Task.owner", "value"
                    )
            return None
        if new not in TRANSITIONS.get(old, frozenset()):
            raise refuse(
                409 if old not in OPEN_STATES else 422,
                f"A consult that is {old} cannot become {new}",
                "Task.status",
                "business-rule",
            )
        before_owner = _Consult(
            consult.id, consult.request, before, consult.requester, consult.items
        )
        if new == ACCEPTED:
            await self._check_acceptance(write, party, consult, after)
        elif new == REJECTED:
            if not self._performs(party, consult):
                raise _not_yours("reject")
            if not (after.get("statusReason") or {}).get("text") and not (
                after.get("statusReason") or {}
            ).get("coding"):
                raise refuse(
                    422,
                    "Say why the consult is not taken (Task.statusReason)",
                    "Task.statusReason",
                    "required",
                )
        elif new == CANCELLED:
            if not (
                self._requests(party, consult)
                or (old == ACCEPTED and self._owns(party, before_owner))
            ):
                raise _not_yours("cancel")
        elif new == IN_PROGRESS:
            if not self._owns(party, consult):
                raise _not_yours("start")
        elif new == COMPLETED:
            if not self._owns(party, consult):
                raise _not_yours("complete")
            await self._check_report(write, party, consult, after)
        if before.get("owner") != after.get("owner") and new != ACCEPTED:
            raise refuse(422, "Task.owner changes only on acceptance", "Task.owner")
        return old, new

    async def _check_acceptance(
        self, write: WriteContext, party: Party, consult: _Consult, task: dict[str, Any]
    ) -> None:
        if not self._performs(party, consult):
            raise _not_yours("accept")
        owner = split_reference(task.get("owner"))
        if owner is None or owner[0] != "Practitioner":
            raise refuse(
                422,
                "Task.owner: name the specialist who takes the consult (a Practitioner)",
                "Task.owner",
                "required",
            )
        if not party.is_system:
            if owner[1] != party.practitioner:
                raise refuse(
                    403, "You accept a consult for yourself (Task.owner)", "Task.owner", "forbidden"
                )
            return
        performer = split_reference((consult.request.get("performer") or [None])[0])
        if performer == owner:
            return
        if performer and performer[0] == "Organization":
            roles = await write.search(
                "PractitionerRole",
                f"practitioner=Practitioner/{owner[1]}&organization=Organization/{performer[1]}",
            )
            if roles:
                return
        raise refuse(
            422,
            f"Practitioner/{owner[1]} does not work where the consult was sent",
            "Task.owner",
            "value",
        )

    async def _check_report(
        self, write: WriteContext, party: Party, consult: _Consult, task: dict[str, Any]
    ) -> None:
        problem = "Task.output: name the specialist's final report (a Composition or "
        problem += "DiagnosticReport about the patient, of this consult's Encounter)"
        encounters = await write.search("Encounter", f"based-on={consult.ref}")
        encounter_refs = {f"Encounter/{e['id']}" for e in encounters}
        for output in task.get("output") or []:
            target = split_reference(output.get("valueReference"))
            if target is None or target[0] not in REPORT_TYPES:
                continue
            report = await write.resource(*target)
            if report is None or report.get("status") not in ("final", "amended"):
                continue
            if reference_text(report.get("subject")) != reference_text(
                consult.request.get("subject")
            ):
                continue
            linked = {reference_text(report.get("encounter"))}
            linked |= {reference_text(b) for b in report.get("basedOn") or []}
            if not (linked & encounter_refs or consult.ref in linked):
                continue
            authors = report.get("author") or report.get("resultsInterpreter") or []
            authors = authors + (report.get("performer") or [])
            if not party.is_system and f"Practitioner/{party.practitioner}" not in {
                reference_text(a) for a in authors
            }:
                continue
            return
        raise refuse(422, problem, "Task.output", "required")

    # The rest of a consult's resources.

    async def _check_appointment(
        self, write: WriteContext, party: Party, consult: _Consult, item: _Item
    ) -> None:
        after, before = item.after, item.before
        if after is None:
            raise refuse(
                409, "An appointment is cancelled (status cancelled), not deleted", "Appointment"
            )
        if consult.status != ACCEPTED:
            raise refuse(
                409,
                f"A consult is scheduled while it is accepted (it is {consult.status})",
                "Appointment.basedOn",
                "business-rule",
            )
        if not (self._requests(party, consult) or self._owns(party, consult)):
            raise _not_yours("schedule")
        status = after.get("status")
        if status not in ("booked", "noshow", "cancelled"):
            raise refuse(
                422,
                "A consult's Appointment is booked, noshow or cancelled",
                "Appointment.status",
                "value",
            )
        now = utcnow()
        start = _instant(after.get("start"))
        if status == "booked":
            if start is None or _instant(after.get("end")) is None:
                raise refuse(
                    422, "A booked call has a start and an end", "Appointment.start", "required"
                )
            changed_time = before is None or before.get("start") != after.get("start")
            if changed_time and start < now - BOOKING_PAST:
                raise refuse(422, "A call is booked for now or later", "Appointment.start", "value")
        if status == "noshow":
            if before is None or before.get("status") != "booked":
                raise refuse(
                    422, "Only a booked call can be a no-show", "Appointment.status", "value"
                )
            if start is None or start > now:
                raise refuse(
                    422,
                    "A call is a no-show only once its time has come",
                    "Appointment.status",
                    "value",
                )
        live = [
            a
            for a in await write.search("Appointment", f"based-on={consult.ref}")
            if a.get("status") in ("booked", "noshow", "arrived")
        ]
        if len(live) > 1:
            raise refuse(
                409,
                "The consult has an appointment already: change that one to reschedule",
                "Appointment",
                "duplicate",
            )

    async def _check_care_team(self, party: Party, consult: _Consult, item: _Item) -> None:
        after = item.after
        if after is None:
            raise refuse(
                409, "Take people off the consult's CareTeam instead", "CareTeam", "conflict"
            )
        if consult.status not in OPEN_STATES:
            raise refuse(
                409, f"The consult is {consult.status}", "CareTeam.identifier", "business-rule"
            )
        if not (self._requests(party, consult) or self._owns(party, consult)):
            raise _not_yours("invite people to")
        if reference_text(after.get("subject")) != reference_text(consult.request.get("subject")):
            raise refuse(422, "CareTeam.subject is the consult's patient", "CareTeam.subject")
        members = [split_reference(p.get("member")) for p in after.get("participant") or []]
        if any(m is None or m[0] != "Practitioner" for m in members):
            raise refuse(
                422,
                "Invite practitioners (people who log in) to a consult",
                "CareTeam.participant.member",
                "value",
            )
        if len(members) > MAX_INVITED:
            raise refuse(
                422,
                f"A call holds four: at most {MAX_INVITED} invited besides the two doctors",
                "CareTeam.participant",
                "value",
            )

    def _check_consent(self, party: Party, consult: _Consult, item: _Item) -> None:
        before, after = item.before, item.after
        if before is None and shapes.is_recording_consent(after):
            self._check_recording_consent(party, consult, after)
            return
        if before is None or after is None:
            raise refuse(
                403,
                "A consult's Consent is written by the consult itself",
                "Consent",
                "forbidden",
            )
        withdrawn = {**before, "status": "inactive", "meta": after.get("meta")}
        if after.get("status") != "inactive" or {**after, "meta": None} != {
            **withdrawn,
            "meta": None,
        }:
            raise refuse(
                422,
                "A consult's Consent can only be withdrawn (status inactive)",
                "Consent.status",
            )
        if not self._requests(party, consult):
            raise refuse(
                403,
                "The patient's own clinic withdraws the patient's consent",
                "Consent",
                "forbidden",
            )

    def _check_recording_consent(
        self, party: Party, consult: _Consult, after: dict[str, Any] | None
    ) -> None:
        """The patient agrees to recording before the people who will be recorded: the
        requesting clinic records it, for this consult, while the consult is open."""
        assert after is not None
        if not self._requests(party, consult):
            raise refuse(
                403,
                "The patient's own clinic records the patient's consent to recording",
                "Consent",
                "forbidden",
            )
        if consult.status not in OPEN_STATES:
            raise refuse(409, "The consult is over: there is no call to record", "Task.status")
        if after.get("status") != "active":
            raise refuse(422, "A consent to recording is recorded active", "Consent.status")
        if (after.get("patient") or {}).get("reference") != consult.request["subject"].get(
            "reference"
        ):
            raise refuse(422, "Consent.patient must be the consult's patient", "Consent.patient")
        data = [
            reference_text(d.get("reference") or {})
            for d in (after.get("provision") or {}).get("data") or []
        ]
        if data != [consult.ref]:
            raise refuse(
                422,
                f"Consent.provision.data must name {consult.ref} alone: the consent is to "
                "recording this consult",
                "Consent.provision.data",
            )

    def _check_encounter(self, item: _Item) -> None:
        before, after = item.before, item.after
        if before is None or after is None:
            raise refuse(
                403,
                "A consult's Encounter is opened and closed by the consult itself",
                "Encounter",
                "forbidden",
            )
        for element in ("status", "class", "subject", "basedOn", "period"):
            if before.get(element) != after.get(element):
                raise refuse(
                    422,
                    f"A consult's Encounter.{element} follows the consult",
                    f"Encounter.{element}",
                )

    # -- what follows ----------------------------------------------------------------------

    async def _follow(
        self,
        write: WriteContext,
        party: Party,
        consult: _Consult,
        transition: tuple[str, str] | None,
        created_task: bool,
    ) -> None:
        now = utcnow()
        events: list[str] = []
        if created_task:
            events.append(REQUESTED)
        if transition is not None:
            new = transition[1]
            events.append(new)
            if new == ACCEPTED:
                assert consult.owner_practitioner is not None
                await write.write(
                    shapes.consent(
                        consult_id=consult.id,
                        patient=consult.request["subject"],
                        specialist=consult.owner_practitioner,
                        organization=consult.requester.organization,
                        start=now,
                    )
                )
            elif new == IN_PROGRESS:
                await self._open_encounter(write, consult, now)
            elif new in (COMPLETED, CANCELLED):
                await self._end_consent(write, consult, now)
                await self._settle_appointments(
                    write, consult, "fulfilled" if new == COMPLETED else "cancelled"
                )
                if new == COMPLETED:
                    await self._close_encounter(write, consult, now)
            elif new == REJECTED:
                await self._settle_appointments(write, consult, "cancelled")
        for item in consult.items:
            if item.change.res_type == "Appointment" and item.after is not None:
                before_status = (item.before or {}).get("status")
                status = item.after.get("status")
                if status == "booked" and (
                    before_status != "booked"
                    or item.before is None
                    or item.before.get("start") != item.after.get("start")
                ):
                    events.append("scheduled")
                elif status == "noshow" and before_status != "noshow":
                    events.append("no-show")
            if item.change.res_type == "CareTeam" and item.after is not None:
                before_members = {
                    reference_text(p.get("member"))
                    for p in (item.before or {}).get("participant") or []
                }
                for participant in item.after.get("participant") or []:
                    member = reference_text(participant.get("member"))
                    if member not in before_members and member:
                        events.append(f"invited:{member}")
        if consult.status is not None:
            expected = REQUEST_STATUS[consult.status]
            current = await write.resource("ServiceRequest", consult.id)
            if current is not None and current.get("status") != expected:
                await write.write({**current, "status": expected})
        if not events:
            return
        for event in events:
            await self._notify(write, party, consult, event)
        channel = EVENTS_CHANNEL.format(consult.id)

        async def announce() -> None:
            await self.bus.publish(channel, {"consult": consult.id, "events": events})

        write.after_commit(announce)

    async def _open_encounter(
        self, write: WriteContext, consult: _Consult, now: dt.datetime
    ) -> None:
        if await write.search("Encounter", f"based-on={consult.ref}"):
            return
        people: list[tuple[str, str]] = []
        if consult.owner_practitioner:
            people.append(("CON", f"Practitioner/{consult.owner_practitioner}"))
        if consult.requester.practitioner:
            people.append(("REF", f"Practitioner/{consult.requester.practitioner}"))
        for team in await write.search("CareTeam", f"identifier={_consult_token(consult.id)}"):
            for participant in team.get("participant") or []:
                member = reference_text(participant.get("member"))
                if member:
                    people.append(("PART", member))
        booked = [
            a
            for a in await write.search("Appointment", f"based-on={consult.ref}")
            if a.get("status") in ("booked", "noshow")
        ]
        for visit in booked:
            await write.write({**visit, "status": "arrived"})
        await write.write(
            shapes.encounter(
                consult_id=consult.id,
                request=consult.request,
                participants=people,
                appointment=f"Appointment/{booked[0]['id']}" if booked else None,
                start=now,
            )
        )

    async def _close_encounter(
        self, write: WriteContext, consult: _Consult, now: dt.datetime
    ) -> None:
        for visit in await write.search("Encounter", f"based-on={consult.ref}"):
            if visit.get("status") != "finished":
                period = {**(visit.get("period") or {}), "end": fhir_instant(now)}
                await write.write({**visit, "status": "finished", "period": period})

    async def _end_consent(self, write: WriteContext, consult: _Consult, now: dt.datetime) -> None:
        for shared in await write.search("Consent", f"identifier={_consult_token(consult.id)}"):
            provision = dict(shared.get("provision") or {})
            period = dict(provision.get("period") or {})
            if "end" not in period:
                period["end"] = fhir_instant(now)
                provision["period"] = period
                await write.write({**shared, "provision": provision})

    async def _settle_appointments(
        self, write: WriteContext, consult: _Consult, status: str
    ) -> None:
        for visit in await write.search("Appointment", f"based-on={consult.ref}"):
            if visit.get("status") in ("booked", "noshow", "arrived"):
                await write.write({**visit, "status": status})

    # -- notifications ---------------------------------------------------------------------

    async def _notify(
        self, write: WriteContext, party: Party, consult: _Consult, event: str
    ) -> None:
        requester_side = consult.request.get("requester")
        owner_side = (consult.task.get("owner") if consult.task else None) or (
            consult.request.get("performer") or [None]
        )[0]
        who = party.display or ("医院系统" if party.is_system else "对方")
        texts = {
            REQUESTED: (
                owner_side,
                f"收到一条新的远程会诊申请（{_priority_text(consult)}），请登录查看会诊队列。",
            ),
            ACCEPTED: (requester_side, f"您申请的远程会诊已由{who}接受，请留意会诊时间。"),
            REJECTED: (
                requester_side,
                "您申请的远程会诊未被接受："
                + shapes.concept_text((consult.task or {}).get("statusReason")),
            ),
            IN_PROGRESS: (requester_side, "远程会诊已开始，请进入视频会诊。"),
            COMPLETED: (requester_side, "会诊意见已写入患者档案，请登录查看。"),
            "scheduled": (None, "远程会诊已预约时间，请登录查看。"),
            "no-show": (None, "预约的远程会诊未能按时进行（爽约），请重新预约或取消。"),
            CANCELLED: (None, "远程会诊已取消。"),
        }
        if event.startswith("invited:"):
            recipients = [{"reference": event.split(":", 1)[1]}]
            text = "您被邀请参加一次远程会诊，请登录查看时间并加入视频。"
            event = "invited"
        else:
            target, text = texts[event]
            if target is None:
                # Whoever did not act: the other side.
                target = (
                    owner_side
                    if self._requests(party, consult) and not party.is_system
                    else (requester_side)
                )
            recipients = [target] if target else []
        for recipient in recipients:
            address = await self._address(write, recipient)
            task_version = (consult.task or {}).get("meta", {}).get("versionId", "0")
            await enqueue(
                write.session,
                topic=NOTIFICATION_TOPIC,
                key=f"consult/{consult.id}",
                idempotency_key=(
                    f"consult/{consult.id}/{event}/{task_version}/{address['reference']}/"
                    f"{write.changes[0].res_type}/{write.changes[0].version}"
                ),
                payload={
                    "event": f"consult.{event}",
                    "subject": consult.ref,
                    "text": f"【银川远程会诊】{text}",
                    "recipient": address,
                },
            )

    async def _address(self, write: WriteContext, recipient: dict[str, Any]) -> dict[str, Any]:
        """Where to reach a practitioner or clinic: their own mobile, else their clinic's."""
        target = split_reference(recipient)
        address: dict[str, Any] = {
            "reference": reference_text(recipient),
            "display": recipient.get("display"),
            "phone": None,
            "wechat": None,
        }
        if target is None:
            return address
        chain = [target]
        if target[0] == "PractitionerRole":
            role = await write.resource(*target) or {}
            chain = [t for t in (split_reference(role.get("practitioner")),) if t] + [target]
            organization = split_reference(role.get("organization"))
            if organization:
                chain.append(organization)
        elif target[0] == "Practitioner":
            roles = await write.search("PractitionerRole", f"practitioner=Practitioner/{target[1]}")
            for role in roles:
                organization = split_reference(role.get("organization"))
                if organization:
                    chain.append(organization)
        for kind, ident in chain:
            found = await write.resource(kind, ident) or {}
            if address["display"] is None and kind == "Practitioner":
                names = found.get("name") or [{}]
                address["display"] = names[0].get("text")
            for identifier in found.get("identifier") or []:
                if str(identifier.get("system", "")).endswith("/sid/wechat-openid"):
                    address["wechat"] = address["wechat"] or identifier.get("value")
            for telecom in found.get("telecom") or []:
                if telecom.get("system") in ("sms", "phone") and telecom.get("value"):
                    address["phone"] = address["phone"] or telecom["value"]
            if address["phone"]:
                break
        return address


_ORDER = {"ServiceRequest": 0, "Task": 1}


def _consult_token(consult_id: str) -> str:
    return f"{CONSULT_SYSTEM}|{consult_id}"


def _priority_text(consult: _Consult) -> str:
    return {"stat": "紧急", "asap": "尽快", "urgent": "加急", "routine": "常规"}.get(
        consult.request.get("priority", "routine"), "常规"
    )


def _not_yours(action: str) -> FhirError:
    return refuse(
        403,
        f"You may not {action} this consult: it is not yours to {action}",
        "Task.status",
        "forbidden",
    )


def _instant(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
