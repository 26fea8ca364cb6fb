"""A small clinic network with its people, for the access-control and audit tests.

The demo directory and its five demo users (``health seed --demo --patients 0``), two more
village doctors, and patients written by a hospital system (a system client):

- ``a``: managed by 闽宁镇原隆村卫生室 (the demo village doctor's clinic), with a blood
  pressure Observation, an Encounter and a Condition;
- ``b``: managed by 闽宁镇福宁村卫生室, the clinic of ``hostile``, a village doctor of the
  same township (so the demo township doctor sees both);
- ``c``: managed by 洪广镇欣荣村卫生室, in another township.

Every id and value of the patients is unique to the run, so searches by them find nothing
but what the test made.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from health.core.naming import ORGANIZATION_CODE_SYSTEM
from tests.conftest import BACKENDS, fresh_database
from tests.services import AppServer

SYSTEM = "https://fhir.yinchuan-health.cn/sid/test"
VILLAGE_A = "640121105201"  # 闽宁镇原隆村卫生室
VILLAGE_B = "640121105202"  # 闽宁镇福宁村卫生室
VILLAGE_C = "640122102201"  # 洪广镇欣荣村卫生室
#: Settings of the network's server: a break-glass opening of 20 s, so a test can watch one
#: end; logins throttled at 30 a minute per address.
SETTINGS = {"HEALTH_BREAK_GLASS_SECONDS": "20", "HEALTH_LOGINS_PER_ADDRESS_PER_MINUTE": "30"}


def fhir_client(server: AppServer, token: str | None) -> httpx.Client:
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    # Idle connections are dropped before uvicorn's 5 s keep-alive runs out: a request sent
    # on a connection the server is closing at that moment fails with "Server disconnected".
    limits = httpx.Limits(keepalive_expiry=2.0)
    return httpx.Client(base_url=f"{server.url}/fhir", headers=headers, timeout=60, limits=limits)


@dataclass
class PatientRecord:
    id: str
    marker: str
    observation: str
    encounter: str
    condition: str


@dataclass
class Network:
    server: AppServer
    backend: str
    organizations: dict[str, str]
    system: httpx.Client
    patients: dict[str, PatientRecord] = field(default_factory=dict)
    _tokens: dict[tuple[str, str | None], str] = field(default_factory=dict)

    def token(self, username: str, scope: str | None = None) -> str:
        key = (username, scope)
        if key not in self._tokens:
            args = ["user", "token", username] + (["--scope", scope] if scope else [])
            self._tokens[key] = self.server.cli(*args).strip()
        return self._tokens[key]

    def as_user(self, username: str, scope: str | None = None) -> httpx.Client:
        return fhir_client(self.server, self.token(username, scope))

    def practitioner(self, username: str) -> str:
        """The user's Practitioner id, as ``health user list`` shows it."""
        for line in self.server.cli("user", "list").splitlines():
            columns = line.split()
            if columns[0] == username:
                return columns[3]
        raise KeyError(username)

    def make_patient(self, key: str, clinic: str, *, name: str) -> PatientRecord:
        marker = uuid.uuid4().hex
        organization = {"reference": f"Organization/{self.organizations[clinic]}"}
        patient = created(
            self.system.post(
                "/Patient",
                json={
                    "resourceType": "Patient",
                    "identifier": [{"system": SYSTEM, "value": marker}],
                    "name": [{"text": name, "family": name[0], "given": [name[1:]]}],
                    "gender": "female",
                    "managingOrganization": organization,
                },
            )
        )
        subject = {"reference": f"Patient/{patient['id']}"}
        encounter = created(
            self.system.post(
                "/Encounter",
                json={
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "AMB",
                    },
                    "subject": subject,
                    "serviceProvider": organization,
                },
            )
        )
        observation = created(
            self.system.post(
                "/Observation",
                json={
                    "resourceType": "Observation",
                    "status": "final",
                    "identifier": [{"system": SYSTEM, "value": f"{marker}-bp"}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "subject": subject,
                    "encounter": {"reference": f"Encounter/{encounter['id']}"},
                    "valueQuantity": {"value": 150, "unit": "mmHg"},
                    "note": [{"text": marker}],
                },
            )
        )
        condition = created(
            self.system.post(
                "/Condition",
                json={
                    "resourceType": "Condition",
                    "code": {
                        "coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}],
                        "text": marker,
                    },
                    "subject": subject,
                },
            )
        )
        record = PatientRecord(
            patient["id"], marker, observation["id"], encounter["id"], condition["id"]
        )
        self.patients[key] = record
        return record


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


@contextmanager
def clinic_network(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, settings: dict[str, str]
) -> Iterator[Network]:
    """The network described above, on ``backend``, its server run with ``settings``."""
    url = fresh_database(request, backend, tmp_path)
    server = AppServer(url, settings=settings)
    server.cli("seed", "--demo", "--patients", "0")
    for username, clinic in (("hostile", VILLAGE_B), ("outsider", VILLAGE_C)):
        server.cli(
            "user",
            "add",
            username,
            "--role",
            "village_doctor",
            "--org",
            clinic,
            "--password-stdin",
            input="hostile-password-1\n",
        )
    server.start()
    system = fhir_client(server, server.system_token())
    organizations = {}
    for code in (VILLAGE_A, VILLAGE_B, VILLAGE_C):
        found = system.get(
            "/Organization", params={"identifier": f"{ORGANIZATION_CODE_SYSTEM}|{code}"}
        ).json()
        organizations[code] = found["entry"][0]["resource"]["id"]
    net = Network(server, backend, organizations, system)
    net.make_patient("a", VILLAGE_A, name="马福兰")
    net.make_patient("b", VILLAGE_B, name="杨秀英")
    net.make_patient("c", VILLAGE_C, name="丁玉梅")
    try:
        yield net
    finally:
        system.close()
        server.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def network(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    backend = request.param
    with clinic_network(
        request, tmp_path_factory.mktemp(f"network-{backend}"), backend, SETTINGS
    ) as net:
        yield net
