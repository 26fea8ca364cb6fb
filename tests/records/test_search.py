"""FHIR search over real HTTP on SQLite and PostgreSQL: each parameter type, modifier and
prefix, chains, _has, includes, compartments, $everything, sorting, paging and summaries.

Each test tags what it writes with a marker of its own and adds ``_tag`` to its searches, so
tests sharing one database do not see each other's data.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from records.search.engine import ESTIMATE_LIMIT
from records.validation.resident_id import RESIDENT_ID_SYSTEM, make_resident_id

TAG_SYSTEM = "urn:test:search"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


class World:
    """A small set of resources under one marker tag, and searches restricted to it."""

    def __init__(self, fhir: httpx.Client) -> None:
        self.fhir = fhir
        self.marker = uuid.uuid4().hex
        self.tag = f"{TAG_SYSTEM}|{self.marker}"

    def create(self, resource: dict[str, Any]) -> str:
        meta = resource.setdefault("meta", {})
        meta["tag"] = [{"system": TAG_SYSTEM, "code": self.marker}]
        response = self.fhir.post(f"/{resource['resourceType']}", json=resource)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def search(self, path: str, **params: Any) -> dict[str, Any]:
        response = self.fhir.get(f"/{path}", params={"_tag": self.tag, **params})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def ids(self, path: str, **params: Any) -> set[str]:
        bundle = self.search(path, **params)
        return {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"}

    def patient(self, family: str, given: str, **extra: Any) -> str:
        return self.create(
            {
                "resourceType": "Patient",
                "name": [{"text": family + given, "family": family, "given": [given]}],
                **extra,
            }
        )

    def observation(
        self,
        patient_id: str,
        loinc: str,
        value: float | None = None,
        unit: str = "mm[Hg]",
        when: str | None = "2024-03-05T10:00:00+08:00",
        **extra: Any,
    ) -> str:
        body: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "final",
            "code": {
                "coding": [{"system": LOINC, "code": loinc, "display": "Systolic blood pressure"}],
                "text": "收缩压",
            },
            "subject": {"reference": f"Patient/{patient_id}"},
        }
        if when is not None:
            body["effectiveDateTime"] = when
        if value is not None:
            body["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        body.update(extra)
        return self.create(body)


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == relation), None)


@pytest.fixture
def world(fhir: httpx.Client) -> World:
    return World(fhir)


class TestString:
    def test_prefix_case_and_accent_insensitive(self, world: World) -> None:
        jose = world.patient("Núñez", "José")
        world.patient("Smith", "Anna")
        assert world.ids("Patient", family="nunez") == {jose}
        assert world.ids("Patient", name="JOS") == {jose}

    def test_exact_and_contains(self, world: World) -> None:
        a = world.patient("Hansen", "Eva")
        b = world.patient("Hans", "Eva")
        assert world.ids("Patient", **{"family:exact": "Hans"}) == {b}
        assert world.ids("Patient", **{"family:contains": "anse"}) == {a}

    def test_chinese_characters_match_as_substrings(self, world: World) -> None:
        ma = world.patient("马", "小明")
        wang = world.patient("王", "小红")
        assert world.ids("Patient", name="王") == {wang}
        assert world.ids("Patient", name="小明") == {ma}
        assert world.ids("Patient", name="马小") == {ma}
        assert world.ids("Patient", name="小") == {ma, wang}

    def test_phonetic_pinyin_and_initials(self, world: World) -> None:
        ma = world.patient("马", "小明")
        shan = world.patient("单", "田芳")
        for query in ("maxiaoming", "ma xiaoming", "Ma Xiao", "mxm"):
            assert world.ids("Patient", phonetic=query) == {ma}, query
        assert world.ids("Patient", phonetic="shantianfang") == {shan}
        assert world.ids("Patient", phonetic="dantianfang") == set()

    def test_short_chinese_names_are_found_by_any_part(self, world: World) -> None:
        """One- and two-character queries, which trigrams cannot serve (PostgreSQL answers
        them from the Han gram index), find the same patients as longer ones."""
        ma = world.patient("马", "建国")
        jian = world.patient("建", "华")  # 建 as a surname, not inside a given name
        suo = world.patient("锁", "建国")
        assert world.ids("Patient", name="建") == {ma, jian, suo}
        assert world.ids("Patient", name="建国") == {ma, suo}
        assert world.ids("Patient", name="马建国") == {ma}
        assert world.ids("Patient", name="国马") == set()  # both characters, not adjacent
        assert world.ids("Patient", family="锁") == {suo}
        assert world.ids("Patient", given="华") == {jian}
        assert world.ids("Patient", **{"name:contains": "建国"}) == {ma, suo}
        assert world.ids("Patient", **{"family:exact": "锁"}) == {suo}
        assert world.ids("Patient", **{"name:exact": "建国"}) == {ma, suo}  # the given name

    def test_rare_characters_and_mixed_text(self, world: World) -> None:
        # 𠀾 is in CJK Extension B, outside the Basic Multilingual Plane.
        rare = world.patient("𠀾", "𠁀明")
        mixed = world.create(
            {"resourceType": "Patient", "name": [{"text": "王li明", "family": "王"}]}
        )
        assert world.ids("Patient", name="𠀾") == {rare}
        assert world.ids("Patient", name="𠁀明") == {rare}
        assert world.ids("Patient", name="𠀾𠁀") == {rare}
        assert world.ids("Patient", name="明") == {rare, mixed}
        assert world.ids("Patient", name="王li") == {mixed}
        assert world.ids("Patient", name="li明") == {mixed}

    def test_chinese_addresses_and_clinic_names(self, world: World) -> None:
        home = world.patient(
            "马",
            "兰",
            address=[
                {
                    "text": "宁夏回族自治区银川市永宁县闽宁镇原隆村3组12号",
                    "city": "银川市",
                    "district": "永宁县",
                }
            ],
        )
        clinic = world.create({"resourceType": "Organization", "name": "闽宁镇原隆村卫生室"})
        assert world.ids("Patient", address="原隆村") == {home}
        assert world.ids("Patient", address="原隆") == {home}
        assert world.ids("Patient", **{"address-city": "银川"}) == {home}
        assert world.ids("Patient", address="红寺堡") == set()
        assert world.ids("Organization", name="卫生室") == {clinic}
        assert world.ids("Organization", name="原隆") == {clinic}


class TestToken:
    def test_system_and_code_forms(self, world: World) -> None:
        p = world.patient("杨", "秀英")
        with_system = world.observation(p, "8480-6", 120)
        no_system = world.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"code": "8480-6"}]},
            }
        )
        assert world.ids("Observation", code="8480-6") == {with_system, no_system}
        assert world.ids("Observation", code=f"{LOINC}|8480-6") == {with_system}
        assert world.ids("Observation", code="|8480-6") == {no_system}
        assert world.ids("Observation", code=f"{LOINC}|") == {with_system}

    def test_not_text_and_missing(self, world: World) -> None:
        p = world.patient("杨", "秀英")
        sys_bp = world.observation(p, "8480-6", 120)
        pulse = world.observation(
            p,
            "8867-4",
            72,
            unit="/min",
            code={
                "coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}],
                "text": "心率",
            },
        )
        assert world.ids("Observation", **{"code:not": "8480-6"}) == {pulse}
        assert world.ids("Observation", **{"code:text": "心率"}) == {pulse}
        assert world.ids("Observation", **{"code:text": "systolic"}) == {sys_bp}
        assert world.ids("Patient", **{"gender:missing": "true"}) == {p}
        assert world.ids("Patient", **{"gender:missing": "false"}) == set()

    def test_identifier_of_type(self, world: World) -> None:
        v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
        p = world.patient(
            "马",
            "小明",
            identifier=[
                {
                    "type": {"coding": [{"system": v2, "code": "MR"}], "text": "病历号"},
                    "system": "urn:test:mrn",
                    "value": "MR-001",
                }
            ],
        )
        world.patient(
            "杨",
            "秀英",
            identifier=[
                {
                    "type": {"coding": [{"system": v2, "code": "DL"}]},
                    "system": "urn:test:dl",
                    "value": "MR-001",
                }
            ],
        )
        assert world.ids("Patient", **{"identifier:of-type": f"{v2}|MR|MR-001"}) == {p}
        assert world.ids("Patient", **{"identifier:text": "病历"}) == {p}
        bad = world.fhir.get("/Patient", params={"identifier:of-type": "MR-001"})
        assert bad.status_code == 400

    def test_id_not_and_modifiers_it_does_not_take(self, world: World) -> None:
        p = world.patient("杨", "秀英")
        q = world.patient("李", "军")
        assert world.ids("Patient", **{"_id:not": p}) == {q}
        for param in ("_id:below", "_id:text", "_lastUpdated:missing"):
            response = world.fhir.get("/Patient", params={param: p})
            assert response.status_code == 400, param
            assert param.split(":")[1] in response.json()["issue"][0]["diagnostics"]

    def test_comma_is_or_and_repetition_is_and(self, world: World) -> None:
        p = world.patient("杨", "秀英", gender="female")
        q = world.patient("李", "军", gender="male")
        assert world.ids("Patient", gender="female,male") == {p, q}
        bundle = world.fhir.get(
            "/Patient", params=[("_tag", world.tag), ("gender", "female"), ("gender", "male")]
        )
        assert bundle.json()["total"] == 0


def _condition(world: World, patient: str, clinical_status: str | None) -> str:
    body: dict[str, Any] = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if clinical_status is not None:
        body["clinicalStatus"] = {
            "coding": [{"system": CONDITION_CLINICAL, "code": clinical_status}]
        }
    return world.create(body)


class TestTokenTerminology:
    """:below, :above, :in and :not-in, from the code systems and value sets of the package."""

    def test_below_and_above_follow_the_code_system_hierarchy(self, world: World) -> None:
        p = world.patient("马", "福")
        active = _condition(world, p, "active")
        relapse = _condition(world, p, "relapse")
        inactive = _condition(world, p, "inactive")
        resolved = _condition(world, p, "resolved")
        remission = _condition(world, p, "remission")
        below = {"clinical-status:below": f"{CONDITION_CLINICAL}|inactive"}
        assert world.ids("Condition", **below) == {inactive, resolved, remission}
        below_active = {"clinical-status:below": f"{CONDITION_CLINICAL}|active"}
        assert world.ids("Condition", **below_active) == {active, relapse}
        above = {"clinical-status:above": f"{CONDITION_CLINICAL}|resolved"}
        assert world.ids("Condition", **above) == {inactive, resolved}
        leaf = {"clinical-status:below": f"{CONDITION_CLINICAL}|resolved"}
        assert world.ids("Condition", **leaf) == {resolved}
        both = {
            "clinical-status:below": f"{CONDITION_CLINICAL}|relapse,{CONDITION_CLINICAL}|resolved"
        }
        assert world.ids("Condition", **both) == {relapse, resolved}

    def test_in_and_not_in_a_value_set(self, world: World) -> None:
        p = world.patient("马", "福")
        vital = world.observation(
            p,
            "8480-6",
            120,
            category=[{"coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs"}]}],
        )
        local = world.observation(
            p,
            "8480-6",
            121,
            category=[{"coding": [{"system": "urn:test:category", "code": "vital-signs"}]}],
        )
        uncategorised = world.observation(p, "8480-6", 122)
        value_set = "http://hl7.org/fhir/ValueSet/observation-category"
        assert world.ids("Observation", **{"category:in": value_set}) == {vital}
        assert world.ids("Observation", **{"category:in": value_set + "|4.3.0"}) == {vital}
        assert world.ids("Observation", **{"category:not-in": value_set}) == {local, uncategorised}

    def test_a_bare_code_is_of_the_system_its_element_is_bound_to(self, world: World) -> None:
        p = world.patient("马", "福")
        final = world.observation(p, "8480-6", 120)  # status "final", a code without system
        corrected = world.observation(p, "8480-6", 121, status="corrected")
        amended = {"status:below": "http://hl7.org/fhir/observation-status|amended"}
        assert world.ids("Observation", **amended) == {corrected}
        statuses = {"status:in": "http://hl7.org/fhir/ValueSet/observation-status"}
        assert world.ids("Observation", **statuses) == {final, corrected}

    @pytest.mark.parametrize(
        ("param", "value", "says"),
        [
            ("code:below", "http://snomed.info/sct|38341003", "http://snomed.info/sct"),
            ("code:above", "http://hl7.org/fhir/sid/icd-10|I10", "terminology server"),
            ("clinical-status:below", "inactive", "system|code"),
            ("clinical-status:below", f"{CONDITION_CLINICAL}|dormant", "dormant"),
            ("code:in", "http://hl7.org/fhir/ValueSet/condition-code", "condition-code"),
            ("code:not-in", "http://example.org/fhir/ValueSet/local", "cannot expand"),
        ],
    )
    def test_terminology_it_does_not_have_is_a_400_naming_the_parameter(
        self, world: World, param: str, value: str, says: str
    ) -> None:
        response = world.fhir.get("/Condition", params={param: value})
        assert response.status_code == 400, response.text
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        diagnostics = outcome["issue"][0]["diagnostics"]
        assert param in diagnostics and says in diagnostics


class TestDate:
    @pytest.mark.parametrize(
        ("query", "found"),
        [
            ("2024-03-05", True),
            ("2024-03", True),
            ("2024", True),
            ("2024-03-06", False),
            ("gt2024-03-04", True),
            ("gt2024-03-05", False),
            ("lt2024-03-06", True),
            ("lt2024-03-05", False),
            ("ge2024-03-05", True),
            ("le2024-03-05", True),
            ("sa2024-03-04", True),
            ("eb2024-03-06", True),
            ("ne2024-03-05", False),
            ("ap2024-03-05", True),
        ],
    )
    def test_prefixes_on_a_point_in_time(self, world: World, query: str, found: bool) -> None:
        p = world.patient("丁", "文")
        obs = world.observation(p, "8480-6", 120, when="2024-03-05T10:00:00+08:00")
        assert world.ids("Observation", date=query) == ({obs} if found else set())

    def test_dates_without_zone_are_china_time(self, world: World) -> None:
        p = world.patient("丁", "文")
        late_evening = world.observation(p, "8480-6", 120, when="2024-03-05T23:30:00+08:00")
        # 23:30 in Yinchuan is still the 5th there, though it is 15:30Z.
        assert world.ids("Observation", date="2024-03-05") == {late_evening}
        assert world.ids("Observation", date="2024-03-06") == set()

    def test_periods(self, world: World) -> None:
        p = world.patient("丁", "文")
        stay = world.create(
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "IMP",
                },
                "subject": {"reference": f"Patient/{p}"},
                "period": {"start": "2024-01-10", "end": "2024-01-20"},
            }
        )
        assert world.ids("Encounter", date="ge2024-01-15") == {stay}
        assert world.ids("Encounter", date="gt2024-01-20") == set()
        assert world.ids("Encounter", date="eq2024-01") == {stay}
        assert world.ids("Encounter", date="sa2024-01-09") == {stay}

    def test_bad_date_is_400(self, world: World) -> None:
        response = world.fhir.get("/Observation", params={"date": "2024-13-45"})
        assert response.status_code == 400
        assert "date" in response.json()["issue"][0]["diagnostics"]


class TestNumberAndQuantity:
    def test_quantity_prefixes_units_and_precision(self, world: World) -> None:
        p = world.patient("海", "燕")
        high = world.observation(p, "8480-6", 165)
        normal = world.observation(p, "8480-6", 120.4)
        assert world.ids("Observation", **{"value-quantity": "gt140"}) == {high}
        assert world.ids("Observation", **{"value-quantity": f"le140|{UCUM}|mm[Hg]"}) == {normal}
        assert world.ids("Observation", **{"value-quantity": "120"}) == {normal}  # [119.5, 120.5)
        assert world.ids("Observation", **{"value-quantity": "120.0"}) == set()  # [119.95, 120.05)
        assert world.ids("Observation", **{"value-quantity": "165||mm[Hg]"}) == {high}
        assert world.ids("Observation", **{"value-quantity": "165||kg"}) == set()
        assert world.ids("Observation", **{"value-quantity": "ne165"}) == {normal}

    def test_money_is_a_quantity_in_yuan(self, world: World) -> None:
        p = world.patient("纳", "兰")
        claim = world.create(
            {
                "resourceType": "ExplanationOfBenefit",
                "status": "active",
                "use": "claim",
                "outcome": "complete",
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/claim-type",
                            "code": "institutional",
                        }
                    ]
                },
                "patient": {"reference": f"Patient/{p}"},
                "created": "2024-03-05",
                "insurer": {"display": "宁夏城乡居民医保"},
                "provider": {"display": "银川市第一人民医院"},
                "insurance": [{"focal": True, "coverage": {"display": "城乡居民医保"}}],
                "total": [
                    {
                        "category": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/adjudication",
                                    "code": "submitted",
                                }
                            ]
                        },
                        "amount": {"value": 36000.5, "currency": "CNY"},
                    }
                ],
            }
        )
        assert world.ids("ExplanationOfBenefit", patient=p) == {claim}

    def test_bad_number_is_400(self, world: World) -> None:
        assert world.fhir.get("/Observation", params={"value-quantity": "gtabc"}).status_code == 400


class TestComposite:
    def test_code_value_quantity_on_the_observation_and_its_components(self, world: World) -> None:
        p = world.patient("海", "燕")
        panel = world.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "85354-9"}], "text": "血压"},
                "subject": {"reference": f"Patient/{p}"},
                "component": [
                    {
                        "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                        "valueQuantity": {
                            "value": 165,
                            "unit": "mm[Hg]",
                            "system": UCUM,
                            "code": "mm[Hg]",
                        },
                    },
                    {
                        "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
                        "valueQuantity": {
                            "value": 85,
                            "unit": "mm[Hg]",
                            "system": UCUM,
                            "code": "mm[Hg]",
                        },
                    },
                ],
            }
        )
        single = world.observation(p, "8480-6", 120)
        query = {"component-code-value-quantity": f"{LOINC}|8480-6$gt140"}
        assert world.ids("Observation", **query) == {panel}
        # The diastolic 85 must not pair with the systolic code: values stay with their component.
        assert (
            world.ids("Observation", **{"component-code-value-quantity": "8480-6$lt100"}) == set()
        )
        assert world.ids("Observation", **{"combo-code-value-quantity": "8480-6$ge120"}) == {
            panel,
            single,
        }
        assert world.ids("Observation", **{"code-value-quantity": "8480-6$120"}) == {single}

    def test_a_value_without_dollar_is_400(self, world: World) -> None:
        response = world.fhir.get("/Observation", params={"code-value-quantity": "8480-6"})
        assert response.status_code == 400
        assert "$" in response.json()["issue"][0]["diagnostics"]

    def test_code_value_date(self, world: World) -> None:
        p = world.patient("海", "燕")
        onset = world.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "11368-8"}]},
                "subject": {"reference": f"Patient/{p}"},
                "valueDateTime": "2023-11-20",
            }
        )
        assert world.ids("Observation", **{"code-value-date": "11368-8$2023-11"}) == {onset}
        assert world.ids("Observation", **{"code-value-date": "11368-8$gt2023-12"}) == set()
        assert world.ids("Observation", **{"code-value-date": "8480-6$2023-11"}) == set()

    def test_molecular_sequence_coordinates(self, world: World) -> None:
        """Composites of a token and two numbers: chromosome$start$end, each with prefixes."""
        chromosome = "http://terminology.hl7.org/CodeSystem/chromosome-human"

        def sequence(number: str, window: tuple[int, int], variant: tuple[int, int]) -> str:
            return world.create(
                {
                    "resourceType": "MolecularSequence",
                    "type": "dna",
                    "coordinateSystem": 0,
                    "referenceSeq": {
                        "chromosome": {"coding": [{"system": chromosome, "code": number}]},
                        "referenceSeqId": {
                            "coding": [
                                {
                                    "system": "http://www.ncbi.nlm.nih.gov/nuccore",
                                    "code": "NC_000001.11",
                                }
                            ]
                        },
                        "windowStart": window[0],
                        "windowEnd": window[1],
                    },
                    "variant": [{"start": variant[0], "end": variant[1]}],
                }
            )

        one = sequence("1", (22125500, 22125510), (22125503, 22125504))
        two = sequence("2", (22125500, 22125510), (22125503, 22125504))
        wide = sequence("1", (22120000, 22130000), (22129000, 22129001))
        window = "chromosome-window-coordinate"
        assert world.ids("MolecularSequence", **{window: "1$ge22125500$le22125510"}) == {one}
        assert world.ids("MolecularSequence", **{window: f"{chromosome}|1$lt22125500$gt0"}) == {
            wide
        }
        assert world.ids("MolecularSequence", **{window: "2$22125500$22125510"}) == {two}
        variant = "chromosome-variant-coordinate"
        assert world.ids("MolecularSequence", **{variant: "1$gt22125000$lt22126000"}) == {one}
        assert world.ids("MolecularSequence", **{variant: "1$gt22128000$lt22130000"}) == {wide}
        by_id = "referenceseqid-variant-coordinate"
        assert world.ids("MolecularSequence", **{by_id: "NC_000001.11$ge22125503$le22125504"}) == {
            one,
            two,
        }
        response = world.fhir.get("/MolecularSequence", params={window: "1$ge22125500"})
        assert response.status_code == 400
        assert "start$end" in response.json()["issue"][0]["diagnostics"]
        bad_number = world.fhir.get("/MolecularSequence", params={window: "1$ge22125500$lex"})
        assert bad_number.status_code == 400

    def test_document_relationship_pairs_a_reference_with_its_code(self, world: World) -> None:
        def document(relations: list[tuple[str, str]]) -> str:
            return world.create(
                {
                    "resourceType": "DocumentReference",
                    "status": "current",
                    "content": [{"attachment": {"contentType": "text/plain", "data": "6K+K5pat"}}],
                    "relatesTo": [
                        {"code": code, "target": {"reference": target}}
                        for code, target in relations
                    ],
                }
            )

        original = document([])
        replacement = document([("replaces", f"DocumentReference/{original}")])
        signature = document([("signs", f"DocumentReference/{original}")])
        mixed = document(
            [
                ("signs", f"DocumentReference/{replacement}"),
                ("appends", f"DocumentReference/{original}"),
            ]
        )
        query = "relationship"
        assert world.ids(
            "DocumentReference", **{query: f"DocumentReference/{original}$replaces"}
        ) == {replacement}
        assert world.ids("DocumentReference", **{query: f"{original}$signs"}) == {signature}
        base = str(world.fhir.base_url).rstrip("/")
        absolute = f"{base}/DocumentReference/{original}$appends"
        assert world.ids("DocumentReference", **{query: absolute}) == {mixed}
        # The code stays with its own target: mixed signs the replacement, not the original.
        assert world.ids(
            "DocumentReference", **{query: f"{original}$signs,{original}$transforms"}
        ) == {signature}


class TestReference:
    def test_id_type_and_url_forms(self, world: World) -> None:
        p = world.patient("冶", "成")
        obs = world.observation(p, "8480-6", 120)
        assert world.ids("Observation", subject=f"Patient/{p}") == {obs}
        assert world.ids("Observation", subject=p) == {obs}
        assert world.ids("Observation", patient=p) == {obs}
        assert world.ids("Observation", **{"subject:Patient": p}) == {obs}
        assert world.ids("Observation", **{"subject:Group": p}) == set()
        base = str(world.fhir.base_url).rstrip("/")
        assert world.ids("Observation", subject=f"{base}/Patient/{p}") == {obs}

    def test_identifier_modifier_matches_the_references_own_identifier(self, world: World) -> None:
        """``subject:identifier`` finds logical references (Reference.identifier), as the
        search page defines it; the chain ``subject.identifier`` finds by the target's."""
        resident_id = make_resident_id("640121", dt.date(1968, 4, 2), 7, "male")
        ma = world.patient(
            "马", "建国", identifier=[{"system": RESIDENT_ID_SYSTEM, "value": resident_id}]
        )
        identifier = {"system": RESIDENT_ID_SYSTEM, "value": resident_id}
        logical = world.observation(ma, "8480-6", 150, subject={"identifier": identifier})
        both = world.observation(
            ma, "8480-6", 151, subject={"reference": f"Patient/{ma}", "identifier": identifier}
        )
        literal = world.observation(ma, "8480-6", 152)
        token = f"{RESIDENT_ID_SYSTEM}|{resident_id}"
        assert world.ids("Observation", **{"subject:identifier": token}) == {logical, both}
        assert world.ids("Observation", **{"subject:identifier": resident_id}) == {logical, both}
        assert (
            world.ids("Observation", **{"subject:identifier": f"urn:test:other|{resident_id}"})
            == set()
        )
        assert world.ids("Observation", **{"subject.identifier": token}) == {both, literal}
        assert world.ids("Observation", **{"subject:missing": "true"}) == set()
        chained = world.fhir.get("/Observation", params={"subject:identifier.name": "马"})
        assert chained.status_code == 400
        assert "subject:identifier.name" in chained.json()["issue"][0]["diagnostics"]

    def test_chain(self, world: World) -> None:
        ma = world.patient("马", "小明", gender="male")
        yang = world.patient("杨", "秀英", gender="female")
        obs_ma = world.observation(ma, "8480-6", 120)
        world.observation(yang, "8480-6", 130)
        assert world.ids("Observation", **{"subject:Patient.name": "马"}) == {obs_ma}
        assert world.ids("Observation", **{"patient.gender": "male"}) == {obs_ma}

    def test_has(self, world: World) -> None:
        hypertensive = world.patient("马", "小明")
        other = world.patient("杨", "秀英")
        world.observation(hypertensive, "8480-6", 165)
        world.observation(other, "8867-4", 70, unit="/min")
        assert world.ids("Patient", **{"_has:Observation:patient:code": "8480-6"}) == {hypertensive}
        assert world.ids("Patient", **{"_has:Observation:patient:value-quantity": "gt160"}) == {
            hypertensive
        }

    def test_include_and_revinclude(self, world: World) -> None:
        p = world.patient("马", "小明")
        obs = world.observation(p, "8480-6", 120)
        bundle = world.search("Observation", _include="Observation:subject")
        modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]}
        assert modes == {("Observation", "match"), ("Patient", "include")}
        assert bundle["total"] == 1
        bundle = world.search("Patient", _revinclude="Observation:subject")
        assert {e["resource"]["id"] for e in bundle["entry"]} == {p, obs}

    def test_include_iterate(self, world: World) -> None:
        township = world.create({"resourceType": "Organization", "name": "闽宁镇卫生院"})
        village = world.create(
            {
                "resourceType": "Organization",
                "name": "原隆村卫生室",
                "partOf": {"reference": f"Organization/{township}"},
            }
        )
        p = world.patient(
            "马", "小明", managingOrganization={"reference": f"Organization/{village}"}
        )
        plain = world.search("Patient", _include="Patient:organization")
        assert {e["resource"]["id"] for e in plain["entry"]} == {p, village}
        iterated = world.fhir.get(
            "/Patient",
            params=[
                ("_tag", world.tag),
                ("_include", "Patient:organization"),
                ("_include:iterate", "Organization:partof"),
            ],
        ).json()
        assert {e["resource"]["id"] for e in iterated["entry"]} == {p, village, township}


