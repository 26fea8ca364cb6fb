"""Finding and registering patients, and their household membership.

* ``/patients?q=``: one search box for a name in Chinese (``马秀``), its pinyin or initials
  (``maxiu``, ``mxl``), a whole resident ID or a phone number; the page's script asks
  ``/patients/results?q=`` as the person types and swaps the list in. Resident IDs and phone
  numbers are exact identifiers, so they match once complete; the list says so meanwhile.
* ``/patients/new``: registration. The resident ID is checked as GB 11643 defines it
  (shape, region, birth date, check character); the birth date and sex it encodes fill the
  form and are cross-checked against what was entered. Before anything is written the
  patient's existing records are looked for — the same resident ID (which stops the
  registration and offers the record) or the same name and birth date (which offers the
  records and asks whether this is someone else). A resident ID registered at a clinic the
  doctor does not serve stops it too (``records.resident_ids``), without saying where. The
  Patient, their 城乡居民医保 Coverage and their household change are one transaction.
* ``/patients/{id}/household``: the household (户, a FHIR Group with 户编号 and each
  member's relationship to the head, as ``health.demo.households`` defines them): join one
  by its number, start one as its head, change the relationship, leave.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from health.core.naming import (
    HOUSEHOLD_NUMBER_SYSTEM,
    HOUSEHOLD_RELATIONSHIP_URL,
    REGISTRY_STATUSES,
)
from health.demo.households import RELATIONSHIPS
from health.web.display import (
    age_on,
    masked_id,
    name_of,
    parse_date,
    phone_of,
    reference_id,
    resident_id_of,
    today,
)
from health.web.signed_in import (
    Resource,
    SignedIn,
    created_id,
    field_errors,
    signed_in,
)
from integrations.household_registry import (
    registry_status_characteristic,
)
from integrations.household_registry import relationship_extension as registry_relationship
from records.outcome import FhirError
from records.validation.resident_id import RESIDENT_ID_SYSTEM, ResidentIdError, parse_resident_id

router = APIRouter(include_in_schema=False)

DOCTORS = ("village_doctor", "township_doctor", "specialist")
#: Who registers patients and keeps households: the clinics that manage them.
CLINIC_DOCTORS = ("village_doctor", "township_doctor")
_HL7_ORGANIZATION_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
COMPOUND_SURNAMES = (
    "欧阳 司马 上官 诸葛 东方 皇甫 尉迟 公孙 慕容 长孙 宇文 司徒 夏侯 轩辕 令狐 钟离 "
    "闻人 万俟 澹台 西门 南宫 呼延 端木 独孤"
).split()
_NAME = re.compile(r"^[\u3400-\u9fffA-Za-z·•\s]{2,30}$")
_MOBILE = re.compile(r"^1[3-9]\d{9}$")
_LANDLINE = re.compile(r"^0\d{2,3}-?\d{7,8}$")
_HOUSEHOLD_NUMBER = re.compile(r"^\d{18}$")
_ID_LIKE = re.compile(r"^\d{6,17}[0-9Xx]?$")


def split_name(text: str) -> tuple[str, str]:
    """(family, given): a compound surname (欧阳) takes two characters, any other one."""
    compact = re.sub(r"\s", "", text)
    if "·" in compact or "•" in compact:  # 阿依古丽·买买提: no Han surname to split off
        return "", compact
    for surname in COMPOUND_SURNAMES:
        if compact.startswith(surname) and len(compact) > len(surname):
            return surname, compact[len(surname) :]
    return compact[:1], compact[1:]


# -- search --------------------------------------------------------------------------------


@dataclass
class PatientRow:
    id: str
    name: str
    gender: str
    birth_date: str
    age: int | None
    resident_id: str
    phone: str
    clinic: str


def patient_row(patient: Resource) -> PatientRow:
    birth = parse_date(patient.get("birthDate"))
    return PatientRow(
        id=str(patient.get("id")),
        name=name_of(patient),
        gender=str(patient.get("gender") or "unknown"),
        birth_date=str(patient.get("birthDate") or ""),
        age=age_on(birth, today()),
        resident_id=masked_id(resident_id_of(patient)),
        phone=phone_of(patient),
        clinic=str((patient.get("managingOrganization") or {}).get("display") or ""),
    )


@dataclass
class SearchOutcome:
    rows: list[PatientRow] = field(default_factory=list)
    #: ``incomplete-id``, ``invalid-id``, ``short`` or "" — what the list says when empty.
    hint: str = ""


async def find_patients(me: SignedIn, query: str, *, count: int = 20) -> SearchOutcome:
    text = query.strip()
    if not text:
        return SearchOutcome()
    compact = re.sub(r"[\s-]", "", text)
    params: list[tuple[str, str]]
    if re.fullmatch(r"\d{17}[0-9Xx]", compact):
        try:
            number = parse_resident_id(compact).number
        except ResidentIdError:
            return SearchOutcome(hint="invalid-id")
        params = [("identifier", f"{RESIDENT_ID_SYSTEM}|{number}")]
    elif _MOBILE.match(compact) or _LANDLINE.match(text.replace(" ", "")):
        spaced = text.replace(" ", "")
        params = [("telecom", compact if spaced == compact else f"{spaced},{compact}")]
    elif _ID_LIKE.match(compact):
        return SearchOutcome(hint="incomplete-id")
    elif re.search(r"[\u3400-\u9fff]", text):
        params = [("name", text)]
    elif re.fullmatch(r"[A-Za-z ]+", text):
        if len(compact) < 2:
            return SearchOutcome(hint="short")
        params = [("phonetic", text)]
    else:
        return SearchOutcome(hint="short")
    params.append(("_count", str(count)))
    found = await me.search("Patient", params)
    return SearchOutcome(rows=[patient_row(p) for p in found if p.get("resourceType") == "Patient"])


@router.get("/patients")
async def patients_page(request: Request, q: str = "") -> Response:
    me = await signed_in(request)
    me.require_role(*DOCTORS)
    outcome = await find_patients(me, q)
    return me.render("patients/search.html", q=q, outcome=outcome)


@router.get("/patients/results")
async def patient_results(request: Request, q: str = "") -> Response:
    """The result list alone, for the search box's script."""
    me = await signed_in(request)
    me.require_role(*DOCTORS)
    outcome = await find_patients(me, q)
    return me.render("patients/_results.html", q=q, outcome=outcome)


