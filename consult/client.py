"""The Python consult client on aiortc: clinic kiosks, device gateways and tests.

It connects to a consult's signalling WebSocket with a bearer token, joins, sends a test
pattern (or a video file) and a tone, receives the others' audio and video, decodes them,
and keeps count: frames, keyframes and encoded bytes per remote participant and kind, whose
picture it was (the test pattern names its sender, see ``consult.sources``), who was seen.
:meth:`ConsultClient.summary` is that count as one JSON-ready dictionary;
:func:`run_client` joins for a while and returns it, for the ``health consult join``
command.

Received frames come in encoded (``consult.passthrough``) so the client can count their
bytes; it decodes them itself, in a thread, with aiortc's own decoders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from consult.ice import peer_configuration
from consult.passthrough import on_keyframe_request, receive_encoded, request_keyframe
from consult.protocol import (
    Answer,
    Bye,
    Error,
    Join,
    Joined,
    Leave,
    Offer,
    Participant,
    Presence,
    ProtocolError,
    Tracks,
    encode,
    parse_server_message,
)
from consult.sources import FileVideoTrack, TestPatternTrack, ToneTrack, pattern_code
from consult.sources import read_pattern_code as read_code

logger = logging.getLogger(__name__)

#: How many other participants a client makes room for (a full consult has four people).
RECEIVE_SLOTS = 3
#: A decoded picture is checked for its sender's pattern this often (and at its first).
PATTERN_CHECK_EVERY = 15
FRAME_CRCS = 4096


class ConsultClientError(Exception):
    """The consult refused or failed: the server's error, or no answer in time."""


@dataclass
class RemoteTrackStats:
    """What arrived from one remote participant on one kind of track."""

    participant_id: str
    kind: str
    codec: str = ""
    frames: int = 0
    keyframes: int = 0
    bytes: int = 0
    decode_errors: int = 0
    width: int | None = None
    height: int | None = None
    first_frame_at: float | None = None  # time.monotonic()
    picture_of: str | None = None
    #: CRC-32 of each encoded frame received (the first ``FRAME_CRCS``): what arrived can be
    #: checked against what was sent, bit for bit.
    frame_crcs: set[int] = field(default_factory=set)

    def to_dict(self, joined_at: float | None) -> dict[str, Any]:
        first = None
        if self.first_frame_at is not None and joined_at is not None:
            first = round(self.first_frame_at - joined_at, 3)
        data: dict[str, Any] = {
            "participantId": self.participant_id,
            "kind": self.kind,
            "codec": self.codec,
            "frames": self.frames,
            "keyframes": self.keyframes,
            "bytes": self.bytes,
            "decodeErrors": self.decode_errors,
            "firstFrameSeconds": first,
        }
        if self.kind == "video":
            data.update(width=self.width, height=self.height, pictureOf=self.picture_of)
        return data


@dataclass
class _Receiving:
    mid: str
    codec: RTCRtpCodecParameters | None
    receiver: RTCRtpReceiver
    task: asyncio.Task[None] | None = None
    frames_since_check: int = 0


@dataclass
class _Waiter:
    predicate: Callable[[ConsultClient], bool]
    future: asyncio.Future[None] = field(default_factory=asyncio.Future)


