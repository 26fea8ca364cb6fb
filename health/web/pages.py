"""The pages of signing in and out, changing one's password, the home page, break-glass, and
the SMART approval page.

Every form carries a CSRF token: the session's own once signed in, and before that (the
login form) a random token also set in a short-lived cookie, so another site can neither
log a person in as someone else nor post a form in their name.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from health.auth import accounts
from health.auth.accounts import CHANGE_PASSWORD_PATH, LoginRefused, WebSession
from health.auth.audit import logout_event
from health.auth.endpoints import APP_SCOPES_MAX, break_glass, break_glass_report_rows
from health.auth.gate import SESSION_COOKIE, Gate, actor_of, client_address, user_subject
from health.auth.logins import LoginThrottle, TooManyAttempts, password_login
from health.auth.scopes import parse_scopes
from health.core.clock import fhir_instant, utcnow
from health.core.ids import is_valid_resource_id
from health.core.problems import Problem
from health.web.i18n import LANGUAGE_COOKIE, LANGUAGES, gettext_for
from health.web.rendering import render
from health.web.signed_in import SignedIn, here, page_session
from health.web.worklists import worklist
from records.interactions import FhirRequest
from records.outcome import FhirError
from records.store import ResourceStore

router = APIRouter(include_in_schema=False)

LOGIN_CSRF_COOKIE = "health_login_csrf"


def _gate(request: Request) -> Gate:
    gate: Gate = request.app.state.gate
    return gate


def secure_cookies(request: Request) -> bool:
    """Whether cookies are sent with ``Secure``: as configured, else unless this is plain
    HTTP to the machine itself (``make run`` on 127.0.0.1, where browsers allow no TLS)."""
    configured = _gate(request).settings.secure_cookies
    if configured is not None:
        return configured
    host = request.url.hostname or ""
    return request.url.scheme == "https" or host not in ("127.0.0.1", "localhost", "::1")


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an absolute URL or ``//host`` (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _login_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?{urlencode({'next': here(request)})}", status_code=303)


async def _form(request: Request) -> FormData:
    return await request.form()


def _csrf_ok(web: WebSession, form: FormData) -> bool:
    return Gate.csrf_matches(web, str(form.get("csrf_token") or ""))


def _refuse_csrf(request: Request, web: WebSession | None) -> Response:
    _ = gettext_for(request).gettext
    return render(
        request,
        "message.html",
        status=403,
        user=web.user if web else None,
        csrf_token=web.csrf_token if web else None,
        heading=_("The form has expired"),
        message=_("Reload the page and try again."),
        error=True,
        back="/",
    )


async def _organization_name(gate: Gate, organization_id: str | None) -> str | None:
    if not organization_id:
        return None
    async with gate.database.transaction(write=False) as session:
        found = await ResourceStore(session, gate.indexer).current("Organization", organization_id)
    if found is None or found.content is None:
        return None
    name = orjson.loads(found.content).get("name")
    return name if isinstance(name, str) else None


# -- signing in and out --------------------------------------------------------------------


def _login_page(
    request: Request,
    *,
    error: str | None = None,
    status: int = 200,
    username: str = "",
    next_path: str = "/",
) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(
        request,
        "login.html",
        status=status,
        login_csrf=token,
        error=error,
        username=username,
        next=next_path,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request),
        path="/login",
    )
    return response


def _refusal(request: Request, refused: LoginRefused, wrong: str) -> tuple[int, str]:
    """The status and message of a refused password (a login, or the current password asked
    again): throttled, locked out, or ``wrong``."""
    _ = gettext_for(request).gettext
    if isinstance(refused, TooManyAttempts):
        return 429, _("Too many attempts. Wait a minute and try again.")
    if "locked" in str(refused):
        return 401, _("This account is locked after repeated failures; try again later.")
    return 401, wrong


@router.get("/login")
async def login_form(request: Request, next: str = "/") -> Response:
    if await _gate(request).web_session(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, next_path=_safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    gate = _gate(request)
    throttle: LoginThrottle = request.app.state.login_throttle
    _ = gettext_for(request).gettext
    form = await _form(request)
    username = str(form.get("username") or "")
    next_path = _safe_next(str(form.get("next") or "/"))
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
    sent = str(form.get("csrf_token") or "")
    if not cookie or not hmac.compare_digest(cookie, sent):
        return _login_page(
            request,
            error=_("The form has expired; please log in again."),
            status=403,
            username=username,
            next_path=next_path,
        )
    try:
        user = await password_login(
            gate, throttle, request, username=username, password=str(form.get("password") or "")
        )
    except LoginRefused as refused:
        status, error = _refusal(request, refused, _("Wrong username or password."))
        return _login_page(
            request, error=error, status=status, username=username, next_path=next_path
        )
    async with gate.database.transaction(write=True) as session:
        token, _csrf = await accounts.open_session(
            session,
            username=user.username,
            now=utcnow(),
            ttl_seconds=gate.settings.session_ttl,
            address=client_address(request),
        )
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=gate.settings.session_ttl,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    gate = _gate(request)
    web = await gate.web_session(request)
    if web is not None:
        if not _csrf_ok(web, await _form(request)):
            return _refuse_csrf(request, web)
        async with gate.database.transaction(write=True) as session:
            await accounts.close_session(session, token=request.cookies[SESSION_COOKIE])
        subject = user_subject(web.user, parse_scopes(""))
        await gate.audit.record(logout_event(actor_of(subject, request), now=utcnow()))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- her own password ----------------------------------------------------------------------


def _password_page(
    request: Request, web: WebSession, *, errors: dict[str, str], next_path: str, status: int
) -> Response:
    return render(
        request,
        "account_password.html",
        status=status,
        user=web.user,
        csrf_token=web.csrf_token,
        errors=errors,
        next=next_path,
    )


@router.get(CHANGE_PASSWORD_PATH)
async def password_form(request: Request, next: str = "/") -> Response:
    web = await _gate(request).web_session(request)
    if web is None:
        return _login_redirect(request)
    return _password_page(request, web, errors={}, next_path=_safe_next(next), status=200)


@router.post(CHANGE_PASSWORD_PATH)
async def change_password(request: Request) -> Response:
    """She gives her current password (checked as a login is: throttled, locked out after
    repeated failures, audited) and her new one twice. Her other sessions and her apps'
    refresh tokens end; this session goes on."""
    gate = _gate(request)
    _ = gettext_for(request).gettext
    web = await gate.web_session(request)
    if web is None:
        return _login_redirect(request)
    form = await _form(request)
    if not _csrf_ok(web, form):
        return _refuse_csrf(request, web)
    next_path = _safe_next(str(form.get("next") or "/"))
    current = str(form.get("current_password") or "")
    new = str(form.get("new_password") or "")
    me = SignedIn(request, web, gate.web_caller(web, request))
    errors: dict[str, str] = {}
    if problem := me.password_message(new):
        errors["new_password"] = problem
    elif new != str(form.get("repeat_password") or ""):
        errors["repeat_password"] = _("The two new passwords differ.")
    elif new == current:
        errors["new_password"] = _("Choose a password other than the one you have now.")
    if errors:
        return _password_page(request, web, errors=errors, next_path=next_path, status=400)
    cookie = request.cookies[SESSION_COOKIE]

    async def change(session: AsyncSession, user: accounts.User) -> None:
        await accounts.set_password(
            session, username=user.username, password=new, temporary=False, keep_session=cookie
        )
        await me.record_account_change(
            session,
            change="user-password",
            username=user.username,
            what="password changed by the user",
        )

    try:
        await password_login(
            gate,
            request.app.state.login_throttle,
            request,
            username=web.user.username,
            password=current,
            method="password-change",
            then=change,
        )
    except LoginRefused as refused:
        status, errors["current_password"] = _refusal(
            request, refused, _("This is not your current password.")
        )
        return _password_page(request, web, errors=errors, next_path=next_path, status=status)
    except accounts.SessionEnded:
        # Ended while she typed (an administrator reset her password, or disabled her).
        return _login_redirect(request)
    return RedirectResponse(next_path, status_code=303)


@router.get("/lang/{language}")
async def choose_language(request: Request, language: str, next: str = "/") -> Response:
    response = RedirectResponse(_safe_next(next), status_code=303)
    if language in LANGUAGES:
        response.set_cookie(
            LANGUAGE_COOKIE, language, max_age=365 * 24 * 3600, samesite="lax", path="/"
        )
    return response


# -- home ----------------------------------------------------------------------------------


@router.get("/")
async def home(request: Request) -> Response:
    gate = _gate(request)
    web = await page_session(request)
    if web is None:
        return _login_redirect(request)
    openings: list[dict[str, Any]] = []
    if web.user.role == "admin":
        openings = await break_glass_report_rows(gate, days=30)
    work = await worklist(SignedIn(request, web, gate.web_caller(web, request)))
    return render(
        request,
        "home.html",
        user=web.user,
        csrf_token=web.csrf_token,
        organization=await _organization_name(gate, web.user.organization_id),
        openings=openings,
        worklist=work,
    )


# -- break-glass ---------------------------------------------------------------------------


@router.post("/access/break-glass")
async def break_glass_form(request: Request) -> Response:
    gate = _gate(request)
    _ = gettext_for(request).gettext
    web = await page_session(request)
    if web is None:
        return _login_redirect(request)
    form = await _form(request)
    if not _csrf_ok(web, form):
        return _refuse_csrf(request, web)
    patient = str(form.get("patient") or "").strip()
    caller = gate.web_caller(web, request)
    try:
        expires = await break_glass(
            gate,
            request.app.state.bus,
            caller,
            patient=patient,
            reason=str(form.get("reason") or ""),
        )
    except Problem as refused:
        messages = {
            400: _("Say why you need this record (at least 4 characters)."),
            403: _("Only doctors may open a record this way."),
            404: _("No patient has this id."),
        }
        return render(
            request,
            "message.html",
            status=refused.status,
            user=web.user,
            csrf_token=web.csrf_token,
            heading=_("The record was not opened"),
            message=messages.get(refused.status, refused.title),
            error=True,
            back="/",
        )
    return render(
        request,
        "message.html",
        user=web.user,
        csrf_token=web.csrf_token,
        heading=_("The record is open to you"),
        message=_("Patient %(patient)s, until %(until)s. This opening is on the audit trail.")
        % {"patient": patient, "until": fhir_instant(expires)},
        error=False,
        back="/",
    )


# -- SMART app approval --------------------------------------------------------------------

_AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "aud",
)


def _redirect_with(uri: str, **params: str | None) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return RedirectResponse(f"{uri}{'&' if '?' in uri else '?'}{query}", status_code=303)


async def _authorization_request(
    request: Request, params: dict[str, str]
) -> tuple[accounts.Client, Response | None]:
    """The client of a valid request, or the response that refuses it.

    Faults in client_id or redirect_uri are shown on the page (never redirected to an
    unverified address); the rest go back to the app as OAuth errors.
    """
    gate = _gate(request)
    _ = gettext_for(request).gettext
    async with gate.database.transaction(write=False) as session:
        client = await accounts.get_client(session, client_id=params.get("client_id", ""))
    redirect_uri = params.get("redirect_uri", "")
    if client is None or client.kind != "app" or redirect_uri not in client.redirect_uris:
        refusal = render(
            request,
            "message.html",
            status=400,
            heading=_("This application is not known"),
            message=_("Its client id or redirect address is not registered here."),
            error=True,
            back="/",
        )
        return accounts.Client("", "", "", parse_scopes(""), (), True), refusal
    state = params.get("state")
    if params.get("response_type") != "code":
        return client, _redirect_with(redirect_uri, error="unsupported_response_type", state=state)
    if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
        return client, _redirect_with(
            redirect_uri,
            error="invalid_request",
            error_description="PKCE with code_challenge_method=S256 is required",
            state=state,
        )
    aud = params.get("aud")
    expected = (gate.settings.fhir_base_url or str(request.base_url).rstrip("/") + "/fhir").rstrip(
        "/"
    )
    if aud is not None and aud.rstrip("/") != expected:
        return client, _redirect_with(
            redirect_uri,
            error="invalid_request",
            error_description="aud is not this server's FHIR base",
            state=state,
        )
    return client, None


def _granted_scope(client: accounts.Client, requested: str) -> str:
    try:
        asked = parse_scopes(requested)
    except ValueError:
        return ""
    return str(asked.narrow(client.scope).narrow(APP_SCOPES_MAX))


@router.get("/auth/authorize")
async def authorize_form(request: Request) -> Response:
    params = {k: v for k, v in request.query_params.items() if k in _AUTHORIZE_PARAMS}
    client, refusal = await _authorization_request(request, params)
    if refusal is not None:
        return refusal
    web = await page_session(request)
    if web is None:
        return _login_redirect(request)
    scope = _granted_scope(client, params.get("scope", ""))
    return render(
        request,
        "authorize.html",
        user=web.user,
        csrf_token=web.csrf_token,
        client_name=client.name,
        scopes=scope.split(),
        needs_patient=any(s.startswith("patient/") for s in scope.split()),
        params=sorted(params.items()),
        error=None,
    )


@router.post("/auth/authorize")
async def authorize(request: Request) -> Response:
    gate = _gate(request)
    _ = gettext_for(request).gettext
    form = await _form(request)
    params = {k: str(form.get(k)) for k in _AUTHORIZE_PARAMS if form.get(k) is not None}
    client, refusal = await _authorization_request(request, params)
    if refusal is not None:
        return refusal
    web = await page_session(request)
    if web is None:
        return _login_redirect(request)
    if not _csrf_ok(web, form):
        return _refuse_csrf(request, web)
    state = params.get("state")
    if form.get("decision") != "allow":
        return _redirect_with(params["redirect_uri"], error="access_denied", state=state)
    scope = _granted_scope(client, params.get("scope", ""))
    patient: str | None = None
    if any(s.startswith("patient/") for s in scope.split()):
        patient = str(form.get("patient") or "").strip()
        caller = gate.web_caller(web, request)
        records = request.app.state.records
        try:
            if not is_valid_resource_id(patient):
                raise FhirError.of(400, "not a FHIR id", code="value")
            # As every look at a record: under her policy, and on the audit trail.
            await records.perform(
                caller,
                FhirRequest(method="GET", path=f"Patient/{patient}"),
                base_url=records.fhir_base(request),
            )
        except FhirError:
            return render(
                request,
                "authorize.html",
                status=400,
                user=web.user,
                csrf_token=web.csrf_token,
                client_name=client.name,
                scopes=scope.split(),
                needs_patient=True,
                params=sorted(params.items()),
                error=_("You can only choose a patient in your care."),
            )
    async with gate.database.transaction(write=True) as session:
        code = await accounts.issue_code(
            session,
            client_id=client.client_id,
            username=web.user.username,
            scope=scope,
            redirect_uri=params["redirect_uri"],
            code_challenge=params["code_challenge"],
            patient_id=patient,
            now=utcnow(),
        )
    return _redirect_with(params["redirect_uri"], code=code, state=state)