# -- registration --------------------------------------------------------------------------


async def clinics_of(me: SignedIn) -> list[Resource]:
    """The clinics a doctor may register patients at: her own, and for a township doctor
    the village clinics under her township centre."""
    organization = me.user.organization_id
    if not organization:
        return []
    own = await me.read("Organization", organization)
    clinics = [own] if own else []
    if me.role == "township_doctor":
        clinics += await me.search(
            "Organization", [("partof", f"Organization/{organization}"), ("_count", "200")]
        )
    return clinics


async def insurer_of(me: SignedIn) -> Resource | None:
    """The directory's medical-insurance agency (organization type ``pay``), if any."""
    found = await me.search(
        "Organization", [("type", f"{_HL7_ORGANIZATION_TYPE}|pay"), ("_count", "1")]
    )
    return found[0] if found else None


def coverage_for(patient_ref: str, name: str, resident_id: str, insurer: Resource) -> Resource:
    """城乡居民基本医疗保险 cover, as the demo households carry it."""
    return {
        "resourceType": "Coverage",
        "status": "active",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "PUBLICPOL",
                    "display": "public healthcare",
                }
            ],
            "text": "城乡居民基本医疗保险",
        },
        "subscriberId": resident_id,
        "beneficiary": {"reference": patient_ref, "display": name},
        "relationship": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                    "code": "self",
                }
            ]
        },
        "period": {"start": dt.date(today().year, 1, 1).isoformat()},
        "payor": [{"reference": f"Organization/{insurer['id']}", "display": insurer.get("name")}],
    }


