"""The access policy holds on the search paths of issue 3's last parts, on both databases.

A village doctor of one clinic searches records of her clinic's patient and of another
clinic's patient through the search engine with the real access policy
(``health.auth.policy``): Han name search, composites, ``:identifier``, token terminology
modifiers and the totals must show only what she may see, and must not count the rest.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from health.auth.policy import AccessPolicy, Subject
from health.auth.scopes import ScopeSet, parse_scopes
from health.core.database import Database
from records.access import FULL_ACCESS, RecordAccess
from records.importer import process_bundle
from records.indexing import SearchIndexer
from records.search.engine import COSTLY_COUNT, Compartment, SearchEngine
from records.search.parse import SearchParser
from records.validation.resident_id import RESIDENT_ID_SYSTEM, make_resident_id
from tests.conftest import BACKENDS, fresh_database

TAG_SYSTEM = "urn:test:search-access"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def _entry(name: str, resource: dict[str, Any], marker: str) -> dict[str, Any]:
    resource["meta"] = {"tag": [{"system": TAG_SYSTEM, "code": marker}]}
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, marker + name)}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def _ref(name: str, marker: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, marker + name)}"}


def _height(subject: dict[str, Any], cm: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8302-2"}]},
        "subject": subject,
        "valueQuantity": {"value": cm, "unit": "cm", "system": UCUM, "code": "cm"},
    }


def _resolved(subject: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "resolved"}]},
        "code": {"text": "高血压"},
        "subject": subject,
    }


class Clinics:
    """Two village clinics, a patient of each, their records, and one logical reference."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.marker = uuid.uuid4().hex
        self.resident_id = make_resident_id("640121", dt.date(1966, 3, 9), 3, "male")
        m = self.marker
        ours, theirs = _ref("patient-a", m), _ref("patient-b", m)
        logical = {"identifier": {"system": RESIDENT_ID_SYSTEM, "value": self.resident_id}}
        entries = {
            "clinic-a": {"resourceType": "Organization", "name": "原隆村卫生室"},
            "clinic-b": {"resourceType": "Organization", "name": "红寺堡村卫生室"},
            "patient-a": {
                "resourceType": "Patient",
                "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": self.resident_id}],
                "name": [{"text": "马建国", "family": "马", "given": ["建国"]}],
                "gender": "male",
                "birthDate": "1966-03-09",
                "managingOrganization": _ref("clinic-a", m),
            },
            "patient-b": {
                "resourceType": "Patient",
                "name": [{"text": "马建华", "family": "马", "given": ["建华"]}],
                "managingOrganization": _ref("clinic-b", m),
            },
            "height-a1": _height(ours, 175),
            "height-a2": _height(ours, 176),
            "height-a3": _height(ours, 177),
            "height-b": _height(theirs, 178),
            "height-logical": _height(logical, 179),
            "condition-a": _resolved(ours),
            "condition-b": _resolved(theirs),
        }
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [_entry(name, body, m) for name, body in entries.items()],
        }
        outcome = asyncio.run(self._load(bundle))
        self.ids = {
            name: e["response"]["location"].split("/")[1]
            for name, e in zip(entries, outcome["entry"], strict=True)
        }

    def add(self, name: str, resource: dict[str, Any]) -> str:
        """Write one more resource of the test (its meta tag set), returning its id."""
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [_entry(name, resource, self.marker)],
        }
        location = asyncio.run(self._load(bundle))["entry"][0]["response"]["location"]
        self.ids[name] = location.split("/")[1]
        return self.ids[name]

    async def _load(self, bundle: dict[str, Any]) -> dict[str, Any]:
        database = Database(self.url)
        try:
            result = await process_bundle(database, SearchIndexer(), bundle)
            return dict(result.response)
        finally:
            await database.dispose()

    def doctor_of_clinic_a(self, scopes: ScopeSet | None = None) -> AccessPolicy:
        return self.doctor_of_clinic("clinic-a", scopes)

    def doctor_of_clinic(self, clinic: str, scopes: ScopeSet | None = None) -> AccessPolicy:
        subject = Subject(
            id=f"user:doctor-of-{clinic}",
            role="village_doctor",
            organization=self.ids[clinic],
            practitioner=None,
            scopes=scopes or ScopeSet.everything("user"),
        )
        return AccessPolicy(subject, consent_grace_seconds=0)

    def record_of(self, patient: str) -> Compartment:
        """The compartment ``$everything`` searches (without the audit trail)."""
        return Compartment("Patient", self.ids[patient], excluded=frozenset({"AuditEvent"}))

    def search(
        self,
        res_type: str | None,
        params: dict[str, str],
        access: RecordAccess,
        costly_count: float = COSTLY_COUNT,
        compartment: Compartment | None = None,
    ) -> tuple[set[str], int | None]:
        async def run() -> tuple[set[str], int | None]:
            indexer = SearchIndexer()
            parser = SearchParser(indexer, max_count=1000, default_count=50)
            # A search of all types takes no _tag; a patient's record is this test's alone.
            tag = [("_tag", f"{TAG_SYSTEM}|{self.marker}")] if res_type is not None else []
            query = parser.parse(res_type, [*tag, *params.items()], strict=True)
            database = Database(self.url)
            try:
                async with database.transaction(write=False) as session:
                    engine = SearchEngine(
                        session, indexer, base_url="", access=access, costly_count=costly_count
                    )
                    result = await engine.run(query, compartment=compartment)
            finally:
                await database.dispose()
            return {m.res_id for m in result.matches}, result.total

        return asyncio.run(run())

    def names(self, *keys: str) -> set[str]:
        return {self.ids[k] for k in keys}


