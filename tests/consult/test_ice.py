"""ICE servers from the settings: none by default, TURN credentials made per participant."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac

import orjson
import pytest
from websockets.asyncio.client import connect

from consult.ice import hub_configuration, participant_ice_servers, peer_configuration
from health.core.bus import InProcessBus
from health.core.settings import IceServer, Settings
from tests.consult.conftest import DEADLINE, SPECIALIST, SignallingWorker, token_of

COTURN = IceServer(urls=["stun:turn.example.cn:3478", "turn:turn.example.cn:3478?transport=udp"])


def test_without_servers_peers_get_none_and_aiortc_no_default() -> None:
    settings = Settings()
    assert settings.ice_servers == []
    assert peer_configuration(participant_ice_servers(settings, "p-1")).iceServers == []
    assert hub_configuration(settings).iceServers == []


def test_turn_credentials_are_made_per_participant_as_coturn_checks_them() -> None:
    settings = Settings(ice_servers=[COTURN], turn_secret="s3cret", turn_credential_seconds=600)
    (server,) = participant_ice_servers(settings, "pract-village-1", now=1_000_000)
    assert server.username == "1000600:pract-village-1"
    expected = hmac.new(b"s3cret", server.username.encode(), hashlib.sha1).digest()
    assert server.credential == base64.b64encode(expected).decode()
    # The hub keeps to STUN: it needs no relay of its own.
    (hub_server,) = hub_configuration(settings).iceServers or []
    assert hub_server.urls == ["stun:turn.example.cn:3478"]


def test_static_credentials_and_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "HEALTH_ICE_SERVERS",
        '[{"urls": "turn:10.64.0.2:3478", "username": "clinic", "credential": "pw"}]',
    )
    settings = Settings()
    (server,) = participant_ice_servers(settings, "p-1")
    assert (server.urls, server.username, server.credential) == (
        ["turn:10.64.0.2:3478"],
        "clinic",
        "pw",
    )


async def test_participants_are_given_the_servers_when_they_join() -> None:
    settings = Settings(ice_servers=[COTURN], turn_secret="s3cret")
    worker = await SignallingWorker(InProcessBus(), settings=settings).start()
    try:
        async with connect(
            worker.url("consult-ice"),
            additional_headers={"Authorization": f"Bearer {token_of(SPECIALIST)}"},
        ) as socket:
            await socket.send('{"type": "join"}')
            joined = orjson.loads(await asyncio.wait_for(socket.recv(decode=True), DEADLINE))
            (server,) = joined["iceServers"]
            assert server["urls"] == COTURN.urls
            assert server["username"].endswith(f":{SPECIALIST.id}") and server["credential"]
    finally:
        await worker.stop()