@dataclass
class Registration:
    """What the registration form holds, and what is wrong with it."""

    name: str = ""
    resident_id: str = ""
    gender: str = ""
    birth_date: str = ""
    phone: str = ""
    address: str = ""
    clinic: str = ""
    household_number: str = ""
    relationship: str = ""
    registry_status: str = "ordinary"
    insured: bool = True
    different_person: bool = False
    errors: dict[str, str] = field(default_factory=dict)


def read_registration(form: Any, me: SignedIn) -> Registration:
    _ = me.gettext
    entry = Registration(
        name=re.sub(r"\s+", "", str(form.get("name") or "")),
        resident_id=re.sub(r"\s", "", str(form.get("resident_id") or "")).upper(),
        gender=str(form.get("gender") or ""),
        birth_date=str(form.get("birth_date") or "").strip(),
        phone=str(form.get("phone") or "").strip(),
        address=str(form.get("address") or "").strip(),
        clinic=str(form.get("clinic") or ""),
        household_number=re.sub(r"\s", "", str(form.get("household_number") or "")),
        relationship=str(form.get("relationship") or ""),
        registry_status=str(form.get("registry_status") or "ordinary"),
        insured=form.get("insured") == "yes",
        different_person=form.get("different_person") == "yes",
    )
    errors = entry.errors
    if not entry.name:
        errors["name"] = _("Enter the patient's name.")
    elif not _NAME.match(entry.name):
        errors["name"] = _("A name is 2 to 30 Chinese characters or letters, without digits.")
    resident = None
    if not entry.resident_id:
        errors["resident_id"] = _("Enter the 18-character resident ID.")
    else:
        try:
            resident = parse_resident_id(entry.resident_id)
        except ResidentIdError as error:
            reason = str(error)
            if "check character" in reason:
                errors["resident_id"] = _(
                    "The check character (the last) does not match: a digit was mistyped."
                )
            elif "18 characters" in reason:
                errors["resident_id"] = _("A resident ID has 18 characters.")
            elif "birth date" in reason:
                errors["resident_id"] = _("Characters 7 to 14 are not a real birth date.")
            elif "region" in reason:
                errors["resident_id"] = _("The first 6 digits name no region of China.")
            else:
                errors["resident_id"] = _("17 digits followed by a digit or X.")
    if resident is not None:
        entry.resident_id = resident.number
        if not entry.gender:
            entry.gender = resident.sex
        elif entry.gender != resident.sex:
            errors["gender"] = _("The resident ID is that of a %(sex)s.") % {
                "sex": _("man") if resident.sex == "male" else _("woman")
            }
        if not entry.birth_date:
            entry.birth_date = resident.birth_date.isoformat()
        elif entry.birth_date != resident.birth_date.isoformat():
            errors["birth_date"] = _("The resident ID gives the birth date %(date)s.") % {
                "date": resident.birth_date.isoformat()
            }
    if entry.gender not in ("male", "female"):
        errors.setdefault("gender", _("Choose the sex."))
    if parse_date(entry.birth_date) is None:
        errors.setdefault("birth_date", _("Enter the birth date as YYYY-MM-DD."))
    if entry.phone and not (
        _MOBILE.match(entry.phone) or _LANDLINE.match(entry.phone.replace(" ", ""))
    ):
        errors["phone"] = _("An 11-digit mobile number, or a landline such as 0951-1234567.")
    if len(entry.address) > 200:
        errors["address"] = _("At most 200 characters.")
    if entry.household_number:
        if not _HOUSEHOLD_NUMBER.match(entry.household_number):
            errors["household_number"] = _("A household number has 18 digits.")
        if entry.relationship not in RELATIONSHIPS:
            errors["relationship"] = _("Choose the relationship to the head of the household.")
        if entry.registry_status not in REGISTRY_STATUSES:
            entry.registry_status = "ordinary"
    return entry


