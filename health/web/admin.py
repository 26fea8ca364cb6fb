"""The administrators' pages: the clinic directory and the user accounts.

* **Directory** (``/admin/directory``): township health centres with their village clinics,
  hospitals with their departments — list, add, edit, deactivate. A new clinic is written
  exactly as ``health directory import`` writes one (``integrations.directory_csv``: an
  Organization and, for a clinic or hospital, its Location); an edit changes the record in
  place (``If-Match``, so two admins cannot overwrite each other). Every change goes through
  the admin's own ``perform``, which checks the policy and puts it on the audit trail.
* **Users** (``/admin/users``): create (with a new Practitioner in the directory, or one that
  exists), edit role, organisation, practitioner and name, disable and enable, reset the
  password. Each change and its AuditEvent (``health.auth.audit.account_event``) are
  committed in one transaction: no change without its record. A changed role or
  organisation, or a disabling, ends the user's sessions at once.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from health.auth import accounts
from health.auth.accounts import AccountError, User
from health.auth.policy import ROLES
from health.core.clock import utcnow
from health.core.naming import ORGANIZATION_CODE_SYSTEM, ORGANIZATION_KIND_SYSTEM
from health.web.display import coding_of, name_of
from health.web.signed_in import Resource, SignedIn, field_errors, signed_in
from integrations.directory_csv import KINDS, DirectoryRecord, directory_record_entries
from records.outcome import FhirError

router = APIRouter(include_in_schema=False)

_CODE = re.compile(r"^[A-Za-z0-9._-]{2,40}$")
_PHONE = re.compile(r"^\+?[0-9][0-9 -]{4,19}$")


async def _admin(request: Request) -> SignedIn:
    me = await signed_in(request)
    me.require_role("admin")
    return me


# -- directory -----------------------------------------------------------------------------


def kind_of(organization: Resource) -> str:
    for concept in organization.get("type") or []:
        coding = coding_of(concept, ORGANIZATION_KIND_SYSTEM)
        if coding and coding.get("code") in KINDS:
            return str(coding["code"])
    return ""


def code_of(organization: Resource) -> str:
    for identifier in organization.get("identifier") or []:
        if identifier.get("system") == ORGANIZATION_CODE_SYSTEM:
            return str(identifier.get("value") or "")
    return ""


def _parent_id(organization: Resource) -> str:
    reference = str((organization.get("partOf") or {}).get("reference") or "")
    return reference.split("/")[-1] if reference.startswith("Organization/") else ""


async def directory(me: SignedIn) -> list[Resource]:
    return [
        o
        for o in await me.search("Organization", [("_count", "1000"), ("_sort", "name")])
        if o.get("resourceType") == "Organization"
    ]


def directory_tree(organizations: list[Resource]) -> list[dict[str, Any]]:
    """Top-level clinics (township centres, hospitals, others) with their children."""
    rows = {
        str(o["id"]): {
            "id": o["id"],
            "code": code_of(o),
            "name": o.get("name", ""),
            "kind": kind_of(o),
            "active": o.get("active", True),
            "parent": _parent_id(o),
            "children": [],
        }
        for o in organizations
    }
    top = []
    for row in rows.values():
        parent = rows.get(row["parent"])
        if parent is not None:
            parent["children"].append(row)
        else:
            top.append(row)
    order = {"township-health-centre": 0, "hospital": 1, "": 2}
    top.sort(key=lambda r: (order.get(r["kind"], 2), r["code"]))
    for row in rows.values():
        row["children"].sort(key=lambda r: r["code"])
    return top


@dataclass
class ClinicForm:
    code: str = ""
    name: str = ""
    kind: str = "village-clinic"
    parent: str = ""
    address: str = ""
    phone: str = ""
    active: bool = True
    errors: dict[str, str] = field(default_factory=dict)


def _read_clinic(me: SignedIn, form: Any, organizations: list[Resource], new: bool) -> ClinicForm:
    _ = me.gettext
    entry = ClinicForm(
        code=str(form.get("code") or "").strip(),
        name=str(form.get("name") or "").strip(),
        kind=str(form.get("kind") or ""),
        parent=str(form.get("parent") or ""),
        address=str(form.get("address") or "").strip(),
        phone=str(form.get("phone") or "").strip(),
        active=form.get("active") == "yes" or new,
    )
    errors = entry.errors
    if new and not _CODE.match(entry.code):
        errors["code"] = _("A code of 2 to 40 letters, digits, '.', '_' or '-'.")
    elif new and any(code_of(o) == entry.code for o in organizations):
        errors["code"] = _("Another organisation has this code.")
    if not entry.name or len(entry.name) > 100:
        errors["name"] = _("Enter the name, at most 100 characters.")
    if entry.kind not in KINDS:
        errors["kind"] = _("Choose the kind of organisation.")
    else:
        needed = KINDS[entry.kind].parent_kind
        parent = next((o for o in organizations if str(o["id"]) == entry.parent), None)
        if needed is None:
            entry.parent = ""
        elif parent is None or kind_of(parent) != needed:
            errors["parent"] = (
                _("A village clinic belongs to a township health centre.")
                if needed == "township-health-centre"
                else _("A department belongs to a hospital.")
            )
    if entry.phone and not _PHONE.match(entry.phone):
        errors["phone"] = _("A phone number of digits, spaces and '-'.")
    if len(entry.address) > 200:
        errors["address"] = _("At most 200 characters.")
    return entry


def _clinic_page(
    me: SignedIn,
    entry: ClinicForm,
    organizations: list[Resource],
    *,
    organization_id: str | None,
    status: int = 200,
) -> Response:
    parents = [
        {"id": o["id"], "name": o.get("name", ""), "kind": kind_of(o)}
        for o in organizations
        if kind_of(o) in ("township-health-centre", "hospital")
    ]
    return me.render(
        "admin/clinic.html",
        status=status,
        entry=entry,
        kinds=list(KINDS),
        parents=parents,
        organization_id=organization_id,
    )


@router.get("/admin/directory")
async def directory_page(request: Request) -> Response:
    me = await _admin(request)
    return me.render("admin/directory.html", tree=directory_tree(await directory(me)))


@router.get("/admin/directory/new")
async def new_clinic_form(
    request: Request, kind: str = "village-clinic", parent: str = ""
) -> Response:
    me = await _admin(request)
    entry = ClinicForm(kind=kind if kind in KINDS else "village-clinic", parent=parent)
    return _clinic_page(me, entry, await directory(me), organization_id=None)


@router.post("/admin/directory/new")
async def create_clinic(request: Request) -> Response:
    me = await _admin(request)
    form = await me.form()
    organizations = await directory(me)
    entry = _read_clinic(me, form, organizations, new=True)
    if entry.errors:
        return _clinic_page(me, entry, organizations, organization_id=None, status=400)
    parent = next((o for o in organizations if str(o["id"]) == entry.parent), None)
    record = DirectoryRecord(
        code=entry.code,
        name=entry.name,
        kind=entry.kind,  # type: ignore[arg-type]
        parent_code=code_of(parent) if parent else None,
        address={"text": entry.address} if entry.address else None,
        phone=entry.phone or None,
    )
    try:
        await me.transaction(directory_record_entries(record, records_in_bundle={}))
    except FhirError as error:
        entry.errors.update(field_errors(error, {"name": "name", "telecom": "phone"}))
        return _clinic_page(me, entry, organizations, organization_id=None, status=400)
    return RedirectResponse("/admin/directory?saved=1", status_code=303)


@router.get("/admin/directory/{organization_id}")
async def edit_clinic_form(request: Request, organization_id: str) -> Response:
    me = await _admin(request)
    organization = await _organization_or_404(me, organization_id)
    entry = ClinicForm(
        code=code_of(organization),
        name=str(organization.get("name") or ""),
        kind=kind_of(organization),
        parent=_parent_id(organization),
        address="; ".join(
            str(a.get("text")) for a in organization.get("address") or [] if a.get("text")
        ),
        phone=next(
            (str(t.get("value")) for t in organization.get("telecom") or [] if t.get("value")), ""
        ),
        active=organization.get("active", True),
    )
    return _clinic_page(me, entry, await directory(me), organization_id=organization_id)


async def _organization_or_404(me: SignedIn, organization_id: str) -> Resource:
    organization = await me.read("Organization", organization_id)
    if organization is None:
        _ = me.gettext
        raise me.not_found(
            _("No such organisation"), _("It is not in the directory."), "/admin/directory"
        )
    return organization


@router.post("/admin/directory/{organization_id}")
async def update_clinic(request: Request, organization_id: str) -> Response:
    me = await _admin(request)
    _ = me.gettext
    form = await me.form()
    organizations = await directory(me)
    organization = await _organization_or_404(me, organization_id)
    form_kind = kind_of(organization)
    entry = _read_clinic(me, form, organizations, new=False)
    entry.code = code_of(organization)
    if form_kind and entry.kind != form_kind:
        entry.errors["kind"] = _("The kind of an existing organisation cannot change.")
    if entry.parent == organization_id:
        entry.errors["parent"] = _("An organisation cannot belong to itself.")
    if entry.errors:
        return _clinic_page(me, entry, organizations, organization_id=organization_id, status=400)
    version = str((organization.get("meta") or {}).get("versionId") or "")
    organization["name"] = entry.name
    organization["active"] = entry.active
    if entry.phone:
        organization["telecom"] = [{"system": "phone", "value": entry.phone, "use": "work"}]
    else:
        organization.pop("telecom", None)
    addresses = [a for a in organization.get("address") or [] if a.get("text") != entry.address]
    if entry.address:
        current = (organization.get("address") or [{}])[0]
        if current.get("text") != entry.address:
            organization["address"] = [{"text": entry.address}]
    elif addresses:
        organization.pop("address", None)
    if entry.parent:
        organization["partOf"] = {"reference": f"Organization/{entry.parent}"}
    else:
        organization.pop("partOf", None)
    organization.pop("meta", None)
    try:
        await me.transaction(
            [
                {
                    "resource": organization,
                    "request": {
                        "method": "PUT",
                        "url": f"Organization/{organization_id}",
                        "ifMatch": f'W/"{version}"',
                    },
                }
            ]
        )
    except FhirError as error:
        if error.status == 412:
            entry.errors[""] = _("Someone changed this organisation meanwhile; look again.")
        else:
            entry.errors.update(field_errors(error, {"name": "name", "telecom": "phone"}))
        return _clinic_page(me, entry, organizations, organization_id=organization_id, status=400)
    return RedirectResponse("/admin/directory?saved=1", status_code=303)


# -- users ---------------------------------------------------------------------------------


@dataclass
class UserForm:
    username: str = ""
    display_name: str = ""
    role: str = "village_doctor"
    organization: str = ""
    practitioner: str = ""
    new_practitioner: bool = True
    password: str = ""
    errors: dict[str, str] = field(default_factory=dict)


async def _users(me: SignedIn) -> list[User]:
    async with me.gate.database.transaction(write=False) as session:
        return await accounts.list_users(session)


async def _staff(me: SignedIn, organization_id: str) -> list[dict[str, str]]:
    if not organization_id:
        return []
    found = await me.search(
        "PractitionerRole",
        [
            ("organization", f"Organization/{organization_id}"),
            ("_include", "PractitionerRole:practitioner"),
            ("_count", "200"),
        ],
    )
    return sorted(
        (
            {"id": str(p["id"]), "name": name_of(p)}
            for p in found
            if p.get("resourceType") == "Practitioner"
        ),
        key=lambda p: p["name"],
    )


async def _user_page(
    me: SignedIn, entry: UserForm, *, existing: User | None, status: int = 200
) -> Response:
    organizations = await directory(me)
    return me.render(
        "admin/user.html",
        status=status,
        entry=entry,
        existing=existing,
        roles=list(ROLES),
        organizations=[
            {"id": o["id"], "name": o.get("name", ""), "code": code_of(o)}
            for o in sorted(organizations, key=code_of)
        ],
        staff=await _staff(me, entry.organization),
    )


def _message(error: AccountError) -> tuple[str, str]:
    """(field, message) of an AccountError, whose message starts with the field's name."""
    text = str(error)
    name, _, rest = text.partition(": ")
    fields = {"organization": "organization", "practitioner": "practitioner"}
    return fields.get(name, name if name in ("username", "role", "password") else ""), rest or text


