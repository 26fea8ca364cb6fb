"""Participants in one consult hear and see each other through the hub."""

from __future__ import annotations

from consult.client import ConsultClient
from tests.consult.conftest import DEADLINE, SPECIALIST, VILLAGE_DOCTOR, SignallingWorker


def sees(viewer: ConsultClient, other: ConsultClient, frames: int = 10) -> bool:
    assert other.participant is not None
    video = viewer.received(other.participant.id, "video")
    audio = viewer.received(other.participant.id, "audio")
    return video.frames >= frames and audio.frames >= frames


async def test_two_participants_exchange_audio_and_video(worker: SignallingWorker) -> None:
    village = worker.client("consult-1", VILLAGE_DOCTOR)
    specialist = worker.client("consult-1", SPECIALIST)
    await village.join()
    await specialist.join()
    try:
        await village.wait_for(lambda c: sees(c, specialist), DEADLINE)
        await specialist.wait_for(lambda c: sees(c, village), DEADLINE)
        seen = village.received(SPECIALIST.id, "video")
        assert seen.picture_of == SPECIALIST.id
        assert (seen.width, seen.height) == (320, 240)
        assert specialist.received(VILLAGE_DOCTOR.id, "video").picture_of == VILLAGE_DOCTOR.id
        print(village.summary())
    finally:
        await specialist.leave()
        await village.leave()
