"""Three years of made-up care for each demo patient, as FHIR entries.

For each patient this decides their illnesses (by age, and a serious one for members of
"burdened" households), then their visits over the three years before ``as_of``:

* chronic disease follow-up (hypertension, diabetes, COPD) at the village clinic every few
  months, with blood pressure, heart rate, glucose and weight, and a prescription per
  condition; now and then a visit to the city hospital's department for it;
* colds and gastritis at the village clinic, pneumonia as a stay at the township centre
  (or the city hospital's children's ward for small children);
* knee arthritis at the township centre and the city hospital's orthopaedics;
* the serious, costly illnesses — stroke (a 2–3 week stay, then follow-up), gastric cancer
  (surgery, then chemotherapy stays), end-stage kidney disease (monthly dialysis bills) —
  at the city hospitals. They are what pushes a household's out-of-pocket spending into the
  tens of thousands of yuan.

Chronic patients (hypertension, diabetes, COPD, after a stroke) have a family-doctor contract
(家庭医生签约服务, an EpisodeOfCare of type ``family-doctor-contract`` for the calendar year of
``as_of``, with the village doctor as care manager) — nine in ten of those in registered and
monitored households, whom the 2018 plan set out to sign up, half of the others.

Each visit becomes an Encounter (class AMB, or IMP for a stay), its Observations and
MedicationRequests, and an ExplanationOfBenefit settled by ``health.demo.costs``. Conditions
use ICD-10 with Chinese display; observations LOINC with UCUM units. Blood glucose is LOINC
15074-8 (moles/volume, mmol/L), the unit Chinese clinics report it in — 2339-0 is the
mass/volume code for mg/dL.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from health.core.naming import FAMILY_DOCTOR_CONTRACT
from health.demo.bundle import demo_meta, record_entry, record_url
from health.demo.costs import SETTINGS, Settlement, eob_body
from health.demo.directory import (
    INSURER_CODE,
    INSURER_NAME,
    Clinic,
    DemoDirectory,
    Staff,
    location_reference,
    organization_reference,
    specialty_concept,
    staff_reference,
)
from health.demo.households import Household, Member, coverage_url

ICD10_SYSTEM = "http://hl7.org/fhir/sid/icd-10"
LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_TZ = dt.timezone(dt.timedelta(hours=8))  # China Standard Time


@dataclass(frozen=True, slots=True)
class Disease:
    icd10: str
    display: str  # the ICD-10 title in Chinese
    text: str  # what a doctor writes
    specialty: str  # the city hospital department that treats it
    chronic: bool
    medicines: tuple[tuple[str, str], ...]  # (medicine, dosage)


DISEASES: dict[str, Disease] = {
    "hypertension": Disease(
        "I10",
        "特发性（原发性）高血压",
        "高血压",
        "cardiology",
        True,
        (
            ("苯磺酸氨氯地平片 5mg", "口服，每日1次，每次1片"),
            ("硝苯地平缓释片 20mg", "口服，每日2次，每次1片"),
            ("卡托普利片 25mg", "口服，每日3次，每次1片"),
        ),
    ),
    "diabetes": Disease(
        "E11.9",
        "2型糖尿病，不伴有并发症",
        "2型糖尿病",
        "endocrinology",
        True,
        (
            ("盐酸二甲双胍片 0.5g", "口服，每日3次，每次1片，餐中服"),
            ("格列齐特缓释片 30mg", "口服，每日1次，早餐前"),
        ),
    ),
    "copd": Disease(
        "J44.9",
        "慢性阻塞性肺病",
        "慢阻肺",
        "respiratory",
        True,
        (("噻托溴铵粉吸入剂 18μg", "吸入，每日1次"), ("沙丁胺醇气雾剂 100μg", "吸入，气促时1–2揿")),
    ),
    "knee-arthritis": Disease(
        "M17.9",
        "膝关节病",
        "膝关节炎",
        "orthopaedics",
        True,
        (
            ("塞来昔布胶囊 200mg", "口服，每日1次，疼痛时"),
            ("盐酸氨基葡萄糖胶囊 0.75g", "口服，每日2次"),
        ),
    ),
    "gastritis": Disease(
        "K29.7",
        "胃炎",
        "胃炎",
        "gastroenterology",
        False,
        (("奥美拉唑肠溶胶囊 20mg", "口服，每日2次，餐前"),),
    ),
    "cold": Disease(
        "J06.9",
        "急性上呼吸道感染",
        "感冒（上呼吸道感染）",
        "respiratory",
        False,
        (("连花清瘟胶囊 0.35g", "口服，每日3次，每次4粒"), ("布洛芬缓释胶囊 0.3g", "口服，发热时")),
    ),
    "pneumonia": Disease(
        "J18.9",
        "肺炎",
        "肺炎",
        "respiratory",
        False,
        (("注射用头孢曲松钠 2g", "静脉滴注，每日1次"),),
    ),
    "stroke": Disease(
        "I63.9",
        "脑梗死",
        "脑梗死",
        "neurology",
        True,
        (("阿司匹林肠溶片 100mg", "口服，每日1次"), ("阿托伐他汀钙片 20mg", "口服，每晚1次")),
    ),
    "gastric-cancer": Disease(
        "C16.9",
        "胃恶性肿瘤",
        "胃癌",
        "oncology",
        True,
        (
            ("替吉奥胶囊 20mg", "口服，每日2次，服14天停7天"),
            ("注射用奥沙利铂 100mg", "静脉滴注，每3周1次"),
        ),
    ),
    "kidney-failure": Disease(
        "N18.5",
        "慢性肾脏病，5期",
        "慢性肾病5期（尿毒症）",
        "nephrology",
        True,
        (
            ("重组人促红素注射液 3000IU", "皮下注射，每周2次"),
            ("碳酸钙片 0.75g", "口服，每日3次，餐中"),
        ),
    ),
}
SERIOUS = ("stroke", "gastric-cancer", "kidney-failure")


@dataclass(slots=True)
class Illness:
    """One Condition of one patient: a lasting disease, or one episode of an acute one."""

    value: str  # demo record identifier value
    disease: str
    onset: dt.date
    medicine: tuple[str, str]
    resolved: dt.date | None = None
    encounter: str | None = None  # demo record value of the diagnosing encounter, if in range


@dataclass(slots=True)
class Visit:
    start: dt.datetime
    days: int  # 0 for an outpatient visit; nights for a stay
    setting: str  # key of costs.SETTINGS
    clinic: Clinic  # where: village clinic, township centre, or hospital department
    provider: tuple[str, str]  # (code, name) of the organisation that bills
    staff: Staff
    illnesses: list[Illness]
    amount: Decimal
    title: str  # Encounter.type text
    value: str  # demo record identifier value of the Encounter
    vitals: bool = True
    glucose: bool = False
    prescribe: bool = True


def _at(rng: random.Random, day: dt.date) -> dt.datetime:
    return dt.datetime(
        day.year, day.month, day.day, rng.randint(8, 16), rng.choice((0, 15, 30, 45)), tzinfo=_TZ
    )


def _fhir_time(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _yuan(rng: random.Random, low: float, high: float) -> Decimal:
    return Decimal(str(round(rng.uniform(low, high), 2)))


class PatientHistory:
    """Builds one patient's illnesses, visits and entries."""

    def __init__(
        self,
        rng: random.Random,
        directory: DemoDirectory,
        household: Household,
        member: Member,
        seed: int,
        as_of: dt.date,
        serious: str | None,
    ) -> None:
        self.rng = rng
        self.directory = directory
        self.household = household
        self.member = member
        self.seed = seed
        self.as_of = as_of
        self.window_start = as_of - dt.timedelta(days=3 * 365)
        self.serious = serious
        self.illnesses: list[Illness] = []
        self.visits: list[Visit] = []
        self.counters: dict[str, int] = {}
        self.weight = self._base_weight()

    # -- identifiers ------------------------------------------------------------------

    def _value(self, kind: str) -> str:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        return f"{self.seed}-{self.member.key}-{kind}-{self.counters[kind]:03d}"

    # -- places and people ------------------------------------------------------------

    def _village(self) -> tuple[Clinic, tuple[str, str]]:
        village = self.household.village
        return village, (village.code, village.name)

    def _centre(self) -> tuple[Clinic, tuple[str, str]]:
        centre = self.household.centre
        return centre, (centre.code, centre.name)

    def _department(self, specialty: str) -> tuple[Clinic, tuple[str, str]]:
        department = self.rng.choice(self.directory.departments_for(specialty))
        hospital = self.directory.hospital_of(department).record
        return department, (hospital.code, hospital.name)

    def _random_day(self, start: dt.date | None = None, end: dt.date | None = None) -> dt.date:
        start = max(start or self.window_start, self.window_start)
        end = min(end or self.as_of, self.as_of)
        return start + dt.timedelta(days=self.rng.randrange(max(1, (end - start).days)))

    def _age(self, on: dt.date | None = None) -> int:
        return self.member.age(on or self.as_of)

    def _base_weight(self) -> float:
        age = self._age()
        if age < 12:
            return 3.5 + age * 2.6 + self.rng.uniform(-1.5, 1.5)
        if age < 18:
            return 32 + (age - 12) * 4.2 + self.rng.uniform(-3, 3)
        return (
            self.rng.uniform(52, 82) if self.member.gender == "male" else self.rng.uniform(45, 72)
        )

    # -- illnesses --------------------------------------------------------------------

    def _illness(self, disease: str, onset: dt.date, resolved: dt.date | None = None) -> Illness:
        medicine = self.rng.choice(DISEASES[disease].medicines)
        illness = Illness(self._value("cond"), disease, onset, medicine, resolved)
        self.illnesses.append(illness)
        return illness

    def _chronic_onset(self, age_from: int) -> dt.date:
        """Most chronic disease began years before the window; some during it."""
        born = self.member.birth_date
        earliest = dt.date(born.year + age_from, born.month, min(born.day, 28))
        if self.rng.random() < 0.75:
            span = max(1, (self.window_start - earliest).days)
            return max(earliest, self.window_start - dt.timedelta(days=self.rng.randrange(span)))
        return self._random_day(earliest)

    def plan(self) -> None:
        age = self._age()
        chronic: list[Illness] = []
        odds = {
            "hypertension": (35, min(0.55, 0.10 + (age - 35) * 0.009)),
            "diabetes": (35, min(0.22, 0.04 + (age - 35) * 0.004)),
            "copd": (45, min(0.18, 0.03 + (age - 45) * 0.004)),
            "knee-arthritis": (45, min(0.30, 0.05 + (age - 45) * 0.006)),
        }
        for disease, (from_age, chance) in odds.items():
            if age >= from_age and self.rng.random() < chance:
                chronic.append(self._illness(disease, self._chronic_onset(from_age)))
        managed = [i for i in chronic if i.disease in ("hypertension", "diabetes", "copd")]
        if managed:
            self._follow_ups(managed)
        for illness in chronic:
            if self.rng.random() < (0.5 if illness.disease == "knee-arthritis" else 0.3):
                self._hospital_outpatient(illness)
        if any(i.disease == "knee-arthritis" for i in chronic):
            knee = next(i for i in chronic if i.disease == "knee-arthritis")
            for _ in range(self.rng.randint(1, 2)):
                self._township_outpatient([knee])
        self._acute_episodes(age)
        if self.serious:
            self._serious_illness(self.serious)
        self.visits.sort(key=lambda visit: visit.start)
        # A Condition diagnosed within the window points at the first visit that dealt with
        # it; one that began before the window (most chronic disease) at none.
        for visit in self.visits:
            for illness in visit.illnesses:
                if illness.encounter is None and illness.onset >= self.window_start:
                    illness.encounter = visit.value

    # -- visits -----------------------------------------------------------------------

    def _visit(
        self,
        day: dt.date,
        place: tuple[Clinic, tuple[str, str]],
        *,
        days: int,
        setting: str,
        illnesses: list[Illness],
        amount: Decimal,
        title: str,
        vitals: bool = True,
        glucose: bool = False,
        prescribe: bool = True,
    ) -> None:
        clinic, provider = place
        self.visits.append(
            Visit(
                start=_at(self.rng, day),
                days=days,
                setting=setting,
                clinic=clinic,
                provider=provider,
                staff=self.rng.choice(clinic.staff),
                illnesses=illnesses,
                amount=amount,
                title=title,
                value=self._value("enc"),
                vitals=vitals,
                glucose=glucose,
                prescribe=prescribe,
            )
        )

    def _follow_ups(self, managed: list[Illness]) -> None:
        start = max(min(i.onset for i in managed), self.window_start)
        day = start + dt.timedelta(days=self.rng.randrange(60))
        while day < self.as_of:
            current = [i for i in managed if i.onset <= day]
            self._visit(
                day,
                self._village(),
                days=0,
                setting="village-outpatient",
                illnesses=current,
                amount=_yuan(self.rng, 18, 95),
                title="慢病随访",
                glucose=any(i.disease == "diabetes" for i in current),
            )
            day += dt.timedelta(days=self.rng.randint(75, 140))

    def _hospital_outpatient(self, illness: Illness) -> None:
        day = self._random_day(illness.onset)
        self._visit(
            day,
            self._department(DISEASES[illness.disease].specialty),
            days=0,
            setting="hospital-outpatient",
            illnesses=[illness],
            amount=_yuan(self.rng, 180, 900),
            title="专科门诊",
            glucose=illness.disease == "diabetes",
        )

    def _township_outpatient(self, illnesses: list[Illness]) -> None:
        day = self._random_day(min(i.onset for i in illnesses))
        self._visit(
            day,
            self._centre(),
            days=0,
            setting="township-outpatient",
            illnesses=illnesses,
            amount=_yuan(self.rng, 45, 280),
            title="门诊",
        )

    def _acute_episodes(self, age: int) -> None:
        # Small children catch more colds than adults.
        weights = (3, 4, 3, 2) if age < 12 else (5, 4, 2, 1)
        colds = self.rng.choices((0, 1, 2, 3), weights=weights)[0]
        for _ in range(colds):
            day = self._random_day()
            illness = self._illness("cold", day, day + dt.timedelta(days=self.rng.randint(4, 10)))
            self._visit(
                day,
                self._village(),
                days=0,
                setting="village-outpatient",
                illnesses=[illness],
                amount=_yuan(self.rng, 12, 60),
                title="门诊",
                vitals=age >= 14,
            )
        if age >= 16 and self.rng.random() < 0.25:
            day = self._random_day()
            illness = self._illness(
                "gastritis", day, day + dt.timedelta(days=self.rng.randint(14, 40))
            )
            self._visit(
                day,
                self._village(),
                days=0,
                setting="village-outpatient",
                illnesses=[illness],
                amount=_yuan(self.rng, 25, 90),
                title="门诊",
            )
        if self.rng.random() < (0.15 if age < 6 or age >= 65 else 0.03):
            day = self._random_day()
            stay = self.rng.randint(5, 9)
            illness = self._illness("pneumonia", day, day + dt.timedelta(days=stay + 7))
            if age < 6 and self.rng.random() < 0.5:
                place, setting, amount = (
                    self._department("paediatrics"),
                    "hospital-inpatient",
                    _yuan(self.rng, 4000, 9000),
                )
            else:
                place, setting, amount = (
                    self._centre(),
                    "township-inpatient",
                    _yuan(self.rng, 2200, 5200),
                )
            self._visit(
                day,
                place,
                days=stay,
                setting=setting,
                illnesses=[illness],
                amount=amount,
                title="住院",
            )

    def _serious_illness(self, disease: str) -> None:
        # Onset early enough in the window that the three years show its cost.
        onset = self._random_day(
            self.window_start + dt.timedelta(days=60), self.as_of - dt.timedelta(days=400)
        )
        illness = self._illness(disease, onset)
        department = self._department(DISEASES[disease].specialty)
        if disease == "stroke":
            self._visit(
                onset,
                department,
                days=self.rng.randint(12, 21),
                setting="hospital-inpatient",
                illnesses=[illness],
                amount=_yuan(self.rng, 26000, 58000),
                title="住院",
            )
            day = onset + dt.timedelta(days=40)
            while day < self.as_of:
                self._visit(
                    day,
                    self._village(),
                    days=0,
                    setting="village-outpatient",
                    illnesses=[illness],
                    amount=_yuan(self.rng, 60, 180),
                    title="慢病随访",
                )
                day += dt.timedelta(days=self.rng.randint(50, 90))
            if self.rng.random() < 0.5:
                day = self._random_day(onset + dt.timedelta(days=180))
                self._visit(
                    day,
                    department,
                    days=self.rng.randint(10, 16),
                    setting="hospital-inpatient",
                    illnesses=[illness],
                    amount=_yuan(self.rng, 18000, 36000),
                    title="住院",
                )
        elif disease == "gastric-cancer":
            self._visit(
                onset,
                department,
                days=self.rng.randint(16, 26),
                setting="hospital-surgery",
                illnesses=[illness],
                amount=_yuan(self.rng, 55000, 92000),
                title="住院（手术）",
            )
            day = onset + dt.timedelta(days=35)
            for _ in range(self.rng.randint(4, 6)):
                if day >= self.as_of:
                    break
                self._visit(
                    day,
                    department,
                    days=self.rng.randint(4, 7),
                    setting="hospital-inpatient",
                    illnesses=[illness],
                    amount=_yuan(self.rng, 9000, 16000),
                    title="住院（化疗）",
                )
                day += dt.timedelta(days=self.rng.randint(21, 30))
        else:  # kidney failure: haemodialysis three times a week, billed once a month
            self._visit(
                onset,
                department,
                days=self.rng.randint(10, 15),
                setting="hospital-inpatient",
                illnesses=[illness],
                amount=_yuan(self.rng, 20000, 32000),
                title="住院（透析置管）",
            )
            day = onset + dt.timedelta(days=30)
            while day < self.as_of:
                self._visit(
                    day,
                    department,
                    days=0,
                    setting="special-outpatient",
                    illnesses=[illness],
                    amount=_yuan(self.rng, 5200, 7400),
                    title="门诊特殊病（血液透析）",
                    prescribe=day.month % 3 == 0,
                )
                day += dt.timedelta(days=30)

    # -- entries ----------------------------------------------------------------------

    def entries(self, settlement: Settlement) -> list[dict[str, Any]]:
        entries = [self._condition_entry(illness) for illness in self.illnesses]
        for visit in self.visits:
            entries.extend(self._visit_entries(visit, settlement))
        return entries

    def _subject(self) -> dict[str, str]:
        return {"reference": self.member.url, "display": self.member.name.text}

    def _condition_entry(self, illness: Illness) -> dict[str, Any]:
        disease = DISEASES[illness.disease]
        status = "resolved" if illness.resolved and illness.resolved <= self.as_of else "active"
        condition: dict[str, Any] = {
            "resourceType": "Condition",
            "meta": demo_meta(),
            "clinicalStatus": {"coding": [{"system": _CONDITION_CLINICAL, "code": status}]},
            "verificationStatus": {
                "coding": [{"system": _CONDITION_VERIFICATION, "code": "confirmed"}]
            },
            "category": [
                {
                    "coding": [
                        {
                            "system": _CONDITION_CATEGORY,
                            "code": "problem-list-item"
                            if disease.chronic
                            else "encounter-diagnosis",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [
                    {"system": ICD10_SYSTEM, "code": disease.icd10, "display": disease.display}
                ],
                "text": disease.text,
            },
            "subject": self._subject(),
        }
        if illness.encounter:
            condition["encounter"] = {"reference": record_url("Encounter", illness.encounter)}
        condition["onsetDateTime"] = illness.onset.isoformat()
        if status == "resolved" and illness.resolved:
            condition["abatementDateTime"] = illness.resolved.isoformat()
        condition["recordedDate"] = max(illness.onset, self.window_start).isoformat()
        return record_entry(condition, illness.value)

    def _visit_entries(self, visit: Visit, settlement: Settlement) -> list[dict[str, Any]]:
        setting = SETTINGS[visit.setting]
        value = visit.value
        encounter_url = record_url("Encounter", value)
        end = visit.start + (
            dt.timedelta(days=visit.days, hours=self.rng.randint(-2, 2))
            if visit.days
            else dt.timedelta(minutes=self.rng.choice((15, 20, 30, 45)))
        )
        period = {"start": _fhir_time(visit.start), "end": _fhir_time(end)}
        staff = staff_reference(visit.staff)
        provider = organization_reference(*visit.provider)
        inpatient = setting.inpatient
        encounter: dict[str, Any] = {
            "resourceType": "Encounter",
            "meta": demo_meta(),
            "status": "finished",
            "class": {
                "system": _ACT_CODE,
                "code": "IMP" if inpatient else "AMB",
                "display": "inpatient encounter" if inpatient else "ambulatory",
            },
            "type": [{"text": visit.title}],
            "serviceType": specialty_concept(visit.clinic.specialty),
            "subject": self._subject(),
            "participant": [
                {
                    "type": [
                        {
                            "coding": [
                                {
                                    "system": _PARTICIPATION_TYPE,
                                    "code": "ATND",
                                    "display": "attender",
                                }
                            ]
                        }
                    ],
                    "individual": staff,
                }
            ],
            "period": period,
            "diagnosis": [
                {"condition": {"reference": record_url("Condition", illness.value)}, "rank": rank}
                for rank, illness in enumerate(visit.illnesses, start=1)
            ],
            "location": [
                {"location": location_reference(visit.clinic.location_code), "status": "completed"}
            ],
            "serviceProvider": organization_reference(visit.clinic.code, visit.clinic.name),
        }
        if inpatient:
            encounter["hospitalization"] = {
                "dischargeDisposition": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
                            "code": "home",
                        }
                    ],
                    "text": "出院回家",
                }
            }
        entries = [record_entry(encounter, value)]
        if visit.vitals:
            entries.extend(self._vital_entries(visit, encounter_url))
        if visit.prescribe:
            entries.extend(self._prescription_entries(visit, encounter_url, staff))

        bill = settlement.settle(self.rng, visit.setting, visit.amount, end.date())
        eob_value = self._value("eob")
        eob: dict[str, Any] = {
            "resourceType": "ExplanationOfBenefit",
            "meta": demo_meta(),
            "status": "active",
            "use": "claim",
            "patient": self._subject(),
            "billablePeriod": period,
            "created": _fhir_time(end),
            "insurer": organization_reference(INSURER_CODE, INSURER_NAME),
            "provider": provider,
            "outcome": "complete",
            "diagnosis": [
                {
                    "sequence": rank,
                    "diagnosisReference": {"reference": record_url("Condition", illness.value)},
                }
                for rank, illness in enumerate(visit.illnesses, start=1)
            ],
            "insurance": [
                {"focal": True, "coverage": {"reference": coverage_url(self.seed, self.member)}}
            ],
        }
        eob.update(eob_body(bill, encounter_url=encounter_url, inpatient=inpatient))
        entries.append(record_entry(eob, eob_value))
        return entries

    def _observation(
        self,
        visit: Visit,
        encounter_url: str,
        category: str,
        code: str,
        display: str,
        text: str,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "meta": demo_meta(),
            "status": "final",
            "category": [{"coding": [{"system": _OBSERVATION_CATEGORY, "code": category}]}],
            "code": {
                "coding": [{"system": LOINC_SYSTEM, "code": code, "display": display}],
                "text": text,
            },
            "subject": self._subject(),
            "encounter": {"reference": encounter_url},
            "effectiveDateTime": _fhir_time(visit.start + dt.timedelta(minutes=5)),
            "performer": [staff_reference(visit.staff)],
        }
        observation.update(body)
        return record_entry(observation, self._value("obs"))

    def _vital_entries(self, visit: Visit, encounter_url: str) -> list[dict[str, Any]]:
        rng = self.rng
        diseases = {illness.disease for illness in visit.illnesses}
        hypertensive = "hypertension" in diseases or "stroke" in diseases
        entries = []
        if self._age(visit.start.date()) >= 14:
            systolic = rng.randint(132, 176) if hypertensive else rng.randint(102, 136)
            diastolic = min(
                systolic - 25, rng.randint(82, 106) if hypertensive else rng.randint(62, 86)
            )
            entries.append(
                self._observation(
                    visit,
                    encounter_url,
                    "vital-signs",
                    "85354-9",
                    "Blood pressure panel with all children optional",
                    "血压",
                    {
                        "component": [
                            self._component(
                                "8480-6", "Systolic blood pressure", "收缩压", systolic, "mm[Hg]"
                            ),
                            self._component(
                                "8462-4", "Diastolic blood pressure", "舒张压", diastolic, "mm[Hg]"
                            ),
                        ]
                    },
                )
            )
        entries.append(
            self._observation(
                visit,
                encounter_url,
                "vital-signs",
                "8867-4",
                "Heart rate",
                "心率",
                {
                    "valueQuantity": _quantity(
                        rng.randint(62, 96) if self._age() >= 12 else rng.randint(80, 120),
                        "/min",
                        "次/分",
                    )
                },
            )
        )
        if (
            visit.days
            or visit.setting != "village-outpatient"
            or visit.start.month in (3, 9)
            or self._age() < 12
        ):
            self.weight += rng.uniform(-0.8, 0.8) if self._age() >= 18 else rng.uniform(0, 1.2)
            entries.append(
                self._observation(
                    visit,
                    encounter_url,
                    "vital-signs",
                    "29463-7",
                    "Body weight",
                    "体重",
                    {"valueQuantity": _quantity(round(self.weight, 1), "kg", "kg")},
                )
            )
        if visit.glucose:
            glucose = (
                round(rng.uniform(6.8, 12.5), 1)
                if "diabetes" in diseases
                else round(rng.uniform(4.2, 6.0), 1)
            )
            entries.append(
                self._observation(
                    visit,
                    encounter_url,
                    "laboratory",
                    "15074-8",
                    "Glucose [Moles/volume] in Blood",
                    "血糖",
                    {"valueQuantity": _quantity(glucose, "mmol/L", "mmol/L")},
                )
            )
        return entries

    @staticmethod
    def _component(code: str, display: str, text: str, value: float, unit: str) -> dict[str, Any]:
        return {
            "code": {
                "coding": [{"system": LOINC_SYSTEM, "code": code, "display": display}],
                "text": text,
            },
            "valueQuantity": _quantity(value, unit, unit),
        }

    def _prescription_entries(
        self, visit: Visit, encounter_url: str, staff: dict[str, str]
    ) -> list[dict[str, Any]]:
        entries = []
        recent = visit.start.date() >= self.as_of - dt.timedelta(days=90)
        for illness in visit.illnesses:
            medicine, dosage = illness.medicine
            chronic = DISEASES[illness.disease].chronic
            request = {
                "resourceType": "MedicationRequest",
                "meta": demo_meta(),
                "status": "active" if recent and chronic else "completed",
                "intent": "order",
                "medicationCodeableConcept": {"text": medicine},
                "subject": self._subject(),
                "encounter": {"reference": encounter_url},
                "authoredOn": _fhir_time(visit.start + dt.timedelta(minutes=10)),
                "requester": dict(staff),
                "reasonReference": [{"reference": record_url("Condition", illness.value)}],
                "dosageInstruction": [{"text": dosage}],
            }
            entries.append(record_entry(request, self._value("med")))
        return entries


