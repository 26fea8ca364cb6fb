"""One participant's signalling conversation, over one WebSocket, with their consult's room.

The authenticated route hands a :class:`SignallingSession` the participant it has
identified and the socket it has accepted, and awaits :meth:`SignallingSession.run`::

    @router.websocket("/consult/{consult_id}/ws")
    async def consult_socket(websocket: WebSocket, consult_id: str) -> None:
        participant = ...  # who they are and whether they may join: the route's business
        await websocket.accept()
        session = SignallingSession(
            consult_id=consult_id,
            participant=participant,
            socket=websocket,
            rooms=websocket.app.state.consult_rooms,
        )
        await session.run()

The session reads the participant's messages (``consult.protocol``), answers malformed ones
with an ``error`` and goes on, and passes the rest to the room's owner, wherever it is
(``consult.rooms``); what the room says comes back through the session's inbox and out on
the socket, in order. When the socket closes the participant leaves the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, Protocol

import orjson
from starlette.websockets import WebSocketDisconnect

from consult.protocol import (
    ClientMessage,
    Error,
    Join,
    Leave,
    Offer,
    Participant,
    ProtocolError,
    parse_client_message,
)
from consult.rooms import ConsultRooms

logger = logging.getLogger(__name__)

#: How long to wait for the room's owner to answer a join or an offer (an answer includes
#: gathering ICE candidates, up to five seconds with STUN/TURN servers).
REPLY_SECONDS = 20.0
#: Malformed messages tolerated before the session is closed (a broken or hostile client).
MAX_PROTOCOL_ERRORS = 20
#: Server messages held for a participant whose socket is slow; past this it is closed.
OUTBOX_MESSAGES = 256
POLICY_VIOLATION = 1008
TOO_MANY_ERRORS = "too many invalid messages"


class SignallingSocket(Protocol):
    """What a session needs of a WebSocket (Starlette's, as FastAPI gives it, fits)."""

    async def receive_text(self) -> str: ...
    async def send_text(self, data: str) -> None: ...
    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class SignallingSession:
    """Runs one authenticated participant's signalling with their consult's room."""

    def __init__(
        self,
        *,
        consult_id: str,
        participant: Participant,
        socket: SignallingSocket,
        rooms: ConsultRooms,
        reply_seconds: float = REPLY_SECONDS,
    ) -> None:
        self.consult_id = consult_id
        self.participant = participant
        self._socket = socket
        self._rooms = rooms
        self._reply_seconds = reply_seconds
        self._outbox: deque[tuple[dict[str, Any], bool]] = deque()
        self._outbox_ready = asyncio.Event()
        self._joined = False
        self._closing = False
        self._awaiting: dict[str, asyncio.TimerHandle] = {}  # reply type -> its deadline
        self._session_id = ""

    async def run(self) -> None:
        """Converse until the socket closes, the participant leaves or the room says bye."""
        self._session_id = self._rooms.open_session(self._deliver)
        reader = asyncio.create_task(self._read(), name=f"signalling in {self.participant.id}")
        writer = asyncio.create_task(self._write(), name=f"signalling out {self.participant.id}")
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            for outcome in await asyncio.gather(reader, writer, return_exceptions=True):
                if isinstance(outcome, Exception):
                    logger.error("signalling of %s failed", self.participant.id, exc_info=outcome)
            for handle in self._awaiting.values():
                handle.cancel()
            self._rooms.close_session(self._session_id)
            if self._joined:
                with contextlib.suppress(Exception):
                    await self._route({"type": "disconnected"})
            with contextlib.suppress(Exception):
                await self._socket.close()

    async def _read(self) -> None:
        errors = 0
        while True:
            try:
                text = await self._socket.receive_text()
            except (WebSocketDisconnect, RuntimeError):
                return
            except KeyError:  # Starlette's receive_text on a binary frame
                text = b"\x00"  # type: ignore[assignment]
            try:
                if not isinstance(text, str):
                    raise ProtocolError("invalid-message", "send JSON as text frames")
                message = parse_client_message(text)
                try:
                    await self._act(message)
                except ProtocolError:
                    raise
                except Exception:
                    # The bus (Redis) is unreachable, most likely: say so, keep the socket.
                    logger.exception("signalling of %s could not be routed", self.participant.id)
                    if isinstance(message, Join):
                        self._joined = False
                    for reply in ("joined", "answer"):
                        if reply in self._awaiting:
                            self._awaiting.pop(reply).cancel()
                    raise ProtocolError(
                        "owner-unavailable",
                        "the consult server cannot be reached just now; try again",
                        in_reply_to=message.type,
                    ) from None
            except ProtocolError as error:
                errors += 1
                logger.info("%s sent a bad message: %s", self.participant.id, error.message)
                self._queue(error.to_message().to_dict())
                if errors >= MAX_PROTOCOL_ERRORS:
                    self._queue({"type": "bye", "reason": TOO_MANY_ERRORS}, close=True)
                    return
            if self._closing:
                return

    async def _act(self, message: ClientMessage) -> None:
        if isinstance(message, Join):
            if self._joined:
                raise ProtocolError("already-joined", "you have joined already", in_reply_to="join")
            self._joined = True
            self._expect("joined", "join")
            await self._route(message.to_dict())
        elif isinstance(message, Offer):
            if not self._joined:
                raise ProtocolError("not-joined", "send join before an offer", in_reply_to="offer")
            self._expect("answer", "offer")
            await self._route(message.to_dict())
        elif not isinstance(message, Leave):
            # The call's own controls (media-mode, link-limits, recording): for the room.
            if not self._joined:
                raise ProtocolError(
                    "not-joined", f"send join before {message.type}", in_reply_to=message.type
                )
            await self._route(message.to_dict())
        else:
            if self._joined:
                await self._route(message.to_dict())
                self._joined = False
            self._queue({"type": "bye", "reason": "left"}, close=True)
            self._closing = True

    async def _route(self, message: dict[str, Any]) -> None:
        await self._rooms.route(
            self.consult_id,
            session_id=self._session_id,
            participant=self.participant,
            message=message,
        )

    def _expect(self, reply: str, request: str) -> None:
        if reply in self._awaiting:
            self._awaiting.pop(reply).cancel()
        self._awaiting[reply] = asyncio.get_running_loop().call_later(
            self._reply_seconds, self._overdue, reply, request
        )

    def _overdue(self, reply: str, request: str) -> None:
        self._awaiting.pop(reply, None)
        if request == "join":
            self._joined = False
        self._queue(
            Error(
                "owner-unavailable",
                "the consult's media server did not answer; try again in a few seconds",
                in_reply_to=request,
            ).to_dict()
        )

    def _deliver(self, message: dict[str, Any], close: bool) -> None:
        """A message from the room, to send on."""
        kind = message.get("type")
        if kind == "joined" or kind == "answer":
            handle = self._awaiting.pop(str(kind), None)
            if handle is not None:
                handle.cancel()
        elif kind == "error":
            handle = self._awaiting.pop(
                "joined" if message.get("inReplyTo") == "join" else "answer", None
            )
            if handle is not None:
                handle.cancel()
            if message.get("inReplyTo") == "join" or message.get("code") == "room-full":
                self._joined = False
        if close:
            self._joined = False
        self._queue(message, close=close)

    def _queue(self, message: dict[str, Any], *, close: bool = False) -> None:
        if len(self._outbox) >= OUTBOX_MESSAGES:
            logger.warning("%s reads too slowly; closing its signalling", self.participant.id)
            self._outbox.clear()
            message, close = {"type": "bye", "reason": "too slow to read signalling"}, True
        self._outbox.append((message, close))
        self._outbox_ready.set()

    async def _write(self) -> None:
        while True:
            while not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
            message, close = self._outbox.popleft()
            try:
                await self._socket.send_text(orjson.dumps(message).decode())
            except (WebSocketDisconnect, RuntimeError, OSError):
                return
            if close:
                code = (
                    POLICY_VIOLATION
                    if message.get("reason") == "too many invalid messages"
                    else 1000
                )
                with contextlib.suppress(Exception):
                    await self._socket.close(code=code)
                return


__all__ = ["SignallingSession", "SignallingSocket"]
