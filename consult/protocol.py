"""The consult signalling protocol: JSON text messages on one WebSocket per participant.

Every message is an object with a ``type``. The participant sends:

- ``{"type": "join"}`` — enter the consult's room. Answered by ``joined`` (or an ``error``
  such as ``room-full``).
- ``{"type": "offer", "sdp": "..."}`` — a complete SDP offer (aiortc does no trickle ICE,
  so gather every candidate first), shaped as WebRTC's ``RTCSessionDescriptionInit``: a
  browser may send ``JSON.stringify(pc.localDescription)``. Answered by ``answer`` and
  ``tracks``. Offer one receiving audio and one receiving video m-line per other
  participant you want to hear and see (three of each for a full room of four); send on at
  most one audio and one video m-line. Each offer is a fresh negotiation with a new peer
  connection, replacing the previous one: that is how to reconnect (aiortc has no ICE
  restart).
- ``{"type": "leave"}`` — leave the room; the server closes the socket.
- ``{"type": "media-mode", "mode": "audio-only" | "video"}`` — the manual switch: take your
  camera off the call and stop receiving the others' video (a thin link), or come back.
  While you chose audio only, the server never switches you back by itself.
- ``{"type": "link-limits", "sendKbps": 300, "receiveKbps": 600}`` — what your link
  carries, if you know it (either may be null): the server holds what you send and what it
  sends you to it, never above the limits configured for the consult.
- ``{"type": "recording", "action": "start" | "stop"}`` — record the call (only when the
  patient's Consent for recording is on file; otherwise an ``error``
  ``recording-not-allowed``), or stop recording.

The server sends:

- ``joined`` — ``participant`` (you), ``participants`` (the others present),
  ``iceServers`` (STUN/TURN as ``RTCIceServer`` dictionaries, for your peer connection),
  ``maxParticipants``.
- ``answer`` — ``{"type": "answer", "sdp": "..."}``, for ``pc.setRemoteDescription``.
- ``tracks`` — which of your receiving m-lines carries whom:
  ``[{"mid": "2", "kind": "video", "participantId": "..."}]``; sent after each answer and
  whenever someone's media comes or goes. An m-line not listed carries nobody now.
- ``presence`` — ``{"event": "joined" | "left" | "reconnecting" | "reconnected",
  "participant": {...}}``. A participant whose link drops is ``reconnecting`` (their place
  is kept for a grace period and their media comes back when they do), not ``left``.
- ``media-mode`` — ``{"participantId", "mode": "audio-only" | "video", "reason":
  "weak-link" | "link-recovered" | "manual", "automatic": bool, "message"}``: someone's call
  became audio only, or video again; sent to everyone, the participant included. To that
  participant it is also an instruction: on ``audio-only`` stop sending video
  (``sender.replaceTrack(null)``), on ``video`` send it again. Show the others a notice.
- ``quality`` — every two seconds, your connection as the server measures it, for the
  quality indicator: ``{"rttMs", "level": "good" | "fair" | "poor", "mode",
  "uplink": {"lossPercent", "kbps", "estimateKbps", "limitKbps", "framesPerSecond"},
  "downlink": {"lossPercent", "kbps", "estimateKbps", "limitKbps"},
  "participants": [{"participantId", "framesPerSecond", "mode", "level"}]}`` — figures
  not measured yet are null; ``participants[].framesPerSecond`` is the frame rate of that
  participant's video reaching you through the server.
- ``recording`` — ``{"state": "on" | "off", "startedBy", "since", "document", "consent",
  "reason"}``: the call is being recorded (show it to everyone, the patient first), or no
  longer; ``document`` is the DocumentReference that keeps it. It is also sent when the
  patient's consent to recording changes during the call: ``consent`` says whether it is on
  file now (null: not said), and a recording the patient's withdrawn consent stopped says
  ``"reason": "consent-withdrawn"``.
- ``error`` — ``{"code": "...", "message": "...", "inReplyTo": "offer"}``: something a
  person can act on; the conversation goes on.
- ``bye`` — ``{"reason": "..."}``; the server closes the socket after it.

Participants are ``{"id", "displayName", "role"}``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import orjson

logger = logging.getLogger(__name__)

#: The largest message accepted: a complete offer for a full room is some tens of KiB.
MAX_MESSAGE_BYTES = 256 * 1024
MAX_PARTICIPANTS = 4


class ProtocolError(Exception):
    """A message the server cannot act on; ``code`` and the text go back to the sender."""

    def __init__(self, code: str, message: str, *, in_reply_to: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.in_reply_to = in_reply_to

    def to_message(self) -> Error:
        return Error(code=self.code, message=self.message, in_reply_to=self.in_reply_to)


@dataclass(frozen=True)
class Participant:
    """Someone in a consult, as the authenticated route identified them."""

    id: str
    display_name: str
    role: str
    #: The scopes of the token their socket was opened with (None: a user's usual ones):
    #: what the call writes for them goes no further. Never shown to the others.
    scopes: str | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "displayName": self.display_name, "role": self.role}

    def to_envelope(self) -> dict[str, str | None]:
        """As workers pass it between them (with the scopes)."""
        return {**self.to_dict(), "scopes": self.scopes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Participant:
        scopes = data.get("scopes")
        return cls(
            id=data["id"],
            display_name=data["displayName"],
            role=data["role"],
            scopes=scopes if isinstance(scopes, str) else None,
        )


@dataclass(frozen=True)
class IceServer:
    """WebRTC's ``RTCIceServer`` dictionary."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            data["username"] = self.username
        if self.credential is not None:
            data["credential"] = self.credential
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IceServer:
        urls = data["urls"]
        return cls(
            urls=[urls] if isinstance(urls, str) else list(urls),
            username=data.get("username"),
            credential=data.get("credential"),
        )


