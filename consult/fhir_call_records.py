"""A call's readings, chat, files and recordings in the FHIR record: :class:`FhirCallRecords`.

The implementation of :class:`~consult.call_records.ConsultRecords` on the records' one way
in, :meth:`records.api.service.RecordsContext.perform`: every write is made as the
participant it is on behalf of — their access policy decides whether it may be made (a
village doctor writes in her clinic's patients' records, a specialist in those shared with
him by the consult's Consent), and it goes on their audit trail and the change feed like any
API write. Nothing here bypasses the policy.

Two things come from outside, as the consult workflow knows them:

- :class:`ConsultDirectory` — the consult's patient, Encounter and ServiceRequest. The
  default, :class:`FhirConsultDirectory`, reads them from the record itself: the consult id
  is its ServiceRequest's id, the patient that ServiceRequest's subject, and the Encounter
  the latest one ``basedOn`` it (class ``VR`` while the call runs);
- the patient's consent to recording — the consult's own Consent of category
  :data:`~consult.resources.RECORDING_CONSENT`, which the consult workflow lets the
  requesting clinic record and which ends with the consult;
- ``callers`` — the participant's :class:`records.access.Caller` and the reference that
  names them in a resource (``Practitioner/…``), which the assembly makes from who the
  signalling route authenticated.

Each write carries an identifier made of the consult, the participant and the participant's
own message id, and is a conditional create (``If-None-Exist``): a message sent again after a
reconnection finds what it wrote the first time.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from consult.call_records import (
    CALL_DOCUMENT_CATEGORY_SYSTEM,
    CHAT_ID_SYSTEM,
    FILE_ID_SYSTEM,
    READING_ID_SYSTEM,
    RECORDING_CONSENT,
    RECORDING_ID_SYSTEM,
    ChatLine,
    RecordedFile,
    Recording,
    RecordsRefused,
    SharedFile,
    UrlOf,
    VitalSignReading,
)
from consult.protocol import Participant
from health.core.clock import utcnow
from health.core.naming import CONSULT_SYSTEM
from records.access import Caller
from records.api.service import RecordsContext, resources_of
from records.interactions import FhirRequest
from records.outcome import FhirError

logger = logging.getLogger(__name__)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "laboratory": "Laboratory"}
#: LOINC 72170-4 "Photographic image" for shared pictures.
PHOTO_TYPE = {"system": LOINC, "code": "72170-4", "display": "Photographic image"}


@dataclass(frozen=True)
class ConsultOnRecord:
    """What the record says of a consult: ``Patient/…``, ``Encounter/…`` (or None yet),
    ``ServiceRequest/…``."""

    patient: str
    encounter: str | None
    service_request: str


@dataclass(frozen=True)
class ParticipantOnRecord:
    """A participant as the record knows them: their caller, and their reference (or None:
    someone with no resource of their own, named by display only)."""

    caller: Caller
    reference: str | None = None


#: The participant's caller and reference (the assembly's; see the module docstring).
Callers = Callable[[Participant], Awaitable[ParticipantOnRecord]]


class ConsultDirectory(Protocol):
    async def consult(self, consult_id: str, by: ParticipantOnRecord) -> ConsultOnRecord:
        """The consult, read as ``by``; :class:`RecordsRefused` if they cannot see it."""
        ...


def _refused(error: FhirError, what: str) -> RecordsRefused:
    return RecordsRefused(f"the record would not take the {what}: {error}")


class FhirConsultDirectory:
    """The consult as the FHIR record has it: ServiceRequest → subject, Encounter."""

    def __init__(self, records: RecordsContext, *, base_url: str) -> None:
        self.records = records
        self.base_url = base_url

    async def consult(self, consult_id: str, by: ParticipantOnRecord) -> ConsultOnRecord:
        try:
            result = await self.records.perform(
                by.caller,
                FhirRequest("GET", f"ServiceRequest/{consult_id}"),
                base_url=self.base_url,
            )
        except FhirError as error:
            raise RecordsRefused(
                f"the consult {consult_id} is not in the record as you can see it ({error})"
            ) from None
        request = resources_of(result)[0]
        subject = (request.get("subject") or {}).get("reference", "")
        if not subject.startswith("Patient/"):
            raise RecordsRefused(f"the consult {consult_id} names no patient")
        encounters = await self.records.perform(
            by.caller,
            FhirRequest(
                "GET", "Encounter", query=f"based-on=ServiceRequest/{consult_id}&_sort=-date"
            ),
            base_url=self.base_url,
        )
        found = resources_of(encounters)
        running = [e for e in found if e.get("status") == "in-progress"] or found
        encounter = f"Encounter/{running[0]['id']}" if running else None
        return ConsultOnRecord(
            patient=subject, encounter=encounter, service_request=f"ServiceRequest/{consult_id}"
        )


class FhirCallRecords:
    """:class:`~consult.call_records.ConsultRecords` on ``RecordsContext.perform``."""

    def __init__(
        self,
        records: RecordsContext,
        *,
        callers: Callers,
        directory: ConsultDirectory | None = None,
        base_url: str = "https://fhir.yinchuan-health.cn/fhir",
    ) -> None:
        self.records = records
        self.callers = callers
        self.base_url = base_url
        self.directory = directory or FhirConsultDirectory(records, base_url=base_url)

    # The interface.

    async def vital_sign(self, consult_id: str, by: Participant, reading: VitalSignReading) -> str:
        who, consult = await self._context(consult_id, by)
        resource = observation(consult, who, by, reading, consult_id=consult_id)
        return await self._create(
            who, resource, READING_ID_SYSTEM, _key(consult_id, by, reading.reading_id), "reading"
        )

    async def chat(
        self, consult_id: str, by: Participant, line: ChatLine, to: list[Participant]
    ) -> str:
        who, consult = await self._context(consult_id, by)
        recipients = [await self._named(p) for p in to]
        resource = communication(consult, who, by, line, recipients)
        return await self._create(
            who, resource, CHAT_ID_SYSTEM, _key(consult_id, by, line.message_id), "chat message"
        )

    async def shared_file(self, consult_id: str, by: Participant, file: SharedFile) -> str:
        who, consult = await self._context(consult_id, by)
        resource = shared_document(consult, who, by, file)
        return await self._create(
            who, resource, FILE_ID_SYSTEM, _key(consult_id, by, file.file_id), "file"
        )

    async def recording_refusal(self, consult_id: str, by: Participant) -> str | None:
        try:
            who, consult = await self._context(consult_id, by)
            found = await self.records.perform(
                who.caller,
                FhirRequest(
                    "GET",
                    "Consent",
                    query=(
                        f"identifier={CONSULT_SYSTEM}|{consult_id}&patient={consult.patient}"
                        f"&status=active&category="
                        f"{RECORDING_CONSENT['system']}|{RECORDING_CONSENT['code']}"
                    ),
                ),
                base_url=self.base_url,
            )
        except RecordsRefused as refused:
            return refused.message
        except FhirError as error:
            return f"the record could not be asked for the patient's Consent ({error})"
        now = utcnow()
        if any(_consent_covers(c, consult, now) for c in resources_of(found)):
            return None
        return (
            "no Consent to record this consult is on file for the patient: the requesting "
            "clinic records the patient's agreement on the consult's page first"
        )

    async def recording_started(
        self, consult_id: str, recording: Recording, *, url_of: UrlOf
    ) -> str:
        who, consult = await self._context(consult_id, recording.started_by)
        resource = recording_document(consult, who, recording, url_of)
        return await self._create(
            who, resource, RECORDING_ID_SYSTEM, recording.recording_id, "recording"
        )

    async def recording_changed(
        self, consult_id: str, recording: Recording, document: str, *, url_of: UrlOf
    ) -> None:
        who, consult = await self._context(consult_id, recording.started_by)
        resource = recording_document(consult, who, recording, url_of)
        resource["id"] = document.split("/", 1)[1]
        try:
            await self.records.perform(
                who.caller, FhirRequest("PUT", document, body=resource), base_url=self.base_url
            )
        except FhirError as error:
            raise _refused(error, "recording") from None

    # Inside.

    async def _context(
        self, consult_id: str, by: Participant
    ) -> tuple[ParticipantOnRecord, ConsultOnRecord]:
        who = await self.callers(by)
        return who, await self.directory.consult(consult_id, who)

    async def _named(self, participant: Participant) -> dict[str, str]:
        try:
            reference = (await self.callers(participant)).reference
        except Exception:  # someone the assembly cannot place: named by display only
            reference = None
        return _reference(reference, participant)

    async def _create(
        self,
        who: ParticipantOnRecord,
        resource: dict[str, Any],
        system: str,
        value: str,
        what: str,
    ) -> str:
        resource["identifier"] = [{"system": system, "value": value}]
        kind = resource["resourceType"]
        try:
            result = await self.records.perform(
                who.caller,
                FhirRequest(
                    "POST", kind, body=resource, if_none_exist=f"identifier={system}|{value}"
                ),
                base_url=self.base_url,
            )
        except FhirError as error:
            raise _refused(error, what) from None
        shown = resources_of(result)
        if shown:
            return f"{kind}/{shown[0]['id']}"
        # A conditional create that matched gives the match; fetch it by identifier.
        found = await self.records.perform(
            who.caller,
            FhirRequest("GET", kind, query=f"identifier={system}|{value}"),
            base_url=self.base_url,
        )
        return f"{kind}/{resources_of(found)[0]['id']}"


def _key(consult_id: str, by: Participant, message_id: str) -> str:
    return f"{consult_id}/{by.id}/{message_id}"


def _reference(reference: str | None, participant: Participant) -> dict[str, str]:
    named = {"display": participant.display_name}
    if reference:
        named["reference"] = reference
    return named


def _context_links(consult: ConsultOnRecord) -> dict[str, Any]:
    links: dict[str, Any] = {"subject": {"reference": consult.patient}}
    if consult.encounter:
        links["encounter"] = {"reference": consult.encounter}
    return links


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def observation(
    consult: ConsultOnRecord,
    who: ParticipantOnRecord,
    by: Participant,
    reading: VitalSignReading,
    *,
    consult_id: str,
) -> dict[str, Any]:
    """The Observation of a reading (FHIR vital-signs profile shape, LOINC and UCUM)."""
    codings = [{"system": LOINC, "code": reading.loinc, "display": reading.display}]
    codings += [{"system": LOINC, "code": code, "display": name} for code, name in reading.also]
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": OBSERVATION_CATEGORY,
                        "code": reading.category,
                        "display": _CATEGORY_DISPLAY[reading.category],
                    }
                ]
            }
        ],
        "code": {"coding": codings, "text": reading.display},
        **_context_links(consult),
        "basedOn": [{"reference": consult.service_request}],
        "effectiveDateTime": reading.effective.isoformat(),
        "issued": utcnow().isoformat(),
        "performer": [_reference(who.reference, by)],
        "note": [{"text": f"Measured during remote consult {consult_id}"}],
    }
    measured = [m.measured for m in reading.measurements if m.measured]
    if measured:
        resource["note"].append({"text": "As measured: " + ", ".join(measured)})
    if reading.device:
        resource["device"] = {"display": reading.device}
    if reading.panel:
        resource["component"] = [
            {
                "code": {"coding": [{"system": LOINC, "code": m.loinc, "display": m.display}]},
                "valueQuantity": _quantity(m.value, m.unit),
            }
            for m in reading.measurements
        ]
    else:
        measurement = reading.measurements[0]
        resource["valueQuantity"] = _quantity(measurement.value, measurement.unit)
    return resource


def communication(
    consult: ConsultOnRecord,
    who: ParticipantOnRecord,
    by: Participant,
    line: ChatLine,
    recipients: list[dict[str, str]],
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "completed",
        "basedOn": [{"reference": consult.service_request}],
        "category": [
            {
                "coding": [
                    {
                        "system": CALL_DOCUMENT_CATEGORY_SYSTEM,
                        "code": "consult-chat",
                        "display": "远程会诊中的消息 chat in a remote consult",
                    }
                ]
            }
        ],
        **_context_links(consult),
        "sent": line.sent.isoformat(),
        "sender": _reference(who.reference, by),
        "payload": [{"contentString": line.text}],
    }
    if recipients:
        resource["recipient"] = recipients
    return resource


def _attachment_hash(digest: bytes | None) -> str | None:
    return base64.b64encode(digest).decode() if digest is not None else None


def shared_document(
    consult: ConsultOnRecord, who: ParticipantOnRecord, by: Participant, file: SharedFile
) -> dict[str, Any]:
    now = utcnow().isoformat()
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": (
            {"coding": [PHOTO_TYPE], "text": "Photograph shared in a remote consult"}
            if file.content_type.startswith("image/")
            else {"text": "Document shared in a remote consult"}
        ),
        "category": [
            {
                "coding": [
                    {
                        "system": CALL_DOCUMENT_CATEGORY_SYSTEM,
                        "code": "shared-file",
                        "display": "远程会诊中共享的文件 file shared in a remote consult",
                    }
                ]
            }
        ],
        "subject": {"reference": consult.patient},
        "date": now,
        "author": [_reference(who.reference, by)],
        "content": [
            {
                "attachment": {
                    "contentType": file.content_type,
                    "data": base64.b64encode(file.data).decode(),
                    "size": len(file.data),
                    "hash": _attachment_hash(file.sha1),
                    "title": file.name,
                    "creation": now,
                }
            }
        ],
        "context": _document_context(consult),
    }
    if file.description:
        resource["description"] = file.description
    return resource


def _document_context(
    consult: ConsultOnRecord, period: dict[str, str] | None = None
) -> dict[str, Any]:
    context: dict[str, Any] = {"related": [{"reference": consult.service_request}]}
    if consult.encounter:
        context["encounter"] = [{"reference": consult.encounter}]
    if period:
        context["period"] = period
    return context


def _recorded_attachment(recording: Recording, file: RecordedFile, url_of: UrlOf) -> dict[str, Any]:
    participant = file.participant
    attachment: dict[str, Any] = {
        "contentType": file.content_type,
        "url": url_of(recording, file),
        "title": f"{participant.display_name} ({participant.role})"
        if participant.role
        else participant.display_name,
        "creation": file.started.isoformat(),
    }
    if file.size is not None:
        attachment["size"] = file.size
    if file.sha1 is not None:
        attachment["hash"] = _attachment_hash(file.sha1)
    return {"attachment": attachment}


def recording_document(
    consult: ConsultOnRecord, who: ParticipantOnRecord, recording: Recording, url_of: UrlOf
) -> dict[str, Any]:
    """The recording's DocumentReference: preliminary while it runs, final when done."""
    period = {"start": recording.started.isoformat()}
    if recording.ended is not None:
        period["end"] = recording.ended.isoformat()
    seconds = [f.seconds for f in recording.files if f.seconds is not None]
    description = (
        f"Video recording of a remote consult: {len(recording.files)} participant file(s), "
        "each the participant's own audio and video as the hub received them"
    )
    if seconds:
        description += f", up to {max(seconds):.0f} s"
    if recording.cut_short:
        description += f". Cut short: {recording.cut_short}"
    return {
        "resourceType": "DocumentReference",
        "identifier": [{"system": RECORDING_ID_SYSTEM, "value": recording.recording_id}],
        "status": "current",
        "docStatus": "final" if recording.ended is not None else "preliminary",
        "type": {"text": "Remote consult video recording"},
        "category": [
            {
                "coding": [
                    {
                        "system": CALL_DOCUMENT_CATEGORY_SYSTEM,
                        "code": "call-recording",
                        "display": "远程会诊录像 recording of a remote consult",
                    }
                ]
            }
        ],
        "subject": {"reference": consult.patient},
        "date": recording.started.isoformat(),
        "author": [_reference(who.reference, recording.started_by)],
        "description": description,
        "content": [_recorded_attachment(recording, f, url_of) for f in recording.files],
        "context": _document_context(consult, period),
    }


def _period_covers(period: dict[str, Any] | None, now: dt.datetime) -> bool:
    if not period:
        return True
    try:
        start = period.get("start")
        end = period.get("end")
        if start and dt.datetime.fromisoformat(start.replace("Z", "+00:00")) > now:
            return False
        return not (end and dt.datetime.fromisoformat(end.replace("Z", "+00:00")) < now)
    except ValueError:
        return False


def _consent_covers(consent: dict[str, Any], consult: ConsultOnRecord, now: dt.datetime) -> bool:
    """An active recording Consent that permits it now, for this consult or for all."""
    if consent.get("status") != "active":
        return False
    provision = consent.get("provision") or {}
    if provision.get("type", "permit") != "permit" or not _period_covers(
        provision.get("period"), now
    ):
        return False
    data = [d.get("reference", {}).get("reference") for d in provision.get("data", [])]
    return not data or any(
        ref in (consult.service_request, consult.encounter) for ref in data if ref
    )


__all__ = [
    "Callers",
    "ConsultDirectory",
    "ConsultOnRecord",
    "FhirCallRecords",
    "FhirConsultDirectory",
    "ParticipantOnRecord",
    "communication",
    "observation",
    "recording_document",
    "shared_document",
]
