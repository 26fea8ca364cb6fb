"""What a call puts in the patient's record, as the hub asks for it: :class:`ConsultRecords`.

The hub validates what participants send during a call — vital-sign readings, chat lines,
shared images and PDFs — and records calls; where they are kept is not its business. It
calls a :class:`ConsultRecords`, whose FHIR implementation
(:class:`consult.fhir_call_records.FhirCallRecords`) stores them through the records' one
way in, with the participant's own access policy and audit trail:

- a reading → an Observation (LOINC code, UCUM unit) in the patient's record, linked to
  the consult's Encounter and based on its ServiceRequest;
- a chat line → a Communication;
- a shared file → a DocumentReference holding the file;
- a recording → a DocumentReference created when it starts (``docStatus`` preliminary),
  updated as each participant's file opens and when it ends (final), so that even a hub
  that dies mid-call leaves the recording findable; and only when a Consent for recording
  is on file (:data:`consult.resources.RECORDING_CONSENT`, which the consult workflow
  records for the patient's clinic).

Every method names the participant on whose behalf it acts; it raises
:class:`RecordsRefused` with a message for that participant when the record will not take
it (their access does not reach the patient, the consult is unknown...).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from consult.protocol import Participant
from consult.resources import RECORDING_CONSENT
from health.core.naming import NAMESPACE

#: Identifier systems of what a call writes: a repeated message (after a reconnection)
#: finds the resource it wrote the first time instead of writing it again.
READING_ID_SYSTEM = f"{NAMESPACE}/sid/consult-reading"
CHAT_ID_SYSTEM = f"{NAMESPACE}/sid/consult-chat"
FILE_ID_SYSTEM = f"{NAMESPACE}/sid/consult-file"
RECORDING_ID_SYSTEM = f"{NAMESPACE}/sid/consult-recording"
#: DocumentReference.category of what a call produces.
CALL_DOCUMENT_CATEGORY_SYSTEM = f"{NAMESPACE}/CodeSystem/consult-document"


class RecordsRefused(Exception):
    """The record would not take it; ``message`` says why, for the participant."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Measurement:
    """One measured value: a LOINC code and the UCUM unit it is stored in."""

    loinc: str
    display: str
    value: float
    unit: str
    #: The value as measured, when it came in another unit ("100.4 [degF]").
    measured: str | None = None


@dataclass(frozen=True)
class VitalSignReading:
    """A validated reading (``consult.vitals``): one value, or a panel of components."""

    reading_id: str
    kind: str
    #: The LOINC code and name of the observation (a panel's for blood pressure).
    loinc: str
    display: str
    category: str
    measurements: tuple[Measurement, ...]
    effective: dt.datetime
    device: str | None = None
    #: Whether ``measurements`` are components of a panel, rather than one value.
    panel: bool = False
    #: Further (LOINC code, display) codings of the observation.
    also: tuple[tuple[str, str], ...] = ()
    #: Fields whose values are possible but unusual (kept, and the reply says so).
    unusual: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatLine:
    message_id: str
    text: str
    sent: dt.datetime


@dataclass(frozen=True)
class SharedFile:
    """A file whose content has been checked (``consult.shared_files``)."""

    file_id: str
    name: str
    content_type: str
    data: bytes
    sha1: bytes
    description: str | None = None


@dataclass
class RecordedFile:
    """One participant's audio and video in a recording."""

    participant: Participant
    path: Path
    content_type: str
    started: dt.datetime
    size: int | None = None
    sha1: bytes | None = None
    seconds: float | None = None


@dataclass
class Recording:
    recording_id: str
    started: dt.datetime
    started_by: Participant
    files: list[RecordedFile] = field(default_factory=list)
    ended: dt.datetime | None = None
    #: Why it ended short, if it did ("the consult server stopped").
    cut_short: str | None = None


class ConsultRecords(Protocol):
    """Where a call's readings, chat, files and recordings go (see the module docstring)."""

    async def vital_sign(self, consult_id: str, by: Participant, reading: VitalSignReading) -> str:
        """Keep a reading; its reference (``Observation/…``)."""
        ...

    async def chat(
        self, consult_id: str, by: Participant, line: ChatLine, to: list[Participant]
    ) -> str:
        """Keep a chat line; its reference (``Communication/…``)."""
        ...

    async def shared_file(self, consult_id: str, by: Participant, file: SharedFile) -> str:
        """Keep a shared file; its reference (``DocumentReference/…``)."""
        ...

    async def recording_refusal(self, consult_id: str, by: Participant) -> str | None:
        """None if the consult may be recorded now, else why not (for the participant)."""
        ...

    async def recording_started(
        self, consult_id: str, recording: Recording, *, url_of: UrlOf
    ) -> str:
        """Note a recording that has begun; its reference (``DocumentReference/…``)."""
        ...

    async def recording_changed(
        self, consult_id: str, recording: Recording, document: str, *, url_of: UrlOf
    ) -> None:
        """A participant's file was added, or the recording ended (``recording.ended``)."""
        ...


class UrlOf(Protocol):
    """Where the app serves a recorded file, for the DocumentReference's attachment."""

    def __call__(self, recording: Recording, file: RecordedFile) -> str: ...


__all__ = [
    "CALL_DOCUMENT_CATEGORY_SYSTEM",
    "CHAT_ID_SYSTEM",
    "FILE_ID_SYSTEM",
    "READING_ID_SYSTEM",
    "RECORDING_CONSENT",
    "RECORDING_ID_SYSTEM",
    "ChatLine",
    "ConsultRecords",
    "Measurement",
    "RecordedFile",
    "Recording",
    "RecordsRefused",
    "SharedFile",
    "UrlOf",
    "VitalSignReading",
]
