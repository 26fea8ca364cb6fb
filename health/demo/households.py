"""Demo households and their members: Patients, the household Group, each member's Coverage.

A household (户) is a FHIR Group (``type`` person, ``actual`` true) of 2–6 Patients living in
one village, looked after by that village's clinic.

* **户编号** (``HOUSEHOLD_NUMBER_SYSTEM``): 18 digits — the village's 12-digit statistical
  area code (the same digits as its clinic's organisation code, e.g. ``640121105201`` for
  闽宁镇原隆村) followed by a 6-digit household serial within the village:
  ``640121105201000007``.
* **Relationship to the head** is an extension on ``Group.member``
  (``HOUSEHOLD_RELATIONSHIP_URL``, valueCodeableConcept from v3 RoleCode: ONESELF 户主,
  SPS 配偶, CHILD 子女, PRN 父母, GRNDCHILD 孙子女, CHLDINLAW 儿媳/女婿).
* **Registry status**, **poverty causes**, **income per capita** (家庭年人均纯收入, for the
  year before ``as_of``), **township** and **village** are ``Group.characteristic`` entries,
  written by ``integrations.household_registry.household_group`` exactly as a registry import
  writes them. Incomes are drawn by status (registered-poor households near the poverty
  line, ordinary ones well above it); one ordinary household in ten has no income on record,
  as households outside the registry's surveys do. About four in ten registered households
  give illness (因病) as the main cause, as the 2013–2017 registry did; households the
  generator gives a serious illness give it more often.

Every member is covered by 城乡居民基本医疗保险 (a Coverage paid by the directory's insurer),
as nearly every rural resident is.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from health.core.naming import HOUSEHOLD_NUMBER_SYSTEM
from health.demo.bundle import demo_entry, demo_meta, record_entry, record_url
from health.demo.directory import (
    COUNTIES,
    INSURER_CODE,
    INSURER_NAME,
    Clinic,
    DemoDirectory,
    organization_reference,
)
from health.demo.people import PersonName, ResidentIdMaker, random_mobile, random_name
from integrations.directory_csv import full_url
from integrations.household_registry import (
    GroupMember,
    household_characteristics,
    household_group,
)
from records.validation.resident_id import RESIDENT_ID_SYSTEM

# Most resettled households were registered poor and have since exited (2020); some are
# monitored against falling back, the rest never registered.
_STATUS_WEIGHTS = {"registered-poor": 10, "exited": 40, "monitored": 12, "ordinary": 38}

# key -> (v3 RoleCode, English display, Chinese text)
RELATIONSHIPS: dict[str, tuple[str, str, str]] = {
    "head": ("ONESELF", "self", "户主"),
    "spouse": ("SPS", "spouse", "配偶"),
    "child": ("CHILD", "child", "子女"),
    "parent": ("PRN", "parent", "父母"),
    "grandchild": ("GRNDCHILD", "grandchild", "孙子女"),
    "child-in-law": ("CHLDINLAW", "child-in-law", "儿媳/女婿"),
}
# Household size -> weight; the mean (about 3.3) gives ~90 households for 300 people.
_SIZE_WEIGHTS = {2: 35, 3: 30, 4: 18, 5: 10, 6: 7}


@dataclass(slots=True)
class Member:
    key: str  # P00017: the demo's own handle, used in demo record identifiers
    name: PersonName
    gender: str
    birth_date: dt.date
    resident_id: str
    relationship: str  # key of RELATIONSHIPS
    phone: str | None

    def age(self, on: dt.date) -> int:
        years = on.year - self.birth_date.year
        return years - ((on.month, on.day) < (self.birth_date.month, self.birth_date.day))

    @property
    def url(self) -> str:
        return full_url("Patient", RESIDENT_ID_SYSTEM, self.resident_id)


@dataclass(slots=True)
class Household:
    number: str  # 户编号
    village: Clinic
    centre: Clinic
    status: str  # key of health.core.naming.REGISTRY_STATUSES
    address: dict[str, Any]
    members: list[Member] = field(default_factory=list)
    burdened: bool = False  # the generator gives one member a costly serious illness
    income_per_capita: Decimal | None = None  # yuan per person, the year before as_of
    main_cause: str | None = None  # 主要致贫原因 for registered households

    @property
    def rng(self) -> random.Random:
        """A generator of this household's own, so drawing its registry details leaves the
        demo's people and visits as they were."""
        return random.Random(f"household-{self.number}")

    @property
    def head(self) -> Member:
        return self.members[0]


