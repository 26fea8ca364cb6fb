"""Media a Python participant sends: a test pattern, a tone, or a video file.

The test pattern carries who sends it: a band of 16 black and white blocks across the top
spells :func:`pattern_code` of the sender's participant id, and :func:`read_pattern_code`
reads it back from a decoded picture, so a receiver can tell that the picture shown under
someone's name is that person's camera. Below the band a bar moves, so the encoder has
motion to encode.

Timestamps follow the clock, so a track that nobody read for a while (its sender paused it:
:class:`PausableTrack`, the call went audio only) goes on from the present moment rather
than rushing out the frames it missed.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import time
import zlib
from array import array
from collections import deque
from pathlib import Path

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, MediaStreamError

logger = logging.getLogger(__name__)

PATTERN_BITS = 16
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms
#: A frame due this long ago is not made late: the track starts again from now.
LATE_SECONDS = 0.5
_WHITE, _BLACK, _BACKGROUND = 235, 16, 96


def pattern_code(participant_id: str) -> int:
    """The 16-bit number a participant's test pattern shows."""
    return zlib.crc32(participant_id.encode()) & 0xFFFF


def _band_height(height: int) -> int:
    return max(16, height // 8) & ~1


def read_pattern_code(frame: av.VideoFrame) -> int:
    """The number in a decoded test pattern's top band (any number, for any other picture)."""
    if frame.format.name not in ("yuv420p", "yuvj420p", "nv12"):
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    data = memoryview(plane)  # type: ignore[arg-type]
    row = _band_height(frame.height) // 2
    block = frame.width // PATTERN_BITS
    code = 0
    for bit in range(PATTERN_BITS):
        value = data[row * plane.line_size + bit * block + block // 2]
        code = (code << 1) | (1 if value > 128 else 0)
    return code


class TestPatternTrack(MediaStreamTrack):
    """Generated video at ``fps``: the sender's code in a band, and a moving bar."""

    kind = "video"

    def __init__(self, participant_id: str, *, width: int = 640, height: int = 480, fps: int = 30):
        super().__init__()
        if width % (2 * PATTERN_BITS) or height % 2:
            raise ValueError(f"the pattern needs a width divisible by {2 * PATTERN_BITS}")
        self.width, self.height, self.fps = width, height, fps
        template = av.VideoFrame(width, height, "yuv420p")
        self._stride = [plane.line_size for plane in template.planes]
        code = pattern_code(participant_id)
        block = width // PATTERN_BITS
        band_row = b"".join(
            bytes([_WHITE if code >> (PATTERN_BITS - 1 - bit) & 1 else _BLACK]) * block
            for bit in range(PATTERN_BITS)
        )
        self._band = (band_row + bytes(self._stride[0] - width)) * _band_height(height)
        self._body_rows = height - _band_height(height)
        self._bar = width // 10
        chroma = bytes([128]) * (self._stride[1] * (height // 2))
        self._chroma = (chroma, bytes([128]) * (self._stride[2] * (height // 2)))
        self._frames = 0
        self._start: float | None = None
        self._due = 0.0

    @property
    def frames(self) -> int:
        """Frames made so far."""
        return self._frames

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = self._due = now
        elif self._due < now - LATE_SECONDS:
            self._due = now  # not read for a while: carry on from now
        else:
            await asyncio.sleep(max(0.0, self._due - now))
        x = (self._frames * 4) % (self.width - self._bar)
        row = (
            bytes([_BACKGROUND]) * x
            + bytes([_WHITE]) * self._bar
            + bytes([_BACKGROUND]) * (self.width - self._bar - x)
            + bytes(self._stride[0] - self.width)
        )
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        frame.planes[0].update(self._band + row * self._body_rows)
        frame.planes[1].update(self._chroma[0])
        frame.planes[2].update(self._chroma[1])
        frame.pts = int((self._due - self._start) * VIDEO_CLOCK_RATE)
        frame.time_base = VIDEO_TIME_BASE
        self._frames += 1
        self._due += 1 / self.fps
        return frame


class ToneTrack(MediaStreamTrack):
    """A steady sine tone, 48 kHz mono, in 20 ms frames."""

    kind = "audio"

    def __init__(self, frequency: int = 440) -> None:
        super().__init__()
        # One second holds a whole number of cycles of an integer frequency: it loops cleanly.
        samples = array(
            "h",
            (
                int(0.3 * 32767 * math.sin(2 * math.pi * frequency * n / AUDIO_RATE))
                for n in range(AUDIO_RATE)
            ),
        )
        self._second = samples.tobytes()
        self._frames = 0
        self._start: float | None = None
        self._time_base = fractions.Fraction(1, AUDIO_RATE)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            due = self._start + self._frames * AUDIO_SAMPLES / AUDIO_RATE
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        offset = (self._frames * AUDIO_SAMPLES % AUDIO_RATE) * 2
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        frame.planes[0].update(self._second[offset : offset + AUDIO_SAMPLES * 2])
        frame.pts = self._frames * AUDIO_SAMPLES
        frame.sample_rate = AUDIO_RATE
        frame.time_base = self._time_base
        self._frames += 1
        return frame


class FileVideoTrack(MediaStreamTrack):
    """A file's video, looped, in real time.

    With ``encoded`` (VP8 or H.264 files only) the file's packets are sent as they are, not
    decoded and encoded again, as a device with its own encoder would; otherwise the frames
    are decoded here and the peer connection encodes them.
    """

    kind = "video"
    ENCODED_CODECS = ("vp8", "h264")

    def __init__(self, path: Path | str, *, encoded: bool) -> None:
        super().__init__()
        self._container = av.open(str(path))
        if not self._container.streams.video:
            raise ValueError(f"{path} has no video")
        self._stream = self._container.streams.video[0]
        self.codec_name = self._stream.codec_context.name
        if encoded and self.codec_name not in self.ENCODED_CODECS:
            raise ValueError(f"{path} is {self.codec_name}; only VP8 and H.264 go unencoded")
        self._encoded = encoded
        self._annexb = (
            av.BitStreamFilterContext("h264_mp4toannexb", self._stream)
            if encoded and self.codec_name == "h264"
            else None
        )
        self._time_base = self._stream.time_base or fractions.Fraction(1, 90000)
        self._frame_step = self._step()
        self._pending: deque[av.Packet | av.VideoFrame] = deque()
        self._packets = self._container.demux(self._stream)
        self._first_pts: int | None = None
        self._offset = 0
        self._last_pts = 0
        self._start: float | None = None
        self._shift = 0

    def _step(self) -> int:
        rate = self._stream.average_rate or self._stream.guessed_rate or 30
        return max(1, round(1 / (float(rate) * float(self._time_base))))

    async def recv(self) -> av.Packet | av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        item = await asyncio.to_thread(self._next)
        seconds = float((item.pts or 0) * self._time_base)
        now = time.monotonic()
        if self._start is None:
            self._start = now - seconds
        elif self._start + seconds < now - LATE_SECONDS:
            # Not read for a while: go on from now, with timestamps that say so.
            late = now - (self._start + seconds)
            self._start += late
            self._shift += round(late / float(self._time_base))
        else:
            await asyncio.sleep(max(0.0, self._start + seconds - now))
        item.pts = (item.pts or 0) + self._shift
        if isinstance(item, av.VideoFrame):
            # aiortc's encoders keep their rate only for frames in the 90 kHz clock.
            item.pts = int(item.pts * self._time_base / VIDEO_TIME_BASE)
            item.time_base = VIDEO_TIME_BASE
        return item

    def stop(self) -> None:
        super().stop()
        self._container.close()

    def _next(self) -> av.Packet | av.VideoFrame:
        rewinds = 0
        while not self._pending:
            packet = next(self._packets, None)
            if packet is None or packet.size == 0:
                # The end (a decoder holding a last frame or two loses them: harmless here).
                rewinds += 1
                if rewinds > 2:
                    raise MediaStreamError(f"no video in {self._container.name}")
                self._container.seek(0)
                self._packets = self._container.demux(self._stream)
                self._offset = self._last_pts + self._frame_step
                self._first_pts = None
                continue
            if packet.pts is None:
                continue
            if self._encoded:
                self._take(self._annexb.filter(packet) if self._annexb else [packet])
            else:
                self._take(packet.decode())
        return self._pending.popleft()

    def _take(self, items: list[av.Packet] | list[av.VideoFrame]) -> None:
        for item in items:
            if item.pts is None:
                continue
            if self._first_pts is None:
                self._first_pts = item.pts
            item.pts = item.pts - self._first_pts + self._offset
            item.time_base = self._time_base
            self._last_pts = max(self._last_pts, item.pts)
            if isinstance(item, av.VideoFrame):
                # Frames from raw formats come marked as keyframes, which would make the
                # encoder send every frame as one.
                item.pict_type = av.video.frame.PictureType.NONE
            self._pending.append(item)


class PausableTrack(MediaStreamTrack):
    """Another track that can be held: while paused the sender gets nothing, sends nothing.

    What a participant's camera becomes when the call goes audio only: aiortc's sender
    waits on :meth:`recv`, so no frame is encoded or sent until :meth:`resume`.
    """

    def __init__(self, inner: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = inner.kind
        self.inner = inner
        self._running = asyncio.Event()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def recv(self) -> av.frame.Frame | av.Packet:
        while True:
            await self._running.wait()
            if self.readyState != "live":
                raise MediaStreamError
            item = await self.inner.recv()
            if self._running.is_set():
                return item

    def stop(self) -> None:
        super().stop()
        self.inner.stop()
        self._running.set()
