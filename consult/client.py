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

On a weak link it does what the page does: it follows the server's ``media-mode`` (on
audio only its camera is held, :class:`~consult.sources.PausableTrack`), keeps the latest
``quality`` figures, and reconnects by itself — a new WebSocket, join, a fresh
negotiation — when the signalling drops or the media fails, for up to
``reconnect_seconds``. Standing in for a device gateway it sends vital-sign readings,
chat and files over the call's data channel (``consult.datachannel``) and keeps what the
server answers (:meth:`ConsultClient.send_reading`, :meth:`ConsultClient.send_chat`,
:meth:`ConsultClient.share_file`).
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
import orjson
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
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from consult.datachannel import CHANNEL_LABEL, CHUNK_BYTES, new_message_id
from consult.ice import peer_configuration
from consult.passthrough import on_keyframe_request, receive_encoded, request_keyframe
from consult.protocol import (
    Answer,
    Bye,
    ClientMessage,
    Error,
    IceServer,
    Join,
    Joined,
    Leave,
    LinkLimits,
    MediaMode,
    MediaModeChanged,
    Offer,
    Participant,
    Presence,
    ProtocolError,
    Quality,
    RecordingControl,
    RecordingState,
    Tracks,
    encode,
    parse_server_message,
)
from consult.sources import (
    FileVideoTrack,
    PausableTrack,
    TestPatternTrack,
    ToneTrack,
    pattern_code,
)
from consult.sources import read_pattern_code as read_code

logger = logging.getLogger(__name__)

