"""Recording a consult's call: the frames the hub received, muxed into files, not re-encoded.

A :class:`RoomRecording` taps the room's media (``MediaHub.add_tap``): each participant's
audio (Opus) and video (VP8, or H.264) go, as the hub received them, into one file per
participant — WebM for VP8, Matroska for H.264 — with two tracks, audio and video. A
browser plays such a file in a ``<video>`` element; the record page lays the participants'
files side by side, each starting at its ``started`` time. Mixing the pictures into one
would mean decoding and encoding them again, which is what the hub never does.

Timestamps: every frame is placed at the moment the first frame of its source reached the
hub plus its own RTP time since that frame, in milliseconds from the recording's start, so
a participant who reconnects (a new source, its RTP clock starting over) carries on in the
same file after a gap, and audio and video line up as they arrived. Video starts at a
keyframe (the recorder asks for one).

Muxing runs in one thread per recording (never on the event loop). The files are written
in clusters of at most :data:`CLUSTER_MS` and flushed to the operating system as each
cluster closes, so when the hub process dies (``kill -9``, a power cut takes the page cache
too) a file decodes up to its last whole cluster: at most a second or two is lost.

The recording is noted in the record when it starts (``ConsultRecords.recording_started``:
a DocumentReference, preliminary) and completed when it stops. A sidecar,
``recording.json``, says what is being written; a worker that takes over a consult whose
owner died finds the sidecar unfinished, copies each file's packets into a whole file
(cues and duration, again without re-encoding) and completes the record, noting that the
recording was cut short (:func:`finish_abandoned`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import queue
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import orjson

from consult.call_records import ConsultRecords, RecordedFile, Recording
from consult.protocol import Participant, RecordingEnd, RecordingState
from consult.tracks import EncodedSource
from health.core.clock import utcnow

if TYPE_CHECKING:
    from consult.hub import MediaHub, Peer

logger = logging.getLogger(__name__)

#: Longest cluster of a recorded file (ms): what a crash can lose, besides the muxer's wait
#: for the other track (:data:`INTERLEAVE_US`).
CLUSTER_MS = 1000
INTERLEAVE_US = 500_000
#: How long a participant's file waits for a first video keyframe before it opens with a
#: guessed picture size (a participant on audio only may never send one).
KEYFRAME_WAIT_MS = 3000
DEFAULT_SIZE = (640, 480)
SIDECAR = "recording.json"
_MS = Fraction(1, 1000)
#: What the record says of a recording cut short, by why it stopped.
_CUT_SHORT: dict[str, str] = {
    "consent-withdrawn": "the patient withdrew the consent to recording during the call",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def consult_folder(directory: Path, consult_id: str) -> Path:
    """Where a consult's recordings are kept, under the recording directory."""
    return Path(directory) / _UNSAFE.sub("_", consult_id)


def recording_url(recording: Recording, file: RecordedFile) -> str:
    """Where the app serves a recorded file (``consult.recordings_api``)."""
    return f"/consult/recordings/{recording.recording_id}/{file.path.name}"


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """A VP8 keyframe's picture size (RFC 6386 section 9.1)."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


@dataclass
class _Packet:
    data: bytes
    ms: int
    keyframe: bool
    kind: str


@dataclass
class _FileWriter:
    """One participant's file, in the muxing thread."""

    path: Path
    video_codec: str
    pending: list[_Packet] = field(default_factory=list)
    container: Any = None
    streams: dict[str, Any] = field(default_factory=dict)
    last_ms: dict[str, int] = field(default_factory=dict)
    first_ms: int | None = None
    end_ms: int = 0

    def write(self, packet: _Packet) -> None:
        if self.container is None:
            self.pending.append(packet)
            waited = packet.ms - self.pending[0].ms
            if not (packet.kind == "video" and packet.keyframe) and waited < KEYFRAME_WAIT_MS:
                return
            self._open()
            pending, self.pending = self.pending, []
            for earlier in pending:
                self._mux(earlier)
            return
        self._mux(packet)

    def _open(self) -> None:
        size = DEFAULT_SIZE
        for packet in self.pending:
            if packet.kind == "video" and packet.keyframe and self.video_codec == "vp8":
                size = vp8_size(packet.data) or size
                break
        muxer = "webm" if self.video_codec == "vp8" else "matroska"
        self.container = av.open(
            str(self.path),
            "w",
            format=muxer,
            options={
                "cluster_time_limit": str(CLUSTER_MS),
                "flush_packets": "1",
                "max_interleave_delta": str(INTERLEAVE_US),
            },
        )
        # Streams of the right codec for the muxer's header; nothing is ever encoded.
        video = self.container.add_stream("libvpx" if self.video_codec == "vp8" else "h264")
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.time_base = _MS
        audio = self.container.add_stream("libopus", rate=48000)
        audio.layout = "stereo"
        audio.time_base = _MS
        self.streams = {"video": video, "audio": audio}

    def _mux(self, packet: _Packet) -> None:
        ms = max(packet.ms, self.last_ms.get(packet.kind, -1) + 1)
        self.last_ms[packet.kind] = ms
        if self.first_ms is None:
            self.first_ms = ms
        self.end_ms = max(self.end_ms, ms + (20 if packet.kind == "audio" else 33))
        out = av.Packet(packet.data)
        out.stream = self.streams[packet.kind]
        out.pts = out.dts = ms
        out.time_base = _MS
        out.is_keyframe = packet.keyframe
        self.container.mux(out)

    def close(self) -> None:
        if self.container is None and self.pending:
            self._open()
            pending, self.pending = self.pending, []
            for packet in pending:
                self._mux(packet)
        if self.container is not None:
            self.container.close()
            self.container = None


