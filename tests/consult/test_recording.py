"""Recording a call with the patient's consent: the hub's packets in files, not re-encoded."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from redis.asyncio import Redis

from consult.client import ConsultClient
from consult.resources import RECORDING_CONSENT, recording_consent
from consult.rooms import ROOM_LEASE
from health.core.bus import bus_namespace
from health.core.clock import utcnow
from tests.auth.test_logins import Browser
from tests.consult.conftest import DEADLINE, eventually
from tests.consult.network import make_two_workers
from tests.consult.on_record import OUTSIDER, SPECIALIST_ON_RECORD, VILLAGE, ConsultsOnRecord
from tests.consult.test_call import sees
from tests.receivers import Receiver
from tests.services import AppServer, RedisServer


def decoded(path: Path) -> dict[str, Any]:
    """What a recorded file plays: per track its codec, frames decoded, first and last time."""
    tracks: dict[str, Any] = {}
    with av.open(str(path)) as container:
        for stream in container.streams:
            tracks[stream.type] = {
                "codec": stream.codec_context.name,
                "frames": 0,
                "first": None,
                "last": 0.0,
                "errors": 0,
            }
        duration = container.duration / av.time_base if container.duration else None
        for packet in container.demux():
            if packet.size == 0:
                continue
            track = tracks[packet.stream.type]
            moment = float(packet.pts * packet.time_base)
            track["first"] = moment if track["first"] is None else min(track["first"], moment)
            track["last"] = max(track["last"], moment)
            try:
                track["frames"] += len(packet.decode())
            except av.FFmpegError:
                track["errors"] += 1
    return {"duration": duration, **tracks}


def recording_state(client: ConsultClient, state: str) -> bool:
    return client.recording is not None and client.recording.state == state


async def test_a_recorded_call_plays_back_with_both_tracks_of_each_participant(
    on_record: ConsultsOnRecord,
) -> None:
    consult = on_record.open_consult(recording_consent=True)
    loop = asyncio.get_running_loop()
    async with (
        on_record.client(consult, VILLAGE) as doctor,
        on_record.client(consult, SPECIALIST_ON_RECORD) as specialist,
    ):
        await specialist.wait_for(lambda c: sees(c, doctor), DEADLINE)
        await doctor.wait_for(lambda c: sees(c, specialist), DEADLINE)
        asked = loop.time()
        await doctor.start_recording()
        for client in (doctor, specialist):
            await client.wait_for(lambda c: recording_state(c, "on"), DEADLINE)
        started = loop.time()
        assert specialist.recording is not None
        assert specialist.recording.started_by is not None
        assert specialist.recording.started_by.id == VILLAGE.id
        document = specialist.recording.document
        assert doctor.participant is not None and specialist.participant is not None
        titles = [
            f"{c.participant.display_name} ({c.participant.role})"
            for c in (doctor, specialist)
            if c.participant is not None
        ]
        assert document is not None and document.startswith("DocumentReference/")
        seen = specialist.received(VILLAGE.id, "video").frames
        await specialist.wait_for(
            lambda c: c.received(VILLAGE.id, "video").frames >= seen + 90, DEADLINE
        )
        # The village doctor's link drops and she negotiates afresh: the recording goes on.
        await doctor.negotiate()
        seen = specialist.received(VILLAGE.id, "video").frames
        await specialist.wait_for(
            lambda c: c.received(VILLAGE.id, "video").frames >= seen + 90, DEADLINE
        )
        stopping = loop.time()
        await specialist.stop_recording()
        for client in (doctor, specialist):
            await client.wait_for(lambda c: recording_state(c, "off"), DEADLINE)
        # The files began between the request and the notice, and end by the notice of
        # the stop (give or take the frames in flight through the hub: more of them on a
        # loaded machine, so the bounds allow a second and a half either way).
        shortest, longest = stopping - started, loop.time() - asked
        assert specialist.recording is not None and specialist.recording.document == document
    # The record: a final DocumentReference with one file per participant.
    with on_record.fhir("specialist") as fhir:
        kept = fhir.get(f"/{document}").json()
        assert kept["docStatus"] == "final"
        assert kept["subject"]["reference"] == on_record.patient_of(consult)
        assert kept["context"]["related"] == [{"reference": f"ServiceRequest/{consult}"}]
        assert kept["context"]["encounter"][0]["reference"].startswith("Encounter/")
        assert "end" in kept["context"]["period"]
        attachments = [c["attachment"] for c in kept["content"]]
        assert [a["title"] for a in attachments] == titles
        assert {a["contentType"] for a in attachments} == {"video/webm"}
        urls = [a["url"] for a in attachments]
    app = on_record.network.server.url
    folder = next(on_record.recording_dir.glob(f"{consult}/*"))
    for attachment in attachments:
        path = folder / attachment["url"].rsplit("/", 1)[1]
        assert path.stat().st_size == attachment["size"]
        played = decoded(path)
        # Both tracks, as they were sent (VP8 and Opus), playing as long as the recording.
        assert played["video"]["codec"] == "vp8" and played["audio"]["codec"] == "opus"
        assert played["video"]["frames"] >= 100 and played["audio"]["frames"] >= 150
        assert played["video"]["errors"] == 0
        assert played["duration"] is not None
        assert shortest - 1.5 <= played["duration"] <= longest + 1.5
    # The village doctor's file spans the reconnection: no gap of more than a few seconds.
    village_file = decoded(folder / urls[0].rsplit("/", 1)[1])
    assert village_file["audio"]["last"] - village_file["audio"]["first"] >= shortest - 3
    # Played back over HTTP to the specialist (with seeking), not to an outsider.
    specialist_token = on_record.network.token("specialist")
    as_specialist = {"Authorization": f"Bearer {specialist_token}"}
    local = (folder / urls[0].rsplit("/", 1)[1]).read_bytes()
    async with httpx.AsyncClient(base_url=app, timeout=60) as web:
        full = await web.get(urls[0], headers=as_specialist)
        assert full.status_code == 200, full.text
        assert full.headers["content-type"] == "video/webm"
        assert zlib.crc32(full.content) == zlib.crc32(local)
        part = await web.get(urls[0], headers={**as_specialist, "Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == local[:100]
        as_outsider = {"Authorization": f"Bearer {on_record.network.token(OUTSIDER.id)}"}
        assert (await web.get(urls[0], headers=as_outsider)).status_code == 404
        assert (await web.get(urls[0])).status_code == 401
    # The shared record's page plays each file to the specialist.
    pages = Browser(on_record.network.server)
    try:
        assert pages.login("specialist").status_code == 303
        record_page = pages.http.get(f"/consult/{consult}/record")
        assert record_page.status_code == 200
        for url in urls:
            assert f'<video controls preload="metadata" src="{url}">' in record_page.text
    finally:
        pages.close()


async def test_no_recording_without_the_patients_consent(on_record: ConsultsOnRecord) -> None:
    consult = on_record.open_consult(recording_consent=False)
    async with (
        on_record.client(consult, VILLAGE) as doctor,
        on_record.client(consult, SPECIALIST_ON_RECORD) as specialist,
    ):
        await specialist.wait_for(lambda c: sees(c, doctor, frames=1), DEADLINE)
        await doctor.start_recording()
        await doctor.wait_for(
            lambda c: any(e.code == "recording-not-allowed" for e in c.errors), DEADLINE
        )
        refusal = next(e for e in doctor.errors if e.code == "recording-not-allowed")
        assert "Consent" in refusal.message
        assert specialist.recording is None and doctor.recording is None
    assert not list(on_record.recording_dir.glob(f"{consult}/*"))
    with on_record.fhir("village-doctor") as fhir:
        documents = fhir.get(
            "/DocumentReference", params={"related": f"ServiceRequest/{consult}"}
        ).json()
        assert documents.get("entry", []) == []


async def test_withdrawing_the_consent_stops_a_running_recording(
    on_record: ConsultsOnRecord,
) -> None:
    """The patient changes her mind during the call: her clinic withdraws the consent, and
    the recording stops at once — everyone is told why, the files stop growing, the record
    says it was cut short, and the call cannot be recorded again."""
    consult = on_record.open_consult(recording_consent=True)
    async with (
        on_record.client(consult, VILLAGE) as doctor,
        on_record.client(consult, SPECIALIST_ON_RECORD) as specialist,
    ):
        await specialist.wait_for(lambda c: sees(c, doctor), DEADLINE)
        await doctor.start_recording()
        for client in (doctor, specialist):
            await client.wait_for(lambda c: recording_state(c, "on"), DEADLINE)
        assert specialist.recording is not None
        document = specialist.recording.document
        seen = specialist.received(VILLAGE.id, "video").frames
        await specialist.wait_for(
            lambda c: c.received(VILLAGE.id, "video").frames >= seen + 30, DEADLINE
        )
        withdrawn = await asyncio.to_thread(
            on_record.network.act, "village-doctor", consult, "recording-consent", agreed=False
        )
        assert withdrawn.status_code == 200, withdrawn.text
        assert withdrawn.json()["recordingConsent"] is None
        for client in (doctor, specialist):
            await client.wait_for(lambda c: recording_state(c, "off"), DEADLINE)
            assert client.recording is not None
            assert client.recording.reason == "consent-withdrawn"
            assert client.recording.consent is False
            assert client.recording.document == document
        folder = next(on_record.recording_dir.glob(f"{consult}/*"))
        files = sorted(p for p in folder.iterdir() if p.suffix == ".webm")
        assert len(files) == 2
        sizes = [p.stat().st_size for p in files]
        # The call goes on; nothing more is written.
        seen = specialist.received(VILLAGE.id, "video").frames
        await specialist.wait_for(
            lambda c: c.received(VILLAGE.id, "video").frames >= seen + 60, DEADLINE
        )
        assert [p.stat().st_size for p in files] == sizes
        await doctor.start_recording()
        await doctor.wait_for(
            lambda c: any(e.code == "recording-not-allowed" for e in c.errors), DEADLINE
        )
        assert doctor.recording is not None and doctor.recording.state == "off"
    assert len(list(on_record.recording_dir.glob(f"{consult}/*"))) == 1
    with on_record.fhir("specialist") as fhir:
        kept = fhir.get(f"/{document}").json()
        assert kept["docStatus"] == "final"
        assert "withdrew the consent" in kept["description"]
        for attachment, path in zip(
            sorted(kept["content"], key=lambda c: c["attachment"]["url"]), files, strict=True
        ):
            assert attachment["attachment"]["size"] == path.stat().st_size
    for path in files:
        played = decoded(path)
        assert played["video"]["frames"] >= 20 and played["video"]["errors"] == 0


async def test_only_the_patients_clinic_records_her_consent_and_only_as_a_yes_or_no(
    on_record: ConsultsOnRecord,
) -> None:
    """The consent to recording is the patient's, given at her clinic: the specialist cannot
    record it for her, and a body that is not a plain yes or no is refused, naming the field,
    with nothing written."""
    consult = on_record.open_consult(recording_consent=False)
    net = on_record.network
    by_specialist = net.act("specialist", consult, "recording-consent", agreed=True)
    assert by_specialist.status_code == 403, by_specialist.text
    for body in ({"agreed": "yes"}, {"agreed": None}, {}, {"agreed": [True]}):
        refused = net.act("village-doctor", consult, "recording-consent", **body)
        assert refused.status_code == 400, (body, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "body.agreed" in refused.json()["detail"], refused.text
    with net.api("village-doctor") as api:
        missing = api.post("/api/consults/no-such-consult/recording-consent", json={"agreed": True})
        assert missing.status_code == 404, missing.text
    # Written through /fhir, the same rules hold: the patient's clinic, for this consult.
    patient = {"reference": on_record.patient_of(consult)}
    agreed = recording_consent(
        consult_id=consult, patient=patient, organization=None, start=utcnow()
    )
    with on_record.fhir("specialist") as fhir:
        refused = fhir.post("/Consent", json=agreed)
        assert refused.status_code == 403, refused.text
        assert refused.json()["resourceType"] == "OperationOutcome"
    other_data = [{"meaning": "related", "reference": {"reference": "ServiceRequest/x"}}]
    for wrong, field in (
        (
            {**agreed, "provision": {**agreed["provision"], "data": other_data}},
            "Consent.provision.data",
        ),
        ({**agreed, "status": "proposed"}, "Consent.status"),
    ):
        with on_record.fhir("village-doctor") as fhir:
            refused = fhir.post("/Consent", json=wrong)
        assert refused.status_code == 422, refused.text
        outcome = refused.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert field in outcome["issue"][0]["expression"], outcome
    assert net.consult("village-doctor", consult).json()["recordingConsent"] is None
    with on_record.fhir("village-doctor") as fhir:
        consents = fhir.get(
            "/Consent", params={"patient": on_record.patient_of(consult), "status": "active"}
        ).json()
        categories = [
            coding["code"]
            for entry in consents.get("entry", [])
            for category in entry["resource"].get("category", [])
            for coding in category.get("coding", [])
        ]
        assert RECORDING_CONSENT["code"] not in categories


async def test_a_crash_of_the_hub_loses_at_most_the_last_seconds(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    consult_receiver: Receiver,
) -> None:
    """Two app workers behind Redis; the one whose hub records the call dies (``kill -9``)."""
    # Made in a thread: creating the database runs an event loop of its own.
    net, survivor = await asyncio.to_thread(
        make_two_workers, request, tmp_path_factory, redis_server, consult_receiver
    )
    try:
        await crash_mid_recording(ConsultsOnRecord(net), survivor, redis_server)
    finally:
        net.system.close()
        survivor.stop()
        net.server.stop()


async def crash_mid_recording(
    on_record: ConsultsOnRecord, survivor: AppServer, redis_server: RedisServer
) -> None:
    consult = on_record.open_consult(recording_consent=True)
    doomed = on_record.network.server
    loop = asyncio.get_running_loop()
    doctor = on_record.client(consult, VILLAGE, reconnect_seconds=0)
    specialist = on_record.client(consult, SPECIALIST_ON_RECORD, reconnect_seconds=0)
    try:
        await doctor.join()
        await specialist.join()
        await specialist.wait_for(lambda c: sees(c, doctor), DEADLINE)
        await doctor.start_recording()
        await specialist.wait_for(lambda c: recording_state(c, "on"), DEADLINE)
        started = loop.time()
        assert specialist.recording is not None
        document = specialist.recording.document
        seen = specialist.received(VILLAGE.id, "video").frames
        await specialist.wait_for(
            lambda c: c.received(VILLAGE.id, "video").frames >= seen + 150, DEADLINE
        )
        recorded = loop.time() - started
        doomed.kill()  # kill -9, mid-call: no file is closed, nothing is finished
    finally:
        doomed.kill()
        await doctor.leave()
        await specialist.leave()
    folder = next(on_record.recording_dir.glob(f"{consult}/*"))
    files = sorted(folder.glob("*.webm"))
    assert len(files) == 2
    for path in files:
        played = decoded(path)
        # Whole up to the last cluster written: at most the last two seconds or so are lost.
        assert played["video"]["frames"] > 0 and played["audio"]["frames"] > 0
        assert played["audio"]["last"] >= recorded - 2.5, (played, recorded)
        assert played["video"]["last"] >= recorded - 3.0, (played, recorded)
    # What the dead worker wrote is read through the one that lives.
    on_record.network.server = survivor
    with on_record.fhir("specialist") as fhir:
        assert fhir.get(f"/{document}").json()["docStatus"] == "preliminary"
    # The next worker to hold the consult completes what the dead one left, once the dead
    # one's lease on the room has run out.
    lease = Redis.from_url(redis_server.url)
    try:
        deadline = loop.time() + DEADLINE
        namespace = bus_namespace(survivor.database_url)
        while await lease.exists(f"{namespace}:lease:{ROOM_LEASE.format(consult)}"):
            assert loop.time() < deadline, "the dead worker's lease held"
            await asyncio.sleep(0.05)
    finally:
        await lease.aclose()
    async with on_record.client(consult, VILLAGE) as again:
        await again.wait_for(lambda c: c.participant is not None, DEADLINE)
        with on_record.fhir("specialist") as fhir:

            def completed() -> bool:
                return bool(fhir.get(f"/{document}").json()["docStatus"] == "final")

            await eventually(completed, "the cut-short recording was completed")
            kept = fhir.get(f"/{document}").json()
    assert "Cut short" in kept["description"]
    for attachment in (c["attachment"] for c in kept["content"]):
        path = folder / attachment["url"].rsplit("/", 1)[1]
        assert attachment["size"] == path.stat().st_size
        played = decoded(path)
        assert played["duration"] is not None and played["duration"] >= recorded - 3.0
