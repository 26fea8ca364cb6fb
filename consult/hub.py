"""The media hub: an SFU on aiortc that forwards encoded frames and never decodes them.

Each participant holds one ``RTCPeerConnection`` with the hub. The participant's offer
says which m-lines it sends on (its microphone and camera: at most one audio and one video
are taken) and which it receives on (one audio and one video per other participant it wants,
three of each for a full room). The hub answers with the same m-lines, receiving on the
first and sending on the others, so the connection never needs renegotiating while people
come and go: when someone joins, their audio and video are attached to a free receiving
m-line of everyone else, and a ``tracks`` message says which m-line carries whom.

Frames travel as the sender encoded them (``consult.passthrough``): the hub's receiver
reassembles them, :class:`~consult.tracks.EncodedSource` offers them to the
:class:`~consult.tracks.ForwardedTrack` of each viewer, and the viewer's ``RTCRtpSender``
packetises them without encoding. Keyframe requests from viewers go back to the sender.

Every connection of a room uses one video codec, so frames can pass unchanged: the first
participant's preferred one of VP8 and H.264 (VP8 unless it does not offer VP8), and later
participants must offer it too; audio is Opus.

Weak links are ``consult.quality``'s: each participant has a
:class:`~consult.quality.LinkMonitor` for as long as they are in the room (across
reconnections), and the hub's :class:`~consult.quality.LinkSupervisor` caps bit rates,
switches participants to audio only and back, and reports. Whatever else wants the room's
media — the recorder — is a :class:`MediaTap`, told of every source as it starts; a
participant's data channel goes to :attr:`MediaHub.on_datachannel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from consult.ice import peer_configuration
from consult.passthrough import on_keyframe_request, receive_encoded
from consult.protocol import Participant, TrackInfo
from consult.quality import LinkMonitor, LinkPolicy, LinkSupervisor, limit_in_answer
from consult.tracks import EncodedSource, ForwardedTrack

logger = logging.getLogger(__name__)

#: Video codecs the hub forwards, in the order it prefers them.
VIDEO_CODECS = ("video/VP8", "video/H264")
AUDIO_CODEC = "audio/opus"
MAX_MEDIA_SECTIONS = 16
_REVERSE = {"sendonly": "recvonly", "recvonly": "sendonly", "sendrecv": "sendrecv"}


class NegotiationError(Exception):
    """An offer the hub cannot answer; ``code`` and the text go back to the participant."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: Other participants' ``tracks`` that changed anyway (an old connection was closed).
        self.track_maps: dict[str, list[TrackInfo]] = {}


@dataclass
class Slot:
    """One of a participant's receiving m-lines and whose media the hub sends on it."""

    transceiver: RTCRtpTransceiver
    track: ForwardedTrack
    participant_id: str | None = None


@dataclass
class Peer:
    """A participant's peer connection with the hub, its sources and its slots."""

    participant_id: str
    connection: RTCPeerConnection
    link: LinkMonitor
    participant: Participant | None = None
    sources: dict[str, EncodedSource] = field(default_factory=dict)
    slots: dict[str, list[Slot]] = field(default_factory=lambda: {"audio": [], "video": []})
    closing: bool = False

    def free_slot(self, kind: str) -> Slot | None:
        return next((s for s in self.slots[kind] if s.participant_id is None), None)

    def carries(self, participant_id: str) -> bool:
        return any(s.participant_id == participant_id for k in self.slots for s in self.slots[k])

    def track_map(self) -> list[TrackInfo]:
        return [
            TrackInfo(mid=str(slot.transceiver.mid), kind=kind, participant_id=slot.participant_id)
            for kind in ("audio", "video")
            for slot in self.slots[kind]
            if slot.participant_id is not None
        ]


@dataclass
class HubRoom:
    room_id: str
    video_codec: str | None = None
    peers: dict[str, Peer] = field(default_factory=dict)
    #: Each participant's link, kept across reconnections until they leave for good.
    links: dict[str, LinkMonitor] = field(default_factory=dict)
    taps: list[MediaTap] = field(default_factory=list)


class MediaTap(Protocol):
    """Something that takes a room's media besides the viewers (the recorder)."""

    def source_added(self, peer: Peer, source: EncodedSource) -> None: ...


@dataclass(frozen=True)
class Negotiated:
    """The hub's answer, and every participant whose ``tracks`` changed because of it."""

    sdp: str
    track_maps: dict[str, list[TrackInfo]]


#: Called with (room id, participant id) when a participant's connection fails.
ConnectionLost = Callable[[str, str], Awaitable[None]]
#: Called with (room id, participant id, RTCDataChannel) when a participant opens one.
DataChannelOpened = Callable[[str, str, Any], None]


