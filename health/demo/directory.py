"""The demo clinic network: 10 township health centres, 56 village clinics, 3 city hospitals.

The places are Yinchuan's resettlement (移民) areas — 闽宁镇 in 永宁县, 洪广镇, 金山乡 and
南梁台子 in 贺兰县, 镇北堡镇 and 兴泾镇 in 西夏区, 良田镇 in 金凤区, 月牙湖乡 in 兴庆区,
白土岗乡 and 马家滩镇 in 灵武市. Village names are real where known and invented where not;
positions are plausible points near Yinchuan (38.3–38.9°N, 105.9–106.6°E), not surveyed.

Organisation codes (``ORGANIZATION_CODE_SYSTEM``; Locations reuse them under
``LOCATION_CODE_SYSTEM``):

* township health centre: the township's 12-digit statistical area code, village part 000
  (``640121105000`` 闽宁镇卫生院);
* village clinic: its village's 12-digit area code (``640121105201`` 原隆村卫生室);
* city hospital: ``640100H`` + two digits; its departments ``<hospital>-D`` + two digits;
* the insurer (宁夏城乡居民医保, as administered by 银川市医疗保障局): ``640100YB01``;
* the health commission (银川市卫生健康委员会): ``640100WJW``.

Staff numbers (``PRACTITIONER_NUMBER_SYSTEM``) are ``YS`` + five digits. The directory does
not depend on the demo seed (its random choices — staff names, how many per clinic — come
from a generator of its own): it is the one network every demo data set is placed in, so
seeding with another seed adds patients, never a second, conflicting set of staff roles.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from health.core.naming import (
    LOCATION_CODE_SYSTEM,
    ORGANIZATION_CODE_SYSTEM,
    PRACTITIONER_NUMBER_SYSTEM,
    SPECIALTIES,
    SPECIALTY_SYSTEM,
)
from health.demo.bundle import DEMO_RECORD_SYSTEM, demo_entry, demo_meta, record_entry
from health.demo.people import PersonName, random_mobile, random_name
from integrations.directory_csv import (
    DirectoryRecord,
    conditional_reference,
    directory_entries,
    full_url,
    transaction_bundle,
)

_PRACTITIONER_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/practitioner-role"

INSURER_CODE = "640100YB01"
INSURER_NAME = "宁夏城乡居民医保"
#: The health commission (卫健委), where the commission's analysts work.
COMMISSION_CODE = "640100WJW"
COMMISSION_NAME = "银川市卫生健康委员会"

_STATE = "宁夏回族自治区"
_CITY = "银川市"
# county name -> (GB/T 2260 region code, postal code)
COUNTIES: dict[str, tuple[str, str]] = {
    "兴庆区": ("640104", "750001"),
    "西夏区": ("640105", "750021"),
    "金凤区": ("640106", "750002"),
    "永宁县": ("640121", "750100"),
    "贺兰县": ("640122", "750200"),
    "灵武市": ("640181", "750400"),
}

# (county, township, 3-digit township number, latitude, longitude, villages)
# fmt: off
_TOWNSHIPS: tuple[tuple[str, str, str, float, float, tuple[str, ...]], ...] = (
    ("永宁县", "闽宁镇", "105", 38.34, 106.02,
     ("原隆村", "福宁村", "木兰村", "武河村", "园艺村", "玉海村", "玉泉村", "杨岭村")),
    ("贺兰县", "洪广镇", "102", 38.72, 106.17,
     ("欣荣村", "高荣村", "广荣村", "金沙村", "暖泉村")),
    ("贺兰县", "金山乡", "201", 38.80, 106.07,
     ("金山村", "金河村", "宁丰村", "通义村", "新胜村")),
    ("贺兰县", "南梁台子", "400", 38.66, 106.10,
     ("银光村", "银湖村", "和兴村", "新民村", "南梁村")),
    ("西夏区", "镇北堡镇", "101", 38.62, 106.05,
     ("华西村", "昊苑村", "团结村", "吴苑村", "德林村", "镇北堡村")),
    ("西夏区", "兴泾镇", "100", 38.43, 106.07,
     ("十里村", "泾龙村", "泾华村", "泾兴村", "兴源村")),
    ("金凤区", "良田镇", "100", 38.55, 106.31,
     ("园子村", "和顺新村", "植物园村", "金星村", "良田村", "满春村")),
    ("兴庆区", "月牙湖乡", "200", 38.47, 106.56,
     ("滨河家园一村", "滨河家园二村", "塘南村", "海陶南村", "海陶北村", "大河子村", "月湖村")),
    ("灵武市", "白土岗乡", "201", 38.36, 106.47,
     ("新火村", "泾灵村", "白土岗村", "马鞍山村", "灵新村")),
    ("灵武市", "马家滩镇", "104", 38.35, 106.55,
     ("马家滩村", "新兴村", "兴民村", "杨家窑村")),
)

# (code suffix, name, county, address line, latitude, longitude, departments as
# (specialty, name on the door))
_HOSPITALS: tuple[tuple[str, str, str, str, float, float, tuple[tuple[str, str], ...]], ...] = (
    ("01", "银川市第一人民医院", "兴庆区", "利群西街2号", 38.487, 106.262, (
        ("cardiology", "心血管内科"), ("endocrinology", "内分泌科"), ("respiratory", "呼吸内科"),
        ("neurology", "神经内科"), ("paediatrics", "儿科"), ("obstetrics-gynaecology", "妇产科"),
        ("orthopaedics", "骨科"), ("gastroenterology", "消化内科"),
    )),
    ("02", "宁夏医科大学总医院", "兴庆区", "胜利街804号", 38.470, 106.277, (
        ("cardiology", "心血管内科"), ("endocrinology", "内分泌科"),
        ("respiratory", "呼吸与危重症医学科"), ("neurology", "神经内科"), ("oncology", "肿瘤科"),
        ("nephrology", "肾脏内科"), ("dermatology", "皮肤科"), ("paediatrics", "儿科"),
    )),
    ("03", "银川市中医医院", "金凤区", "宁安大街619号", 38.482, 106.221, (
        ("endocrinology", "内分泌科"), ("orthopaedics", "骨伤科"), ("dermatology", "皮肤科"),
        ("gastroenterology", "脾胃病科"), ("respiratory", "肺病科"),
    )),
)
# fmt: on


@dataclass(frozen=True, slots=True)
class Staff:
    """A practitioner and the one role the demo gives them."""

    number: str
    name: PersonName
    gender: str
    role_text: str  # 乡村医生, 全科医生, 专科医生 ...
    specialty: str  # key of SPECIALTIES
    organization_code: str
    location_code: str


@dataclass(slots=True)
class Clinic:
    """A township health centre, a village clinic or a hospital department."""

    record: DirectoryRecord
    county: str
    township: str
    location_code: str
    village: str = ""  # a village clinic's village, as addresses name it
    specialty: str = "general-practice"
    staff: list[Staff] = field(default_factory=list)

    @property
    def code(self) -> str:
        return self.record.code

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def region_code(self) -> str:
        return COUNTIES[self.county][0]


@dataclass(slots=True)
class Township:
    centre: Clinic
    villages: list[Clinic]
    number: str  # 3-digit township number in the statistical area code


@dataclass(slots=True)
class Hospital:
    record: DirectoryRecord
    departments: list[Clinic]


@dataclass(slots=True)
class DemoDirectory:
    """The network, with what the clinical generator needs to place visits."""

    townships: list[Township]
    hospitals: list[Hospital]

    def departments_for(self, specialty: str) -> list[Clinic]:
        return [d for h in self.hospitals for d in h.departments if d.specialty == specialty]

    def hospital_of(self, department: Clinic) -> Hospital:
        return next(h for h in self.hospitals if department in h.departments)

    def records(self) -> list[DirectoryRecord]:
        records: list[DirectoryRecord] = []
        for township in self.townships:
            records.append(township.centre.record)
            records.extend(village.record for village in township.villages)
        for hospital in self.hospitals:
            records.append(hospital.record)
            records.extend(department.record for department in hospital.departments)
        return records

    def clinics(self) -> list[Clinic]:
        clinics: list[Clinic] = []
        for township in self.townships:
            clinics.append(township.centre)
            clinics.extend(township.villages)
        for hospital in self.hospitals:
            clinics.extend(hospital.departments)
        return clinics


def _address(county: str, line: str) -> dict[str, Any]:
    postal_code = COUNTIES[county][1]
    return {
        "use": "work",
        "type": "physical",
        "text": f"{_STATE}{_CITY}{county}{line}",
        "line": [line],
        "city": _CITY,
        "district": county,
        "state": _STATE,
        "postalCode": postal_code,
        "country": "CN",
    }


def _landline(rng: random.Random) -> str:
    # Yinchuan's area code is 0951; local numbers have 7 digits after it.
    return f"0951-{rng.randrange(2, 9)}{rng.randrange(10**6):06d}"


def _nearby(code: str, latitude: float, longitude: float, spread: float) -> tuple[float, float]:
    # Seeded by the code, so a clinic stands in the same place whatever the demo seed.
    place = random.Random(code)
    return (
        round(latitude + place.uniform(-spread, spread), 6),
        round(longitude + place.uniform(-spread, spread), 6),
    )


def build_directory() -> DemoDirectory:
    """The network and its staff, the same every time."""
    rng = random.Random("health.demo.directory")
    staff_numbers = iter(range(1, 100_000))

    def hire(clinic: Clinic, count: int, role_text: str) -> None:
        for _ in range(count):
            gender = "male" if rng.random() < 0.6 else "female"
            clinic.staff.append(
                Staff(
                    number=f"YS{next(staff_numbers):05d}",
                    name=random_name(rng, gender),
                    gender=gender,
                    role_text=role_text,
                    specialty=clinic.specialty,
                    organization_code=clinic.code,
                    location_code=clinic.location_code,
                )
            )

    townships: list[Township] = []
    for county, town, number, latitude, longitude, villages in _TOWNSHIPS:
        region_code = COUNTIES[county][0]
        centre_code = f"{region_code}{number}000"
        centre = Clinic(
            DirectoryRecord(
                code=centre_code,
                name=f"{county}{town}卫生院",
                kind="township-health-centre",
                address=_address(county, f"{town}{town[:2]}街{rng.randrange(1, 60)}号"),
                phone=_landline(rng),
                latitude=round(latitude, 6),
                longitude=round(longitude, 6),
            ),
            county=county,
            township=town,
            location_code=centre_code,
        )
        hire(centre, rng.randint(3, 5), "全科医生")
        village_clinics: list[Clinic] = []
        for index, village in enumerate(villages):
            code = f"{region_code}{number}{201 + index:03d}"
            village_latitude, village_longitude = _nearby(code, latitude, longitude, 0.035)
            clinic = Clinic(
                DirectoryRecord(
                    code=code,
                    name=f"{town}{village}卫生室",
                    kind="village-clinic",
                    parent_code=centre_code,
                    address=_address(county, f"{town}{village}"),
                    phone=random_mobile(rng),
                    latitude=village_latitude,
                    longitude=village_longitude,
                ),
                county=county,
                township=town,
                location_code=code,
                village=village,
            )
            hire(clinic, rng.randint(1, 2), "乡村医生")
            village_clinics.append(clinic)
        townships.append(Township(centre, village_clinics, number))

    hospitals: list[Hospital] = []
    for suffix, name, county, line, latitude, longitude, departments in _HOSPITALS:
        code = f"640100H{suffix}"
        hospital = Hospital(
            DirectoryRecord(
                code=code,
                name=name,
                kind="hospital",
                address=_address(county, line),
                phone=_landline(rng),
                latitude=latitude,
                longitude=longitude,
            ),
            departments=[],
        )
        for index, (specialty, department_name) in enumerate(departments, start=1):
            department = Clinic(
                DirectoryRecord(
                    code=f"{code}-D{index:02d}",
                    name=f"{name}{department_name}",
                    kind="department",
                    parent_code=code,
                    phone=_landline(rng),
                ),
                county=county,
                township="",
                location_code=code,  # departments work in their hospital's building
                specialty=specialty,
            )
            hire(department, rng.randint(2, 4), "专科医生")
            hospital.departments.append(department)
        hospitals.append(hospital)
    return DemoDirectory(townships, hospitals)


def staff_reference(staff: Staff) -> dict[str, str]:
    """Reference from a patient bundle to a practitioner, by staff number."""
    return conditional_reference(
        "Practitioner", PRACTITIONER_NUMBER_SYSTEM, staff.number, staff.name.text
    )


def organization_reference(code: str, display: str | None = None) -> dict[str, str]:
    """Reference from a patient bundle to an organisation of the directory, by its code."""
    return conditional_reference("Organization", ORGANIZATION_CODE_SYSTEM, code, display)


def location_reference(code: str, display: str | None = None) -> dict[str, str]:
    """Reference from a patient bundle to a Location of the directory, by its code."""
    return conditional_reference("Location", LOCATION_CODE_SYSTEM, code, display)


def specialty_concept(specialty: str) -> dict[str, Any]:
    name = SPECIALTIES[specialty]
    return {
        "coding": [{"system": SPECIALTY_SYSTEM, "code": specialty, "display": name}],
        "text": name,
    }


def _agency_entry(
    code: str,
    name: str,
    *,
    type_code: str,
    type_display: str,
    type_text: str,
    aliases: list[str],
    address_line: str,
) -> dict[str, Any]:
    """An organisation of the city government that is neither clinic nor hospital."""
    agency = {
        "resourceType": "Organization",
        "meta": demo_meta(),
        "identifier": [{"system": ORGANIZATION_CODE_SYSTEM, "value": code}],
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": type_code,
                        "display": type_display,
                    }
                ],
                "text": type_text,
            }
        ],
        "name": name,
        "alias": aliases,
        "address": [_address("金凤区", address_line)],
    }
    return demo_entry(agency, ORGANIZATION_CODE_SYSTEM, code)


def _insurer_entry() -> dict[str, Any]:
    return _agency_entry(
        INSURER_CODE,
        INSURER_NAME,
        type_code="pay",
        type_display="Payer",
        type_text="医疗保险经办机构",
        aliases=["宁夏回族自治区城乡居民基本医疗保险", "银川市医疗保障局"],
        address_line="北京中路168号",
    )


def _commission_entry() -> dict[str, Any]:
    return _agency_entry(
        COMMISSION_CODE,
        COMMISSION_NAME,
        type_code="govt",
        type_display="Government",
        type_text="卫生健康行政部门",
        aliases=["银川市卫健委", "Yinchuan Municipal Health Commission"],
        address_line="北京中路159号",
    )


def _staff_entries(staff: Staff) -> list[dict[str, Any]]:
    practitioner = {
        "resourceType": "Practitioner",
        "meta": demo_meta(),
        "identifier": [{"system": PRACTITIONER_NUMBER_SYSTEM, "value": staff.number}],
        "active": True,
        "name": [staff.name.as_fhir()],
        "gender": staff.gender,
    }
    role_value = f"directory-{staff.number}-role"
    role = {
        "resourceType": "PractitionerRole",
        "meta": demo_meta(),
        "identifier": [{"system": DEMO_RECORD_SYSTEM, "value": role_value}],
        "active": True,
        "practitioner": {
            "reference": full_url("Practitioner", PRACTITIONER_NUMBER_SYSTEM, staff.number),
            "display": staff.name.text,
        },
        "organization": {
            "reference": full_url("Organization", ORGANIZATION_CODE_SYSTEM, staff.organization_code)
        },
        "code": [
            {
                "coding": [
                    {"system": _PRACTITIONER_ROLE_SYSTEM, "code": "doctor", "display": "Doctor"}
                ],
                "text": staff.role_text,
            }
        ],
        "specialty": [specialty_concept(staff.specialty)],
        "location": [
            {"reference": full_url("Location", LOCATION_CODE_SYSTEM, staff.location_code)}
        ],
    }
    return [
        demo_entry(practitioner, PRACTITIONER_NUMBER_SYSTEM, staff.number),
        record_entry(role, role_value),
    ]


def directory_bundle(directory: DemoDirectory) -> dict[str, Any]:
    """The transaction Bundle writing the whole network, its staff, the insurer and the
    health commission."""
    entries = directory_entries(directory.records(), meta=demo_meta(), create_only=True)
    entries.append(_insurer_entry())
    entries.append(_commission_entry())
    for clinic in directory.clinics():
        for staff in clinic.staff:
            entries.extend(_staff_entries(staff))
    return transaction_bundle(entries, meta=demo_meta())
