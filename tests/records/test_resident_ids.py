"""One Patient per resident identity number: a second record of the same person, whoever
sends it and by whichever door, is refused, and nothing of it is written."""

from __future__ import annotations

import datetime as dt
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from records.validation.resident_id import RESIDENT_ID_SYSTEM, make_resident_id

_rng = random.Random()  # numbers nobody else in the session's store has


def new_number() -> tuple[str, str]:
    """A fresh valid resident identity number, and the birth date it encodes."""
    born = dt.date(1940, 1, 1) + dt.timedelta(days=_rng.randrange(25_000))
    return make_resident_id("640121", born, _rng.randrange(1000), "female"), born.isoformat()


def person(number: str, born: str, name: str = "马秀兰") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {"system": "https://fhir.yinchuan-health.cn/sid/test", "value": uuid.uuid4().hex},
            {"system": RESIDENT_ID_SYSTEM, "value": number},
        ],
        "name": [{"text": name, "family": name[0], "given": [name[1:]]}],
        "gender": "female",
        "birthDate": born,
    }


def holders(fhir: httpx.Client, number: str) -> list[str]:
    found = fhir.get("/Patient", params={"identifier": f"{RESIDENT_ID_SYSTEM}|{number}"}).json()
    return [e["resource"]["id"] for e in found.get("entry", [])]


def refused_as_duplicate(response: httpx.Response, expression: str) -> None:
    assert response.status_code == 409, response.text
    (issue,) = response.json()["issue"]
    assert issue["code"] == "duplicate"
    assert issue["expression"] == [expression]


def test_a_second_record_of_the_same_person_is_refused(fhir: httpx.Client) -> None:
    number, born = new_number()
    first = fhir.post("/Patient", json=person(number, born))
    assert first.status_code == 201, first.text
    again = fhir.post("/Patient", json=person(number, born, "马小兰"))
    refused_as_duplicate(again, "Patient.identifier[1].value")
    assert holders(fhir, number) == [first.json()["id"]]


def test_her_own_record_keeps_its_number_through_updates(fhir: httpx.Client) -> None:
    number, born = new_number()
    body = fhir.post("/Patient", json=person(number, born)).json()
    body["telecom"] = [{"system": "phone", "value": "13909510000"}]
    updated = fhir.put(f"/Patient/{body['id']}", json=body)
    assert updated.status_code == 200, updated.text
    assert updated.json()["meta"]["versionId"] == "2"


def test_giving_another_record_her_number_is_refused_and_changes_nothing(
    fhir: httpx.Client,
) -> None:
    number, born = new_number()
    fhir.post("/Patient", json=person(number, born))
    other_number, other_born = new_number()
    other = fhir.post("/Patient", json=person(other_number, other_born, "冶福成")).json()
    # A mistyped number "corrected" to one that is someone else's.
    changed = {
        **other,
        "identifier": [other["identifier"][0], person(number, born)["identifier"][1]],
    }
    changed["birthDate"] = born
    refused_as_duplicate(
        fhir.put(f"/Patient/{other['id']}", json=changed), "Patient.identifier[1].value"
    )
    assert fhir.get(f"/Patient/{other['id']}").json()["meta"]["versionId"] == "1"


def test_a_transaction_with_two_records_of_one_person_writes_nothing(
    fhir: httpx.Client,
) -> None:
    number, born = new_number()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": person(number, born, name),
                "request": {"method": "POST", "url": "Patient"},
            }
            for name in ("马秀兰", "马秀英")
        ],
    }
    response = fhir.post("", json=bundle)
    assert response.status_code == 409, response.text
    assert response.json()["issue"][0]["code"] == "duplicate"
    assert holders(fhir, number) == []


def test_once_her_record_is_deleted_the_number_is_free(fhir: httpx.Client) -> None:
    number, born = new_number()
    first = fhir.post("/Patient", json=person(number, born)).json()
    assert fhir.delete(f"/Patient/{first['id']}").status_code in (200, 204)
    second = fhir.post("/Patient", json=person(number, born))
    assert second.status_code == 201, second.text
    assert holders(fhir, number) == [second.json()["id"]]


def test_clinics_registering_her_at_the_same_moment_make_one_record(
    fhir: httpx.Client,
) -> None:
    number, born = new_number()
    senders = 6
    barrier = threading.Barrier(senders)

    def send(index: int) -> int:
        with httpx.Client(base_url=str(fhir.base_url), headers=fhir.headers, timeout=60) as client:
            barrier.wait()
            return client.post(
                "/Patient", json=person(number, born, f"马秀{'一二三四五六'[index]}")
            ).status_code

    with ThreadPoolExecutor(senders) as pool:
        statuses = sorted(pool.map(send, range(senders)))
    assert statuses == [201] + [409] * (senders - 1)
    assert len(holders(fhir, number)) == 1
