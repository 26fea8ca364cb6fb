"""The /fhir API as the real client libraries see it, on SQLite and PostgreSQL.

fhirpy (``AsyncFHIRClient`` and ``SyncFHIRClient``) and fhirclient, the SMART on FHIR client
(R4 models), each drive a running ``health serve``: create, read, update, delete, history,
and with fhirpy search by identifier, conditional interactions and a transaction Bundle.
Each test asserts what a user of the library would notice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from fhirclient.client import FHIRClient
from fhirclient.models.bundle import Bundle
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException, FHIRServer
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound

from tests.services import AppServer

SYSTEM = "https://fhir.yinchuan-health.cn/sid/test"
BATCH_SYSTEM = "https://fhir.yinchuan-health.cn/sid/test-batch"


def identifier() -> dict[str, str]:
    return {"system": SYSTEM, "value": uuid.uuid4().hex}


def token(ident: dict[str, str]) -> str:
    return f"{ident['system']}|{ident['value']}"


def patient_body(text: str = "马小明", gender: str = "male", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [identifier()],
        "name": [{"text": text, "family": text[0], "given": [text[1:]]}],
        "gender": gender,
    }
    body.update(extra)
    return body


def etag_version(entry: dict[str, Any]) -> int:
    """The version number from a history entry's ``response.etag`` (``W/"3"``)."""
    return int(entry["response"]["etag"].removeprefix("W/").strip('"'))


@pytest.fixture
def fhir_base(app_server: AppServer) -> str:
    return f"{app_server.url}/fhir"


@pytest.fixture
def bearer(app_server: AppServer) -> str:
    """A system client's authorization, as a hospital system sends it."""
    return f"Bearer {app_server.system_token()}"


@pytest.fixture
def client(fhir_base: str, bearer: str) -> AsyncFHIRClient:
    return AsyncFHIRClient(fhir_base, authorization=bearer, aiohttp_config={"timeout": 60})


@pytest.fixture
def sync_client(fhir_base: str, bearer: str) -> SyncFHIRClient:
    return SyncFHIRClient(fhir_base, authorization=bearer, requests_config={"timeout": 60})


@pytest.fixture
def smart(fhir_base: str, bearer: str) -> Iterator[FHIRClient]:
    """fhirclient with a system token already in hand (it has no client_credentials flow of
    its own; the SMART launch it does have is tested in tests/auth)."""
    smart = FHIRClient(settings={"app_id": "yinchuan-health-tests", "api_base": fhir_base})
    smart.server.session.headers["Authorization"] = bearer
    yield smart
    smart.server.session.close()


@pytest.fixture
def server(smart: FHIRClient) -> FHIRServer:
    return smart.server


# -- fhirpy, async --------------------------------------------------------------------------


class TestFhirpyCrud:
    async def test_create_read_update_delete(self, client: AsyncFHIRClient) -> None:
        ident = identifier()
        patient = client.resource(
            "Patient",
            identifier=[ident],
            name=[{"text": "马小明", "family": "马", "given": ["小明"]}],
            gender="male",
            birthDate="1983-04-12",
        )
        await patient.save()
        assert patient.id
        assert patient.meta["versionId"] == "1"

        read = await client.resources("Patient").search(_id=patient.id).get()
        assert read.id == patient.id
        assert read["name"][0]["text"] == "马小明"
        assert read["gender"] == "male"
        assert read["identifier"] == [ident]
        as_dict = await client.get("Patient", patient.id)
        assert as_dict["meta"]["versionId"] == "1"

        read["gender"] = "female"
        read["name"] = [{"text": "杨秀英", "family": "杨", "given": ["秀英"]}]
        await read.save()
        assert read.id == patient.id
        assert read.meta["versionId"] == "2"

        await patient.refresh()
        assert patient["gender"] == "female"
        assert patient["name"][0]["text"] == "杨秀英"
        assert patient.meta["versionId"] == "2"
        first = await client.execute(f"Patient/{patient.id}/_history/1", method="get")
        assert first["gender"] == "male"
        assert first["name"][0]["text"] == "马小明"

        await patient.delete()
        with pytest.raises(ResourceNotFound) as gone:
            await client.get("Patient", patient.id)
        assert "deleted" in str(gone.value)
        with pytest.raises(ResourceNotFound):
            await patient.refresh()
        assert await client.resources("Patient").search(_id=patient.id).fetch() == []
        assert await client.resources("Patient").search(identifier=token(ident)).fetch() == []

    async def test_unknown_id_is_not_found(self, client: AsyncFHIRClient) -> None:
        with pytest.raises(ResourceNotFound):
            await client.get("Patient", f"never-{uuid.uuid4().hex[:12]}")

    async def test_unchanged_save_keeps_the_version(self, client: AsyncFHIRClient) -> None:
        patient = client.resource("Patient", **patient_body("马金花", "female"))
        await patient.save()
        await patient.save()
        assert patient.meta["versionId"] == "1"

    async def test_save_with_client_id_creates_on_update(self, client: AsyncFHIRClient) -> None:
        res_id = f"hosp-{uuid.uuid4().hex[:12]}"
        patient = client.resource("Patient", id=res_id, **patient_body("马小明"))
        await patient.save()  # PUT Patient/hosp-…: create-on-update
        assert patient.id == res_id
        assert patient.meta["versionId"] == "1"
        read = await client.get("Patient", res_id)
        assert read["name"][0]["text"] == "马小明"

    async def test_patch_through_fhirpy_is_refused_and_changes_nothing(
        self, client: AsyncFHIRClient
    ) -> None:
        # fhirpy's patch() sends a merge-patch object as application/json; this server (as its
        # CapabilityStatement.patchFormat says) takes only JSON Patch, and answers 415.
        patient = client.resource("Patient", **patient_body("马小明"))
        await patient.save()
        with pytest.raises(OperationOutcome) as refused:
            await client.patch("Patient", patient.id, gender="female")
        assert refused.value.resource["issue"][0]["code"] == "not-supported"
        read = await client.get("Patient", patient.id)
        assert read["gender"] == "male"
        assert read["meta"]["versionId"] == "1"


