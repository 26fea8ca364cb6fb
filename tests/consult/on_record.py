"""Consults on record, for the tests of what a call keeps: readings, chat, files, recordings.

A consult here is the consult network's (``tests.consult.network``): asked for by the
village doctor, accepted and started by the specialist through the consult API — so its
Task, Encounter and the Consent sharing the record are the workflow's own — and, if asked,
with the patient's consent to recording recorded by the village clinic through the same
API. Calls go through the app's authenticated ``/consult/{id}/ws``, so who is in the call is
what the consult says, and what the hub keeps goes through ``RecordsContext.perform`` as
that participant. What it wrote is then read back over the app's HTTP API, as the people in
the consult and an outsider.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from consult.client import ConsultClient
from consult.protocol import Participant
from tests.consult.network import ConsultNetwork

#: The people of the network, as the call names them: a participant's id is their username
#: (their display name is their account's, as the hub tells each client it joined as).
VILLAGE = Participant("village-doctor", "", "village_doctor")
SPECIALIST_ON_RECORD = Participant("specialist", "", "specialist")
OUTSIDER = Participant("outsider", "", "village_doctor")


def signalling_url(server_url: str, consult_id: str) -> str:
    return server_url.replace("http://", "ws://", 1) + f"/consult/{consult_id}/ws"


@dataclass
class ConsultsOnRecord:
    network: ConsultNetwork
    #: Each opened consult's patient (``Patient/…``).
    patients: dict[str, str] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return self.network.backend

    @property
    def recording_dir(self) -> Path:
        return self.network.recording_dir

    def client(
        self, consult_id: str, participant: Participant, *, server: Any = None, **options: Any
    ) -> ConsultClient:
        """A Python client joining the consult's call as that user (their bearer token),
        through the app (or another ``AppServer`` of the same network)."""
        options.setdefault("width", 320)
        options.setdefault("height", 240)
        url = signalling_url((server or self.network.server).url, consult_id)
        return ConsultClient(url, token=self.network.token(participant.id), **options)

    def fhir(self, username: str) -> httpx.Client:
        return self.network.as_user(username)

    def open_consult(self, *, recording_consent: bool = False) -> str:
        """A running consult of a new patient of the village doctor's with the specialist
        (requested, accepted, started: its Encounter open), and, if asked, the patient's
        consent to recording it; the consult's id (its ServiceRequest's). A new patient each
        time: the consult shares the patient's record with the specialist, which other
        tests of the network must not find shared."""
        net = self.network
        patient = net.fresh_patient()
        consult = net.request_consult(patient, priority="urgent")["id"]
        self.patients[consult] = f"Patient/{patient}"
        for username, action in (("specialist", "accept"), ("specialist", "start")):
            done = net.act(username, consult, action)
            assert done.status_code == 200, done.text
        if recording_consent:
            agreed = net.act("village-doctor", consult, "recording-consent", agreed=True)
            assert agreed.status_code == 200, agreed.text
            assert agreed.json()["recordingConsent"].startswith("Consent/")
        return str(consult)

    def patient_of(self, consult_id: str) -> str:
        return self.patients[consult_id]


def new_id() -> str:
    return uuid.uuid4().hex[:12]


__all__ = [
    "OUTSIDER",
    "SPECIALIST_ON_RECORD",
    "VILLAGE",
    "ConsultsOnRecord",
    "new_id",
    "signalling_url",
]
