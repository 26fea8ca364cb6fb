"""The /fhir REST interactions over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from records.validation.resident_id import RESIDENT_ID_SYSTEM, make_resident_id

SYSTEM = "https://fhir.yinchuan-health.cn/sid/test"


def patient(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": uuid.uuid4().hex}],
        "name": [{"text": "马小明", "family": "马", "given": ["小明"]}],
        "gender": "male",
    }
    body.update(extra)
    return body


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


class TestCreateAndRead:
    def test_create_assigns_id_version_and_headers(self, fhir: httpx.Client) -> None:
        response = fhir.post("/Patient", json=patient(id="client-chosen"))
        body = created(response)
        assert body["id"] != "client-chosen"
        assert body["meta"]["versionId"] == "1"
        assert response.headers["ETag"] == 'W/"1"'
        assert response.headers["Location"].endswith(f"/Patient/{body['id']}/_history/1")
        assert response.headers["Last-Modified"].endswith("GMT")
        assert response.headers["Content-Type"].startswith("application/fhir+json")

    def test_read_returns_the_stored_bytes(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        first = fhir.get(f"/Patient/{body['id']}")
        second = fhir.get(f"/Patient/{body['id']}")
        assert first.status_code == 200
        assert first.content == second.content
        assert first.json() == body

    def test_chinese_text_survives(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient(name=[{"text": "冶·阿依莎"}])))
        assert fhir.get(f"/Patient/{body['id']}").json()["name"][0]["text"] == "冶·阿依莎"

    def test_plain_application_json_is_accepted(self, fhir: httpx.Client) -> None:
        response = fhir.post(
            "/Patient",
            content=httpx.Request("POST", "/", json=patient()).content,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 201

    def test_xml_is_refused_with_415(self, fhir: httpx.Client) -> None:
        response = fhir.post(
            "/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}
        )
        assert response.status_code == 415
        assert response.json()["resourceType"] == "OperationOutcome"

    def test_unknown_id_is_404_and_unknown_type_is_404(self, fhir: httpx.Client) -> None:
        assert fhir.get("/Patient/does-not-exist").status_code == 404
        response = fhir.get("/Patientx/1")
        assert response.status_code == 404
        assert "Patientx" in response.json()["issue"][0]["diagnostics"]

    def test_if_none_match_gives_304(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        response = fhir.get(f"/Patient/{body['id']}", headers={"If-None-Match": 'W/"1"'})
        assert response.status_code == 304
        assert response.content == b""


class TestPrefer:
    def test_minimal(self, fhir: httpx.Client) -> None:
        response = fhir.post("/Patient", json=patient(), headers={"Prefer": "return=minimal"})
        assert response.status_code == 201
        assert response.content == b""
        assert fhir.get(response.headers["Location"]).status_code == 200

    def test_operation_outcome(self, fhir: httpx.Client) -> None:
        response = fhir.post(
            "/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"}
        )
        assert response.status_code == 201
        assert response.json()["resourceType"] == "OperationOutcome"

    def test_representation(self, fhir: httpx.Client) -> None:
        response = fhir.post(
            "/Patient", json=patient(), headers={"Prefer": "return=representation"}
        )
        assert response.json()["resourceType"] == "Patient"


class TestUpdate:
    def test_update_makes_a_new_version(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        body["gender"] = "female"
        response = fhir.put(f"/Patient/{body['id']}", json=body)
        assert response.status_code == 200
        assert response.json()["meta"]["versionId"] == "2"
        assert fhir.get(f"/Patient/{body['id']}/_history/1").json()["gender"] == "male"
        assert fhir.get(f"/Patient/{body['id']}/_history/2").json()["gender"] == "female"

    def test_unchanged_update_keeps_the_version(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        response = fhir.put(f"/Patient/{body['id']}", json=body)
        assert response.status_code == 200
        assert response.json()["meta"]["versionId"] == "1"

    def test_create_on_update_with_client_id(self, fhir: httpx.Client) -> None:
        res_id = f"hosp-{uuid.uuid4().hex[:10]}"
        response = fhir.put(f"/Patient/{res_id}", json=patient(id=res_id))
        assert response.status_code == 201
        assert response.json()["id"] == res_id

    def test_if_match_conflict_is_412(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        body["gender"] = "female"
        assert (
            fhir.put(f"/Patient/{body['id']}", json=body, headers={"If-Match": 'W/"1"'}).status_code
            == 200
        )
        body["gender"] = "other"
        response = fhir.put(f"/Patient/{body['id']}", json=body, headers={"If-Match": 'W/"1"'})
        assert response.status_code == 412
        assert fhir.get(f"/Patient/{body['id']}").json()["gender"] == "female"

    def test_id_mismatch_is_400(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        response = fhir.put(f"/Patient/{body['id']}", json={**body, "id": "other"})
        assert response.status_code == 400
        assert response.json()["issue"][0]["expression"] == ["Patient.id"]


class TestPatch:
    def test_json_patch(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        response = fhir.patch(
            f"/Patient/{body['id']}",
            json=[{"op": "replace", "path": "/gender", "value": "female"}],
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["gender"] == "female"
        assert response.json()["meta"]["versionId"] == "2"

    def test_patch_to_an_invalid_resource_is_refused_and_changes_nothing(
        self, fhir: httpx.Client
    ) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        response = fhir.patch(
            f"/Patient/{body['id']}",
            json=[{"op": "replace", "path": "/gender", "value": "robot"}],
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert response.status_code == 422
        assert response.json()["issue"][0]["expression"] == ["Patient.gender"]
        assert fhir.get(f"/Patient/{body['id']}").json()["gender"] == "male"

    def test_failed_test_op_is_422_and_wrong_type_415(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        failed = fhir.patch(
            f"/Patient/{body['id']}",
            json=[{"op": "test", "path": "/gender", "value": "female"}],
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert failed.status_code == 422
        wrong = fhir.patch(
            f"/Patient/{body['id']}", json=[], headers={"Content-Type": "application/xml"}
        )
        assert wrong.status_code == 415


class TestDelete:
    def test_delete_then_gone_and_history_kept(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        assert fhir.delete(f"/Patient/{body['id']}").status_code in (200, 204)
        gone = fhir.get(f"/Patient/{body['id']}")
        assert gone.status_code == 410
        assert gone.json()["resourceType"] == "OperationOutcome"
        assert fhir.get(f"/Patient/{body['id']}/_history/1").status_code == 200
        history = fhir.get(f"/Patient/{body['id']}/_history").json()
        assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
        assert fhir.delete(f"/Patient/{body['id']}").status_code == 204  # already deleted: no-op
        assert len(fhir.get(f"/Patient/{body['id']}/_history").json()["entry"]) == 2

    def test_deleted_resource_can_be_recreated_by_update(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        fhir.delete(f"/Patient/{body['id']}")
        response = fhir.put(f"/Patient/{body['id']}", json=body)
        assert response.status_code == 201
        assert response.json()["meta"]["versionId"] == "3"

    def test_delete_unknown_is_404(self, fhir: httpx.Client) -> None:
        assert fhir.delete("/Patient/never-was").status_code == 404


class TestConditional:
    def test_conditional_create_header_and_query_forms(self, fhir: httpx.Client) -> None:
        body = patient()
        value = body["identifier"][0]["value"]
        first = fhir.post(
            "/Patient", json=body, headers={"If-None-Exist": f"identifier={SYSTEM}|{value}"}
        )
        assert first.status_code == 201
        again = fhir.post(
            "/Patient", json=body, headers={"If-None-Exist": f"identifier={SYSTEM}|{value}"}
        )
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]
        query_form = fhir.post(f"/Patient?identifier={SYSTEM}|{value}", json=body)
        assert query_form.status_code == 200
        assert query_form.json()["id"] == first.json()["id"]
        assert fhir.get("/Patient", params={"identifier": f"{SYSTEM}|{value}"}).json()["total"] == 1

    def test_concurrent_conditional_writes_create_once(self, fhir: httpx.Client) -> None:
        """Eight clinics' systems send the same patient at the same moment, each asking to
        create her only if she is not there yet (header form, query form, conditional
        update, a transaction): she is created once, and every other request finds her."""
        body = patient()
        criteria = f"identifier={SYSTEM}|{body['identifier'][0]['value']}"
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": body,
                    "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria},
                }
            ],
        }
        sends = [
            lambda c: c.post("/Patient", json=body, headers={"If-None-Exist": criteria}),
            lambda c: c.post(f"/Patient?{criteria}", json=body),
            lambda c: c.put(f"/Patient?{criteria}", json=body),
            lambda c: c.post("", json=bundle),
        ] * 2
        barrier = threading.Barrier(len(sends))

        def send(how: Any) -> httpx.Response:
            with httpx.Client(
                base_url=str(fhir.base_url), headers=fhir.headers, timeout=60
            ) as client:
                barrier.wait()
                return how(client)

        with ThreadPoolExecutor(len(sends)) as pool:
            responses = list(pool.map(send, sends))
        statuses = [r.status_code for r in responses]
        assert all(status in (200, 201) for status in statuses), [r.text for r in responses]
        found = fhir.get("/Patient", params={"identifier": criteria.split("=", 1)[1]}).json()
        assert found["total"] == 1, statuses
        ids = set()
        for response in responses:
            data = response.json()
            if data["resourceType"] == "Bundle":
                ids.add(data["entry"][0]["response"]["location"].split("/")[1])
            else:
                ids.add(data["id"])
        assert ids == {found["entry"][0]["resource"]["id"]}

    def test_conditional_create_with_two_matches_is_412(self, fhir: httpx.Client) -> None:
        shared = {"system": SYSTEM, "value": uuid.uuid4().hex}
        created(fhir.post("/Patient", json=patient(identifier=[shared])))
        created(fhir.post("/Patient", json=patient(identifier=[shared])))
        response = fhir.post(
            "/Patient",
            json=patient(identifier=[shared]),
            headers={"If-None-Exist": f"identifier={SYSTEM}|{shared['value']}"},
        )
        assert response.status_code == 412

    def test_conditional_update_creates_then_updates(self, fhir: httpx.Client) -> None:
        body = patient()
        criteria = f"identifier={SYSTEM}|{body['identifier'][0]['value']}"
        first = fhir.put(f"/Patient?{criteria}", json=body)
        assert first.status_code == 201
        body["gender"] = "female"
        second = fhir.put(f"/Patient?{criteria}", json=body)
        assert second.status_code == 200
        assert second.json()["id"] == first.json()["id"]
        assert second.json()["meta"]["versionId"] == "2"

    def test_conditional_delete(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        criteria = f"identifier={SYSTEM}|{body['identifier'][0]['value']}"
        assert fhir.delete(f"/Patient?{criteria}").status_code == 200
        assert fhir.get(f"/Patient/{body['id']}").status_code == 410
        assert fhir.delete(f"/Patient?{criteria}").status_code == 204

    def test_unsupported_criteria_are_refused(self, fhir: httpx.Client) -> None:
        response = fhir.put("/Patient?nickname=ma", json=patient())
        assert response.status_code == 400
        assert "nickname" in response.json()["issue"][0]["diagnostics"]


class TestValidation:
    def test_bad_code_names_the_field(self, fhir: httpx.Client) -> None:
        response = fhir.post("/Patient", json=patient(gender="robot"))
        assert response.status_code == 422
        issue = response.json()["issue"][0]
        assert issue["expression"] == ["Patient.gender"]
        assert "robot" in issue["diagnostics"]

    def test_unknown_element_is_400(self, fhir: httpx.Client) -> None:
        response = fhir.post("/Patient", json=patient(nickname="明明"))
        assert response.status_code == 400
        assert response.json()["issue"][0]["expression"] == ["Patient.nickname"]

    def test_bad_date_names_the_field(self, fhir: httpx.Client) -> None:
        response = fhir.post("/Patient", json=patient(birthDate="1980-13-45"))
        assert response.status_code == 400
        assert response.json()["issue"][0]["expression"] == ["Patient.birthDate"]

    def test_resident_id_checksum(self, fhir: httpx.Client) -> None:
        import datetime as dt

        good = make_resident_id("640121", dt.date(1975, 3, 9), 21, "male")
        bad = good[:-1] + ("0" if good[-1] != "0" else "1")
        response = fhir.post(
            "/Patient", json=patient(identifier=[{"system": RESIDENT_ID_SYSTEM, "value": bad}])
        )
        assert response.status_code == 422
        assert response.json()["issue"][0]["expression"] == ["Patient.identifier[0].value"]
        ok = fhir.post(
            "/Patient",
            json=patient(
                identifier=[{"system": RESIDENT_ID_SYSTEM, "value": good}], birthDate="1975-03-09"
            ),
        )
        assert ok.status_code == 201

    def test_resident_id_must_agree_with_birth_date(self, fhir: httpx.Client) -> None:
        import datetime as dt

        number = make_resident_id("640104", dt.date(1990, 1, 2), 33, "male")
        response = fhir.post(
            "/Patient",
            json=patient(
                identifier=[{"system": RESIDENT_ID_SYSTEM, "value": number}], birthDate="1991-01-02"
            ),
        )
        assert response.status_code == 422
        assert response.json()["issue"][0]["expression"] == ["Patient.birthDate"]

    def test_garbage_is_a_4xx_never_a_500(self, fhir: httpx.Client) -> None:
        bodies: list[bytes] = [
            b"{",
            b"[]",
            b"null",
            b'"x"',
            b'{"resourceType": 5}',
            b'{"resourceType":"Patient","name":"x"}',
            b"\xff\xfe",
            b'{"resourceType":"Bundle","type":"transaction","entry":[{}]}',
        ]
        for body in bodies:
            for path in ("/Patient", "", "/Patient/x"):
                method = "PUT" if path.endswith("/x") else "POST"
                response = fhir.request(method, path, content=body)
                assert 400 <= response.status_code < 500, (path, body, response.text)
                assert response.json()["resourceType"] == "OperationOutcome"

    def test_type_mismatch_is_400(self, fhir: httpx.Client) -> None:
        response = fhir.post("/Observation", json=patient())
        assert response.status_code == 400
        assert response.json()["issue"][0]["expression"] == ["resourceType"]


class TestSearch:
    def test_by_identifier_with_total_and_paging(self, fhir: httpx.Client) -> None:
        shared = {"system": SYSTEM, "value": uuid.uuid4().hex}
        ids = {
            created(fhir.post("/Patient", json=patient(identifier=[shared])))["id"]
            for _ in range(3)
        }
        first = fhir.get(
            "/Patient", params={"identifier": f"{SYSTEM}|{shared['value']}", "_count": 2}
        ).json()
        assert first["total"] == 3 and len(first["entry"]) == 2
        next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        second = fhir.get(next_url).json()
        assert {e["resource"]["id"] for e in first["entry"] + second["entry"]} == ids

    def test_count_zero_gives_the_total_only(self, fhir: httpx.Client) -> None:
        shared = {"system": SYSTEM, "value": uuid.uuid4().hex}
        created(fhir.post("/Patient", json=patient(identifier=[shared])))
        bundle = fhir.get("/Patient", params={"identifier": shared["value"], "_count": 0}).json()
        assert bundle["total"] == 1
        assert bundle["entry"] == []

    def test_unknown_parameters_are_ignored_and_reported(self, fhir: httpx.Client) -> None:
        shared = {"system": SYSTEM, "value": uuid.uuid4().hex}
        created(fhir.post("/Patient", json=patient(identifier=[shared])))
        params = {"identifier": shared["value"], "_totalMethod": "count"}
        bundle = fhir.get("/Patient", params=params).json()
        assert bundle["total"] == 1
        outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
        assert "_totalMethod" in outcome[0]["resource"]["issue"][0]["diagnostics"]
        strict = fhir.get("/Patient", params=params, headers={"Prefer": "handling=strict"})
        assert strict.status_code == 400
        assert "_totalMethod" in strict.json()["issue"][0]["diagnostics"]

    def test_negative_count_is_refused(self, fhir: httpx.Client) -> None:
        assert fhir.get("/Patient", params={"_count": -1}).status_code == 400


class TestHistory:
    def test_type_history_pages_stay_put_while_writes_arrive(self, fhir: httpx.Client) -> None:
        marker = uuid.uuid4().hex
        for _ in range(5):
            created(fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": marker}}))
        first = fhir.get("/Basic/_history", params={"_count": 2}).json()
        assert len(first["entry"]) == 2
        assert first["total"] >= 5
        next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        created(
            fhir.post("/Basic", json={"resourceType": "Basic", "code": {"text": marker}})
        )  # a newer write
        second = fhir.get(next_url).json()
        first_ids = {e["resource"]["id"] for e in first["entry"]}
        second_ids = {e["resource"]["id"] for e in second["entry"]}
        assert len(second_ids) == 2 and not first_ids & second_ids
        previous = next(link["url"] for link in second["link"] if link["relation"] == "previous")
        assert {e["resource"]["id"] for e in fhir.get(previous).json()["entry"]} == first_ids

    def test_system_history_and_since(self, fhir: httpx.Client) -> None:
        body = created(fhir.post("/Patient", json=patient()))
        since = body["meta"]["lastUpdated"]
        history = fhir.get("/_history", params={"_since": since}).json()
        assert history["type"] == "history"
        assert body["id"] in {e["resource"]["id"] for e in history["entry"] if "resource" in e}


class TestMetadata:
    def test_capability_statement_lists_what_works(self, fhir: httpx.Client) -> None:
        statement = fhir.get("/metadata").json()
        assert statement["resourceType"] == "CapabilityStatement"
        assert statement["fhirVersion"] == "4.3.0"
        patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
        codes = {i["code"] for i in patient_entry["interaction"]}
        assert {"read", "vread", "update", "patch", "delete", "create", "history-instance"} <= codes
        assert "identifier" in {p["name"] for p in patient_entry["searchParam"]}
        assert {i["code"] for i in statement["rest"][0]["interaction"]} >= {"transaction", "batch"}