class TestFhirpyHistory:
    async def test_instance_history_is_newest_first_with_the_delete(
        self, client: AsyncFHIRClient
    ) -> None:
        patient = client.resource("Patient", **patient_body("杨秀英", "female"))
        await patient.save()
        for gender in ("other", "unknown"):
            patient["gender"] = gender
            await patient.save()
        assert patient.meta["versionId"] == "3"
        res_id = patient.id
        await patient.delete()

        history = await client.resource("Patient", id=res_id).execute("_history", "get")
        assert history["resourceType"] == "Bundle"
        assert history["type"] == "history"
        assert history["total"] == 4
        entries = history["entry"]
        assert [etag_version(e) for e in entries] == [4, 3, 2, 1]
        assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "PUT", "POST"]
        assert "resource" not in entries[0]
        kept = [e["resource"] for e in entries[1:]]
        assert [r["meta"]["versionId"] for r in kept] == ["3", "2", "1"]
        assert [r["gender"] for r in kept] == ["unknown", "other", "female"]
        assert {r["name"][0]["text"] for r in kept} == {"杨秀英"}

    async def test_history_pages_follow_next_and_previous_links(
        self, client: AsyncFHIRClient
    ) -> None:
        patient = client.resource("Patient", **patient_body("马小明"))
        await patient.save()
        for text in ("马小红", "马小兰"):
            patient["name"] = [{"text": text}]
            await patient.save()

        versions: list[str] = []
        pages: list[dict[str, Any]] = []
        page = await patient.execute("_history", "get", params={"_count": 1})
        while True:
            pages.append(page)
            versions += [e["resource"]["meta"]["versionId"] for e in page["entry"]]
            links = {link["relation"]: link["url"] for link in page["link"]}
            if "next" not in links:
                break
            page = await client.execute(links["next"], method="get")
        assert versions == ["3", "2", "1"]
        assert len(pages) == 3

        previous = next(link["url"] for link in pages[1]["link"] if link["relation"] == "previous")
        back = await client.execute(previous, method="get")
        assert [e["resource"]["meta"]["versionId"] for e in back["entry"]] == ["3"]
        assert back["entry"][0]["resource"]["name"][0]["text"] == "马小兰"

    async def test_type_history_since_a_write(self, client: AsyncFHIRClient) -> None:
        patient = client.resource("Patient", **patient_body("杨秀英", "female"))
        await patient.save()
        since = patient.meta["lastUpdated"]
        patient["gender"] = "other"
        await patient.save()

        history = await client.resources("Patient").execute(
            "_history", "get", params={"_since": since, "_count": 100}
        )
        assert history["type"] == "history"
        ours = [e for e in history["entry"] if e.get("resource", {}).get("id") == patient.id]
        assert [e["resource"]["meta"]["versionId"] for e in ours] == ["2", "1"]
        assert {e["resource"]["resourceType"] for e in history["entry"] if "resource" in e} == {
            "Patient"
        }