class _Muxer:
    """The recording's thread: takes packets from a queue and writes each participant's file."""

    def __init__(self, video_codec: str) -> None:
        self.video_codec = video_codec
        self.files: dict[str, _FileWriter] = {}
        self.errors: list[str] = []
        self._queue: queue.Queue[tuple[str, _Packet] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="consult recording", daemon=True)
        self._thread.start()

    def add(self, key: str, path: Path) -> None:
        self.files[key] = _FileWriter(path=path, video_codec=self.video_codec)

    def put(self, key: str, packet: _Packet) -> None:
        self._queue.put((key, packet))

    def close(self) -> None:
        """Write out and close every file (blocking: call it in a thread)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            key, packet = item
            writer = self.files.get(key)
            if writer is None:
                continue
            try:
                writer.write(packet)
            except (av.FFmpegError, ValueError, OSError) as error:
                if len(self.errors) < 10:
                    self.errors.append(f"{writer.path.name}: {error}")
                logger.warning("recording %s: %s", writer.path, error)
        for writer in self.files.values():
            try:
                writer.close()
            except (av.FFmpegError, OSError) as error:
                self.errors.append(f"{writer.path.name}: {error}")
                logger.warning("recording %s could not close: %s", writer.path, error)


class _SourceSink:
    """A participant's source as the recorder reads it (a :class:`~consult.tracks.FrameSink`)."""

    def __init__(self, recording: CallRecorder, key: str, source: EncodedSource) -> None:
        self._recording = recording
        self._key = key
        self._source = source
        self._kind = source.kind
        self._first: tuple[int, int] | None = None  # (pts, ms at the hub)
        self._waiting_keyframe = source.kind == "video"
        source.attach(self)
        source.request_keyframe()

    def offer(self, packet: av.Packet) -> None:
        if self._waiting_keyframe:
            if not packet.is_keyframe:
                return
            self._waiting_keyframe = False
        pts = packet.pts or 0
        time_base = packet.time_base or Fraction(1, 90000 if self._kind == "video" else 48000)
        if self._first is None:
            self._first = (pts, self._recording.elapsed_ms())
        ms = self._first[1] + int((pts - self._first[0]) * time_base * 1000)
        self._recording.put(
            self._key, _Packet(bytes(packet), ms, bool(packet.is_keyframe), self._kind)
        )

    def detach(self) -> None:
        self._source.detach(self)


