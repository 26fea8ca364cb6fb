"""Transaction and batch Bundles over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

SYSTEM = "https://fhir.yinchuan-health.cn/sid/test"


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def identifier() -> dict[str, str]:
    return {"system": SYSTEM, "value": uuid.uuid4().hex}


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict[str, Any], full_url: str | None = None, **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def observation(subject: str, ident: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    body = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "心率"},
        "subject": {"reference": subject},
        "valueQuantity": {
            "value": 72,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }
    if ident:
        body["identifier"] = [ident]
    body.update(extra)
    return body


def count(fhir: httpx.Client, res_type: str, ident: dict[str, str]) -> int:
    response = fhir.get(
        f"/{res_type}", params={"identifier": f"{ident['system']}|{ident['value']}"}
    )
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


class TestTransaction:
    def test_urn_uuid_references_are_rewritten(self, fhir: httpx.Client) -> None:
        patient_url = new_uuid()
        response = fhir.post(
            "",
            json=transaction(
                post({"resourceType": "Patient", "identifier": [identifier()]}, patient_url),
                post(observation(patient_url)),
            ),
        )
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert bundle["type"] == "transaction-response"
        assert [e["response"]["status"] for e in bundle["entry"]] == ["201 Created", "201 Created"]
        patient_location = bundle["entry"][0]["response"]["location"]
        observation_location = bundle["entry"][1]["response"]["location"]
        stored = fhir.get("/" + observation_location.split("/_history")[0]).json()
        assert stored["subject"]["reference"] == patient_location.split("/_history")[0]

    def test_both_base_urls_take_a_bundle(self, fhir: httpx.Client) -> None:
        for path in ("", "/"):
            response = fhir.post(
                path,
                json=transaction(post({"resourceType": "Patient", "identifier": [identifier()]})),
            )
            assert response.status_code == 200, (path, response.text)

    def test_one_bad_entry_leaves_nothing_behind(self, fhir: httpx.Client) -> None:
        patient_ident, good_obs, bad_obs = identifier(), identifier(), identifier()
        patient_url = new_uuid()
        response = fhir.post(
            "",
            json=transaction(
                post({"resourceType": "Patient", "identifier": [patient_ident]}, patient_url),
                post(observation(patient_url, good_obs)),
                post(observation(patient_url, bad_obs, status="maybe")),
            ),
        )
        assert response.status_code == 422
        issue = response.json()["issue"][0]
        assert issue["expression"] == ["Bundle.entry[2].resource.status"]
        assert count(fhir, "Patient", patient_ident) == 0
        assert count(fhir, "Observation", good_obs) == 0

    def test_a_failing_update_after_creates_rolls_the_creates_back(
        self, fhir: httpx.Client
    ) -> None:
        patient_ident = identifier()
        existing = fhir.post(
            "/Patient", json={"resourceType": "Patient", "identifier": [identifier()]}
        ).json()
        response = fhir.post(
            "",
            json=transaction(
                post({"resourceType": "Patient", "identifier": [patient_ident]}),
                {
                    "resource": existing,
                    "request": {
                        "method": "PUT",
                        "url": f"Patient/{existing['id']}",
                        "ifMatch": 'W/"7"',
                    },
                },
            ),
        )
        assert response.status_code == 412
        assert count(fhir, "Patient", patient_ident) == 0

    def test_conditional_reference_to_a_stored_resource(self, fhir: httpx.Client) -> None:
        ident = identifier()
        patient = fhir.post(
            "/Patient", json={"resourceType": "Patient", "identifier": [ident]}
        ).json()
        response = fhir.post(
            "",
            json=transaction(
                post(observation(f"Patient?identifier={ident['system']}|{ident['value']}")),
            ),
        )
        assert response.status_code == 200, response.text
        location = response.json()["entry"][0]["response"]["location"]
        assert fhir.get("/" + location).json()["subject"]["reference"] == f"Patient/{patient['id']}"

    def test_conditional_reference_to_an_entry_of_the_same_bundle(self, fhir: httpx.Client) -> None:
        township = identifier()
        village = {
            "resourceType": "Organization",
            "name": "原隆村卫生室",
            "partOf": {
                "reference": f"Organization?identifier={township['system']}|{township['value']}"
            },
        }
        response = fhir.post(
            "",
            json=transaction(
                {"resource": village, "request": {"method": "POST", "url": "Organization"}},
                {
                    "resource": {
                        "resourceType": "Organization",
                        "name": "闽宁镇卫生院",
                        "identifier": [township],
                    },
                    "request": {
                        "method": "PUT",
                        "url": f"Organization?identifier={township['system']}|{township['value']}",
                    },
                },
            ),
        )
        assert response.status_code == 200, response.text
        entries = response.json()["entry"]
        stored_village = fhir.get("/" + entries[0]["response"]["location"]).json()
        assert (
            stored_village["partOf"]["reference"]
            == entries[1]["response"]["location"].split("/_history")[0]
        )

    def test_conditional_reference_that_matches_nothing_fails(self, fhir: httpx.Client) -> None:
        response = fhir.post(
            "",
            json=transaction(
                post(observation(f"Patient?identifier={SYSTEM}|nobody-{uuid.uuid4().hex}"))
            ),
        )
        assert response.status_code == 404
        assert "matches no Patient" in response.json()["issue"][0]["diagnostics"]

    def test_conditional_create_in_a_transaction_does_not_duplicate(
        self, fhir: httpx.Client
    ) -> None:
        ident = identifier()
        criteria = f"identifier={ident['system']}|{ident['value']}"
        bundle = transaction(
            post(
                {"resourceType": "Patient", "identifier": [ident]}, new_uuid(), ifNoneExist=criteria
            )
        )
        first = fhir.post("", json=bundle)
        second = fhir.post("", json=bundle)
        assert first.json()["entry"][0]["response"]["status"] == "201 Created"
        assert second.json()["entry"][0]["response"]["status"] == "200 OK"
        assert (
            first.json()["entry"][0]["response"]["location"]
            == second.json()["entry"][0]["response"]["location"]
        )
        assert count(fhir, "Patient", ident) == 1

    def test_reads_are_processed_after_writes(self, fhir: httpx.Client) -> None:
        ident = identifier()
        response = fhir.post(
            "",
            json=transaction(
                {
                    "request": {
                        "method": "GET",
                        "url": f"Patient?identifier={ident['system']}|{ident['value']}",
                    }
                },
                post({"resourceType": "Patient", "identifier": [ident]}),
            ),
        )
        assert response.status_code == 200, response.text
        search = response.json()["entry"][0]["resource"]
        assert search["type"] == "searchset" and search["total"] == 1

    def test_delete_and_patch_entries(self, fhir: httpx.Client) -> None:
        import base64
        import json

        doomed = fhir.post(
            "/Patient", json={"resourceType": "Patient", "identifier": [identifier()]}
        ).json()
        kept = fhir.post(
            "/Patient",
            json={"resourceType": "Patient", "identifier": [identifier()], "gender": "male"},
        ).json()
        patch = base64.b64encode(
            json.dumps([{"op": "replace", "path": "/gender", "value": "female"}]).encode()
        ).decode()
        response = fhir.post(
            "",
            json=transaction(
                {"request": {"method": "DELETE", "url": f"Patient/{doomed['id']}"}},
                {
                    "resource": {
                        "resourceType": "Binary",
                        "contentType": "application/json-patch+json",
                        "data": patch,
                    },
                    "request": {"method": "PATCH", "url": f"Patient/{kept['id']}"},
                },
            ),
        )
        assert response.status_code == 200, response.text
        assert fhir.get(f"/Patient/{doomed['id']}").status_code == 410
        assert fhir.get(f"/Patient/{kept['id']}").json()["gender"] == "female"

    @pytest.mark.parametrize("kind", ["collection", "document", None])
    def test_only_transaction_and_batch_are_accepted(
        self, fhir: httpx.Client, kind: str | None
    ) -> None:
        response = fhir.post("", json={"resourceType": "Bundle", "type": kind, "entry": []})
        assert response.status_code == 400


class TestBatch:
    def test_entries_succeed_or_fail_on_their_own(self, fhir: httpx.Client) -> None:
        good, bad = identifier(), identifier()
        response = fhir.post(
            "",
            json=transaction(
                post({"resourceType": "Patient", "identifier": [good]}),
                post({"resourceType": "Patient", "identifier": [bad], "gender": "robot"}),
                {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
                kind="batch",
            ),
        )
        assert response.status_code == 200, response.text
        entries = response.json()["entry"]
        assert [e["response"]["status"] for e in entries] == [
            "201 Created",
            "422 Unprocessable Entity",
            "404 Not Found",
        ]
        assert entries[1]["response"]["outcome"]["issue"][0]["expression"] == ["Patient.gender"]
        assert count(fhir, "Patient", good) == 1
        assert count(fhir, "Patient", bad) == 0
