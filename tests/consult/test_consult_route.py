"""The consult's WebSockets in the real app: only the consult's people get in, the call
runs through the hub between Python clients (one worker, and two workers behind Redis), the
``health consult join`` command works against it, and the requester sees the consult's
state change live."""

from __future__ import annotations

import asyncio
import json
import uuid

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from consult.client import ConsultClient, consult_socket_url
from tests.consult.network import ConsultNetwork
from tests.consult.test_call import sees
from tests.consult.test_client_command import health
from tests.services import AppServer

DEADLINE = 60.0


def socket_url(server_url: str, consult: str, kind: str = "ws") -> str:
    return consult_socket_url(server_url, consult).removesuffix("/ws") + f"/{kind}"


async def refused(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with pytest.raises(InvalidStatus) as refusal:
        async with connect(url, additional_headers=headers):
            pass
    return int(refusal.value.response.status_code)


def client(net: ConsultNetwork, server_url: str, consult: str, username: str) -> ConsultClient:
    return ConsultClient(
        consult_socket_url(server_url, consult),
        token=net.token(username),
        width=320,
        height=240,
    )


def accepted_consult(net: ConsultNetwork) -> str:
    cid = str(net.request_consult(net.fresh_patient())["id"])
    assert net.act("specialist", cid, "accept").status_code == 200
    return cid


async def test_only_the_consults_people_get_in(consult_network: ConsultNetwork) -> None:
    net = consult_network
    cid = await asyncio.to_thread(accepted_consult, net)
    url = socket_url(net.server.url, cid)
    # Nobody, another clinic's doctors, another department: refused before the handshake.
    assert await refused(url, None) == 403
    assert await refused(url, "not-a-token") == 403
    for username in ("hostile", "outsider", "endocrinologist"):
        assert await refused(url, net.token(username)) == 403
        assert await refused(socket_url(net.server.url, cid, "events"), net.token(username)) == 403
    # A consult that is not accepted yet has no call to join.
    waiting = await asyncio.to_thread(net.request_consult, net.fresh_patient())
    assert (
        await refused(socket_url(net.server.url, waiting["id"]), net.token("village-doctor")) == 403
    )
    # A made-up consult is no different from another clinic's.
    assert (
        await refused(socket_url(net.server.url, str(uuid.uuid4())), net.token("specialist")) == 403
    )
    # The refusals are on the audit trail, as the person refused.
    events = net.system.get(
        "/AuditEvent", params={"entity": f"ServiceRequest/{cid}", "_count": "100"}
    )
    outcomes = [e["resource"].get("outcomeDesc", "") for e in events.json().get("entry", [])]
    assert any("not-a-participant" in o or "403" in o for o in outcomes)


async def test_two_python_clients_call_through_the_app_and_the_consult_starts(
    consult_network: ConsultNetwork,
) -> None:
    net = consult_network
    cid = await asyncio.to_thread(accepted_consult, net)
    async with client(net, net.server.url, cid, "village-doctor") as village:
        async with client(net, net.server.url, cid, "specialist") as specialist:
            await village.wait_for(lambda c: sees(c, specialist), DEADLINE)
            await specialist.wait_for(lambda c: sees(c, village), DEADLINE)
            assert specialist.participant is not None and village.participant is not None
            assert specialist.participant.id == "specialist"
            assert village.received("specialist", "video").picture_of == "specialist"
            # The specialist's joining started the consult: its Encounter is open.
            state = await asyncio.to_thread(net.consult, "village-doctor", cid)
            assert state.json()["state"] == "in-progress" and state.json()["encounter"]
        # His leaving is seen.
        await village.wait_for(lambda c: "specialist" not in c.present, DEADLINE)


async def test_the_requester_sees_the_state_change_live(consult_network: ConsultNetwork) -> None:
    net = consult_network
    consult = await asyncio.to_thread(net.request_consult, net.fresh_patient())
    url = socket_url(net.server.url, consult["id"], "events")
    headers = {"Authorization": f"Bearer {net.token('village-doctor')}"}
    async with connect(url, additional_headers=headers) as events:
        first = orjson.loads(await asyncio.wait_for(events.recv(), DEADLINE))
        assert first["consult"]["state"] == "requested"
        accepted = await asyncio.to_thread(net.act, "specialist", consult["id"], "accept")
        assert accepted.status_code == 200
        change = orjson.loads(await asyncio.wait_for(events.recv(), DEADLINE))
        assert change["events"] == ["accepted"]
        assert change["consult"]["state"] == "accepted"
        assert change["consult"]["owner"]["reference"].startswith("Practitioner/")


async def test_the_join_command_against_the_app(consult_network: ConsultNetwork) -> None:
    net = consult_network
    cid = await asyncio.to_thread(accepted_consult, net)
    async with client(net, net.server.url, cid, "specialist") as specialist:
        command = asyncio.create_task(
            health(
                "consult",
                "join",
                cid,
                "--token",
                net.token("village-doctor"),
                "--server",
                net.server.url,
                "--duration",
                "4",
            )
        )
        await specialist.wait_for(
            lambda c: c.received("village-doctor", "video").frames >= 10, DEADLINE
        )
        code, out, err = await asyncio.wait_for(command, DEADLINE * 2)
    assert code == 0, err[-2000:]
    summary = json.loads(out)
    assert summary["participant"]["id"] == "village-doctor"
    received = {(t["participantId"], t["kind"]): t for t in summary["tracks"]}
    assert received[("specialist", "video")]["frames"] > 0
    assert received[("specialist", "audio")]["frames"] > 0
    # And with somebody else's consult, the command says it could not join.
    code, out, _ = await health(
        "consult",
        "join",
        cid,
        "--token",
        net.token("hostile"),
        "--server",
        net.server.url,
        "--duration",
        "1",
    )
    assert code == 1 and "could not join" in json.loads(out)["errors"][0]["message"]


async def test_two_workers_behind_redis_carry_one_call(
    two_workers: tuple[ConsultNetwork, AppServer],
) -> None:
    net, second = two_workers
    cid = await asyncio.to_thread(accepted_consult, net)
    # The village doctor's socket lands on the first worker, the specialist's on the second.
    async with client(net, net.server.url, cid, "village-doctor") as village:
        async with client(net, second.url, cid, "specialist") as specialist:
            await village.wait_for(lambda c: sees(c, specialist), DEADLINE)
            await specialist.wait_for(lambda c: sees(c, village), DEADLINE)
            assert specialist.received("village-doctor", "video").picture_of == "village-doctor"
        await village.wait_for(lambda c: "specialist" not in c.present, DEADLINE)
    # The state the second worker wrote is the one the first serves.
    assert (await asyncio.to_thread(net.consult, "village-doctor", cid)).json()["state"] == (
        "in-progress"
    )
