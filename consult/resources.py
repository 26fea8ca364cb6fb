"""The FHIR shapes of a consult, and how to read them.

A consult is a **ServiceRequest** (category SNOMED CT 11429006 "Consultation"; its id is
the consult's id), whose state is a **Task** (``focus`` = the ServiceRequest, ``owner`` =
the department asked, then the specialist who accepts). Accepting writes the **Consent**
that shares the patient's record with that specialist (identifier
``CONSULT_SYSTEM|<consult id>``); a scheduled call is an **Appointment** based on the
ServiceRequest; the call is an **Encounter** of class ``VR`` (virtual) based on it; the
specialist's opinion is a **Composition** (LOINC 11488-4 "Consult note", sections
"Conclusion" and "Recommendations") whose ``encounter`` is that Encounter, named in the
Task's ``output``. People invited into the call are the participants of the consult's
**CareTeam** (identifier ``CONSULT_SYSTEM|<consult id>``). The patient's agreement to the
call being recorded is a second **Consent** of the consult (the same identifier, category
:data:`RECORDING_CONSENT`, ``provision.data`` naming the ServiceRequest), recorded by the
requesting clinic; it ends with the consult as the sharing one does.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from typing import Any

from health.core.clock import fhir_instant
from health.core.naming import CONSULT_SYSTEM, CONSULTATION_CATEGORY, NAMESPACE, SNOMED

LOINC = "http://loinc.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
#: Consent.category of a patient's consent to the recording of a consult: the consult's
#: Consent (its identifier) with it, active, provision ``permit`` whose period covers now,
#: ``provision.data`` naming the consult's ServiceRequest.
RECORDING_CONSENT = {
    "system": f"{NAMESPACE}/CodeSystem/consent-category",
    "code": "consult-recording",
    "display": "远程会诊录像同意 consent to recording a remote consult",
}

#: Task.status of a consult, and where each may go.
REQUESTED, ACCEPTED, IN_PROGRESS = "requested", "accepted", "in-progress"
COMPLETED, CANCELLED, REJECTED = "completed", "cancelled", "rejected"
TRANSITIONS: dict[str, frozenset[str]] = {
    REQUESTED: frozenset({ACCEPTED, REJECTED, CANCELLED}),
    ACCEPTED: frozenset({IN_PROGRESS, CANCELLED}),
    IN_PROGRESS: frozenset({COMPLETED}),
}
OPEN_STATES = frozenset({REQUESTED, ACCEPTED, IN_PROGRESS})
#: The ServiceRequest's status while its Task is in each state.
REQUEST_STATUS = {
    REQUESTED: "active",
    ACCEPTED: "active",
    IN_PROGRESS: "active",
    COMPLETED: "completed",
    CANCELLED: "revoked",
    REJECTED: "revoked",
}
#: FHIR request priorities, most pressing first (the queue's order).
PRIORITIES = ("stat", "asap", "urgent", "routine")
PRIORITY_RANK = {p: n for n, p in enumerate(PRIORITIES)}
#: The call holds four people: the requester, the specialist and two invited.
MAX_INVITED = 2
#: A report of a completed consult.
REPORT_TYPES = ("Composition", "DiagnosticReport")
CONSULT_NOTE = {"system": LOINC, "code": "11488-4", "display": "Consult note"}
CONCLUSION_SECTION = {"system": LOINC, "code": "55110-1", "display": "Conclusions Document"}
RECOMMENDATION_SECTION = {"system": LOINC, "code": "18776-5", "display": "Plan of care note"}


def is_consult_request(resource: dict[str, Any] | None) -> bool:
    if not resource or resource.get("resourceType") != "ServiceRequest":
        return False
    return any(
        coding.get("system") == SNOMED and coding.get("code") == CONSULTATION_CATEGORY["code"]
        for concept in resource.get("category") or []
        for coding in concept.get("coding") or []
    )


def reference(resource_type: str, resource_id: str, display: str | None = None) -> dict[str, str]:
    ref = {"reference": f"{resource_type}/{resource_id}"}
    if display:
        ref["display"] = display
    return ref


def split_reference(value: Any) -> tuple[str, str] | None:
    """``("Practitioner", "9")`` of a Reference (or its string), if it is a local one."""
    text = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(text, str):
        return None
    parts = text.split("/")
    if len(parts) != 2 or not parts[0][:1].isupper() or not parts[1]:
        return None
    return parts[0], parts[1]


def reference_text(value: Any) -> str | None:
    found = split_reference(value)
    return f"{found[0]}/{found[1]}" if found else None


def consult_identifier(consult_id: str) -> dict[str, str]:
    return {"system": CONSULT_SYSTEM, "value": consult_id}


def consult_of_identifiers(resource: dict[str, Any]) -> str | None:
    for identifier in resource.get("identifier") or []:
        if identifier.get("system") == CONSULT_SYSTEM and identifier.get("value"):
            return str(identifier["value"])
    return None


def concept_text(concept: Any) -> str:
    """What a CodeableConcept says, for people: its text, else its first display or code."""
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if coding.get("display") or coding.get("code"):
            return str(coding.get("display") or coding.get("code"))
    return ""


def reason_text(request: dict[str, Any]) -> str:
    reasons = [concept_text(c) for c in request.get("reasonCode") or []]
    notes = [str(n.get("text", "")) for n in request.get("note") or []]
    return "；".join(t for t in [*reasons, *notes] if t)


def narrative(text: str) -> dict[str, str]:
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in text.splitlines() if line)
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{paragraphs or "<p></p>"}</div>',
    }


def service_request(
    *,
    patient: dict[str, str],
    requester: dict[str, str],
    performer: dict[str, str],
    priority: str,
    reason: str,
    reason_code: dict[str, str] | None,
    supporting_info: list[dict[str, str]],
    note: str | None,
    occurrence: dt.datetime | None,
    authored: dt.datetime,
) -> dict[str, Any]:
    concept: dict[str, Any] = {"text": reason}
    if reason_code:
        concept["coding"] = [reason_code]
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "category": [{"coding": [dict(CONSULTATION_CATEGORY)], "text": "远程会诊"}],
        "code": {"coding": [dict(CONSULTATION_CATEGORY)], "text": "远程会诊"},
        "priority": priority,
        "subject": patient,
        "authoredOn": fhir_instant(authored),
        "requester": requester,
        "performer": [performer],
        "reasonCode": [concept],
    }
    if supporting_info:
        request["supportingInfo"] = supporting_info
    if note:
        request["note"] = [{"text": note}]
    if occurrence is not None:
        request["occurrenceDateTime"] = fhir_instant(occurrence)
    return request


def task(
    *,
    request_ref: str,
    patient: dict[str, str],
    requester: dict[str, str],
    owner: dict[str, str],
    priority: str,
    authored: dt.datetime,
) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": REQUESTED,
        "intent": "order",
        "priority": priority,
        "code": {"coding": [{"system": TASK_CODE, "code": "fulfill"}]},
        "focus": {"reference": request_ref},
        "for": patient,
        "authoredOn": fhir_instant(authored),
        "lastModified": fhir_instant(authored),
        "requester": requester,
        "owner": owner,
    }


def consent(
    *,
    consult_id: str,
    patient: dict[str, Any],
    specialist: str,
    organization: str | None,
    start: dt.datetime,
) -> dict[str, Any]:
    shared: dict[str, Any] = {
        "resourceType": "Consent",
        "identifier": [consult_identifier(consult_id)],
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {"coding": [{"system": LOINC, "code": "59284-0", "display": "Patient Consent"}]}
        ],
        "patient": {"reference": patient["reference"]},
        "dateTime": fhir_instant(start),
        "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
        "provision": {
            "type": "permit",
            "period": {"start": fhir_instant(start)},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                                "code": "PROV",
                            }
                        ]
                    },
                    "reference": {"reference": f"Practitioner/{specialist}"},
                }
            ],
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
        },
    }
    if organization:
        shared["organization"] = [{"reference": f"Organization/{organization}"}]
    return shared


def is_recording_consent(resource: dict[str, Any] | None) -> bool:
    """Whether a Consent is a patient's consent to recording (not the record's sharing)."""
    return any(
        coding.get("system") == RECORDING_CONSENT["system"]
        and coding.get("code") == RECORDING_CONSENT["code"]
        for concept in (resource or {}).get("category") or []
        for coding in concept.get("coding") or []
    )


def recording_consent(
    *, consult_id: str, patient: dict[str, Any], organization: str | None, start: dt.datetime
) -> dict[str, Any]:
    """The patient's consent, given to the requesting clinic, to recording this consult."""
    agreed: dict[str, Any] = {
        "resourceType": "Consent",
        "identifier": [consult_identifier(consult_id)],
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [dict(RECORDING_CONSENT)]}],
        "patient": {"reference": patient["reference"]},
        "dateTime": fhir_instant(start),
        "provision": {
            "type": "permit",
            "period": {"start": fhir_instant(start)},
            "action": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                            "code": "collect",
                        }
                    ]
                }
            ],
            "data": [
                {"meaning": "related", "reference": {"reference": f"ServiceRequest/{consult_id}"}}
            ],
        },
    }
    if organization:
        agreed["organization"] = [{"reference": f"Organization/{organization}"}]
    return agreed


