"""The call's data channel: vital signs, chat and shared files, checked, kept and relayed.

Each participant opens one data channel labelled :data:`CHANNEL_LABEL` (ordered, reliable)
on its peer connection with the hub, before its offer. Messages are JSON text, except a
file's content, which follows its ``file`` message as binary messages of at most
:data:`CHUNK_BYTES`. The participant sends:

- ``{"type": "reading", "id", "kind", ...}`` — a vital-sign reading (``consult.vitals``);
- ``{"type": "chat", "id", "text"}`` — a chat line (at most :data:`MAX_CHAT_CHARS`);
- ``{"type": "file", "id", "name", "size", "contentType", "description"}``, the content
  in binary messages, then ``{"type": "file-end", "id"}`` — an image or PDF
  (``consult.shared_files``); ``contentType`` is only a hint.

``id`` is the sender's own name for the message (1–64 of ``A-Za-z0-9._:-``): sending the
same again (after a reconnection, not knowing whether it arrived) keeps and shows it once.

The hub checks each message, keeps it in the patient's record through
:class:`~consult.call_records.ConsultRecords`, and only then relays it — so what the others
see is on record. The sender gets ``{"type": "stored", "id", "resource"}`` (the
Observation, Communication or DocumentReference), or ``{"type": "error", "id", "code",
"field", "message"}`` naming what was wrong (``implausible-reading`` and the field, for a
blood pressure of 400; ``not-stored`` when the record refuses it, ``not-stored-yet`` when it
failed for now and the same message may be sent again). The others get:

- ``{"type": "reading", "from": participant, "id", "kind", <values>, "unit", "time",
  "device", "observation"}`` — values in the unit the record stores them in, and
  ``"unusual": [fields]`` when some are possible but far from usual;
- ``{"type": "chat", "from", "id", "text", "sent", "communication"}``;
- ``{"type": "file", "from", "id", "name", "contentType", "size", "description",
  "document"}`` — the file itself is read from the record (``GET /fhir/DocumentReference/…``),
  so only those whose access reaches the patient see it.

A participant whose channel opens (joining, or reconnecting) first gets the consult's last
:data:`HISTORY` relayed messages, marked ``"replay": true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from consult.call_records import ChatLine, ConsultRecords, RecordsRefused
from consult.protocol import Participant
from consult.shared_files import InvalidFile, check_file
from consult.vitals import InvalidReading, parse_reading, reading_to_message
from health.core.clock import utcnow

if TYPE_CHECKING:
    from consult.hub import MediaHub

logger = logging.getLogger(__name__)

CHANNEL_LABEL = "consult"
CHUNK_BYTES = 16 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
MAX_CHAT_CHARS = 2000
HISTORY = 100
INBOX = 512
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class _Refused(Exception):
    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


@dataclass
class _Upload:
    file_id: str
    header: dict[str, Any]
    size: int
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0
    refused: _Refused | None = None


@dataclass
class _RoomData:
    channels: dict[str, _Channel] = field(default_factory=dict)
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    #: (participant id, type, id) of every message relayed: a repeat is not relayed again.
    seen: dict[tuple[str, str, str], str] = field(default_factory=dict)


class _Channel:
    """One participant's data channel at the hub."""

    def __init__(self, data: CallData, room_id: str, participant_id: str, channel: Any) -> None:
        self.data = data
        self.room_id = room_id
        self.participant_id = participant_id
        self.channel = channel
        self.inbox: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=INBOX)
        self.upload: _Upload | None = None
        self.task = asyncio.create_task(self._work(), name=f"data {room_id}/{participant_id}")

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            try:
                self.inbox.put_nowait(message)
            except asyncio.QueueFull:
                self.send(
                    {
                        "type": "error",
                        "code": "too-fast",
                        "message": "messages come faster than they can be kept; slow down",
                    }
                )

        @channel.on("open")
        def on_open() -> None:
            self.data.replay(self)

        @channel.on("close")
        def on_close() -> None:
            self.task.cancel()

    def send(self, message: dict[str, Any]) -> None:
        if self.channel.readyState == "open":
            self.channel.send(orjson.dumps(message).decode())

    async def _work(self) -> None:
        while True:
            message = await self.inbox.get()
            try:
                await self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("data message of %s not handled", self.participant_id)
                self.send(
                    {
                        "type": "error",
                        "code": "internal-error",
                        "message": "the consult server failed on that message",
                    }
                )

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._chunk(message)
            return
        if len(message) > MAX_MESSAGE_BYTES:
            self.send(
                {
                    "type": "error",
                    "code": "message-too-large",
                    "message": f"messages are limited to {MAX_MESSAGE_BYTES} bytes",
                }
            )
            return
        try:
            data = orjson.loads(message)
        except orjson.JSONDecodeError as error:
            self.send(
                {
                    "type": "error",
                    "code": "invalid-json",
                    "message": f"the message is not JSON: {error}",
                }
            )
            return
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            self.send(
                {
                    "type": "error",
                    "code": "invalid-message",
                    "message": 'a message is a JSON object with a "type"',
                }
            )
            return
        kind = data["type"]
        ref = data.get("id") if isinstance(data.get("id"), str) else None
        try:
            if kind == "reading":
                await self.data.reading(self, data)
            elif kind == "chat":
                await self.data.chat(self, data)
            elif kind == "file":
                self._start_upload(data)
            elif kind == "file-end":
                await self._end_upload(data)
            else:
                raise _Refused(
                    "unknown-type",
                    f'unknown message type "{kind[:40]}"; send reading, chat, file or file-end',
                )
        except _Refused as refused:
            reply: dict[str, Any] = {
                "type": "error",
                "id": ref,
                "code": refused.code,
                "message": refused.message,
            }
            if refused.field:
                reply["field"] = refused.field
            self.send(reply)

    def _start_upload(self, header: dict[str, Any]) -> None:
        file_id = _message_id(header)
        size = header.get("size")
        limit = self.data.max_file_bytes
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise _Refused("invalid-file", '"size" must be the file\'s size in bytes', "size")
        if self.upload is not None:
            raise _Refused("invalid-file", "finish the file being sent (file-end) first", "id")
        self.upload = _Upload(file_id=file_id, header=header, size=size)
        if size > limit:
            self.upload.refused = _Refused(
                "file-too-large",
                f"the file is {size / 2**20:.1f} MiB; at most {limit / 2**20:.0f} MiB",
                "size",
            )

    def _chunk(self, chunk: bytes) -> None:
        upload = self.upload
        if upload is None:
            self.send(
                {
                    "type": "error",
                    "code": "invalid-file",
                    "message": "binary messages are a file's content: send its file message first",
                }
            )
            return
        upload.received += len(chunk)
        if upload.refused is None and upload.received > upload.size:
            upload.refused = _Refused(
                "invalid-file", f"more bytes came than the {upload.size} announced", "size"
            )
        if upload.refused is None:
            upload.chunks.append(chunk)

    async def _end_upload(self, data: dict[str, Any]) -> None:
        upload, self.upload = self.upload, None
        if upload is None or data.get("id") != upload.file_id:
            raise _Refused("invalid-file", "file-end names no file being sent", "id")
        if upload.refused is not None:
            raise upload.refused
        if upload.received != upload.size:
            raise _Refused(
                "invalid-file",
                f"{upload.received} bytes came of the {upload.size} announced",
                "size",
            )
        await self.data.shared_file(self, upload.header, b"".join(upload.chunks))