_CONTRACTED = ("hypertension", "diabetes", "copd", "stroke")


def contract_entries(history: PatientHistory) -> list[dict[str, Any]]:
    """The patient's family-doctor contract, if their chronic disease got them one."""
    chronic = [i for i in history.illnesses if i.disease in _CONTRACTED and not i.resolved]
    if not chronic:
        return []
    household = history.household
    member = history.member
    odds = 0.9 if household.status in ("registered-poor", "exited", "monitored") else 0.5
    if random.Random(f"contract-{member.resident_id}").random() >= odds:
        return []
    village = household.village
    year = history.as_of.year
    episode = {
        "resourceType": "EpisodeOfCare",
        "meta": demo_meta(),
        "status": "active",
        "type": [{"coding": [dict(FAMILY_DOCTOR_CONTRACT)], "text": "家庭医生签约服务"}],
        "diagnosis": [
            {"condition": {"reference": record_url("Condition", illness.value)}, "rank": rank}
            for rank, illness in enumerate(chronic, start=1)
        ],
        "patient": history._subject(),
        "managingOrganization": organization_reference(village.code, village.name),
        "period": {"start": f"{year}-01-01", "end": f"{year}-12-31"},
        "careManager": staff_reference(village.staff[0]),
    }
    return [record_entry(episode, f"{history.seed}-{member.key}-contract-001")]