def _birth_date(rng: random.Random, age: int, as_of: dt.date) -> dt.date:
    """A birth date making the person ``age`` years old on ``as_of``."""
    latest = dt.date(as_of.year - age, as_of.month, min(as_of.day, 28))
    return latest - dt.timedelta(days=rng.randrange(365))


def _household_size(rng: random.Random, remaining: int) -> int:
    sizes, weights = zip(*_SIZE_WEIGHTS.items(), strict=True)
    size = min(rng.choices(sizes, weights=weights)[0], remaining)
    if remaining - size == 1:
        # Nobody may be left over to live alone: a household has at least two members.
        size = size + 1 if size < max(sizes) else size - 1
    return size


def _compose(rng: random.Random, size: int) -> list[tuple[str, int, str]]:
    """(relationship, age, gender) for each member, head first, ages that fit together."""
    head_age = rng.randint(26, 74)
    head_gender = "male" if rng.random() < 0.82 else "female"
    other = "female" if head_gender == "male" else "male"
    members = [("head", head_age, head_gender)]
    members.append(("spouse", max(20, head_age + rng.randint(-5, 4)), other))
    slots = size - 2
    # Elderly parents live with younger heads; older heads have grown children and their
    # families instead.
    if slots and head_age <= 50 and rng.random() < 0.5:
        members.append(
            ("parent", min(92, head_age + rng.randint(22, 32)), rng.choice(("male", "female")))
        )
        slots -= 1
    married_son = slots >= 3 and head_age >= 48
    if married_son:
        son_age = head_age - rng.randint(22, 28)
        members.append(("child", son_age, "male"))
        members.append(("child-in-law", son_age + rng.randint(-3, 2), "female"))
        slots -= 2
        for _ in range(slots):
            members.append(
                ("grandchild", rng.randint(0, max(0, son_age - 20)), rng.choice(("male", "female")))
            )
        return members
    for _ in range(slots):
        child_age = max(0, head_age - rng.randint(20, 34))
        members.append(("child", child_age, rng.choice(("male", "female"))))
    return members


def build_households(
    rng: random.Random, directory: DemoDirectory, patients: int, as_of: dt.date
) -> list[Household]:
    """Households holding exactly ``patients`` people, spread over all 56 villages."""
    if patients == 1:
        raise ValueError("a demo household has at least two members: ask for 0 or 2+ patients")
    villages = [(t, v) for t in directory.townships for v in t.villages]
    serials: dict[str, int] = {}
    ids = ResidentIdMaker(rng)
    households: list[Household] = []
    remaining = patients
    person = 0
    while remaining > 0:
        # Every village gets a household before any gets a second.
        township, village = (
            villages[len(households)] if len(households) < len(villages) else rng.choice(villages)
        )
        serials[village.code] = serials.get(village.code, 0) + rng.randint(1, 40)
        statuses, weights = zip(*_STATUS_WEIGHTS.items(), strict=True)
        county = village.county
        # 组 is the villagers' group (村民小组) a resettled family was housed in.
        line = f"{village.township}{village.village}{rng.randint(1, 9)}组{rng.randint(1, 80)}号"
        household = Household(
            number=f"{village.code}{serials[village.code]:06d}",
            village=village,
            centre=township.centre,
            status=rng.choices(statuses, weights=weights)[0],
            address={
                "use": "home",
                "type": "physical",
                "text": f"宁夏回族自治区银川市{county}{line}",
                "line": [line],
                "city": "银川市",
                "district": county,
                "state": "宁夏回族自治区",
                "postalCode": COUNTIES[county][1],
                "country": "CN",
            },
        )
        size = _household_size(rng, remaining)
        family = None
        for relationship, age, gender in _compose(rng, size):
            person += 1
            birth_date = _birth_date(rng, age, as_of)
            # Children take the head's surname (as do the head's father and the son);
            # spouses, mothers and daughters-in-law keep their own.
            inherits = relationship in ("head", "child", "grandchild") or (
                relationship == "parent" and gender == "male"
            )
            name = random_name(rng, gender, family if inherits else None)
            if relationship == "head":
                family = name.family
            household.members.append(
                Member(
                    key=f"P{person:05d}",
                    name=name,
                    gender=gender,
                    birth_date=birth_date,
                    resident_id=ids.make(village.region_code, birth_date, gender),
                    relationship=relationship,
                    phone=random_mobile(rng) if age >= 16 else None,
                )
            )
        households.append(household)
        remaining -= size
    return households


