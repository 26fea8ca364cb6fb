"""A village clinic's link, emulated in user space: delay, jitter, loss, rate, and cuts.

``tc netem`` does not exist on these machines, so the link between the village participant
and the hub is a program: :class:`ImpairedLink` is two directions (:class:`Pipe`), each a
queue drained at the link's rate (packets that would wait longer than ``queue_ms`` are
dropped, as a router's buffer overflows), random loss, and a propagation delay with jitter
(order kept, as on one path). Everything the village sends and receives crosses it:

- the media through :class:`TurnRelay`, a TURN server (RFC 8656: Allocate with long-term
  credentials, Refresh, CreatePermission, ChannelBind, Send and Data indications,
  ChannelData) whose leg to the participant is the impaired link — as in production, where
  village clinics behind NAT reach the hub through coturn. The participant's client is
  told to use only relayed candidates, so no packet of its call goes around the link;
- its signalling WebSocket through :class:`TcpProxy`, over the same link (TCP does not lose
  data: a "lost" segment arrives a retransmission later, holding up what follows).

:meth:`ImpairedLink.cut` is the village router losing its uplink and redialling: nothing
passes, the TCP connections through it are reset, the TURN allocations are forgotten (the
clinic comes back from a new address) and new connections wait until :meth:`restore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aioice import stun

logger = logging.getLogger(__name__)

RELAY_HOST = "127.0.0.1"
REALM = "village-link"
LIFETIME = 600


@dataclass(frozen=True)
class Impairment:
    """One direction of a link. Zero means none of that impairment."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_kbps: float = 0.0
    #: The most a packet may wait in the queue before the link drops it.
    queue_ms: float = 300.0


@dataclass
class PipeCounts:
    sent: int = 0
    lost: int = 0
    queue_dropped: int = 0
    cut_dropped: int = 0
    delivered_bytes: int = 0


@dataclass
class Pipe:
    """One direction of the link."""

    name: str
    impairment: Impairment = field(default_factory=Impairment)
    counts: PipeCounts = field(default_factory=PipeCounts)
    cut: bool = False
    _busy_until: float = 0.0
    _last_arrival: float = 0.0

    def send(self, size: int, deliver: Callable[[], None], *, reliable: bool = False) -> bool:
        """Carry ``size`` bytes; ``deliver`` runs when they arrive. Whether they will."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.counts.sent += 1
        if self.cut:
            self.counts.cut_dropped += 1
            return False
        imp = self.impairment
        extra = 0.0
        if imp.loss and random.random() < imp.loss:
            if not reliable:
                self.counts.lost += 1
                return False
            # TCP: the segment comes again after a retransmission timeout.
            extra = 2 * imp.delay_ms / 1000 + 0.2
        departure = now
        if imp.rate_kbps:
            start = max(now, self._busy_until)
            if not reliable and start - now > imp.queue_ms / 1000:
                self.counts.queue_dropped += 1
                return False
            self._busy_until = start + size * 8 / (imp.rate_kbps * 1000)
            departure = self._busy_until
        arrival = departure + (imp.delay_ms + random.uniform(0, imp.jitter_ms)) / 1000 + extra
        arrival = max(arrival, self._last_arrival)
        self._last_arrival = arrival

        def arrive() -> None:
            self.counts.delivered_bytes += size
            deliver()

        loop.call_at(arrival, arrive)
        return True


class ImpairedLink:
    """The village's link: ``up`` (village → hub) and ``down`` (hub → village)."""

    def __init__(self) -> None:
        self.up = Pipe("up")
        self.down = Pipe("down")
        self._on_cut: list[Callable[[], None]] = []
        self._restored = asyncio.Event()
        self._restored.set()

    def set(self, impairment: Impairment) -> None:
        """The same impairment both ways."""
        self.up.impairment = impairment
        self.down.impairment = replace(impairment)

    def clear(self) -> None:
        self.set(Impairment())

    @property
    def is_cut(self) -> bool:
        return self.up.cut

    def cut(self) -> None:
        self.up.cut = self.down.cut = True
        self._restored.clear()
        for callback in list(self._on_cut):
            callback()

    def restore(self) -> None:
        self.up.cut = self.down.cut = False
        self._restored.set()

    async def wait_restored(self) -> None:
        await self._restored.wait()

    def on_cut(self, callback: Callable[[], None]) -> None:
        self._on_cut.append(callback)


