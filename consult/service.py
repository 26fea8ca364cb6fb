"""Consult actions for the JSON API and the pages: each reads or writes FHIR through
``RecordsContext.perform`` as the caller — the same door as ``/fhir``, so the access
policy, the audit trail, the change feed and the workflow's rules (``consult.workflow``)
apply exactly as they do to a hospital system's plain FHIR.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from consult import resources as shapes
from consult.protocol import MAX_PARTICIPANTS, Participant
from consult.resources import (
    ACCEPTED,
    CANCELLED,
    IN_PROGRESS,
    MAX_INVITED,
    PRIORITY_RANK,
    REJECTED,
    REQUESTED,
    reference,
    reference_text,
    split_reference,
)
from consult.workflow import Identify, Party
from health.core.clock import fhir_instant, utcnow
from health.core.naming import CONSULT_SYSTEM, CONSULTATION_CATEGORY
from records.access import Caller
from records.api.service import RecordsContext, resources_of
from records.interactions import FhirRequest, FhirResult
from records.outcome import FhirError

logger = logging.getLogger(__name__)

#: States of a consult as people see it (the Task's status, and the Appointment's).
STATES = (
    "requested",
    "accepted",
    "scheduled",
    "no-show",
    "in-progress",
    "completed",
    "cancelled",
    "rejected",
)


@dataclass
class Consult:
    """One consult as a caller sees it."""

    request: dict[str, Any]
    task: dict[str, Any] | None
    appointments: list[dict[str, Any]] = field(default_factory=list)
    encounters: list[dict[str, Any]] = field(default_factory=list)
    care_team: dict[str, Any] | None = None
    #: The consult's Consents the caller can see: the record's sharing, the recording's.
    consents: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] | None = None
    #: Directory entries the consult names (Practitioner, PractitionerRole, Organization).
    directory: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.request["id"])

    @property
    def status(self) -> str | None:
        return self.task.get("status") if self.task else None

    @property
    def appointment(self) -> dict[str, Any] | None:
        live = [a for a in self.appointments if a.get("status") != "cancelled"]
        return live[-1] if live else None

    @property
    def state(self) -> str:
        status = self.status or REQUESTED
        if status == ACCEPTED and self.appointment is not None:
            return {"booked": "scheduled", "noshow": "no-show"}.get(
                self.appointment.get("status", ""), ACCEPTED
            )
        return status

    @property
    def patient_id(self) -> str:
        target = split_reference(self.request.get("subject"))
        return target[1] if target else ""

    @property
    def owner(self) -> tuple[str, str] | None:
        return split_reference(self.task.get("owner")) if self.task else None

    @property
    def owner_practitioner(self) -> str | None:
        owner = self.owner
        return owner[1] if owner and owner[0] == "Practitioner" else None

    @property
    def performer(self) -> tuple[str, str] | None:
        return split_reference((self.request.get("performer") or [None])[0])

    @property
    def recording_consent(self) -> dict[str, Any] | None:
        """The patient's standing consent to recording this consult, if one is on file."""
        return next(
            (
                c
                for c in self.consents
                if shapes.is_recording_consent(c)
                and c.get("status") == "active"
                and not ((c.get("provision") or {}).get("period") or {}).get("end")
            ),
            None,
        )

    @property
    def encounter(self) -> dict[str, Any] | None:
        return self.encounters[-1] if self.encounters else None

    @property
    def invited(self) -> list[str]:
        """Practitioner ids of the people invited into the call."""
        members = [
            split_reference(p.get("member"))
            for p in (self.care_team or {}).get("participant") or []
        ]
        return [m[1] for m in members if m and m[0] == "Practitioner"]

    def requester(self) -> tuple[str | None, str | None]:
        """(practitioner, organization) of the requester, as far as the directory says."""
        target = split_reference(self.request.get("requester"))
        if target is None:
            return None, None
        if target[0] == "Practitioner":
            return target[1], None
        if target[0] == "Organization":
            return None, target[1]
        role = self.directory.get(f"PractitionerRole/{target[1]}") or {}
        practitioner = split_reference(role.get("practitioner"))
        organization = split_reference(role.get("organization"))
        return (
            practitioner[1] if practitioner else None,
            organization[1] if organization else None,
        )

    def name_of(self, ref: Any) -> str:
        """A directory entry's name for people, from the reference's display or the entry."""
        if isinstance(ref, dict) and ref.get("display"):
            return str(ref["display"])
        text = reference_text(ref)
        entry = self.directory.get(text or "") or {}
        if entry.get("resourceType") == "PractitionerRole":
            return self.name_of(entry.get("practitioner"))
        if isinstance(entry.get("name"), str):
            return str(entry["name"])
        names = entry.get("name") or []
        if names and isinstance(names[0], dict) and names[0].get("text"):
            return str(names[0]["text"])
        return text or ""

    def summary(self) -> dict[str, Any]:
        """The consult in the JSON API's shape."""
        task = self.task or {}
        appointment = self.appointment
        report = self.report
        return {
            "id": self.id,
            "state": self.state,
            "taskId": task.get("id"),
            "taskVersion": (task.get("meta") or {}).get("versionId"),
            "priority": self.request.get("priority", "routine"),
            "reason": shapes.reason_text(self.request),
            "patient": {
                "reference": reference_text(self.request.get("subject")),
                "display": self.request.get("subject", {}).get("display"),
            },
            "requester": {
                "reference": reference_text(self.request.get("requester")),
                "display": self.name_of(self.request.get("requester")),
            },
            "performer": {
                "reference": reference_text((self.request.get("performer") or [None])[0]),
                "display": self.name_of((self.request.get("performer") or [None])[0]),
            },
            "owner": {
                "reference": reference_text(task.get("owner")),
                "display": self.name_of(task.get("owner")),
            }
            if task.get("owner")
            else None,
            "requestedAt": task.get("authoredOn") or self.request.get("authoredOn"),
            "preferredTime": self.request.get("occurrenceDateTime"),
            "statusReason": shapes.concept_text(task.get("statusReason")) or None,
            "appointment": {
                "id": appointment.get("id"),
                "status": appointment.get("status"),
                "start": appointment.get("start"),
                "end": appointment.get("end"),
            }
            if appointment
            else None,
            "encounter": f"Encounter/{self.encounter['id']}" if self.encounter else None,
            "report": {
                "reference": f"{report['resourceType']}/{report['id']}",
                "conclusion": shapes.section_text(report, shapes.CONCLUSION_SECTION["code"])
                or report.get("conclusion"),
                "recommendations": shapes.section_text(
                    report, shapes.RECOMMENDATION_SECTION["code"]
                ),
            }
            if report
            else None,
            "invited": [
                {"reference": f"Practitioner/{p}", "display": self.name_of(f"Practitioner/{p}")}
                for p in self.invited
            ],
            "supportingInfo": [reference_text(s) for s in self.request.get("supportingInfo") or []],
            "recordingConsent": (
                f"Consent/{self.recording_consent['id']}" if self.recording_consent else None
            ),
        }


