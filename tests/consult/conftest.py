"""Consult signalling workers for tests: real WebSockets on loopback, a real bus, real hubs.

The authenticated ``/consult/{id}/ws`` route belongs to the app; here a small Starlette app
stands in for it, taking the participant's identity from a token the test hands out, and
runs the real :class:`~consult.signalling.SignallingSession` under uvicorn. Each
:class:`SignallingWorker` is one "worker process": its own bus connection, its own
:class:`~consult.rooms.ConsultRooms` and media hub, its own port.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from consult.client import ConsultClient
from consult.protocol import Participant
from consult.rooms import ConsultRooms
from consult.signalling import REPLY_SECONDS, SignallingSession
from health.core.bus import InProcessBus, MessageBus, RedisBus
from health.core.settings import Settings
from tests.conftest import BACKENDS
from tests.consult.network import (
    ConsultNetwork,
    consult_receiver,
    make_network,
    make_two_workers,
)
from tests.receivers import Receiver
from tests.services import (
    PROJECT_ROOT,
    AppServer,
    PostgresServer,
    RedisServer,
    free_port,
    signal_group,
)

__all__ = ["consult_receiver"]

DEADLINE = 30.0
VILLAGE_DOCTOR = Participant("pract-village-1", "马秀兰", "village-doctor")
SPECIALIST = Participant("pract-specialist-1", "王建国", "specialist")
TOWNSHIP_DOCTOR = Participant("pract-township-1", "李娟", "township-doctor")
INTERPRETER = Participant("related-interpreter-1", "海燕", "interpreter")
PATIENT = Participant("patient-1", "杨德福", "patient")
TOKENS = {
    f"token-{p.id}": p for p in (VILLAGE_DOCTOR, SPECIALIST, TOWNSHIP_DOCTOR, INTERPRETER, PATIENT)
}


def token_of(participant: Participant) -> str:
    return f"token-{participant.id}"


def signalling_app(rooms: ConsultRooms, *, reply_seconds: float = REPLY_SECONDS) -> Starlette:
    async def consult_socket(websocket: WebSocket) -> None:
        token = websocket.headers.get("authorization", "").removeprefix("Bearer ")
        participant = TOKENS.get(token)
        if participant is None:
            await websocket.close(code=4401)
            return
        await websocket.accept()
        await SignallingSession(
            consult_id=websocket.path_params["consult_id"],
            participant=participant,
            socket=websocket,
            rooms=rooms,
            reply_seconds=reply_seconds,
        ).run()

    return Starlette(routes=[WebSocketRoute("/consult/{consult_id}/ws", consult_socket)])


class SignallingWorker:
    """One worker: a bus connection, its rooms and hub, and a uvicorn server on loopback."""

    def __init__(
        self,
        bus: MessageBus,
        *,
        settings: Settings | None = None,
        reply_seconds: float = REPLY_SECONDS,
        **options: Any,
    ):
        self.bus = bus
        self.reply_seconds = reply_seconds
        self.rooms = ConsultRooms(bus=bus, settings=settings or Settings(), **options)
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> SignallingWorker:
        await self.rooms.start()
        config = uvicorn.Config(
            signalling_app(self.rooms, reply_seconds=self.reply_seconds),
            host="127.0.0.1",
            port=self.port,
            lifespan="off",
            log_level="warning",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return self

    def url(self, consult_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/consult/{consult_id}/ws"

    def client(self, consult_id: str, participant: Participant, **options: Any) -> ConsultClient:
        options.setdefault("width", 320)
        options.setdefault("height", 240)
        return ConsultClient(self.url(consult_id), token=token_of(participant), **options)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self._stop_server()
        await self.rooms.close()
        await self.bus.close()

    async def _stop_server(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


@pytest.fixture
async def worker() -> AsyncIterator[SignallingWorker]:
    """One worker on the in-process bus: the embedded, single-process set-up."""
    instance = await SignallingWorker(InProcessBus()).start()
    yield instance
    await instance.stop()


@pytest.fixture
async def redis_workers(redis_server: Any) -> AsyncIterator[Callable[..., Any]]:
    """Makes workers that share a real Redis, each with its own connection."""
    started: list[SignallingWorker] = []

    async def make(**options: Any) -> SignallingWorker:
        instance = await SignallingWorker(RedisBus(redis_server.url), **options).start()
        started.append(instance)
        return instance

    yield make
    for instance in started:
        await instance.stop()


def decoder_threads() -> int:
    """Threads aiortc's receivers run in this process (one per live receiving track)."""
    return sum(1 for t in threading.enumerate() if t.name.endswith("-decoder"))


async def eventually(check: Callable[[], bool], what: str, within: float = DEADLINE) -> None:
    """Wait for something that has no event of its own to wait on, up to a deadline."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not so after {within:.0f} s")
        await asyncio.sleep(0.02)


class WorkerProcess:
    """A worker in a subprocess (``tests/consult/worker_process.py``), to be killed."""

    def __init__(self, redis_url: str, *, lease_seconds: float) -> None:
        self.port = free_port()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.consult.worker_process",
                redis_url,
                str(self.port),
                str(lease_seconds),
            ],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )

    async def ready(self) -> WorkerProcess:
        assert self._process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self._process.stdout.readline), DEADLINE)
        assert line.strip() == b"ready", line
        # "ready" comes from the app's start-up, a moment before uvicorn listens.
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                assert asyncio.get_running_loop().time() < deadline, "the worker never listened"
                await asyncio.sleep(0.05)
            else:
                writer.close()
                return self

    def url(self, consult_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/consult/{consult_id}/ws"

    def client(self, consult_id: str, participant: Participant, **options: Any) -> ConsultClient:
        options.setdefault("width", 320)
        options.setdefault("height", 240)
        return ConsultClient(self.url(consult_id), token=token_of(participant), **options)

    def kill(self) -> None:
        """``kill -9``: no shutdown, no lease released."""
        signal_group(self._process, signal.SIGKILL)
        self._process.wait(timeout=30)


@pytest.fixture(scope="session", params=BACKENDS)
def consult_network(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    consult_receiver: Receiver,
) -> Iterator[ConsultNetwork]:
    """The consult network (``tests.consult.network``) on SQLite and on PostgreSQL."""
    network = make_network(request, tmp_path_factory, request.param, consult_receiver)
    try:
        yield network
    finally:
        network.system.close()
        network.server.stop()


@pytest.fixture(scope="session")
def two_workers(
    request: pytest.FixtureRequest,
    postgres: PostgresServer,
    redis_server: RedisServer,
    consult_receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ConsultNetwork, AppServer]]:
    """Two ``health serve`` processes on one PostgreSQL database and one Redis: what
    ``--workers 2`` behind a load balancer amounts to."""
    net, second = make_two_workers(request, tmp_path_factory, redis_server, consult_receiver)
    try:
        yield net, second
    finally:
        net.system.close()
        second.stop()
        net.server.stop()


@pytest.fixture(scope="session")
def on_record(consult_network: ConsultNetwork) -> Any:
    """Consults on record: the consult network's consults, opened through the workflow,
    whose calls (through the app's own authenticated signalling) keep to its record."""
    from tests.consult.on_record import ConsultsOnRecord

    return ConsultsOnRecord(consult_network)
