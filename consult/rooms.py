"""Consult rooms across workers: who owns each room, who is in it, and routing between them.

A room lives on one worker, its owner: the worker holding the bus lease
``consult.room.<id>``, renewed while the room has people in it and left to expire if the
worker dies, so that another worker takes the room over at the next join. The owner keeps
the room's presence (who has joined, and which worker holds their WebSocket) and its media,
in its :class:`~consult.hub.MediaHub`: every SDP answer comes from the owner, so media always
flows to the owner's hub.

Each worker listens on its own channel ``consult.worker.<worker id>``. A signalling
session sends what its participant says to the owner's channel; the owner replies on the
session's worker's channel. Messages for one room are handled one at a time, in order.
With the in-process bus (no Redis) the single worker owns every room and the same path
runs in memory.

A participant whose link drops — the WebSocket closes without a ``leave``, the media
connection fails, or no packet has come from them for a few seconds — keeps their place:
the others see them ``reconnecting``, and ``reconnected`` once they are back (a new socket
joins as the same participant and negotiates afresh, or the old connection's packets flow
again). Only after ``reconnect_seconds`` without them are they ``left``. The room's
recording (``consult.recording``) and each participant's media mode and link limits
(``consult.quality``) carry on across the reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consult.call_records import ConsultRecords
from consult.datachannel import CallData
from consult.hub import MediaHub, NegotiationError
from consult.ice import hub_configuration, participant_ice_servers
from consult.protocol import (
    MAX_PARTICIPANTS,
    Answer,
    Bye,
    Error,
    Joined,
    MediaModeChanged,
    Participant,
    Presence,
    Quality,
    RecordingEnd,
    RecordingState,
    ServerMessage,
    TrackInfo,
    Tracks,
)
from consult.quality import LinkPolicy
from consult.recording import RoomRecording, finish_abandoned
from health.core.bus import MessageBus, Subscription
from health.core.settings import Settings
from records.feed import CHANGES_CHANNEL

logger = logging.getLogger(__name__)

WORKER_CHANNEL = "consult.worker.{}"
ROOM_LEASE = "consult.room.{}"
#: Times a message may be passed on to a new owner before the sender is told to retry.
MAX_HOPS = 3
ROOM_INBOX = 256

#: Delivers a server message to a local session; ``close`` ends the session after it.
Deliver = Callable[[dict[str, Any], bool], None]


@dataclass
class Member:
    """A participant in a room, and where their signalling session is."""

    participant: Participant
    session_id: str
    worker_id: str
    #: Loop time since which the participant has had no media connection (None: has one).
    without_media_since: float | None
    #: Why the participant is reconnecting: "signalling" (their socket closed), "media"
    #: (their media failed or stalled). Empty while they are connected.
    lost: set[str] = field(default_factory=set)
    lost_since: float | None = None


class _Room:
    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.members: dict[str, Member] = {}
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=ROOM_INBOX)
        self.task: asyncio.Task[None] | None = None
        self.recording: RoomRecording | None = None
        #: Whether this worker, owning the room, has completed what a dead owner left.
        self.taken_over = False


class ConsultRooms:
    """This worker's part in consult signalling: the rooms it owns and its sessions' routes.

    Make one per worker process with :meth:`start` (the app's lifespan), give it to every
    :class:`~consult.signalling.SignallingSession`, and :meth:`close` it at shutdown.
    """

    def __init__(
        self,
        *,
        bus: MessageBus,
        settings: Settings,
        worker_id: str | None = None,
        lease_seconds: float = 15.0,
        media_grace_seconds: float | None = None,
        hub: MediaHub | None = None,
        records: ConsultRecords | None = None,
    ) -> None:
        self.worker_id = worker_id or uuid.uuid4().hex
        self.hub = hub or MediaHub(
            configuration=hub_configuration(settings),
            link_policy=LinkPolicy.from_settings(settings),
        )
        self.hub.on_connection_lost = self._media_lost
        self.hub.supervisor.on_event = self._media_event
        #: Where readings, chat, files and recordings are kept (None: nowhere, and the call
        #: refuses them).
        self.records = records
        self.call_data = CallData(self.hub, records, max_file_bytes=settings.consult_max_file_bytes)
        self._bus = bus
        self._settings = settings
        self._lease_seconds = lease_seconds
        self._media_grace_seconds = (
            settings.consult_reconnect_seconds
            if media_grace_seconds is None
            else media_grace_seconds
        )
        self._rooms: dict[str, _Room] = {}
        self._sessions: dict[str, Deliver] = {}
        self._subscriptions: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def create(cls, *, bus: MessageBus, settings: Settings, **options: Any) -> ConsultRooms:
        rooms = cls(bus=bus, settings=settings, **options)
        await rooms.start()
        return rooms

    async def start(self) -> None:
        # Subscribed before start returns: a message routed to this worker is heard.
        channels: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
            (WORKER_CHANNEL.format(self.worker_id), self._dispatch)
        ]
        if self.records is not None:
            # The change feed, for the patients' consents to recording.
            channels.append((CHANGES_CHANNEL, self._record_changed))
        self._tasks = [asyncio.create_task(self._keep_leases(), name="consult leases")]
        for channel, handle in channels:
            subscription = await self._bus.subscribe(channel)
            self._subscriptions.append(subscription)
            self._tasks.append(
                asyncio.create_task(
                    self._listen(channel, subscription, handle), name=f"consult bus {channel}"
                )
            )
        logger.info("consult worker %s ready", self.worker_id)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for room in list(self._rooms.values()):
            if room.task is not None:
                room.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await room.task
            await self._close_room(room, "the consult server is shutting down")
        self._rooms.clear()
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.close()
        self._subscriptions.clear()
        await self.call_data.close()
        await self.hub.close()

    def owned_rooms(self) -> dict[str, list[Participant]]:
        """The rooms this worker owns now and who is in each."""
        return {
            room_id: [m.participant for m in room.members.values()]
            for room_id, room in self._rooms.items()
            if room.members
        }

    # The session side.

    def open_session(self, deliver: Deliver) -> str:
        session_id = uuid.uuid4().hex
        self._sessions[session_id] = deliver
        return session_id

    def close_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def route(
        self,
        room_id: str,
        *,
        session_id: str,
        participant: Participant,
        message: dict[str, Any],
    ) -> None:
        """Send a participant's message to the room's owner (taking the room if it is free)."""
        envelope = {
            "to": "room",
            "room": room_id,
            "session": session_id,
            "worker": self.worker_id,
            "participant": participant.to_envelope(),
            "message": message,
            "hops": 0,
        }
        owner = await self._bus.claim(
            ROOM_LEASE.format(room_id), self.worker_id, self._lease_seconds
        )
        await self._bus.publish(WORKER_CHANNEL.format(owner), envelope)

    # The owner side.

    async def _listen(
        self,
        channel: str,
        subscription: Subscription,
        handle: Callable[[dict[str, Any]], None],
    ) -> None:
        index = self._subscriptions.index(subscription)
        while True:
            try:
                async for message in subscription:
                    handle(message)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis went away: listen again once it is back (messages meanwhile are lost,
                # and the sessions waiting on them are told to try again).
                logger.exception("consult bus subscription %s failed; subscribing again", channel)
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await subscription.close()
                with contextlib.suppress(Exception):
                    subscription = await self._bus.subscribe(channel)
                    self._subscriptions[index] = subscription
                    if channel == CHANGES_CHANNEL:
                        # A consent withdrawn while the feed was away must still be seen.
                        self._consents_changed()

    def _record_changed(self, message: dict[str, Any]) -> None:
        if message.get("type") == "Consent":
            self._consents_changed()

    def _consents_changed(self) -> None:
        """Some patient's Consent changed: every room with people in it looks again at its
        patient's consent to recording (a few rooms at a time; the check is one search)."""
        for room in self._rooms.values():
            if room.members:
                with contextlib.suppress(asyncio.QueueFull):
                    room.inbox.put_nowait({"internal": "consent-changed"})

    def _dispatch(self, message: dict[str, Any]) -> None:
        try:
            if message.get("to") == "session":
                deliver = self._sessions.get(message["session"])
                if deliver is not None:
                    deliver(message["message"], bool(message.get("close")))
            elif message.get("to") == "room":
                self._room_inbox(str(message["room"]), message)
            else:
                logger.warning("consult bus message of no known kind: %.200r", message)
        except Exception:
            logger.exception("consult bus message not handled: %.200r", message)

    def _room_inbox(self, room_id: str, envelope: dict[str, Any]) -> None:
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _Room(room_id)
            room.task = asyncio.create_task(self._run_room(room), name=f"consult room {room_id}")
        try:
            room.inbox.put_nowait(envelope)
        except asyncio.QueueFull:
            logger.warning("consult room %s is flooded; message dropped", room_id)

    async def _run_room(self, room: _Room) -> None:
        while True:
            envelope = await room.inbox.get()
            try:
                await self._handle(room, envelope)
            except Exception:
                logger.exception("consult room %s failed on %.200r", room.room_id, envelope)
                if "session" in envelope:
                    await self._send(
                        envelope["worker"],
                        envelope["session"],
                        Error("internal-error", "the consult server failed on that message"),
                    )
            if not room.members and room.inbox.empty():
                await self._stop_recording(room)
                await self.call_data.close_room(room.room_id)
                await self.hub.close_room(room.room_id)
                await self._bus.release(ROOM_LEASE.format(room.room_id), self.worker_id)
                if room.inbox.empty():
                    del self._rooms[room.room_id]
                    logger.info("consult room %s closed", room.room_id)
                    return

    async def _handle(self, room: _Room, envelope: dict[str, Any]) -> None:
        internal = envelope.get("internal")
        if internal == "media-lost":
            await self._on_media_lost(room, envelope["participantId"])
            return
        if internal == "renew":
            await self._renew(room)
            return
        if internal == "media-event":
            await self._on_media_event(room, envelope["event"])
            return
        if internal == "consent-changed":
            await self._follow_consent(room)
            return
        holder = await self._bus.claim(
            ROOM_LEASE.format(room.room_id), self.worker_id, self._lease_seconds
        )
        if holder != self.worker_id:
            await self._pass_on(room, envelope, holder)
            return
        if not room.taken_over:
            room.taken_over = True
            await self._finish_abandoned(room)
        participant = Participant.from_dict(envelope["participant"])
        kind = envelope["message"]["type"]
        member = room.members.get(participant.id)
        same_session = member is not None and member.session_id == envelope["session"]
        if kind == "join":
            await self._join(room, envelope, participant)
        elif kind == "offer":
            if same_session or await self._join(room, envelope, participant):
                await self._negotiate(room, envelope, participant, envelope["message"]["sdp"])
        elif kind == "leave":
            if same_session:
                await self._remove(room, participant.id)
        elif kind == "disconnected":
            if same_session and member is not None:
                await self._lose(room, member, "signalling")
        elif kind in ("media-mode", "link-limits", "recording"):
            if same_session and member is not None:
                await self._control(room, member, envelope["message"])
        else:
            logger.warning("consult room %s: unknown message %r", room.room_id, kind)

    async def _pass_on(self, room: _Room, envelope: dict[str, Any], holder: str) -> None:
        if room.members:
            # Another worker holds the lease now: this worker lost the room.
            await self._close_room(room, "the consult moved to another server; join again")
        if envelope.get("hops", 0) >= MAX_HOPS:
            await self._send(
                envelope["worker"],
                envelope["session"],
                Error(
                    "owner-unavailable",
                    "the consult's media server is changing; try again in a few seconds",
                    in_reply_to=envelope["message"]["type"],
                ),
            )
            return
        envelope = {**envelope, "hops": envelope.get("hops", 0) + 1}
        await self._bus.publish(WORKER_CHANNEL.format(holder), envelope)

    async def _join(self, room: _Room, envelope: dict[str, Any], participant: Participant) -> bool:
        member = room.members.get(participant.id)
        if member is not None:
            if member.session_id != envelope["session"]:
                await self._send(
                    member.worker_id,
                    member.session_id,
                    Bye("replaced: you joined this consult again from another connection"),
                    close=True,
                )
                member.session_id = envelope["session"]
                member.worker_id = envelope["worker"]
                member.participant = participant
            await self._regain(room, member, "signalling")
        else:
            if len(room.members) >= MAX_PARTICIPANTS:
                await self._send(
                    envelope["worker"],
                    envelope["session"],
                    Error(
                        "room-full",
                        f"this consult already has {MAX_PARTICIPANTS} participants",
                        in_reply_to=envelope["message"]["type"],
                    ),
                )
                return False
            member = Member(
                participant=participant,
                session_id=envelope["session"],
                worker_id=envelope["worker"],
                without_media_since=asyncio.get_running_loop().time(),
            )
            room.members[participant.id] = member
            for other in room.members.values():
                if other is not member:
                    await self._tell(other, Presence("joined", participant))
        await self._tell(
            member,
            Joined(
                participant=participant,
                participants=[m.participant for m in room.members.values() if m is not member],
                ice_servers=participant_ice_servers(self._settings, participant.id),
            ),
        )
        await self._tell_state(room, member)
        logger.info("%s joined consult %s", participant.id, room.room_id)
        return True

    async def _tell_state(self, room: _Room, member: Member) -> None:
        """What a (re)joining participant needs beyond ``joined``: who is reconnecting, who
        is on audio only, whether the call is being recorded."""
        for other in room.members.values():
            if other is not member and other.lost:
                await self._tell(member, Presence("reconnecting", other.participant))
        for other in room.members.values():
            link = self.hub.link(room.room_id, other.participant.id)
            if link is not None and link.mode != "video":
                await self._tell(
                    member,
                    self._mode_message(
                        other.participant,
                        link.mode,
                        "manual" if link.manual else "weak-link",
                        not link.manual,
                    ),
                )
        if room.recording is not None:
            await self._tell(member, room.recording.state())

    async def _negotiate(
        self, room: _Room, envelope: dict[str, Any], participant: Participant, sdp: str
    ) -> None:
        member = room.members[participant.id]
        try:
            negotiated = await self.hub.negotiate(
                room.room_id, participant.id, sdp, participant=participant
            )
        except NegotiationError as error:
            await self._tell(member, Error(error.code, error.message, in_reply_to="offer"))
            await self._tell_tracks(room, error.track_maps)
            member.without_media_since = asyncio.get_running_loop().time()
            return
        member.without_media_since = None
        await self._tell(member, Answer(negotiated.sdp))
        await self._tell_tracks(room, negotiated.track_maps)

    async def _remove(self, room: _Room, participant_id: str) -> None:
        member = room.members.pop(participant_id)
        changed = await self.hub.remove(room.room_id, participant_id)
        await self._tell_everyone(room, Presence("left", member.participant))
        await self._tell_tracks(room, changed)
        logger.info("%s left consult %s", participant_id, room.room_id)

    async def _media_lost(self, room_id: str, participant_id: str) -> None:
        room = self._rooms.get(room_id)
        if room is not None:
            with contextlib.suppress(asyncio.QueueFull):
                room.inbox.put_nowait({"internal": "media-lost", "participantId": participant_id})

    async def _on_media_lost(self, room: _Room, participant_id: str) -> None:
        member = room.members.get(participant_id)
        if member is None:
            return
        changed = await self.hub.remove(room.room_id, participant_id, keep_room=True)
        member.without_media_since = asyncio.get_running_loop().time()
        await self._tell(
            member,
            Error(
                "media-failed",
                "the media connection failed; send a new offer to reconnect",
            ),
        )
        await self._tell_tracks(room, changed)
        await self._lose(room, member, "media")

    # Reconnecting: a participant's place kept while their link is down.

    async def _lose(self, room: _Room, member: Member, cause: str) -> None:
        if not member.lost:
            member.lost_since = asyncio.get_running_loop().time()
            for other in room.members.values():
                if other is not member:
                    await self._tell(other, Presence("reconnecting", member.participant))
            logger.info(
                "%s is reconnecting to consult %s (%s)", member.participant.id, room.room_id, cause
            )
        member.lost.add(cause)

    async def _regain(self, room: _Room, member: Member, cause: str) -> None:
        if cause not in member.lost:
            return
        member.lost.discard(cause)
        if not member.lost:
            member.lost_since = None
            for other in room.members.values():
                if other is not member:
                    await self._tell(other, Presence("reconnected", member.participant))
            logger.info("%s reconnected to consult %s", member.participant.id, room.room_id)

    async def _media_event(self, room_id: str, event: dict[str, Any]) -> None:
        room = self._rooms.get(room_id)
        if room is not None:
            with contextlib.suppress(asyncio.QueueFull):
                room.inbox.put_nowait({"internal": "media-event", "event": event})

    async def _on_media_event(self, room: _Room, event: dict[str, Any]) -> None:
        member = room.members.get(event["participantId"])
        if member is None:
            return
        kind = event["event"]
        if kind == "media-stalled":
            await self._lose(room, member, "media")
        elif kind == "media-flowing":
            await self._regain(room, member, "media")
        elif kind == "quality":
            quality: Quality = event["quality"]
            await self._tell(member, quality)
        elif kind == "media-mode":
            message = self._mode_message(
                member.participant, event["mode"], event["reason"], event["automatic"]
            )
            await self._tell_everyone(room, message)

    @staticmethod
    def _mode_message(
        participant: Participant, mode: str, reason: str, automatic: bool
    ) -> MediaModeChanged:
        name = participant.display_name
        if mode == "audio-only":
            text = (
                f"{name}'s connection is too weak for video: audio only until it recovers"
                if automatic
                else f"{name} switched to audio only"
            )
        else:
            text = (
                f"{name}'s connection has recovered: video is back"
                if automatic
                else f"{name} turned video back on"
            )
        return MediaModeChanged(
            participant_id=participant.id,
            mode=mode,  # type: ignore[arg-type]
            reason=reason,  # type: ignore[arg-type]
            automatic=automatic,
            message=text,
        )

    # The call's controls: media mode, link limits, recording.

    async def _control(self, room: _Room, member: Member, message: dict[str, Any]) -> None:
        kind = message["type"]
        participant = member.participant
        if kind == "media-mode":
            hub_room = self.hub.rooms.get(room.room_id)
            link = self.hub.link(room.room_id, participant.id)
            if hub_room is None or link is None:
                await self._tell(
                    member,
                    Error("not-connected", "negotiate media before switching it", in_reply_to=kind),
                )
                return
            await self.hub.supervisor.set_manual_mode(hub_room, participant.id, message["mode"])
        elif kind == "link-limits":
            link = self.hub.link(room.room_id, participant.id)
            if link is None:
                await self._tell(
                    member,
                    Error(
                        "not-connected",
                        "negotiate media before stating link limits",
                        in_reply_to=kind,
                    ),
                )
                return
            link.state_limits(message.get("sendKbps"), message.get("receiveKbps"))
        elif message["action"] == "start":
            await self._start_recording(room, member)
        else:
            await self._stop_recording(room)

    async def _start_recording(self, room: _Room, member: Member) -> None:
        if room.recording is not None:
            await self._tell(member, room.recording.state())
            return
        if self.records is None:
            await self._tell(
                member,
                Error(
                    "recording-unavailable",
                    "this consult server keeps no records, so it cannot record",
                    in_reply_to="recording",
                ),
            )
            return
        refusal = await self.records.recording_refusal(room.room_id, member.participant)
        if refusal is not None:
            await self._tell(
                member, Error("recording-not-allowed", refusal, in_reply_to="recording")
            )
            return
        recording = RoomRecording(
            consult_id=room.room_id,
            started_by=member.participant,
            directory=self._settings.consult_recording_dir,
            records=self.records,
            hub=self.hub,
        )
        try:
            await recording.start()
        except Exception as error:
            logger.exception("could not start recording consult %s", room.room_id)
            await self._tell(
                member,
                Error(
                    "recording-failed",
                    f"the recording could not start: {error}",
                    in_reply_to="recording",
                ),
            )
            return
        room.recording = recording
        await self._tell_everyone(room, recording.state())

    async def _follow_consent(self, room: _Room) -> None:
        """The patient's consent to recording may have changed: a recording it no longer
        covers stops (the record says it was cut short, and why), and everyone is told
        whether the call may be recorded now."""
        if self.records is None or not room.members:
            return
        recording = room.recording
        by = (
            recording.recording.started_by
            if recording is not None
            else next(iter(room.members.values())).participant
        )
        refusal = await self.records.recording_refusal(room.room_id, by)
        if recording is None:
            await self._tell_everyone(room, RecordingState("off", consent=refusal is None))
        elif refusal is not None:
            logger.info("consult %s: recording stopped, %s", room.room_id, refusal)
            await self._stop_recording(room, reason="consent-withdrawn")

    async def _finish_abandoned(self, room: _Room) -> None:
        """Complete recordings of this consult that a worker which died left unfinished."""
        if self.records is None:
            return
        try:
            await finish_abandoned(self._settings.consult_recording_dir, room.room_id, self.records)
        except Exception:
            logger.exception("could not complete the old recordings of %s", room.room_id)

    async def _stop_recording(self, room: _Room, *, reason: RecordingEnd | None = None) -> None:
        recording, room.recording = room.recording, None
        if recording is None:
            return
        try:
            await recording.stop(reason=reason)
        except Exception:
            logger.exception("could not finish the recording of consult %s", room.room_id)
        await self._tell_everyone(room, recording.state())

    async def _check_media(self, room: _Room) -> None:
        """Drop members who have had no media for too long (their worker may have died), or
        who have not come back from a dropped link in time."""
        now = asyncio.get_running_loop().time()
        for participant_id, member in list(room.members.items()):
            since = member.without_media_since
            if member.lost_since is not None and now - member.lost_since > (
                self._media_grace_seconds
            ):
                await self._tell(member, Bye("your link was down too long; join again"), close=True)
                await self._remove(room, participant_id)
            elif since is not None and now - since > self._media_grace_seconds:
                await self._tell(member, Bye("no media connection; join again"), close=True)
                await self._remove(room, participant_id)

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            for room in list(self._rooms.values()):
                if room.members:
                    with contextlib.suppress(asyncio.QueueFull):
                        room.inbox.put_nowait({"internal": "renew"})

    async def _renew(self, room: _Room) -> None:
        """Keep the room's lease, or close it here if another worker has taken it over."""
        holder = await self._bus.claim(
            ROOM_LEASE.format(room.room_id), self.worker_id, self._lease_seconds
        )
        if holder != self.worker_id:
            logger.warning("consult room %s was taken over by %s", room.room_id, holder)
            await self._close_room(room, "the consult moved to another server; join again")
        else:
            await self._check_media(room)

    async def _close_room(self, room: _Room, reason: str) -> None:
        await self._stop_recording(room)
        for member in list(room.members.values()):
            await self._tell(member, Bye(reason), close=True)
        room.members.clear()
        await self.call_data.close_room(room.room_id)
        await self.hub.close_room(room.room_id)
        await self._bus.release(ROOM_LEASE.format(room.room_id), self.worker_id)

    async def _tell_tracks(self, room: _Room, track_maps: dict[str, list[TrackInfo]]) -> None:
        for participant_id, tracks in track_maps.items():
            member = room.members.get(participant_id)
            if member is not None:
                await self._tell(member, Tracks(tracks))

    async def _tell_everyone(self, room: _Room, message: ServerMessage) -> None:
        for member in room.members.values():
            await self._tell(member, message)

    async def _tell(self, member: Member, message: ServerMessage, *, close: bool = False) -> None:
        await self._send(member.worker_id, member.session_id, message, close=close)

    async def _send(
        self, worker_id: str, session_id: str, message: ServerMessage, *, close: bool = False
    ) -> None:
        await self._bus.publish(
            WORKER_CHANNEL.format(worker_id),
            {"to": "session", "session": session_id, "message": message.to_dict(), "close": close},
        )
