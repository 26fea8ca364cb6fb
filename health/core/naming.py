"""The project's own FHIR naming: identifier systems, code systems and tags.

Official systems (ICD-10, LOINC, the resident identity OID) are used as published; these are
the ones China's standards leave to the deployment. They are URIs, not addresses to fetch.
"""

from __future__ import annotations

#: Root of every system the project defines.
NAMESPACE = "https://fhir.yinchuan-health.cn"

#: Registry household number (户编号) from the poverty household registry (建档立卡 system).
HOUSEHOLD_NUMBER_SYSTEM = f"{NAMESPACE}/sid/household-number"
#: A clinic's code in the city's directory (the health commission's institution code).
ORGANIZATION_CODE_SYSTEM = f"{NAMESPACE}/sid/organization-code"
#: A Location's code in the city's directory.
LOCATION_CODE_SYSTEM = f"{NAMESPACE}/sid/location-code"
#: A practitioner's staff number in the city's directory.
PRACTITIONER_NUMBER_SYSTEM = f"{NAMESPACE}/sid/practitioner-number"
#: Kinds of organisation in the clinic network (township centre, village clinic, hospital...).
ORGANIZATION_KIND_SYSTEM = f"{NAMESPACE}/CodeSystem/organization-kind"
#: Insurance layers that pay part of a bill (basic medical insurance, serious illness...).
PAYMENT_LAYER_SYSTEM = f"{NAMESPACE}/CodeSystem/payment-layer"
#: Tags the project puts in meta.tag.
TAG_SYSTEM = f"{NAMESPACE}/CodeSystem/tag"

#: meta.tag on everything the demo seed writes, so a real deployment can find and drop it.
DEMO_TAG = {"system": TAG_SYSTEM, "code": "demo", "display": "演示数据 demo data"}
#: The standard security label for test data (v3 ActReason HTEST), also on demo resources.
TEST_DATA_LABEL = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "HTEST",
    "display": "test health data",
}
#: meta.tag of a Flag raised because illness pushes a household into poverty (因病致贫/返贫);
#: commission analysts see the persons and households under such a Flag while it is active.
ILLNESS_POVERTY_TAG = {"system": TAG_SYSTEM, "code": "illness-poverty", "display": "因病致贫返贫"}

#: Clinical specialties of hospital departments and practitioner roles (the project's own
#: codes; the Chinese display is what the department signs read).
SPECIALTY_SYSTEM = f"{NAMESPACE}/CodeSystem/specialty"
SPECIALTIES: dict[str, str] = {
    "general-practice": "全科医学科",
    "cardiology": "心血管内科",
    "endocrinology": "内分泌科",
    "respiratory": "呼吸内科",
    "neurology": "神经内科",
    "paediatrics": "儿科",
    "obstetrics-gynaecology": "妇产科",
    "dermatology": "皮肤科",
    "orthopaedics": "骨科",
    "oncology": "肿瘤科",
    "nephrology": "肾内科",
    "gastroenterology": "消化内科",
}

#: A remote consult is a ServiceRequest of this category (SNOMED CT 11429006 "Consultation").
SNOMED = "http://snomed.info/sct"
CONSULTATION_CATEGORY = {"system": SNOMED, "code": "11429006", "display": "Consultation"}
#: The consult (its ServiceRequest's id) that a Consent or CareTeam belongs to, as their
#: identifier: ``{"system": CONSULT_SYSTEM, "value": "<ServiceRequest id>"}``.
CONSULT_SYSTEM = f"{NAMESPACE}/sid/consult"
