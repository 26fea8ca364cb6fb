"""The patient's chart: the whole picture on one page.

The summary (active conditions with their ICD-10 codes, active medicines, allergies, the
flags the person may see, the household), trend charts of blood pressure, glucose and weight,
and the encounters at every clinic the person may see, newest first, each opening (a plain
``<details>``, no script needed) onto its complaint, notes, observations, prescriptions and
costs. Everything is read through the person's access policy, so a chart shows exactly what
the API would show them, and every read is on their audit trail.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from health.core.naming import PAYMENT_LAYER_SYSTEM
from health.demo.costs import PAYMENT_LAYERS
from health.terminology.icd10 import ICD10_SYSTEM
from health.web.display import (
    CHINA_TIME,
    age_on,
    coding_of,
    concept_text,
    local_time,
    name_of,
    parse_date,
    parse_instant,
    phone_of,
    reference_id,
    resident_id_of,
    today,
    yuan,
)
from health.web.patients import _patient_or_404, household_of
from health.web.signed_in import Resource, SignedIn, signed_in
from health.web.trends import Band, Series, trend_svg
from records.vitals import GLUCOSE_MASS, GLUCOSE_MG_PER_MMOL, LOINC, VITALS

router = APIRouter(include_in_schema=False)

CHART_ROLES = ("village_doctor", "township_doctor", "specialist", "commission_analyst")
ENCOUNTERS_PER_PAGE = 15
PROGRESS_NOTE = "11506-3"
TREND_POINTS = 24
_BP = "85354-9"


def _loinc(resource: Resource) -> str:
    coding = coding_of(resource.get("code"), LOINC)
    return str(coding.get("code")) if coding else ""


def _quantity(quantity: Resource | None) -> str:
    if not quantity or quantity.get("value") is None:
        return ""
    value = quantity["value"]
    return f"{value} {quantity.get('unit') or quantity.get('code') or ''}".strip()


def observation_value(observation: Resource) -> str:
    """``150/95 mmHg``, ``7.2 mmol/L``, a note's text."""
    components = observation.get("component") or []
    if _loinc(observation) == _BP and components:
        by_code = {_loinc(c): c.get("valueQuantity") or {} for c in components}
        systolic, diastolic = by_code.get("8480-6", {}), by_code.get("8462-4", {})
        if systolic.get("value") is not None and diastolic.get("value") is not None:
            unit = systolic.get("unit") or "mmHg"
            return f"{systolic['value']}/{diastolic['value']} {unit}"
    if "valueQuantity" in observation:
        return _quantity(observation["valueQuantity"])
    if "valueString" in observation:
        return str(observation["valueString"])
    if "valueCodeableConcept" in observation:
        return concept_text(observation["valueCodeableConcept"])
    return "; ".join(
        f"{concept_text(c.get('code'))} {_quantity(c.get('valueQuantity'))}" for c in components
    )


def condition_row(condition: Resource) -> dict[str, Any]:
    coding = coding_of(condition.get("code"), ICD10_SYSTEM) or {}
    return {
        "id": condition.get("id"),
        "code": coding.get("code", ""),
        "display": coding.get("display") or concept_text(condition.get("code")),
        "text": concept_text(condition.get("code")),
        "onset": str(condition.get("onsetDateTime") or "")[:10],
        "status": concept_text(condition.get("clinicalStatus")),
        "notes": [n.get("text") for n in condition.get("note") or [] if n.get("text")],
    }


def medication_row(request: Resource) -> dict[str, Any]:
    dosage = "; ".join(
        str(d.get("text")) for d in request.get("dosageInstruction") or [] if d.get("text")
    )
    supply = (request.get("dispenseRequest") or {}).get("expectedSupplyDuration") or {}
    return {
        "medicine": concept_text(request.get("medicationCodeableConcept"))
        or str((request.get("medicationReference") or {}).get("display") or ""),
        "dosage": dosage,
        "days": supply.get("value"),
        "authored": local_time(request.get("authoredOn")),
        "status": request.get("status"),
    }


def cost_rows(eob: Resource) -> dict[str, Any]:
    """The bill and who paid: the submitted total, each payment layer, the items."""
    layers: dict[str, str] = {}
    submitted = ""
    for total in eob.get("total") or []:
        category = total.get("category") or {}
        layer = coding_of(category, PAYMENT_LAYER_SYSTEM)
        amount = yuan((total.get("amount") or {}).get("value"))
        if layer and layer.get("code") in PAYMENT_LAYERS:
            layers[str(layer["code"])] = amount
        elif any(c.get("code") == "submitted" for c in category.get("coding") or []):
            submitted = amount
    items = [
        {
            "name": concept_text(item.get("productOrService")),
            "amount": yuan((item.get("net") or {}).get("value")),
        }
        for item in eob.get("item") or []
    ]
    return {"submitted": submitted, "layers": layers, "lines": items}


