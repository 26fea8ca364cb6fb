"""A generated city of households and their medical costs, for the illness-poverty benchmark.

Lean where the demo is rich: each household is its Patients, its Group (with registry status,
income and cause, as the registry import writes them), its members' active diagnoses,
family-doctor contracts and three years of bills as ExplanationOfBenefits — no encounters,
observations or prescriptions. The bills are settled by the demo's own
``health.demo.costs.Settlement`` (the three insurance layers), so the money is as realistic
as the demo's: chronic follow-ups at the village clinic every few months, colds and
township stays, and for about one household in eight a serious illness costing tens of
thousands of yuan a year.

:func:`city_shard` is pure and deterministic per (seed, shard): shard ``k`` always holds the
same households, so a load can be resumed shard by shard. Resources come with their ids
assigned and refer to each other by literal reference, ready for the store's bulk insert.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

from health.core.naming import FAMILY_DOCTOR_CONTRACT
from health.demo.bundle import demo_meta
from health.demo.clinical import DISEASES, ICD10_SYSTEM
from health.demo.costs import Settlement, eob_body
from health.demo.directory import build_directory
from health.demo.households import RELATIONSHIPS
from health.demo.people import ResidentIdMaker, random_name
from integrations.household_registry import GroupMember, household_characteristics, household_group
from records.store import NewResource
from records.validation.resident_id import RESIDENT_ID_SYSTEM

_ADMIN_STATUSES = {"registered-poor": 4, "exited": 44, "monitored": 12, "ordinary": 40}
_INCOME = {
    "registered-poor": (3000, 6500),
    "monitored": (5000, 9500),
    "exited": (7000, 16000),
    "ordinary": (9000, 22000),
}
_SERIOUS_BILLS = {
    # disease -> (setting, low, high, bills per year)
    "stroke": ("hospital-inpatient", 18000, 42000, 1),
    "gastric-cancer": ("hospital-inpatient", 9000, 26000, 4),
    "kidney-failure": ("special-outpatient", 5200, 7400, 12),
}


def household_number(shard: int, index: int) -> str:
    """18 digits, as the registry writes them: 640199 + shard + serial."""
    return f"640199{shard:06d}{index:06d}"


def _yuan(rng: random.Random, low: float, high: float) -> Decimal:
    return Decimal(rng.randrange(int(low * 100), int(high * 100))) / 100


def _instant(day: dt.date, rng: random.Random) -> str:
    return f"{day.isoformat()}T{rng.randint(8, 17):02d}:{rng.choice((0, 15, 30, 45)):02d}:00+08:00"


def city_shard(
    shard: int, households: int, *, as_of: dt.date, seed: int = 2026
) -> list[NewResource]:
    """``households`` households of shard ``shard``, every resource of them."""
    from health.core.ids import new_resource_id

    rng = random.Random(f"city-{seed}-{shard}")
    directory = build_directory()
    villages = [v for t in directory.townships for v in t.villages]
    ids = ResidentIdMaker(random.Random(f"city-ids-{seed}-{shard}"))
    window_start = as_of - dt.timedelta(days=3 * 365)
    out: list[NewResource] = []
    for index in range(households):
        village = villages[(shard * 7 + index) % len(villages)]
        statuses, weights = zip(*_ADMIN_STATUSES.items(), strict=True)
        status = rng.choices(statuses, weights=weights)[0]
        size = rng.choices((1, 2, 3, 4, 5, 6), weights=(6, 30, 28, 18, 11, 7))[0]
        head_age = rng.randint(26, 78)
        members: list[tuple[str, str, dt.date, Any, str]] = []  # id, gender, born, name, rel
        family = None
        for position in range(size):
            relationship = ("head", "spouse")[position] if position < 2 else "child"
            if relationship == "head":
                gender = "male" if rng.random() < 0.82 else "female"
                age = head_age
            elif relationship == "spouse":
                gender = "female" if members[0][1] == "male" else "male"
                age = max(20, head_age + rng.randint(-5, 4))
            else:
                gender = rng.choice(("male", "female"))
                age = max(0, head_age - rng.randint(20, 34))
            born = as_of - dt.timedelta(days=age * 365 + rng.randrange(1, 365))
            name = random_name(rng, gender, family if relationship != "spouse" else None)
            family = family or name.family
            members.append((new_resource_id(), gender, born, name, relationship))
        resident_ids = [
            ids.make(village.region_code, born, gender) for _, gender, born, _, _ in members
        ]
        for (patient_id, gender, born, name, _), resident_id in zip(
            members, resident_ids, strict=True
        ):
            out.append(
                NewResource(
                    "Patient",
                    patient_id,
                    {
                        "resourceType": "Patient",
                        "meta": demo_meta(),
                        "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": resident_id}],
                        "name": [name.as_fhir()],
                        "gender": gender,
                        "birthDate": born.isoformat(),
                    },
                )
            )
        low, high = _INCOME[status]
        income = None if status == "ordinary" and rng.random() < 0.1 else _yuan(rng, low, high)
        burdened = rng.random() < {"monitored": 0.25}.get(status, 0.11)
        cause = None
        if status != "ordinary":
            cause = (
                "因病"
                if burdened or rng.random() < 0.35
                else rng.choice(("因残", "因学", "缺劳动力", "缺技术", "缺资金"))
            )
        group_id = new_resource_id()
        out.append(
            NewResource(
                "Group",
                group_id,
                household_group(
                    household_number(shard, index),
                    [
                        GroupMember(
                            name.text,
                            resident_id,
                            RELATIONSHIPS[relationship][0],
                            RELATIONSHIPS[relationship][2],
                            f"Patient/{patient_id}",
                        )
                        for (patient_id, _, _, name, relationship), resident_id in zip(
                            members, resident_ids, strict=True
                        )
                    ],
                    household_characteristics(
                        status,
                        main_cause=cause,
                        income_per_capita=income,
                        income_year=as_of.year - 1 if income is not None else None,
                        township=village.township,
                        village=village.village,
                    ),
                    base={"meta": demo_meta()},
                ),
            )
        )
        serious_member = rng.randrange(size) if burdened else None
        for position, (patient_id, _, born, _, _) in enumerate(members):
            age = (as_of - born).days // 365
            subject = {"reference": f"Patient/{patient_id}"}
            diseases = [
                d
                for d, (from_age, chance) in (("hypertension", (35, 0.3)), ("diabetes", (35, 0.1)))
                if age >= from_age and rng.random() < chance
            ]
            if position == serious_member:
                diseases.append(rng.choices(list(_SERIOUS_BILLS), weights=(5, 3, 2))[0])
            for disease in diseases:
                out.append(
                    NewResource(
                        "Condition",
                        new_resource_id(),
                        {
                            "resourceType": "Condition",
                            "meta": demo_meta(),
                            "clinicalStatus": {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": "active",
                                    }
                                ]
                            },
                            "code": {
                                "coding": [
                                    {
                                        "system": ICD10_SYSTEM,
                                        "code": DISEASES[disease].icd10,
                                        "display": DISEASES[disease].display,
                                    }
                                ],
                                "text": DISEASES[disease].text,
                            },
                            "subject": subject,
                        },
                    )
                )
            chronic = [d for d in diseases if d in ("hypertension", "diabetes")]
            odds = 0.85 if status != "ordinary" else 0.5
            if chronic and rng.random() < odds:
                out.append(
                    NewResource(
                        "EpisodeOfCare",
                        new_resource_id(),
                        {
                            "resourceType": "EpisodeOfCare",
                            "meta": demo_meta(),
                            "status": "active",
                            "type": [{"coding": [dict(FAMILY_DOCTOR_CONTRACT)]}],
                            "patient": subject,
                            "period": {
                                "start": f"{as_of.year}-01-01",
                                "end": f"{as_of.year}-12-31",
                            },
                        },
                    )
                )
            bills: list[tuple[dt.date, str, Decimal]] = []
            for _ in range(rng.choices((0, 1, 2, 3, 4), weights=(20, 30, 25, 15, 10))[0]):
                day = window_start + dt.timedelta(days=rng.randrange(3 * 365))
                bills.append((day, "village-outpatient", _yuan(rng, 12, 95)))
            for _ in chronic:
                day = window_start + dt.timedelta(days=rng.randrange(120))
                while day <= as_of:
                    bills.append((day, "village-outpatient", _yuan(rng, 18, 95)))
                    day += dt.timedelta(days=rng.randint(100, 160))
            if rng.random() < 0.06:
                day = window_start + dt.timedelta(days=rng.randrange(3 * 365))
                bills.append((day, "township-inpatient", _yuan(rng, 2200, 5200)))
            if position == serious_member:
                setting, low_amount, high_amount, per_year = _SERIOUS_BILLS[diseases[-1]]
                onset = window_start + dt.timedelta(days=rng.randrange(2 * 365))
                bills.append((onset, "hospital-inpatient", _yuan(rng, 20000, 60000)))
                day = onset + dt.timedelta(days=30)
                while day <= as_of:
                    bills.append((day, setting, _yuan(rng, low_amount, high_amount)))
                    day += dt.timedelta(days=365 // per_year)
            settlement = Settlement(status)
            for day, setting, amount in sorted(bills):
                bill = settlement.settle(rng, setting, amount, day)
                body = eob_body(bill, encounter_url="", inpatient="inpatient" in setting)
                for item in body["item"]:
                    item.pop("encounter", None)
                created = _instant(day, rng)
                out.append(
                    NewResource(
                        "ExplanationOfBenefit",
                        new_resource_id(),
                        {
                            "resourceType": "ExplanationOfBenefit",
                            "meta": demo_meta(),
                            "status": "active",
                            "use": "claim",
                            "patient": subject,
                            "billablePeriod": {"start": created, "end": created},
                            "created": created,
                            "insurer": {"display": "宁夏城乡居民医保"},
                            "provider": {
                                "display": village.name
                                if setting.startswith("village")
                                else "银川市第一人民医院"
                            },
                            "outcome": "complete",
                            "insurance": [
                                {"focal": True, "coverage": {"display": "城乡居民基本医疗保险"}}
                            ],
                            **body,
                        },
                    )
                )
    return out