def encounter(
    *,
    consult_id: str,
    request: dict[str, Any],
    participants: list[tuple[str, str]],
    appointment: str | None,
    start: dt.datetime,
) -> dict[str, Any]:
    """The call's Encounter; ``participants`` are (participation code, reference)."""
    visit: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "in-progress",
        "class": {"system": ACT_CODE, "code": "VR", "display": "virtual"},
        "type": [{"coding": [dict(CONSULTATION_CATEGORY)], "text": "远程会诊"}],
        "subject": {"reference": request["subject"]["reference"]},
        "basedOn": [{"reference": f"ServiceRequest/{consult_id}"}],
        "participant": [
            {
                "type": [{"coding": [{"system": PARTICIPATION_TYPE, "code": code}]}],
                "individual": {"reference": ref},
            }
            for code, ref in participants
        ],
        "period": {"start": fhir_instant(start)},
    }
    if request.get("reasonCode"):
        visit["reasonCode"] = request["reasonCode"]
    performer = split_reference((request.get("performer") or [None])[0])
    if performer and performer[0] == "Organization":
        visit["serviceProvider"] = {"reference": f"Organization/{performer[1]}"}
    if appointment:
        visit["appointment"] = [{"reference": appointment}]
    return visit


def appointment(
    *,
    consult_id: str,
    request: dict[str, Any],
    people: list[str],
    start: dt.datetime,
    minutes: int,
) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "serviceCategory": [{"coding": [dict(CONSULTATION_CATEGORY)], "text": "远程会诊"}],
        "appointmentType": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0276",
                    "code": "ROUTINE",
                }
            ],
            "text": "视频会诊",
        },
        "basedOn": [{"reference": f"ServiceRequest/{consult_id}"}],
        "start": fhir_instant(start),
        "end": fhir_instant(start + dt.timedelta(minutes=minutes)),
        "minutesDuration": minutes,
        "participant": [
            {"actor": {"reference": ref}, "required": "required", "status": "accepted"}
            for ref in [request["subject"]["reference"], *people]
        ],
    }