@router.get("/admin/users")
async def users_page(request: Request) -> Response:
    me = await _admin(request)
    names = {str(o["id"]): o.get("name", "") for o in await directory(me)}
    return me.render(
        "admin/users.html",
        users=[
            {"user": u, "organization": names.get(u.organization_id or "", "")}
            for u in await _users(me)
        ],
    )


@router.get("/admin/users/new")
async def new_user_form(request: Request, organization: str = "", role: str = "") -> Response:
    me = await _admin(request)
    entry = UserForm(organization=organization, role=role if role in ROLES else "village_doctor")
    return await _user_page(me, entry, existing=None)


def _read_user(me: SignedIn, form: Any) -> UserForm:
    return UserForm(
        username=str(form.get("username") or "").strip().lower(),
        display_name=str(form.get("display_name") or "").strip(),
        role=str(form.get("role") or ""),
        organization=str(form.get("organization") or ""),
        practitioner=str(form.get("practitioner") or ""),
        new_practitioner=form.get("practitioner") == "new",
        password=str(form.get("password") or ""),
    )


async def _new_practitioner(me: SignedIn, name: str, organization_id: str) -> str:
    """A Practitioner with the user's name and a PractitionerRole at the organisation."""
    practitioner_url = f"urn:uuid:{uuid.uuid4()}"
    human: dict[str, Any] = {"use": "official", "text": name}
    if re.fullmatch(r"[\u3400-\u9fff]{2,}", name):
        human.update(family=name[0], given=[name[1:]])
    response = await me.transaction(
        [
            {
                "fullUrl": practitioner_url,
                "resource": {"resourceType": "Practitioner", "active": True, "name": [human]},
                "request": {"method": "POST", "url": "Practitioner"},
            },
            {
                "resource": {
                    "resourceType": "PractitionerRole",
                    "active": True,
                    "practitioner": {"reference": practitioner_url, "display": name},
                    "organization": {"reference": f"Organization/{organization_id}"},
                },
                "request": {"method": "POST", "url": "PractitionerRole"},
            },
        ]
    )
    location = str((response["entry"][0].get("response") or {}).get("location") or "")
    return location.split("/")[1]


