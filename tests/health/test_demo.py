"""The demo data set: the network's shape, valid FHIR, consistent people and money, idempotence."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from health.core.naming import (
    DEMO_TAG,
    HOUSEHOLD_NUMBER_SYSTEM,
    LOCATION_CODE_SYSTEM,
    ORGANIZATION_CODE_SYSTEM,
    ORGANIZATION_KIND_SYSTEM,
    PAYMENT_LAYER_SYSTEM,
    PRACTITIONER_NUMBER_SYSTEM,
    TEST_DATA_LABEL,
)
from health.demo import DEMO_AS_OF, build_demo_bundles
from records.validation.resident_id import RESIDENT_ID_SYSTEM, parse_resident_id

Resource = dict[str, Any]


@pytest.fixture(scope="module")
def bundles() -> list[Resource]:
    return build_demo_bundles()


def resources(bundle: Resource, resource_type: str | None = None) -> list[Resource]:
    return [
        entry["resource"]
        for entry in bundle["entry"]
        if resource_type is None or entry["resource"]["resourceType"] == resource_type
    ]


def all_resources(bundles: list[Resource], resource_type: str | None = None) -> list[Resource]:
    return [r for bundle in bundles for r in resources(bundle, resource_type)]


def identifier(resource: Resource, system: str) -> str:
    return next(i["value"] for i in resource["identifier"] if i["system"] == system)


def kind(organization: Resource) -> str | None:
    for concept in organization.get("type", []):
        for coding in concept["coding"]:
            if coding["system"] == ORGANIZATION_KIND_SYSTEM:
                return coding["code"]
    return None


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def totals(eob: Resource) -> dict[str, Decimal]:
    return {
        total["category"]["coding"][0]["code"]: Decimal(str(total["amount"]["value"]))
        for total in eob["total"]
    }


# -- the network ---------------------------------------------------------------------------


def test_directory_has_the_townships_villages_and_hospitals(bundles: list[Resource]) -> None:
    directory = bundles[0]
    organizations = resources(directory, "Organization")
    by_url = {e["fullUrl"]: e["resource"] for e in directory["entry"]}
    counts = Counter(kind(o) for o in organizations)
    assert counts["township-health-centre"] == 10
    assert counts["village-clinic"] == 56
    assert counts["hospital"] == 3
    for organization in organizations:
        if kind(organization) == "village-clinic":
            parent = by_url[organization["partOf"]["reference"]]
            assert kind(parent) == "township-health-centre"
            assert organization["name"].endswith("卫生室")
        if kind(organization) == "department":
            assert kind(by_url[organization["partOf"]["reference"]]) == "hospital"
    hospitals = {o["name"] for o in organizations if kind(o) == "hospital"}
    assert hospitals == {"银川市第一人民医院", "宁夏医科大学总医院", "银川市中医医院"}
    for hospital in (o for o in organizations if kind(o) == "hospital"):
        url = next(e["fullUrl"] for e in directory["entry"] if e["resource"] is hospital)
        departments = [o for o in organizations if o.get("partOf", {}).get("reference") == url]
        assert len(departments) >= 5
    names = {o["name"] for o in organizations}
    assert "闽宁镇原隆村卫生室" in names and "宁夏城乡居民医保" in names


def test_every_clinic_has_a_located_address_near_yinchuan(bundles: list[Resource]) -> None:
    directory = bundles[0]
    clinic_codes = {
        identifier(o, ORGANIZATION_CODE_SYSTEM)
        for o in resources(directory, "Organization")
        if kind(o) in ("township-health-centre", "village-clinic", "hospital")
    }
    locations = {
        identifier(loc, LOCATION_CODE_SYSTEM): loc for loc in resources(directory, "Location")
    }
    assert set(locations) == clinic_codes
    for location in locations.values():
        assert 38.3 <= location["position"]["latitude"] <= 38.9
        assert 105.9 <= location["position"]["longitude"] <= 106.6
        address = location["address"]
        assert address["state"] == "宁夏回族自治区" and address["city"] == "银川市"
        assert address["country"] == "CN" and address["line"]


def test_staffing_of_each_kind_of_clinic(bundles: list[Resource]) -> None:
    directory = bundles[0]
    by_url = {e["fullUrl"]: e["resource"] for e in directory["entry"]}
    staff_per_org: Counter[str] = Counter()
    for role in resources(directory, "PractitionerRole"):
        organization = by_url[role["organization"]["reference"]]
        assert by_url[role["practitioner"]["reference"]]["resourceType"] == "Practitioner"
        assert role["specialty"][0]["text"]  # Chinese, e.g. 心血管内科
        staff_per_org[organization["name"]] += 1
    for organization in resources(directory, "Organization"):
        count = staff_per_org[organization["name"]]
        expected = {
            "village-clinic": (1, 2),
            "township-health-centre": (3, 5),
            "department": (2, 4),
        }.get(kind(organization) or "", (0, 0))
        assert expected[0] <= count <= expected[1], (organization["name"], count)
    for practitioner in resources(directory, "Practitioner"):
        assert re.fullmatch(r"YS\d{5}", identifier(practitioner, PRACTITIONER_NUMBER_SYSTEM))
        assert practitioner["gender"] in ("male", "female")
        assert (
            practitioner["name"][0]["text"]
            == practitioner["name"][0]["family"] + practitioner["name"][0]["given"][0]
        )


# -- FHIR validity and conventions --------------------------------------------------------


def test_every_resource_validates_with_fhir_resources_r4b(bundles: list[Resource]) -> None:
    for bundle in bundles:
        get_fhir_model_class("Bundle").model_validate(bundle)
        for resource in resources(bundle):
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_everything_is_tagged_demo_and_test_data(bundles: list[Resource]) -> None:
    for resource in all_resources(bundles):
        assert DEMO_TAG in resource["meta"]["tag"]
        assert TEST_DATA_LABEL in resource["meta"]["security"]


def test_every_entry_is_a_conditional_create_on_its_own_identifier(bundles: list[Resource]) -> None:
    keys: set[str] = set()
    full_urls: set[str] = set()
    for bundle in bundles:
        assert bundle["type"] == "transaction"
        for entry in bundle["entry"]:
            resource, request = entry["resource"], entry["request"]
            assert request["method"] == "POST" and request["url"] == resource["resourceType"]
            system, _, value = request["ifNoneExist"].removeprefix("identifier=").partition("|")
            assert {"system": system, "value": value} in [
                {"system": i["system"], "value": i["value"]} for i in resource["identifier"]
            ]
            key = f"{resource['resourceType']}|{system}|{value}"
            assert key not in keys, key
            keys.add(key)
            assert entry["fullUrl"].startswith("urn:uuid:") and entry["fullUrl"] not in full_urls
            full_urls.add(entry["fullUrl"])


def test_every_reference_resolves_in_its_bundle_or_to_the_directory(
    bundles: list[Resource],
) -> None:
    directory_keys = {
        f"{r['resourceType']}?identifier={i['system']}|{i['value']}"
        for r in resources(bundles[0])
        for i in r["identifier"]
    }
    for bundle in bundles:
        urls = {entry["fullUrl"] for entry in bundle["entry"]}
        for resource in resources(bundle):
            for reference in references(resource):
                if reference.startswith("urn:uuid:"):
                    assert reference in urls, reference
                else:
                    assert reference in directory_keys, reference


# -- people and households -----------------------------------------------------------------


def test_three_hundred_patients_with_valid_resident_ids(bundles: list[Resource]) -> None:
    patients = all_resources(bundles, "Patient")
    assert len(patients) == 300
    numbers = [identifier(p, RESIDENT_ID_SYSTEM) for p in patients]
    assert len(set(numbers)) == len(numbers)
    village_codes = {
        identifier(o, ORGANIZATION_CODE_SYSTEM)
        for o in resources(bundles[0], "Organization")
        if kind(o) == "village-clinic"
    }
    for patient, number in zip(patients, numbers, strict=True):
        parsed = parse_resident_id(number)
        assert parsed.birth_date.isoformat() == patient["birthDate"]
        assert parsed.sex == patient["gender"]
        assert parsed.region_code in {"640104", "640105", "640106", "640121", "640122", "640181"}
        name = patient["name"][0]
        assert name["text"] == name["family"] + "".join(name["given"])
        assert 2 <= len(name["text"]) <= 3
        for phone in patient.get("telecom", []):
            assert re.fullmatch(r"1\d{10}", phone["value"])
        managing = patient["managingOrganization"]["reference"]
        assert managing.split("|")[1] in village_codes
        assert patient["address"][0]["state"] == "宁夏回族自治区"
    adults = [p for p in patients if p["birthDate"] <= "2008-01-01"]
    assert all(p.get("telecom") for p in adults)
    surnames = Counter(p["name"][0]["family"] for p in patients)
    assert surnames.most_common(1)[0][0] == "马"


def test_households_group_every_patient_once(bundles: list[Resource]) -> None:
    groups = all_resources(bundles, "Group")
    assert 80 <= len(groups) <= 100
    members: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for bundle in bundles[1:]:
        patients_by_url = {
            e["fullUrl"]: e["resource"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Patient"
        }
        for group in resources(bundle, "Group"):
            assert group["type"] == "person" and group["actual"] is True
            assert re.fullmatch(r"6401\d{14}", identifier(group, HOUSEHOLD_NUMBER_SYSTEM))
            assert 2 <= len(group["member"]) <= 6 and group["quantity"] == len(group["member"])
            relationships = [
                m["extension"][0]["valueCodeableConcept"]["text"] for m in group["member"]
            ]
            assert relationships[0] == "户主" and relationships.count("户主") == 1
            for member in group["member"]:
                members[member["entity"]["reference"]] += 1
                assert member["entity"]["reference"] in patients_by_url
            status = group["characteristic"][0]
            assert status["code"]["coding"][0]["code"] == "registry-status"
            statuses[status["valueCodeableConcept"]["coding"][0]["code"]] += 1
    assert len(members) == 300 and set(members.values()) == {1}
    assert set(statuses) <= {"registered-poor", "exited", "monitored", "ordinary"}
    assert statuses["exited"] > 0 and statuses["ordinary"] > 0


def test_patient_bundles_hold_about_fifty_patients_each(bundles: list[Resource]) -> None:
    counts = [len(resources(bundle, "Patient")) for bundle in bundles[1:]]
    assert resources(bundles[0], "Patient") == []
    assert sum(counts) == 300
    assert all(50 <= count <= 56 for count in counts[:-1]) and 1 <= counts[-1] <= 56


def test_requested_patient_count_is_exact(bundles: list[Resource]) -> None:
    assert [len(b["entry"]) for b in build_demo_bundles(patients=0)] == [len(bundles[0]["entry"])]
    assert len(all_resources(build_demo_bundles(patients=7), "Patient")) == 7
    with pytest.raises(ValueError):
        build_demo_bundles(patients=1)


def test_same_seed_same_bundles_other_seed_other_people(bundles: list[Resource]) -> None:
    again = build_demo_bundles()
    assert json.dumps(again, ensure_ascii=False) == json.dumps(bundles, ensure_ascii=False)
    other = build_demo_bundles(seed=7, patients=50)
    assert other[0] == bundles[0]  # one network for every seed
    assert {identifier(p, RESIDENT_ID_SYSTEM) for p in all_resources(other, "Patient")}.isdisjoint(
        identifier(p, RESIDENT_ID_SYSTEM) for p in all_resources(bundles, "Patient")
    )


# -- clinical history ----------------------------------------------------------------------


def test_clinical_history_uses_icd10_loinc_and_ucum(bundles: list[Resource]) -> None:
    conditions = all_resources(bundles, "Condition")
    codes = Counter(c["code"]["coding"][0]["code"] for c in conditions)
    assert {"I10", "E11.9", "J44.9", "I63.9", "J06.9"} <= set(codes)
    assert all(
        c["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10" for c in conditions
    )
    assert all(re.search(r"[\u4e00-\u9fff]", c["code"]["coding"][0]["display"]) for c in conditions)
    observations = all_resources(bundles, "Observation")
    loinc = Counter(o["code"]["coding"][0]["code"] for o in observations)
    assert {"85354-9", "8867-4", "29463-7", "15074-8"} <= set(loinc)
    for observation in observations:
        if observation["code"]["coding"][0]["code"] == "85354-9":
            systolic, diastolic = observation["component"]
            assert systolic["code"]["coding"][0]["code"] == "8480-6"
            assert diastolic["code"]["coding"][0]["code"] == "8462-4"
            assert systolic["valueQuantity"]["code"] == "mm[Hg]"
            assert systolic["valueQuantity"]["value"] > diastolic["valueQuantity"]["value"]
        if observation["code"]["coding"][0]["code"] == "15074-8":
            assert observation["valueQuantity"]["code"] == "mmol/L"
            assert 3 < observation["valueQuantity"]["value"] < 20
    window_start = (DEMO_AS_OF - dt.timedelta(days=3 * 366)).isoformat()
    for encounter in all_resources(bundles, "Encounter"):
        assert window_start <= encounter["period"]["start"][:10] <= DEMO_AS_OF.isoformat()
        assert encounter["class"]["code"] in ("AMB", "IMP")
    assert all(
        m["medicationCodeableConcept"]["text"] for m in all_resources(bundles, "MedicationRequest")
    )


def test_every_encounter_has_one_eob_with_consistent_totals(bundles: list[Resource]) -> None:
    encounters = all_resources(bundles, "Encounter")
    eobs = all_resources(bundles, "ExplanationOfBenefit")
    assert len(eobs) == len(encounters)
    layers = (
        "basic-medical-insurance",
        "serious-illness-insurance",
        "medical-assistance",
        "out-of-pocket",
    )
    for eob in eobs:
        assert eob["status"] == "active" and eob["use"] == "claim" and eob["outcome"] == "complete"
        assert eob["insurance"][0]["focal"] is True
        amounts = totals(eob)
        assert set(amounts) == {"submitted", "benefit", *layers}
        assert all(t["amount"]["currency"] == "CNY" for t in eob["total"])
        layer_systems = {t["category"]["coding"][0]["system"] for t in eob["total"][2:]}
        assert layer_systems == {PAYMENT_LAYER_SYSTEM}
        assert all(
            value >= 0 and value == value.quantize(Decimal("0.01")) for value in amounts.values()
        )
        assert amounts["submitted"] == sum(amounts[layer] for layer in layers)
        assert amounts["benefit"] == amounts["submitted"] - amounts["out-of-pocket"]
        items = sum(Decimal(str(item["net"]["value"])) for item in eob["item"])
        assert items == amounts["submitted"]


def test_costs_look_like_rural_ningxia(bundles: list[Resource]) -> None:
    kinds = {
        identifier(o, ORGANIZATION_CODE_SYSTEM): kind(o)
        for o in resources(bundles[0], "Organization")
    }
    village_visits, hospital_stays = [], []
    for eob in all_resources(bundles, "ExplanationOfBenefit"):
        provider_kind = kinds[eob["provider"]["reference"].split("|")[1]]
        amounts = totals(eob)
        if provider_kind == "village-clinic":
            village_visits.append(amounts["submitted"])
        if provider_kind == "hospital" and eob["type"]["coding"][0]["code"] == "institutional":
            hospital_stays.append(amounts)
    assert village_visits and max(village_visits) < 200  # tens of yuan
    assert max(s["submitted"] for s in hospital_stays) > 20000  # tens of thousands
    paid_share = sum(s["basic-medical-insurance"] for s in hospital_stays) / sum(
        s["submitted"] for s in hospital_stays
    )
    assert Decimal("0.45") < paid_share < Decimal("0.70")


def test_some_households_carry_a_heavy_out_of_pocket_burden(bundles: list[Resource]) -> None:
    burden: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    statuses = {}
    for bundle in bundles[1:]:
        household_of = {}
        for group in resources(bundle, "Group"):
            number = identifier(group, HOUSEHOLD_NUMBER_SYSTEM)
            statuses[number] = group["characteristic"][0]["valueCodeableConcept"]["coding"][0][
                "code"
            ]
            for member in group["member"]:
                household_of[member["entity"]["reference"]] = number
        for eob in resources(bundle, "ExplanationOfBenefit"):
            key = (household_of[eob["patient"]["reference"]], eob["created"][:4])
            burden[key] += totals(eob)["out-of-pocket"]
    heavy = {number for (number, _), amount in burden.items() if amount > 10000}
    assert len(heavy) >= 5
    assert any(statuses[number] == "ordinary" for number in heavy)
    typical = sorted(burden.values())[len(burden) // 2]
    assert typical < 1000