def _effective(observation: Resource) -> dt.datetime | None:
    return parse_instant(observation.get("effectiveDateTime") or observation.get("issued"))


def trends(observations: list[Resource]) -> list[dict[str, Any]]:
    """The three charts: blood pressure, glucose and weight."""
    systolic, diastolic, glucose, weight = (
        Series("line-a"),
        Series("line-b"),
        Series("line-a"),
        Series("line-a"),
    )
    for observation in observations:
        moment = _effective(observation)
        if moment is None:
            continue
        code = _loinc(observation)
        if code == _BP:
            for component in observation.get("component") or []:
                value = (component.get("valueQuantity") or {}).get("value")
                if value is None:
                    continue
                if _loinc(component) == "8480-6":
                    systolic.points.append((moment, float(value)))
                elif _loinc(component) == "8462-4":
                    diastolic.points.append((moment, float(value)))
        value = (observation.get("valueQuantity") or {}).get("value")
        if value is None:
            continue
        if code == VITALS["glucose"].loinc:
            glucose.points.append((moment, float(value)))
        elif code == GLUCOSE_MASS:
            glucose.points.append((moment, float(Decimal(str(value)) / GLUCOSE_MG_PER_MMOL)))
        elif code == VITALS["weight"].loinc:
            weight.points.append((moment, float(value)))
    for series in (systolic, diastolic, glucose, weight):
        series.points = sorted(series.points)[-TREND_POINTS:]
    return [
        {
            "key": "blood-pressure",
            "unit": "mmHg",
            "series": [systolic, diastolic],
            "band": Band(60, 140),
        },
        {"key": "glucose", "unit": "mmol/L", "series": [glucose], "band": Band(3.9, 7.0)},
        {"key": "weight", "unit": "kg", "series": [weight], "band": None},
    ]


async def encounter_views(
    me: SignedIn, patient_id: str, page: int
) -> tuple[list[dict[str, Any]], bool]:
    """One page of the patient's encounters, newest first, each with what belongs to it."""
    params = [
        ("patient", patient_id),
        ("_sort", "-date"),
        ("_count", str(ENCOUNTERS_PER_PAGE + 1)),
        ("_offset", str(page * ENCOUNTERS_PER_PAGE)),
    ]
    encounters = [
        e for e in await me.search("Encounter", params) if e.get("resourceType") == "Encounter"
    ]
    more = len(encounters) > ENCOUNTERS_PER_PAGE
    encounters = encounters[:ENCOUNTERS_PER_PAGE]
    if not encounters:
        return [], False
    ids = ",".join(f"Encounter/{e['id']}" for e in encounters)
    related: dict[str, list[Resource]] = {}
    for res_type in ("Observation", "MedicationRequest", "ExplanationOfBenefit", "Condition"):
        for resource in await me.search(res_type, [("encounter", ids), ("_count", "500")]):
            references = (
                [i.get("encounter") or [] for i in resource.get("item") or []]
                if res_type == "ExplanationOfBenefit"
                else [[resource.get("encounter") or {}]]
            )
            for group in references:
                for reference in group:
                    encounter_id = reference_id(reference, "Encounter")
                    if encounter_id:
                        related.setdefault(f"{encounter_id}/{res_type}", []).append(resource)
    diagnosis_ids = {
        reference_id(d.get("condition"), "Condition")
        for e in encounters
        for d in e.get("diagnosis") or []
    } - {None}
    conditions: dict[str, Resource] = {}
    if diagnosis_ids:
        for condition in await me.search(
            "Condition",
            [("_id", ",".join(sorted(i for i in diagnosis_ids if i))), ("_count", "200")],
        ):
            conditions[str(condition["id"])] = condition
    views = []
    for encounter in encounters:
        eid = str(encounter["id"])
        observations = related.get(f"{eid}/Observation", [])
        notes = [o for o in observations if _loinc(o) == PROGRESS_NOTE]
        diagnoses = [
            condition_row(conditions[cid])
            for d in encounter.get("diagnosis") or []
            if (cid := reference_id(d.get("condition"), "Condition")) and cid in conditions
        ]
        for condition in related.get(f"{eid}/Condition", []):
            if not any(d["id"] == condition.get("id") for d in diagnoses):
                diagnoses.append(condition_row(condition))
        period = encounter.get("period") or {}
        views.append(
            {
                "id": eid,
                "start": local_time(period.get("start")),
                "clinic": str((encounter.get("serviceProvider") or {}).get("display") or ""),
                "type": ", ".join(concept_text(t) for t in encounter.get("type") or []),
                "class": (encounter.get("class") or {}).get("code", ""),
                "complaint": "; ".join(concept_text(r) for r in encounter.get("reasonCode") or []),
                "doctor": ", ".join(
                    str((p.get("individual") or {}).get("display") or "")
                    for p in encounter.get("participant") or []
                    if (p.get("individual") or {}).get("display")
                ),
                "diagnoses": diagnoses,
                "notes": [str(n.get("valueString") or "") for n in notes],
                "observations": [
                    {"name": concept_text(o.get("code")), "value": observation_value(o)}
                    for o in observations
                    if _loinc(o) != PROGRESS_NOTE
                ],
                "medications": [
                    medication_row(m) for m in related.get(f"{eid}/MedicationRequest", [])
                ],
                "costs": [cost_rows(b) for b in related.get(f"{eid}/ExplanationOfBenefit", [])],
            }
        )
    return views, more