@router.post("/admin/users/new")
async def create_user(request: Request) -> Response:
    me = await _admin(request)
    _ = me.gettext
    form = await me.form()
    entry = _read_user(me, form)
    errors = entry.errors
    if not accounts.USERNAME.match(entry.username):
        errors["username"] = _("2 to 64 lower-case letters, digits, '.', '_' or '-'.")
    if not entry.display_name or len(entry.display_name) > 60:
        errors["display_name"] = _("Enter the person's name, at most 60 characters.")
    if entry.role not in ROLES:
        errors["role"] = _("Choose a role.")
    if entry.role != "admin" and not entry.organization:
        errors["organization"] = _("Choose where the person works.")
    if problem := me.password_message(entry.password):
        errors["password"] = problem
    async with me.gate.database.transaction(write=False) as session:
        if not errors and await accounts.get_user(session, username=entry.username):
            errors["username"] = _("This username is taken.")
    if errors:
        return await _user_page(me, entry, existing=None, status=400)
    practitioner: str | None = entry.practitioner or None
    try:
        if entry.new_practitioner and entry.organization and entry.role != "admin":
            practitioner = await _new_practitioner(me, entry.display_name, entry.organization)
        elif practitioner == "new":
            practitioner = None
        async with me.gate.database.transaction(write=True) as session:
            await accounts.add_user(
                session,
                username=entry.username,
                role=entry.role,
                organization_id=entry.organization or None,
                practitioner_id=practitioner,
                display_name=entry.display_name,
                password=entry.password,
                temporary_password=True,  # the administrator's choice, not hers
                now=utcnow(),
            )
            await me.record_account_change(
                session,
                change="user-create",
                username=entry.username,
                what=f"role={entry.role} organization={entry.organization or '-'} "
                f"practitioner={practitioner or '-'}",
            )
    except AccountError as error:
        name, message = _message(error)
        errors[name] = message
        return await _user_page(me, entry, existing=None, status=400)
    except FhirError as error:
        errors[""] = str(error)
        return await _user_page(me, entry, existing=None, status=400)
    return RedirectResponse(f"/admin/users/{entry.username}?saved=created", status_code=303)


