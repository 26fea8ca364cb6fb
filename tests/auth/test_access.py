"""Who sees what: a hostile village doctor tries every way into another clinic's patient.

``hostile`` works at 福宁村卫生室; patient ``a`` belongs to 原隆村卫生室 in the same
township. Every path the FHIR API has — reads, version reads, history, every search form,
includes, chains, ``_has``, system search, compartments, ``$everything``, counts, Bundles,
conditional interactions, ETags, guessed ids — must answer as if ``a`` did not exist, on
SQLite and PostgreSQL. The positive controls show the same requests do find ``a`` for the
people who may see it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import httpx
import jwt
import pytest

from health.core.naming import ILLNESS_POVERTY_TAG
from tests.auth.conftest import SYSTEM, VILLAGE_A, VILLAGE_B, Network, created
from tests.services import wait_until


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if "id" in e.get("resource", {})}


def refs(bundle: dict[str, Any]) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if "id" in e.get("resource", {})
    }


@pytest.fixture
def hostile(network: Network) -> httpx.Client:
    return network.as_user("hostile")


@pytest.fixture
def doctor(network: Network) -> httpx.Client:
    return network.as_user("village-doctor")


def _not_found(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


class TestHostileDoctor:
    def test_direct_reads_are_not_found(self, network: Network, hostile: httpx.Client) -> None:
        a = network.patients["a"]
        for path in (
            f"/Patient/{a.id}",
            f"/Observation/{a.observation}",
            f"/Encounter/{a.encounter}",
            f"/Condition/{a.condition}",
            f"/Patient/{a.id}/_history/1",
            f"/Patient/{a.id}/_history",
            f"/Observation/{a.observation}/_history",
        ):
            _not_found(hostile.get(path))

    def test_a_guessed_id_and_a_real_one_look_the_same(
        self, network: Network, hostile: httpx.Client
    ) -> None:
        a = network.patients["a"]
        real = hostile.get(f"/Patient/{a.id}")
        guessed_id = str(uuid.uuid4())
        guessed = hostile.get(f"/Patient/{guessed_id}")
        assert real.status_code == guessed.status_code == 404
        assert real.json() == json.loads(guessed.text.replace(guessed_id, a.id))
        assert set(real.headers) - {"content-length"} == set(guessed.headers) - {"content-length"}

    def test_etag_probing_reveals_nothing(self, network: Network, hostile: httpx.Client) -> None:
        a = network.patients["a"]
        _not_found(hostile.get(f"/Patient/{a.id}", headers={"If-None-Match": 'W/"1"'}))
        _not_found(
            hostile.get(
                f"/Patient/{a.id}", headers={"If-Modified-Since": "Mon, 01 Jan 2035 00:00:00 GMT"}
            )
        )
        body = network.system.get(f"/Patient/{a.id}").json()
        _not_found(hostile.put(f"/Patient/{a.id}", json=body, headers={"If-Match": 'W/"1"'}))
        _not_found(hostile.put(f"/Patient/{a.id}", json=body, headers={"If-Match": 'W/"9"'}))
        _not_found(hostile.delete(f"/Observation/{a.observation}"))
        _not_found(
            hostile.patch(
                f"/Patient/{a.id}",
                json=[{"op": "replace", "path": "/gender", "value": "male"}],
                headers={"Content-Type": "application/json-patch+json"},
            )
        )
        # Nothing was changed by any of it.
        assert network.system.get(f"/Patient/{a.id}").json()["meta"]["versionId"] == "1"

    def test_every_search_form_finds_nothing(self, network: Network, hostile: httpx.Client) -> None:
        a = network.patients["a"]
        searches: list[tuple[str, dict[str, str]]] = [
            ("/Patient", {"_id": a.id}),
            ("/Patient", {"identifier": f"{SYSTEM}|{a.marker}"}),
            ("/Patient", {"name": "马福兰"}),
            ("/Observation", {"subject": f"Patient/{a.id}"}),
            ("/Observation", {"identifier": f"{SYSTEM}|{a.marker}-bp"}),
            ("/Condition", {"code:text": a.marker}),
            # chains, into the hidden patient
            ("/Observation", {"subject:Patient.name": "马福兰"}),
            ("/Observation", {"subject.identifier": f"{SYSTEM}|{a.marker}"}),
            ("/Encounter", {"patient._has:Condition:subject:code:text": a.marker}),
            # reverse chains, from the hidden patient's records
            ("/Patient", {"_has:Observation:subject:identifier": f"{SYSTEM}|{a.marker}-bp"}),
            ("/Patient", {"_has:Condition:subject:code:text": a.marker}),
            # the compartment search parameters
            ("/Encounter", {"patient": a.id}),
            ("/Condition", {"patient": f"Patient/{a.id}"}),
        ]
        for path, params in searches:
            bundle = hostile.get(path, params=params).json()
            assert bundle["resourceType"] == "Bundle", (path, params, bundle)
            assert bundle.get("total", 0) == 0 and not bundle.get("entry"), (path, params)
            # The same question as a count, as a POST _search, and at the system level.
            counted = hostile.get(path, params={**params, "_summary": "count"}).json()
            assert counted["total"] == 0, (path, params)
            posted = hostile.post(
                f"{path}/_search",
                data=params,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ).json()
            assert not posted.get("entry"), (path, params)

    def test_the_doctor_of_the_clinic_finds_what_the_hostile_one_does_not(
        self, network: Network, doctor: httpx.Client
    ) -> None:
        a = network.patients["a"]
        assert doctor.get(f"/Patient/{a.id}").status_code == 200
        assert ids(
            doctor.get("/Observation", params={"subject:Patient.name": "马福兰"}).json()
        ) == {a.observation}
        assert ids(
            doctor.get("/Patient", params={"_has:Condition:subject:code:text": a.marker}).json()
        ) == {a.id}
        counted = doctor.get("/Observation", params={"subject": a.id, "_summary": "count"})
        assert counted.json()["total"] == 1
        # ...and not the other clinic's patient.
        _not_found(doctor.get(f"/Patient/{network.patients['b'].id}"))

    def test_system_search_and_type_filter(self, network: Network, hostile: httpx.Client) -> None:
        a = network.patients["a"]
        for params in (
            {"_type": "Patient,Observation,Condition,Encounter"},
            {"_type": "Patient", "_id": a.id},
            {"_id": f"{a.id},{a.observation}"},
        ):
            bundle = hostile.get("", params={**params, "_count": "1000"}).json()
            seen = refs(bundle)
            assert f"Patient/{a.id}" not in seen and f"Observation/{a.observation}" not in seen

    def test_compartments_and_everything(self, network: Network, hostile: httpx.Client) -> None:
        a = network.patients["a"]
        _not_found(hostile.get(f"/Patient/{a.id}/Observation"))
        _not_found(hostile.get(f"/Patient/{a.id}/$everything"))
        # Her own patient's $everything holds her own patient's records only.
        b = network.patients["b"]
        everything = ids(hostile.get(f"/Patient/{b.id}/$everything").json())
        assert {b.id, b.observation, b.encounter, b.condition} <= everything
        assert not everything & {a.id, a.observation, a.encounter, a.condition}

    def test_includes_do_not_cross_into_hidden_records(
        self, network: Network, hostile: httpx.Client
    ) -> None:
        a, b = network.patients["a"], network.patients["b"]
        # The hospital system links the two patients' readings both ways.
        linking = created(
            network.system.post(
                "/Observation",
                json={
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "panel"},
                    "subject": {"reference": f"Patient/{b.id}"},
                    "hasMember": [{"reference": f"Observation/{a.observation}"}],
                },
            )
        )
        hidden_link = created(
            network.system.post(
                "/Observation",
                json={
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "panel"},
                    "subject": {"reference": f"Patient/{a.id}"},
                    "hasMember": [{"reference": f"Observation/{b.observation}"}],
                },
            )
        )
        forward = hostile.get(
            "/Observation",
            params={"_id": linking["id"], "_include": "Observation:has-member"},
        ).json()
        assert ids(forward) == {linking["id"]}
        backward = hostile.get(
            "/Observation",
            params={"_id": b.observation, "_revinclude": "Observation:has-member"},
        ).json()
        # Only the hidden patient's panel has her reading as a member: nothing to add.
        assert ids(backward) == {b.observation}
        iterate = hostile.get(
            "/Patient",
            params={
                "_id": b.id,
                "_revinclude": "Observation:subject",
                "_include:iterate": "Observation:has-member",
            },
        ).json()
        assert not ids(iterate) & {a.observation, hidden_link["id"]}
        # A reverse chain that would only hold through the hidden record.
        via_hidden = hostile.get(
            "/Observation",
            params={"_id": b.observation, "_has:Observation:has-member:subject": a.id},
        ).json()
        assert not via_hidden.get("entry")

    def test_history_leaves_out_hidden_records(
        self, network: Network, hostile: httpx.Client
    ) -> None:
        a = network.patients["a"]
        for path in ("/Patient/_history", "/Observation/_history", "/_history"):
            history = hostile.get(path, params={"_count": "1000"}).json()
            seen = {
                e["request"]["url"].split("/_history")[0]
                for e in history.get("entry", [])
                if "request" in e
            }
            assert f"Patient/{a.id}" not in seen and f"Observation/{a.observation}" not in seen

    def test_a_task_for_her_patient_is_read_by_her_clinic_only(
        self, network: Network, doctor: httpx.Client, hostile: httpx.Client
    ) -> None:
        # The official Patient compartment has no Task: a follow-up Task for a patient is in
        # her record by the policy's own rule, which a read of one Task must still apply.
        a = network.patients["a"]
        task = created(
            network.system.post(
                "/Task",
                json={
                    "resourceType": "Task",
                    "status": "requested",
                    "intent": "order",
                    "for": {"reference": f"Patient/{a.id}"},
                    "description": "复诊随访",
                },
            )
        )
        for path in (f"/Task/{task['id']}", f"/Task/{task['id']}/_history/1"):
            assert doctor.get(path).json()["description"] == "复诊随访"
            _not_found(hostile.get(path))
        assert len(doctor.get(f"/Task/{task['id']}/_history").json()["entry"]) == 1
        _not_found(hostile.get(f"/Task/{task['id']}/_history"))

    def test_writes_into_another_clinics_patient_are_refused_and_leave_nothing(
        self, network: Network, hostile: httpx.Client
    ) -> None:
        a = network.patients["a"]
        marker = uuid.uuid4().hex
        reading = {
            "resourceType": "Observation",
            "status": "final",
            "identifier": [{"system": SYSTEM, "value": marker}],
            "code": {"text": "收缩压"},
            "subject": {"reference": f"Patient/{a.id}"},
        }
        assert hostile.post("/Observation", json=reading).status_code == 403
        # A conditional update that matches nothing she can see would create: refused too.
        conditional = hostile.put(
            "/Observation", params={"identifier": f"{SYSTEM}|{a.marker}-bp"}, json=reading
        )
        assert conditional.status_code == 403
        if_none_exist = hostile.post(
            "/Observation",
            json=reading,
            headers={"If-None-Exist": f"identifier={SYSTEM}|{a.marker}-bp"},
        )
        assert if_none_exist.status_code == 403
        # Moving a patient of her own to the other clinic is refused as well.
        b = network.patients["b"]
        mine = hostile.get(f"/Patient/{b.id}").json()
        other_clinic = network.organizations["640121105201"]
        moved = {**mine, "managingOrganization": {"reference": f"Organization/{other_clinic}"}}
        assert hostile.put(f"/Patient/{b.id}", json=moved).status_code == 403
        transaction = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {**reading, "subject": {"reference": f"Patient/{b.id}"}},
                    "request": {"method": "POST", "url": "Observation"},
                },
                {"resource": reading, "request": {"method": "POST", "url": "Observation"}},
            ],
        }
        assert hostile.post("", json=transaction).status_code == 403
        found = network.system.get("/Observation", params={"identifier": f"{SYSTEM}|{marker}"})
        assert found.json()["total"] == 0
        assert network.system.get(f"/Patient/{b.id}").json()["meta"]["versionId"] == "1"

    def test_bundle_entries_are_held_to_the_same_rules(
        self, network: Network, hostile: httpx.Client
    ) -> None:
        a, b = network.patients["a"], network.patients["b"]
        batch = hostile.post(
            "",
            json={
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [
                    {"request": {"method": "GET", "url": f"Patient/{a.id}"}},
                    {"request": {"method": "GET", "url": f"Observation?subject={a.id}"}},
                    {"request": {"method": "GET", "url": f"Patient/{b.id}"}},
                    {"request": {"method": "DELETE", "url": f"Condition/{a.condition}"}},
                ],
            },
        ).json()
        statuses = [e["response"]["status"] for e in batch["entry"]]
        assert statuses[0].startswith("404") and statuses[2].startswith("200")
        assert statuses[3].startswith("404")
        assert batch["entry"][1]["resource"]["total"] == 0
        transaction = hostile.post(
            "",
            json={
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"request": {"method": "GET", "url": f"Patient/{a.id}"}}],
            },
        )
        assert transaction.status_code == 404
        assert network.system.get(f"/Condition/{a.condition}").status_code == 200

    def test_her_own_patient_is_hers_to_write(
        self, network: Network, hostile: httpx.Client
    ) -> None:
        b = network.patients["b"]
        reading = created(
            hostile.post(
                "/Observation",
                json={
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "收缩压"},
                    "subject": {"reference": f"Patient/{b.id}"},
                    "valueQuantity": {"value": 131, "unit": "mmHg"},
                },
            )
        )
        assert hostile.get(f"/Observation/{reading['id']}").status_code == 200
        # A new patient must be registered at her own clinic.
        stranger = hostile.post(
            "/Patient",
            json={
                "resourceType": "Patient",
                "managingOrganization": {
                    "reference": f"Organization/{network.organizations['640121105201']}"
                },
            },
        )
        assert stranger.status_code == 403


class TestRoles:
    def test_township_doctor_sees_the_villages_under_the_township(self, network: Network) -> None:
        township = network.as_user("township-doctor")
        a, b, c = (network.patients[k] for k in "abc")
        assert township.get(f"/Patient/{a.id}").status_code == 200
        assert township.get(f"/Patient/{b.id}").status_code == 200
        _not_found(township.get(f"/Patient/{c.id}"))
        listed = ids(township.get("/Patient", params={"_id": f"{a.id},{b.id},{c.id}"}).json())
        assert listed == {a.id, b.id}

    def test_a_patient_who_moves_clinic_takes_her_whole_record_along(
        self, network: Network, doctor: httpx.Client, hostile: httpx.Client
    ) -> None:
        moving = network.make_patient("moving", VILLAGE_A, name="马秀兰")
        record = [
            f"/Patient/{moving.id}",
            f"/Observation/{moving.observation}",
            f"/Encounter/{moving.encounter}",
            f"/Condition/{moving.condition}",
        ]
        by_subject = {"subject": f"Patient/{moving.id}"}

        def sees(client: httpx.Client) -> bool:
            found = [client.get(path).status_code for path in record]
            assert found in ([200] * 4, [404] * 4), found  # all of her record, or none of it
            searched = client.get("/Observation", params=by_subject).json()
            assert (searched["total"] == 1) == (found[0] == 200)
            return found[0] == 200

        assert sees(doctor) and not sees(hostile)
        body = network.system.get(f"/Patient/{moving.id}").json()
        body["managingOrganization"] = {
            "reference": f"Organization/{network.organizations[VILLAGE_B]}"
        }
        assert network.system.put(f"/Patient/{moving.id}", json=body).status_code == 200
        assert sees(hostile) and not sees(doctor)

        # A reading written before its patient exists is held by her clinic once she does.
        early = created(
            network.system.post(
                "/Observation",
                json={
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": "Patient/arrives-later"},
                    "valueQuantity": {"value": 72, "unit": "/min"},
                },
            )
        )
        _not_found(hostile.get(f"/Observation/{early['id']}"))
        newcomer = {
            "resourceType": "Patient",
            "id": "arrives-later",
            "name": [{"text": "杨文"}],
            "managingOrganization": {
                "reference": f"Organization/{network.organizations[VILLAGE_B]}"
            },
        }
        assert network.system.put("/Patient/arrives-later", json=newcomer).status_code == 201
        assert hostile.get(f"/Observation/{early['id']}").status_code == 200
        _not_found(doctor.get(f"/Observation/{early['id']}"))

        # Deleted, she is nobody's patient: her clinic no longer sees what was hers.
        assert network.system.delete(f"/Patient/{moving.id}").status_code in (200, 204)
        _not_found(hostile.get(f"/Observation/{moving.observation}"))
        assert hostile.get("/Observation", params=by_subject).json()["total"] == 0
        assert network.system.get(f"/Observation/{moving.observation}").status_code == 200

    def test_a_doctor_of_another_township_sees_neither(self, network: Network) -> None:
        outsider = network.as_user("outsider")
        _not_found(outsider.get(f"/Patient/{network.patients['a'].id}"))
        assert outsider.get(f"/Patient/{network.patients['c'].id}").status_code == 200

    def test_admins_keep_the_directory_and_see_no_clinical_record(self, network: Network) -> None:
        admin = network.as_user("admin")
        a = network.patients["a"]
        assert admin.get(f"/Patient/{a.id}").status_code == 403
        assert admin.get("/Observation").status_code == 403
        assert admin.get("/Organization", params={"_count": "1"}).json()["total"] >= 1
        assert not ids(admin.get("", params={"_type": "Patient,Observation"}).json())

    def test_scopes_narrow_what_a_token_may_do(self, network: Network) -> None:
        a = network.patients["a"]
        readings_only = network.as_user("village-doctor", "user/Observation.rs")
        assert readings_only.get(f"/Observation/{a.observation}").status_code == 200
        assert readings_only.get(f"/Patient/{a.id}").status_code == 403
        refused = readings_only.post(
            "/Observation",
            json={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{a.id}"},
            },
        )
        assert refused.status_code == 403
        # Includes cannot reach past the scope either.
        included = readings_only.get(
            "/Observation", params={"_id": a.observation, "_include": "Observation:subject"}
        ).json()
        assert ids(included) == {a.observation}


class TestSpecialistConsent:
    def _consent(
        self, network: Network, patient: str, start: dt.datetime, end: dt.datetime | None
    ) -> dict[str, Any]:
        period: dict[str, str] = {"start": start.isoformat()}
        if end is not None:
            period["end"] = end.isoformat()
        return {
            "resourceType": "Consent",
            "status": "active",
            "scope": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "patient-privacy",
                    }
                ]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": f"Patient/{patient}"},
            "policyRule": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
                ]
            },
            "provision": {
                "type": "permit",
                "period": period,
                "actor": [
                    {
                        "role": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                                    "code": "PROV",
                                }
                            ]
                        },
                        "reference": {
                            "reference": f"Practitioner/{network.practitioner('specialist')}"
                        },
                    }
                ],
            },
        }

    def test_a_consult_consent_opens_the_record_and_its_end_closes_it(
        self, network: Network, doctor: httpx.Client
    ) -> None:
        specialist = network.as_user("specialist")
        a = network.patients["a"]
        _not_found(specialist.get(f"/Patient/{a.id}"))
        now = dt.datetime.now(dt.UTC)
        # The village doctor shares her patient's record for the consult.
        consent = created(
            doctor.post(
                "/Consent", json=self._consent(network, a.id, now - dt.timedelta(minutes=1), None)
            )
        )
        assert specialist.get(f"/Patient/{a.id}").status_code == 200
        everything = ids(specialist.get(f"/Patient/{a.id}/$everything").json())
        assert {a.id, a.observation, a.condition, a.encounter} <= everything
        chained = specialist.get("/Observation", params={"subject:Patient.name": "马福兰"})
        assert a.observation in ids(chained.json())
        _not_found(specialist.get(f"/Patient/{network.patients['b'].id}"))
        # The consult closed two days ago: past the day's grace, the record closes.
        ended = {
            **consent,
            **self._consent(network, a.id, now - dt.timedelta(days=3), now - dt.timedelta(days=2)),
        }
        assert doctor.put(f"/Consent/{consent['id']}", json=ended).status_code == 200
        _not_found(specialist.get(f"/Patient/{a.id}"))
        assert specialist.get("/Observation", params={"subject": a.id}).json()["total"] == 0

    def test_the_grace_period_keeps_it_open_a_little(
        self, network: Network, doctor: httpx.Client
    ) -> None:
        specialist = network.as_user("specialist")
        b = network.patients["b"]
        hostile = network.as_user("hostile")
        now = dt.datetime.now(dt.UTC)
        recent = self._consent(
            network, b.id, now - dt.timedelta(hours=3), now - dt.timedelta(hours=1)
        )
        consent = created(hostile.post("/Consent", json=recent))
        assert specialist.get(f"/Patient/{b.id}").status_code == 200
        revoked = {**consent, "status": "inactive"}
        assert hostile.put(f"/Consent/{consent['id']}", json=revoked).status_code == 200
        _not_found(specialist.get(f"/Patient/{b.id}"))

    def test_a_doctor_cannot_share_what_is_not_hers(self, network: Network) -> None:
        hostile = network.as_user("hostile")
        now = dt.datetime.now(dt.UTC)
        refused = hostile.post(
            "/Consent", json=self._consent(network, network.patients["a"].id, now, None)
        )
        assert refused.status_code == 403


class TestAnalyst:
    def test_analysts_see_flagged_households_and_their_evidence_only(
        self, network: Network
    ) -> None:
        analyst = network.as_user("analyst")
        a, b = network.patients["a"], network.patients["b"]
        _not_found(analyst.get(f"/Patient/{a.id}"))
        household = created(
            network.system.post(
                "/Group",
                json={
                    "resourceType": "Group",
                    "type": "person",
                    "actual": True,
                    "member": [{"entity": {"reference": f"Patient/{a.id}"}}],
                },
            )
        )
        now = dt.datetime.now(dt.UTC)
        flag = created(
            network.system.post(
                "/Flag",
                json={
                    "resourceType": "Flag",
                    "meta": {"tag": [ILLNESS_POVERTY_TAG]},
                    "status": "active",
                    "code": {"text": "因病致贫风险"},
                    "subject": {"reference": f"Group/{household['id']}"},
                    "period": {"start": (now - dt.timedelta(days=1)).isoformat()},
                },
            )
        )
        assert analyst.get(f"/Patient/{a.id}").status_code == 200
        assert analyst.get(f"/Flag/{flag['id']}").status_code == 200
        assert analyst.get(f"/Group/{household['id']}").status_code == 200
        assert analyst.get(f"/Condition/{a.condition}").status_code == 200
        # The rest of the clinical record is not part of a case.
        assert analyst.get(f"/Observation/{a.observation}").status_code == 403
        _not_found(analyst.get(f"/Patient/{b.id}"))
        # The flag's cause is gone: it ends, and with it the analyst's view.
        ended = {
            **flag,
            "status": "inactive",
            "period": {"start": flag["period"]["start"], "end": now.isoformat()},
        }
        assert network.system.put(f"/Flag/{flag['id']}", json=ended).status_code == 200
        _not_found(analyst.get(f"/Patient/{a.id}"))
        # The household's own doctor sees the flag: it is about her patient's household.
        doctor = network.as_user("village-doctor")
        assert doctor.get(f"/Flag/{flag['id']}").status_code == 200
        # And finds it by searching Flags, whose condition is made for the type searched.
        found = doctor.get("/Flag", params={"subject": f"Group/{household['id']}"}).json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [flag["id"]]


class TestTokens:
    def _forged(self, token: str, **claims: Any) -> str:
        header, payload, signature = token.split(".")
        padded = payload + "=" * (-len(payload) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded))
        body.update(claims)
        encoded = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
        return f"{header}.{encoded}.{signature}"

    def test_tampered_forged_and_unsigned_tokens_are_refused(self, network: Network) -> None:
        token = network.token("hostile")
        promoted = self._forged(token, role="township_doctor")
        unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
        unsigned = f"{unsigned_header.decode()}.{promoted.split('.')[1]}."
        other_key = jwt.encode(
            {"sub": "user:hostile", "role": "system", "scope": "system/*.cruds"},
            "x" * 40,
            algorithm="HS256",
        )
        a = network.patients["a"]
        for forged in (promoted, unsigned, other_key, token[:-4] + "AAAA", "garbage"):
            response = httpx.get(
                f"{network.server.url}/fhir/Patient/{a.id}",
                headers={"Authorization": f"Bearer {forged}"},
            )
            assert response.status_code == 401, forged
            assert "WWW-Authenticate" in response.headers
            assert forged not in response.text

    def test_no_credentials_no_records(self, network: Network) -> None:
        anonymous = httpx.get(f"{network.server.url}/fhir/Patient")
        assert anonymous.status_code == 401
        assert httpx.get(f"{network.server.url}/fhir/metadata").status_code == 200

    def test_an_expired_token_is_refused(self, network: Network) -> None:
        token = network.server.cli("user", "token", "village-doctor", "--ttl", "1").strip()
        url = f"{network.server.url}/fhir/Patient/{network.patients['a'].id}"
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(url, headers=headers).status_code == 200
        wait_until(
            lambda: httpx.get(url, headers=headers).status_code == 401,
            what="the token's expiry",
        )