class TestFhirpySearch:
    async def test_search_by_identifier(self, client: AsyncFHIRClient) -> None:
        names = ["马小明", "杨秀英", "冶·阿依莎"]
        patients = []
        for text in names:
            patient = client.resource("Patient", **patient_body(text, "female"))
            await patient.save()
            patients.append(patient)

        for patient, text in zip(patients, names, strict=True):
            found = (
                await client.resources("Patient")
                .search(identifier=token(patient["identifier"][0]))
                .fetch_all()
            )
            assert [p.id for p in found] == [patient.id]
            assert found[0]["name"][0]["text"] == text
            assert found[0]["gender"] == "female"

        by_code_only = (
            await client.resources("Patient")
            .search(identifier=patients[1]["identifier"][0]["value"])
            .fetch_all()
        )
        assert [p.id for p in by_code_only] == [patients[1].id]
        nobody = client.resources("Patient").search(identifier=f"{SYSTEM}|{uuid.uuid4().hex}")
        assert await nobody.fetch_all() == []
        assert await nobody.first() is None
        with pytest.raises(ResourceNotFound):
            await nobody.get()

    async def test_fetch_all_follows_next_links(self, client: AsyncFHIRClient) -> None:
        batch = {"system": BATCH_SYSTEM, "value": uuid.uuid4().hex}
        ids = []
        for text in ("马一", "马二", "马三", "马四", "马五"):
            patient = client.resource("Patient", **patient_body(text))
            patient["identifier"].append(batch)
            await patient.save()
            ids.append(patient.id)

        search = client.resources("Patient").search(identifier=token(batch))
        first_page = await search.limit(2).fetch_raw()
        assert len(first_page["entry"]) == 2
        assert "next" in {link["relation"] for link in first_page["link"]}

        found = await search.limit(2).fetch_all()
        assert sorted(p.id for p in found) == sorted(ids)
        assert len(found) == 5
        assert {p["name"][0]["text"] for p in found} == {"马一", "马二", "马三", "马四", "马五"}
        with pytest.raises(MultipleResourcesFound):
            await search.get()

        await client.delete("Patient", ids[0])
        remaining = await search.limit(2).fetch_all()
        assert sorted(p.id for p in remaining) == sorted(ids[1:])

    async def test_count(self, client: AsyncFHIRClient) -> None:
        patient = client.resource("Patient", **patient_body("马小明"))
        await patient.save()
        assert (
            await client.resources("Patient")
            .search(identifier=token(patient["identifier"][0]))
            .count()
            == 1
        )

    async def test_elements_without_criteria(self, client: AsyncFHIRClient) -> None:
        patient = client.resource("Patient", **patient_body("马小明"))
        await patient.save()
        found = await client.resources("Patient").elements("name").limit(1).fetch()
        assert len(found) == 1

    async def test_negative_count_is_refused(self, client: AsyncFHIRClient) -> None:
        with pytest.raises(OperationOutcome):
            await client.resources("Patient").limit(-1).fetch_raw()


class TestFhirpyConditional:
    async def test_get_or_create(self, client: AsyncFHIRClient) -> None:
        body = patient_body("杨秀英", "female")
        search = client.resources("Patient").search(identifier=token(body["identifier"][0]))

        first, created = await search.get_or_create(client.resource("Patient", **body))
        assert created is True
        assert first.id
        assert first.meta["versionId"] == "1"

        again, created = await search.get_or_create(
            client.resource("Patient", **{**body, "name": [{"text": "杨秀兰"}]})
        )
        assert created is False
        assert again.id == first.id
        assert again["name"][0]["text"] == "杨秀英"  # the existing record, untouched
        assert [p.id for p in await search.fetch_all()] == [first.id]

    async def test_conditional_update_creates_then_updates(self, client: AsyncFHIRClient) -> None:
        body = patient_body("马小明")
        search = client.resources("Patient").search(identifier=token(body["identifier"][0]))

        first, created = await search.update(client.resource("Patient", **body))
        assert created is True
        assert first.meta["versionId"] == "1"

        changed = {**body, "gender": "other", "name": [{"text": "马晓明"}]}
        second, created = await search.update(client.resource("Patient", **changed))
        assert created is False
        assert second.id == first.id
        assert second.meta["versionId"] == "2"
        read = await client.get("Patient", first.id)
        assert read["gender"] == "other"
        assert read["name"][0]["text"] == "马晓明"

    async def test_conditional_update_with_two_matches_is_refused(
        self, client: AsyncFHIRClient
    ) -> None:
        shared = {"system": BATCH_SYSTEM, "value": uuid.uuid4().hex}
        for text in ("马小明", "马小红"):
            await client.resource("Patient", **patient_body(text, identifier=[shared])).save()
        search = client.resources("Patient").search(identifier=token(shared))
        with pytest.raises(MultipleResourcesFound):  # fhirpy's name for 412
            await search.update(client.resource("Patient", **patient_body(identifier=[shared])))
        assert len(await search.fetch_all()) == 2

    async def test_conditional_delete(self, client: AsyncFHIRClient) -> None:
        patient = client.resource("Patient", **patient_body("杨秀英", "female"))
        await patient.save()
        search = client.resources("Patient").search(identifier=token(patient["identifier"][0]))

        _, status = await search.delete()
        assert status == 200
        with pytest.raises(ResourceNotFound):
            await client.get("Patient", patient.id)
        _, status = await search.delete()
        assert status == 204  # nothing matches any more