@dataclass(frozen=True)
class TrackInfo:
    """One of a participant's receiving m-lines and whose media it carries."""

    mid: str
    kind: str
    participant_id: str

    def to_dict(self) -> dict[str, str]:
        return {"mid": self.mid, "kind": self.kind, "participantId": self.participant_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackInfo:
        return cls(mid=data["mid"], kind=data["kind"], participant_id=data["participantId"])


# Messages from the participant.


@dataclass(frozen=True)
class Join:
    type: ClassVar[str] = "join"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type}


@dataclass(frozen=True)
class Offer:
    sdp: str
    type: ClassVar[str] = "offer"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "sdp": self.sdp}


@dataclass(frozen=True)
class Leave:
    type: ClassVar[str] = "leave"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type}


# Media quality, modes and recording (weak rural links, recording with consent).

MEDIA_MODES = ("audio-only", "video")
MediaModeName = Literal["audio-only", "video"]


@dataclass(frozen=True)
class MediaMode:
    """The participant's manual switch between audio only and video."""

    mode: MediaModeName
    type: ClassVar[str] = "media-mode"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "mode": self.mode}


@dataclass(frozen=True)
class LinkLimits:
    """What the participant says their link carries, in kbit/s (None: not said)."""

    send_kbps: int | None = None
    receive_kbps: int | None = None
    type: ClassVar[str] = "link-limits"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "sendKbps": self.send_kbps, "receiveKbps": self.receive_kbps}


@dataclass(frozen=True)
class RecordingControl:
    action: Literal["start", "stop"]
    type: ClassVar[str] = "recording"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "action": self.action}


ClientMessage = Join | Offer | Leave | MediaMode | LinkLimits | RecordingControl


# Messages from the server.


@dataclass(frozen=True)
class Joined:
    participant: Participant
    participants: list[Participant]
    ice_servers: list[IceServer]
    max_participants: int = MAX_PARTICIPANTS
    type: ClassVar[str] = "joined"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "participant": self.participant.to_dict(),
            "participants": [p.to_dict() for p in self.participants],
            "iceServers": [s.to_dict() for s in self.ice_servers],
            "maxParticipants": self.max_participants,
        }


@dataclass(frozen=True)
class Answer:
    sdp: str
    type: ClassVar[str] = "answer"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "sdp": self.sdp}


@dataclass(frozen=True)
class Tracks:
    tracks: list[TrackInfo] = field(default_factory=list)
    type: ClassVar[str] = "tracks"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "tracks": [t.to_dict() for t in self.tracks]}


