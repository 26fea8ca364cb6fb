"""Consult media through the hub: CPU per forwarded stream, frames lost, time to first frame.

Rooms of Python participants (``consult.client``, each sending 640×480 VP8 and a tone) join
one after another; the hub runs in its own process, so its CPU time is its own. Measured
twice in the same run: through the hub, which forwards encoded frames, and through aiortc's
stock way, which decodes each participant's track once and hands the frames by ``MediaRelay``
to a sender per viewer that encodes them again.

- CPU per forwarded stream: the hub process's CPU time over a steady window, divided by the
  window and by the video streams it forwards (each with its sound), as % of one core.
- Frames lost: frames the senders made in the window that viewers did not decode.
- Join → first remote frame: from a participant's ``join`` to its first decoded frame of
  someone who was already streaming (the hub asks the sender for a keyframe).

Recording, measured the same way: the hub forwarding and recording every participant of
every room, once with ``consult.recording`` (the received packets muxed into WebM in a
thread, nothing decoded) and once with aiortc's stock ``MediaRecorder`` (each track decoded
and encoded again into WebM, as aiortc records); the cost of recording is the hub's CPU
beyond forwarding alone, per participant recorded (their audio and video).

And, where Debian's ``janus`` runs, the same participants through Janus's VideoRoom (over
its HTTP API: each participant publishes on one peer connection and subscribes to every
other's feed on a second), the Janus process's CPU time per forwarded stream, as the C SFU
beside ours. Its first-frame time counts from the subscription, not from a join.

    .venv/bin/python bench/consult_relay.py [--rooms 2] [--participants 3] [--seconds 20]
        [--skip stock,record,mediarecorder,janus]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

import av  # noqa: E402
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from aiortc import (  # noqa: E402
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.codecs import get_decoder  # noqa: E402
from aiortc.contrib.media import MediaRecorder, MediaRelay  # noqa: E402
from aiortc.jitterbuffer import JitterFrame  # noqa: E402
from aiortc.mediastreams import MediaStreamError  # noqa: E402
from aiortc.rtcrtpparameters import RTCRtpCodecParameters  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route, WebSocketRoute  # noqa: E402
from starlette.websockets import WebSocket  # noqa: E402

from consult.call_records import Recording  # noqa: E402
from consult.client import ConsultClient  # noqa: E402
from consult.hub import MediaHub, Negotiated, Peer, Slot  # noqa: E402
from consult.protocol import Participant  # noqa: E402
from consult.recording import CallRecorder  # noqa: E402
from consult.rooms import ConsultRooms  # noqa: E402
from consult.signalling import SignallingSession  # noqa: E402
from consult.sources import TestPatternTrack, ToneTrack  # noqa: E402
from consult.tracks import EncodedSource, ForwardedTrack  # noqa: E402
from health.core.bus import InProcessBus  # noqa: E402
from health.core.clock import utcnow  # noqa: E402
from health.core.settings import Settings  # noqa: E402
from tests.services import free_port  # noqa: E402


class DecodedSource(EncodedSource):
    """A participant's track left to aiortc, which decodes it; MediaRelay reads it."""

    def __init__(self, track: MediaStreamTrack, receiver: RTCRtpReceiver, *, name: str) -> None:
        super().__init__(track, receiver, media_ssrc=None, name=name)
        self.track = track

    def start(self) -> None:
        pass

    async def close(self) -> None:
        self.track.stop()