class ConsultClient:
    """One participant in a consult, over aiortc.

    ``url`` is the consult's signalling WebSocket (``ws://host/consult/ID/ws``); ``token``
    goes in the ``Authorization: Bearer`` header. ``video_file`` replaces the test pattern
    (VP8 and H.264 files are sent as they are, other formats are decoded and encoded);
    ``video_codec`` ("VP8" or "H264") limits what the client offers.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        video_file: Path | str | None = None,
        video_codec: str | None = None,
        width: int = 640,
        height: int = 480,
        receive_slots: int = RECEIVE_SLOTS,
        decode: bool = True,
        reply_seconds: float = 30.0,
    ) -> None:
        self.url = url
        self.token = token
        self.video_file = Path(video_file) if video_file is not None else None
        self.video_codec = video_codec
        self.width, self.height = width, height
        self.receive_slots = receive_slots
        self.decode = decode
        self.reply_seconds = reply_seconds
        self.participant: Participant | None = None
        self.present: dict[str, Participant] = {}
        self.seen: dict[str, Participant] = {}
        self.tracks: dict[str, str] = {}  # mid -> participant id, as the server says
        self.stats: dict[tuple[str, str], RemoteTrackStats] = {}
        self.errors: list[Error] = []
        self.keyframe_requests = 0
        self.bye: str | None = None
        #: Whether the signalling WebSocket is open.
        self.signalling_open = False
        self.joined_at: float | None = None
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connection: RTCPeerConnection | None = None
        self._receiving: dict[str, _Receiving] = {}
        self._sent_tracks: list[MediaStreamTrack] = []
        self._replies: dict[str, asyncio.Future[Any]] = {}
        self._waiters: list[_Waiter] = []
        self._started = time.monotonic()

    async def __aenter__(self) -> ConsultClient:
        await self.join()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave()

    # Conversation.

    async def join(self) -> None:
        """Connect, join and negotiate media; returns once the server has answered."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.joined_at = time.monotonic()
        self._socket = await connect(self.url, additional_headers=headers, max_size=2**20)
        self.signalling_open = True
        self._reader = asyncio.create_task(self._read(), name="consult client signalling")
        joined: Joined = await self._request(Join(), "joined")
        self.participant = joined.participant
        for other in joined.participants:
            self.present[other.id] = self.seen[other.id] = other
        self._ice_servers = joined.ice_servers
        await self.negotiate()

    async def negotiate(self) -> None:
        """A fresh negotiation with a new peer connection (how a client reconnects)."""
        await self._close_connection()
        connection = RTCPeerConnection(peer_configuration(self._ice_servers))
        self._connection = connection
        audio, video = self._media()
        self._sent_tracks = [audio, video]
        audio_sender = connection.addTransceiver(audio, direction="sendrecv")
        video_transceiver = connection.addTransceiver(video, direction="sendrecv")
        on_keyframe_request(video_transceiver.sender, self._keyframe_requested, also_encode=True)
        for _ in range(self.receive_slots - 1):
            connection.addTransceiver("audio", direction="recvonly")
            connection.addTransceiver("video", direction="recvonly")
        preferred = self._video_preference(video)
        if preferred:
            for transceiver in connection.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.setCodecPreferences(preferred)
        del audio_sender

        @connection.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            receive_encoded(track)
            transceiver = next(t for t in connection.getTransceivers() if t.receiver.track is track)
            receiving = _Receiving(
                mid=str(transceiver.mid), codec=None, receiver=transceiver.receiver
            )
            self._receiving[receiving.mid] = receiving
            receiving.task = asyncio.create_task(
                self._consume(receiving, track), name=f"consult client {track.kind}"
            )

        await connection.setLocalDescription(await connection.createOffer())
        answer: Answer = await self._request(Offer(connection.localDescription.sdp), "answer")
        codecs = {
            str(m.rtp.muxId): m.rtp.codecs[0]
            for m in aiortc_sdp.SessionDescription.parse(answer.sdp).media
            if m.rtp.codecs
        }
        for mid, receiving in self._receiving.items():
            receiving.codec = codecs.get(mid)
        await connection.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
        for mid, receiving in self._receiving.items():
            receiving.codec = receiving.codec or codecs.get(mid)
        self._notify()

    async def leave(self) -> None:
        """Leave the consult and close everything."""
        if self._socket is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._socket.send(encode(Leave()))
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                await asyncio.wait_for(self._socket.wait_closed(), timeout=self.reply_seconds)
            await self._socket.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._close_connection()

    async def wait_for(self, predicate: Callable[[ConsultClient], bool], within: float) -> None:
        """Return once ``predicate(client)`` holds; :class:`TimeoutError` after ``within`` s."""
        if predicate(self):
            return
        waiter = _Waiter(predicate)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), within)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    # What arrived.

    def received(self, participant_id: str, kind: str) -> RemoteTrackStats:
        """What arrived from someone (zero counts when nothing did)."""
        return self.stats.get((participant_id, kind)) or RemoteTrackStats(participant_id, kind)

    @property
    def video_frames_sent(self) -> int:
        """Test-pattern frames made for the current connection (0 for a video file)."""
        video = self._sent_tracks[1] if len(self._sent_tracks) > 1 else None
        return video.frames if isinstance(video, TestPatternTrack) else 0

    def summary(self) -> dict[str, Any]:
        return {
            "participant": self.participant.to_dict() if self.participant else None,
            "seconds": round(time.monotonic() - self._started, 3),
            "participantsSeen": [p.to_dict() for p in self.seen.values()],
            "tracks": [s.to_dict(self.joined_at) for s in self.stats.values()],
            "keyframeRequests": self.keyframe_requests,
            "errors": [e.to_dict() for e in self.errors],
            "bye": self.bye,
        }

    # Inside.

    def _media(self) -> tuple[MediaStreamTrack, MediaStreamTrack]:
        audio = ToneTrack()
        if self.video_file is None:
            pid = self.participant.id if self.participant else "unknown"
            return audio, TestPatternTrack(pid, width=self.width, height=self.height)
        with av.open(str(self.video_file)) as probe:
            codec = probe.streams.video[0].codec_context.name if probe.streams.video else ""
        encoded = codec in FileVideoTrack.ENCODED_CODECS
        return audio, FileVideoTrack(self.video_file, encoded=encoded)

    def _video_preference(self, video: MediaStreamTrack) -> list[Any]:
        wanted = self.video_codec
        if isinstance(video, FileVideoTrack) and video.codec_name in FileVideoTrack.ENCODED_CODECS:
            wanted = video.codec_name  # the file's own codec is the only one it can send
        if not wanted:
            return []
        codecs = RTCRtpSender.getCapabilities("video").codecs
        chosen = [c for c in codecs if c.mimeType.lower() == f"video/{wanted.lower()}"]
        if not chosen:
            raise ValueError(f"aiortc cannot send {wanted} video")
        return chosen + [c for c in codecs if c.mimeType.lower() == "video/rtx"]

    def _keyframe_requested(self) -> None:
        self.keyframe_requests += 1
        self._notify()

    async def _request(self, message: Join | Offer, reply: str) -> Any:
        assert self._socket is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[reply] = future
        await self._socket.send(encode(message))
        try:
            return await asyncio.wait_for(future, self.reply_seconds)
        except TimeoutError:
            raise ConsultClientError(f"no {reply} from the consult server in time") from None
        finally:
            self._replies.pop(reply, None)

    async def _read(self) -> None:
        assert self._socket is not None
        try:
            async for text in self._socket:
                try:
                    message = parse_server_message(text)
                except ProtocolError as error:
                    logger.warning("the server sent a bad message: %s", error.message)
                    continue
                self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self.signalling_open = False
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(ConsultClientError("the consult server closed the line"))
            self._notify()

    def _on_message(self, message: Any) -> None:
        if isinstance(message, Joined):
            self._resolve("joined", message)
        elif isinstance(message, Answer):
            self._resolve("answer", message)
        elif isinstance(message, Tracks):
            self.tracks = {t.mid: t.participant_id for t in message.tracks}
        elif isinstance(message, Presence):
            if message.event == "joined":
                self.present[message.participant.id] = message.participant
                self.seen[message.participant.id] = message.participant
            else:
                self.present.pop(message.participant.id, None)
        elif isinstance(message, Error):
            self.errors.append(message)
            reply = {"join": "joined", "offer": "answer"}.get(message.in_reply_to or "")
            future = self._replies.get(reply or "")
            if future is not None and not future.done():
                future.set_exception(ConsultClientError(f"{message.code}: {message.message}"))
        elif isinstance(message, Bye):
            self.bye = message.reason
        self._notify()

    def _resolve(self, reply: str, message: Any) -> None:
        future = self._replies.get(reply)
        if future is not None and not future.done():
            future.set_result(message)

    def _notify(self) -> None:
        for waiter in list(self._waiters):
            if not waiter.future.done():
                try:
                    if waiter.predicate(self):
                        waiter.future.set_result(None)
                except Exception as error:
                    waiter.future.set_exception(error)

    async def _consume(self, receiving: _Receiving, track: MediaStreamTrack) -> None:
        decoder = None
        decoder_codec = None
        while True:
            try:
                packet = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(packet, av.Packet):  # receive_encoded makes every frame one
                raise TypeError(f"expected encoded frames, got {type(packet).__name__}")
            participant_id = self.tracks.get(receiving.mid)
            if participant_id is None or receiving.codec is None:
                continue
            key = (participant_id, track.kind)
            stats = self.stats.get(key)
            if stats is None:
                stats = self.stats[key] = RemoteTrackStats(participant_id, track.kind)
            stats.codec = receiving.codec.mimeType.split("/")[-1]
            stats.bytes += packet.size
            if len(stats.frame_crcs) < FRAME_CRCS:
                stats.frame_crcs.add(zlib.crc32(bytes(packet)))
            stats.keyframes += bool(packet.is_keyframe and track.kind == "video")
            if not self.decode:
                stats.frames += 1
                self._first_frame(stats)
                continue
            if decoder is None or decoder_codec != receiving.codec.mimeType:
                decoder, decoder_codec = get_decoder(receiving.codec), receiving.codec.mimeType
            try:
                frames = await asyncio.to_thread(
                    decoder.decode, JitterFrame(bytes(packet), packet.pts or 0)
                )
            except av.FFmpegError:
                stats.decode_errors += 1
                await self._ask_keyframe(receiving)
                continue
            for frame in frames:
                stats.frames += 1
                if isinstance(frame, av.VideoFrame):
                    stats.width, stats.height = frame.width, frame.height
                    if (
                        stats.picture_of is None
                        or receiving.frames_since_check >= PATTERN_CHECK_EVERY
                    ):
                        receiving.frames_since_check = 0
                        stats.picture_of = self._whose_pattern(read_code(frame))
                    receiving.frames_since_check += 1
                self._first_frame(stats)

    def _first_frame(self, stats: RemoteTrackStats) -> None:
        if stats.first_frame_at is None:
            stats.first_frame_at = time.monotonic()
        self._notify()

    def _whose_pattern(self, code: int) -> str | None:
        return next((pid for pid in self.seen if pattern_code(pid) == code), None)

    async def _ask_keyframe(self, receiving: _Receiving) -> None:
        sources = receiving.receiver.getSynchronizationSources()
        if sources:
            await request_keyframe(receiving.receiver, sources[0].source)

    async def _close_connection(self) -> None:
        for receiving in self._receiving.values():
            if receiving.task is not None:
                receiving.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiving.task
        self._receiving.clear()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
        for track in self._sent_tracks:
            track.stop()
        self._sent_tracks = []


def consult_socket_url(server: str, consult_id: str) -> str:
    """The signalling WebSocket of a consult on a server given as ``http(s)://host[:port]``."""
    base = server.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return f"{base}/consult/{consult_id}/ws"


async def run_client(
    url: str,
    *,
    token: str | None,
    seconds: float,
    video_file: Path | None = None,
) -> dict[str, Any]:
    """Join, stay ``seconds``, leave; what was received (see :meth:`ConsultClient.summary`)."""
    client = ConsultClient(url, token=token, video_file=video_file)
    try:
        await client.join()
        await asyncio.sleep(seconds)
    except (ConsultClientError, OSError, InvalidHandshake) as error:
        client.errors.append(Error("client", f"could not join: {error}"))
    finally:
        await client.leave()
    return client.summary()
