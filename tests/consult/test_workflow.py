"""The consult workflow through the JSON API, as the village doctor and the specialists use
it: every transition and every refusal, what each leaves in the patient's record, who is
told, and what the specialist may see when — on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.consult.network import (
    ENDOCRINOLOGY,
    GRACE_SECONDS,
    ConsultNetwork,
    in_minutes,
)
from tests.receivers import Received


def fhir_get(network: ConsultNetwork, username: str, path: str, **params: str) -> httpx.Response:
    with network.as_user(username) as client:
        return client.get(path, params=params)


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") != "outcome"
    ]


def notifications(network: ConsultNetwork, consult: str) -> list[Received]:
    """The text messages the SMS gateway accepted about a consult, in order (their
    idempotency keys name the consult and the event: ``consult/<id>/<event>/...``)."""
    return [
        r
        for r in network.receiver.requests
        if r.headers.get("idempotency-key", "").startswith(f"consult/{consult}/")
        and r.status == 200
    ]


def event_of(message: Received) -> str:
    return message.headers["idempotency-key"].split("/")[2]


def wait_for_notification(network: ConsultNetwork, consult: str, event: str) -> Received:
    network.receiver.wait_for(
        lambda _r: any(event_of(n) == event for n in notifications(network, consult))
    )
    return next(n for n in notifications(network, consult) if event_of(n) == event)


def phone_of(network: ConsultNetwork, reference: str) -> str:
    resource = network.system.get(f"/{reference}").json()
    return next(t["value"] for t in resource["telecom"] if t["system"] in ("phone", "sms"))


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


class TestRequestAndQueue:
    def test_the_queue_puts_the_most_pressing_first_then_the_longest_waiting(
        self, consult_network: ConsultNetwork
    ) -> None:
        net = consult_network
        patient = net.fresh_patient()
        first = net.request_consult(patient, priority="routine", reason="第一个常规")
        urgent = net.request_consult(patient, priority="urgent", reason="加急")
        second = net.request_consult(patient, priority="routine", reason="第二个常规")
        stat = net.request_consult(patient, priority="stat", reason="紧急")
        assert first["state"] == "requested" and first["patient"]["display"] == "马秀英"
        with net.api("specialist") as api:
            waiting = [c["id"] for c in api.get("/api/consults/queue").json()["waiting"]]
        mine = [c for c in waiting if c in {first["id"], urgent["id"], second["id"], stat["id"]}]
        assert mine == [stat["id"], urgent["id"], first["id"], second["id"]]
        # The department is told of each new request.
        told = wait_for_notification(net, stat["id"], "requested")
        assert "紧急" in told.body["text"]
        assert told.headers["authorization"] == "Bearer sms-gateway-token"
        department = f"Organization/{net.departments['640100H01-D01']}"
        assert told.body["to"] == phone_of(net, department)
        # Another department's specialist sees none of them.
        with net.api("endocrinologist") as api:
            theirs = [c["id"] for c in api.get("/api/consults/queue").json()["waiting"]]
        assert stat["id"] not in theirs
        problem_of(net.consult("endocrinologist", stat["id"]), 404)

    def test_before_acceptance_the_specialist_sees_the_request_not_the_record(
        self, consult_network: ConsultNetwork
    ) -> None:
        net = consult_network
        patient = net.fresh_patient()
        consult = net.request_consult(patient)
        assert net.consult("specialist", consult["id"]).json()["reason"] == consult["reason"]
        assert fhir_get(net, "specialist", f"/Patient/{patient}").status_code == 404
        assert (
            fhir_get(net, "specialist", "/Observation", subject=f"Patient/{patient}").json()[
                "total"
            ]
            == 0
        )

    def test_bad_requests_are_refused_naming_the_field(
        self, consult_network: ConsultNetwork
    ) -> None:
        net = consult_network
        patient = net.fresh_patient()
        department = net.departments["640100H01-D01"]
        with net.api("village-doctor") as api:
            base = {"patient": patient, "department": department, "reason": "会诊"}
            assert problem_of(api.post("/api/consults", json={**base, "priority": "soon"}), 400)[
                "field"
            ] == ("priority")
            assert (
                problem_of(api.post("/api/consults", json={**base, "reason": "  "}), 400)["field"]
                == "reason"
            )
            both = {**base, "specialist": net.practitioner("specialist")}
            assert problem_of(api.post("/api/consults", json=both), 400)["field"] == "department"
            elsewhere = {**base, "patient": net.patients["a"].id.replace("-", "")[:30]}
            assert problem_of(api.post("/api/consults", json=elsewhere), 422)["field"] == "patient"
            attached = {**base, "supportingInfo": ["Observation/not-there"]}
            refused = problem_of(api.post("/api/consults", json=attached), 422)
            assert refused["field"] == "ServiceRequest.supportingInfo[0]"
            assert problem_of(
                api.post(
                    "/api/consults", content=b"{", headers={"Content-Type": "application/json"}
                ),
                400,
            )
        # Another clinic's patient cannot be sent at all.
        with net.api("hostile") as api:
            assert problem_of(api.post("/api/consults", json=base), 422)["field"] == "patient"


class TestTheWholeConsult:
    def test_request_accept_schedule_call_report_and_the_record_closes_after_the_grace(
        self, consult_network: ConsultNetwork
    ) -> None:
        net = consult_network
        patient = net.fresh_patient()
        a = net.patients[next(k for k, v in net.patients.items() if v.id == patient)]
        consult = net.request_consult(
            patient, supportingInfo=[f"Observation/{a.observation}", f"Condition/{a.condition}"]
        )
        cid = consult["id"]
        # Accepting, with a time for the call.
        accepted = net.act("specialist", cid, "accept", start=in_minutes(30), minutes=20)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["state"] == "scheduled"
        assert (
            accepted.json()["owner"]["reference"]
            == f"Practitioner/{net.practitioner('specialist')}"
        )
        told = wait_for_notification(net, cid, "accepted")
        assert told.body["to"] == phone_of(net, f"Organization/{net.organizations['640121105201']}")
        assert "接受" in told.body["text"]
        # The record is now open to him: the whole of it, not only what was attached.
        assert fhir_get(net, "specialist", f"/Patient/{patient}").status_code == 200
        everything = entries(fhir_get(net, "specialist", f"/Patient/{patient}/$everything").json())
        assert {f"{r['resourceType']}/{r['id']}" for r in everything} >= {
            f"Observation/{a.observation}",
            f"Encounter/{a.encounter}",
        }
        # ...but not to his colleague, who did not take it.
        assert fhir_get(net, "colleague", f"/Patient/{patient}").status_code == 404
        # The call starts: an Encounter of class VR, in progress.
        started = net.act("specialist", cid, "start")
        assert started.json()["state"] == "in-progress"
        encounter = fhir_get(net, "village-doctor", started.json()["encounter"]).json()
        assert (encounter["class"]["code"], encounter["status"]) == ("VR", "in-progress")
        assert encounter["basedOn"] == [{"reference": f"ServiceRequest/{cid}"}]
        # The report completes it and lands in the patient's record at the village clinic.
        reported = net.act(
            "specialist",
            cid,
            "report",
            conclusion="高血压3级，心功能尚可",
            recommendations="氨氯地平5mg每日一次；两周后复测血压",
        )
        assert reported.status_code == 200, reported.text
        done = reported.json()
        assert done["state"] == "completed"
        assert done["report"]["conclusion"] == "高血压3级，心功能尚可"
        notes = entries(
            fhir_get(net, "village-doctor", "/Composition", patient=f"Patient/{patient}").json()
        )
        assert [n["section"][1]["title"] for n in notes] == ["处理建议"]
        assert notes[0]["encounter"]["reference"] == done["encounter"]
        finished = fhir_get(net, "village-doctor", done["encounter"]).json()
        assert finished["status"] == "finished" and "end" in finished["period"]
        request = fhir_get(net, "village-doctor", f"/ServiceRequest/{cid}").json()
        assert request["status"] == "completed"
        appointment = fhir_get(
            net, "village-doctor", "/Appointment", **{"based-on": f"ServiceRequest/{cid}"}
        ).json()
        assert [a["status"] for a in entries(appointment)] == ["fulfilled"]
        wait_for_notification(net, cid, "completed")
        events = [event_of(n) for n in notifications(net, cid)]
        assert events == ["requested", "accepted", "scheduled", "in-progress", "completed"]
        assert len({n.headers["idempotency-key"] for n in notifications(net, cid)}) == len(events)
        # The consult's end closes the record after the grace period (ended: period.end).
        consent = entries(
            fhir_get(net, "village-doctor", "/Consent", patient=f"Patient/{patient}").json()
        )
        assert consent[0]["provision"]["period"]["end"]
        assert fhir_get(net, "specialist", f"/Patient/{patient}").status_code == 200
        deadline = time.monotonic() + GRACE_SECONDS + 60
        while fhir_get(net, "specialist", f"/Patient/{patient}").status_code != 404:
            assert time.monotonic() < deadline, "the record stayed open past the grace"
            time.sleep(0.5)
        # The report stays in the patient's record for the clinic.
        assert fhir_get(net, "village-doctor", done["report"]["reference"]).status_code == 200
