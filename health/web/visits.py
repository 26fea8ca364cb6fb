"""Today's visit: one form, saved as one FHIR transaction.

The form holds the complaint, the vital signs (in the units the clinic types them; see
``records.vitals``), the diagnoses (ICD-10 from the picker, or a follow-up of a condition
already on the record), a note, the prescription and the bill. It becomes, in one
transaction — all of it or nothing:

* an **Encounter** (class AMB, the complaint as ``reasonCode``, the diagnoses ranked, the
  doctor as attender, her clinic as ``serviceProvider``), with an identifier of the form it
  came from, so a form sent twice records one visit;
* **Observations**: blood pressure as the LOINC 85354-9 panel of systolic and diastolic,
  the others as single LOINC codes with UCUM units, and the note as LOINC 11506-3 (progress
  note) text;
* a **Condition** per new diagnosis (ICD-10, Chinese display);
* a **MedicationRequest** per prescribed medicine;
* an **ExplanationOfBenefit** shaped as ``health.demo.costs`` shapes the demo's: the items,
  the submitted total, the benefit, and one total for each layer — 城乡居民医保,
  大病保险, 医疗救助 and 个人自付 — with the patient's Coverage (written in the same
  transaction if the patient has none yet).

Values that cannot be right (a systolic pressure of 900) are refused beside their field;
values that are possible but unusual (a temperature of 41.5 ℃) are saved only once the
doctor has ticked that she checked them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from health.core.clock import utcnow
from health.core.naming import NAMESPACE
from health.demo.clinical import DISEASES
from health.demo.costs import PAYMENT_LAYERS, Bill, eob_body
from health.demo.directory import specialty_concept
from health.terminology.icd10 import Concept
from health.web.chart import condition_row
from health.web.display import CHINA_TIME, name_of, resident_id_of
from health.web.icd10 import current_catalogue
from health.web.patients import _patient_or_404, coverage_for, insurer_of
from health.web.signed_in import Resource, SignedIn, field_errors, signed_in
from records.outcome import FhirError
from records.vitals import (
    BLOOD_PRESSURE_PANEL,
    LOINC,
    UCUM,
    VITALS,
    Reading,
    read_vital,
)

router = APIRouter(include_in_schema=False)

#: Identifier system of the visit form a record came from (one form, one visit).
VISIT_FORM_SYSTEM = f"{NAMESPACE}/sid/visit-form"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PROGRESS_NOTE = ("11506-3", "Progress note", "诊疗记录")
#: Kinds of visit, stored as Encounter.type text (the demo's words).
VISIT_TYPES = {"outpatient": "门诊", "follow-up": "慢病随访"}
#: Bill items: form field -> the item's name on the receipt (EOB item productOrService).
BILL_ITEMS = {
    "fee_consultation": "诊查费",
    "fee_tests": "检查费",
    "fee_lab": "化验费",
    "fee_treatment": "治疗费",
    "fee_drugs": "药品费",
    "fee_materials": "卫生材料费",
}
#: Payment layers the form asks for; out of pocket is what is left.
PAID_LAYERS = {
    "paid_basic": "basic-medical-insurance",
    "paid_serious": "serious-illness-insurance",
    "paid_assistance": "medical-assistance",
}
PRESCRIPTION_ROWS = 4
MAX_AMOUNT = Decimal("1000000")


@dataclass
class VisitForm:
    key: str = ""
    visit_type: str = "outpatient"
    complaint: str = ""
    note: str = ""
    readings: dict[str, Reading] = field(default_factory=dict)
    diagnoses: list[Concept] = field(default_factory=list)
    follow_ups: list[str] = field(default_factory=list)
    problem_list: bool = False
    prescriptions: list[dict[str, str]] = field(default_factory=list)
    fees: dict[str, str] = field(default_factory=dict)
    paid: dict[str, str] = field(default_factory=dict)
    checked: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    amounts: dict[str, Decimal] = field(default_factory=dict)


def _amount(text: str) -> Decimal | None:
    cleaned = text.replace(",", "").replace("，", "").replace("¥", "").replace("￥", "").strip()
    if not cleaned:
        return Decimal(0)
    if not re.fullmatch(r"\d{1,7}(\.\d{1,2})?", cleaned):
        return None
    return Decimal(cleaned)


async def read_visit(me: SignedIn, form: Any, active: list[Resource]) -> VisitForm:
    _ = me.gettext
    catalogue = await current_catalogue(me.request)
    visit = VisitForm(
        key=str(form.get("visit_key") or ""),
        visit_type=str(form.get("visit_type") or "outpatient"),
        complaint=str(form.get("complaint") or "").strip(),
        note=str(form.get("note") or "").strip(),
        problem_list=form.get("problem_list") == "yes",
        checked=form.get("checked") == "yes",
    )
    errors, warnings = visit.errors, visit.warnings
    if not re.fullmatch(r"[0-9a-f]{32}", visit.key):
        errors[""] = _("The form is damaged; reload the page and enter the visit again.")
    if visit.visit_type not in VISIT_TYPES:
        visit.visit_type = "outpatient"
    if not visit.complaint:
        errors["complaint"] = _("Enter the complaint: why the patient came.")
    elif len(visit.complaint) > 500:
        errors["complaint"] = _("At most 500 characters.")
    if len(visit.note) > 4000:
        errors["note"] = _("At most 4000 characters.")
    for key, vital in VITALS.items():
        reading = read_vital(vital, str(form.get(key) or ""), str(form.get(f"{key}_unit") or ""))
        visit.readings[key] = reading
        if reading.problem == "number":
            errors[key] = _("Enter a number.")
        elif reading.problem == "impossible":
            errors[key] = _("%(value)s %(unit)s cannot be right: check the value and its unit.") % {
                "value": reading.value,
                "unit": vital.unit_text,
            }
        elif reading.problem == "implausible":
            warnings[key] = _("%(value)s %(unit)s is unusual: check it.") % {
                "value": reading.value,
                "unit": vital.unit_text,
            }
    systolic, diastolic = visit.readings["systolic"], visit.readings["diastolic"]
    if (systolic.value is None) != (diastolic.value is None) and not (
        "systolic" in errors or "diastolic" in errors
    ):
        errors["diastolic" if systolic.value is not None else "systolic"] = _(
            "Enter both blood pressures, or neither."
        )
    elif (
        systolic.value is not None
        and diastolic.value is not None
        and diastolic.value >= systolic.value
    ):
        errors["diastolic"] = _("The diastolic pressure must be below the systolic.")
    codes = [str(c).strip() for c in form.getlist("diagnosis") if str(c).strip()]
    typed = str(form.get("diagnosis_query") or "").strip()
    if typed and catalogue.get(typed) and typed.upper() not in {c.upper() for c in codes}:
        codes.append(typed)
    for code in dict.fromkeys(c.upper() for c in codes):
        concept = catalogue.get(code)
        if concept is None:
            errors["diagnosis"] = _("%(code)s is not in the ICD-10 list: choose from the list.") % {
                "code": code[:20]
            }
        else:
            visit.diagnoses.append(concept)
    active_ids = {str(c.get("id")) for c in active}
    visit.follow_ups = [str(c) for c in form.getlist("follow_up") if str(c) in active_ids]
    # A new diagnosis of a condition already active on the record is a follow-up of it.
    for condition in active:
        code = condition_row(condition)["code"]
        if any(d.code == code for d in visit.diagnoses):
            visit.diagnoses = [d for d in visit.diagnoses if d.code != code]
            if str(condition["id"]) not in visit.follow_ups:
                visit.follow_ups.append(str(condition["id"]))
    if typed and not catalogue.get(typed) and not codes:
        errors["diagnosis"] = _("Choose the diagnosis from the list that appears as you type.")
    for row in range(PRESCRIPTION_ROWS):
        medicine = str(form.get(f"medicine_{row}") or "").strip()
        dosage = str(form.get(f"dosage_{row}") or "").strip()
        days = str(form.get(f"days_{row}") or "").strip()
        entry = {"medicine": medicine, "dosage": dosage, "days": days}
        visit.prescriptions.append(entry)
        if not medicine and (dosage or days):
            errors[f"medicine_{row}"] = _("Enter the medicine, or clear the row.")
        elif medicine and not dosage:
            errors[f"dosage_{row}"] = _("Enter how to take it.")
        if days and not re.fullmatch(r"\d{1,3}", days):
            errors[f"days_{row}"] = _("Whole days, 1 to 999.")
        if len(medicine) > 200 or len(dosage) > 200:
            errors[f"medicine_{row}"] = _("At most 200 characters.")

    def amounts(keys: Iterable[str], typed: dict[str, str]) -> Decimal:
        """Read the yuan fields ``keys`` into ``typed`` and visit.amounts; their sum."""
        summed = Decimal(0)
        for key in keys:
            typed[key] = str(form.get(key) or "").strip()
            amount = _amount(typed[key])
            if amount is None or amount > MAX_AMOUNT:
                errors[key] = _("An amount in yuan, such as 12.50.")
            else:
                visit.amounts[key] = amount
                summed += amount
        return summed

    total = amounts(BILL_ITEMS, visit.fees)
    paid = amounts(PAID_LAYERS, visit.paid)
    visit.amounts["total"] = total
    visit.amounts["out_of_pocket"] = total - paid
    if paid > total and not any(k in errors for k in PAID_LAYERS):
        errors["paid_basic"] = _("Insurance cannot pay more than the bill (¥%(total)s).") % {
            "total": f"{total:.2f}"
        }
    if warnings and not visit.checked:
        errors.setdefault(
            "checked", _("Some values are unusual. Check them, then tick the box to save.")
        )
    return visit


def _reference(resource: Resource, res_type: str, display: str | None = None) -> Resource:
    reference: Resource = {"reference": f"{res_type}/{resource['id']}"}
    if display:
        reference["display"] = display
    return reference


def _observation(
    subject: Resource,
    encounter_url: str,
    performer: list[Resource],
    when: str,
    category: str,
    code: tuple[str, str, str],
    body: Resource,
    also: tuple[tuple[str, str], ...] = (),
) -> Resource:
    observation: Resource = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": _OBSERVATION_CATEGORY, "code": category}]}],
        "code": {
            "coding": [
                {"system": LOINC, "code": c, "display": d} for c, d in ((code[0], code[1]), *also)
            ],
            "text": code[2],
        },
        "subject": subject,
        "encounter": {"reference": encounter_url},
        "effectiveDateTime": when,
    }
    if performer:
        observation["performer"] = performer
    observation.update(body)
    return observation


def _quantity(reading: Reading) -> Resource:
    vital = reading.vital
    return {"value": reading.stored, "unit": vital.unit_text, "system": UCUM, "code": vital.ucum}


def visit_entries(
    me: SignedIn,
    visit: VisitForm,
    *,
    patient: Resource,
    organization: Resource,
    active: list[Resource],
    coverage: Resource | None,
    insurer: Resource | None,
) -> list[Resource]:
    """The transaction entries of the visit."""
    now = utcnow().astimezone(CHINA_TIME).replace(microsecond=0)
    when = now.isoformat()
    subject = _reference(patient, "Patient", name_of(patient))
    provider = _reference(organization, "Organization", organization.get("name"))
    practitioner = me.user.practitioner_id
    staff = (
        [{"reference": f"Practitioner/{practitioner}", "display": me.user.display_name or ""}]
        if practitioner
        else []
    )
    encounter_url = f"urn:uuid:{uuid.uuid4()}"
    entries: list[Resource] = []
    new_conditions: list[str] = []
    for concept in visit.diagnoses:
        url = f"urn:uuid:{uuid.uuid4()}"
        new_conditions.append(url)
        entries.append(
            {
                "fullUrl": url,
                "resource": {
                    "resourceType": "Condition",
                    "clinicalStatus": {
                        "coding": [{"system": _CONDITION_CLINICAL, "code": "active"}]
                    },
                    "verificationStatus": {
                        "coding": [{"system": _CONDITION_VERIFICATION, "code": "confirmed"}]
                    },
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": _CONDITION_CATEGORY,
                                    "code": "problem-list-item"
                                    if visit.problem_list
                                    else "encounter-diagnosis",
                                }
                            ]
                        }
                    ],
                    "code": {"coding": [concept.coding()], "text": concept.name_zh},
                    "subject": subject,
                    "encounter": {"reference": encounter_url},
                    "onsetDateTime": now.date().isoformat(),
                    "recordedDate": now.date().isoformat(),
                    **({"recorder": staff[0]} if staff else {}),
                },
                "request": {"method": "POST", "url": "Condition"},
            }
        )
    diagnosis_refs = new_conditions + [f"Condition/{cid}" for cid in visit.follow_ups]
    encounter: Resource = {
        "resourceType": "Encounter",
        "identifier": [{"system": VISIT_FORM_SYSTEM, "value": visit.key}],
        "status": "finished",
        "class": {"system": _ACT_CODE, "code": "AMB", "display": "ambulatory"},
        "type": [{"text": VISIT_TYPES[visit.visit_type]}],
        "serviceType": specialty_concept("general-practice"),
        "subject": subject,
        "period": {"start": when, "end": when},
        "reasonCode": [{"text": visit.complaint}],
        "serviceProvider": provider,
    }
    if staff:
        encounter["participant"] = [
            {
                "type": [
                    {"coding": [{"system": _PARTICIPATION, "code": "ATND", "display": "attender"}]}
                ],
                "individual": staff[0],
            }
        ]
    if diagnosis_refs:
        encounter["diagnosis"] = [
            {"condition": {"reference": ref}, "rank": rank}
            for rank, ref in enumerate(diagnosis_refs, start=1)
        ]
    entries.insert(
        0,
        {
            "fullUrl": encounter_url,
            "resource": encounter,
            "request": {
                "method": "POST",
                "url": "Encounter",
                "ifNoneExist": f"identifier={VISIT_FORM_SYSTEM}|{visit.key}",
            },
        },
    )

    def add(resource: Resource) -> None:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )

    systolic, diastolic = visit.readings["systolic"], visit.readings["diastolic"]
    if systolic.value is not None and diastolic.value is not None:
        add(
            _observation(
                subject,
                encounter_url,
                staff,
                when,
                "vital-signs",
                BLOOD_PRESSURE_PANEL,
                {
                    "component": [
                        {
                            "code": {
                                "coding": [
                                    {
                                        "system": LOINC,
                                        "code": r.vital.loinc,
                                        "display": r.vital.display,
                                    }
                                ],
                                "text": r.vital.text,
                            },
                            "valueQuantity": _quantity(r),
                        }
                        for r in (systolic, diastolic)
                    ]
                },
            )
        )
    for key, reading in visit.readings.items():
        if key in ("systolic", "diastolic") or reading.value is None:
            continue
        vital = reading.vital
        add(
            _observation(
                subject,
                encounter_url,
                staff,
                when,
                vital.category,
                (vital.loinc, vital.display, vital.text),
                {"valueQuantity": _quantity(reading)},
                also=vital.also,
            )
        )
    if visit.note:
        add(
            _observation(
                subject,
                encounter_url,
                staff,
                when,
                "exam",
                PROGRESS_NOTE,
                {"valueString": visit.note},
            )
        )
    for row in visit.prescriptions:
        if not row["medicine"]:
            continue
        request: Resource = {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": row["medicine"]},
            "subject": subject,
            "encounter": {"reference": encounter_url},
            "authoredOn": when,
            **({"requester": staff[0]} if staff else {}),
            **({"reasonReference": [{"reference": diagnosis_refs[0]}]} if diagnosis_refs else {}),
            "dosageInstruction": [{"text": row["dosage"]}],
        }
        if row["days"]:
            request["dispenseRequest"] = {
                "expectedSupplyDuration": {
                    "value": int(row["days"]),
                    "unit": "天",
                    "system": UCUM,
                    "code": "d",
                }
            }
        add(request)
    total = visit.amounts["total"]
    if total > 0 and insurer is not None:
        coverage_url: str
        if coverage is None:
            coverage_url = f"urn:uuid:{uuid.uuid4()}"
            entries.append(
                {
                    "fullUrl": coverage_url,
                    "resource": coverage_for(
                        f"Patient/{patient['id']}",
                        name_of(patient),
                        resident_id_of(patient),
                        insurer,
                    ),
                    "request": {"method": "POST", "url": "Coverage"},
                }
            )
        else:
            coverage_url = f"Coverage/{coverage['id']}"
        items = tuple((BILL_ITEMS[k], visit.amounts[k]) for k in BILL_ITEMS if visit.amounts.get(k))
        layers = {code: visit.amounts[k] for k, code in PAID_LAYERS.items()}
        layers["out-of-pocket"] = visit.amounts["out_of_pocket"]
        bill = Bill(items, total, {code: layers[code] for code in PAYMENT_LAYERS})
        eob: Resource = {
            "resourceType": "ExplanationOfBenefit",
            "status": "active",
            "use": "claim",
            "patient": subject,
            "billablePeriod": {"start": when, "end": when},
            "created": when,
            "insurer": _reference(insurer, "Organization", insurer.get("name")),
            "provider": provider,
            "outcome": "complete",
        }
        if diagnosis_refs:
            eob["diagnosis"] = [
                {"sequence": rank, "diagnosisReference": {"reference": ref}}
                for rank, ref in enumerate(diagnosis_refs, start=1)
            ]
        eob["insurance"] = [{"focal": True, "coverage": {"reference": coverage_url}}]
        eob.update(eob_body(bill, encounter_url=encounter_url, inpatient=False))
        add(eob)
    return entries


async def _context(me: SignedIn, patient_id: str) -> tuple[Resource, list[Resource]]:
    patient = await _patient_or_404(me, patient_id)
    active = await me.search(
        "Condition", [("patient", patient_id), ("clinical-status", "active"), ("_count", "100")]
    )
    return patient, [c for c in active if c.get("resourceType") == "Condition"]


def _render(
    me: SignedIn,
    patient: Resource,
    active: list[Resource],
    visit: VisitForm,
    *,
    insurer: Resource | None,
    status: int = 200,
) -> Response:
    return me.render(
        "visits/visit.html",
        status=status,
        patient={"id": patient["id"], "name": name_of(patient)},
        active=[condition_row(c) for c in active],
        visit=visit,
        vitals=VITALS,
        bill_items=list(BILL_ITEMS),
        paid_layers=list(PAID_LAYERS),
        visit_types=list(VISIT_TYPES),
        insurer=insurer,
        medicines=_COMMON_MEDICINES,
    )


#: Medicines the form suggests as the doctor types (the demo's village formulary).
_COMMON_MEDICINES = sorted({m for d in DISEASES.values() for m, _dosage in d.medicines})


@router.get("/patients/{patient_id}/visit")
async def visit_form(request: Request, patient_id: str) -> Response:
    me = await signed_in(request)
    me.require_role("village_doctor", "township_doctor")
    patient, active = await _context(me, patient_id)
    visit = VisitForm(key=uuid.uuid4().hex)
    visit.prescriptions = [{"medicine": "", "dosage": "", "days": ""}] * PRESCRIPTION_ROWS
    return _render(me, patient, active, visit, insurer=await insurer_of(me))


@router.post("/patients/{patient_id}/visit")
async def save_visit(request: Request, patient_id: str) -> Response:
    me = await signed_in(request)
    me.require_role("village_doctor", "township_doctor")
    _ = me.gettext
    form = await me.form()
    patient, active = await _context(me, patient_id)
    insurer = await insurer_of(me)
    visit = await read_visit(me, form, active)
    if visit.amounts.get("total", Decimal(0)) > 0 and insurer is None:
        visit.errors["fee_consultation"] = _(
            "The directory has no medical-insurance agency, so no bill can be recorded; "
            "ask an administrator."
        )
    organization = (
        await me.read("Organization", me.user.organization_id) if me.user.organization_id else None
    )
    if organization is None:
        visit.errors[""] = _("Your account has no clinic; ask an administrator.")
    if visit.errors:
        return _render(me, patient, active, visit, insurer=insurer, status=400)
    assert organization is not None
    already = await me.search(
        "Encounter", [("identifier", f"{VISIT_FORM_SYSTEM}|{visit.key}"), ("_count", "1")]
    )
    if already:
        return RedirectResponse(
            f"/patients/{patient_id}?visit=1#encounter-{already[0]['id']}", status_code=303
        )
    coverages = await me.search(
        "Coverage",
        [("beneficiary", f"Patient/{patient_id}"), ("status", "active"), ("_count", "1")],
    )
    entries = visit_entries(
        me,
        visit,
        patient=patient,
        organization=organization,
        active=active,
        coverage=coverages[0] if coverages else None,
        insurer=insurer,
    )
    try:
        response = await me.transaction(entries)
    except FhirError as error:
        fields = {key: key for key in VITALS}
        fields.update({"reasonCode": "complaint", "Condition": "diagnosis"})
        visit.errors.update(field_errors(error, fields) or {"": str(error)})
        return _render(me, patient, active, visit, insurer=insurer, status=400)
    location = str(((response.get("entry") or [{}])[0].get("response") or {}).get("location") or "")
    encounter_id = location.split("/")[1] if location.count("/") >= 1 else ""
    return RedirectResponse(
        f"/patients/{patient_id}?visit=1#encounter-{encounter_id}", status_code=303
    )