# The TURN relay.


def _integrity_key(username: str, password: str) -> bytes:
    return hashlib.md5(f"{username}:{REALM}:{password}".encode()).digest()


class _PeerSide(asyncio.DatagramProtocol):
    """An allocation's relayed address: what the hub sends to the village arrives here."""

    def __init__(self, relay: TurnRelay) -> None:
        self.relay = relay
        self.allocation: _Allocation | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.allocation is not None:
            self.relay.from_peer(self.allocation, data, addr)


@dataclass
class _Allocation:
    client: tuple[str, int]
    transport: asyncio.DatagramTransport
    relayed: tuple[str, int]
    channels: dict[int, tuple[str, int]] = field(default_factory=dict)
    peers: dict[tuple[str, int], int] = field(default_factory=dict)
    permissions: set[str] = field(default_factory=set)


class _ClientSide(asyncio.DatagramProtocol):
    def __init__(self, relay: TurnRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # Up the village link first, then to the relay.
        self.relay.link.up.send(len(data), lambda: self.relay.from_client(data, addr))


class TurnRelay:
    """A TURN server whose clients sit at the far end of ``link``."""

    def __init__(
        self, link: ImpairedLink, *, username: str = "village", password: str = ""
    ) -> None:
        self.link = link
        self.username = username
        self.password = password or "village-link-secret"
        self._key = _integrity_key(self.username, self.password)
        self._transport: asyncio.DatagramTransport | None = None
        self._allocations: dict[tuple[str, int], _Allocation] = {}
        self._allocating: dict[tuple[str, int], asyncio.Future[_Allocation]] = {}
        self._nonce = b"nonce-0"
        self.port = 0
        link.on_cut(self._forget)

    async def start(self) -> TurnRelay:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ClientSide(self), local_addr=(RELAY_HOST, 0)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    @property
    def url(self) -> str:
        return f"turn:{RELAY_HOST}:{self.port}?transport=udp"

    async def close(self) -> None:
        self._forget()
        if self._transport is not None:
            self._transport.close()

    def _forget(self) -> None:
        """The clinic's router redialled: it comes back from elsewhere, allocations lost."""
        for allocation in self._allocations.values():
            allocation.transport.close()
        self._allocations.clear()
        self._nonce = f"nonce-{random.getrandbits(32)}".encode()

    def _to_client(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self._transport
        if transport is not None:
            self.link.down.send(len(data), lambda: transport.sendto(data, addr))

    # From the village.

    def from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 4 and 0x40 <= data[0] <= 0x4F:
            channel, length = struct.unpack("!HH", data[:4])
            allocation = self._allocations.get(addr)
            peer = allocation.channels.get(channel) if allocation else None
            if allocation is not None and peer is not None:
                allocation.transport.sendto(data[4 : 4 + length], peer)
            return
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        asyncio.get_running_loop().create_task(self._request(message, addr))

    async def _request(self, message: stun.Message, addr: tuple[str, int]) -> None:
        method, klass = message.message_method, message.message_class
        if klass == stun.Class.INDICATION and method == stun.Method.SEND:
            allocation = self._allocations.get(addr)
            peer = message.attributes.get("XOR-PEER-ADDRESS")
            if allocation is not None and peer is not None and "DATA" in message.attributes:
                allocation.permissions.add(peer[0])
                allocation.transport.sendto(message.attributes["DATA"], peer)
            return
        if klass != stun.Class.REQUEST:
            return
        if (
            "MESSAGE-INTEGRITY" not in message.attributes
            or not message.check_message_integrity(self._key)
            or message.attributes.get("NONCE") != self._nonce
        ):
            self._error(message, addr, 401, "Unauthorized")
            return
        allocation = self._allocations.get(addr)
        response = stun.Message(
            message_method=method,
            message_class=stun.Class.RESPONSE,
            transaction_id=message.transaction_id,
        )
        if method == stun.Method.ALLOCATE:
            if allocation is None:
                allocation = await self._allocate(addr)
            response.attributes["XOR-RELAYED-ADDRESS"] = allocation.relayed
            response.attributes["XOR-MAPPED-ADDRESS"] = addr
            response.attributes["LIFETIME"] = LIFETIME
        elif allocation is None:
            self._error(message, addr, 437, "Allocation Mismatch")
            return
        elif method == stun.Method.REFRESH:
            lifetime = message.attributes.get("LIFETIME", LIFETIME)
            response.attributes["LIFETIME"] = lifetime
            if lifetime == 0:
                allocation.transport.close()
                self._allocations.pop(addr, None)
        elif method == stun.Method.CREATE_PERMISSION:
            peer = message.attributes.get("XOR-PEER-ADDRESS")
            if peer is not None:
                allocation.permissions.add(peer[0])
        elif method == stun.Method.CHANNEL_BIND:
            channel = message.attributes.get("CHANNEL-NUMBER")
            peer = message.attributes.get("XOR-PEER-ADDRESS")
            if channel is None or peer is None:
                self._error(message, addr, 400, "Bad Request")
                return
            allocation.channels[channel] = peer
            allocation.peers[peer] = channel
            allocation.permissions.add(peer[0])
        else:
            self._error(message, addr, 400, "Bad Request")
            return
        response.add_message_integrity(self._key)
        self._to_client(bytes(response), addr)

    async def _allocate(self, client: tuple[str, int]) -> _Allocation:
        pending = self._allocating.get(client)
        if pending is None:
            pending = self._allocating[client] = asyncio.ensure_future(self._new_allocation(client))
        try:
            return await pending
        finally:
            self._allocating.pop(client, None)

    async def _new_allocation(self, client: tuple[str, int]) -> _Allocation:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _PeerSide(self), local_addr=(RELAY_HOST, 0)
        )
        allocation = _Allocation(
            client=client, transport=transport, relayed=transport.get_extra_info("sockname")[:2]
        )
        protocol.allocation = allocation
        self._allocations[client] = allocation
        return allocation

    def _error(self, message: stun.Message, addr: tuple[str, int], code: int, reason: str) -> None:
        response = stun.Message(
            message_method=message.message_method,
            message_class=stun.Class.ERROR,
            transaction_id=message.transaction_id,
        )
        response.attributes["ERROR-CODE"] = (code, reason)
        response.attributes["REALM"] = REALM
        response.attributes["NONCE"] = self._nonce
        self._to_client(bytes(response), addr)

    # From the hub.

    def from_peer(self, allocation: _Allocation, data: bytes, peer: tuple[str, int]) -> None:
        if self._allocations.get(allocation.client) is not allocation:
            return
        if peer[0] not in allocation.permissions:
            return
        channel = allocation.peers.get(peer)
        if channel is not None:
            packet = struct.pack("!HH", channel, len(data)) + data
        else:
            indication = stun.Message(
                message_method=stun.Method.DATA, message_class=stun.Class.INDICATION
            )
            indication.attributes["XOR-PEER-ADDRESS"] = peer
            indication.attributes["DATA"] = data
            packet = bytes(indication)
        self._to_client(packet, allocation.client)


# The signalling WebSocket's TCP connections.


class TcpProxy:
    """Forwards TCP connections from the village to ``target`` over the impaired link."""

    def __init__(self, link: ImpairedLink, target: tuple[str, int]) -> None:
        self.link = link
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        link.on_cut(self._reset_all)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, RELAY_HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str) -> str:
        return f"ws://{RELAY_HOST}:{self.port}{path}"

    async def close(self) -> None:
        self._reset_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._connections):
            task.cancel()

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()  # a reset, as the redialled router forgot the flow
        self._writers.clear()

    async def _serve(self, village_reader: asyncio.StreamReader, village_writer: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self.link.wait_restored()  # a connection made during a cut waits for it
            try:
                hub_reader, hub_writer = await asyncio.open_connection(*self.target)
            except OSError:
                village_writer.close()
                return
            self._writers.update((village_writer, hub_writer))
            await asyncio.gather(
                self._pump(village_reader, hub_writer, self.link.up),
                self._pump(hub_reader, village_writer, self.link.down),
                return_exceptions=True,
            )
        finally:
            self._connections.discard(task)
            for writer in (village_writer,):
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipe: Pipe
    ) -> None:
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                pipe.send(len(data), lambda d=data: _write(writer, d), reliable=True)  # type: ignore[misc]
        finally:

            def close() -> None:
                with contextlib.suppress(Exception):
                    writer.close()

            pipe.send(0, close, reliable=True)


def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        writer.write(data)
