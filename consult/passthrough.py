"""Encoded frames through aiortc: the one module that reaches into aiortc's internals.

aiortc always decodes what it receives: each ``RTCRtpReceiver`` starts a thread running
``aiortc.rtcrtpreceiver.decoder_worker``, which hands every frame the jitter buffer has
reassembled to a decoder and puts the decoded pictures and sound on the receiver's track.
A hub that forwards media without decoding needs the encoded frames instead. And an
``RTCRtpSender`` answers a viewer's keyframe request (RTCP PLI or FIR) by telling its own
encoder to make a keyframe, which is no use when it only packetises someone else's frames:
the request has to travel back to that someone.

This module does both, with as little reach as it can, and is written against aiortc 1.16
(the version pyproject.toml pins; importing it with another version fails loudly rather
than misbehaving quietly):

- ``decoder_worker`` in ``aiortc.rtcrtpreceiver`` is replaced, once, by a function that
  checks whose track it serves. For a track registered with :func:`receive_encoded` it
  replaces ``put`` on that receiver's frame queue so that each reassembled frame goes onto
  the track as an ``av.Packet`` right away, on the event loop, and lets the thread end (a
  thread hop per frame cost the hub more than the rest of forwarding). Every other track
  gets aiortc's own worker, so decoding peers in the same process (the Python client,
  tests) are untouched. What we rely on: aiortc calls it as ``decoder_worker(loop, input_q,
  output_q, decode_error)`` from ``RTCRtpReceiver.receive``; the receiver puts ``(codec,
  JitterFrame)`` on ``input_q`` from the event loop, and ``None`` when it stops;
  ``output_q`` is the track's queue, and ``None`` on it ends the track.
- :func:`on_keyframe_request` overrides ``_send_keyframe`` on one sender instance (never
  on the class): aiortc calls it when the remote peer sends PLI or FIR.
- :func:`request_keyframe` sends a PLI from a receiver through its
  ``_send_rtcp_pli(media_ssrc)``.
- :func:`watch_sender_feedback` wraps ``_handle_rtcp_packet`` on one sender instance, to
  read the receiver reports (loss, RTT) and REMB bandwidth estimates a participant sends
  about the hub's stream to it, before aiortc handles them as it always does.
- :func:`watch_receiver_feedback` wraps ``_send_rtcp`` on one receiver instance, to read
  the receiver reports the hub sends about a participant's stream and to cap the REMB
  estimate aiortc's bandwidth estimator sends back to the participant;
  :func:`send_bitrate_limit` sends a REMB of its own through the same ``_send_rtcp``, from
  the receiver's RTCP SSRC (aiortc keeps it in the receiver's private
  ``__rtcp_ssrc``).

Senders need nothing patched to send encoded frames: given an ``av.Packet`` instead of a
frame, ``RTCRtpSender`` packetises it with its codec's ``pack()`` without encoding.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
import weakref
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import aiortc
import av
from aiortc import MediaStreamTrack, RTCRtpReceiver, RTCRtpSender, rtcrtpreceiver
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSrPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

logger = logging.getLogger(__name__)

SUPPORTED_AIORTC = "1.16."
H264_IDR = 5
H264_SPS = 7


def _check_aiortc() -> None:
    problems = []
    if not aiortc.__version__.startswith(SUPPORTED_AIORTC):
        problems.append(f"version {aiortc.__version__}, not {SUPPORTED_AIORTC}x")
    worker = getattr(rtcrtpreceiver, "decoder_worker", None)
    if worker is None or list(inspect.signature(worker).parameters) != [
        "loop",
        "input_q",
        "output_q",
        "decode_error",
    ]:
        problems.append("rtcrtpreceiver.decoder_worker(loop, input_q, output_q, decode_error)")
    if not callable(getattr(RTCRtpSender, "_send_keyframe", None)):
        problems.append("RTCRtpSender._send_keyframe()")
    if not callable(getattr(RTCRtpReceiver, "_send_rtcp_pli", None)):
        problems.append("RTCRtpReceiver._send_rtcp_pli(media_ssrc)")
    if not callable(getattr(RTCRtpReceiver, "_send_rtcp", None)):
        problems.append("RTCRtpReceiver._send_rtcp(packet)")
    if not callable(getattr(RTCRtpSender, "_handle_rtcp_packet", None)):
        problems.append("RTCRtpSender._handle_rtcp_packet(packet)")
    if problems:
        raise ImportError(
            "consult.passthrough is written against aiortc 1.16's internals; this aiortc "
            "differs: " + "; ".join(problems)
        )


_check_aiortc()

_aiortc_decoder_worker = rtcrtpreceiver.decoder_worker
# The queues of the tracks whose receivers hand on encoded frames. Weak, so a closed
# connection's track leaves no trace here.
_encoded_queues: weakref.WeakSet[asyncio.Queue[Any]] = weakref.WeakSet()


def is_keyframe(mime_type: str, data: bytes) -> bool:
    """Whether an encoded frame can be decoded on its own (audio frames always can)."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        # RFC 6386 section 9.1: bit 0 of the frame tag is 0 on key frames, whose tag is
        # followed by the start code 9d 01 2a.
        return len(data) >= 10 and not data[0] & 0x01 and data[3:6] == b"\x9d\x01\x2a"
    if mime == "video/h264":
        # Annex B NAL units, as aiortc's depacketiser writes them: an IDR slice or the
        # SPS that precedes one.
        position = data.find(b"\x00\x00\x01")
        for _ in range(16):
            if position < 0 or position + 3 >= len(data):
                return False
            if data[position + 3] & 0x1F in (H264_IDR, H264_SPS):
                return True
            position = data.find(b"\x00\x00\x01", position + 3)
        return False
    return not mime.startswith("video/")