#: How many other participants a client makes room for (a full consult has four people).
RECEIVE_SLOTS = 3
#: A decoded picture is checked for its sender's pattern this often (and at its first).
PATTERN_CHECK_EVERY = 15
FRAME_CRCS = 4096
#: Longest wait between two attempts to reconnect.
RECONNECT_BACKOFF_MAX = 4.0
#: Signalling keep-alive: a ping this often, and the line counts as dropped without a pong
#: this long after one.
PING_SECONDS = 5.0
PING_TIMEOUT = 10.0
#: Quality reports in a row in which the server forwarded someone's video and none of it
#: came out of aiortc's jitter buffer before the client negotiates afresh; and how seldom.
#: How long leaving waits for the peer connection to close.
CLOSE_SECONDS = 5.0
STUCK_REPORTS = 2
STUCK_RETRY_SECONDS = 20.0


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
    ``video_codec`` ("VP8" or "H264") limits what the client offers. ``ice_servers``
    replaces the servers the consult gives; with ``relay_only`` media goes through TURN only
    (a clinic whose firewall lets nothing else through). ``reconnect_seconds`` is how long
    to keep trying after the link drops (0: never).
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
        ice_servers: list[IceServer] | None = None,
        relay_only: bool = False,
        reconnect_seconds: float = 60.0,
    ) -> None:
        self.url = url
        self.token = token
        self.video_file = Path(video_file) if video_file is not None else None
        self.video_codec = video_codec
        self.width, self.height = width, height
        self.receive_slots = receive_slots
        self.decode = decode
        self.reply_seconds = reply_seconds
        self.ice_servers_override = ice_servers
        self.relay_only = relay_only
        self.reconnect_seconds = reconnect_seconds
        self.participant: Participant | None = None
        #: Others whose link dropped, who are expected back.
        self.reconnecting: set[str] = set()
        #: Every presence event received: (event, participant id).
        self.presence_events: list[tuple[str, str]] = []
        #: Each participant's media mode ("video" or "audio-only"), this client's included.
        self.modes: dict[str, str] = {}
        self.mode_changes: list[MediaModeChanged] = []
        self.quality: Quality | None = None
        self.qualities: list[Quality] = []
        self.recording: RecordingState | None = None
        #: Fresh negotiations after the first (reconnections).
        self.reconnections = 0
        #: What arrived on the data channel from others: readings, chat lines, files.
        self.readings: list[dict[str, Any]] = []
        self.chat: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        #: The server's answer to each message this client sent on the data channel, by id.
        self.replies: dict[str, dict[str, Any]] = {}
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
        self._ice_servers: list[IceServer] = []
        self._channel: Any = None
        self._channel_queue: list[str | bytes] = []
        self._camera: PausableTrack | None = None
        self._leaving = False
        self._reconnector: asyncio.Task[None] | None = None
        self._renegotiation: asyncio.Task[None] | None = None
        self._negotiated = False
        self._negotiation = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._picture_marks: dict[str, int] = {}
        self._stuck_reports: dict[str, int] = {}
        self._unstuck_at = 0.0

    async def __aenter__(self) -> ConsultClient:
        await self.join()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.leave()

    # Conversation.

    async def join(self) -> None:
        """Connect, join and negotiate media; returns once the server has answered."""
        self.joined_at = time.monotonic()
        await self._connect_and_join()
        await self.negotiate()

    async def _connect_and_join(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._socket = await connect(
            self.url,
            additional_headers=headers,
            max_size=2**20,
            ping_interval=PING_SECONDS,
            ping_timeout=PING_TIMEOUT,
            open_timeout=self.reply_seconds,
        )
        self.signalling_open = True
        self._reader = asyncio.create_task(
            self._read(self._socket), name="consult client signalling"
        )
        joined: Joined = await self._request(Join(), "joined")
        self.participant = joined.participant
        self.present = {}
        for other in joined.participants:
            self.present[other.id] = self.seen[other.id] = other
        self.reconnecting &= set(self.present)
        self._ice_servers = (
            joined.ice_servers if self.ice_servers_override is None else self.ice_servers_override
        )

    async def negotiate(self) -> None:
        """A fresh negotiation with a new peer connection (how a client reconnects)."""
        async with self._negotiation:
            await self._negotiate()

    async def _negotiate(self) -> None:
        self._picture_marks.clear()
        self._stuck_reports.clear()
        await self._close_connection()
        configuration = peer_configuration(self._ice_servers)
        if self.relay_only:
            configuration.iceTransportPolicy = RTCIceTransportPolicy.RELAY
        connection = RTCPeerConnection(configuration)
        self._connection = connection
        if self._negotiated:
            self.reconnections += 1
        self._negotiated = True
        audio, video = self._media()
        camera = PausableTrack(video)
        if self.modes.get(self.participant.id if self.participant else "") == "audio-only":
            camera.pause()
        self._camera = camera
        self._sent_tracks = [audio, camera]
        video = camera
        audio_sender = connection.addTransceiver(audio, direction="sendrecv")
        video_transceiver = connection.addTransceiver(video, direction="sendrecv")
        on_keyframe_request(video_transceiver.sender, self._keyframe_requested, also_encode=True)
        for _ in range(self.receive_slots - 1):
            connection.addTransceiver("audio", direction="recvonly")
            connection.addTransceiver("video", direction="recvonly")
        preferred = self._video_preference(camera.inner)
        if preferred:
            for transceiver in connection.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.setCodecPreferences(preferred)
        del audio_sender
        self._open_channel(connection)

        @connection.on("connectionstatechange")
        def on_state() -> None:
            if connection is self._connection and connection.connectionState == "failed":
                self._renegotiate_soon("the media connection failed")

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
        self._leaving = True
        for task in (self._reconnector, self._renegotiation):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
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

    # The call's controls.

    async def set_media_mode(self, mode: str) -> None:
        """The manual switch: "audio-only" or "video" (``media-mode``)."""
        await self._send(MediaMode(mode=mode))  # type: ignore[arg-type]

    async def set_link_limits(self, send_kbps: int | None, receive_kbps: int | None) -> None:
        await self._send(LinkLimits(send_kbps=send_kbps, receive_kbps=receive_kbps))

    async def start_recording(self) -> None:
        await self._send(RecordingControl(action="start"))

    async def stop_recording(self) -> None:
        await self._send(RecordingControl(action="stop"))

    async def _send(self, message: ClientMessage) -> None:
        if self._socket is None:
            raise ConsultClientError("not connected")
        await self._socket.send(encode(message))

    # The data channel.

    def send_reading(self, reading: dict[str, Any]) -> str:
        """Send a vital-sign reading (``consult.vitals``); its id, to find the reply by."""
        message = {"type": "reading", **reading}
        message.setdefault("id", new_message_id())
        self._channel_send(orjson.dumps(message).decode())
        return str(message["id"])

    def send_chat(self, text: str) -> str:
        message_id = new_message_id()
        self._channel_send(orjson.dumps({"type": "chat", "id": message_id, "text": text}).decode())
        return message_id

    def share_file(
        self,
        data: bytes,
        *,
        name: str,
        content_type: str | None = None,
        description: str | None = None,
    ) -> str:
        """Share an image or PDF; its id (the reply says where the record keeps it)."""
        file_id = new_message_id()
        header = {
            "type": "file",
            "id": file_id,
            "name": name,
            "size": len(data),
            "contentType": content_type,
            "description": description,
        }
        self._channel_send(orjson.dumps(header).decode())
        for start in range(0, len(data), CHUNK_BYTES):
            self._channel_send(data[start : start + CHUNK_BYTES])
        self._channel_send(orjson.dumps({"type": "file-end", "id": file_id}).decode())
        return file_id

    def _open_channel(self, connection: RTCPeerConnection) -> None:
        channel = connection.createDataChannel(CHANNEL_LABEL, ordered=True)
        self._channel = channel

        @channel.on("open")
        def on_open() -> None:
            if channel is self._channel:
                queued, self._channel_queue = self._channel_queue, []
                for item in queued:
                    channel.send(item)

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            if isinstance(message, str):
                self._on_data(message)

    def _channel_send(self, item: str | bytes) -> None:
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(item)
        else:
            self._channel_queue.append(item)  # sent when a channel opens (after reconnecting)

    def _on_data(self, text: str) -> None:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            logger.warning("the server sent a data message that is not JSON")
            return
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind in ("stored", "error") and isinstance(data.get("id"), str):
            self.replies[data["id"]] = data
        elif kind == "reading":
            self.readings.append(data)
        elif kind == "chat":
            self.chat.append(data)
        elif kind == "file":
            self.files.append(data)
        elif kind == "error":
            logger.warning("data channel error: %s", data.get("message"))
        self._notify()

    # What arrived.

    def received(self, participant_id: str, kind: str) -> RemoteTrackStats:
        """What arrived from someone (zero counts when nothing did)."""
        return self.stats.get((participant_id, kind)) or RemoteTrackStats(participant_id, kind)

    @property
    def video_frames_sent(self) -> int:
        """Test-pattern frames made for the current connection (0 for a video file)."""
        video = self._sent_tracks[1] if len(self._sent_tracks) > 1 else None
        if isinstance(video, PausableTrack):
            video = video.inner
        return video.frames if isinstance(video, TestPatternTrack) else 0

    def summary(self) -> dict[str, Any]:
        return {
            "participant": self.participant.to_dict() if self.participant else None,
            "seconds": round(time.monotonic() - self._started, 3),
            "participantsSeen": [p.to_dict() for p in self.seen.values()],
            "tracks": [s.to_dict(self.joined_at) for s in self.stats.values()],
            "keyframeRequests": self.keyframe_requests,
            "reconnections": self.reconnections,
            "modeChanges": [m.to_dict() for m in self.mode_changes],
            "quality": self.quality.to_dict() if self.quality else None,
            "recording": self.recording.to_dict() if self.recording else None,
            "replies": list(self.replies.values()),
            "readingsReceived": len(self.readings),
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

    async def _read(self, socket: ClientConnection) -> None:
        try:
            async for text in socket:
                try:
                    message = parse_server_message(text)
                except ProtocolError as error:
                    logger.warning("the server sent a bad message: %s", error.message)
                    continue
                self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            if socket is self._socket:
                self._line_closed()

    def _line_closed(self) -> None:
        self.signalling_open = False
        for future in self._replies.values():
            if not future.done():
                future.set_exception(ConsultClientError("the consult server closed the line"))
        if (
            not self._leaving
            and self.bye is None
            and self.participant is not None
            and self.reconnect_seconds > 0
            and (self._reconnector is None or self._reconnector.done())
        ):
            self._reconnector = asyncio.create_task(
                self._reconnect(), name="consult client reconnect"
            )
        self._notify()

    async def _reconnect(self) -> None:
        """The line dropped: connect, join and negotiate again until it works or time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_seconds
        wait = 0.5
        while not self._leaving:
            try:
                if self._socket is not None:
                    with contextlib.suppress(Exception):
                        await self._socket.close()
                await self._connect_and_join()
                await self.negotiate()
                logger.info("reconnected to the consult")
                return
            except (
                ConsultClientError,
                OSError,
                InvalidHandshake,
                ConnectionClosed,
                TimeoutError,
            ) as error:
                logger.info("could not reconnect yet: %s", error)
            if loop.time() + wait > deadline:
                self.errors.append(Error("client", "could not reconnect to the consult in time"))
                self._notify()
                return
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECONNECT_BACKOFF_MAX)

    def _check_pictures(self, quality: Quality) -> None:
        """Negotiate afresh when someone's picture is stuck on the way in.

        aiortc's receiver holds every frame behind a packet that never came (lost, and its
        retransmission too) until 512 packets have passed, which on a thin link is minutes
        of a frozen picture; a new connection starts clean. Browsers do not need this.
        """
        for entry in quality.participants:
            pid = str(entry.get("participantId"))
            forwarded = entry.get("framesPerSecond") or 0
            decoded = self.received(pid, "video").frames
            previous = self._picture_marks.get(pid)
            self._picture_marks[pid] = decoded
            stuck = forwarded >= 2 and previous is not None and decoded == previous
            self._stuck_reports[pid] = self._stuck_reports.get(pid, 0) + 1 if stuck else 0
            now = time.monotonic()
            if self._stuck_reports[pid] >= STUCK_REPORTS and now > self._unstuck_at:
                self._unstuck_at = now + STUCK_RETRY_SECONDS
                self._stuck_reports.clear()
                self._renegotiate_soon(f"the picture of {pid} is stuck")

    def _renegotiate_soon(self, why: str) -> None:
        if self._leaving or not self.signalling_open or self._negotiation.locked():
            return
        if self._reconnector is not None and not self._reconnector.done():
            return
        if self._renegotiation is not None and not self._renegotiation.done():
            return
        logger.info("%s: negotiating again", why)

        async def again() -> None:
            try:
                await self.negotiate()
            except (ConsultClientError, ConnectionClosed) as error:
                logger.info("could not negotiate again: %s", error)

        self._renegotiation = asyncio.create_task(again(), name="consult client renegotiate")

    def _on_message(self, message: Any) -> None:
        if isinstance(message, Joined):
            self._resolve("joined", message)
        elif isinstance(message, Answer):
            self._resolve("answer", message)
        elif isinstance(message, Tracks):
            self.tracks = {t.mid: t.participant_id for t in message.tracks}
        elif isinstance(message, Presence):
            pid = message.participant.id
            self.presence_events.append((message.event, pid))
            if message.event in ("joined", "reconnected"):
                self.present[pid] = self.seen[pid] = message.participant
                self.reconnecting.discard(pid)
            elif message.event == "reconnecting":
                self.reconnecting.add(pid)
            else:
                self.present.pop(pid, None)
                self.reconnecting.discard(pid)
                self.modes.pop(pid, None)
        elif isinstance(message, MediaModeChanged):
            self.mode_changes.append(message)
            self.modes[message.participant_id] = message.mode
            if self.participant is not None and message.participant_id == self.participant.id:
                if self._camera is not None:
                    if message.mode == "audio-only":
                        self._camera.pause()
                    else:
                        self._camera.resume()
        elif isinstance(message, Quality):
            self.quality = message
            self.qualities = [*self.qualities[-199:], message]
            self._check_pictures(message)
        elif isinstance(message, RecordingState):
            self.recording = message
        elif isinstance(message, Error):
            self.errors.append(message)
            if message.code == "media-failed":
                self._renegotiate_soon("the server says the media failed")
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
        connection, self._connection = self._connection, None
        if connection is not None:
            # Closing a connection whose path died waits for its TURN allocation's deletion
            # to time out: a new negotiation must not wait for that.
            closing = asyncio.create_task(connection.close(), name="consult client close")
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
            if self._leaving:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(closing), CLOSE_SECONDS)
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


def read_vitals(path: Path) -> list[dict[str, Any]]:
    """Readings to send, one JSON object a line (``consult.vitals``), blank lines skipped.

    A reading may say ``"afterSeconds"``: when to send it, counted from joining; otherwise
    it goes a second after the one before. A line that is not a JSON object is refused
    with its number.
    """
    readings = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            reading = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not JSON: {error}") from None
        if not isinstance(reading, dict):
            raise ValueError(f"{path} line {number} is not a JSON object")
        readings.append(reading)
    return readings


async def run_client(
    url: str,
    *,
    token: str | None,
    seconds: float,
    video_file: Path | None = None,
    vitals: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Join, stay ``seconds``, leave; what was received (see :meth:`ConsultClient.summary`).

    ``vitals`` are sent over the call's data channel as a device gateway would (see
    :func:`read_vitals`); the summary's ``replies`` say where each was kept, or why not.
    """
    client = ConsultClient(url, token=token, video_file=video_file)
    loop = asyncio.get_running_loop()
    try:
        await client.join()
        joined = loop.time()
        sent: list[str] = []
        due = 0.0
        for reading in vitals or []:
            reading = dict(reading)
            due = float(reading.pop("afterSeconds", due + 1.0))
            await asyncio.sleep(max(0.0, joined + due - loop.time()))
            sent.append(client.send_reading(reading))
        left = max(0.0, joined + seconds - loop.time())
        if sent:
            with contextlib.suppress(TimeoutError):
                await client.wait_for(lambda c: set(sent) <= set(c.replies), left)
        await asyncio.sleep(max(0.0, joined + seconds - loop.time()))
    except (ConsultClientError, OSError, InvalidHandshake) as error:
        client.errors.append(Error("client", f"could not join: {error}"))
    finally:
        await client.leave()
    return client.summary()
