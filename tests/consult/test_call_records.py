"""What a call keeps in the patient's record: readings, chat and shared files.

Through the hub's records interface on the records' own way in, and read back over the
app's HTTP API by the specialist the consult shares the record with, and by an outsider.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import av
import orjson

from consult.client import ConsultClient
from tests.consult.conftest import DEADLINE
from tests.consult.on_record import (
    OUTSIDER,
    SPECIALIST_ON_RECORD,
    VILLAGE,
    ConsultsOnRecord,
    signalling_url,
)
from tests.consult.test_client_command import health

LOINC = "http://loinc.org"


def codes(concept: dict[str, Any]) -> set[str]:
    return {c["code"] for c in concept["coding"] if c["system"] == LOINC}


def png_image(width: int = 64, height: int = 48) -> bytes:
    frame = av.VideoFrame(width, height, "rgb24")
    size = frame.planes[0].buffer_size
    frame.planes[0].update((bytes(range(256)) * (size // 256 + 1))[:size])
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "rgb24"
    return b"".join(bytes(p) for p in codec.encode(frame))


def pdf_document(text: str) -> bytes:
    """A small, whole PDF: header, objects, cross-reference table, trailer."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


async def test_readings_are_checked_shown_live_and_kept_as_observations(
    on_record: ConsultsOnRecord,
) -> None:
    consult = on_record.open_consult()
    async with (
        on_record.client(consult, VILLAGE) as doctor,
        on_record.client(consult, SPECIALIST_ON_RECORD) as specialist,
    ):
        sent = {
            "bp": doctor.send_reading(
                {
                    "kind": "blood-pressure",
                    "systolic": 158,
                    "diastolic": 96,
                    "unit": "mmHg",
                    "device": "Omron HEM-7121",
                }
            ),
            "hr": doctor.send_reading({"kind": "heart-rate", "value": 92, "unit": "bpm"}),
            "spo2": doctor.send_reading({"kind": "spo2", "value": 93, "unit": "%"}),
            "temp": doctor.send_reading({"kind": "temperature", "value": 100.4, "unit": "°F"}),
            "glucose": doctor.send_reading({"kind": "glucose", "value": 126, "unit": "mg/dL"}),
            "high": doctor.send_reading(
                {"kind": "blood-pressure", "systolic": 400, "diastolic": 90, "unit": "mm[Hg]"}
            ),
            "unit": doctor.send_reading({"kind": "temperature", "value": 37, "unit": "kg"}),
            "swapped": doctor.send_reading(
                {"kind": "blood-pressure", "systolic": 80, "diastolic": 120}
            ),
        }
        await doctor.wait_for(lambda c: set(sent.values()) <= set(c.replies), DEADLINE)
        replies = {name: doctor.replies[ref] for name, ref in sent.items()}
        # Implausible readings are refused, naming the field, and nobody else sees them.
        assert (replies["high"]["code"], replies["high"]["field"]) == (
            "implausible-reading",
            "systolic",
        )
        assert "400 mm[Hg]" in replies["high"]["message"]
        assert (replies["unit"]["field"], replies["unit"]["code"]) == (
            "unit",
            "invalid-reading",
        )
        assert replies["swapped"]["field"] == "diastolic"
        kept = {n: r["resource"] for n, r in replies.items() if r["type"] == "stored"}
        assert set(kept) == {"bp", "hr", "spo2", "temp", "glucose"}
        # The specialist saw each kept reading as it came, with its place in the record.
        await specialist.wait_for(lambda c: len(c.readings) >= 5, DEADLINE)
        seen = {r["id"]: r for r in specialist.readings}
        assert set(seen) == {sent[n] for n in kept}
        bp = seen[sent["bp"]]
        assert (bp["systolic"], bp["diastolic"], bp["unit"], bp["from"]["id"]) == (
            158,
            96,
            "mm[Hg]",
            VILLAGE.id,
        )
        assert bp["observation"] == kept["bp"]
        # Sent again (after a reconnection, say), a reading is kept and shown once.
        again = doctor.send_reading(
            {"id": sent["hr"], "kind": "heart-rate", "value": 92, "unit": "bpm"}
        )
        await doctor.wait_for(lambda c: c.replies[again].get("type") == "stored", DEADLINE)
        assert doctor.replies[again]["resource"] == kept["hr"]
    with on_record.fhir("specialist") as fhir:
        observations = {n: fhir.get(f"/{ref}") for n, ref in kept.items()}
        assert all(r.status_code == 200 for r in observations.values())
        bundle = {n: r.json() for n, r in observations.items()}
        patient = on_record.patient_of(consult)
        bp_obs = bundle["bp"]
        assert codes(bp_obs["code"]) == {"85354-9"}
        components = {next(iter(codes(c["code"]))): c["valueQuantity"] for c in bp_obs["component"]}
        assert components["8480-6"] == {
            "value": 158,
            "unit": "mm[Hg]",
            "system": "http://unitsofmeasure.org",
            "code": "mm[Hg]",
        }
        assert components["8462-4"]["value"] == 96
        assert bp_obs["subject"]["reference"] == patient
        assert bp_obs["encounter"]["reference"].startswith("Encounter/")
        assert bp_obs["basedOn"] == [{"reference": f"ServiceRequest/{consult}"}]
        assert bp_obs["device"] == {"display": "Omron HEM-7121"}
        assert bp_obs["category"][0]["coding"][0]["code"] == "vital-signs"
        assert codes(bundle["hr"]["code"]) == {"8867-4"}
        assert bundle["hr"]["valueQuantity"]["code"] == "/min"
        assert codes(bundle["spo2"]["code"]) == {"59408-5", "2708-6"}
        assert codes(bundle["temp"]["code"]) == {"8310-5"}
        # Converted on the way in to the unit the record keeps each code in.
        assert bundle["temp"]["valueQuantity"]["code"] == "Cel"
        assert bundle["temp"]["valueQuantity"]["value"] == 38.0
        assert {"text": "As measured: 100.4 [degF]"} in bundle["temp"]["note"]
        assert codes(bundle["glucose"]["code"]) == {"15074-8"}
        assert bundle["glucose"]["valueQuantity"]["code"] == "mmol/L"
        assert bundle["glucose"]["valueQuantity"]["value"] == 7.0
        # And a clinician finds them the usual way: by code in the patient's record.
        found = fhir.get(
            "/Observation",
            params={
                "subject": patient,
                "component-code": f"{LOINC}|8480-6",
                "encounter": bp_obs["encounter"]["reference"],
            },
        ).json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [bp_obs["id"]]
    with on_record.fhir(OUTSIDER.id) as fhir:
        assert fhir.get(f"/{kept['bp']}").status_code == 404