async def duplicates_of(me: SignedIn, entry: Registration) -> tuple[list[PatientRow], str]:
    """Existing records of this person: (rows, ``same-id`` or ``same-name``)."""
    same_id = await me.search(
        "Patient", [("identifier", f"{RESIDENT_ID_SYSTEM}|{entry.resident_id}"), ("_count", "5")]
    )
    if same_id:
        return [patient_row(p) for p in same_id], "same-id"
    same_name = await me.search(
        "Patient",
        [("name:exact", entry.name), ("birthdate", entry.birth_date), ("_count", "10")],
    )
    same_name = [p for p in same_name if name_of(p) == entry.name]
    return [patient_row(p) for p in same_name], "same-name" if same_name else ""


def _form_context(entry: Registration, clinics: list[Resource], insurer: Resource | None) -> dict:
    return {
        "entry": entry,
        "clinics": [{"id": c["id"], "name": c.get("name", "")} for c in clinics],
        "relationships": list(RELATIONSHIPS),
        "registry_statuses": list(REGISTRY_STATUSES),
        "insurer": insurer,
    }


@router.get("/patients/new")
async def registration_form(request: Request) -> Response:
    me = await signed_in(request)
    me.require_role(*CLINIC_DOCTORS)
    clinics = await clinics_of(me)
    entry = Registration(clinic=clinics[0]["id"] if clinics else "")
    if clinics:
        entry.address = str(((clinics[0].get("address") or [{}])[0]).get("text") or "")
    return me.render(
        "patients/new.html",
        duplicates=[],
        duplicate_kind="",
        **_form_context(entry, clinics, await insurer_of(me)),
    )


async def _household(me: SignedIn, number: str) -> Resource | None:
    found = await me.search(
        "Group", [("identifier", f"{HOUSEHOLD_NUMBER_SYSTEM}|{number}"), ("_count", "1")]
    )
    return found[0] if found else None


def relationship_extension(relationship: str) -> dict[str, Any]:
    code, _display, text = RELATIONSHIPS[relationship]
    return registry_relationship(code, text)


def new_household(
    number: str, head_ref: str, head_name: str, clinic: Resource, status: str
) -> Resource:
    return {
        "resourceType": "Group",
        "identifier": [{"system": HOUSEHOLD_NUMBER_SYSTEM, "value": number}],
        "active": True,
        "type": "person",
        "actual": True,
        "code": {"text": "家庭户"},
        "name": f"{head_name}户",
        "quantity": 1,
        "managingEntity": {
            "reference": f"Organization/{clinic['id']}",
            "display": clinic.get("name"),
        },
        "characteristic": [registry_status_characteristic(status)],
        "member": [
            {
                "extension": [relationship_extension("head")],
                "entity": {"reference": head_ref, "display": head_name},
                "inactive": False,
            }
        ],
    }


def _version_of(resource: Resource) -> str:
    return str((resource.get("meta") or {}).get("versionId") or "")


def household_entry(group: Resource) -> Resource:
    """A transaction entry updating ``group``, refused if someone changed it meanwhile."""
    group["quantity"] = sum(1 for m in group.get("member") or [] if not m.get("inactive"))
    return {
        "resource": group,
        "request": {
            "method": "PUT",
            "url": f"Group/{group['id']}",
            "ifMatch": f'W/"{_version_of(group)}"',
        },
    }