class StockRelayHub(MediaHub):
    """The baseline: aiortc's stock relay, decoding once and encoding for every viewer."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._relay = MediaRelay()

    def _make_slot(self, transceiver: RTCRtpTransceiver, kind: str) -> Slot:
        return Slot(transceiver=transceiver, track=ForwardedTrack(kind))

    def _make_source(
        self,
        track: MediaStreamTrack,
        receiver: RTCRtpReceiver,
        *,
        media_ssrc: int | None,
        name: str,
    ) -> EncodedSource:
        return DecodedSource(track, receiver, name=name)

    def _connect(self, slot: Slot, source: EncodedSource) -> None:
        assert isinstance(source, DecodedSource)
        slot.transceiver.sender.replaceTrack(self._relay.subscribe(source.track, buffered=False))

    def _disconnect(self, slot: Slot) -> None:
        slot.transceiver.sender.replaceTrack(None)


class RecordingHub(MediaHub):
    """The hub, recording every room with ``consult.recording`` (no decoding, a thread)."""

    def __init__(self, folder: Path, **options: Any) -> None:
        super().__init__(**options)
        self._folder = folder
        self._recorders: dict[str, CallRecorder] = {}

    async def negotiate(
        self, room_id: str, participant_id: str, offer_sdp: str, **options: Any
    ) -> Negotiated:
        negotiated = await super().negotiate(room_id, participant_id, offer_sdp, **options)
        if room_id not in self._recorders:
            who = Participant(participant_id, participant_id, "bench")
            recording = Recording(recording_id=uuid.uuid4().hex, started=utcnow(), started_by=who)
            recorder = CallRecorder(
                consult_id=room_id,
                folder=self._folder / room_id,
                hub=self,
                recording=recording,
            )
            self._recorders[room_id] = recorder
            await recorder.prepare()
            recorder.tap()
        return negotiated

    async def close(self) -> None:
        for recorder in self._recorders.values():
            await recorder.stop()
        await super().close()


class DecodingTrack(MediaStreamTrack):
    """A source's frames decoded, as aiortc's own receiver would decode them (in a thread)."""

    def __init__(self, source: EncodedSource, codec: RTCRtpCodecParameters) -> None:
        super().__init__()
        self.kind = source.kind
        self._decoder = get_decoder(codec)
        self._packets: asyncio.Queue[av.Packet] = asyncio.Queue(maxsize=100)
        self._frames: list[Any] = []
        self._source = source
        source.attach(self)
        source.request_keyframe()

    def offer(self, packet: av.Packet) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._packets.put_nowait(packet)

    def detach(self) -> None:
        self._source.detach(self)

    async def recv(self) -> Any:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            packet = await self._packets.get()
            frame = JitterFrame(bytes(packet), packet.pts or 0)
            try:
                self._frames = await asyncio.to_thread(self._decoder.decode, frame)
            except av.FFmpegError:
                self._frames = []
        return self._frames.pop(0)


#: The codecs the benchmark's participants send, for decoding them as aiortc would.
DECODER_CODECS = {
    "audio": RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=96
    ),
    "video": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=97),
}


class MediaRecorderHub(MediaHub):
    """The hub, recording every participant with aiortc's MediaRecorder (decode, encode)."""

    def __init__(self, folder: Path, **options: Any) -> None:
        super().__init__(**options)
        self._folder = folder
        self._pending: dict[str, dict[str, DecodingTrack]] = {}
        self._recorders: list[MediaRecorder] = []

    async def negotiate(
        self, room_id: str, participant_id: str, offer_sdp: str, **options: Any
    ) -> Negotiated:
        negotiated = await super().negotiate(room_id, participant_id, offer_sdp, **options)
        room = self.rooms[room_id]
        if self not in room.taps:  # type: ignore[comparison-overlap]
            self.add_tap(room_id, self)  # type: ignore[arg-type]
        return negotiated

    def source_added(self, peer: Peer, source: EncodedSource) -> None:
        tracks = self._pending.setdefault(peer.participant_id, {})
        tracks[source.kind] = DecodingTrack(source, DECODER_CODECS[source.kind])
        if len(tracks) == 2:
            self._folder.mkdir(parents=True, exist_ok=True)
            recorder = MediaRecorder(str(self._folder / f"{peer.participant_id}.webm"))
            for track in tracks.values():
                recorder.addTrack(track)
            self._recorders.append(recorder)
            asyncio.get_running_loop().create_task(recorder.start())

    async def close(self) -> None:
        for recorder in self._recorders:
            with contextlib.suppress(Exception):
                await recorder.stop()
        await super().close()