async def test_what_the_call_keeps_for_her_stays_within_her_tokens_scopes(
    on_record: ConsultsOnRecord,
) -> None:
    """An app she signed in to with read-only scopes may take her into the call, but what
    she sends there is not written in her name: the hub writes with her token's scopes, not
    with every scope a user has."""
    consult = on_record.open_consult()
    read_only = on_record.network.token(VILLAGE.id, "user/*.rs")
    url = signalling_url(on_record.network.server.url, consult)
    async with ConsultClient(url, token=read_only, width=320, height=240) as doctor:
        refused = doctor.send_reading({"kind": "heart-rate", "value": 92, "unit": "bpm"})
        said = doctor.send_chat("请看一下")
        await doctor.wait_for(lambda c: {refused, said} <= set(c.replies), DEADLINE)
        for ref in (refused, said):
            reply = doctor.replies[ref]
            assert (reply["type"], reply["code"]) == ("error", "not-stored"), reply
    # With her usual scopes, the same call keeps them.
    async with on_record.client(consult, VILLAGE) as doctor:
        kept = doctor.send_reading({"kind": "heart-rate", "value": 92, "unit": "bpm"})
        await doctor.wait_for(lambda c: kept in c.replies, DEADLINE)
        assert doctor.replies[kept]["type"] == "stored", doctor.replies[kept]
    with on_record.fhir("village-doctor") as fhir:
        found = fhir.get(
            "/Observation", params={"patient": on_record.patient_of(consult), "code": "8867-4"}
        ).json()
        assert len(found.get("entry", [])) == 1
        chats = fhir.get("/Communication", params={"subject": on_record.patient_of(consult)}).json()
        assert chats.get("entry", []) == []