@pytest.fixture(scope="module")
def clinics(database_url: str) -> Clinics:
    return Clinics(database_url)


class TestAVillageDoctorSearches:
    def test_chinese_names(self, clinics: Clinics) -> None:
        doctor = clinics.doctor_of_clinic_a()
        assert clinics.search("Patient", {"name": "建"}, doctor)[0] == clinics.names("patient-a")
        assert clinics.search("Patient", {"family": "马"}, doctor)[0] == clinics.names("patient-a")
        everyone = clinics.search("Patient", {"name": "建"}, FULL_ACCESS)[0]
        assert everyone == clinics.names("patient-a", "patient-b")

    def test_composites_and_terminology(self, clinics: Clinics) -> None:
        doctor = clinics.doctor_of_clinic_a()
        tall = {"code-value-quantity": f"{LOINC}|8302-2$gt170"}
        assert clinics.search("Observation", tall, doctor)[0] == clinics.names(
            "height-a1", "height-a2", "height-a3"
        )
        resolved = {"clinical-status:below": f"{CONDITION_CLINICAL}|inactive"}
        assert clinics.search("Condition", resolved, doctor)[0] == clinics.names("condition-a")

    def test_a_logical_reference_is_in_no_record_she_may_see(self, clinics: Clinics) -> None:
        by_identifier = {"subject:identifier": f"{RESIDENT_ID_SYSTEM}|{clinics.resident_id}"}
        doctor = clinics.doctor_of_clinic_a()
        assert clinics.search("Observation", by_identifier, doctor)[0] == set()
        everything = clinics.search("Observation", by_identifier, FULL_ACCESS)[0]
        assert everything == clinics.names("height-logical")

    def test_totals_count_only_what_she_may_see(self, clinics: Clinics) -> None:
        doctor = clinics.doctor_of_clinic_a()
        heights = {"code": f"{LOINC}|8302-2"}
        # One per page: the total comes from the bounded count, not from the page.
        assert clinics.search("Observation", {**heights, "_count": "1"}, doctor)[1] == 3
        assert clinics.search("Observation", {**heights, "_count": "1"}, FULL_ACCESS)[1] == 5
        accurate = {**heights, "_count": "1", "_total": "accurate"}
        assert clinics.search("Observation", accurate, doctor)[1] == 3
        assert clinics.search("Observation", {**heights, "_count": "5"}, doctor)[1] == 3

    def test_her_patient_s_whole_record_and_none_of_another_s(self, clinics: Clinics) -> None:
        """A search of a patient's record tests whether she may see the patient, not each
        of its rows: her patient's is all there, the other clinic's patient's is empty,
        and her token's scopes still bound the types."""
        doctor = clinics.doctor_of_clinic_a()
        ours, theirs = clinics.record_of("patient-a"), clinics.record_of("patient-b")
        record = clinics.names("patient-a", "height-a1", "height-a2", "height-a3", "condition-a")
        assert clinics.search(None, {}, FULL_ACCESS, compartment=ours) == (record, 5)
        assert clinics.search(None, {}, doctor, compartment=ours) == (record, 5)
        assert clinics.search(None, {"_count": "2"}, doctor, compartment=ours)[1] == 5
        assert clinics.search(None, {}, FULL_ACCESS, compartment=theirs)[1] == 3
        assert clinics.search(None, {}, doctor, compartment=theirs) == (set(), 0)
        assert clinics.search("Observation", {}, doctor, compartment=theirs) == (set(), 0)
        observer = clinics.doctor_of_clinic_a(parse_scopes("user/Observation.rs"))
        heights = clinics.names("height-a1", "height-a2", "height-a3")
        assert clinics.search(None, {}, observer, compartment=ours) == (heights, 3)

    def test_a_walk_in_rid_order_sees_only_her_patients_too(self, clinics: Clinics) -> None:
        """Counting priced as costly (here: always), pages come from a walk in rid order."""
        doctor = clinics.doctor_of_clinic_a()
        heights = {"code": f"{LOINC}|8302-2", "_count": "2"}
        walked = clinics.search("Observation", heights, doctor, costly_count=0)[0]
        assert walked == clinics.names("height-a1", "height-a2")  # the first two in rid order
        names = clinics.search("Patient", {"name": "建"}, doctor, costly_count=0)[0]
        assert names == clinics.names("patient-a")


@pytest.fixture(params=BACKENDS)
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return fresh_database(request, request.param, tmp_path)


def test_what_her_search_depends_on_is_asked_anew_by_each_search(fresh_url: str) -> None:
    """A search asks once whether anything of its types is about a household (and leaves
    that part of the policy out when nothing is); the answer is the search's own: the first
    RiskAssessment about her patient's household, written after a search that found none,
    is found by her next search, and not by the doctor of another clinic."""
    clinics = Clinics(fresh_url)
    household = {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{clinics.ids['patient-a']}"}}],
    }
    group = clinics.add("household-a", household)
    doctor = clinics.doctor_of_clinic_a()
    other = clinics.doctor_of_clinic("clinic-b")
    assert clinics.search("RiskAssessment", {}, doctor) == (set(), 0)
    assessment = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": f"Group/{group}"},
        "prediction": [{"outcome": {"text": "因病致贫风险"}}],
    }
    found = {clinics.add("risk-a", assessment)}
    assert clinics.search("RiskAssessment", {}, doctor) == (found, 1)
    assert clinics.search("RiskAssessment", {}, other) == (set(), 0)
    assert clinics.search("RiskAssessment", {}, FULL_ACCESS) == (found, 1)
