"""The consult network for workflow, access and call tests: the demo clinics and hospitals,
their people, and the app serving them over real HTTP with notifications going to a real
SMS gateway stand-in on loopback.

People (password ``yinchuan-demo`` for the demo ones):

- ``village-doctor`` at 闽宁镇原隆村卫生室, who asks; her patients ``a`` (and ``d``...);
- ``hostile``, a village doctor of 闽宁镇福宁村卫生室 (the same township), and ``outsider``
  of 洪广镇欣荣村卫生室: not the patient's clinic;
- ``township-doctor`` at 闽宁镇卫生院 (sees the township's villages);
- ``specialist`` and ``colleague``, cardiologists of 银川市第一人民医院心血管内科;
- ``endocrinologist`` of the same hospital's 内分泌科: another department.

Calls are recorded into the network's ``recording_dir``; a file shared in a call may be
256 KiB at most here (so that a test can send a bigger one), and a dead worker's rooms are
taken over after 2 s.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from health.core.naming import ORGANIZATION_CODE_SYSTEM
from tests.auth.conftest import VILLAGE_A, VILLAGE_B, VILLAGE_C, Network, fhir_client
from tests.conftest import fresh_database
from tests.receivers import Receiver
from tests.services import AppServer, RedisServer

CARDIOLOGY = "640100H01-D01"
ENDOCRINOLOGY = "640100H01-D02"
#: The consult's share outlives it by this much here (a day in production), so that tests
#: can see the grace hold and then end.
GRACE_SECONDS = 15
MAX_FILE_BYTES = 256 * 1024
ROOM_LEASE_SECONDS = 2.0


def settings(receiver: Receiver, recording_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "HEALTH_CONSULT_RECORDING_DIR": str(recording_dir),
        "HEALTH_CONSULT_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
        "HEALTH_CONSULT_ROOM_LEASE_SECONDS": str(ROOM_LEASE_SECONDS),
        "HEALTH_CONSENT_GRACE_SECONDS": str(GRACE_SECONDS),
        "HEALTH_NOTIFIER": "sms",
        "HEALTH_NOTIFY_GATEWAY_URL": receiver.url,
        "HEALTH_NOTIFY_GATEWAY_TOKEN": "sms-gateway-token",
        "HEALTH_OUTBOX_POLL_SECONDS": "0.2",
        "HEALTH_OUTBOX_RETRY_BASE_SECONDS": "0.2",
        "HEALTH_LOGINS_PER_ADDRESS_PER_MINUTE": "200",
        **extra,
    }


@dataclass
class ConsultNetwork(Network):
    receiver: Receiver = field(default_factory=Receiver)
    departments: dict[str, str] = field(default_factory=dict)
    recording_dir: Path = Path("var/recordings")

    def api(self, username: str) -> httpx.Client:
        """The consult JSON API as a user (bearer token)."""
        return httpx.Client(
            base_url=self.server.url,
            headers={"Authorization": f"Bearer {self.token(username)}"},
            timeout=60,
        )

    def request_consult(
        self,
        patient: str,
        *,
        priority: str = "routine",
        reason: str = "血压控制不佳，请心内科会诊",
        department: str = CARDIOLOGY,
        **extra: Any,
    ) -> dict[str, Any]:
        with self.api("village-doctor") as api:
            response = api.post(
                "/api/consults",
                json={
                    "patient": patient,
                    "department": self.departments[department],
                    "priority": priority,
                    "reason": reason,
                    **extra,
                },
            )
        assert response.status_code == 201, response.text
        consult: dict[str, Any] = response.json()
        return consult

    def act(self, username: str, consult: str, action: str, **body: Any) -> httpx.Response:
        with self.api(username) as api:
            return api.post(f"/api/consults/{consult}/{action}", json=body)

    def consult(self, username: str, consult: str) -> httpx.Response:
        with self.api(username) as api:
            return api.get(f"/api/consults/{consult}")

    def fresh_patient(self, clinic: str = VILLAGE_A) -> str:
        key = uuid.uuid4().hex
        return self.make_patient(key, clinic, name="马秀英").id


def make_network(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    backend: str,
    receiver: Receiver,
    **extra: str,
) -> ConsultNetwork:
    folder = tmp_path_factory.mktemp(f"consult-{backend}")
    url = fresh_database(request, backend, folder)
    server = AppServer(url, settings=settings(receiver, folder / "recordings", **extra))
    server.cli("seed", "--demo", "--patients", "0")
    server.start()
    system = fhir_client(server, server.system_token())
    organizations = {}
    for code in (VILLAGE_A, VILLAGE_B, VILLAGE_C, CARDIOLOGY, ENDOCRINOLOGY):
        found = system.get(
            "/Organization", params={"identifier": f"{ORGANIZATION_CODE_SYSTEM}|{code}"}
        ).json()
        organizations[code] = found["entry"][0]["resource"]["id"]

    def staff(code: str) -> list[str]:
        roles = system.get(
            "/PractitionerRole", params={"organization": f"Organization/{organizations[code]}"}
        ).json()
        return sorted(
            e["resource"]["practitioner"]["reference"].split("/")[1] for e in roles["entry"]
        )

    users = [
        ("hostile", "village_doctor", VILLAGE_B, None),
        ("outsider", "village_doctor", VILLAGE_C, None),
        ("endocrinologist", "specialist", ENDOCRINOLOGY, staff(ENDOCRINOLOGY)[0]),
    ]
    demo_specialist = None
    net = ConsultNetwork(
        server,
        backend,
        organizations,
        system,
        receiver=receiver,
        recording_dir=folder / "recordings",
    )
    demo_specialist = net.practitioner("specialist")
    colleague = next(p for p in staff(CARDIOLOGY) if p != demo_specialist)
    users.append(("colleague", "specialist", CARDIOLOGY, colleague))
    for username, role, clinic, practitioner in users:
        args = ["user", "add", username, "--role", role, "--org", clinic, "--password-stdin"]
        if practitioner:
            args += ["--practitioner", practitioner]
        server.cli(*args, "--name", username, input="consult-password-1\n")
    net.departments = {
        CARDIOLOGY: organizations[CARDIOLOGY],
        ENDOCRINOLOGY: organizations[ENDOCRINOLOGY],
    }
    net.make_patient("a", VILLAGE_A, name="马福兰")
    return net


def make_two_workers(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    receiver: Receiver,
) -> tuple[ConsultNetwork, AppServer]:
    """Two ``health serve`` processes on one fresh PostgreSQL database and one Redis, with
    one recordings folder (as on one host); the network is the first's."""
    folder = tmp_path_factory.mktemp("two-workers")
    url = fresh_database(request, "postgresql", folder)
    shared = settings(receiver, folder / "recordings")
    first = AppServer(url, redis_url=redis_server.url, settings=shared)
    first.cli("seed", "--demo", "--patients", "0")
    first.start()
    second = AppServer(url, redis_url=redis_server.url, settings=shared)
    second.secret = first.secret
    second.start()
    system = fhir_client(first, first.system_token())
    organizations: dict[str, Any] = {}
    for code in (VILLAGE_A, CARDIOLOGY):
        found = system.get(
            "/Organization", params={"identifier": f"{ORGANIZATION_CODE_SYSTEM}|{code}"}
        ).json()
        organizations[code] = found["entry"][0]["resource"]["id"]
    net = ConsultNetwork(
        first,
        "postgresql",
        organizations,
        system,
        receiver=receiver,
        recording_dir=folder / "recordings",
    )
    net.departments = {CARDIOLOGY: organizations[CARDIOLOGY]}
    return net, second


@pytest.fixture(scope="session")
def consult_receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def in_minutes(minutes: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)).isoformat()