def _packet(codec: Any, frame: Any, time_bases: dict[int, Fraction]) -> av.Packet:
    time_base = time_bases.get(codec.clockRate)
    if time_base is None:
        time_base = time_bases[codec.clockRate] = Fraction(1, codec.clockRate)
    packet = av.Packet(frame.data)
    packet.pts = frame.timestamp
    packet.time_base = time_base
    packet.is_keyframe = is_keyframe(codec.mimeType, frame.data)
    return packet


def _forward_encoded(input_q: queue.Queue[Any], output_q: asyncio.Queue[Any]) -> None:
    """Hand frames to the track where the receiver reassembles them, on the event loop.

    Runs in the thread aiortc starts for decoding, only to take that thread out of the
    path: from now on the receiver's ``input_q.put`` (called on the event loop) puts the
    frame straight on the track, and the thread ends. A frame or two put before the swap
    wait in ``input_q`` and go first, in order, at the next put.
    """
    time_bases: dict[int, Fraction] = {}

    def put(task: Any, block: bool = True, timeout: float | None = None) -> None:
        while True:
            try:
                earlier = queue.Queue.get_nowait(input_q)
            except queue.Empty:
                break
            forward(earlier)
        forward(task)

    def forward(task: Any) -> None:
        if task is None:
            output_q.put_nowait(None)  # the receiver stopped: end the track
            return
        codec, frame = task
        if frame.data:
            output_q.put_nowait(_packet(codec, frame, time_bases))

    input_q.put = put  # type: ignore[method-assign,assignment]


def _decoder_worker(
    loop: asyncio.AbstractEventLoop,
    input_q: queue.Queue[Any],
    output_q: asyncio.Queue[Any],
    decode_error: threading.Event,
) -> None:
    if output_q in _encoded_queues:
        _forward_encoded(input_q, output_q)
    else:
        _aiortc_decoder_worker(loop, input_q, output_q, decode_error)


rtcrtpreceiver.decoder_worker = _decoder_worker  # type: ignore[assignment]