class CallRecorder:
    """The media part of a recording: taps the room's sources, writes one file a participant.

    :class:`RoomRecording` adds what the record needs; the benchmark uses this alone.
    """

    def __init__(self, *, consult_id: str, folder: Path, hub: MediaHub, recording: Recording):
        self.consult_id = consult_id
        self.folder = folder
        self.recording = recording
        #: Called (on the event loop) when a participant's file is added after the start.
        self.on_new_file: Callable[[], None] | None = None
        self._hub = hub
        self._muxer: _Muxer | None = None
        self._sinks: list[_SourceSink] = []
        self._keys: dict[str, str] = {}
        self._t0 = 0.0
        self.stopped = False

    def elapsed_ms(self) -> int:
        return int((asyncio.get_running_loop().time() - self._t0) * 1000)

    async def prepare(self) -> None:
        """Open the folder and the muxing thread; name a file for everyone sending now."""
        room = self._hub.rooms.get(self.consult_id)
        codec = (room.video_codec if room else None) or "video/VP8"
        senders = [p for p in room.peers.values() if p.sources] if room else []
        if not senders:
            raise RuntimeError("nobody is sending audio or video yet")
        await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
        self._muxer = _Muxer(codec.split("/")[-1].lower())
        self._t0 = asyncio.get_running_loop().time()
        for peer in senders:
            self._file_for(peer.participant_id, peer.participant)

    def tap(self) -> None:
        """Start taking the room's media (each source from its next keyframe)."""
        self._hub.add_tap(self.consult_id, self)

    def source_added(self, peer: Peer, source: EncodedSource) -> None:
        if self.stopped:
            return
        is_new = peer.participant_id not in self._keys
        key = self._file_for(peer.participant_id, peer.participant)
        self._sinks.append(_SourceSink(self, key, source))
        if is_new and self.on_new_file is not None:
            self.on_new_file()

    def put(self, key: str, packet: _Packet) -> None:
        if self._muxer is not None and not self.stopped:
            self._muxer.put(key, packet)

    async def stop(self) -> None:
        """Close every file, then note each one's size, SHA-1 and duration."""
        if self.stopped:
            return
        self.stopped = True
        self._hub.remove_tap(self.consult_id, self)
        for sink in self._sinks:
            sink.detach()
        self._sinks.clear()
        if self._muxer is not None:
            await asyncio.to_thread(self._muxer.close)
        self.recording.ended = utcnow()
        await asyncio.to_thread(_describe_files, self.recording.files)

    def _file_for(self, participant_id: str, participant: Participant | None) -> str:
        key = self._keys.get(participant_id)
        if key is not None:
            return key
        assert self._muxer is not None
        index = len(self._keys) + 1
        suffix = "webm" if self._muxer.video_codec == "vp8" else "mkv"
        path = self.folder / f"{index:02d}-{_UNSAFE.sub('_', participant_id)[:60]}.{suffix}"
        self._keys[participant_id] = key = path.name
        self._muxer.add(key, path)
        self.recording.files.append(
            RecordedFile(
                participant=participant or Participant(participant_id, participant_id, ""),
                path=path,
                content_type="video/webm" if suffix == "webm" else "video/x-matroska",
                started=utcnow(),
            )
        )
        return key


class RoomRecording:
    """One recording of one consult's call, kept in the record (see the module docstring)."""

    def __init__(
        self,
        *,
        consult_id: str,
        started_by: Participant,
        directory: Path,
        records: ConsultRecords,
        hub: MediaHub,
    ) -> None:
        self.consult_id = consult_id
        self.recording = Recording(
            recording_id=uuid.uuid4().hex, started=utcnow(), started_by=started_by
        )
        self.folder = consult_folder(directory, consult_id) / self.recording.recording_id
        self.document: str | None = None
        #: Why it stopped, when nobody stopped it.
        self.reason: RecordingEnd | None = None
        self._records = records
        self._recorder = CallRecorder(
            consult_id=consult_id, folder=self.folder, hub=hub, recording=self.recording
        )
        self._recorder.on_new_file = self._new_file

    async def start(self) -> None:
        await self._recorder.prepare()
        await self._write_sidecar(finished=False)
        self.document = await self._records.recording_started(
            self.consult_id, self.recording, url_of=recording_url
        )
        await self._write_sidecar(finished=False)
        self._recorder.tap()
        logger.info("recording consult %s in %s", self.consult_id, self.folder)

    async def stop(self, *, reason: RecordingEnd | None = None) -> None:
        """Finish the files and the record; ``reason`` when nobody asked for the stop (the
        record says the recording was cut short, and why)."""
        if self._recorder.stopped:
            return
        if reason is not None:
            self.reason = reason
            self.recording.cut_short = _CUT_SHORT[reason]
        await self._recorder.stop()
        await self._write_sidecar(finished=True)
        if self.document is not None:
            await self._records.recording_changed(
                self.consult_id, self.recording, self.document, url_of=recording_url
            )
        logger.info("recording of consult %s done: %s", self.consult_id, self.document)

    def state(self) -> RecordingState:
        if self._recorder.stopped:
            return RecordingState(
                "off",
                document=self.document,
                consent=False if self.reason == "consent-withdrawn" else None,
                reason=self.reason,
            )
        return RecordingState(
            "on",
            started_by=self.recording.started_by,
            since=self.recording.started.isoformat(),
            document=self.document,
        )

    def _new_file(self) -> None:
        if self.document is not None:
            asyncio.get_running_loop().create_task(self._note_new_file())

    async def _note_new_file(self) -> None:
        try:
            await self._write_sidecar(finished=False)
            assert self.document is not None
            await self._records.recording_changed(
                self.consult_id, self.recording, self.document, url_of=recording_url
            )
        except Exception:
            logger.exception("could not note a new file of recording %s", self.document)

    async def _write_sidecar(self, *, finished: bool) -> None:
        data = orjson.dumps(
            {
                "consultId": self.consult_id,
                "document": self.document,
                "finished": finished,
                "recording": _recording_to_dict(self.recording),
            }
        )
        await asyncio.to_thread(_write_atomically, self.folder / SIDECAR, data)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def _recording_to_dict(recording: Recording) -> dict[str, Any]:
    return {
        "id": recording.recording_id,
        "started": recording.started.isoformat(),
        "startedBy": recording.started_by.to_dict(),
        "files": [
            {
                "participant": f.participant.to_dict(),
                "name": f.path.name,
                "contentType": f.content_type,
                "started": f.started.isoformat(),
            }
            for f in recording.files
        ],
    }