def _message_id(data: dict[str, Any]) -> str:
    ref = data.get("id")
    if not isinstance(ref, str) or not _ID.match(ref):
        raise _Refused(
            "invalid-message", '"id" must be 1 to 64 letters, digits or ._:- naming it', "id"
        )
    return ref


class CallData:
    """The data channels of every room on this worker's hub."""

    def __init__(
        self, hub: MediaHub, records: ConsultRecords | None, *, max_file_bytes: int
    ) -> None:
        self.hub = hub
        self.records = records
        self.max_file_bytes = max_file_bytes
        self._rooms: dict[str, _RoomData] = {}
        hub.on_datachannel = self.opened

    def opened(self, room_id: str, participant_id: str, channel: Any) -> None:
        if channel.label != CHANNEL_LABEL:
            logger.info("%s opened an unknown data channel %r", participant_id, channel.label)
            return
        room = self._rooms.setdefault(room_id, _RoomData())
        old = room.channels.get(participant_id)
        if old is not None:
            old.task.cancel()
        handler = room.channels[participant_id] = _Channel(self, room_id, participant_id, channel)
        if channel.readyState == "open":
            self.replay(handler)

    def replay(self, handler: _Channel) -> None:
        room = self._rooms.get(handler.room_id)
        if room is None:
            return
        for message in room.history:
            if message["from"]["id"] != handler.participant_id:
                handler.send({**message, "replay": True})

    async def close_room(self, room_id: str) -> None:
        room = self._rooms.pop(room_id, None)
        if room is not None:
            for handler in room.channels.values():
                handler.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handler.task

    async def close(self) -> None:
        for room_id in list(self._rooms):
            await self.close_room(room_id)

    # What a participant sends.

    def participant(self, handler: _Channel) -> Participant:
        room = self.hub.rooms.get(handler.room_id)
        peer = room.peers.get(handler.participant_id) if room else None
        if peer is not None and peer.participant is not None:
            return peer.participant
        return Participant(handler.participant_id, handler.participant_id, "")

    async def reading(self, handler: _Channel, data: dict[str, Any]) -> None:
        try:
            reading = parse_reading(data)
        except InvalidReading as error:
            raise _Refused(error.code, error.message, error.field) from None
        records = self._records()
        by = self.participant(handler)
        ref = await self._keep(
            handler,
            "reading",
            reading.reading_id,
            lambda: records.vital_sign(handler.room_id, by, reading),
        )
        if ref is not None:
            self._relay(
                handler,
                {
                    "type": "reading",
                    "from": by.to_dict(),
                    **reading_to_message(reading),
                    "observation": ref,
                },
            )

    async def chat(self, handler: _Channel, data: dict[str, Any]) -> None:
        message_id = _message_id(data)
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _Refused("invalid-message", '"text" must be the message\'s text', "text")
        if len(text) > MAX_CHAT_CHARS:
            raise _Refused(
                "invalid-message", f"a chat message is at most {MAX_CHAT_CHARS} characters", "text"
            )
        records = self._records()
        by = self.participant(handler)
        line = ChatLine(message_id=message_id, text=text, sent=utcnow())
        room = self.hub.rooms.get(handler.room_id)
        others = [
            peer.participant or Participant(peer.participant_id, peer.participant_id, "")
            for peer in (room.peers.values() if room else [])
            if peer.participant_id != handler.participant_id
        ]
        ref = await self._keep(
            handler, "chat", message_id, lambda: records.chat(handler.room_id, by, line, others)
        )
        if ref is not None:
            self._relay(
                handler,
                {
                    "type": "chat",
                    "from": by.to_dict(),
                    "id": message_id,
                    "text": text,
                    "sent": line.sent.isoformat(),
                    "communication": ref,
                },
            )

    async def shared_file(self, handler: _Channel, header: dict[str, Any], content: bytes) -> None:
        file_id = _message_id(header)
        try:
            checked = await asyncio.to_thread(
                check_file,
                file_id=file_id,
                name=header.get("name"),
                data=content,
                max_bytes=self.max_file_bytes,
                description=header.get("description"),
            )
        except InvalidFile as error:
            raise _Refused(error.code, error.message, error.field) from None
        records = self._records()
        by = self.participant(handler)
        ref = await self._keep(
            handler, "file", file_id, lambda: records.shared_file(handler.room_id, by, checked)
        )
        if ref is not None:
            self._relay(
                handler,
                {
                    "type": "file",
                    "from": by.to_dict(),
                    "id": file_id,
                    "name": checked.name,
                    "contentType": checked.content_type,
                    "size": len(checked.data),
                    "description": checked.description,
                    "document": ref,
                },
            )

    # Keeping and relaying.

    def _records(self) -> ConsultRecords:
        if self.records is None:
            raise _Refused(
                "records-unavailable",
                "this consult server keeps no records: readings, chat and files cannot be kept",
            )
        return self.records

    def _room(self, handler: _Channel) -> _RoomData:
        return self._rooms.setdefault(handler.room_id, _RoomData())

    async def _keep(self, handler: _Channel, kind: str, ref: str, store: Any) -> str | None:
        """Store (once per id); ack the sender; the reference if it is to be relayed now."""
        room = self._room(handler)
        key = (handler.participant_id, kind, ref)
        known = room.seen.get(key)
        if known is not None:
            handler.send({"type": "stored", "id": ref, "resource": known})
            return None
        try:
            resource: str = await store()
        except RecordsRefused as refused:
            raise _Refused("not-stored", refused.message) from None
        except Exception as error:
            logger.exception("a %s of %s could not be kept", kind, handler.participant_id)
            raise _Refused(
                "not-stored-yet",
                f"the record could not keep it just now ({type(error).__name__}); send it again",
            ) from None
        room.seen[key] = resource
        handler.send({"type": "stored", "id": ref, "resource": resource})
        return resource

    def _relay(self, sender: _Channel, message: dict[str, Any]) -> None:
        room = self._room(sender)
        room.history.append(message)
        for handler in room.channels.values():
            if handler is not sender:
                handler.send(message)


def new_message_id() -> str:
    return uuid.uuid4().hex[:16]


__all__ = ["CHANNEL_LABEL", "CHUNK_BYTES", "CallData", "new_message_id"]