PresenceEvent = Literal["joined", "left", "reconnecting", "reconnected"]
PRESENCE_EVENTS = ("joined", "left", "reconnecting", "reconnected")


@dataclass(frozen=True)
class Presence:
    event: PresenceEvent
    participant: Participant
    type: ClassVar[str] = "presence"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "event": self.event, "participant": self.participant.to_dict()}


@dataclass(frozen=True)
class Error:
    code: str
    message: str
    in_reply_to: str | None = None
    type: ClassVar[str] = "error"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "code": self.code, "message": self.message}
        if self.in_reply_to is not None:
            data["inReplyTo"] = self.in_reply_to
        return data


@dataclass(frozen=True)
class Bye:
    reason: str
    type: ClassVar[str] = "bye"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "reason": self.reason}


@dataclass(frozen=True)
class MediaModeChanged:
    participant_id: str
    mode: MediaModeName
    reason: Literal["weak-link", "link-recovered", "manual"]
    automatic: bool
    message: str
    type: ClassVar[str] = "media-mode"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "participantId": self.participant_id,
            "mode": self.mode,
            "reason": self.reason,
            "automatic": self.automatic,
            "message": self.message,
        }


@dataclass(frozen=True)
class Quality:
    """A participant's connection as the hub measures it (see the module docstring)."""

    rtt_ms: float | None
    level: str
    mode: str
    uplink: dict[str, float | None]
    downlink: dict[str, float | None]
    participants: list[dict[str, Any]] = field(default_factory=list)
    type: ClassVar[str] = "quality"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "rttMs": self.rtt_ms,
            "level": self.level,
            "mode": self.mode,
            "uplink": dict(self.uplink),
            "downlink": dict(self.downlink),
            "participants": [dict(p) for p in self.participants],
        }


#: Why a recording stopped without anyone stopping it.
RecordingEnd = Literal["consent-withdrawn"]


@dataclass(frozen=True)
class RecordingState:
    state: Literal["on", "off"]
    started_by: Participant | None = None
    since: str | None = None
    document: str | None = None
    #: Whether the patient's consent to recording is on file now (None: not said).
    consent: bool | None = None
    #: Why the recording stopped, when nobody stopped it ("consent-withdrawn").
    reason: RecordingEnd | None = None
    type: ClassVar[str] = "recording"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "state": self.state,
            "startedBy": self.started_by.to_dict() if self.started_by else None,
            "since": self.since,
            "document": self.document,
            "consent": self.consent,
            "reason": self.reason,
        }


ServerMessage = (
    Joined | Answer | Tracks | Presence | Error | Bye | MediaModeChanged | Quality | RecordingState
)


def encode(message: ClientMessage | ServerMessage) -> str:
    return orjson.dumps(message.to_dict()).decode()


def _object(text: str | bytes) -> dict[str, Any]:
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError(
            "message-too-large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes"
        )
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise ProtocolError("invalid-json", f"the message is not JSON: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("invalid-message", 'a message is a JSON object with a "type"')
    return data


def parse_client_message(text: str | bytes) -> ClientMessage:
    """The participant's message, or :class:`ProtocolError` saying what is wrong with it."""
    data = _object(text)
    kind = data["type"]
    if kind == "join":
        return Join()
    if kind == "leave":
        return Leave()
    if kind == "offer":
        sdp = data.get("sdp")
        if not isinstance(sdp, str) or not sdp.strip():
            raise ProtocolError(
                "invalid-message", 'an offer carries its SDP as a string in "sdp"', in_reply_to=kind
            )
        return Offer(sdp=sdp)
    if kind in ("media-mode", "link-limits", "recording"):
        return _parse_media_message(kind, data)
    raise ProtocolError(
        "unknown-type",
        f'unknown message type "{kind[:40]}"; send join, offer, leave, media-mode, '
        "link-limits or recording",
        in_reply_to=kind[:40],
    )


#: The link limits a participant may state, in kbit/s (below the lower one no call works).
LINK_KBPS_RANGE = (32, 100_000)


def _parse_media_message(kind: str, data: dict[str, Any]) -> ClientMessage:
    if kind == "media-mode":
        mode = data.get("mode")
        if mode not in MEDIA_MODES:
            raise ProtocolError(
                "invalid-message", '"mode" must be "audio-only" or "video"', in_reply_to=kind
            )
        return MediaMode(mode=mode)
    if kind == "recording":
        action = data.get("action")
        if action not in ("start", "stop"):
            raise ProtocolError(
                "invalid-message", '"action" must be "start" or "stop"', in_reply_to=kind
            )
        return RecordingControl(action=action)
    limits: dict[str, int | None] = {}
    low, high = LINK_KBPS_RANGE
    for name in ("sendKbps", "receiveKbps"):
        value = data.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ):
            raise ProtocolError(
                "invalid-message",
                f'"{name}" must be a whole number of kbit/s from {low} to {high}, or null',
                in_reply_to=kind,
            )
        limits[name] = value
    return LinkLimits(send_kbps=limits["sendKbps"], receive_kbps=limits["receiveKbps"])


