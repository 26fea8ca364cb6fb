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
