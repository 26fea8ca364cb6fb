"""Weak links: what each participant's connection carries, and what the hub does about it.

Village clinics sit at the end of thin, lossy links, so the hub watches every participant's
connection in both directions, once a second:

- **uplink** (participant → hub): the receiver reports the hub itself sends about the
  participant's audio and video (cumulative packets lost, highest sequence number), the
  bytes and frames that arrived, and the bandwidth aiortc's estimator measured (the REMB it
  sends back);
- **downlink** (hub → participant): the receiver reports and REMB estimates the participant
  sends about the hub's streams to it, and their round-trip time.

From that :class:`LinkSupervisor` does four things:

1. **Caps what each participant sends.** Every second it sends the participant a REMB of
   ``min(its send limit, the uplink estimate, each viewer's receive limit shared among the
   videos that viewer receives)`` and caps aiortc's own REMB the same way; the answer SDP
   carries the send limit as ``b=AS``/``b=TIAS`` for browsers. Limits come from
   :class:`LinkPolicy` by role (the village uplink is the constraint) and can only be
   lowered by the participant (``link-limits``). Viewers' own REMB estimates are *not*
   passed on to the sender: without simulcast that would hold everyone's picture to the
   weakest viewer's, and aiortc's estimators only follow the rate that arrives, so the
   sender's rate would sink to the floor; a viewer whose link cannot carry the video goes
   audio only instead (2).
2. **Switches a participant to audio only** when, over the last :attr:`LinkPolicy.window_seconds`,
   loss either way reaches :attr:`LinkPolicy.audio_only_loss`, or a bandwidth estimator
   holds a direction below :attr:`LinkPolicy.min_video_kbps` while more is offered, on two
   samples running: the hub stops
   forwarding that participant's video and stops sending it the others', and tells
   everyone (``media-mode``), so the participant's client stops sending video and the
   voice has the link to itself. It switches back once loss both ways has stayed at or
   under :attr:`LinkPolicy.video_loss` for :attr:`LinkPolicy.recover_seconds`; a return
   that fails again within :data:`RELAPSE_SECONDS` doubles that wait (up to
   :attr:`LinkPolicy.max_recover_seconds`), so a marginal link does not flap. A manual
   switch to audio only is never undone automatically.
3. **Notices a dropped link**: no RTP and no RTCP from a participant for
   :attr:`LinkPolicy.stall_seconds` is ``media-stalled`` (the room shows them as
   reconnecting); the first packet afterwards, or of a new connection, ``media-flowing``.
4. **Reports** each participant's figures every :attr:`LinkPolicy.report_every` seconds
   (the ``quality`` message: RTT, loss, bit rates, estimates, frame rates), for the page's
   indicator.

aiortc measures no frame rate of its own; the frame rates here are those of the frames the
hub received from and forwarded to each participant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import statistics
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiortc.rtp import RtcpReceiverInfo

from consult.passthrough import send_bitrate_limit, watch_receiver_feedback, watch_sender_feedback
from consult.protocol import Quality

if TYPE_CHECKING:
    from consult.hub import HubRoom, MediaHub, Peer, Slot
    from consult.tracks import EncodedSource
    from health.core.settings import Settings

logger = logging.getLogger(__name__)

#: A return to video that fails again this soon doubles the wait before the next one.
RELAPSE_SECONDS = 30.0
#: After this long on video the wait before a return is back to its shortest.
STABLE_SECONDS = 120.0
#: Estimates older than this are not used (no video flows, so nobody measures it).
ESTIMATE_MAX_AGE = 3.0
#: The least a participant is ever asked to send, in kbit/s (Opus and a little video).
FLOOR_KBPS = 64
#: Quality levels, as the page shows them: RTT in ms and loss up to which a link is it.
LEVELS = (("good", 300.0, 0.02), ("fair", 500.0, 0.05))

#: Called with (room id, event): ``{"event": "media-mode" | "quality" | "media-stalled" |
#: "media-flowing", "participantId": ..., ...}``.
MediaEventHandler = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class LinkPolicy:
    """The thresholds and limits of weak-link handling (from the settings)."""

    #: Limits on what a participant sends and receives, in kbit/s, by role; ``"*"`` is
    #: everybody else. Absent means no limit.
    send_kbps: dict[str, int] = field(default_factory=lambda: {"*": 1500})
    receive_kbps: dict[str, int] = field(default_factory=lambda: {"*": 4000})
    #: Loss (0–1) either way, over the window, at which a participant goes audio only.
    audio_only_loss: float = 0.05
    #: Loss both ways at or under which the link counts as good enough for video again.
    video_loss: float = 0.02
    #: A bandwidth estimate below this (kbit/s) cannot carry useful video.
    min_video_kbps: int = 150
    #: How long the link must stay good before video comes back, at first.
    recover_seconds: float = 10.0
    max_recover_seconds: float = 120.0
    #: No packet from a participant for this long: their link dropped.
    stall_seconds: float = 4.0
    sample_seconds: float = 1.0
    window_seconds: float = 5.0
    report_every: int = 2
    #: Fewer packets than this in the window make no loss figure.
    min_packets: int = 40

    @classmethod
    def from_settings(cls, settings: Settings) -> LinkPolicy:
        return cls(
            send_kbps=dict(settings.consult_send_kbps),
            receive_kbps=dict(settings.consult_receive_kbps),
            audio_only_loss=settings.consult_audio_only_loss_percent / 100,
            video_loss=settings.consult_video_loss_percent / 100,
            min_video_kbps=settings.consult_min_video_kbps,
            recover_seconds=settings.consult_recover_seconds,
            stall_seconds=settings.consult_stall_seconds,
        )

    def send_limit(self, role: str | None) -> int | None:
        return self.send_kbps.get(role or "", self.send_kbps.get("*"))

    def receive_limit(self, role: str | None) -> int | None:
        return self.receive_kbps.get(role or "", self.receive_kbps.get("*"))

    @property
    def window_samples(self) -> int:
        return max(2, round(self.window_seconds / self.sample_seconds))


class StreamLoss:
    """Loss of one RTP stream, from the cumulative figures of its receiver reports."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None
        self._expected = 0
        self._lost = 0

    def report(self, lost: int, highest_sequence: int) -> None:
        highest = highest_sequence & 0xFFFF  # aiortc reports 16 bits, browsers 32
        if self._last is not None:
            expected = (highest - self._last[1]) & 0xFFFF
            if expected >= 0x8000:
                return  # an older report, arriving late
            self._expected += expected
            self._lost += max(0, min(lost - self._last[0], expected))
        self._last = (lost, highest)

    def take(self) -> tuple[int, int]:
        """(packets expected, packets lost) since the last call."""
        taken = (self._expected, self._lost)
        self._expected = self._lost = 0
        return taken


