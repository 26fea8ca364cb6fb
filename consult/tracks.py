"""The hub's tracks of encoded frames: one participant's incoming track, fanned out.

An :class:`EncodedSource` reads what one participant sends on one track (as
``av.Packet`` objects, see ``consult.passthrough``) and offers each frame to every
:class:`ForwardedTrack` attached to it. A ``ForwardedTrack`` is what the hub's
``RTCRtpSender`` for another participant reads from: a short queue that drops rather than
grows when that participant's link or CPU falls behind, and that starts and restarts only at
a keyframe, asking the source for one so a viewer never waits for the sender's next periodic
keyframe. Keyframe requests from viewers reach the source the same way; the source sends
them upstream as RTCP PLI, coalesced to at most one per ``KEYFRAME_REQUEST_INTERVAL``.

A source offers its frames to any :class:`FrameSink`: the forwarded tracks, and the
recorder (``consult.recording``). A forwarded track can be paused (its viewer, or the
participant it carries, is on audio only) and resumes at a keyframe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from fractions import Fraction
from typing import Protocol

import av
from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError

from consult.passthrough import request_keyframe

logger = logging.getLogger(__name__)

#: Shortest time between two keyframe requests sent upstream for one source (mediasoup and
#: Jitsi bound theirs the same way: a keyframe is many times the size of other frames).
KEYFRAME_REQUEST_INTERVAL = 0.5
#: Frames a forwarded track may hold for a slow reader: about a second of each.
VIDEO_QUEUE_FRAMES = 30
AUDIO_QUEUE_FRAMES = 50
# The usual spacing of frames, in their clock, to keep timestamps rising when a forwarded
# track switches from one source to another (a participant who left and one who came).
_FRAME_STEP = {"audio": 960, "video": 3000}


class FrameSink(Protocol):
    """Something a source offers each of its frames to, on the event loop."""

    def offer(self, packet: av.Packet) -> None: ...

    def detach(self) -> None:
        """The source is going away (or the sink is being taken off it)."""
        ...


class EncodedSource:
    """One participant's audio or video at the hub, read once and offered to every viewer."""

    def __init__(
        self,
        track: MediaStreamTrack,
        receiver: RTCRtpReceiver,
        *,
        media_ssrc: int | None,
        name: str,
    ) -> None:
        self.kind = track.kind
        self.name = name
        self.frames_received = 0
        self.bytes_received = 0
        self.keyframes_received = 0
        #: Of ``bytes_received``, those in keyframes: what lost pictures cost a weak link.
        self.keyframe_bytes_received = 0
        self.keyframe_requests_sent = 0
        #: Loop time of the last frame received (None before the first).
        self.last_frame_at: float | None = None
        self._track = track
        self._receiver = receiver
        self._media_ssrc = media_ssrc
        self._sinks: set[FrameSink] = set()
        self._keyframe_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._read(), name=f"source {self.name}"))
        if self.kind == "video":
            self._tasks.append(
                asyncio.create_task(self._request_keyframes(), name=f"keyframes {self.name}")
            )

    @property
    def receiver(self) -> RTCRtpReceiver:
        return self._receiver

    @property
    def media_ssrc(self) -> int | None:
        """The SSRC the participant sends this track on (from its offer, or as first seen)."""
        if self._media_ssrc is None:
            sources = self._receiver.getSynchronizationSources()
            if sources:
                return max(sources, key=lambda s: s.timestamp).source
        return self._media_ssrc

    def attach(self, sink: FrameSink) -> None:
        self._sinks.add(sink)

    def detach(self, sink: FrameSink) -> None:
        self._sinks.discard(sink)

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe soon (requests close together become one)."""
        if self.kind == "video":
            self._keyframe_wanted.set()

    async def close(self) -> None:
        for sink in list(self._sinks):
            sink.detach()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _read(self) -> None:
        while True:
            try:
                packet = await self._track.recv()
            except MediaStreamError:
                logger.debug("source %s ended", self.name)
                return
            if not isinstance(packet, av.Packet):
                raise TypeError(f"source {self.name} gave {type(packet).__name__}, not encoded")
            self.frames_received += 1
            self.bytes_received += packet.size
            self.last_frame_at = asyncio.get_running_loop().time()
            if packet.is_keyframe and self.kind == "video":
                self.keyframes_received += 1
                self.keyframe_bytes_received += packet.size
            for sink in list(self._sinks):
                sink.offer(packet)

    async def _request_keyframes(self) -> None:
        while True:
            await self._keyframe_wanted.wait()
            self._keyframe_wanted.clear()
            ssrc = self.media_ssrc
            if ssrc is not None:
                await request_keyframe(self._receiver, ssrc)
                self.keyframe_requests_sent += 1
                logger.debug("keyframe requested from %s", self.name)
            await asyncio.sleep(KEYFRAME_REQUEST_INTERVAL)


class ForwardedTrack(MediaStreamTrack):
    """Another participant's encoded audio or video, as one of the hub's senders reads it."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.frames_forwarded = 0
        self.frames_dropped = 0
        self._capacity = VIDEO_QUEUE_FRAMES if kind == "video" else AUDIO_QUEUE_FRAMES
        self._frames: deque[av.Packet] = deque()
        self._ready = asyncio.Event()
        self._source: EncodedSource | None = None
        self._reading = False
        self._awaiting_keyframe = kind == "video"
        self._paused = False
        self._rebase = False
        self._offset = 0
        self._next_pts: int | None = None

    @property
    def source(self) -> EncodedSource | None:
        return self._source

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Forward nothing until :meth:`resume` (what is queued is dropped)."""
        if not self._paused:
            self._paused = True
            self.frames_dropped += len(self._frames)
            self._frames.clear()

    def resume(self) -> None:
        """Forward again, from the source's next keyframe (asked for now)."""
        if self._paused:
            self._paused = False
            self._awaiting_keyframe = self.kind == "video"
            if self._reading:
                self.request_keyframe()

    def attach(self, source: EncodedSource) -> None:
        """Forward ``source`` from now on, starting at its next keyframe."""
        self.detach()
        self._source = source
        self._rebase = True
        self._awaiting_keyframe = self.kind == "video"
        source.attach(self)
        if self._reading:
            source.request_keyframe()

    def detach(self) -> None:
        if self._source is not None:
            self._source.detach(self)
            self._source = None
        self.frames_dropped += len(self._frames)
        self._frames.clear()

    def request_keyframe(self) -> None:
        """The viewer lost the picture (its PLI or FIR): pass the request to the sender."""
        if self._source is not None:
            self._source.request_keyframe()

    def offer(self, packet: av.Packet) -> None:
        if self._paused:
            return
        if not self._reading:
            # Nobody reads yet (the viewer's connection is still being set up): keep nothing,
            # and start at a keyframe asked for when reading begins.
            self._awaiting_keyframe = self.kind == "video"
            return
        if self._awaiting_keyframe:
            if not packet.is_keyframe:
                self.frames_dropped += 1
                return
            self._awaiting_keyframe = False
        if len(self._frames) >= self._capacity:
            if self.kind == "video":
                # Frames after a dropped one do not decode: drop them all, restart at a
                # keyframe (unless this is one).
                self.frames_dropped += len(self._frames)
                self._frames.clear()
                if not packet.is_keyframe:
                    self.frames_dropped += 1
                    self._awaiting_keyframe = True
                    self.request_keyframe()
                    return
            else:
                self._frames.popleft()
                self.frames_dropped += 1
        self._frames.append(self._retimed(packet))
        self._ready.set()

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._reading:
            self._reading = True
            if not self._paused:
                self.request_keyframe()
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
            if self.readyState != "live":
                raise MediaStreamError
        self.frames_forwarded += 1
        return self._frames.popleft()

    def stop(self) -> None:
        self.detach()
        super().stop()
        self._ready.set()

    def _retimed(self, packet: av.Packet) -> av.Packet:
        """The packet with timestamps that keep rising across a change of source."""
        pts = packet.pts if packet.pts is not None else 0
        if self._rebase:
            self._rebase = False
            self._offset = 0 if self._next_pts is None else self._next_pts - pts
        out_pts = pts + self._offset
        self._next_pts = out_pts + _FRAME_STEP[self.kind]
        if self._offset == 0:
            return packet  # shared, unchanged, with every other viewer of this source
        retimed = av.Packet(bytes(packet))
        retimed.pts = out_pts
        retimed.time_base = packet.time_base or Fraction(1, 90000)
        retimed.is_keyframe = packet.is_keyframe
        return retimed