@router.post("/patients/new")
async def register(request: Request) -> Response:
    me = await signed_in(request)
    me.require_role(*CLINIC_DOCTORS)
    _ = me.gettext
    form = await me.form()
    clinics = await clinics_of(me)
    insurer = await insurer_of(me)
    entry = read_registration(form, me)
    clinic = next((c for c in clinics if c["id"] == entry.clinic), None)
    if clinic is None:
        entry.errors["clinic"] = _("Choose one of your clinics.")

    def again(status: int, duplicates: list[PatientRow] | None = None, kind: str = "") -> Response:
        return me.render(
            "patients/new.html",
            status=status,
            duplicates=duplicates or [],
            duplicate_kind=kind,
            **_form_context(entry, clinics, insurer),
        )

    if entry.errors:
        return again(400)
    duplicates, kind = await duplicates_of(me, entry)
    if kind == "same-id" or (kind == "same-name" and not entry.different_person):
        return again(409, duplicates, kind)

    household = None
    if entry.household_number:
        household = await _household(me, entry.household_number)
        if household is None and entry.relationship != "head":
            entry.errors["household_number"] = _(
                "No household in your care has this number. To start a new household, "
                "register the head first (relationship: head)."
            )
            return again(400)
        if (
            household is not None
            and entry.relationship == "head"
            and any(
                _relationship_of(m) == "head" and not m.get("inactive")
                for m in household.get("member") or []
            )
        ):
            entry.errors["relationship"] = _("This household already has a head.")
            return again(400)
    assert clinic is not None
    family, given = split_name(entry.name)
    human_name: dict[str, Any] = {"use": "official", "text": entry.name}
    if family:
        human_name["family"] = family
    if given:
        human_name["given"] = [given]
    patient: Resource = {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "official",
                "type": {"text": "居民身份证号"},
                "system": RESIDENT_ID_SYSTEM,
                "value": entry.resident_id,
            }
        ],
        "active": True,
        "name": [human_name],
    }
    if entry.phone:
        patient["telecom"] = [
            {
                "system": "phone",
                "value": entry.phone,
                "use": "mobile" if _MOBILE.match(entry.phone) else "home",
            }
        ]
    patient["gender"] = entry.gender
    patient["birthDate"] = entry.birth_date
    if entry.address:
        patient["address"] = [{"use": "home", "type": "physical", "text": entry.address}]
    patient["managingOrganization"] = {
        "reference": f"Organization/{clinic['id']}",
        "display": clinic.get("name"),
    }
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    entries: list[Resource] = [
        {
            "fullUrl": patient_url,
            "resource": patient,
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": f"identifier={RESIDENT_ID_SYSTEM}|{entry.resident_id}",
            },
        }
    ]
    if entry.insured and insurer is not None:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": coverage_for(patient_url, entry.name, entry.resident_id, insurer),
                "request": {"method": "POST", "url": "Coverage"},
            }
        )
    if entry.household_number:
        if household is None:
            group = new_household(
                entry.household_number, patient_url, entry.name, clinic, entry.registry_status
            )
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": group,
                    "request": {
                        "method": "POST",
                        "url": "Group",
                        "ifNoneExist": (
                            f"identifier={HOUSEHOLD_NUMBER_SYSTEM}|{entry.household_number}"
                        ),
                    },
                }
            )
        else:
            household.setdefault("member", []).append(
                {
                    "extension": [relationship_extension(entry.relationship)],
                    "entity": {"reference": patient_url, "display": entry.name},
                    "inactive": False,
                }
            )
            entries.append(household_entry(household))
    try:
        response = await me.transaction(entries)
    except FhirError as error:
        entry.errors.update(
            field_errors(
                error,
                {
                    "identifier": "resident_id",
                    "birthDate": "birth_date",
                    "gender": "gender",
                    "telecom": "phone",
                    "name": "name",
                    "Group": "household_number",
                },
            )
        )
        if error.status == 412:
            entry.errors["household_number"] = _(
                "Someone changed this household meanwhile; submit again."
            )
        if any(issue.code == "duplicate" for issue in error.issues):
            entry.errors["resident_id"] = _(
                "This person is registered at a clinic you do not serve: a person has one "
                "record. Ask that clinic to transfer it, or open it by break-glass."
            )
        return again(error.status if 400 <= error.status < 500 else 400)
    patient_id = created_id(response, 0)
    return RedirectResponse(f"/patients/{patient_id}?registered=1", status_code=303)