def _quantity(value: float, ucum: str, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM_SYSTEM, "code": ucum}


def choose_burdened(rng: random.Random, households: list[Household]) -> None:
    """Mark about one household in eight as carrying a costly serious illness.

    Monitored households are likelier (being at risk is why they are monitored), but
    ordinary and exited households get them too: those are the ones illness may push back
    into poverty.
    """
    odds = {"registered-poor": 0.14, "exited": 0.12, "monitored": 0.30, "ordinary": 0.08}
    for household in households:
        household.burdened = rng.random() < odds[household.status]
    # Chance alone may leave a status without a burdened household; the rules that look for
    # them need examples of each, above all ordinary households, whom no assistance cushions.
    for status in ("ordinary", "exited", "monitored"):
        candidates = [h for h in households if h.status == status]
        if candidates and not any(h.burdened for h in candidates):
            rng.choice(candidates).burdened = True
    wanted = round(len(households) / 8)
    others = [h for h in households if not h.burdened]
    while sum(h.burdened for h in households) < wanted and others:
        others.pop(rng.randrange(len(others))).burdened = True


def clinical_entries(
    rng: random.Random, directory: DemoDirectory, household: Household, seed: int, as_of: dt.date
) -> list[dict[str, Any]]:
    """Every clinical and cost entry for the members of ``household``."""
    patient_with_serious: Member | None = None
    if household.burdened:
        adults = [m for m in household.members if m.age(as_of) >= 40] or household.members
        patient_with_serious = rng.choice(adults)
    entries: list[dict[str, Any]] = []
    for member in household.members:
        serious = None
        if member is patient_with_serious:
            serious = rng.choices(SERIOUS, weights=(5, 3, 2))[0]
        history = PatientHistory(rng, directory, household, member, seed, as_of, serious)
        history.plan()
        entries.extend(history.entries(Settlement(household.status)))
        entries.extend(contract_entries(history))
    return entries