def receive_encoded(track: MediaStreamTrack) -> None:
    """Make the receiver of a remote ``track`` hand on encoded frames, not decoded ones.

    ``track.recv()`` then returns ``av.Packet`` objects: the reassembled frame as the
    sender encoded it, ``pts`` in the codec's clock (``time_base`` 1/clock rate) and
    ``is_keyframe`` set. Call it from the peer connection's ``track`` event, which comes
    before the receiver starts.
    """
    track_queue = getattr(track, "_queue", None)
    if not isinstance(track_queue, asyncio.Queue):
        raise TypeError(f"{track!r} is not a track that an RTCRtpReceiver feeds")
    _encoded_queues.add(track_queue)


def on_keyframe_request(
    sender: RTCRtpSender, callback: Callable[[], None], *, also_encode: bool
) -> None:
    """Call ``callback`` whenever the remote peer asks ``sender`` for a keyframe (PLI/FIR).

    With ``also_encode`` the sender's own encoder still makes the keyframe, as aiortc does
    (a peer that encodes what it sends); without it the request only reaches ``callback``
    (a sender that forwards someone else's frames).
    """
    own = sender._send_keyframe

    def send_keyframe() -> None:
        if also_encode:
            own()
        callback()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


async def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Ask the peer that sends to ``receiver`` for a keyframe: an RTCP PLI for its SSRC."""
    await receiver._send_rtcp_pli(media_ssrc)


#: Called with each receiver report block about a stream: (ssrc, cumulative packets lost,
#: highest sequence number received, interarrival jitter in the stream's clock).
OnReport = Callable[[RtcpReceiverInfo], None]


def watch_sender_feedback(
    sender: RTCRtpSender,
    *,
    on_report: OnReport,
    on_estimate: Callable[[int, list[int]], None],
    on_rtcp: Callable[[], None],
) -> None:
    """Read what the remote peer reports about ``sender``'s stream, then let aiortc act.

    ``on_report`` gets each receiver report block about this sender's SSRC, ``on_estimate``
    each REMB that names it (bitrate in bit/s, the SSRCs it covers), ``on_rtcp`` is called
    for every RTCP packet routed to the sender (the peer is alive).
    """
    own = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        on_rtcp()
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    on_report(report)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                pass
            else:
                if sender._ssrc in ssrcs:
                    on_estimate(bitrate, ssrcs)
        await own(packet)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


def watch_receiver_feedback(
    receiver: RTCRtpReceiver,
    *,
    on_report: OnReport,
    limit_estimate: Callable[[int], int],
) -> None:
    """Read the hub's own reports about a participant's stream; cap its REMB estimates.

    ``on_report`` gets each report block aiortc sends about the streams ``receiver``
    receives; each REMB aiortc's bandwidth estimator sends goes out with the bitrate
    ``limit_estimate(estimate)`` returns instead.
    """
    own = receiver._send_rtcp

    async def send_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpRrPacket):
            for report in packet.reports:
                on_report(report)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                pass
            else:
                packet = RtcpPsfbPacket(
                    fmt=RTCP_PSFB_APP,
                    ssrc=packet.ssrc,
                    media_ssrc=0,
                    fci=pack_remb_fci(max(0, limit_estimate(bitrate)), ssrcs),
                )
        await own(packet)

    receiver._send_rtcp = send_rtcp  # type: ignore[method-assign]
    receiver._unwatched_send_rtcp = own  # type: ignore[attr-defined]


async def send_bitrate_limit(receiver: RTCRtpReceiver, bitrate: int, ssrcs: list[int]) -> None:
    """Tell the peer sending to ``receiver`` to send at most ``bitrate`` bit/s (a REMB)."""
    rtcp_ssrc = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
    if rtcp_ssrc is None or not ssrcs:
        return  # not started yet: the next round will send it
    # Past watch_receiver_feedback, if any: this limit is not the estimator's estimate.
    send = getattr(receiver, "_unwatched_send_rtcp", receiver._send_rtcp)
    await send(
        RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=rtcp_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(max(0, int(bitrate)), ssrcs),
        )
    )