# -- household -----------------------------------------------------------------------------


def _relationship_of(member: Resource) -> str:
    for extension in member.get("extension") or []:
        if extension.get("url") == HOUSEHOLD_RELATIONSHIP_URL:
            codes = {
                c.get("code")
                for c in (extension.get("valueCodeableConcept") or {}).get("coding", [])
            }
            for key, (code, _display, _text) in RELATIONSHIPS.items():
                if code in codes:
                    return key
    return ""


def registry_status_of(group: Resource) -> str:
    for characteristic in group.get("characteristic") or []:
        codes = [c.get("code") for c in (characteristic.get("code") or {}).get("coding", [])]
        if "registry-status" in codes:
            for coding in (characteristic.get("valueCodeableConcept") or {}).get("coding", []):
                if coding.get("code") in REGISTRY_STATUSES:
                    return str(coding["code"])
    return ""


@dataclass
class HouseholdView:
    group: Resource
    number: str
    status: str
    members: list[dict[str, Any]]
    relationship: str  # of the patient the page is about


async def household_of(me: SignedIn, patient_id: str) -> HouseholdView | None:
    """The household the patient is an active member of, with its members."""
    groups = await me.search(
        "Group", [("member", f"Patient/{patient_id}"), ("type", "person"), ("_count", "5")]
    )
    for group in groups:
        members = []
        mine = ""
        for member in group.get("member") or []:
            if member.get("inactive"):
                continue
            member_id = reference_id(member.get("entity"), "Patient")
            relationship = _relationship_of(member)
            if member_id == patient_id:
                mine = relationship
            members.append(
                {
                    "id": member_id,
                    "name": str((member.get("entity") or {}).get("display") or ""),
                    "relationship": relationship,
                }
            )
        if mine or any(m["id"] == patient_id for m in members):
            number = next(
                (
                    str(i.get("value"))
                    for i in group.get("identifier") or []
                    if i.get("system") == HOUSEHOLD_NUMBER_SYSTEM
                ),
                "",
            )
            return HouseholdView(group, number, registry_status_of(group), members, mine)
    return None


async def _patient_or_404(me: SignedIn, patient_id: str) -> Resource:
    patient = await me.read("Patient", patient_id)
    if patient is None:
        _ = me.gettext
        raise me.not_found(
            _("No such patient in your care"),
            _("The record does not exist, or it is not yours to see."),
            "/patients",
        )
    return patient


async def _household_page(
    me: SignedIn,
    patient: Resource,
    *,
    errors: dict[str, str] | None = None,
    status: int = 200,
    number: str = "",
) -> Response:
    view = await household_of(me, str(patient["id"]))
    return me.render(
        "patients/household.html",
        status=status,
        patient={"id": patient["id"], "name": name_of(patient)},
        household=view,
        relationships=list(RELATIONSHIPS),
        registry_statuses=list(REGISTRY_STATUSES),
        errors=errors or {},
        number=number,
    )


@router.get("/patients/{patient_id}/household")
async def household_page(request: Request, patient_id: str) -> Response:
    me = await signed_in(request)
    me.require_role(*CLINIC_DOCTORS)
    patient = await _patient_or_404(me, patient_id)
    return await _household_page(me, patient)