def serve_hub(mode: str, port: int) -> None:
    """The hub process: signalling and media for any participant (the token is the id)."""
    bus = InProcessBus()
    folder = Path(tempfile.mkdtemp(prefix="consult-bench-"))
    hub: MediaHub
    if mode == "stock":
        hub = StockRelayHub()
    elif mode == "record":
        hub = RecordingHub(folder)
    elif mode == "mediarecorder":
        hub = MediaRecorderHub(folder)
    else:
        hub = MediaHub()
    rooms = ConsultRooms(bus=bus, settings=Settings(), hub=hub)

    async def consult_socket(websocket: WebSocket) -> None:
        token = websocket.headers.get("authorization", "").removeprefix("Bearer ")
        await websocket.accept()
        await SignallingSession(
            consult_id=websocket.path_params["consult_id"],
            participant=Participant(token, token, "bench"),
            socket=websocket,
            rooms=rooms,
        ).run()

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"cpu": time.process_time(), "hub": rooms.hub.stats()})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await rooms.start()
        yield
        await rooms.close()
        shutil.rmtree(folder, ignore_errors=True)

    app = Starlette(
        routes=[
            WebSocketRoute("/consult/{consult_id}/ws", consult_socket),
            Route("/stats", stats),
        ],
        lifespan=lifespan,
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def sees_all(client: ConsultClient, *, ids: list[str]) -> bool:
    """Whether the client has decoded video from each of these participants."""
    return all(client.received(pid, "video").frames for pid in ids)


async def until_serving(port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            await asyncio.to_thread(hub_stats, port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def hub_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30) as response:
        return json.loads(response.read())


async def measure(mode: str, rooms: int, participants: int, seconds: float) -> dict[str, Any]:
    port = free_port()
    hub = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-hub", mode, str(port), cwd=PROJECT_ROOT
    )
    clients: list[list[ConsultClient]] = []
    try:
        await until_serving(port)
        first_frames: list[float] = []
        late_frames: list[float] = []
        for room in range(rooms):
            members: list[ConsultClient] = []
            for n in range(participants):
                client = ConsultClient(
                    f"ws://127.0.0.1:{port}/consult/bench-{room}/ws",
                    token=f"room{room}-participant{n}",
                )
                await client.join()
                earlier = [m.participant.id for m in members if m.participant]
                await client.wait_for(partial(sees_all, ids=earlier), 60)
                assert client.joined_at is not None
                waits = [
                    client.received(p, "video").first_frame_at - client.joined_at  # type: ignore[operator]
                    for p in earlier
                ]
                first_frames += waits
                if n == participants - 1 and n >= 2:
                    # The last to join a room where the others have streamed for a while: its
                    # first picture of each comes from the keyframe the hub asked for.
                    late_frames += waits
                members.append(client)
            clients.append(members)
        everyone = [c for members in clients for c in members]
        for members in clients:
            for viewer in members:
                others = [o.participant.id for o in members if o is not viewer and o.participant]
                await viewer.wait_for(partial(sees_all, ids=others), 60)
        pairs = [(v, p) for members in clients for v in members for p in members if v is not p]

        def counts() -> tuple[dict[int, int], dict[tuple[int, int], int]]:
            made = {id(c): c.video_frames_sent for c in everyone}
            decoded = {
                (id(v), id(p)): v.received(p.participant.id, "video").frames  # type: ignore[union-attr]
                for v, p in pairs
            }
            return made, decoded

        before = await asyncio.to_thread(hub_stats, port)
        made0, decoded0 = counts()
        start = time.monotonic()
        await asyncio.sleep(seconds)
        made1, decoded1 = counts()
        wall = time.monotonic() - start
        after = await asyncio.to_thread(hub_stats, port)
        expected = sum(made1[id(p)] - made0[id(p)] for _, p in pairs)
        got = sum(decoded1[k] - decoded0[k] for k in decoded1)
        cpu = after["cpu"] - before["cpu"]
        streams = len(pairs)
        return {
            "mode": mode,
            "streams": streams,
            "hub_cpu_percent": 100 * cpu / wall,
            "per_stream_percent": 100 * cpu / wall / streams,
            "frames_expected": expected,
            "frames_lost": max(0, expected - got),
            # What the CPU would be per stream had every frame been delivered (a relay that
            # cannot keep up spends less than the work it was given).
            "per_delivered_stream_percent": 100 * cpu / wall / streams * expected / max(1, got),
            "first_frame_median": statistics.median(first_frames),
            "first_frame_max": max(first_frames),
            "late_joiner_median": statistics.median(late_frames) if late_frames else None,
            "late_joiner_max": max(late_frames) if late_frames else None,
        }
    finally:
        for members in clients:
            for client in members:
                with contextlib.suppress(Exception):
                    await client.leave()
        hub.terminate()
        try:
            await asyncio.wait_for(hub.wait(), 30)
        except TimeoutError:
            hub.kill()
            await hub.wait()


def report(result: dict[str, Any]) -> None:
    lost = 100 * result["frames_lost"] / max(1, result["frames_expected"])
    print(
        f"{result['mode']:>11}: {result['streams']} forwarded 640x480 VP8 streams, "
        f"server {result['hub_cpu_percent']:.1f}% of a core, "
        f"{result['per_stream_percent']:.2f}% per stream "
        f"({result['per_delivered_stream_percent']:.2f}% per stream of frames delivered); "
        f"frames lost {result['frames_lost']}/{result['frames_expected']} ({lost:.1f}%); "
        f"join -> first remote frame median {result['first_frame_median']:.2f} s, "
        f"max {result['first_frame_max']:.2f} s"
    )
    if result["late_joiner_median"] is not None:
        print(
            f"{'':>11}  late joiner (the last of a room, the others already streaming): "
            f"first picture of each after join median {result['late_joiner_median']:.2f} s, "
            f"max {result['late_joiner_max']:.2f} s"
            + (" (the hub relays its keyframe request)" if result["mode"] == "hub" else "")
        )


# -- Janus's VideoRoom, the same participants ----------------------------------------------

JANUS_PLUGINS = "/usr/lib/x86_64-linux-gnu/janus"
JANUS_CONFIG = """general: {{
    configs_folder = "{folder}"
    plugins_folder = "{lib}/plugins"
    transports_folder = "{lib}/transports"
    events_folder = "{lib}/events"
    loggers_folder = "{lib}/loggers"
    debug_level = 2
}}
media: {{ rtp_port_range = "30000-39999" }}
nat: {{ nice_debug = false, ice_ignore_list = "vmnet" }}
plugins: {{ disable = "{plugins}" }}
transports: {{ disable = "{transports}" }}
loggers: {{ disable = "libjanus_jsonlog.so" }}
events: {{ broadcast = false }}
"""
JANUS_HTTP = """general: {{ json = "plain", base_path = "/janus", http = true, port = {port},
    ip = "127.0.0.1", https = false }}
admin: {{ admin_http = false, admin_https = false }}
"""
JANUS_OTHER_PLUGINS = (
    "audiobridge duktape echotest lua nosip recordplay sip streaming textroom videocall voicemail"
)
JANUS_OTHER_TRANSPORTS = "mqtt nanomsg pfunix rabbitmq websockets"


def janus_available() -> bool:
    return shutil.which("janus") is not None and Path(JANUS_PLUGINS, "plugins").is_dir()


class JanusSession:
    """One Janus API session over HTTP, with its long poll for events."""

    def __init__(self, base: str) -> None:
        self.http = httpx.AsyncClient(base_url=base, timeout=60)
        self.id = 0
        self._events: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._poll: asyncio.Task[None] | None = None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(path, json={**body, "transaction": uuid.uuid4().hex})
        data: dict[str, Any] = response.json()
        if data.get("janus") == "error":
            raise RuntimeError(f"janus: {data['error']}")
        return data

    async def create(self) -> JanusSession:
        self.id = (await self._post("/janus", {"janus": "create"}))["data"]["id"]
        self._poll = asyncio.create_task(self._long_poll())
        return self

    async def _long_poll(self) -> None:
        while True:
            response = await self.http.get(f"/janus/{self.id}", params={"maxev": 10})
            found = response.json()
            for event in found if isinstance(found, list) else [found]:
                sender = event.get("sender")
                if sender is not None:
                    self._events.setdefault(sender, asyncio.Queue()).put_nowait(event)

    async def attach(self) -> int:
        data = await self._post(
            f"/janus/{self.id}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}
        )
        handle = int(data["data"]["id"])
        self._events.setdefault(handle, asyncio.Queue())
        return handle

    async def request(self, handle: int, body: dict[str, Any], jsep: Any = None) -> dict[str, Any]:
        """A plugin request; its answer (synchronous) or its first event (asynchronous)."""
        message: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = jsep
        data = await self._post(f"/janus/{self.id}/{handle}", message)
        if data.get("janus") == "success":
            return data
        while True:
            event = await asyncio.wait_for(self._events[handle].get(), 60)
            if event.get("janus") == "event":
                plugin = event.get("plugindata", {}).get("data", {})
                if "error" in plugin:
                    raise RuntimeError(f"janus videoroom: {plugin['error']}")
                return event

    async def until(self, handle: int, kind: str) -> None:
        """Wait for an event of this kind on the handle (``webrtcup``: its media is up)."""
        while (await asyncio.wait_for(self._events[handle].get(), 60)).get("janus") != kind:
            pass

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poll
        with contextlib.suppress(Exception):
            await self._post(f"/janus/{self.id}", {"janus": "destroy"})
        await self.http.aclose()


class FrameCounter:
    """Decodes a received track as any aiortc viewer does, counting its video frames."""

    def __init__(self, track: MediaStreamTrack, since: float) -> None:
        self.frames = 0
        self.first_frame_after: float | None = None
        self._since = since
        self.task = asyncio.create_task(self._count(track))

    async def _count(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                if track.kind == "video":
                    if self.first_frame_after is None:
                        self.first_frame_after = time.monotonic() - self._since
                    self.frames += 1


def janus_cpu(pid: int) -> float:
    """Seconds of CPU the Janus process (all its threads) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure_janus(rooms: int, participants: int, seconds: float) -> dict[str, Any]:
    """The same rooms through Janus's VideoRoom: each participant publishes 640x480 VP8 and
    Opus and subscribes to every other's feed on one peer connection."""
    folder = Path(tempfile.mkdtemp(prefix="consult-bench-janus-"))
    port = free_port()
    plugins = ",".join(f"libjanus_{p}.so" for p in JANUS_OTHER_PLUGINS.split())
    transports = ",".join(f"libjanus_{t}.so" for t in JANUS_OTHER_TRANSPORTS.split())
    (folder / "janus.jcfg").write_text(
        JANUS_CONFIG.format(
            folder=folder, lib=JANUS_PLUGINS, plugins=plugins, transports=transports
        )
    )
    (folder / "janus.transport.http.jcfg").write_text(JANUS_HTTP.format(port=port))
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {}\n")
    janus = await asyncio.create_subprocess_exec(
        "janus",
        "-C",
        str(folder / "janus.jcfg"),
        "-F",
        str(folder),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    peers: list[RTCPeerConnection] = []
    sessions: list[JanusSession] = []
    patterns: dict[tuple[int, int], TestPatternTrack] = {}
    counters: dict[tuple[int, int], list[FrameCounter]] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                async with httpx.AsyncClient() as probe:
                    await probe.get(f"{base}/janus/info")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        feeds: dict[tuple[int, int], int] = {}
        for room in range(rooms):
            session = await JanusSession(base).create()
            sessions.append(session)
            control = await session.attach()
            number = 1000 + room
            await session.request(
                control,
                {
                    "request": "create",
                    "room": number,
                    "publishers": participants,
                    "videocodec": "vp8",
                    "audiocodec": "opus",
                    "bitrate": 1_500_000,
                },
            )
            for n in range(participants):
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                peers.append(pc)
                pattern = TestPatternTrack(f"room{room}-participant{n}")
                patterns[(room, n)] = pattern
                pc.addTrack(ToneTrack())
                pc.addTrack(pattern)
                await pc.setLocalDescription(await pc.createOffer())
                handle = await session.attach()
                joined = await session.request(
                    handle,
                    {
                        "request": "joinandconfigure",
                        "room": number,
                        "ptype": "publisher",
                        "display": f"participant{n}",
                        "audio": True,
                        "video": True,
                    },
                    jsep={"type": "offer", "sdp": pc.localDescription.sdp},
                )
                feeds[(room, n)] = joined["plugindata"]["data"]["id"]
                await pc.setRemoteDescription(
                    RTCSessionDescription(joined["jsep"]["sdp"], joined["jsep"]["type"])
                )
                # A feed can be subscribed to once its media is up.
                await session.until(handle, "webrtcup")
        first_frames: list[float] = []
        for room in range(rooms):
            session = sessions[room]
            for n in range(participants):
                others = [feeds[(room, o)] for o in range(participants) if o != n]
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                peers.append(pc)
                joined_at = time.monotonic()
                mine: list[FrameCounter] = []
                counters[(room, n)] = mine
                pc.on(
                    "track",
                    lambda track, mine=mine, at=joined_at: mine.append(FrameCounter(track, at)),
                )
                handle = await session.attach()
                attached = await session.request(
                    handle,
                    {
                        "request": "join",
                        "room": 1000 + room,
                        "ptype": "subscriber",
                        "streams": [{"feed": f} for f in others],
                    },
                )
                await pc.setRemoteDescription(
                    RTCSessionDescription(attached["jsep"]["sdp"], attached["jsep"]["type"])
                )
                await pc.setLocalDescription(await pc.createAnswer())
                await session.request(
                    handle,
                    {"request": "start", "room": 1000 + room},
                    jsep={"type": "answer", "sdp": pc.localDescription.sdp},
                )
        deadline = time.monotonic() + 60
        wanted = participants - 1

        def seeing() -> int:
            return sum(1 for mine in counters.values() for c in mine if c.frames > 0)

        while seeing() < rooms * participants * wanted:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        for mine in counters.values():
            first_frames += [c.first_frame_after for c in mine if c.first_frame_after is not None]

        def counts() -> tuple[int, int]:
            made = sum(p.frames for p in patterns.values()) * wanted
            got = sum(c.frames for mine in counters.values() for c in mine)
            return made, got

        assert janus.pid is not None
        cpu0, (made0, got0), start = janus_cpu(janus.pid), counts(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, (made1, got1), wall = janus_cpu(janus.pid), counts(), time.monotonic() - start
        streams = rooms * participants * wanted
        expected, got = made1 - made0, got1 - got0
        cpu = cpu1 - cpu0
        return {
            "mode": "janus",
            "streams": streams,
            "hub_cpu_percent": 100 * cpu / wall,
            "per_stream_percent": 100 * cpu / wall / streams,
            "frames_expected": expected,
            "frames_lost": max(0, expected - got),
            "per_delivered_stream_percent": 100 * cpu / wall / streams * expected / max(1, got),
            "first_frame_median": statistics.median(first_frames) if first_frames else float("nan"),
            "first_frame_max": max(first_frames) if first_frames else float("nan"),
            "late_joiner_median": None,
            "late_joiner_max": None,
        }
    finally:
        for pc in peers:
            with contextlib.suppress(Exception):
                await pc.close()
        for session in sessions:
            await session.close()
        janus.terminate()
        try:
            await asyncio.wait_for(janus.wait(), 30)
        except TimeoutError:
            janus.kill()
            await janus.wait()
        shutil.rmtree(folder, ignore_errors=True)


async def main(arguments: argparse.Namespace) -> None:
    skip = {s for s in arguments.skip.split(",") if s}
    print(
        f"{arguments.rooms} rooms x {arguments.participants} participants, "
        f"{arguments.seconds:.0f} s window, {os.cpu_count()} cores"
    )
    hub = await measure("hub", arguments.rooms, arguments.participants, arguments.seconds)
    report(hub)
    if "stock" not in skip:
        stock = await measure("stock", arguments.rooms, arguments.participants, arguments.seconds)
        report(stock)
        raw = stock["per_stream_percent"] / max(hub["per_stream_percent"], 1e-9)
        ratio = stock["per_delivered_stream_percent"] / max(
            hub["per_delivered_stream_percent"], 1e-9
        )
        print(
            f"stock MediaRelay / hub CPU per forwarded stream: {raw:.1f}x as measured, "
            f"{ratio:.1f}x per frame delivered"
        )
        print(
            "goals: <= 1.5% per stream "
            f"({'met' if hub['per_stream_percent'] <= 1.5 else 'NOT met'}), "
            f">= 5x less than stock ({'met' if ratio >= 5 else 'NOT met'}), "
            f"first remote frame <= 1.5 s "
            f"({'met' if hub['first_frame_max'] <= 1.5 else 'NOT met'})"
        )
    recorded = arguments.rooms * arguments.participants
    costs: dict[str, float] = {}
    for mode in ("record", "mediarecorder"):
        if mode in skip:
            continue
        result = await measure(mode, arguments.rooms, arguments.participants, arguments.seconds)
        report(result)
        costs[mode] = (result["hub_cpu_percent"] - hub["hub_cpu_percent"]) / recorded
        print(
            f"{'':>11}  recording cost beyond forwarding: {costs[mode]:.2f}% of a core per "
            f"participant recorded (audio and video), {recorded} recorded"
        )
    if "janus" not in skip:
        if janus_available():
            janus = await measure_janus(arguments.rooms, arguments.participants, arguments.seconds)
            report(janus)
            print(
                "Janus VideoRoom / hub CPU per forwarded stream: "
                f"{janus['per_stream_percent'] / max(hub['per_stream_percent'], 1e-9):.2f}x "
                "(Janus's publishers and subscribers each on their own peer connection; its "
                "first-frame time counts from the subscription)"
            )
        else:
            print("janus: not installed here (apt-get install janus): skipped")
    if len(costs) == 2:
        print(
            "recording by decoding and re-encoding (aiortc MediaRecorder) / recording the "
            f"received packets (consult.recording): {costs['mediarecorder'] / max(costs['record'], 1e-9):.1f}x"
        )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-hub":
        serve_hub(sys.argv[2], int(sys.argv[3]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--rooms", type=int, default=2)
        parser.add_argument("--participants", type=int, default=3)
        parser.add_argument("--seconds", type=float, default=20.0)
        parser.add_argument(
            "--skip",
            default="",
            help="comma-separated: stock, record, mediarecorder, janus",
        )
        asyncio.run(main(parser.parse_args()))