async def test_chat_and_shared_files_are_kept_and_only_those_allowed_see_them(
    on_record: ConsultsOnRecord,
) -> None:
    consult = on_record.open_consult()
    async with (
        on_record.client(consult, VILLAGE) as doctor,
        on_record.client(consult, SPECIALIST_ON_RECORD) as specialist,
    ):
        line = doctor.send_chat("血压偏高，请看一下心电图")
        photo = png_image()
        ecg = pdf_document("ECG 2025-06-01: sinus rhythm, 92/min")
        shared = {
            "photo": doctor.share_file(
                photo,
                name="C:\\photos\\lesion.png",
                content_type="image/png",
                description="skin lesion, left forearm",
            ),
            "ecg": doctor.share_file(ecg, name="ecg.pdf", content_type="application/pdf"),
            # An executable named as a photo; a web page named as a PDF; half a picture.
            "exe": doctor.share_file(
                b"MZ\x90\x00\x03" + bytes(4000), name="photo.jpg", content_type="image/jpeg"
            ),
            "html": doctor.share_file(
                b"<html><script>alert(1)</script></html>",
                name="report.pdf",
                content_type="application/pdf",
            ),
            "torn": doctor.share_file(photo[: len(photo) // 2], name="torn.png"),
            "big": doctor.share_file(bytes(300 * 1024), name="scan.png"),
        }
        await doctor.wait_for(lambda c: {line, *shared.values()} <= set(c.replies), DEADLINE * 2)
        replies = {n: doctor.replies[ref] for n, ref in shared.items()}
        assert replies["exe"]["code"] == "file-type-refused"
        assert replies["exe"]["field"] == "content"
        assert "photo.jpg is not a JPEG, PNG or WebP image or a PDF" in replies["exe"]["message"]
        assert replies["html"]["code"] == "file-type-refused"
        assert (replies["torn"]["field"], replies["torn"]["code"]) == (
            "content",
            "invalid-file",
        )
        assert (replies["big"]["field"], replies["big"]["code"]) == ("size", "file-too-large")
        # The specialist is shown the chat line and the two good files, nothing else.
        await specialist.wait_for(lambda c: len(c.files) >= 2 and len(c.chat) >= 1, DEADLINE)
        assert [f["name"] for f in specialist.files] == ["lesion.png", "ecg.pdf"]
        assert specialist.chat[0]["text"] == "血压偏高，请看一下心电图"
        communication = doctor.replies[line]["resource"]
        assert doctor.participant is not None and specialist.participant is not None
        names = (doctor.participant.display_name, specialist.participant.display_name)
        photo_document = replies["photo"]["resource"]
        ecg_document = replies["ecg"]["resource"]
        assert specialist.files[0]["document"] == photo_document
    with on_record.fhir("specialist") as fhir:
        kept = fhir.get(f"/{photo_document}").json()
        attachment = kept["content"][0]["attachment"]
        assert base64.b64decode(attachment["data"]) == photo
        assert (attachment["contentType"], attachment["title"], attachment["size"]) == (
            "image/png",
            "lesion.png",
            len(photo),
        )
        assert kept["subject"]["reference"] == on_record.patient_of(consult)
        assert kept["context"]["related"] == [{"reference": f"ServiceRequest/{consult}"}]
        assert kept["description"] == "skin lesion, left forearm"
        pdf = fhir.get(f"/{ecg_document}").json()["content"][0]["attachment"]
        assert base64.b64decode(pdf["data"]) == ecg and pdf["contentType"] == "application/pdf"
        chat = fhir.get(f"/{communication}").json()
        assert chat["payload"] == [{"contentString": "血压偏高，请看一下心电图"}]
        assert (chat["sender"]["display"], chat["recipient"][0]["display"]) == names
        documents = fhir.get(
            "/DocumentReference", params={"related": f"ServiceRequest/{consult}"}
        ).json()
        assert {e["resource"]["id"] for e in documents.get("entry", [])} == {
            photo_document.split("/")[1],
            ecg_document.split("/")[1],
        }
    with on_record.fhir(OUTSIDER.id) as fhir:
        for reference in (photo_document, ecg_document, communication):
            assert fhir.get(f"/{reference}").status_code == 404


async def test_the_command_line_client_sends_a_device_gateways_readings(
    on_record: ConsultsOnRecord, tmp_path: Path
) -> None:
    consult = on_record.open_consult()
    readings = tmp_path / "readings.jsonl"
    readings.write_text(
        "\n".join(
            [
                '{"id": "gw-1", "kind": "blood-pressure", "systolic": 146, "diastolic": 91}',
                "",
                '{"id": "gw-2", "kind": "spo2", "value": 96, "unit": "%", "afterSeconds": 1.5}',
                '{"id": "gw-3", "kind": "heart-rate", "value": 999, "unit": "/min"}',
            ]
        ),
        encoding="utf-8",
    )
    async with on_record.client(consult, SPECIALIST_ON_RECORD) as specialist:
        code, out, err = await health(
            "consult",
            "join",
            consult,
            "--token",
            on_record.network.token(VILLAGE.id),
            "--server",
            on_record.network.server.url,
            "--duration",
            "8",
            "--vitals",
            str(readings),
        )
        assert code == 0, err[-2000:]
        summary = orjson.loads(out)
        replies = {r["id"]: r for r in summary["replies"]}
        assert replies["gw-1"]["type"] == replies["gw-2"]["type"] == "stored"
        assert (replies["gw-3"]["code"], replies["gw-3"]["field"]) == (
            "implausible-reading",
            "value",
        )
        await specialist.wait_for(lambda c: len(c.readings) >= 2, DEADLINE)
        assert [r["id"] for r in specialist.readings] == ["gw-1", "gw-2"]
    with on_record.fhir("specialist") as fhir:
        observation = fhir.get(f"/{replies['gw-2']['resource']}").json()
        assert observation["valueQuantity"]["value"] == 96


async def test_the_command_refuses_a_readings_file_that_is_not_json_lines(tmp_path: Path) -> None:
    readings = tmp_path / "readings.jsonl"
    readings.write_text('{"kind": "spo2", "value": 96}\nnot json\n', encoding="utf-8")
    code, _, err = await health(
        "consult", "join", "c-1", "--token", "t", "--vitals", str(readings), "--duration", "1"
    )
    assert code == 2 and "line 2 is not JSON" in err
