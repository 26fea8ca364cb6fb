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

    .venv/bin/python bench/consult_relay.py [--rooms 2] [--participants 3] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

import uvicorn  # noqa: E402
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpTransceiver  # noqa: E402
from aiortc.contrib.media import MediaRelay  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route, WebSocketRoute  # noqa: E402
from starlette.websockets import WebSocket  # noqa: E402

from consult.client import ConsultClient  # noqa: E402
from consult.hub import MediaHub, Slot  # noqa: E402
from consult.protocol import Participant  # noqa: E402
from consult.rooms import ConsultRooms  # noqa: E402
from consult.signalling import SignallingSession  # noqa: E402
from consult.tracks import EncodedSource, ForwardedTrack  # noqa: E402
from health.core.bus import InProcessBus  # noqa: E402
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


def serve_hub(mode: str, port: int) -> None:
    """The hub process: signalling and media for any participant (the token is the id)."""
    bus = InProcessBus()
    hub = StockRelayHub() if mode == "stock" else MediaHub()
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
        f"hub {result['hub_cpu_percent']:.1f}% of a core, "
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


async def main(arguments: argparse.Namespace) -> None:
    print(
        f"{arguments.rooms} rooms x {arguments.participants} participants, "
        f"{arguments.seconds:.0f} s window, {os.cpu_count()} cores"
    )
    hub = await measure("hub", arguments.rooms, arguments.participants, arguments.seconds)
    report(hub)
    stock = await measure("stock", arguments.rooms, arguments.participants, arguments.seconds)
    report(stock)
    raw = stock["per_stream_percent"] / max(hub["per_stream_percent"], 1e-9)
    ratio = stock["per_delivered_stream_percent"] / max(hub["per_delivered_stream_percent"], 1e-9)
    print(
        f"stock MediaRelay / hub CPU per forwarded stream: {raw:.1f}x as measured, "
        f"{ratio:.1f}x per frame delivered"
    )
    print(
        "goals: <= 1.5% per stream "
        f"({'met' if hub['per_stream_percent'] <= 1.5 else 'NOT met'}), "
        f">= 5x less than stock ({'met' if ratio >= 5 else 'NOT met'}), "
        f"first remote frame <= 1.5 s ({'met' if hub['first_frame_max'] <= 1.5 else 'NOT met'})"
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-hub":
        serve_hub(sys.argv[2], int(sys.argv[3]))
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--rooms", type=int, default=2)
        parser.add_argument("--participants", type=int, default=3)
        parser.add_argument("--seconds", type=float, default=20.0)
        asyncio.run(main(parser.parse_args()))
