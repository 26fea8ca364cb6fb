"""A consult call through the hub: participants hear and see each other, come and go."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import av
import pytest

from consult.client import ConsultClient, ConsultClientError
from tests.consult.conftest import (
    DEADLINE,
    SPECIALIST,
    TOWNSHIP_DOCTOR,
    VILLAGE_DOCTOR,
    SignallingWorker,
    decoder_threads,
    eventually,
)


def sees(viewer: ConsultClient, other: ConsultClient, frames: int = 10) -> bool:
    """Whether the viewer has decoded ``frames`` of the other's video and of their sound."""
    assert other.participant is not None
    video = viewer.received(other.participant.id, "video")
    audio = viewer.received(other.participant.id, "audio")
    return video.frames >= frames and audio.frames >= frames


def hub_tasks() -> list[str]:
    return [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith(("source ", "keyframes ", "consult room "))
    ]


async def test_two_participants_exchange_audio_and_video(worker: SignallingWorker) -> None:
    async with (
        worker.client("consult-1", VILLAGE_DOCTOR) as village,
        worker.client("consult-1", SPECIALIST) as specialist,
    ):
        await village.wait_for(lambda c: sees(c, specialist), DEADLINE)
        await specialist.wait_for(lambda c: sees(c, village), DEADLINE)
        # Each sees the other's own camera (the pattern names its sender), at its size.
        seen = village.received(SPECIALIST.id, "video")
        assert (seen.picture_of, seen.width, seen.height, seen.codec) == (
            SPECIALIST.id,
            320,
            240,
            "VP8",
        )
        assert specialist.received(VILLAGE_DOCTOR.id, "video").picture_of == VILLAGE_DOCTOR.id
        assert specialist.received(VILLAGE_DOCTOR.id, "audio").codec == "opus"
        assert village.received(SPECIALIST.id, "video").decode_errors == 0
        assert set(village.seen) == {SPECIALIST.id}


async def test_three_participants_each_see_the_two_others(worker: SignallingWorker) -> None:
    async with (
        worker.client("consult-3", VILLAGE_DOCTOR) as village,
        worker.client("consult-3", SPECIALIST) as specialist,
        worker.client("consult-3", TOWNSHIP_DOCTOR) as township,
    ):
        clients = [village, specialist, township]
        for viewer in clients:
            for other in clients:
                if other is not viewer:
                    await viewer.wait_for(lambda c, o=other: sees(c, o), DEADLINE)
                    assert other.participant is not None
                    picture = viewer.received(other.participant.id, "video").picture_of
                    assert picture == other.participant.id
        # Each participant's m-lines carry the two others, as the tracks message says.
        assert sorted(village.tracks.values()) == sorted(
            [SPECIALIST.id, SPECIALIST.id, TOWNSHIP_DOCTOR.id, TOWNSHIP_DOCTOR.id]
        )


def write_vp8_clip(path: Path, frames: int = 90) -> set[int]:
    """A short VP8 WebM clip; the CRC-32 of each encoded frame in it."""
    crcs = set()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"g": "30", "deadline": "realtime", "cpu-used": "8"}
        for n in range(frames):
            frame = av.VideoFrame(320, 240, "yuv420p")
            for index, plane in enumerate(frame.planes):
                value = (n * 7 + index * 50) % 256
                plane.update(bytes([value]) * plane.buffer_size)
            frame.pts = n
            for packet in stream.encode(frame):
                crcs.add(zlib.crc32(bytes(packet)))
                container.mux(packet)
        for packet in stream.encode(None):
            crcs.add(zlib.crc32(bytes(packet)))
            container.mux(packet)
    return crcs


async def test_the_hub_forwards_frames_as_the_sender_encoded_them(
    worker: SignallingWorker, tmp_path: Path
) -> None:
    clip = tmp_path / "clinic-camera.webm"
    sent = await asyncio.to_thread(write_vp8_clip, clip)
    async with (
        worker.client("consult-vp8", VILLAGE_DOCTOR, video_file=clip) as village,
        worker.client("consult-vp8", SPECIALIST) as specialist,
    ):
        await specialist.wait_for(
            lambda c: c.received(VILLAGE_DOCTOR.id, "video").frames >= 60, DEADLINE
        )
        received = specialist.received(VILLAGE_DOCTOR.id, "video")
        # Bit for bit the clinic's own frames: nothing was decoded and encoded again on the
        # way, and they decode at the far end.
        assert received.frame_crcs <= sent
        assert len(received.frame_crcs) >= 30
        assert received.decode_errors == 0
        # The hub forwarded what it received, frame for frame, and made no frames itself.
        room = worker.rooms.hub.stats()["consult-vp8"]["participants"]
        source = room[VILLAGE_DOCTOR.id]["sources"]["video"]
        forwarded = [
            f["frames"]
            for f in room[SPECIALIST.id]["forwarded"]
            if f["participantId"] == VILLAGE_DOCTOR.id and f["kind"] == "video"
        ]
        assert forwarded and 0 < forwarded[0] <= source["frames"]
        assert village.received(SPECIALIST.id, "video").picture_of == SPECIALIST.id