def readings(series: list[Series]) -> list[tuple[str, str]]:
    """The charted values as rows, newest first: ``("2026-10-31", "150/95")``."""
    by_time: dict[dt.datetime, list[str]] = {}
    for line in series:
        for moment, value in line.points:
            by_time.setdefault(moment, []).append(f"{value:g}")
    return [
        (moment.astimezone(CHINA_TIME).strftime("%Y-%m-%d"), "/".join(values))
        for moment, values in sorted(by_time.items(), reverse=True)
    ]


def _flag_row(flag: Resource) -> dict[str, Any]:
    return {
        "text": concept_text(flag.get("code")),
        "since": str((flag.get("period") or {}).get("start") or "")[:10],
        "category": ", ".join(concept_text(c) for c in flag.get("category") or []),
    }


def _active_flag(flag: Resource, on: dt.date) -> bool:
    if flag.get("status") != "active":
        return False
    end = parse_date((flag.get("period") or {}).get("end"))
    return end is None or end >= on


@router.get("/patients/{patient_id}")
async def chart(request: Request, patient_id: str, page: int = 0) -> Response:
    me = await signed_in(request)
    me.require_role(*CHART_ROLES)
    page = max(0, min(page, 1000))
    patient = await _patient_or_404(me, patient_id)
    on = today()
    conditions = await me.search(
        "Condition", [("patient", patient_id), ("clinical-status", "active"), ("_count", "200")]
    )
    medications = await me.search(
        "MedicationRequest", [("patient", patient_id), ("status", "active"), ("_count", "200")]
    )
    allergies = await me.search("AllergyIntolerance", [("patient", patient_id), ("_count", "100")])
    household = await household_of(me, patient_id)
    flags = await me.search("Flag", [("patient", patient_id), ("_count", "100")])
    if household is not None:
        flags += await me.search(
            "Flag", [("subject", f"Group/{household.group['id']}"), ("_count", "100")]
        )
    codes = ",".join(
        f"{LOINC}|{c}" for c in (_BP, VITALS["glucose"].loinc, GLUCOSE_MASS, VITALS["weight"].loinc)
    )
    observations = await me.search(
        "Observation",
        [("patient", patient_id), ("code", codes), ("_sort", "-date"), ("_count", "300")],
    )
    encounters, more = await encounter_views(me, patient_id, page)
    birth = parse_date(patient.get("birthDate"))
    _ = me.gettext
    titles = {
        "blood-pressure": _("Blood pressure"),
        "glucose": _("Blood glucose"),
        "weight": _("Weight"),
    }
    charts = trends(observations)
    for item in charts:
        item["title"] = titles[item["key"]]
        item["svg"] = trend_svg(item["title"], item["series"], band=item["band"])
        item["readings"] = readings(item["series"])
    return me.render(
        "chart/chart.html",
        patient={
            "id": patient_id,
            "name": name_of(patient),
            "gender": patient.get("gender") or "unknown",
            "birth_date": patient.get("birthDate") or "",
            "age": age_on(birth, on),
            "resident_id": resident_id_of(patient),
            "phone": phone_of(patient),
            "address": "; ".join(
                str(a.get("text")) for a in patient.get("address") or [] if a.get("text")
            ),
            "clinic": str((patient.get("managingOrganization") or {}).get("display") or ""),
        },
        conditions=[condition_row(c) for c in conditions if c.get("resourceType") == "Condition"],
        medications=[medication_row(m) for m in medications],
        allergies=[
            {
                "substance": concept_text(a.get("code")),
                "reaction": "; ".join(
                    concept_text(m)
                    for r in a.get("reaction") or []
                    for m in r.get("manifestation") or []
                ),
                "criticality": a.get("criticality") or "",
            }
            for a in allergies
        ],
        flags=[_flag_row(f) for f in flags if _active_flag(f, on)],
        household=household,
        charts=charts,
        encounters=encounters,
        page=page,
        more=more,
        may_record=me.role in ("village_doctor", "township_doctor"),
        registered=request.query_params.get("registered") == "1",
    )
