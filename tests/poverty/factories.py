"""Households, bills, diagnoses and contracts for tests, written through the real import path.

A :class:`Town` collects people and households and writes them as one transaction Bundle
(``records.importer.process_bundle``: validation, indexing, reference resolution), exactly as
a clinic's upload would arrive. Resident identity numbers are real GB 11643 numbers of region
110101, which the demo data never uses, so they collide with nothing else in a shared test
database.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from health.core.database import Database
from health.core.naming import FAMILY_DOCTOR_CONTRACT, PAYMENT_LAYER_SYSTEM, PAYMENT_LAYERS
from integrations.household_registry import GroupMember, household_characteristics, household_group
from records.importer import process_bundle
from records.indexing import SearchIndexer
from records.store import Change
from records.validation.resident_id import RESIDENT_ID_SYSTEM, make_resident_id

ADJUDICATION = "http://terminology.hl7.org/CodeSystem/adjudication"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
_serials = itertools.count(1)


def new_resident_id(gender: str = "male", born: dt.date | None = None) -> str:
    serial = next(_serials) + uuid.uuid4().int % 500_000
    born = born or dt.date(1950, 1, 1) + dt.timedelta(days=serial % 18_000)
    return make_resident_id("110101", born, serial % 1000, gender)


def money(amount: str | Decimal) -> dict[str, Any]:
    return {"value": float(Decimal(amount)), "currency": "CNY"}


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


@dataclass
class Person:
    name: str
    relationship: str = "户主"
    code: str = "ONESELF"
    gender: str = "male"
    resident_id: str = field(default_factory=new_resident_id)
    url: str = field(default_factory=urn)
    id: str | None = None  # known once written

    @property
    def reference(self) -> str:
        assert self.id, "write the town first"
        return f"Patient/{self.id}"


@dataclass
class House:
    number: str
    members: list[Person]
    status: str = "ordinary"
    income: Decimal | None = None
    url: str = field(default_factory=urn)
    id: str | None = None


class Town:
    """Resources waiting to be written, and the ids they got."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.houses: list[House] = []

    @staticmethod
    def _ref(person: Person) -> dict[str, str]:
        """The person's Patient once written, else their entry in this bundle."""
        return {"reference": person.reference if person.id else person.url}

    def household(
        self,
        number: str,
        names: list[str],
        *,
        status: str = "ordinary",
        income: str | None = "20000",
        township: str = "闽宁镇",
        village: str = "原隆村",
    ) -> House:
        people = [Person(names[0])]
        for name in names[1:]:
            people.append(
                Person(
                    name,
                    "配偶" if len(people) == 1 else "之子",
                    "SPS" if len(people) == 1 else "SON",
                )
            )
        house = House(number, people, status, None if income is None else Decimal(income))
        self.houses.append(house)
        for person in people:
            born = dt.date(1960, 1, 1) + dt.timedelta(days=next(_serials) % 9000)
            person.resident_id = new_resident_id(person.gender, born)
            self.entries.append(
                {
                    "fullUrl": person.url,
                    "resource": {
                        "resourceType": "Patient",
                        "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": person.resident_id}],
                        "name": [{"text": person.name}],
                        "gender": person.gender,
                        "birthDate": born.isoformat(),
                    },
                    "request": {"method": "POST", "url": "Patient"},
                }
            )
        group = household_group(
            number,
            [GroupMember(p.name, p.resident_id, p.code, p.relationship, p.url) for p in people],
            household_characteristics(
                status,
                income_per_capita=house.income,
                income_year=2025 if house.income is not None else None,
                township=township,
                village=village,
            ),
        )
        self.entries.append(
            {"fullUrl": house.url, "resource": group, "request": {"method": "POST", "url": "Group"}}
        )
        return house

    def eob(self, person: Person, on: str, **settled: Any) -> str:
        """An ExplanationOfBenefit of ``person`` settled on ``on`` (see :func:`eob_resource`)."""
        url = urn()
        self.entries.append(
            {
                "fullUrl": url,
                "resource": eob_resource(self._ref(person), on, **settled),
                "request": {"method": "POST", "url": "ExplanationOfBenefit"},
            }
        )
        return url

    def claim(self, person: Person, on: str, total: str) -> str:
        url = urn()
        self.entries.append(
            {
                "fullUrl": url,
                "resource": {
                    "resourceType": "Claim",
                    "status": "active",
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/claim-type",
                                "code": "professional",
                            }
                        ]
                    },
                    "use": "claim",
                    "patient": self._ref(person),
                    "created": f"{on}T09:00:00+08:00",
                    "provider": {"display": "闽宁镇卫生院"},
                    "priority": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/processpriority",
                                "code": "normal",
                            }
                        ]
                    },
                    "insurance": [
                        {
                            "sequence": 1,
                            "focal": True,
                            "coverage": {"display": "城乡居民基本医疗保险"},
                        }
                    ],
                    "total": money(total),
                },
                "request": {"method": "POST", "url": "Claim"},
            }
        )
        return url

    def invoice(self, person: Person, on: str, *, gross: str, basic: str, net: str) -> str:
        url = urn()
        self.entries.append(
            {
                "fullUrl": url,
                "resource": {
                    "resourceType": "Invoice",
                    "status": "issued",
                    "subject": self._ref(person),
                    "date": f"{on}T12:00:00+08:00",
                    "issuer": {"display": "原隆村卫生室"},
                    "totalPriceComponent": [
                        {
                            "type": "deduction",
                            "code": {
                                "coding": [
                                    {
                                        "system": PAYMENT_LAYER_SYSTEM,
                                        "code": "basic-medical-insurance",
                                    }
                                ]
                            },
                            "amount": money(basic),
                        }
                    ],
                    "totalGross": money(gross),
                    "totalNet": money(net),
                },
                "request": {"method": "POST", "url": "Invoice"},
            }
        )
        return url

    def condition(self, person: Person, code: str, *, status: str = "active") -> str:
        url = urn()
        self.entries.append(
            {
                "fullUrl": url,
                "resource": {
                    "resourceType": "Condition",
                    "clinicalStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                "code": status,
                            }
                        ]
                    },
                    "verificationStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                "code": "confirmed",
                            }
                        ]
                    },
                    "code": {
                        "coding": [{"system": ICD10, "code": code, "display": f"诊断 {code}"}]
                    },
                    "subject": self._ref(person),
                },
                "request": {"method": "POST", "url": "Condition"},
            }
        )
        return url

    def contract(self, person: Person, start: str, end: str) -> str:
        url = urn()
        self.entries.append(
            {
                "fullUrl": url,
                "resource": {
                    "resourceType": "EpisodeOfCare",
                    "status": "active",
                    "type": [{"coding": [dict(FAMILY_DOCTOR_CONTRACT)]}],
                    "patient": self._ref(person),
                    "period": {"start": start, "end": end},
                },
                "request": {"method": "POST", "url": "EpisodeOfCare"},
            }
        )
        return url

    async def write(self, database: Database, indexer: SearchIndexer) -> list[Change]:
        """Write everything added since the last write, as one transaction; learn the ids."""
        entries, self.entries = self.entries, []
        outcome = await process_bundle(
            database, indexer, {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        )
        ids = {
            entry["fullUrl"]: entry_response["response"]["location"].split("/")[1]
            for entry, entry_response in zip(entries, outcome.response["entry"], strict=True)
        }
        for house in self.houses:
            house.id = house.id or ids.get(house.url)
            for person in house.members:
                person.id = person.id or ids.get(person.url)
        return list(outcome.written)


def eob_resource(
    patient: dict[str, Any],
    on: str,
    *,
    billed: str,
    basic: str = "0",
    serious: str = "0",
    assistance: str = "0",
    out_of_pocket: str | None = None,
    provider: str = "银川市第一人民医院",
    layers: bool = True,
    status: str = "active",
    claim: str | None = None,
) -> dict[str, Any]:
    """An ExplanationOfBenefit of ``patient`` (a reference) settled on ``on``; ``layers``
    False gives only the standard submitted and benefit totals, as any FHIR source would
    send."""
    paid = Decimal(basic) + Decimal(serious) + Decimal(assistance)
    oop = Decimal(out_of_pocket) if out_of_pocket is not None else Decimal(billed) - paid
    total = [
        {
            "category": {"coding": [{"system": ADJUDICATION, "code": "submitted"}]},
            "amount": money(billed),
        },
        {
            "category": {"coding": [{"system": ADJUDICATION, "code": "benefit"}]},
            "amount": money(paid),
        },
    ]
    if layers:
        amounts: tuple[str | Decimal, ...] = (basic, serious, assistance, oop)
        for code, amount in zip(PAYMENT_LAYERS, amounts, strict=True):
            total.append(
                {
                    "category": {"coding": [{"system": PAYMENT_LAYER_SYSTEM, "code": code}]},
                    "amount": money(amount),
                }
            )
    resource: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit",
        "status": status,
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/claim-type",
                    "code": "institutional",
                }
            ]
        },
        "use": "claim",
        "patient": patient,
        "created": f"{on}T10:00:00+08:00",
        "insurer": {"display": "宁夏城乡居民医保"},
        "provider": {"display": provider},
        "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"display": "城乡居民基本医疗保险"}}],
        "total": total,
    }
    if claim:
        resource["claim"] = {"reference": claim}
    return resource
