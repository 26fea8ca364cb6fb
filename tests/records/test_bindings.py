"""Required code bindings (records.validation.bindings) and the definitions they come from.

The tests against the official HL7 packages and Synthea need ``../shared`` beside the
checkout and skip with a message without it.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from records.definitions import (
    bindings,
    compartments,
    resource_types,
    search_parameters,
)
from records.outcome import Issue
from records.validation.bindings import _check_coding, _ValueSet, check_bindings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED = PROJECT_ROOT.parent / "shared"
CORE_PACKAGE = SHARED / "fhir" / "hl7.fhir.r4b.core-4.3.0.tgz"
EXAMPLES_PACKAGE = SHARED / "fhir" / "hl7.fhir.r4b.examples-4.3.0.tgz"
SYNTHEA = SHARED / "data" / "synthea-r4"
GENERATOR = PROJECT_ROOT / "tools" / "generate_fhir_data.py"
DEFINITIONS = PROJECT_ROOT / "records" / "definitions"
EXAMPLES_PER_TYPE = 12
GENERATED_FILES = (
    "resource_types.json",
    "bindings.json",
    "search_parameters.json",
    "compartments.json",
    "terminology.json",
)


def expressions(issues: list[Issue]) -> list[str]:
    return [e for issue in issues for e in issue.expression]


def needs(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is absent: the official FHIR packages and test data live in ../shared")


class TestRequiredCodes:
    def test_unknown_gender_is_rejected_with_the_allowed_codes(self) -> None:
        issues = check_bindings({"resourceType": "Patient", "gender": "robot"})

        assert len(issues) == 1
        issue = issues[0]
        assert issue.code == "code-invalid"
        assert issue.severity == "error"
        assert issue.expression == ("Patient.gender",)
        assert issue.diagnostics == (
            "'robot' is not a valid code for Patient.gender; allowed: male, female, other, unknown"
        )

    def test_a_patient_with_valid_codes_everywhere_passes(self) -> None:
        patient = {
            "resourceType": "Patient",
            "text": {"status": "generated", "div": "<div xmlns='http://www.w3.org/1999/xhtml'/>"},
            "identifier": [{"use": "official", "system": "urn:oid:2.16.156.10011.1.3"}],
            "name": [{"use": "official", "family": "马", "given": ["小明"]}],
            "telecom": [{"system": "phone", "value": "0951-1234567", "use": "mobile"}],
            "gender": "male",
            "address": [{"use": "home", "type": "physical", "city": "银川"}],
            "contact": [{"gender": "female", "telecom": [{"system": "email", "use": "work"}]}],
            "link": [{"other": {"reference": "Patient/2"}, "type": "seealso"}],
            "managingOrganization": {"identifier": {"use": "usual", "value": "640100"}},
        }
        assert check_bindings(patient) == []

    def test_a_code_inside_a_datatype_is_located_by_its_list_index(self) -> None:
        patient = {
            "resourceType": "Patient",
            "telecom": [{"system": "phone"}, {"system": "pager2", "value": "88"}],
        }
        issues = check_bindings(patient)

        assert expressions(issues) == ["Patient.telecom[1].system"]
        assert "'pager2'" in issues[0].diagnostics
        assert "phone, fax, email, pager, url, sms, other" in issues[0].diagnostics

    def test_an_unknown_observation_status_is_rejected(self) -> None:
        observation = {"resourceType": "Observation", "status": "done", "code": {"text": "BP"}}
        issues = check_bindings(observation)

        assert expressions(issues) == ["Observation.status"]
        assert "final" in issues[0].diagnostics

    def test_backbone_elements_are_walked(self) -> None:
        patient = {"resourceType": "Patient", "contact": [{"gender": "male"}, {"gender": "m"}]}
        assert expressions(check_bindings(patient)) == ["Patient.contact[1].gender"]

        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "FETCH", "url": "Patient/1"}}],
        }
        issues = check_bindings(bundle)
        assert expressions(issues) == ["Bundle.entry[0].request.method"]
        assert "GET, HEAD, POST, PUT, DELETE, PATCH" in issues[0].diagnostics

    def test_choice_elements_are_checked_under_their_json_names(self) -> None:
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "blood pressure"},
            "valueQuantity": {"value": 5, "comparator": "about"},
            "component": [
                {"code": {"text": "systolic"}, "valueQuantity": {"value": 120}},
                {"code": {"text": "diastolic"}, "valueQuantity": {"value": 80, "comparator": "~"}},
            ],
        }
        assert expressions(check_bindings(observation)) == [
            "Observation.valueQuantity.comparator",
            "Observation.component[1].valueQuantity.comparator",
        ]

    def test_each_code_of_a_repeating_code_element_is_checked(self) -> None:
        request = {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "dosageInstruction": [
                {"timing": {"repeat": {"dayOfWeek": ["mon", "funday"], "periodUnit": "d"}}}
            ],
        }
        assert expressions(check_bindings(request)) == [
            "MedicationRequest.dosageInstruction[0].timing.repeat.dayOfWeek[1]"
        ]

    def test_recursive_backbone_elements_are_walked_at_any_depth(self) -> None:
        questionnaire = {
            "resourceType": "Questionnaire",
            "status": "active",
            "item": [
                {
                    "linkId": "1",
                    "type": "group",
                    "item": [{"linkId": "1.1", "type": "text"}, {"linkId": "1.2", "type": "essay"}],
                }
            ],
        }
        assert expressions(check_bindings(questionnaire)) == ["Questionnaire.item[0].item[1].type"]

    def test_contained_resources_are_checked_as_their_own_type(self) -> None:
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "weight"},
            "contained": [
                {"resourceType": "Practitioner", "id": "p", "gender": "female"},
                {"resourceType": "Patient", "id": "q", "gender": "robot"},
            ],
        }
        issues = check_bindings(observation)

        assert expressions(issues) == ["Observation.contained[1].gender"]
        assert "male, female, other, unknown" in issues[0].diagnostics

    def test_resources_inside_a_bundle_are_checked(self) -> None:
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"resource": {"resourceType": "Patient", "gender": "female"}},
                {"resource": {"resourceType": "Observation", "status": "draft"}},
            ],
        }
        assert expressions(check_bindings(bundle)) == ["Bundle.entry[1].resource.status"]

    def test_a_bound_codeable_concept_rejects_a_wrong_code_in_its_own_system(self) -> None:
        condition = {
            "resourceType": "Condition",
            "subject": {"reference": "Patient/1"},
            "clinicalStatus": {
                "coding": [
                    {"system": "http://snomed.info/sct", "code": "55561003"},
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "healed",
                    },
                ]
            },
        }
        issues = check_bindings(condition)

        assert expressions(issues) == ["Condition.clinicalStatus.coding[1].code"]
        assert "'healed'" in issues[0].diagnostics
        assert "active, recurrence, relapse, inactive, remission, resolved" in issues[0].diagnostics

    def test_a_bound_codeable_concept_accepts_text_and_other_systems(self) -> None:
        condition = {
            "resourceType": "Condition",
            "subject": {"reference": "Patient/1"},
            "clinicalStatus": {"text": "已治愈"},
            "verificationStatus": {
                "coding": [{"system": "http://example.org/local", "code": "ok"}]
            },
        }
        assert check_bindings(condition) == []

    def test_a_bound_coding_needs_the_value_set_system_and_one_of_its_codes(self) -> None:
        # R4B binds no Coding-typed element as required, so the check is exercised directly.
        value_set = _ValueSet.of(
            "http://hl7.org/fhir/ValueSet/example", {"http://example.org/cs": ["a", "b"]}
        )

        def check(coding: dict[str, Any]) -> list[Issue]:
            issues: list[Issue] = []
            _check_coding(coding, ("Basic", "code", None), value_set, issues)
            return issues

        assert check({"system": "http://example.org/cs", "code": "a"}) == []
        assert check({"display": "no code given"}) == []
        assert expressions(check({"system": "http://example.org/cs", "code": "z"})) == [
            "Basic.code.code"
        ]
        assert expressions(check({"code": "a"})) == ["Basic.code.system"]
        other = check({"system": "http://example.org/other", "code": "a"})
        assert expressions(other) == ["Basic.code.system"]
        assert "http://example.org/cs" in other[0].diagnostics

    def test_long_value_sets_are_summarised_in_the_message(self) -> None:
        statement = {"resourceType": "CapabilityStatement", "fhirVersion": "9.9"}
        (issue,) = check_bindings(statement)

        assert issue.expression == ("CapabilityStatement.fhirVersion",)
        assert "and 17 more (see http://hl7.org/fhir/ValueSet/FHIR-version)" in issue.diagnostics

    def test_a_value_that_is_not_a_string_is_reported_not_raised(self) -> None:
        issues = check_bindings({"resourceType": "Patient", "gender": {"coding": []}})
        assert expressions(issues) == ["Patient.gender"]
        assert "not a code string" in issues[0].diagnostics

    def test_unknown_resource_types_are_left_to_the_structure_check(self) -> None:
        assert check_bindings({"resourceType": "Robot", "gender": "robot"}) == []


class TestDefinitions:
    def test_the_loaders_read_the_committed_files(self) -> None:
        assert len(resource_types()) == 141
        assert {"Patient", "Observation", "Bundle"} <= resource_types()
        assert "DomainResource" not in resource_types()
        assert compartments()["Patient"]["Observation"] == ["subject", "performer"]
        assert bindings()["types"]["Patient"]["gender"] == [
            "code",
            "http://hl7.org/fhir/ValueSet/administrative-gender",
        ]
        by_url = {sp["url"]: sp for sp in search_parameters()}
        assert len(by_url) == 1439
        value_quantity = by_url["http://hl7.org/fhir/SearchParameter/Observation-value-quantity"]
        assert value_quantity["expression"] == (
            "Observation.value.ofType(Quantity) | Observation.value.ofType(SampledData)"
        )
        assert value_quantity["original_expression"] == (
            "(Observation.value as Quantity) | (Observation.value as SampledData)"
        )

    def test_the_generated_files_are_up_to_date(self, tmp_path: Path) -> None:
        needs(CORE_PACKAGE)
        command = [sys.executable, str(GENERATOR), "--package", str(CORE_PACKAGE)]
        subprocess.run([*command, "--out", str(tmp_path)], check=True, capture_output=True)
        stale = [
            name
            for name in GENERATED_FILES
            if (tmp_path / name).read_bytes() != (DEFINITIONS / name).read_bytes()
        ]
        assert stale == [], f"run `python tools/generate_fhir_data.py` to refresh {stale}"


def official_examples() -> Iterator[tuple[str, dict[str, Any]]]:
    # Read in archive order: going back in a gzip stream means decompressing it again.
    with tarfile.open(EXAMPLES_PACKAGE, "r:gz") as archive:
        for member in archive:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            stream = archive.extractfile(member)
            if stream is None:
                continue
            resource = orjson.loads(stream.read())
            if isinstance(resource, dict) and "resourceType" in resource:
                yield member.name, resource


@pytest.fixture(scope="module")
def examples() -> list[tuple[str, dict[str, Any]]]:
    """The official R4B examples (2,840 resources, 147 MB of JSON), read once for the module."""
    needs(EXAMPLES_PACKAGE)
    return list(official_examples())


class TestOfficialData:
    def test_every_official_example_passes(
        self, examples: list[tuple[str, dict[str, Any]]]
    ) -> None:
        # All 2,840 examples pass, including the 13 that fhir.resources rejects for their
        # structure, so there is no list of expected failures.
        failing = {
            name: [issue.diagnostics for issue in issues]
            for name, resource in examples
            if (issues := check_bindings(resource))
        }
        assert len(examples) > 2800
        assert failing == {}, f"{len(failing)} of {len(examples)} examples fail: {failing}"

    def test_every_synthea_resource_passes(self) -> None:
        needs(SYNTHEA)
        checked = 0
        failing: dict[str, list[str]] = {}
        for path in sorted(SYNTHEA.glob("*.json.gz")):
            bundle = orjson.loads(gzip.decompress(path.read_bytes()))
            for entry in bundle["entry"]:
                checked += 1
                if issues := check_bindings(entry["resource"]):
                    failing[entry["fullUrl"]] = [issue.diagnostics for issue in issues]
        assert checked > 90_000
        assert failing == {}

    def test_rewritten_search_expressions_match_the_published_ones(
        self, examples: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """Where fhirpathpy can evaluate the published expression, the rewrite finds the same.

        And where it cannot (several values before ``as``), the rewrite evaluates.
        """
        from fhirpathpy import compile as compile_fhirpath
        from fhirpathpy.models import models

        # fhirpathpy has no resolve(); these expressions only need it to run, not to match.
        resolve = {"fn": lambda ctx, coll: [], "arity": {0: []}}
        options = {"userInvocationTable": {"resolve": resolve}}
        # A few examples of each type are enough to exercise every rewritten parameter, and
        # keep fhirpathpy (about 1 ms an evaluation) from dominating the suite.
        by_type: dict[str, list[dict[str, Any]]] = {}
        for _, resource in examples:
            of_type = by_type.setdefault(resource["resourceType"], [])
            if len(of_type) < EXAMPLES_PER_TYPE:
                of_type.append(resource)

        compared = 0
        differ: list[str] = []
        for sp in search_parameters():
            if "original_expression" not in sp:
                continue
            rewritten = compile_fhirpath(sp["expression"], model=models["r4"], options=options)
            published = compile_fhirpath(
                sp["original_expression"], model=models["r4"], options=options
            )
            for base in sp["base"]:
                for resource in by_type.get(base, []):
                    found = rewritten(resource, None)
                    try:
                        expected = published(resource, None)
                    except ValueError:  # "Expected singleton on left side of 'as'"
                        continue
                    compared += 1
                    if found != expected:
                        differ.append(f"{sp['url']} on {base}/{resource.get('id')}")
        assert compared > 500
        assert differ == []