class TestFhirpyTransaction:
    async def test_transaction_bundle(self, fhir_base: str, bearer: str) -> None:
        client = AsyncFHIRClient(
            fhir_base,
            authorization=bearer,
            extra_headers={"Prefer": "return=representation"},
            aiohttp_config={"timeout": 60},
        )
        body = patient_body("冶·阿依莎", "female")
        criteria = f"identifier={token(body['identifier'][0])}"
        patient_url = f"urn:uuid:{uuid.uuid4()}"
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": patient_url,
                    "resource": body,
                    "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria},
                },
                {
                    "resource": {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"text": "收缩压"},
                        "subject": {"reference": patient_url, "display": "冶·阿依莎"},
                        "valueQuantity": {"value": 128, "unit": "mmHg"},
                    },
                    "request": {"method": "POST", "url": "Observation"},
                },
            ],
        }
        response = await client.execute("", method="post", data=bundle)
        assert response["resourceType"] == "Bundle"
        assert response["type"] == "transaction-response"
        patient_entry, observation_entry = response["entry"]
        assert patient_entry["response"]["status"].startswith("201")
        assert observation_entry["response"]["status"].startswith("201")
        patient_id = patient_entry["resource"]["id"]
        observation_id = observation_entry["resource"]["id"]
        assert patient_entry["response"]["location"].startswith(f"Patient/{patient_id}/_history/1")
        assert observation_entry["resource"]["subject"]["reference"] == f"Patient/{patient_id}"

        patient = await client.get("Patient", patient_id)
        assert patient["name"][0]["text"] == "冶·阿依莎"
        observation = await client.get("Observation", observation_id)
        assert observation["subject"]["reference"] == f"Patient/{patient_id}"
        assert observation["code"]["text"] == "收缩压"

        # Posting the same Bundle again: the conditional create finds the patient.
        again = await client.execute("", method="post", data=bundle)
        assert again["entry"][0]["response"]["status"].startswith("200")
        assert again["entry"][0]["resource"]["id"] == patient_id
        assert again["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
        search = client.resources("Patient").search(identifier=token(body["identifier"][0]))
        assert [p.id for p in await search.fetch_all()] == [patient_id]

    async def test_failed_transaction_changes_nothing(self, client: AsyncFHIRClient) -> None:
        good = patient_body("马小明")
        bad = patient_body("杨秀英", gender="robot")
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": good, "request": {"method": "POST", "url": "Patient"}},
                {"resource": bad, "request": {"method": "POST", "url": "Patient"}},
            ],
        }
        with pytest.raises(OperationOutcome) as refused:
            await client.execute("", method="post", data=bundle)
        assert "robot" in refused.value.resource["issue"][0]["diagnostics"]
        for body in (good, bad):
            search = client.resources("Patient").search(identifier=token(body["identifier"][0]))
            assert await search.fetch_all() == []


# -- fhirpy, sync ---------------------------------------------------------------------------


class TestFhirpySync:
    def test_crud_and_history(self, sync_client: SyncFHIRClient) -> None:
        patient = sync_client.resource("Patient", **patient_body("马小明"))
        patient.save()
        assert patient.meta["versionId"] == "1"
        res_id = patient.id

        search = sync_client.resources("Patient").search(identifier=token(patient["identifier"][0]))
        read = search.get()
        assert read.id == res_id
        assert read["name"][0]["text"] == "马小明"
        read["gender"] = "other"
        read.save()
        assert read.meta["versionId"] == "2"
        assert sync_client.get("Patient", res_id)["gender"] == "other"

        read.delete()
        with pytest.raises(ResourceNotFound):
            sync_client.get("Patient", res_id)
        history = sync_client.resource("Patient", id=res_id).execute("_history", "get")
        assert [etag_version(e) for e in history["entry"]] == [3, 2, 1]
        assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]