async def _user_or_404(me: SignedIn, username: str) -> User:
    async with me.gate.database.transaction(write=False) as session:
        user = await accounts.get_user(session, username=username)
    if user is None:
        _ = me.gettext
        raise me.not_found(
            _("No such user"), _("There is no account with this username."), "/admin/users"
        )
    return user


@router.get("/admin/users/{username}")
async def edit_user_form(request: Request, username: str, organization: str = "") -> Response:
    me = await _admin(request)
    user = await _user_or_404(me, username)
    entry = UserForm(
        username=user.username,
        display_name=user.display_name or "",
        role=user.role,
        organization=organization or user.organization_id or "",
        practitioner=user.practitioner_id or "",
        new_practitioner=False,
    )
    return await _user_page(me, entry, existing=user)


@router.post("/admin/users/{username}")
async def change_user(request: Request, username: str) -> Response:
    me = await _admin(request)
    _ = me.gettext
    form = await me.form()
    user = await _user_or_404(me, username)
    action = str(form.get("action") or "")
    entry = _read_user(me, form)
    entry.username = user.username
    try:
        if action == "update":
            if not entry.display_name or len(entry.display_name) > 60:
                entry.errors["display_name"] = _("Enter the person's name, at most 60 characters.")
                return await _user_page(me, entry, existing=user, status=400)
            practitioner: str | None = entry.practitioner or None
            if entry.new_practitioner:
                if not entry.organization:
                    entry.errors["organization"] = _("Choose where the person works.")
                    return await _user_page(me, entry, existing=user, status=400)
                practitioner = await _new_practitioner(me, entry.display_name, entry.organization)
            async with me.gate.database.transaction(write=True) as session:
                await accounts.update_user(
                    session,
                    username=user.username,
                    role=entry.role,
                    organization_id=entry.organization or None,
                    practitioner_id=practitioner,
                    display_name=entry.display_name,
                )
                await me.record_account_change(
                    session,
                    change="user-update",
                    username=user.username,
                    what=f"role {user.role}->{entry.role}; organization "
                    f"{user.organization_id or '-'}->{entry.organization or '-'}; practitioner "
                    f"{user.practitioner_id or '-'}->{practitioner or '-'}",
                )
            saved = "updated"
        elif action in ("disable", "enable"):
            if action == "disable" and user.username == me.user.username:
                entry.errors[""] = _("You cannot disable your own account.")
                return await _user_page(me, entry, existing=user, status=400)
            async with me.gate.database.transaction(write=True) as session:
                if action == "disable":
                    await accounts.disable_user(session, username=user.username)
                else:
                    await accounts.enable_user(session, username=user.username)
                await me.record_account_change(
                    session, change=f"user-{action}", username=user.username, what=action
                )
            saved = action + "d"
        elif action == "password":
            if problem := me.password_message(entry.password):
                entry.errors["password"] = problem
                return await _user_page(me, entry, existing=user, status=400)
            async with me.gate.database.transaction(write=True) as session:
                await accounts.set_password(
                    session, username=user.username, password=entry.password, temporary=True
                )
                await me.record_account_change(
                    session,
                    change="user-password",
                    username=user.username,
                    what="password reset by an administrator",
                )
            saved = "password"
        else:
            entry.errors[""] = _("Choose what to change.")
            return await _user_page(me, entry, existing=user, status=400)
    except AccountError as error:
        name, message = _message(error)
        entry.errors[name] = message
        return await _user_page(me, entry, existing=user, status=400)
    except FhirError as error:
        entry.errors[""] = str(error)
        return await _user_page(me, entry, existing=user, status=400)
    return RedirectResponse(f"/admin/users/{user.username}?saved={saved}", status_code=303)
