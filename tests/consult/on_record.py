"""Consults on record, for the tests of what a call keeps: a real app, its database, a hub.

The clinic network of ``tests.auth.conftest`` (the demo directory and users, patients ``a``
of 原隆村, ``c`` of another township) runs as ``health serve`` on SQLite or PostgreSQL;
the test process runs a signalling worker whose hub keeps readings, chat, files and
recordings through :class:`consult.fhir_call_records.FhirCallRecords` on the same database,
with the same signing and audit keys — as a worker of the app would once the consult route
is wired. What the hub wrote is then read back over the app's HTTP API, as the people in
the consult and an outsider.

A participant's id is their username; the assembly's ``callers`` here turns it into that
user's caller (their access policy, their audit trail) and ``Practitioner/…``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from consult.call_records import RECORDING_CONSENT, RecordsRefused
from consult.fhir_call_records import FhirCallRecords, ParticipantOnRecord
from consult.protocol import Participant
from health.auth import accounts
from health.auth.audit import AuditWriter, chain_key
from health.auth.gate import USER_SCOPES, Gate, RequestCaller, actor_of, user_subject
from health.auth.scopes import parse_scopes
from health.auth.tokens import TokenSigner
from health.core.bus import InProcessBus
from health.core.clock import utcnow
from health.core.database import Database
from health.core.settings import Settings
from records.api.service import RecordsContext
from records.indexing import SearchIndexer
from tests.auth.conftest import SETTINGS, Network, clinic_network, created, fhir_client
from tests.consult.conftest import TOKENS, SignallingWorker

VILLAGE = Participant("village-doctor", "马秀兰", "village_doctor")
SPECIALIST_ON_RECORD = Participant("specialist", "王建国", "specialist")
OUTSIDER = Participant("outsider", "丁医生", "village_doctor")
for _participant in (VILLAGE, SPECIALIST_ON_RECORD, OUTSIDER):
    TOKENS[f"token-{_participant.id}"] = _participant


@dataclass
class AccountCallers:
    """The assembly's ``callers`` for these tests: a participant's id is their username."""

    database: Database
    gate: Gate

    async def __call__(self, participant: Participant) -> ParticipantOnRecord:
        async with self.database.transaction(write=False) as session:
            user = await accounts.get_user(session, username=participant.id)
        if user is None or user.disabled:
            raise RecordsRefused(f"{participant.id} has no account here")
        subject = user_subject(user, parse_scopes(USER_SCOPES))
        caller = RequestCaller(
            subject, self.gate.policy(subject), actor_of(subject, None), self.gate
        )
        reference = f"Practitioner/{user.practitioner_id}" if user.practitioner_id else None
        return ParticipantOnRecord(caller=caller, reference=reference)


@dataclass
class RecordsParts:
    database: Database
    gate: Gate
    records: RecordsContext

    def call_records(self) -> FhirCallRecords:
        return FhirCallRecords(self.records, callers=AccountCallers(self.database, self.gate))


@asynccontextmanager
async def records_on(
    database_url: str, secret_hex: str, base_url: str
) -> AsyncIterator[RecordsParts]:
    """A records context on an app's database, with the app's signing and audit keys."""
    database = Database(database_url)
    indexer = SearchIndexer()
    secret = bytes.fromhex(secret_hex)
    audit = AuditWriter(database, indexer, chain_key(secret))
    app_settings = Settings(database_url=database_url)
    gate = Gate(
        settings=app_settings,
        database=database,
        indexer=indexer,
        signer=TokenSigner(secret, issuer=app_settings.issuer),
        audit=audit,
    )
    records = RecordsContext(
        database=database,
        indexer=indexer,
        bus=InProcessBus(),
        base_url=base_url,
        max_page_size=app_settings.max_page_size,
        default_page_size=app_settings.default_page_size,
        max_body_bytes=app_settings.max_body_bytes,
        authenticate=gate.authenticate,
    )
    try:
        yield RecordsParts(database, gate, records)
    finally:
        await audit.close()
        await database.dispose()


@dataclass
class ConsultsOnRecord:
    network: Network
    records: RecordsContext
    gate: Gate
    database: Database
    recording_dir: Path

    @property
    def backend(self) -> str:
        return self.network.backend

    def call_records(self) -> FhirCallRecords:
        return FhirCallRecords(self.records, callers=self.caller_of)

    async def caller_of(self, participant: Participant) -> ParticipantOnRecord:
        async with self.database.transaction(write=False) as session:
            user = await accounts.get_user(session, username=participant.id)
        if user is None or user.disabled:
            raise RecordsRefused(f"{participant.id} has no account here")
        subject = user_subject(user, parse_scopes(USER_SCOPES))
        caller = RequestCaller(
            subject, self.gate.policy(subject), actor_of(subject, None), self.gate
        )
        reference = f"Practitioner/{user.practitioner_id}" if user.practitioner_id else None
        return ParticipantOnRecord(caller=caller, reference=reference)

    async def worker(
        self, *, max_file_bytes: int | None = None, **options: Any
    ) -> SignallingWorker:
        settings = Settings(consult_recording_dir=self.recording_dir)
        if max_file_bytes is not None:
            settings.consult_max_file_bytes = max_file_bytes
        return await SignallingWorker(
            InProcessBus(), settings=settings, records=self.call_records(), **options
        ).start()

    def fhir(self, username: str) -> httpx.Client:
        return self.network.as_user(username)

    def open_consult(self, *, recording_consent: bool = False, patient: str = "a") -> str:
        """A consult of the village doctor's patient with the specialist: its ServiceRequest
        (whose id is the consult's), its running Encounter (class VR), the Consent that
        shares the record with the specialist, and, if asked, the patient's Consent to
        recording this consult."""
        net = self.network
        record = net.patients[patient]
        subject = {"reference": f"Patient/{record.id}"}
        specialist = net.practitioner("specialist")
        requester = net.practitioner("village-doctor")
        request = created(
            net.system.post(
                "/ServiceRequest",
                json={
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "category": [
                        {"coding": [{"system": "http://snomed.info/sct", "code": "11429006"}]}
                    ],
                    "code": {"text": "远程会诊 remote consult"},
                    "priority": "urgent",
                    "subject": subject,
                    "requester": {"reference": f"Practitioner/{requester}"},
                    "performer": [{"reference": f"Practitioner/{specialist}"}],
                },
            )
        )
        consult_id = str(request["id"])
        created(
            net.system.post(
                "/Encounter",
                json={
                    "resourceType": "Encounter",
                    "status": "in-progress",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "VR",
                    },
                    "subject": subject,
                    "basedOn": [{"reference": f"ServiceRequest/{consult_id}"}],
                    "period": {"start": utcnow().isoformat()},
                },
            )
        )
        now = utcnow()
        period = {
            "start": (now - dt.timedelta(hours=1)).isoformat(),
            "end": (now + dt.timedelta(days=1)).isoformat(),
        }
        created(net.system.post("/Consent", json=_sharing_consent(record.id, specialist, period)))
        if recording_consent:
            created(
                net.system.post("/Consent", json=_recording_consent(record.id, consult_id, period))
            )
        return consult_id


def _sharing_consent(patient: str, practitioner: str, period: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": {
            "type": "permit",
            "period": period,
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                                "code": "PROV",
                            }
                        ]
                    },
                    "reference": {"reference": f"Practitioner/{practitioner}"},
                }
            ],
        },
    }


def _recording_consent(patient: str, consult_id: str, period: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [RECORDING_CONSENT]}],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": utcnow().isoformat(),
        "provision": {
            "type": "permit",
            "period": period,
            "action": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                            "code": "collect",
                        }
                    ]
                }
            ],
            "data": [
                {"meaning": "related", "reference": {"reference": f"ServiceRequest/{consult_id}"}}
            ],
        },
    }


@contextmanager
def network_with_recordings(
    request: pytest.FixtureRequest, folder: Path, backend: str
) -> Iterator[tuple[Network, Path]]:
    """The clinic network's app, keeping consult recordings in a folder of the test's."""
    recording_dir = folder / "recordings"
    settings = {**SETTINGS, "HEALTH_CONSULT_RECORDING_DIR": str(recording_dir)}
    with clinic_network(request, folder, backend, settings) as net:
        yield net, recording_dir


@asynccontextmanager
async def consults_on_record(net: Network, recording_dir: Path) -> AsyncIterator[ConsultsOnRecord]:
    server = net.server
    async with records_on(server.database_url, server.secret, f"{server.url}/fhir") as parts:
        yield ConsultsOnRecord(net, parts.records, parts.gate, parts.database, recording_dir)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


__all__ = [
    "OUTSIDER",
    "SPECIALIST_ON_RECORD",
    "VILLAGE",
    "ConsultsOnRecord",
    "consults_on_record",
    "fhir_client",
    "network_with_recordings",
    "new_id",
]
