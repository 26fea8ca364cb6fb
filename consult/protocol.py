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

The server sends:

- ``joined`` — ``participant`` (you), ``participants`` (the others present),
  ``iceServers`` (STUN/TURN as ``RTCIceServer`` dictionaries, for your peer connection),
  ``maxParticipants``.
- ``answer`` — ``{"type": "answer", "sdp": "..."}``, for ``pc.setRemoteDescription``.
- ``tracks`` — which of your receiving m-lines carries whom:
  ``[{"mid": "2", "kind": "video", "participantId": "..."}]``; sent after each answer and
  whenever someone's media comes or goes. An m-line not listed carries nobody now.
- ``presence`` — ``{"event": "joined" | "left", "participant": {...}}``.
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

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "displayName": self.display_name, "role": self.role}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Participant:
        return cls(id=data["id"], display_name=data["displayName"], role=data["role"])


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


ClientMessage = Join | Offer | Leave


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


@dataclass(frozen=True)
class Presence:
    event: Literal["joined", "left"]
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


ServerMessage = Joined | Answer | Tracks | Presence | Error | Bye


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
    raise ProtocolError(
        "unknown-type",
        f'unknown message type "{kind[:40]}"; send join, offer or leave',
        in_reply_to=kind[:40],
    )


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
            if data["event"] not in ("joined", "left"):
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
    "Offer",
    "Participant",
    "Presence",
    "ProtocolError",
    "ServerMessage",
    "TrackInfo",
    "Tracks",
    "encode",
    "parse_client_message",
    "parse_server_message",
]
