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
#: code -> Chinese display, in the order a settlement lists them: the three insurance layers
#: (三重保障) and what is left to the patient.
PAYMENT_LAYERS: dict[str, str] = {
    "basic-medical-insurance": "城乡居民基本医疗保险",
    "serious-illness-insurance": "大病保险",
    "medical-assistance": "医疗救助",
    "out-of-pocket": "个人自付",
}
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
# -- households and illness-poverty flags -------------------------------------------------

#: Group.member extension: the member's relationship to the head (与户主关系), a v3 RoleCode.
HOUSEHOLD_RELATIONSHIP_URL = f"{NAMESPACE}/StructureDefinition/household-relationship"
#: Codes of a household Group's characteristics: ``registry-status``, ``main-poverty-cause``,
#: ``other-poverty-cause``, ``income-per-capita`` (家庭年人均纯收入, a CNY Quantity whose
#: ``period`` is the income year), ``township`` (乡镇) and ``village`` (行政村).
HOUSEHOLD_CHARACTERISTIC_SYSTEM = f"{NAMESPACE}/CodeSystem/household-characteristic"
#: A household's status in the poverty registry (户属性).
REGISTRY_STATUS_SYSTEM = f"{NAMESPACE}/CodeSystem/registry-status"
REGISTRY_STATUSES: dict[str, str] = {
    "registered-poor": "建档立卡贫困户",
    "exited": "脱贫户",
    "monitored": "防返贫监测户",
    "ordinary": "一般农户",
}
#: The registry's causes of poverty (致贫原因): illness, disability, schooling...
POVERTY_CAUSE_SYSTEM = f"{NAMESPACE}/CodeSystem/poverty-cause"
#: EpisodeOfCare.type of a contracted family-doctor service (家庭医生签约服务).
CARE_EPISODE_TYPE_SYSTEM = f"{NAMESPACE}/CodeSystem/care-episode-type"
FAMILY_DOCTOR_CONTRACT = {
    "system": CARE_EPISODE_TYPE_SYSTEM,
    "code": "family-doctor-contract",
    "display": "家庭医生签约服务",
}
#: Flag.code of an illness-poverty flag: which of the five kinds it is.
ILLNESS_POVERTY_FLAG_SYSTEM = f"{NAMESPACE}/CodeSystem/illness-poverty-flag"
#: code -> (Chinese display, English display)
ILLNESS_POVERTY_FLAG_KINDS: dict[str, tuple[str, str]] = {
    "illness-poverty-risk": ("因病致贫风险", "risk of poverty through illness"),
    "illness-return-risk": ("因病返贫风险", "risk of return to poverty through illness"),
    "medical-bill-alert": ("高额医疗费用预警", "medical-bill alert"),
    "serious-illness": ("大病患者", "serious illness"),
    "chronic-burden": ("慢病负担未签约", "chronic disease without a family doctor"),
}
#: The rules that raise flags; a coding's ``version`` is the rule set's version.
ILLNESS_POVERTY_RULE_SYSTEM = f"{NAMESPACE}/CodeSystem/illness-poverty-rule"
#: RiskAssessment.prediction.outcome of one threshold test (capacity-to-pay-share...).
ILLNESS_POVERTY_MEASURE_SYSTEM = f"{NAMESPACE}/CodeSystem/illness-poverty-measure"
#: Extension on a prediction: the test's figure, threshold, comparator and result.
ILLNESS_POVERTY_MEASURE_URL = f"{NAMESPACE}/StructureDefinition/illness-poverty-measure"
#: Extension on a RiskAssessment: the household's bills over the period, split by payer.
ILLNESS_POVERTY_COSTS_URL = f"{NAMESPACE}/StructureDefinition/illness-poverty-costs"

# -- follow-up of illness-poverty cases -----------------------------------------------------

#: meta.tag of the Task that follows up an illness-poverty case (one Task a case: a household
#: from its first flag to 风险消除 or rejection); the policy lets case workers see every
#: such Task, even after the household's flags have ended, and only them update it.
ILLNESS_POVERTY_CASE_TAG = {
    "system": TAG_SYSTEM,
    "code": "illness-poverty-case",
    "display": "因病致贫返贫帮扶跟进",
}
#: Task.code of a follow-up Task.
ILLNESS_POVERTY_TASK_SYSTEM = f"{NAMESPACE}/CodeSystem/illness-poverty-task"
#: Task.businessStatus: the case's stage (identified, verified, assisted, monitoring, closed,
#: rejected).
ILLNESS_POVERTY_STAGE_SYSTEM = f"{NAMESPACE}/CodeSystem/illness-poverty-case-stage"
#: The kinds of help a case records (medical assistance, serious-illness insurance...).
ILLNESS_POVERTY_ASSISTANCE_SYSTEM = f"{NAMESPACE}/CodeSystem/illness-poverty-assistance"
#: Task extension, repeated: one step of the follow-up (stage, time, who, note, help, reason).
ILLNESS_POVERTY_STEP_URL = f"{NAMESPACE}/StructureDefinition/illness-poverty-case-step"

#: Outbox topic of the registry feed: one message per illness-poverty flag change, keyed by
#: household so that a household's changes reach the registry in order.
REGISTRY_FLAG_TOPIC = "registry.flag"
