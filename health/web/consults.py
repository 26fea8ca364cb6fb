"""The consult's pages: the request form (from a patient's chart: ``/consult/new?patient=ID``),
the department's queue, the consult itself (its state live, and what each side may do
next), the specialist's view of the shared record, the report form and the call.

Every page acts through :class:`consult.service.ConsultService` — the same FHIR writes, rules
and audit trail as the JSON API and ``/fhir``. Forms carry the session's CSRF token.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from consult.endpoints import ConsultContext, parse_local_time
from consult.resources import PRIORITIES, reference_text, split_reference
from consult.service import Consult, ConsultInputError, NewConsult
from consult.vitals import KINDS
from consult.workflow import Party
from health.auth.gate import RequestCaller
from health.core.naming import ORGANIZATION_KIND_SYSTEM, SPECIALTY_SYSTEM
from health.web.signed_in import SignedIn, signed_in
from records.api.service import RecordsContext, resources_of
from records.interactions import FhirRequest
from records.outcome import FhirError
from records.vitals import VITALS

router = APIRouter(include_in_schema=False)

CHINA = dt.timezone(dt.timedelta(hours=8))
#: What the record page shows of a patient's record, in this order.
RECORD_SECTIONS = (
    "Condition",
    "AllergyIntolerance",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "DiagnosticReport",
    "Composition",
    "Encounter",
    "Procedure",
    "Immunization",
    "DocumentReference",
)


def local_time(value: str | None) -> str:
    """An instant as people in Ningxia read it: ``2026-12-01 18:30`` (China time)."""
    if not value:
        return ""
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.astimezone(CHINA).strftime("%Y-%m-%d %H:%M")


def _context(request: Request) -> ConsultContext:
    context: ConsultContext = request.app.state.consult
    return context


def _base(request: Request) -> str:
    records: RecordsContext = request.app.state.records
    return records.fhir_base(request)


async def _signed_in(request: Request) -> tuple[SignedIn, Party]:
    """The page's signed-in person (a login redirect if nobody is) and their consult party."""
    me = await signed_in(request)
    return me, await _context(request).identify(me.caller)


def _page(person: SignedIn, template: str, /, **context: Any) -> Response:
    return person.render(template, local_time=local_time, **context)


def _error_page(me: SignedIn, status: int, message: str, back: str) -> Response:
    return me.message(me.gettext("That did not work"), message, status=status, back=back)


def _message_of(error: FhirError | ConsultInputError) -> tuple[int, str]:
    if isinstance(error, ConsultInputError):
        return error.status, error.message
    return error.status, str(error)


# -- lists ---------------------------------------------------------------------------------


@router.get("/consult")
async def consult_list(request: Request) -> Response:
    me, _party = await _signed_in(request)
    caller = me.caller
    consults = await _context(request).service.list_visible(caller, base_url=_base(request))
    return _page(me, "consult/list.html", consults=[c.summary() for c in consults])