def _recording_from_dict(data: dict[str, Any], folder: Path) -> Recording:
    return Recording(
        recording_id=data["id"],
        started=dt.datetime.fromisoformat(data["started"]),
        started_by=Participant.from_dict(data["startedBy"]),
        files=[
            RecordedFile(
                participant=Participant.from_dict(f["participant"]),
                path=folder / f["name"],
                content_type=f["contentType"],
                started=dt.datetime.fromisoformat(f["started"]),
            )
            for f in data["files"]
        ],
    )


def _describe_files(files: list[RecordedFile]) -> None:
    """Size, SHA-1 and duration of each written file (blocking)."""
    for file in files:
        if not file.path.exists():
            continue
        digest = hashlib.sha1()
        with file.path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        file.size = file.path.stat().st_size
        file.sha1 = digest.digest()
        file.seconds = media_seconds(file.path)


def media_seconds(path: Path) -> float | None:
    """How long a recorded file plays, from its last packet (works on a cut-short file)."""
    try:
        with av.open(str(path)) as container:
            if container.duration:
                return container.duration / av.time_base
            end = 0.0
            for packet in container.demux():
                if packet.pts is not None and packet.time_base is not None:
                    end = max(end, float(packet.pts * packet.time_base))
            return end
    except av.FFmpegError:
        return None


def remux_whole(path: Path) -> None:
    """Copy a cut-short file's packets into a whole file (cues, duration), in place."""
    whole = path.with_name(path.stem + ".whole" + path.suffix)
    try:
        with (
            av.open(str(path)) as source,
            av.open(
                str(whole), "w", format="webm" if path.suffix == ".webm" else "matroska"
            ) as target,
        ):
            streams = {}
            for stream in source.streams:
                streams[stream.index] = target.add_stream_from_template(stream)
            for packet in source.demux():
                if packet.dts is None or packet.size == 0:
                    continue
                packet.stream = streams[packet.stream.index]
                target.mux(packet)
    except av.FFmpegError as error:
        logger.warning("could not copy %s whole (%s); it stays as it was", path, error)
        with contextlib.suppress(OSError):
            whole.unlink()
        return
    whole.replace(path)


async def finish_abandoned(directory: Path, consult_id: str, records: ConsultRecords) -> int:
    """Complete the recordings of a consult whose server died while recording them.

    Call it only while holding the consult's room (its lease): then nobody else is writing
    them. Returns how many were completed.
    """
    folder = consult_folder(directory, consult_id)
    sidecars = await asyncio.to_thread(lambda: sorted(folder.glob(f"*/{SIDECAR}")))
    done = 0
    for sidecar in sidecars:
        try:
            data = orjson.loads(await asyncio.to_thread(sidecar.read_bytes))
        except (OSError, orjson.JSONDecodeError):
            continue
        if data.get("finished") or not data.get("document"):
            continue
        recording = _recording_from_dict(data["recording"], sidecar.parent)
        for file in recording.files:
            if file.path.exists():
                await asyncio.to_thread(remux_whole, file.path)
        await asyncio.to_thread(_describe_files, recording.files)
        recording.ended = utcnow()
        recording.cut_short = "the consult server stopped while recording"
        try:
            await records.recording_changed(
                consult_id, recording, data["document"], url_of=recording_url
            )
        except Exception:
            logger.exception("could not complete abandoned recording %s", data["document"])
            continue
        data["finished"] = True
        await asyncio.to_thread(_write_atomically, sidecar, orjson.dumps(data))
        done += 1
        logger.info("completed the cut-short recording %s", data["document"])
    return done


__all__ = [
    "CallRecorder",
    "RoomRecording",
    "consult_folder",
    "finish_abandoned",
    "media_seconds",
    "recording_url",
    "remux_whole",
    "vp8_size",
]