@dataclass(frozen=True)
class NewConsult:
    """A village doctor's request, as the form or the JSON API gives it."""

    patient: str
    department: str | None
    specialist: str | None
    priority: str
    reason: str
    reason_code: str | None
    supporting_info: list[str]
    note: str | None
    preferred_time: dt.datetime | None


class ConsultService:
    """The consult actions, each one FHIR interaction (or transaction) as the caller."""

    def __init__(self, records: RecordsContext, identify: Identify) -> None:
        self.records = records
        self.identify = identify

    async def _perform(self, caller: Caller, request: FhirRequest, base_url: str) -> FhirResult:
        return await self.records.perform(caller, request, base_url=base_url)

    async def _search(
        self, caller: Caller, res_type: str, params: list[tuple[str, str]], base_url: str
    ) -> list[dict[str, Any]]:
        result = await self._perform(
            caller, FhirRequest("GET", res_type, query=urlencode(params)), base_url
        )
        return resources_of(result)

    # -- reading ---------------------------------------------------------------------------

    async def load(self, caller: Caller, consult_id: str, *, base_url: str) -> Consult:
        """The consult as the caller may see it; a 404 FhirError if not a consult of theirs."""
        found = await self._search(
            caller,
            "ServiceRequest",
            [
                ("_id", consult_id),
                ("category", f"{CONSULTATION_CATEGORY['system']}|{CONSULTATION_CATEGORY['code']}"),
                ("_revinclude", "Task:focus"),
                ("_revinclude", "Appointment:based-on"),
                ("_revinclude", "Encounter:based-on"),
                ("_include", "ServiceRequest:requester"),
                ("_include", "ServiceRequest:performer"),
            ],
            base_url,
        )
        requests = [r for r in found if r["resourceType"] == "ServiceRequest"]
        if not requests:
            raise FhirError.of(404, f"Consult {consult_id} is not known", code="not-found")
        consult = Consult(
            request=requests[0],
            task=next((r for r in found if r["resourceType"] == "Task"), None),
            appointments=[r for r in found if r["resourceType"] == "Appointment"],
            encounters=[r for r in found if r["resourceType"] == "Encounter"],
        )
        consult.directory = {
            f"{r['resourceType']}/{r['id']}": r
            for r in found
            if r["resourceType"] in ("Practitioner", "PractitionerRole", "Organization")
        }
        teams = await self._search(
            caller, "CareTeam", [("identifier", f"{CONSULT_SYSTEM}|{consult_id}")], base_url
        )
        consult.care_team = teams[0] if teams else None
        consult.consents = await self._search(
            caller, "Consent", [("identifier", f"{CONSULT_SYSTEM}|{consult_id}")], base_url
        )
        await self._directory(caller, consult, base_url)
        for output in (consult.task or {}).get("output") or []:
            target = split_reference(output.get("valueReference"))
            if target and target[0] in shapes.REPORT_TYPES:
                try:
                    read = await self._perform(
                        caller, FhirRequest("GET", f"{target[0]}/{target[1]}"), base_url
                    )
                except FhirError:
                    continue  # not the caller's to see (an invited interpreter)
                consult.report = resources_of(read)[0]
        return consult

    async def _directory(self, caller: Caller, consult: Consult, base_url: str) -> None:
        """Fill in the names of the people and places the consult names."""
        wanted = {
            reference_text(ref)
            for ref in [
                (consult.task or {}).get("owner"),
                *[f"Practitioner/{p}" for p in consult.invited],
            ]
        }
        role = consult.directory.get(reference_text(consult.request.get("requester")) or "")
        if role and role.get("resourceType") == "PractitionerRole":
            wanted |= {
                reference_text(role.get("practitioner")),
                reference_text(role.get("organization")),
            }
        by_type: dict[str, list[str]] = {}
        for text in wanted - set(consult.directory) - {None}:
            assert text is not None
            kind, ident = text.split("/", 1)
            by_type.setdefault(kind, []).append(ident)
        for kind, ids in by_type.items():
            for entry in await self._search(caller, kind, [("_id", ",".join(ids))], base_url):
                consult.directory[f"{kind}/{entry['id']}"] = entry

    async def list_visible(
        self, caller: Caller, *, base_url: str, count: int = 50
    ) -> list[Consult]:
        """The consults the caller can see (a clinic's own), newest first."""
        tasks = await self._search(
            caller,
            "Task",
            [
                (
                    "focus:ServiceRequest.category",
                    f"{CONSULTATION_CATEGORY['system']}|{CONSULTATION_CATEGORY['code']}",
                ),
                ("_include", "Task:focus"),
                ("_sort", "-authored-on"),
                ("_count", str(count)),
            ],
            base_url,
        )
        return self._pair(tasks)

    def _pair(self, found: list[dict[str, Any]]) -> list[Consult]:
        requests = {
            f"ServiceRequest/{r['id']}": r for r in found if r["resourceType"] == "ServiceRequest"
        }
        consults = []
        for task in (r for r in found if r["resourceType"] == "Task"):
            request = requests.get(reference_text(task.get("focus")) or "")
            if request is not None:
                consults.append(Consult(request=request, task=task))
        return consults

    async def queue(
        self, caller: Caller, party: Party, *, base_url: str
    ) -> dict[str, list[Consult]]:
        """A specialist's queue: requests waiting for his department (or him), most pressing
        first and then longest waiting; and the consults he has accepted."""
        targets = []
        if party.organization:
            targets.append(f"Organization/{party.organization}")
        if party.practitioner:
            targets.append(f"Practitioner/{party.practitioner}")
        waiting: list[Consult] = []
        if targets:
            found = await self._search(
                caller,
                "Task",
                [
                    ("focus:ServiceRequest.performer", ",".join(targets)),
                    ("status", REQUESTED),
                    ("_include", "Task:focus"),
                    ("_count", "200"),
                ],
                base_url,
            )
            waiting = self._pair(found)
        mine: list[Consult] = []
        if party.practitioner:
            found = await self._search(
                caller,
                "Task",
                [
                    ("owner", f"Practitioner/{party.practitioner}"),
                    ("status", f"{ACCEPTED},{IN_PROGRESS}"),
                    ("_include", "Task:focus"),
                    ("_count", "200"),
                ],
                base_url,
            )
            mine = self._pair(found)
        if mine:
            appointments = await self._search(
                caller,
                "Appointment",
                [("based-on", ",".join(f"ServiceRequest/{c.id}" for c in mine)), ("_count", "400")],
                base_url,
            )
            for consult in mine:
                consult.appointments = [
                    a
                    for a in appointments
                    if f"ServiceRequest/{consult.id}"
                    in {reference_text(b) for b in a.get("basedOn") or []}
                ]

        def order(consult: Consult) -> tuple[int, str]:
            priority = consult.request.get("priority", "routine")
            since = (consult.task or {}).get("authoredOn") or consult.request.get("authoredOn", "")
            return PRIORITY_RANK.get(priority, len(PRIORITY_RANK)), _sortable(since)

        waiting.sort(key=order)
        mine.sort(key=lambda c: ((c.appointment or {}).get("start") or "9999", *order(c)))
        return {"waiting": waiting, "mine": mine}

    # -- writing ---------------------------------------------------------------------------

    async def create(
        self, caller: Caller, party: Party, new: NewConsult, *, base_url: str
    ) -> Consult:
        if new.priority not in PRIORITY_RANK:
            raise _field("priority", f"priority is one of {', '.join(PRIORITY_RANK)}")
        if not new.reason.strip():
            raise _field("reason", "Say why the consult is needed")
        if bool(new.department) == bool(new.specialist):
            raise _field("department", "Choose a department or a specialist (one of them)")
        patient = await self._read(caller, f"Patient/{new.patient}", base_url, field="patient")
        performer_type = "Organization" if new.department else "Practitioner"
        performer_id = new.department or new.specialist or ""
        performer = await self._read(
            caller,
            f"{performer_type}/{performer_id}",
            base_url,
            field="department" if new.department else "specialist",
        )
        requester = await self._requester(caller, party, base_url)
        now = utcnow()
        names = patient.get("name") or [{}]
        subject = reference("Patient", new.patient, names[0].get("text"))
        performer_ref = reference(performer_type, performer_id, _display(performer))
        reason_code = (
            {"system": "http://hl7.org/fhir/sid/icd-10", "code": new.reason_code}
            if new.reason_code
            else None
        )
        request = shapes.service_request(
            patient=subject,
            requester=requester,
            performer=performer_ref,
            priority=new.priority,
            reason=new.reason.strip(),
            reason_code=reason_code,
            supporting_info=[{"reference": r} for r in new.supporting_info],
            note=new.note,
            occurrence=new.preferred_time,
            authored=now,
        )
        task = shapes.task(
            request_ref="urn:uuid:consult-request",
            patient=subject,
            requester=requester,
            owner=performer_ref,
            priority=new.priority,
            authored=now,
        )
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:consult-request",
                    "resource": request,
                    "request": {"method": "POST", "url": "ServiceRequest"},
                },
                {"resource": task, "request": {"method": "POST", "url": "Task"}},
            ],
        }
        result = await self._perform(caller, FhirRequest("POST", "", body=bundle), base_url)
        location = result.body["entry"][0]["response"]["location"] if result.body else ""
        return await self.load(caller, location.split("/")[1], base_url=base_url)

    async def _read(
        self, caller: Caller, path: str, base_url: str, *, field: str
    ) -> dict[str, Any]:
        try:
            return resources_of(await self._perform(caller, FhirRequest("GET", path), base_url))[0]
        except FhirError as error:
            if error.status in (404, 410):
                raise _field(field, f"{path} is not known (or not in your care)", 422) from None
            raise

    async def _requester(self, caller: Caller, party: Party, base_url: str) -> dict[str, str]:
        """The requester as FHIR names them: the PractitionerRole of the user at their clinic
        (the doctor and the clinic), else the Practitioner, else the clinic."""
        if party.practitioner and party.organization:
            roles = await self._search(
                caller,
                "PractitionerRole",
                [
                    ("practitioner", f"Practitioner/{party.practitioner}"),
                    ("organization", f"Organization/{party.organization}"),
                ],
                base_url,
            )
            if roles:
                return reference("PractitionerRole", roles[0]["id"], party.display)
        if party.practitioner:
            return reference("Practitioner", party.practitioner, party.display)
        if party.organization:
            return reference("Organization", party.organization)
        raise _field("requester", "Only a doctor at a clinic can request a consult", 403)

    async def _put_task(
        self, caller: Caller, consult: Consult, task: dict[str, Any], base_url: str
    ) -> None:
        assert consult.task is not None
        await self._perform(caller, replacing(consult.task, task), base_url)

    def _task_update(self, consult: Consult, **changes: Any) -> dict[str, Any]:
        if consult.task is None:
            raise _field("consult", "This consult has no Task to act on", 409)
        task = {k: v for k, v in consult.task.items() if k != "meta"}
        task.update({k: v for k, v in changes.items() if v is not None})
        task["lastModified"] = fhir_instant(utcnow())
        return task

    async def accept(
        self,
        caller: Caller,
        party: Party,
        consult_id: str,
        *,
        base_url: str,
        start: dt.datetime | None = None,
        minutes: int = 30,
    ) -> Consult:
        consult = await self.load(caller, consult_id, base_url=base_url)
        if not party.practitioner:
            raise _field("practitioner", "Only a specialist in the directory accepts consults", 403)
        task = self._task_update(
            consult,
            status=ACCEPTED,
            owner=reference("Practitioner", party.practitioner, party.display),
        )
        entries: list[dict[str, Any]] = [
            {
                "resource": task,
                "request": {
                    "method": "PUT",
                    "url": f"Task/{task['id']}",
                    "ifMatch": f'W/"{consult.task["meta"]["versionId"]}"' if consult.task else None,
                },
            }
        ]
        if start is not None:
            people = self._people(consult, party.practitioner)
            entries.append(
                {
                    "resource": shapes.appointment(
                        consult_id=consult.id,
                        request=consult.request,
                        people=people,
                        start=start,
                        minutes=minutes,
                    ),
                    "request": {"method": "POST", "url": "Appointment"},
                }
            )
        await self._perform(
            caller,
            FhirRequest(
                "POST", "", body={"resourceType": "Bundle", "type": "transaction", "entry": entries}
            ),
            base_url,
        )
        return await self.load(caller, consult_id, base_url=base_url)

    def _people(self, consult: Consult, owner: str | None) -> list[str]:
        """The practitioners of a booked call: the specialist and the requesting doctor."""
        practitioner, _organization = consult.requester()
        people = (owner or consult.owner_practitioner, practitioner)
        return [f"Practitioner/{p}" for p in people if p]

    async def reject(
        self, caller: Caller, party: Party, consult_id: str, *, reason: str, base_url: str
    ) -> Consult:
        if not reason.strip():
            raise _field("reason", "Say why the consult is not taken")
        consult = await self.load(caller, consult_id, base_url=base_url)
        task = self._task_update(consult, status=REJECTED, statusReason={"text": reason.strip()})
        await self._put_task(caller, consult, task, base_url)
        return await self.load(caller, consult_id, base_url=base_url)

    async def cancel(
        self, caller: Caller, party: Party, consult_id: str, *, reason: str | None, base_url: str
    ) -> Consult:
        consult = await self.load(caller, consult_id, base_url=base_url)
        task = self._task_update(
            consult,
            status=CANCELLED,
            statusReason={"text": reason.strip()} if reason and reason.strip() else None,
        )
        await self._put_task(caller, consult, task, base_url)
        return await self.load(caller, consult_id, base_url=base_url)

    async def start(
        self, caller: Caller, party: Party, consult_id: str, *, base_url: str
    ) -> Consult:
        consult = await self.load(caller, consult_id, base_url=base_url)
        if consult.status == IN_PROGRESS:
            return consult
        task = self._task_update(consult, status=IN_PROGRESS)
        await self._put_task(caller, consult, task, base_url)
        return await self.load(caller, consult_id, base_url=base_url)

    async def schedule(
        self,
        caller: Caller,
        party: Party,
        consult_id: str,
        *,
        start: dt.datetime,
        minutes: int,
        base_url: str,
    ) -> Consult:
        if not 5 <= minutes <= 240:
            raise _field("minutes", "A call lasts 5 to 240 minutes")
        consult = await self.load(caller, consult_id, base_url=base_url)
        current = consult.appointment
        people = self._people(consult, None)
        booked = shapes.appointment(
            consult_id=consult.id,
            request=consult.request,
            people=people,
            start=start,
            minutes=minutes,
        )
        if current is not None:
            body = {
                **{k: v for k, v in current.items() if k != "meta"},
                **{k: booked[k] for k in ("status", "start", "end", "minutesDuration")},
            }
            request = replacing(current, body)
        else:
            request = FhirRequest("POST", "Appointment", body=booked)
        await self._perform(caller, request, base_url)
        return await self.load(caller, consult_id, base_url=base_url)

    async def no_show(
        self, caller: Caller, party: Party, consult_id: str, *, base_url: str
    ) -> Consult:
        consult = await self.load(caller, consult_id, base_url=base_url)
        current = consult.appointment
        if current is None:
            raise _field("appointment", "The consult has no booked call", 409)
        body = {**{k: v for k, v in current.items() if k != "meta"}, "status": "noshow"}
        await self._perform(caller, replacing(current, body), base_url)
        return await self.load(caller, consult_id, base_url=base_url)

    async def consent_to_recording(
        self, caller: Caller, party: Party, consult_id: str, *, agreed: bool, base_url: str
    ) -> Consult:
        """Record the patient's consent to recording the call, or withdraw it."""
        consult = await self.load(caller, consult_id, base_url=base_url)
        current = consult.recording_consent
        if agreed and current is None:
            _practitioner, organization = consult.requester()
            body = shapes.recording_consent(
                consult_id=consult.id,
                patient=consult.request["subject"],
                organization=organization or party.organization,
                start=utcnow(),
            )
            await self._perform(caller, FhirRequest("POST", "Consent", body=body), base_url)
        elif not agreed and current is not None:
            withdrawn = {k: v for k, v in current.items() if k != "meta"}
            await self._perform(
                caller, replacing(current, {**withdrawn, "status": "inactive"}), base_url
            )
        return await self.load(caller, consult_id, base_url=base_url)

    async def invite(
        self, caller: Caller, party: Party, consult_id: str, *, practitioner: str, base_url: str
    ) -> Consult:
        consult = await self.load(caller, consult_id, base_url=base_url)
        await self._read(caller, f"Practitioner/{practitioner}", base_url, field="practitioner")
        if practitioner in consult.invited:
            return consult
        if len(consult.invited) >= MAX_INVITED:
            raise _field(
                "practitioner",
                f"A call holds {MAX_PARTICIPANTS}: {MAX_INVITED} invited at most",
                422,
            )
        members = [reference("Practitioner", p) for p in [*consult.invited, practitioner]]
        team = shapes.care_team(consult_id=consult.id, request=consult.request, members=members)
        if consult.care_team is not None:
            team["id"] = consult.care_team["id"]
            request = replacing(consult.care_team, team)
        else:
            request = FhirRequest("POST", "CareTeam", body=team)
        await self._perform(caller, request, base_url)
        return await self.load(caller, consult_id, base_url=base_url)

    async def report(
        self,
        caller: Caller,
        party: Party,
        consult_id: str,
        *,
        conclusion: str,
        recommendations: str,
        base_url: str,
    ) -> Consult:
        if not conclusion.strip():
            raise _field("conclusion", "Write the consult's conclusion")
        if not recommendations.strip():
            raise _field("recommendations", "Write what the village doctor should do next")
        consult = await self.load(caller, consult_id, base_url=base_url)
        if consult.status == ACCEPTED and self._is_owner(consult, party):
            consult = await self.start(caller, party, consult_id, base_url=base_url)
        if consult.encounter is None:
            raise _field("consult", "Start the consult before writing its report", 409)
        if not party.practitioner:
            raise _field("practitioner", "A report is written by a practitioner", 403)
        note = shapes.composition(
            request=consult.request,
            encounter_ref=f"Encounter/{consult.encounter['id']}",
            author=reference("Practitioner", party.practitioner, party.display),
            conclusion=conclusion.strip(),
            recommendations=recommendations.strip(),
            moment=utcnow(),
            consult_id=consult.id,
        )
        task = self._task_update(
            consult,
            status="completed",
            output=[
                {
                    "type": {"coding": [shapes.CONSULT_NOTE], "text": "会诊意见"},
                    "valueReference": {"reference": "urn:uuid:consult-report"},
                }
            ],
        )
        assert consult.task is not None
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:consult-report",
                    "resource": note,
                    "request": {"method": "POST", "url": "Composition"},
                },
                {
                    "resource": task,
                    "request": {
                        "method": "PUT",
                        "url": f"Task/{task['id']}",
                        "ifMatch": f'W/"{consult.task["meta"]["versionId"]}"',
                    },
                },
            ],
        }
        await self._perform(caller, FhirRequest("POST", "", body=bundle), base_url)
        return await self.load(caller, consult_id, base_url=base_url)

    @staticmethod
    def _is_owner(consult: Consult, party: Party) -> bool:
        return bool(party.practitioner) and party.practitioner == consult.owner_practitioner

    # -- the call --------------------------------------------------------------------------

    def participant(self, consult: Consult, party: Party) -> Participant | None:
        """The party as a participant of the consult's call, or None if they are not one.

        The requester's side, the accepting specialist (or, once accepted, a specialist of
        the department it was sent to) and the invited; while the consult is accepted or
        in progress.
        """
        if party.is_system or not party.username:
            return None
        if consult.status not in (ACCEPTED, IN_PROGRESS):
            return None
        practitioner, organization = consult.requester()
        performer = consult.performer
        role = party.role or ""
        is_requester = bool(party.practitioner and party.practitioner == practitioner) or bool(
            party.organization
            and party.organization == organization
            and role in ("village_doctor", "township_doctor")
        )
        is_specialist = self._is_owner(consult, party) or (
            role == "specialist"
            and performer is not None
            and performer
            in (("Organization", party.organization), ("Practitioner", party.practitioner))
        )
        is_invited = bool(party.practitioner) and party.practitioner in consult.invited
        if not (is_requester or is_specialist or is_invited):
            return None
        return Participant(
            id=party.username,
            display_name=party.display or party.username,
            role=role,
            scopes=party.scopes,
        )


def _display(resource: dict[str, Any]) -> str | None:
    name = resource.get("name")
    if isinstance(name, str):
        return name
    if isinstance(name, list) and name and isinstance(name[0], dict):
        return name[0].get("text")
    return None


def _sortable(instant: str) -> str:
    try:
        moment = dt.datetime.fromisoformat(instant.replace("Z", "+00:00"))
    except ValueError:
        return instant
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat()


def replacing(current: dict[str, Any], body: dict[str, Any]) -> FhirRequest:
    """A PUT of ``body`` over the resource as it was read (``current``), refused (412) if
    someone changed it since: two people acting on one consult cannot both win."""
    return FhirRequest(
        "PUT",
        f"{current['resourceType']}/{current['id']}",
        body=body,
        if_match=f'W/"{(current.get("meta") or {}).get("versionId")}"',
    )


class ConsultInputError(ValueError):
    """Input the caller must fix (outside FHIR): the field, the message, the HTTP status."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


def _field(name: str, message: str, status: int = 400) -> ConsultInputError:
    return ConsultInputError(name, message, status)