def _codec_capabilities(mime_type: str, kind: str) -> list[RTCRtpCodecCapability]:
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in codecs if c.mimeType.lower() == mime_type.lower()]
    return chosen + [c for c in codecs if c.mimeType.lower() == f"{kind}/rtx"]


def _offered_mime_types(media: aiortc_sdp.MediaDescription) -> list[str]:
    mimes = []
    for codec in media.rtp.codecs:
        mime = codec.mimeType.lower()
        if mime == "video/h264" and str(codec.parameters.get("packetization-mode")) != "1":
            continue
        mimes.append(mime)
    return mimes


class MediaHub:
    """The rooms' media on this worker: peer connections, sources, slots, keyframe relay."""

    def __init__(
        self,
        *,
        configuration: RTCConfiguration | None = None,
        on_connection_lost: ConnectionLost | None = None,
        link_policy: LinkPolicy | None = None,
    ) -> None:
        self._configuration = configuration or peer_configuration([])
        #: Called with (room id, participant id) when a participant's connection fails.
        self.on_connection_lost = on_connection_lost
        self.on_datachannel: DataChannelOpened | None = None
        self.supervisor = LinkSupervisor(self, link_policy or LinkPolicy())
        self._rooms: dict[str, HubRoom] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def rooms(self) -> dict[str, HubRoom]:
        return self._rooms

    async def negotiate(
        self,
        room_id: str,
        participant_id: str,
        offer_sdp: str,
        *,
        participant: Participant | None = None,
    ) -> Negotiated:
        """Answer a participant's offer with a new peer connection (replacing any old one)."""
        description = self._parse(offer_sdp)
        room = self._rooms.get(room_id) or HubRoom(room_id)
        video_codec = room.video_codec or self._choose_video_codec(description)
        previous = await self.remove(room_id, participant_id, keep_room=True, forget=False)
        self._rooms[room_id] = room
        link = room.links.get(participant_id)
        if link is None:
            role = participant.role if participant else None
            link = room.links[participant_id] = self.supervisor.monitor(participant_id, role)
        link.new_connection()
        try:
            peer = await self._answer(
                room, participant_id, description, offer_sdp, video_codec, link, participant
            )
        except NegotiationError as error:
            error.track_maps = previous
            if not room.peers:
                self._rooms.pop(room_id, None)
            raise
        room.video_codec = video_codec
        room.peers[participant_id] = peer
        changed = {participant_id, *previous}
        for other in room.peers.values():
            if other is not peer:
                if self._fill(other, room):
                    changed.add(other.participant_id)
        self._fill(peer, room)
        self.supervisor.apply_modes(room)
        self.supervisor.ensure_running()
        local = peer.connection.localDescription
        return Negotiated(
            sdp=self._with_limits(peer, description, local.sdp),
            track_maps={pid: room.peers[pid].track_map() for pid in changed},
        )

    def link(self, room_id: str, participant_id: str) -> LinkMonitor | None:
        room = self._rooms.get(room_id)
        return room.links.get(participant_id) if room else None

    def add_tap(self, room_id: str, tap: MediaTap) -> None:
        """Tell ``tap`` of the room's sources now and of each new one as it starts."""
        room = self._rooms.setdefault(room_id, HubRoom(room_id))
        room.taps.append(tap)
        for peer in room.peers.values():
            for source in peer.sources.values():
                tap.source_added(peer, source)

    def remove_tap(self, room_id: str, tap: MediaTap) -> None:
        room = self._rooms.get(room_id)
        if room is not None and tap in room.taps:
            room.taps.remove(tap)

    async def remove(
        self,
        room_id: str,
        participant_id: str,
        *,
        keep_room: bool = False,
        forget: bool = True,
    ) -> dict[str, list[TrackInfo]]:
        """Close a participant's connection; the others' ``tracks`` that changed.

        Without ``forget`` the participant's link (mode, limits) stays for their next
        connection: a reconnection, not a departure.
        """
        room = self._rooms.get(room_id)
        if room is not None and forget:
            room.links.pop(participant_id, None)
        if room is None or participant_id not in room.peers:
            if room is not None and not room.peers and not keep_room and not room.taps:
                del self._rooms[room_id]
            return {}
        peer = room.peers.pop(participant_id)
        changed = {}
        for other in room.peers.values():
            freed = False
            for kind in ("audio", "video"):
                for slot in other.slots[kind]:
                    if slot.participant_id == participant_id:
                        self._disconnect(slot)
                        slot.participant_id = None
                        freed = True
            if freed:
                self._fill(other, room)
                changed[other.participant_id] = other.track_map()
        await self._close_peer(peer)
        self.supervisor.apply_modes(room)
        if not room.peers and not keep_room and not room.taps:
            del self._rooms[room_id]
        return changed

    async def close_room(self, room_id: str) -> None:
        room = self._rooms.pop(room_id, None)
        if room is not None:
            for peer in list(room.peers.values()):
                await self._close_peer(peer)
            room.peers.clear()

    async def close(self) -> None:
        await self.supervisor.close()
        for room_id in list(self._rooms):
            await self.close_room(room_id)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stats(self) -> dict[str, Any]:
        """What the hub received and forwarded, per room and participant."""
        rooms = {}
        for room_id, room in self._rooms.items():
            peers = {}
            for pid, peer in room.peers.items():
                peers[pid] = {
                    "connectionState": peer.connection.connectionState,
                    "mode": peer.link.mode,
                    "limitKbps": None
                    if peer.link.limit_bps is None
                    else peer.link.limit_bps // 1000,
                    "sources": {
                        kind: {
                            "frames": source.frames_received,
                            "bytes": source.bytes_received,
                            "keyframes": source.keyframes_received,
                            "keyframeBytes": source.keyframe_bytes_received,
                            "keyframeRequestsSent": source.keyframe_requests_sent,
                        }
                        for kind, source in peer.sources.items()
                    },
                    "forwarded": [
                        {
                            "mid": slot.transceiver.mid,
                            "kind": kind,
                            "participantId": slot.participant_id,
                            "frames": slot.track.frames_forwarded,
                            "dropped": slot.track.frames_dropped,
                        }
                        for kind in ("audio", "video")
                        for slot in peer.slots[kind]
                    ],
                }
            rooms[room_id] = {"videoCodec": room.video_codec, "participants": peers}
        return rooms

    @staticmethod
    def _parse(offer_sdp: str) -> aiortc_sdp.SessionDescription:
        try:
            description = aiortc_sdp.SessionDescription.parse(offer_sdp)
        except Exception as error:  # aiortc's parser raises whatever the text trips
            raise NegotiationError(
                "invalid-sdp", f"the offer is not valid SDP: {error!r}"
            ) from None
        media = [m for m in description.media if m.kind in ("audio", "video")]
        if not media:
            raise NegotiationError("invalid-sdp", "the offer has no audio or video m-line")
        if len(description.media) > MAX_MEDIA_SECTIONS:
            raise NegotiationError(
                "invalid-sdp", f"the offer has more than {MAX_MEDIA_SECTIONS} m-lines"
            )
        for m in description.media:
            if m.kind not in ("audio", "video", "application"):
                raise NegotiationError("invalid-sdp", f'the offer has a "{m.kind}" m-line')
        bundle = next((g for g in description.group if g.semantic == "BUNDLE"), None)
        mids = {m.rtp.muxId for m in description.media if m.port != 0}
        if bundle is None or not mids <= set(bundle.items):
            raise NegotiationError(
                "invalid-sdp", "the offer must BUNDLE every m-line on one transport"
            )
        if not all(m.ice is not None and m.ice.usernameFragment and m.dtls for m in media):
            raise NegotiationError(
                "invalid-sdp", "the offer lacks ICE credentials or a DTLS fingerprint"
            )
        return description

    @staticmethod
    def _choose_video_codec(description: aiortc_sdp.SessionDescription) -> str | None:
        video = [m for m in description.media if m.kind == "video"]
        if not video:
            return None
        offered = _offered_mime_types(video[0])
        for mime in VIDEO_CODECS:
            if mime.lower() in offered:
                return mime
        raise NegotiationError(
            "codec-unsupported", "the offer has neither VP8 nor H.264 (packetization-mode 1)"
        )

    async def _answer(
        self,
        room: HubRoom,
        participant_id: str,
        description: aiortc_sdp.SessionDescription,
        offer_sdp: str,
        video_codec: str | None,
        link: LinkMonitor,
        participant: Participant | None = None,
    ) -> Peer:
        connection = RTCPeerConnection(self._configuration)
        peer = Peer(
            participant_id=participant_id,
            connection=connection,
            link=link,
            participant=participant,
        )
        name = f"{room.room_id}/{participant_id}"
        ssrcs: dict[str, int] = {}
        receiving: set[str] = set()
        try:
            for media in description.media:
                if media.kind not in ("audio", "video"):
                    continue
                kind = media.kind
                mime = AUDIO_CODEC if kind == "audio" else video_codec
                if mime is None or mime.lower() not in _offered_mime_types(media):
                    raise NegotiationError(
                        "codec-unsupported",
                        f"this consult's {kind} is {(mime or '').split('/')[-1]}, "
                        f"which the offer's {kind} m-line does not offer",
                    )
                direction = _REVERSE.get(media.direction or "sendrecv", "inactive")
                if media.port == 0:
                    direction = "inactive"
                if direction in ("recvonly", "sendrecv") and kind in receiving:
                    # Only one microphone and one camera per participant.
                    direction = "sendonly" if direction == "sendrecv" else "inactive"
                if direction in ("recvonly", "sendrecv"):
                    receiving.add(kind)
                    if media.ssrc and media.rtp.muxId:
                        ssrcs[media.rtp.muxId] = media.ssrc[0].ssrc
                transceiver = connection.addTransceiver(kind, direction=direction)
                transceiver.setCodecPreferences(_codec_capabilities(mime, kind))
                if direction in ("sendonly", "sendrecv"):
                    slot = self._make_slot(transceiver, kind)
                    peer.slots[kind].append(slot)
                    self.supervisor.watch_slot(peer, slot)

            @connection.on("track")
            def on_track(track: Any) -> None:
                transceiver = next(
                    t for t in connection.getTransceivers() if t.receiver.track is track
                )
                source = self._make_source(
                    track,
                    transceiver.receiver,
                    media_ssrc=ssrcs.get(str(transceiver.mid)),
                    name=f"{name}/{track.kind}",
                )
                peer.sources[track.kind] = source
                self.supervisor.watch_source(peer, source)
                source.start()
                for tap in list(room.taps):
                    tap.source_added(peer, source)

            @connection.on("datachannel")
            def on_datachannel(channel: Any) -> None:
                if self.on_datachannel is not None and not peer.closing:
                    self.on_datachannel(room.room_id, participant_id, channel)

            @connection.on("connectionstatechange")
            async def on_state() -> None:
                state = connection.connectionState
                logger.info("peer %s is %s", name, state)
                if state in ("failed", "closed") and not peer.closing:
                    current = room.peers.get(participant_id)
                    if current is peer and self.on_connection_lost is not None:
                        await self.on_connection_lost(room.room_id, participant_id)

            await connection.setRemoteDescription(
                RTCSessionDescription(sdp=offer_sdp, type="offer")
            )
            await connection.setLocalDescription(await connection.createAnswer())
        except NegotiationError:
            await self._close_peer(peer)
            raise
        except Exception as error:
            await self._close_peer(peer)
            logger.info("offer from %s refused: %r", name, error)
            raise NegotiationError(
                "invalid-sdp", f"the offer could not be answered: {error}"
            ) from None
        logger.info(
            "peer %s: %d sources, %d audio and %d video slots, %s",
            name,
            len(peer.sources),
            len(peer.slots["audio"]),
            len(peer.slots["video"]),
            video_codec,
        )
        return peer

    @staticmethod
    def _with_limits(
        peer: Peer, description: aiortc_sdp.SessionDescription, answer_sdp: str
    ) -> str:
        """The answer, with the participant's send limit on the video m-line it sends on."""
        kbps = peer.link.send_kbps
        if kbps is None:
            return answer_sdp
        sending = {
            str(t.mid)
            for t in peer.connection.getTransceivers()
            if t.kind == "video" and t.direction in ("recvonly", "sendrecv")
        }
        return limit_in_answer(answer_sdp, {mid: kbps for mid in sending})

    def _make_slot(self, transceiver: RTCRtpTransceiver, kind: str) -> Slot:
        """A receiving m-line of the participant's: the hub sends others' frames on it."""
        track = ForwardedTrack(kind)
        transceiver.sender.replaceTrack(track)
        on_keyframe_request(transceiver.sender, track.request_keyframe, also_encode=False)
        return Slot(transceiver=transceiver, track=track)

    def _make_source(
        self,
        track: MediaStreamTrack,
        receiver: RTCRtpReceiver,
        *,
        media_ssrc: int | None,
        name: str,
    ) -> EncodedSource:
        """What the participant sends on a track, read as encoded frames (before it starts)."""
        receive_encoded(track)
        return EncodedSource(track, receiver, media_ssrc=media_ssrc, name=name)

    def _connect(self, slot: Slot, source: EncodedSource) -> None:
        slot.track.attach(source)

    def _disconnect(self, slot: Slot) -> None:
        slot.track.detach()

    def _fill(self, viewer: Peer, room: HubRoom) -> bool:
        """Attach everyone's media to the viewer's free slots; whether anything changed."""
        changed = False
        for publisher in room.peers.values():
            if publisher is viewer or viewer.carries(publisher.participant_id):
                continue
            for kind, source in publisher.sources.items():
                slot = viewer.free_slot(kind)
                if slot is None:
                    continue
                slot.participant_id = publisher.participant_id
                self._connect(slot, source)
                changed = True
        return changed

    async def _close_peer(self, peer: Peer) -> None:
        peer.closing = True
        for source in peer.sources.values():
            await source.close()
        for kind in ("audio", "video"):
            for slot in peer.slots[kind]:
                slot.track.stop()
        await peer.connection.close()