# (low, high) yuan per person per year, by registry status.
_INCOME_RANGES = {
    "registered-poor": (3000, 6500),
    "monitored": (5000, 9500),
    "exited": (7000, 16000),
    "ordinary": (9000, 22000),
}
_CAUSE_WEIGHTS = {
    "因病": 42,
    "因残": 10,
    "因学": 8,
    "缺劳动力": 12,
    "缺技术": 10,
    "缺资金": 10,
    "因灾": 4,
    "其他": 4,
}


def draw_registry_details(household: Household) -> None:
    """Income and main cause of poverty, once the generator knows who is burdened."""
    rng = household.rng
    low, high = _INCOME_RANGES[household.status]
    if household.status != "ordinary" or rng.random() >= 0.1:
        household.income_per_capita = Decimal(rng.randrange(low * 100, high * 100)) / 100
    if household.status != "ordinary":
        if household.burdened and rng.random() < 0.7:
            household.main_cause = "因病"
        else:
            causes, weights = zip(*_CAUSE_WEIGHTS.items(), strict=True)
            household.main_cause = rng.choices(causes, weights=weights)[0]


def coverage_value(seed: int, member: Member) -> str:
    return f"{seed}-{member.key}-coverage-1"


def household_entries(household: Household, seed: int, as_of: dt.date) -> list[dict[str, Any]]:
    """Patients, each one's Coverage, and the household Group."""
    entries: list[dict[str, Any]] = []
    clinic = organization_reference(household.village.code, household.village.name)
    for member in household.members:
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "meta": demo_meta(),
            "identifier": [
                {
                    "use": "official",
                    "type": {"text": "居民身份证号"},
                    "system": RESIDENT_ID_SYSTEM,
                    "value": member.resident_id,
                }
            ],
            "active": True,
            "name": [member.name.as_fhir()],
        }
        if member.phone:
            patient["telecom"] = [{"system": "phone", "value": member.phone, "use": "mobile"}]
        patient["gender"] = member.gender
        patient["birthDate"] = member.birth_date.isoformat()
        patient["address"] = [dict(household.address)]
        patient["managingOrganization"] = dict(clinic)
        entries.append(demo_entry(patient, RESIDENT_ID_SYSTEM, member.resident_id))

        value = coverage_value(seed, member)
        coverage = {
            "resourceType": "Coverage",
            "meta": demo_meta(),
            "status": "active",
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "PUBLICPOL",
                        "display": "public healthcare",
                    }
                ],
                "text": "城乡居民基本医疗保险",
            },
            "subscriberId": member.resident_id,
            "beneficiary": {"reference": member.url, "display": member.name.text},
            "relationship": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                        "code": "self",
                    }
                ]
            },
            "period": {"start": max(member.birth_date, dt.date(as_of.year - 5, 1, 1)).isoformat()},
            "payor": [organization_reference(INSURER_CODE, INSURER_NAME)],
        }
        entries.append(record_entry(coverage, value))

    group = household_group(
        household.number,
        [
            GroupMember(
                member.name.text,
                member.resident_id,
                RELATIONSHIPS[member.relationship][0],
                RELATIONSHIPS[member.relationship][2],
                member.url,
            )
            for member in household.members
        ],
        household_characteristics(
            household.status,
            main_cause=household.main_cause,
            income_per_capita=household.income_per_capita,
            income_year=as_of.year - 1 if household.income_per_capita is not None else None,
            township=household.village.township,
            village=household.village.village,
        ),
        base={"meta": demo_meta(), "managingEntity": dict(clinic)},
    )
    entries.append(demo_entry(group, HOUSEHOLD_NUMBER_SYSTEM, household.number))
    return entries


def coverage_url(seed: int, member: Member) -> str:
    return record_url("Coverage", coverage_value(seed, member))