class TestCompartmentsAndEverything:
    def test_patient_compartment(self, world: World) -> None:
        p = world.patient("马", "小明")
        other = world.patient("杨", "秀英")
        mine = world.observation(p, "8480-6", 120)
        world.observation(other, "8480-6", 120)
        response = world.fhir.get(f"/Patient/{p}/Observation", params={"code": "8480-6"})
        assert {e["resource"]["id"] for e in response.json()["entry"]} == {mine}

    def test_everything_is_paged(self, world: World) -> None:
        p = world.patient("马", "小明")
        made = {p} | {world.observation(p, "8480-6", 120 + i) for i in range(5)}
        first = world.fhir.get(f"/Patient/{p}/$everything", params={"_count": 4}).json()
        assert first["total"] == 6
        second = world.fhir.get(
            next(link["url"] for link in first["link"] if link["relation"] == "next")
        ).json()
        assert {e["resource"]["id"] for e in first["entry"] + second["entry"]} == made


class TestResultParameters:
    def test_sort_several_keys(self, world: World) -> None:
        p = world.patient("马", "小明")
        a = world.observation(p, "8480-6", 150, when="2024-01-01")
        b = world.observation(p, "8480-6", 120, when="2024-03-01")
        c = world.observation(p, "8480-6", 130, when="2024-03-01")
        newest_first = world.search("Observation", _sort="-date,value-quantity")
        assert [e["resource"]["id"] for e in newest_first["entry"]] == [b, c, a]

    def test_paging_is_not_disturbed_by_new_writes(self, world: World) -> None:
        p = world.patient("马", "小明")
        made = [world.observation(p, "8480-6", 100 + i) for i in range(5)]
        first = world.search("Observation", _count=2)
        world.observation(p, "8480-6", 200)  # arrives while the client pages
        seen = [e["resource"]["id"] for e in first["entry"]]
        url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        while url:
            page = world.fhir.get(url).json()
            seen += [e["resource"]["id"] for e in page["entry"]]
            url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        assert seen[:5] == made and len(seen) == len(set(seen)) == 6

    def test_sorted_paging_survives_deletes_and_inserts(self, world: World) -> None:
        """Every resource that still matches appears exactly once while others come and go."""
        p = world.patient("马", "小明")
        days = [f"2024-03-{d:02d}T10:00:00+08:00" for d in (1, 2, 2, 3, 4, 5, 5, 6, 7, 8)]
        made = [world.observation(p, "8480-6", 100 + i, when=when) for i, when in enumerate(days)]
        # Some without a date: they sort last, and must still page through.
        undated = [world.observation(p, "8480-6", 90 + i, when=None) for i in range(2)]
        first = world.search("Observation", _sort="-date,value-quantity", _count=3)
        seen = [e["resource"]["id"] for e in first["entry"]]
        assert seen == [made[9], made[8], made[7]]
        # While the client reads: a resource it has seen and one it has not are deleted, and
        # a new one sorts before the page it is on.
        assert world.fhir.delete(f"/Observation/{made[9]}").status_code in (200, 204)
        assert world.fhir.delete(f"/Observation/{made[4]}").status_code in (200, 204)
        world.observation(p, "8480-6", 300, when="2024-03-09T10:00:00+08:00")
        url = _link(first, "next")
        pages = 1
        while url:
            page = world.fhir.get(url).json()
            seen += [e["resource"]["id"] for e in page["entry"]]
            url = _link(page, "next")
            pages += 1
        expected_rest = [made[5], made[6], made[3], made[1], made[2], made[0], *undated]
        assert seen == [made[9], made[8], made[7], *expected_rest]
        assert pages == 4

    def test_previous_links_walk_back_through_the_same_pages(self, world: World) -> None:
        p = world.patient("马", "小明")
        made = [world.observation(p, "8480-6", 100 + i) for i in range(7)]
        pages = [world.search("Observation", _sort="-value-quantity", _count=3)]
        assert _link(pages[0], "previous") is None
        while (url := _link(pages[-1], "next")) is not None:
            pages.append(world.fhir.get(url).json())
        forward = [[e["resource"]["id"] for e in page["entry"]] for page in pages]
        assert forward == [made[6:3:-1], made[3:0:-1], made[:1]]
        backward = [forward[-1]]
        url = _link(pages[-1], "previous")
        while url is not None:
            page = world.fhir.get(url).json()
            backward.append([e["resource"]["id"] for e in page["entry"]])
            url = _link(page, "previous")
        assert backward == forward[::-1]

    def test_a_cursor_from_another_sort_or_forged_is_400(self, world: World) -> None:
        p = world.patient("马", "小明")
        for i in range(3):
            world.observation(p, "8480-6", 100 + i)
        first = world.search("Observation", _sort="-date", _count=1)
        cursor = parse_qs(urlsplit(_link(first, "next") or "").query)["_cursor"][0]
        for bad in (cursor, "bm90IGEgY3Vyc29y", "!!"):
            response = world.fhir.get(
                "/Observation", params={"_tag": world.tag, "_sort": "_id,date", "_cursor": bad}
            )
            assert response.status_code == 400, response.text
            assert "_cursor" in response.json()["issue"][0]["diagnostics"]

    def test_total_is_counted_up_to_a_limit_unless_asked_for(self, world: World) -> None:
        p = world.patient("马", "小明")
        entries = [
            {
                "request": {"method": "POST", "url": "Observation"},
                "resource": {
                    "resourceType": "Observation",
                    "meta": {"tag": [{"system": TAG_SYSTEM, "code": world.marker}]},
                    "status": "final",
                    "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
                    "subject": {"reference": f"Patient/{p}"},
                },
            }
            for _ in range(ESTIMATE_LIMIT + 1)
        ]
        response = world.fhir.post(
            "/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
        )
        assert response.status_code == 200, response.text[:500]
        assert "total" not in world.search("Observation", _count=1)
        assert world.search("Observation", _count=1, _total="accurate")["total"] == 1001
        assert world.search("Observation", _summary="count")["total"] == 1001
        assert world.search("Patient", _count=1)["total"] == 1

    def test_summary_elements_and_total(self, world: World) -> None:
        p = world.patient(
            "马",
            "小明",
            gender="male",
            text={
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml">马小明</div>',
            },
        )
        count = world.search("Patient", _summary="count")
        assert count["total"] == 1 and count["entry"] == []
        summary = world.search("Patient", _summary="true")["entry"][0]["resource"]
        assert "text" not in summary and summary["gender"] == "male"
        assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
        data = world.search("Patient", _summary="data")["entry"][0]["resource"]
        assert "text" not in data and data["name"][0]["family"] == "马"
        elements = world.search("Patient", _elements="gender")["entry"][0]["resource"]
        assert set(elements) == {"resourceType", "id", "meta", "gender"}
        assert "total" not in world.search("Patient", _total="none")
        assert world.ids("Patient") == {p}

    def test_post_search_form(self, world: World) -> None:
        p = world.patient("马", "小明")
        response = world.fhir.post(
            "/Patient/_search",
            content=f"_tag={world.tag}&family=马",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200, response.text
        assert {e["resource"]["id"] for e in response.json()["entry"]} == {p}

    def test_system_search_by_type(self, world: World) -> None:
        p = world.patient("马", "小明")
        obs = world.observation(p, "8480-6", 120)
        bundle = world.fhir.get(
            "", params={"_type": "Patient,Observation", "_tag": world.tag}
        ).json()
        assert {e["resource"]["id"] for e in bundle["entry"]} == {p, obs}


class TestCapabilityStatement:
    def test_lists_every_composite_and_the_modifiers(self, fhir: httpx.Client) -> None:
        statement = fhir.get("/metadata").json()
        resources = {r["type"]: r for r in statement["rest"][0]["resource"]}

        def params(res_type: str) -> dict[str, dict[str, Any]]:
            return {p["name"]: p for p in resources[res_type]["searchParam"]}

        assert params("MolecularSequence")["chromosome-variant-coordinate"]["type"] == "composite"
        assert params("DocumentReference")["relationship"]["definition"] == (
            "http://hl7.org/fhir/SearchParameter/DocumentReference-relationship"
        )
        assert "code-value-date" in params("Observation")
        documentation = statement["rest"][0]["documentation"]
        for supported in (":in", ":not-in", ":below", ":above", ":identifier"):
            assert supported in documentation
        for unsupported in ("_text", "_content", "_filter", "_contained"):
            assert unsupported in documentation

    @pytest.mark.parametrize("param", ["_text", "_content", "_filter", "_contained"])
    def test_unsupported_parameters_are_reported_or_refused(
        self, fhir: httpx.Client, param: str
    ) -> None:
        lenient = fhir.get("/Patient", params={param: "马", "_count": "1"})
        assert lenient.status_code == 200
        outcome = [
            e["resource"] for e in lenient.json()["entry"] if e["search"]["mode"] == "outcome"
        ]
        assert any(param in issue["diagnostics"] for o in outcome for issue in o["issue"])
        strict = fhir.get("/Patient", params={param: "马"}, headers={"Prefer": "handling=strict"})
        assert strict.status_code == 400
        assert param in strict.json()["issue"][0]["diagnostics"]