async def test_a_late_joiner_gets_a_picture_because_the_hub_asks_the_sender(
    worker: SignallingWorker,
) -> None:
    async with (
        worker.client("consult-late", VILLAGE_DOCTOR) as village,
        worker.client("consult-late", SPECIALIST) as specialist,
    ):
        await specialist.wait_for(lambda c: sees(c, village, frames=45), DEADLINE)
        requests_before = village.keyframe_requests
        keyframes_before = specialist.received(VILLAGE_DOCTOR.id, "video").keyframes
        # aiortc's encoder makes a keyframe every 3000 frames (100 s) unless asked: any
        # picture the late joiner gets now comes from a request relayed to the village.
        async with worker.client("consult-late", TOWNSHIP_DOCTOR) as township:
            await township.wait_for(lambda c: sees(c, village, frames=1), DEADLINE)
            assert village.keyframe_requests > requests_before
            late = township.received(VILLAGE_DOCTOR.id, "video")
            assert late.keyframes >= 1 and late.decode_errors == 0
            assert late.picture_of == VILLAGE_DOCTOR.id
            # The specialist's picture went on undisturbed, with the keyframe made for the
            # newcomer passing by.
            await specialist.wait_for(
                lambda c: c.received(VILLAGE_DOCTOR.id, "video").keyframes > keyframes_before,
                DEADLINE,
            )
            assert specialist.received(VILLAGE_DOCTOR.id, "video").decode_errors == 0


async def test_leaving_is_seen_and_frees_everything(worker: SignallingWorker) -> None:
    threads_before = decoder_threads()
    async with (
        worker.client("consult-leave", VILLAGE_DOCTOR) as village,
        worker.client("consult-leave", SPECIALIST) as specialist,
    ):
        township = worker.client("consult-leave", TOWNSHIP_DOCTOR)
        await township.join()
        await township.wait_for(lambda c: sees(c, village) and sees(c, specialist), DEADLINE)
        await township.leave()
        for client in (village, specialist):
            await client.wait_for(lambda c: TOWNSHIP_DOCTOR.id not in c.present, DEADLINE)
            await client.wait_for(lambda c: TOWNSHIP_DOCTOR.id not in c.tracks.values(), DEADLINE)
        assert TOWNSHIP_DOCTOR.id in village.seen
        room = worker.rooms.hub.stats()["consult-leave"]["participants"]
        assert set(room) == {VILLAGE_DOCTOR.id, SPECIALIST.id}
        assert worker.rooms.owned_rooms()["consult-leave"] == [VILLAGE_DOCTOR, SPECIALIST]
        # The two who stay still see each other.
        frames = village.received(SPECIALIST.id, "video").frames
        await village.wait_for(
            lambda c: c.received(SPECIALIST.id, "video").frames > frames + 10, DEADLINE
        )
    # Everyone gone: no room, no connection, no task, no receiving thread, no lease.
    await eventually(lambda: not worker.rooms.hub.rooms and not hub_tasks(), "the room closed")
    await eventually(lambda: decoder_threads() <= threads_before, "receiving threads ended")
    assert worker.rooms.owned_rooms() == {}
    assert await worker.bus.claim("consult.room.consult-leave", "another-worker", 5) == (
        "another-worker"
    )


async def test_a_fresh_negotiation_reconnects_without_leaving(worker: SignallingWorker) -> None:
    async with (
        worker.client("consult-again", VILLAGE_DOCTOR) as village,
        worker.client("consult-again", SPECIALIST) as specialist,
    ):
        await specialist.wait_for(lambda c: sees(c, village), DEADLINE)
        before = specialist.received(VILLAGE_DOCTOR.id, "video").frames
        await village.negotiate()  # a new peer connection, as after a dropped link
        await specialist.wait_for(
            lambda c: c.received(VILLAGE_DOCTOR.id, "video").frames > before + 30, DEADLINE
        )
        await village.wait_for(lambda c: sees(c, specialist, frames=10), DEADLINE)
        assert VILLAGE_DOCTOR.id in specialist.present
        assert specialist.received(VILLAGE_DOCTOR.id, "video").decode_errors == 0


async def test_joining_again_elsewhere_replaces_the_first_connection(
    worker: SignallingWorker,
) -> None:
    async with worker.client("consult-twice", SPECIALIST) as specialist:
        first = worker.client("consult-twice", VILLAGE_DOCTOR)
        await first.join()
        async with worker.client("consult-twice", VILLAGE_DOCTOR) as second:
            await first.wait_for(lambda c: c.bye is not None, DEADLINE)
            assert first.bye is not None and first.bye.startswith("replaced")
            await second.wait_for(lambda c: sees(c, specialist), DEADLINE)
            await specialist.wait_for(lambda c: sees(c, second), DEADLINE)
            assert VILLAGE_DOCTOR.id in specialist.present
        await first.leave()


async def test_h264_when_the_room_uses_it(worker: SignallingWorker) -> None:
    async with (
        worker.client("consult-h264", VILLAGE_DOCTOR, video_codec="H264") as village,
        worker.client("consult-h264", SPECIALIST) as specialist,
    ):
        await village.wait_for(lambda c: sees(c, specialist), DEADLINE)
        await specialist.wait_for(lambda c: sees(c, village), DEADLINE)
        seen = specialist.received(VILLAGE_DOCTOR.id, "video")
        assert (seen.codec, seen.picture_of, seen.decode_errors) == ("H264", VILLAGE_DOCTOR.id, 0)
        assert village.received(SPECIALIST.id, "video").codec == "H264"
        # Someone who cannot send H.264 is told why rather than left without a picture.
        vp8_only = worker.client("consult-h264", TOWNSHIP_DOCTOR, video_codec="VP8")
        with pytest.raises(ConsultClientError, match="codec-unsupported"):
            await vp8_only.join()
        await vp8_only.leave()