def parse_server_message(text: str | bytes) -> ServerMessage:
    """The server's message, for clients; :class:`ProtocolError` if it is not one."""
    data = _object(text)
    kind = data["type"]
    try:
        if kind == "joined":
            return Joined(
                participant=Participant.from_dict(data["participant"]),
                participants=[Participant.from_dict(p) for p in data["participants"]],
                ice_servers=[IceServer.from_dict(s) for s in data["iceServers"]],
                max_participants=int(data["maxParticipants"]),
            )
        if kind == "answer":
            return Answer(sdp=str(data["sdp"]))
        if kind == "tracks":
            return Tracks(tracks=[TrackInfo.from_dict(t) for t in data["tracks"]])
        if kind == "presence":
            if data["event"] not in PRESENCE_EVENTS:
                raise ValueError(data["event"])
            return Presence(
                event=data["event"], participant=Participant.from_dict(data["participant"])
            )
        if kind == "error":
            return Error(
                code=str(data["code"]),
                message=str(data["message"]),
                in_reply_to=data.get("inReplyTo"),
            )
        if kind == "bye":
            return Bye(reason=str(data["reason"]))
        if kind == "media-mode":
            if data["mode"] not in MEDIA_MODES or data["reason"] not in (
                "weak-link",
                "link-recovered",
                "manual",
            ):
                raise ValueError(data["mode"])
            return MediaModeChanged(
                participant_id=str(data["participantId"]),
                mode=data["mode"],
                reason=data["reason"],
                automatic=bool(data["automatic"]),
                message=str(data["message"]),
            )
        if kind == "quality":
            if not isinstance(data["uplink"], dict) or not isinstance(data["downlink"], dict):
                raise ValueError("uplink and downlink are objects")
            return Quality(
                rtt_ms=data["rttMs"],
                level=str(data["level"]),
                mode=str(data["mode"]),
                uplink=dict(data["uplink"]),
                downlink=dict(data["downlink"]),
                participants=[dict(p) for p in data["participants"]],
            )
        if kind == "recording":
            if data["state"] not in ("on", "off"):
                raise ValueError(data["state"])
            started_by = data.get("startedBy")
            return RecordingState(
                state=data["state"],
                started_by=Participant.from_dict(started_by) if started_by else None,
                since=data.get("since"),
                document=data.get("document"),
                consent=None if data.get("consent") is None else bool(data["consent"]),
                reason=data.get("reason"),
            )
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError("invalid-message", f"malformed {kind} message: {error!r}") from None
    raise ProtocolError("unknown-type", f'unknown message type "{kind[:40]}"')


__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_PARTICIPANTS",
    "Answer",
    "Bye",
    "ClientMessage",
    "Error",
    "IceServer",
    "Join",
    "Joined",
    "Leave",
    "LinkLimits",
    "MediaMode",
    "MediaModeChanged",
    "Offer",
    "Participant",
    "Presence",
    "ProtocolError",
    "Quality",
    "RecordingControl",
    "RecordingEnd",
    "RecordingState",
    "ServerMessage",
    "TrackInfo",
    "Tracks",
    "encode",
    "parse_client_message",
    "parse_server_message",
]