# -- fhirclient (SMART on FHIR) -------------------------------------------------------------


def smart_patient(text: str = "杨秀英", gender: str = "female") -> Patient:
    body = patient_body(text, gender)
    del body["resourceType"]
    return Patient(body)


class TestFhirclient:
    def test_prepare_reads_the_capability_statement(
        self, smart: FHIRClient, app_server: AppServer
    ) -> None:
        # The statement declares SMART on FHIR: a client without its own token must log in.
        assert smart.prepare() is False
        assert smart.server.auth._authorize_uri == f"{app_server.url}/auth/authorize"
        assert smart.server.auth._token_uri == f"{app_server.url}/auth/token"
        statement = smart.server.capabilityStatement
        assert statement.fhirVersion == "4.3.0"
        patient = next(r for r in statement.rest[0].resource if r.type == "Patient")
        codes = {i.code for i in patient.interaction}
        assert {"read", "vread", "update", "delete", "create", "history-instance"} <= codes

    def test_create_read_update_delete(self, server: FHIRServer) -> None:
        patient = smart_patient("杨秀英", "female")
        created = patient.create(server)
        assert created is not None
        res_id = created["id"]
        assert created["meta"]["versionId"] == "1"

        read = Patient.read(res_id, server)
        assert read.id == res_id
        assert read.name[0].text == "杨秀英"
        assert read.name[0].family == "杨"
        assert read.gender == "female"
        assert read.meta.versionId == "1"

        read.gender = "other"
        read.birthDate = None
        updated = read.update()  # to the server it was read from
        assert updated is not None
        assert updated["meta"]["versionId"] == "2"
        again = Patient.read(res_id, server)
        assert again.gender == "other"
        assert again.meta.versionId == "2"
        assert again.name[0].text == "杨秀英"

        again.delete()
        with pytest.raises(requests.HTTPError) as gone:
            Patient.read(res_id, server)
        assert gone.value.response.status_code == 410
        assert gone.value.response.json()["resourceType"] == "OperationOutcome"

    def test_unknown_id_is_not_found(self, server: FHIRServer) -> None:
        with pytest.raises(FHIRNotFoundException):
            Patient.read(f"never-{uuid.uuid4().hex[:12]}", server)

    def test_history_and_vread(self, server: FHIRServer) -> None:
        created = smart_patient("马小明", "male").create(server)
        assert created is not None
        res_id = created["id"]
        patient = Patient.read(res_id, server)
        patient.gender = "unknown"
        patient.update()
        patient = Patient.read(res_id, server)
        patient.name[0].text = "马晓明"
        patient.update()
        patient.delete()

        history = Bundle(server.request_json(f"Patient/{res_id}/_history"))
        assert history.type == "history"
        assert history.total == 4
        assert [e.request.method for e in history.entry] == ["DELETE", "PUT", "PUT", "POST"]
        assert history.entry[0].resource is None
        versions = [e.resource for e in history.entry[1:]]
        assert [p.meta.versionId for p in versions] == ["3", "2", "1"]
        assert [(p.name[0].text, p.gender) for p in versions] == [
            ("马晓明", "unknown"),
            ("马小明", "unknown"),
            ("马小明", "male"),
        ]

        first = Patient.read_from(f"Patient/{res_id}/_history/1", server)
        assert first.gender == "male"
        assert first.meta.versionId == "1"

    def test_search_by_identifier_through_pages(self, server: FHIRServer) -> None:
        batch = {"system": BATCH_SYSTEM, "value": uuid.uuid4().hex}
        ids = []
        for text in ("杨一", "杨二", "杨三"):
            patient = smart_patient(text)
            patient.identifier.append(type(patient.identifier[0])(batch))
            created = patient.create(server)
            assert created is not None
            ids.append(created["id"])

        nobody = Patient.where({"identifier": f"{SYSTEM}|{uuid.uuid4().hex}"})
        assert list(nobody.perform_resources_iter(server)) == []
        search = Patient.where({"identifier": token(batch), "_count": "2"})
        pages = list(search.perform_iter(server))
        assert len(pages) == 2  # followed the next link
        found = list(search.perform_resources_iter(server))
        assert sorted(p.id for p in found) == sorted(ids)
        assert {p.name[0].text for p in found} == {"杨一", "杨二", "杨三"}
