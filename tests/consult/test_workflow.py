"""The consult workflow through the JSON API, as the village doctor and the specialists use
it: every transition and every refusal, what each leaves in the patient's record, who is
told, and what the specialist may see when — on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.consult.network import (
    GRACE_SECONDS,
    ConsultNetwork,
    in_minutes,
)
from tests.receivers import Received

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"


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


class TestRefusals:
    def test_only_the_department_accepts_and_only_with_itself_as_owner(
        self, consult_network: ConsultNetwork
    ) -> None:
        net = consult_network
        consult = net.request_consult(net.fresh_patient())
        cid = consult["id"]
        # The village doctor cannot accept her own request; the other department cannot see it.
        problem_of(net.act("village-doctor", cid, "accept"), 403)
        problem_of(net.act("endocrinologist", cid, "accept"), 404)
        # The colleague in the department can take it; then it is his, and nobody's else.
        assert net.act("colleague", cid, "accept").json()["state"] == "accepted"
        again = problem_of(net.act("specialist", cid, "accept"), 422)
        assert again["field"] == "Task.owner"
        assert problem_of(net.act("specialist", cid, "start"), 403)["field"] == "Task.status"
        # A refused step leaves the consult as it was.
        assert net.consult("village-doctor", cid).json()["owner"]["display"] == "colleague"

    def test_illegal_transitions_are_refused(self, consult_network: ConsultNetwork) -> None:
        net = consult_network
        cid = net.request_consult(net.fresh_patient())["id"]
        # A request is not started before it is accepted.
        assert problem_of(net.act("specialist", cid, "start"), 422)["field"] == "Task.status"
        assert problem_of(net.act("specialist", cid, "reject", reason=""), 400)["field"] == "reason"
        rejected = net.act("specialist", cid, "reject", reason="请先完善心电图检查")
        assert rejected.json()["state"] == "rejected"
        assert rejected.json()["statusReason"] == "请先完善心电图检查"
        told = wait_for_notification(net, cid, "rejected")
        assert "请先完善心电图检查" in told.body["text"]
        # Rejected is final.
        assert problem_of(net.act("specialist", cid, "accept"), 409)["field"] == "Task.status"
        assert problem_of(net.act("village-doctor", cid, "cancel"), 409)["field"] == "Task.status"
        request = fhir_get(net, "village-doctor", f"/ServiceRequest/{cid}").json()
        assert request["status"] == "revoked"

    def test_the_requester_cancels_the_specialist_cannot_cancel_a_request_not_his(
        self, consult_network: ConsultNetwork
    ) -> None:
        net = consult_network
        cid = net.request_consult(net.fresh_patient())["id"]
        problem_of(net.act("specialist", cid, "cancel"), 403)
        problem_of(net.act("hostile", cid, "cancel"), 404)
        cancelled = net.act("village-doctor", cid, "cancel", reason="患者已转上级医院")
        assert cancelled.json()["state"] == "cancelled"
        with net.api("specialist") as api:
            waiting = {c["id"] for c in api.get("/api/consults/queue").json()["waiting"]}
        assert cid not in waiting

    def test_the_specialist_may_give_back_an_accepted_consult_and_the_record_closes(
        self, consult_network: ConsultNetwork
    ) -> None:
        net = consult_network
        patient = net.fresh_patient()
        cid = net.request_consult(patient)["id"]
        net.act("specialist", cid, "accept", start=in_minutes(45))
        problem_of(net.act("colleague", cid, "cancel"), 403)
        cancelled = net.act("specialist", cid, "cancel", reason="临时手术，无法会诊")
        assert cancelled.json()["state"] == "cancelled"
        wait_for_notification(net, cid, "cancelled")
        appointments = fhir_get(
            net, "village-doctor", "/Appointment", **{"based-on": f"ServiceRequest/{cid}"}
        ).json()
        assert [a["status"] for a in entries(appointments)] == ["cancelled"]
        (consent,) = entries(
            fhir_get(net, "village-doctor", "/Consent", patient=f"Patient/{patient}").json()
        )
        assert consent["provision"]["period"]["end"]

    def test_the_patients_clinic_withdraws_the_share_at_once(
        self, consult_network: ConsultNetwork
    ) -> None:
        net = consult_network
        patient = net.fresh_patient()
        cid = net.request_consult(patient)["id"]
        net.act("specialist", cid, "accept")
        assert fhir_get(net, "specialist", f"/Patient/{patient}").status_code == 200
        (consent,) = entries(
            fhir_get(net, "village-doctor", "/Consent", patient=f"Patient/{patient}").json()
        )
        with net.as_user("village-doctor") as fhir:
            widened = {**consent, "provision": {**consent["provision"], "period": {}}}
            assert fhir.put(f"/Consent/{consent['id']}", json=widened).status_code == 422
            withdrawn = {**consent, "status": "inactive"}
            assert fhir.put(f"/Consent/{consent['id']}", json=withdrawn).status_code == 200
        assert fhir_get(net, "specialist", f"/Patient/{patient}").status_code == 404

    def test_a_no_show_and_a_new_time(self, consult_network: ConsultNetwork) -> None:
        net = consult_network
        patient = net.fresh_patient()
        cid = net.request_consult(patient)["id"]
        # Not before it is accepted; then booked for ten minutes ago (the call is late).
        problem_of(net.act("village-doctor", cid, "schedule", start=in_minutes(10)), 409)
        net.act("specialist", cid, "accept", start=in_minutes(-10))
        problem_of(net.act("village-doctor", cid, "schedule", start=in_minutes(-120)), 422)
        assert net.act("village-doctor", cid, "no-show").json()["state"] == "no-show"
        wait_for_notification(net, cid, "no-show")
        rebooked = net.act("specialist", cid, "schedule", start=in_minutes(60), minutes=15)
        assert rebooked.json()["state"] == "scheduled"
        assert rebooked.json()["appointment"]["status"] == "booked"
        # A future call cannot be a no-show yet.
        problem_of(net.act("village-doctor", cid, "no-show"), 422)

    def test_invitations_are_a_care_team_of_two_at_most(
        self, consult_network: ConsultNetwork
    ) -> None:
        net = consult_network
        patient = net.fresh_patient()
        cid = net.request_consult(patient)["id"]
        net.act("specialist", cid, "accept")
        endocrinologist = net.practitioner("endocrinologist")
        invited = net.act("village-doctor", cid, "invite", practitioner=endocrinologist)
        assert [p["reference"] for p in invited.json()["invited"]] == [
            f"Practitioner/{endocrinologist}"
        ]
        wait_for_notification(net, cid, "invited")
        # The invited specialist finds the consult, not the patient's record.
        assert net.consult("endocrinologist", cid).status_code == 200
        assert fhir_get(net, "endocrinologist", f"/Patient/{patient}").status_code == 404
        net.act("specialist", cid, "invite", practitioner=net.practitioner("township-doctor"))
        third = net.act("village-doctor", cid, "invite", practitioner=net.practitioner("colleague"))
        assert problem_of(third, 422)["field"] == "practitioner"
        problem_of(net.act("hostile", cid, "invite", practitioner=endocrinologist), 404)


class TestPlainFhir:
    """A hospital system drives a consult with FHIR alone; the same rules hold."""

    def _request(self, net: ConsultNetwork, patient: str) -> dict[str, Any]:
        department = net.departments["640100H01-D01"]
        return {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "11429006"}]}],
            "priority": "urgent",
            "subject": {"reference": f"Patient/{patient}"},
            "requester": {"reference": f"Practitioner/{net.practitioner('village-doctor')}"},
            "performer": [{"reference": f"Organization/{department}"}],
            "reasonCode": [{"text": "胸痛待查"}],
        }

    def _task(self, net: ConsultNetwork, patient: str, request: str) -> dict[str, Any]:
        return {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "focus": {"reference": f"ServiceRequest/{request}"},
            "for": {"reference": f"Patient/{patient}"},
            "owner": {"reference": f"Organization/{net.departments['640100H01-D01']}"},
            "authoredOn": in_minutes(0),
        }

    def test_post_put_and_the_rules_hold(self, consult_network: ConsultNetwork) -> None:
        net, system = consult_network, consult_network.system
        patient = net.fresh_patient()
        request = system.post("/ServiceRequest", json=self._request(net, patient))
        assert request.status_code == 201, request.text
        rid = request.json()["id"]
        # A Task must start as requested, for the consult's patient, with an honest date.
        bad = {**self._task(net, patient, rid), "status": "accepted"}
        outcome = system.post("/Task", json=bad)
        assert outcome.status_code == 422
        assert outcome.json()["issue"][0]["expression"] == ["Task.status"]
        backdated = {**self._task(net, patient, rid), "authoredOn": "2020-01-01T00:00:00Z"}
        assert system.post("/Task", json=backdated).json()["issue"][0]["expression"] == [
            "Task.authoredOn"
        ]
        task = system.post("/Task", json=self._task(net, patient, rid)).json()
        duplicate = system.post("/Task", json=self._task(net, patient, rid))
        assert duplicate.status_code == 409
        # The consult is in the department's queue.
        with net.api("specialist") as api:
            assert rid in {c["id"] for c in api.get("/api/consults/queue").json()["waiting"]}
        # Straight to completed is not a transition; a state set on the request is refused.
        skipped = system.put(f"/Task/{task['id']}", json={**task, "status": "completed"})
        assert skipped.status_code == 422
        done_request = {**request.json(), "status": "completed"}
        assert system.put(f"/ServiceRequest/{rid}", json=done_request).status_code == 422
        # Accepting names a practitioner of the department.
        outsider = {
            **task,
            "status": "accepted",
            "owner": {"reference": f"Practitioner/{net.practitioner('endocrinologist')}"},
        }
        assert system.put(f"/Task/{task['id']}", json=outsider).json()["issue"][0][
            "expression"
        ] == ["Task.owner"]
        specialist = net.practitioner("specialist")
        accepted = {
            **task,
            "status": "accepted",
            "owner": {"reference": f"Practitioner/{specialist}"},
        }
        response = system.put(f"/Task/{task['id']}", json=accepted)
        assert response.status_code == 200, response.text
        consents = system.get("/Consent", params={"patient": f"Patient/{patient}"}).json()
        (consent,) = entries(consents)
        assert (
            consent["provision"]["actor"][0]["reference"]["reference"]
            == f"Practitioner/{specialist}"
        )
        # The consult's Consent is the consult's: not written by hand, not deleted.
        assert system.delete(f"/Consent/{consent['id']}").status_code == 403
        task = response.json()
        started = system.put(f"/Task/{task['id']}", json={**task, "status": "in-progress"})
        assert started.status_code == 200, started.text
        (encounter,) = entries(
            system.get("/Encounter", params={"based-on": f"ServiceRequest/{rid}"}).json()
        )
        assert encounter["class"]["code"] == "VR"
        task = started.json()
        # Completing needs the report; a DELETE of the Task is refused.
        unreported = system.put(f"/Task/{task['id']}", json={**task, "status": "completed"})
        assert unreported.json()["issue"][0]["expression"] == ["Task.output"]
        assert system.delete(f"/Task/{task['id']}").status_code == 409
        report = system.post(
            "/DiagnosticReport",
            json={
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"text": "会诊意见"},
                "subject": {"reference": f"Patient/{patient}"},
                "encounter": {"reference": f"Encounter/{encounter['id']}"},
                "basedOn": [{"reference": f"ServiceRequest/{rid}"}],
                "performer": [{"reference": f"Practitioner/{specialist}"}],
                "conclusion": "不稳定型心绞痛可能，建议转诊",
            },
        ).json()
        completed = {
            **task,
            "status": "completed",
            "output": [
                {
                    "type": {"text": "会诊意见"},
                    "valueReference": {"reference": f"DiagnosticReport/{report['id']}"},
                }
            ],
        }
        assert system.put(f"/Task/{task['id']}", json=completed).status_code == 200
        assert net.consult("village-doctor", rid).json()["state"] == "completed"
        assert system.get(f"/ServiceRequest/{rid}").json()["status"] == "completed"
        # Every transition is on the audit trail, under the hospital system's name.
        audit = entries(
            system.get(
                "/AuditEvent", params={"entity": f"Consent/{consent['id']}", "_count": "50"}
            ).json()
        )
        assert any(e["subtype"][0]["code"] == "update" for e in audit)

    def test_a_specialist_with_a_token_accepts_for_himself_only(
        self, consult_network: ConsultNetwork
    ) -> None:
        net = consult_network
        cid = net.request_consult(net.fresh_patient())["id"]
        with net.as_user("specialist") as fhir:
            (task,) = entries(fhir.get("/Task", params={"focus": f"ServiceRequest/{cid}"}).json())
            colleague = {
                **task,
                "status": "accepted",
                "owner": {"reference": f"Practitioner/{net.practitioner('colleague')}"},
            }
            assert fhir.put(f"/Task/{task['id']}", json=colleague).status_code == 403
            mine = {
                **task,
                "status": "accepted",
                "owner": {"reference": f"Practitioner/{net.practitioner('specialist')}"},
            }
            assert fhir.put(f"/Task/{task['id']}", json=mine).status_code == 200
            # He cannot hand himself a record by writing a Consent of his own.
            consent = {
                "resourceType": "Consent",
                "status": "active",
                "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "patient": {"reference": f"Patient/{net.patients['a'].id}"},
                "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
                "provision": {
                    "actor": [
                        {
                            "role": {"coding": [{"system": ROLE_CLASS, "code": "PROV"}]},
                            "reference": mine["owner"],
                        }
                    ]
                },
            }
            assert fhir.post("/Consent", json=consent).status_code == 403
            assert fhir.get(f"/Patient/{net.patients['a'].id}").status_code == 404