@dataclass
class LinkSample:
    """One second of a participant's link."""

    seconds: float
    up_expected: int = 0
    up_lost: int = 0
    down_expected: int = 0
    down_lost: int = 0
    up_bytes: int = 0
    up_video_bytes: int = 0
    down_bytes: int = 0
    up_video_frames: int = 0


def _loss(samples: list[LinkSample], direction: str, minimum: int) -> float | None:
    expected = sum(getattr(s, f"{direction}_expected") for s in samples)
    lost = sum(getattr(s, f"{direction}_lost") for s in samples)
    return lost / expected if expected >= minimum else None


def _level(rtt_ms: float | None, loss: float | None) -> str:
    for name, max_rtt, max_loss in LEVELS:
        if (rtt_ms is None or rtt_ms <= max_rtt) and (loss is None or loss <= max_loss):
            return name
    return "poor"


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


class LinkMonitor:
    """One participant's connection: measurements, limits and the audio-only switch."""

    def __init__(self, participant_id: str, role: str | None, policy: LinkPolicy) -> None:
        self.participant_id = participant_id
        self.policy = policy
        self.role = role
        self.mode = "video"
        self.manual = False
        self.send_limit_kbps = policy.send_limit(role)
        self.receive_limit_kbps = policy.receive_limit(role)
        self.stated_send_kbps: int | None = None
        self.stated_receive_kbps: int | None = None
        self.media_ssrcs: set[int] = set()
        self.uplink: dict[int, StreamLoss] = {}
        self.downlink: dict[int, StreamLoss] = {}
        self.estimate_up: tuple[int, float] | None = None  # bit/s, loop time
        self.estimates_down: dict[int, tuple[int, float]] = {}  # sender ssrc -> share
        self.last_heard: float | None = None
        self.stalled = False
        self.flowing = False
        self.rtt_ms: float | None = None
        self.samples: deque[LinkSample] = deque(maxlen=policy.window_samples)
        self.weak_samples = 0
        self.good_since: float | None = None
        self.recover_wait = policy.recover_seconds
        self.returned_at: float | None = None
        #: The most this participant may send now, bit/s: ``cap_bps`` and the uplink estimate.
        self.limit_bps: int | None = None
        #: The send limit and what the viewers of its video can take (not the estimate).
        self.cap_bps: int | None = None
        self._previous: dict[int, int] = {}
        self._created = self._now()

    def new_connection(self) -> None:
        """A fresh negotiation: forget the old connection's figures, keep mode and limits."""
        self.media_ssrcs = set()
        self.uplink, self.downlink = {}, {}
        self.estimate_up, self.estimates_down = None, {}
        self.last_heard, self.stalled, self.flowing = None, False, False
        self.rtt_ms = None
        self.samples.clear()
        self.weak_samples, self.good_since = 0, None
        self._previous = {}

    # What the RTCP hooks tell.

    def heard(self) -> None:
        self.last_heard = self._now()

    def uplink_report(self, report: RtcpReceiverInfo) -> None:
        if self.media_ssrcs and report.ssrc not in self.media_ssrcs:
            return  # the retransmission stream's own sequence numbers
        self.uplink.setdefault(report.ssrc, StreamLoss()).report(
            report.packets_lost, report.highest_sequence
        )

    def downlink_report(self, sender_ssrc: int, report: RtcpReceiverInfo) -> None:
        self.downlink.setdefault(sender_ssrc, StreamLoss()).report(
            report.packets_lost, report.highest_sequence
        )

    def uplink_estimate(self, bitrate: int) -> None:
        self.estimate_up = (bitrate, self._now())

    def downlink_estimate(self, sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> None:
        # A browser's REMB is one figure for everything it receives; aiortc's, per stream.
        self.estimates_down[sender_ssrc] = (bitrate // max(1, len(set(ssrcs))), self._now())

    # Limits.

    @property
    def send_kbps(self) -> int | None:
        return _min_of(self.send_limit_kbps, self.stated_send_kbps)

    @property
    def receive_kbps(self) -> int | None:
        return _min_of(self.receive_limit_kbps, self.stated_receive_kbps)

    def state_limits(self, send_kbps: int | None, receive_kbps: int | None) -> None:
        self.stated_send_kbps, self.stated_receive_kbps = send_kbps, receive_kbps

    def recent_estimate_up(self) -> int | None:
        return _recent(self.estimate_up, self._now())

    def recent_estimate_down(self, sender_ssrc: int) -> int | None:
        return _recent(self.estimates_down.get(sender_ssrc), self._now())

    # The audio-only switch.

    def set_manual(self, mode: str) -> bool:
        """The participant's own switch; whether the mode changed."""
        self.manual = mode == "audio-only"
        return self._switch(mode)

    def decide(self) -> str | None:
        """The automatic switch after a new sample: "weak-link", "link-recovered" or None."""
        samples = list(self.samples)
        now = self._now()
        if self.manual or len(samples) < min(3, self.policy.window_samples):
            return None
        loss_up = _loss(samples, "up", self.policy.min_packets)
        loss_down = _loss(samples, "down", self.policy.min_packets)
        losses = [x for x in (loss_up, loss_down) if x is not None]
        if self.mode == "video":
            weak = any(x >= self.policy.audio_only_loss for x in losses) or self._congested(samples)
            self.weak_samples = self.weak_samples + 1 if weak else 0
            if self.returned_at is not None and now - self.returned_at > STABLE_SECONDS:
                self.recover_wait = self.policy.recover_seconds
                self.returned_at = None
            if self.weak_samples >= 2:
                if self.returned_at is not None and now - self.returned_at < RELAPSE_SECONDS:
                    self.recover_wait = min(self.recover_wait * 2, self.policy.max_recover_seconds)
                self._switch("audio-only")
                return "weak-link"
            return None
        good = bool(losses) and all(x <= self.policy.video_loss for x in losses)
        if not good:
            self.good_since = None
            return None
        if self.good_since is None:
            self.good_since = now
        if now - self.good_since >= self.recover_wait:
            self._switch("video")
            self.returned_at = now
            return "link-recovered"
        return None

    def _switch(self, mode: str) -> bool:
        if mode == self.mode:
            return False
        self.mode = mode
        self.samples.clear()
        self.weak_samples = 0
        self.good_since = None
        return True

    def _congested(self, samples: list[LinkSample]) -> bool:
        """Whether the hub's estimator holds the participant's uplink below what video needs
        while the participant sends more: a link too thin for video.

        Only the uplink's: aiortc's estimators, like any delay-based estimator, follow what
        arrives until they detect overuse, so a viewer's estimate of a stream that is small
        for other reasons says nothing about its link. A downlink too thin shows as loss.
        """
        seconds = sum(s.seconds for s in samples) or 1.0
        up = self.recent_estimate_up()
        sent = 8 * sum(s.up_video_bytes for s in samples) / seconds
        return up is not None and up < self.policy.min_video_kbps * 1000 and sent > 1.2 * up

    def _estimate_down(self) -> int | None:
        now = self._now()
        shares = [_recent(e, now) for e in self.estimates_down.values()]
        known = [s for s in shares if s]
        return sum(known) if known else None

    # Sampling.

    def take_sample(
        self, seconds: float, sources: list[EncodedSource], down_bytes: int
    ) -> LinkSample:
        sample = LinkSample(seconds=seconds, down_bytes=down_bytes)
        for loss in self.uplink.values():
            expected, lost = loss.take()
            sample.up_expected += expected
            sample.up_lost += lost
        for loss in self.downlink.values():
            expected, lost = loss.take()
            sample.down_expected += expected
            sample.down_lost += lost
        for source in sources:
            if source.last_frame_at is not None and (
                self.last_heard is None or source.last_frame_at > self.last_heard
            ):
                self.last_heard = source.last_frame_at
            received = self._delta(id(source), source.bytes_received)
            sample.up_bytes += received
            if source.kind == "video":
                sample.up_video_bytes += received
                sample.up_video_frames += self._delta(-id(source), source.frames_received)
        self.samples.append(sample)
        return sample

    def forwarded_delta(self, key: int, frames: int) -> int:
        return self._delta(key, frames)

    def _delta(self, key: int, value: int) -> int:
        previous = self._previous.get(key)
        self._previous[key] = value
        return 0 if previous is None else max(0, value - previous)

    def check_stall(self) -> str | None:
        """ "media-stalled" or "media-flowing" when that changed, else None."""
        now = self._now()
        if self.last_heard is None:
            return None
        if not self.flowing:
            self.flowing = True
            return "media-flowing"
        silent = now - self.last_heard > self.policy.stall_seconds
        if silent and not self.stalled:
            self.stalled = True
            return "media-stalled"
        if not silent and self.stalled:
            self.stalled = False
            return "media-flowing"
        return None

    def quality(self, participants: list[dict[str, Any]]) -> Quality:
        samples = list(self.samples)
        seconds = sum(s.seconds for s in samples) or 1.0
        loss_up = _loss(samples, "up", self.policy.min_packets)
        loss_down = _loss(samples, "down", self.policy.min_packets)
        worst = max((x for x in (loss_up, loss_down) if x is not None), default=None)
        estimate_up = self.recent_estimate_up()
        estimate_down = self._estimate_down()
        return Quality(
            rtt_ms=_round(self.rtt_ms, 0),
            level=_level(self.rtt_ms, worst),
            mode=self.mode,
            uplink={
                "lossPercent": _round(None if loss_up is None else 100 * loss_up),
                "kbps": _round(8 * sum(s.up_bytes for s in samples) / seconds / 1000),
                "estimateKbps": None if estimate_up is None else round(estimate_up / 1000),
                "limitKbps": None if self.limit_bps is None else round(self.limit_bps / 1000),
                "framesPerSecond": _round(sum(s.up_video_frames for s in samples) / seconds),
            },
            downlink={
                "lossPercent": _round(None if loss_down is None else 100 * loss_down),
                "kbps": _round(8 * sum(s.down_bytes for s in samples) / seconds / 1000),
                "estimateKbps": None if estimate_down is None else round(estimate_down / 1000),
                "limitKbps": self.receive_kbps,
            },
            participants=participants,
        )

    @property
    def level(self) -> str:
        samples = list(self.samples)
        losses = [
            x
            for x in (
                _loss(samples, "up", self.policy.min_packets),
                _loss(samples, "down", self.policy.min_packets),
            )
            if x is not None
        ]
        return _level(self.rtt_ms, max(losses, default=None))

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


def _min_of(*values: int | None) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _recent(estimate: tuple[int, float] | None, now: float) -> int | None:
    if estimate is None or now - estimate[1] > ESTIMATE_MAX_AGE:
        return None
    return estimate[0]


_MEDIA_LINE = re.compile(r"^m=(audio|video) ")


def limit_in_answer(sdp: str, limits: dict[str, int]) -> str:
    """The answer with ``b=AS``/``b=TIAS`` (kbit/s, bit/s) on the m-lines of ``limits``
    (by mid): browsers keep what they send on those m-lines under it."""
    if not limits:
        return sdp
    lines = sdp.split("\r\n")
    out: list[str] = []
    section: list[str] = []

    def flush() -> None:
        mid = next((x[len("a=mid:") :] for x in section if x.startswith("a=mid:")), None)
        kbps = limits.get(mid or "")
        if kbps is not None and _MEDIA_LINE.match(section[0]):
            at = next((i + 1 for i, x in enumerate(section) if x.startswith("c=")), 1)
            section[at:at] = [f"b=AS:{kbps}", f"b=TIAS:{kbps * 1000}"]
        out.extend(section)

    for line in lines:
        if line.startswith("m="):
            if section:
                flush()
            section = [line]
        elif section:
            section.append(line)
        else:
            out.append(line)
    if section:
        flush()
    return "\r\n".join(out)


class LinkSupervisor:
    """Runs weak-link handling for every participant of a hub (one task per hub)."""

    def __init__(self, hub: MediaHub, policy: LinkPolicy) -> None:
        self.hub = hub
        self.policy = policy
        self.on_event: MediaEventHandler | None = None
        self._task: asyncio.Task[None] | None = None

    def monitor(self, participant_id: str, role: str | None) -> LinkMonitor:
        return LinkMonitor(participant_id, role, self.policy)

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="consult link supervisor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # Wiring a peer's senders and receivers.

    def watch_slot(self, peer: Peer, slot: Slot) -> None:
        sender = slot.transceiver.sender
        link = peer.link

        def on_report(report: RtcpReceiverInfo) -> None:
            link.downlink_report(sender._ssrc, report)

        def on_estimate(bitrate: int, ssrcs: list[int]) -> None:
            link.downlink_estimate(sender._ssrc, bitrate, ssrcs)

        watch_sender_feedback(
            sender, on_report=on_report, on_estimate=on_estimate, on_rtcp=link.heard
        )

    def watch_source(self, peer: Peer, source: EncodedSource) -> None:
        link = peer.link
        if source.media_ssrc is not None:
            link.media_ssrcs.add(source.media_ssrc)

        def limit_estimate(bitrate: int) -> int:
            if source.kind == "video":
                link.uplink_estimate(bitrate)
            return bitrate if link.cap_bps is None else min(bitrate, link.cap_bps)

        watch_receiver_feedback(
            source.receiver, on_report=link.uplink_report, limit_estimate=limit_estimate
        )

    # Modes.

    async def set_manual_mode(self, room: HubRoom, participant_id: str, mode: str) -> None:
        peer = room.peers.get(participant_id)
        if peer is None:
            return
        if peer.link.set_manual(mode):
            self.apply_modes(room)
        await self._emit(
            room.room_id,
            {
                "event": "media-mode",
                "participantId": participant_id,
                "mode": peer.link.mode,
                "reason": "manual",
                "automatic": False,
            },
        )

    def apply_modes(self, room: HubRoom) -> None:
        """Forward video only between participants who are both on video."""
        for viewer in room.peers.values():
            for slot in viewer.slots["video"]:
                publisher = room.peers.get(slot.participant_id or "")
                active = (
                    publisher is not None
                    and viewer.link.mode == "video"
                    and publisher.link.mode == "video"
                )
                if active:
                    slot.track.resume()
                else:
                    slot.track.pause()

    # The loop.

    async def _run(self) -> None:
        tick = 0
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.policy.sample_seconds)
            now = loop.time()
            seconds, last = now - last, now
            tick += 1
            for room in list(self.hub.rooms.values()):
                try:
                    await self._round(room, seconds, report=tick % self.policy.report_every == 0)
                except Exception:
                    logger.exception("link supervision of consult %s failed", room.room_id)

    async def _round(self, room: HubRoom, seconds: float, *, report: bool) -> None:
        peers = [p for p in room.peers.values() if not p.closing]
        forwarded: dict[tuple[str, str], float] = {}
        for peer in peers:
            down_bytes = 0
            rtts: dict[str, list[float]] = {"audio": [], "video": []}
            for kind in ("audio", "video"):
                for slot in peer.slots[kind]:
                    stats = await slot.transceiver.sender.getStats()
                    for stat in stats.values():
                        if stat.type == "outbound-rtp":
                            down_bytes += peer.link.forwarded_delta(
                                id(slot.transceiver.sender), stat.bytesSent
                            )
                        elif stat.type == "remote-inbound-rtp" and stat.roundTripTime:
                            rtts[kind].append(stat.roundTripTime)
                    if kind == "video" and slot.participant_id is not None:
                        frames = peer.link.forwarded_delta(id(slot), slot.track.frames_forwarded)
                        forwarded[(peer.participant_id, slot.participant_id)] = frames / seconds
            # Audio's RTT first: aiortc dates a sender report by its last RTP packet, so a
            # paused video stream's reports give round trips that are too short.
            measured = rtts["audio"] or rtts["video"]
            if measured:
                peer.link.rtt_ms = 1000 * statistics.median(measured)
            peer.link.take_sample(seconds, list(peer.sources.values()), down_bytes)
            change = peer.link.check_stall()
            if change is not None:
                await self._emit(
                    room.room_id, {"event": change, "participantId": peer.participant_id}
                )
        changed = False
        for peer in peers:
            reason = peer.link.decide()
            if reason is not None:
                changed = True
                logger.info(
                    "%s in consult %s: %s (%s)",
                    peer.participant_id,
                    room.room_id,
                    peer.link.mode,
                    reason,
                )
                await self._emit(
                    room.room_id,
                    {
                        "event": "media-mode",
                        "participantId": peer.participant_id,
                        "mode": peer.link.mode,
                        "reason": reason,
                        "automatic": True,
                    },
                )
        if changed:
            self.apply_modes(room)
        for peer in peers:
            await self._limit(room, peer)
        if report:
            for peer in peers:
                others = [
                    {
                        "participantId": other.participant_id,
                        "framesPerSecond": _round(
                            forwarded.get((peer.participant_id, other.participant_id))
                        ),
                        "mode": other.link.mode,
                        "level": other.link.level,
                    }
                    for other in peers
                    if other is not peer
                ]
                await self._emit(
                    room.room_id,
                    {
                        "event": "quality",
                        "participantId": peer.participant_id,
                        "quality": peer.link.quality(others),
                    },
                )

    async def _limit(self, room: HubRoom, publisher: Peer) -> None:
        """Send the publisher a REMB of the most its video may use now."""
        source = publisher.sources.get("video")
        link = publisher.link
        limits = [None if link.send_kbps is None else link.send_kbps * 1000]
        for viewer in room.peers.values():
            if viewer is publisher:
                continue
            active = [s for s in viewer.slots["video"] if not s.track.paused and s.participant_id]
            for slot in active:
                if slot.participant_id == publisher.participant_id and viewer.link.receive_kbps:
                    limits.append(viewer.link.receive_kbps * 1000 // len(active))
        known = [x for x in limits if x]
        link.cap_bps = max(FLOOR_KBPS * 1000, min(known)) if known else None
        estimate = link.recent_estimate_up()
        known = [x for x in (link.cap_bps, estimate) if x]
        link.limit_bps = max(FLOOR_KBPS * 1000, min(known)) if known else None
        if source is None or link.limit_bps is None:
            return
        ssrc = source.media_ssrc
        if ssrc is not None:
            await send_bitrate_limit(source.receiver, link.limit_bps, [ssrc])

    async def _emit(self, room_id: str, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            await self.on_event(room_id, event)


__all__ = [
    "LinkMonitor",
    "LinkPolicy",
    "LinkSupervisor",
    "StreamLoss",
    "limit_in_answer",
]