def care_team(
    *, consult_id: str, request: dict[str, Any], members: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "resourceType": "CareTeam",
        "identifier": [consult_identifier(consult_id)],
        "status": "active",
        "name": "远程会诊受邀人员",
        "subject": {"reference": request["subject"]["reference"]},
        "participant": [
            {
                "role": [{"coding": [{"system": PARTICIPATION_TYPE, "code": "PART"}]}],
                "member": member,
            }
            for member in members
        ],
    }


def composition(
    *,
    request: dict[str, Any],
    encounter_ref: str,
    author: dict[str, str],
    conclusion: str,
    recommendations: str,
    moment: dt.datetime,
    consult_id: str,
) -> dict[str, Any]:
    return {
        "resourceType": "Composition",
        "status": "final",
        "type": {"coding": [CONSULT_NOTE], "text": "会诊意见"},
        "category": [{"coding": [dict(CONSULTATION_CATEGORY)]}],
        "subject": {"reference": request["subject"]["reference"]},
        "encounter": {"reference": encounter_ref},
        "date": fhir_instant(moment),
        "author": [author],
        "title": "远程会诊意见",
        "event": [{"detail": [{"reference": f"ServiceRequest/{consult_id}"}]}],
        "section": [
            {
                "title": "会诊结论",
                "code": {"coding": [CONCLUSION_SECTION]},
                "text": narrative(conclusion),
            },
            {
                "title": "处理建议",
                "code": {"coding": [RECOMMENDATION_SECTION]},
                "text": narrative(recommendations),
            },
        ],
    }


def section_text(report: dict[str, Any], code: str) -> str:
    """The plain text of a Composition section (by LOINC code), for people."""
    for section in report.get("section") or []:
        codes = {c.get("code") for c in (section.get("code") or {}).get("coding") or []}
        if code in codes:
            div = (section.get("text") or {}).get("div", "")
            lines = re.findall(r"<p>(.*?)</p>", div, flags=re.S)
            return "\n".join(html.unescape(line) for line in lines)
    return ""