@router.post("/patients/{patient_id}/household")
async def change_household(request: Request, patient_id: str) -> Response:
    me = await signed_in(request)
    me.require_role(*CLINIC_DOCTORS)
    _ = me.gettext
    form = await me.form()
    patient = await _patient_or_404(me, patient_id)
    action = str(form.get("action") or "")
    relationship = str(form.get("relationship") or "")
    number = re.sub(r"\s", "", str(form.get("household_number") or ""))
    reference = f"Patient/{patient_id}"
    name = name_of(patient)
    current = await household_of(me, patient_id)
    entries: list[Resource] = []
    errors: dict[str, str] = {}
    if relationship and relationship not in RELATIONSHIPS:
        errors["relationship"] = _("Choose the relationship to the head of the household.")
    elif action in ("join", "create"):
        if not relationship:
            errors["relationship"] = _("Choose the relationship to the head of the household.")
        if not _HOUSEHOLD_NUMBER.match(number):
            errors["household_number"] = _("A household number has 18 digits.")
        elif current is not None:
            errors["household_number"] = _("Leave the current household first.")
        else:
            existing = await _household(me, number)
            if action == "join":
                if existing is None:
                    errors["household_number"] = _("No household in your care has this number.")
                elif relationship == "head" and any(
                    m["relationship"] == "head" for m in (await _members(existing))
                ):
                    errors["relationship"] = _("This household already has a head.")
                elif not errors:
                    existing.setdefault("member", []).append(
                        {
                            "extension": [relationship_extension(relationship)],
                            "entity": {"reference": reference, "display": name},
                            "inactive": False,
                        }
                    )
                    entries.append(household_entry(existing))
            else:
                status = str(form.get("registry_status") or "ordinary")
                clinic_id = reference_id(patient.get("managingOrganization"), "Organization")
                clinic = await me.read("Organization", clinic_id) if clinic_id else None
                if existing is not None:
                    errors["household_number"] = _("A household with this number exists; join it.")
                elif relationship != "head":
                    errors["relationship"] = _("Whoever starts a household is its head.")
                elif clinic is None:
                    errors["household_number"] = _("The patient has no managing clinic.")
                elif not errors:
                    group = new_household(
                        number,
                        reference,
                        name,
                        clinic,
                        status if status in REGISTRY_STATUSES else "ordinary",
                    )
                    entries.append(
                        {
                            "resource": group,
                            "request": {
                                "method": "POST",
                                "url": "Group",
                                "ifNoneExist": f"identifier={HOUSEHOLD_NUMBER_SYSTEM}|{number}",
                            },
                        }
                    )
    elif action in ("relationship", "leave"):
        if current is None:
            errors[""] = _("The patient is in no household.")
        elif action == "relationship" and not relationship:
            errors["relationship"] = _("Choose the relationship to the head of the household.")
        else:
            group = current.group
            for member in group.get("member") or []:
                if reference_id(member.get("entity"), "Patient") != patient_id:
                    continue
                if member.get("inactive"):
                    continue
                if action == "leave":
                    member["inactive"] = True
                else:
                    if (
                        relationship == "head"
                        and current.relationship != "head"
                        and any(m["relationship"] == "head" for m in current.members)
                    ):
                        errors["relationship"] = _("This household already has a head.")
                    member["extension"] = [
                        e
                        for e in member.get("extension") or []
                        if e.get("url") != HOUSEHOLD_RELATIONSHIP_URL
                    ] + [relationship_extension(relationship)]
            if not errors:
                entries.append(household_entry(group))
    else:
        errors[""] = _("Choose what to change.")
    if errors or not entries:
        return await _household_page(me, patient, errors=errors, status=400, number=number)
    try:
        await me.transaction(entries)
    except FhirError as error:
        message = (
            _("Someone changed this household meanwhile; look again and repeat the change.")
            if error.status == 412
            else _("The household could not be saved: %(reason)s") % {"reason": str(error)}
        )
        return await _household_page(me, patient, errors={"": message}, status=400, number=number)
    return RedirectResponse(f"/patients/{patient_id}/household?saved=1", status_code=303)


async def _members(group: Resource) -> list[dict[str, str]]:
    return [
        {"relationship": _relationship_of(m)}
        for m in group.get("member") or []
        if not m.get("inactive")
    ]