@router.get("/consult/queue")
async def consult_queue(request: Request) -> Response:
    me, party = await _signed_in(request)
    caller = me.caller
    _ = me.gettext
    if party.role != "specialist":
        return _error_page(me, 403, _("The queue is for specialists."), "/")
    queue = await _context(request).service.queue(caller, party, base_url=_base(request))
    now = dt.datetime.now(dt.UTC)

    def waited(consult: Consult) -> int:
        since = consult.summary()["requestedAt"]
        try:
            moment = dt.datetime.fromisoformat(str(since).replace("Z", "+00:00"))
        except ValueError:
            return 0
        return max(0, int((now - moment).total_seconds() // 60))

    return _page(
        me,
        "consult/queue.html",
        waiting=[{**c.summary(), "waited": waited(c)} for c in queue["waiting"]],
        mine=[c.summary() for c in queue["mine"]],
    )


# -- the request form ----------------------------------------------------------------------


async def _departments(me: SignedIn) -> list[dict[str, str]]:
    found = await me.search(
        "Organization",
        [
            ("type", f"{ORGANIZATION_KIND_SYSTEM}|department"),
            ("_include", "Organization:partof"),
            ("_count", "200"),
        ],
    )
    hospitals = {o["id"]: o.get("name", "") for o in found}
    departments = []
    for organization in found:
        parent = split_reference(organization.get("partOf"))
        if parent is None:
            continue
        departments.append(
            {
                "id": organization["id"],
                "name": organization.get("name", ""),
                "hospital": hospitals.get(parent[1], ""),
            }
        )
    return sorted(departments, key=lambda d: (d["hospital"], d["name"]))


async def _specialists(me: SignedIn) -> list[dict[str, str]]:
    roles = await me.search(
        "PractitionerRole",
        [
            ("specialty:not", f"{SPECIALTY_SYSTEM}|general-practice"),
            ("_include", "PractitionerRole:practitioner"),
            ("_include", "PractitionerRole:organization"),
            ("_count", "500"),
        ],
    )
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in roles}
    people = []
    for role in (r for r in roles if r["resourceType"] == "PractitionerRole"):
        practitioner = by_ref.get(reference_text(role.get("practitioner")) or "")
        organization = by_ref.get(reference_text(role.get("organization")) or "")
        if practitioner is None or organization is None or not role.get("specialty"):
            continue
        names = practitioner.get("name") or [{}]
        people.append(
            {
                "id": practitioner["id"],
                "name": names[0].get("text", practitioner["id"]),
                "department": organization.get("name", ""),
            }
        )
    return sorted(people, key=lambda p: (p["department"], p["name"]))


async def _shareable(me: SignedIn, patient: str) -> list[dict[str, str]]:
    """The patient's recent records the doctor may attach to the request."""
    items = []
    for res_type, label_of in (
        ("Condition", lambda r: _concept(r.get("code"))),
        ("Observation", _observation_text),
        ("DiagnosticReport", lambda r: _concept(r.get("code")) + " " + r.get("conclusion", "")),
        ("MedicationRequest", lambda r: _concept(r.get("medicationCodeableConcept"))),
    ):
        found = await me.search(
            res_type,
            [("patient", f"Patient/{patient}"), ("_count", "20"), ("_sort", "-_lastUpdated")],
        )
        for resource in found:
            items.append(
                {
                    "reference": f"{res_type}/{resource['id']}",
                    "type": res_type,
                    "text": label_of(resource).strip(),
                }
            )
    return items


def _concept(concept: Any) -> str:
    from consult.resources import concept_text

    return concept_text(concept)


def _observation_text(observation: dict[str, Any]) -> str:
    value = observation.get("valueQuantity") or {}
    amount = f"{value.get('value', '')} {value.get('unit', '')}".strip()
    return f"{_concept(observation.get('code'))} {amount}"


@router.get("/consult/new")
async def new_consult_form(request: Request, patient: str = "") -> Response:
    return await _new_form(await signed_in(request), patient=patient)


async def _new_form(
    me: SignedIn,
    *,
    patient: str,
    error: str | None = None,
    error_field: str | None = None,
    status: int = 200,
    values: dict[str, Any] | None = None,
) -> Response:
    _ = me.gettext
    record = None
    if patient:
        try:
            read = await me.perform(FhirRequest("GET", f"Patient/{patient}"))
            record = resources_of(read)[0]
        except FhirError:
            record = None
    if record is None:
        return _error_page(me, 404, _("Open the request form from a patient in your care."), "/")
    names = record.get("name") or [{}]
    return _page(
        me,
        "consult/new.html",
        status=status,
        patient={
            "id": patient,
            "name": names[0].get("text", patient),
            "gender": record.get("gender"),
            "birthDate": record.get("birthDate"),
        },
        departments=await _departments(me),
        specialists=await _specialists(me),
        shareable=await _shareable(me, patient),
        priorities=PRIORITIES,
        error=error,
        error_field=error_field,
        values=values or {},
    )


@router.post("/consult/new")
async def new_consult(request: Request) -> Response:
    me, party = await _signed_in(request)
    caller = me.caller
    form = await me.form()
    _ = me.gettext
    patient = str(form.get("patient") or "")
    target = str(form.get("target") or "")
    values = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    kind, _sep, ident = target.partition(":")
    try:
        if form.get("agreed") != "yes":
            raise ConsultInputError("agreed", _("The patient must agree to share the record."))
        preferred = parse_local_time(str(form.get("preferred_time") or ""))
        consult = await _context(request).service.create(
            caller,
            party,
            NewConsult(
                patient=patient,
                department=ident if kind == "department" else None,
                specialist=ident if kind == "specialist" else None,
                priority=str(form.get("priority") or "routine"),
                reason=str(form.get("reason") or ""),
                reason_code=str(form.get("reason_code") or "").strip() or None,
                supporting_info=[str(v) for v in form.getlist("supporting")],
                note=str(form.get("note") or "").strip() or None,
                preferred_time=preferred,
            ),
            base_url=_base(request),
        )
    except ValueError as error:
        field = error.field if isinstance(error, ConsultInputError) else "preferred_time"
        return await _new_form(
            me,
            patient=patient,
            error=str(error),
            error_field=field,
            status=400,
            values=values,
        )
    except FhirError as error:
        return await _new_form(
            me,
            patient=patient,
            error=str(error),
            status=error.status,
            values=values,
        )
    return RedirectResponse(f"/consult/{consult.id}", status_code=303)


# -- one consult ---------------------------------------------------------------------------


async def _load(request: Request, caller: RequestCaller, consult_id: str) -> Consult | None:
    try:
        return await _context(request).service.load(caller, consult_id, base_url=_base(request))
    except FhirError:
        return None


async def _consult_of(me: SignedIn, consult_id: str) -> Consult:
    """The consult, or PageRefused with a 404 page if it is none of the person's."""
    consult = await _load(me.request, me.caller, consult_id)
    if consult is None:
        _ = me.gettext
        raise me.not_found(
            _("That did not work"), _("No consult of yours has this number."), "/consult"
        )
    return consult


@router.get("/consult/{consult_id}")
async def consult_page(request: Request, consult_id: str) -> Response:
    me, party = await _signed_in(request)
    _ = me.gettext
    consult = await _consult_of(me, consult_id)
    service = _context(request).service
    summary = consult.summary()
    requester_practitioner, requester_org = consult.requester()
    requests = (
        party.practitioner is not None and party.practitioner == requester_practitioner
    ) or (party.organization is not None and party.organization == requester_org)
    owns = party.practitioner is not None and party.practitioner == consult.owner_practitioner
    performs = party.role == "specialist" and consult.performer in (
        ("Organization", party.organization),
        ("Practitioner", party.practitioner),
    )
    invitable = []
    if consult.status in ("accepted", "in-progress") and (requests or owns):
        invitable = [
            p
            for p in await _specialists(me) + await _township_doctors(me, consult)
            if p["id"] not in consult.invited and p["id"] != consult.owner_practitioner
        ]
    return _page(
        me,
        "consult/consult.html",
        consult=summary,
        can={
            "accept": performs and consult.status == "requested",
            "reject": performs and consult.status == "requested",
            "cancel": (requests and consult.status in ("requested", "accepted"))
            or (owns and consult.status == "accepted"),
            "schedule": (requests or owns) and consult.status == "accepted",
            "no_show": (requests or owns) and summary["state"] == "scheduled",
            "invite": bool(invitable) and len(consult.invited) < 2,
            "call": service.participant(consult, party) is not None,
            "record": owns and consult.status in ("accepted", "in-progress", "completed"),
            "report": owns and consult.status in ("accepted", "in-progress"),
            "consent_recording": requests
            and consult.status in ("requested", "accepted", "in-progress"),
        },
        invitable=invitable,
    )


async def _township_doctors(me: SignedIn, consult: Consult) -> list[dict[str, str]]:
    """The doctors of the requesting clinic's township centre (to invite into the call)."""
    _practitioner, clinic = consult.requester()
    if clinic is None:
        return []
    found = await me.search("Organization", [("_id", clinic)])
    parent = split_reference((found[0] if found else {}).get("partOf"))
    if parent is None:
        return []
    roles = await me.search(
        "PractitionerRole",
        [
            ("organization", f"Organization/{parent[1]}"),
            ("_include", "PractitionerRole:practitioner"),
        ],
    )
    centre = await me.search("Organization", [("_id", parent[1])])
    where = centre[0].get("name", "") if centre else ""
    return [
        {
            "id": p["id"],
            "name": (p.get("name") or [{}])[0].get("text", p["id"]),
            "department": where,
        }
        for p in roles
        if p["resourceType"] == "Practitioner"
    ]


@router.post("/consult/{consult_id}/{action}")
async def consult_action(request: Request, consult_id: str, action: str) -> Response:
    me, party = await _signed_in(request)
    caller = me.caller
    form = await me.form()
    _ = me.gettext
    service = _context(request).service
    base = _base(request)
    back = f"/consult/{consult_id}"
    try:
        if action == "accept":
            start = parse_local_time(str(form.get("start") or ""))
            await service.accept(
                caller, party, consult_id, base_url=base, start=start, minutes=_minutes(form)
            )
        elif action == "reject":
            await service.reject(
                caller, party, consult_id, reason=str(form.get("reason") or ""), base_url=base
            )
        elif action == "cancel":
            await service.cancel(
                caller, party, consult_id, reason=str(form.get("reason") or ""), base_url=base
            )
        elif action == "schedule":
            start = parse_local_time(str(form.get("start") or ""))
            if start is None:
                raise ConsultInputError("start", _("Choose a time for the call."))
            await service.schedule(
                caller, party, consult_id, start=start, minutes=_minutes(form), base_url=base
            )
        elif action == "no-show":
            await service.no_show(caller, party, consult_id, base_url=base)
        elif action == "invite":
            await service.invite(
                caller,
                party,
                consult_id,
                practitioner=str(form.get("practitioner") or ""),
                base_url=base,
            )
        elif action == "recording-consent":
            await service.consent_to_recording(
                caller, party, consult_id, agreed=form.get("agreed") == "yes", base_url=base
            )
        elif action == "report":
            await service.report(
                caller,
                party,
                consult_id,
                conclusion=str(form.get("conclusion") or ""),
                recommendations=str(form.get("recommendations") or ""),
                base_url=base,
            )
        else:
            return _error_page(me, 404, _("There is no such step."), back)
    except ValueError as error:
        status, message = (
            (error.status, error.message)
            if isinstance(error, ConsultInputError)
            else (400, str(error))
        )
        return _error_page(me, status, message, back)
    except FhirError as error:
        status, message = _message_of(error)
        if status == 412:
            message = _("Someone acted on this consult at the same moment; look again and retry.")
        return _error_page(me, status, message, back)
    return RedirectResponse(back, status_code=303)


def _minutes(form: Any) -> int:
    try:
        return int(str(form.get("minutes") or "30"))
    except ValueError:
        raise ConsultInputError("minutes", "minutes: a whole number") from None


# -- the specialist's view, the report, the call -------------------------------------------


@router.get("/consult/{consult_id}/record")
async def shared_record(request: Request, consult_id: str) -> Response:
    me, _party = await _signed_in(request)
    _ = me.gettext
    consult = await _consult_of(me, consult_id)
    try:
        result = await me.perform(
            FhirRequest("GET", f"Patient/{consult.patient_id}/$everything", query="_count=500")
        )
    except FhirError:
        return _error_page(
            me,
            403,
            _("The record is shared with the specialist who accepted the consult, while it lasts."),
            f"/consult/{consult_id}",
        )
    found = resources_of(result)
    patient = next((r for r in found if r["resourceType"] == "Patient"), {})
    attached = set(consult.summary()["supportingInfo"])
    sections = []
    for res_type in RECORD_SECTIONS:
        items = [
            {
                "reference": f"{r['resourceType']}/{r['id']}",
                "text": _describe(r),
                "media": _playable(r),
                "when": local_time(_when(r)),
                "attached": f"{r['resourceType']}/{r['id']}" in attached,
            }
            for r in found
            if r["resourceType"] == res_type
        ]
        items.sort(key=lambda i: (not i["attached"], i["when"]), reverse=False)
        if items:
            sections.append({"type": res_type, "items": items})
    return _page(
        me,
        "consult/record.html",
        consult=consult.summary(),
        patient={
            "name": (patient.get("name") or [{}])[0].get("text", ""),
            "gender": patient.get("gender"),
            "birthDate": patient.get("birthDate"),
        },
        sections=sections,
    )


def _when(resource: dict[str, Any]) -> str | None:
    for key in (
        "effectiveDateTime",
        "recordedDate",
        "onsetDateTime",
        "authoredOn",
        "date",
        "issued",
    ):
        if resource.get(key):
            return str(resource[key])
    period = resource.get("period") or {}
    return period.get("start") or (resource.get("meta") or {}).get("lastUpdated")


def _playable(resource: dict[str, Any]) -> list[dict[str, str]]:
    """A document's audio and video files (a recorded call), to play on the page."""
    if resource["resourceType"] != "DocumentReference":
        return []
    found = []
    for content in resource.get("content") or []:
        attachment = content.get("attachment") or {}
        kind = str(attachment.get("contentType") or "").split("/")[0]
        url = str(attachment.get("url") or "")
        # Only our own files (a relative URL): a page never embeds a link a client wrote.
        if kind in ("audio", "video") and url.startswith("/"):
            found.append(
                {
                    "kind": kind,
                    "url": url,
                    "type": attachment["contentType"],
                    "title": str(attachment.get("title") or ""),
                }
            )
    return found


def _describe(resource: dict[str, Any]) -> str:
    kind = resource["resourceType"]
    if kind == "Observation":
        return _observation_text(resource)
    if kind in ("MedicationRequest", "MedicationStatement"):
        return _concept(resource.get("medicationCodeableConcept"))
    if kind == "DiagnosticReport":
        return f"{_concept(resource.get('code'))} {resource.get('conclusion', '')}".strip()
    if kind == "Composition":
        return str(resource.get("title", ""))
    if kind == "Encounter":
        types = resource.get("type") or [resource.get("class") or {}]
        return _concept(types[0]) or str((resource.get("class") or {}).get("code", ""))
    return _concept(resource.get("code")) or kind


@router.get("/consult/{consult_id}/report")
async def report_form(request: Request, consult_id: str) -> Response:
    me, _party = await _signed_in(request)
    _ = me.gettext
    consult = await _consult_of(me, consult_id)
    return _page(me, "consult/report.html", consult=consult.summary())


@router.get("/consult/{consult_id}/call")
async def call_page(request: Request, consult_id: str) -> Response:
    me, party = await _signed_in(request)
    caller = me.caller
    _ = me.gettext
    consult = await _load(request, caller, consult_id)
    if consult is None or _context(request).service.participant(consult, party) is None:
        return _error_page(
            me,
            403,
            _(
                "This call is for the consult's doctors and the people they invited, once it is accepted."  # noqa: E501
            ),
            f"/consult/{consult_id}",
        )
    return _page(
        me,
        "consult/call.html",
        consult=consult.summary(),
        me=party.username,
        reading_kinds=_reading_kinds(),
        max_file_mib=f"{request.app.state.settings.consult_max_file_bytes / 2**20:g}",
        reading_decimals={
            name: max(vital.decimals for _field, vital in kind.fields)
            for name, kind in KINDS.items()
        },
        unit_labels={
            **{u.ucum: u.label for kind in KINDS.values() for u in kind.units},
            **{v.ucum: v.unit_text for v in VITALS.values()},
        },
    )


def _reading_kinds() -> list[dict[str, Any]]:
    """What the call page's reading form offers: ``consult.vitals``' kinds and their units."""
    return [
        {
            "key": name,
            "fields": [{"name": field, "vital": vital.key} for field, vital in kind.fields],
            "units": [{"ucum": unit.ucum, "label": unit.label} for unit in kind.units],
        }
        for name, kind in KINDS.items()
    ]
