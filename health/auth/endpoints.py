"""The OAuth2 / SMART App Launch endpoints, and break-glass.

- ``/.well-known/smart-configuration`` (also under ``/fhir``): what this server supports.
- ``POST /auth/token``: ``client_credentials`` for systems, ``authorization_code`` (PKCE S256
  required) for apps people log in to through ``/auth/authorize`` (a page, see
  ``health.web``), and ``refresh_token`` with rotation and replay detection. Errors follow
  RFC 6749 (``{"error": ..., "error_description": ...}``), which OAuth clients expect.
- ``POST /auth/break-glass``: a doctor opens a patient's record outside her care for a stated
  reason, for :attr:`Settings.break_glass_seconds`; audited and announced to admins on the
  bus channel :data:`BREAK_GLASS_CHANNEL`. ``GET /auth/break-glass``: the admins' list.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from health.auth import accounts
from health.auth.accounts import Grant, LoginRefused, User
from health.auth.audit import Actor, append, break_glass_event, login_event
from health.auth.gate import USER_SCOPES, Gate, RequestCaller, client_address
from health.auth.logins import LoginThrottle, TooManyAttempts
from health.auth.policy import DOCTOR_ROLES, SYSTEM_ROLE
from health.auth.scopes import ScopeSet, parse_scopes
from health.auth.tables import access_grants
from health.core.bus import MessageBus
from health.core.clock import fhir_instant, utcnow
from health.core.problems import Problem
from records.outcome import FhirError

router = APIRouter()

#: Bus channel announcing each break-glass opening: {"username", "patient", "expires"}.
BREAK_GLASS_CHANNEL = "access.break-glass"
#: What an app person may be given at most (the role's policy narrows it further).
APP_SCOPES_MAX = parse_scopes(
    f"{USER_SCOPES} patient/*.cruds openid fhirUser offline_access online_access launch/patient"
)
#: Shortest reason accepted for a break-glass opening (Chinese reasons are short).
MIN_REASON_LENGTH = 4


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def response(self) -> JSONResponse:
        headers = {"Cache-Control": "no-store"}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="auth"'
        return JSONResponse(
            {"error": self.error, "error_description": self.description},
            status_code=self.status,
            headers=headers,
        )


def _gate(request: Request) -> Gate:
    gate: Gate = request.app.state.gate
    return gate


def _fhir_base(request: Request) -> str:
    configured = _gate(request).settings.fhir_base_url
    return (configured or str(request.base_url).rstrip("/") + "/fhir").rstrip("/")


def smart_configuration(request: Request) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    return {
        "issuer": _gate(request).settings.issuer,
        "authorization_endpoint": f"{base}/auth/authorize",
        "token_endpoint": f"{base}/auth/token",
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": [
            "openid",
            "fhirUser",
            "launch/patient",
            "offline_access",
            "online_access",
            "user/*.cruds",
            "patient/*.cruds",
            "system/*.cruds",
        ],
        "capabilities": [
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "context-standalone-patient",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v2",
        ],
    }


def capability_security(request: Request) -> dict[str, Any]:
    """``CapabilityStatement.rest.security``: SMART on FHIR, and where its endpoints are."""
    configuration = smart_configuration(request)
    return {
        "cors": bool(_gate(request).settings.cors_origins.strip()),
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 with SMART App Launch v2 scopes",
            }
        ],
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "authorize", "valueUri": configuration["authorization_endpoint"]},
                    {"url": "token", "valueUri": configuration["token_endpoint"]},
                ],
            }
        ],
    }


@router.get("/.well-known/smart-configuration", include_in_schema=False)
@router.get("/fhir/.well-known/smart-configuration")
async def well_known(request: Request) -> JSONResponse:
    """SMART App Launch configuration."""
    return JSONResponse(smart_configuration(request))


# -- the token endpoint --------------------------------------------------------------------


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str | None]:
    """(client_id, secret) from HTTP Basic or the form (RFC 6749 2.3.1)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "Malformed Basic credentials", 401) from None
        client_id, _, secret = decoded.partition(":")
        return unquote(client_id), unquote(secret)
    given = form.get("client_id")
    if not given:
        raise OAuthError("invalid_client", "Authenticate the client (client_id)", 401)
    return given, form.get("client_secret")


def _requested_scope(form: dict[str, str], granted: ScopeSet) -> ScopeSet:
    text = form.get("scope")
    if text is None:
        return granted
    try:
        requested = parse_scopes(text)
    except ValueError as error:
        raise OAuthError("invalid_scope", str(error)) from None
    narrowed = requested.narrow(granted)
    if requested.scopes and not narrowed.scopes:
        raise OAuthError("invalid_scope", "None of the requested scopes can be granted")
    return narrowed


def _token_body(token: str, expires_in: int, scope: str, **extra: Any) -> JSONResponse:
    body = {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
    body["scope"] = scope
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def issue_user_token(
    gate: Gate, user: User, scope: str, *, patient: str | None, ttl: int | None = None
) -> tuple[str, int]:
    ttl = ttl or gate.settings.access_token_ttl
    token, _claims = gate.signer.issue(
        subject=f"user:{user.username}",
        role=user.role,
        organization=user.organization_id,
        practitioner=user.practitioner_id,
        scope=scope,
        patient=patient,
        case_worker=user.case_worker,
        ttl_seconds=ttl,
    )
    return token, ttl


@router.post("/auth/token")
async def token(request: Request) -> JSONResponse:
    """OAuth2 token endpoint (RFC 6749; SMART App Launch v2)."""
    gate = _gate(request)
    throttle: LoginThrottle = request.app.state.login_throttle
    address = client_address(request)
    client_id: str | None = None
    failure: OAuthError | None = None
    try:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/x-www-form-urlencoded":
            raise OAuthError(
                "invalid_request", "Send the form as application/x-www-form-urlencoded"
            )
        form = {k: str(v) for k, v in (await request.form()).items()}
        grant_type = form.get("grant_type")
        if grant_type not in ("client_credentials", "authorization_code", "refresh_token"):
            raise OAuthError(
                "unsupported_grant_type",
                "grant_type is one of client_credentials, authorization_code, refresh_token",
            )
        client_id, secret = _client_credentials(request, form)
        await throttle.admit(address=address, account=f"client:{client_id}")
        now = utcnow()
        async with gate.database.transaction(write=True) as session:
            try:
                client = await accounts.check_client(session, client_id=client_id, secret=secret)
            except LoginRefused as refused:
                raise OAuthError("invalid_client", str(refused), 401) from None
            if grant_type == "client_credentials":
                if client.kind != "system":
                    raise OAuthError(
                        "unauthorized_client", "Only a system client may use client_credentials"
                    )
                scope = _requested_scope(form, client.scope)
                access, _claims = gate.signer.issue(
                    subject=f"client:{client.client_id}",
                    role=SYSTEM_ROLE,
                    organization=None,
                    practitioner=None,
                    scope=str(scope),
                    ttl_seconds=gate.settings.access_token_ttl,
                )
                actor = Actor(id=f"client:{client.client_id}", role=SYSTEM_ROLE, address=address)
                await append(
                    session,
                    gate.indexer,
                    gate.audit.key,
                    [login_event(actor, succeeded=True, method="client_credentials", now=now)],
                )
                return _token_body(access, gate.settings.access_token_ttl, str(scope))
            if client.kind != "app":
                raise OAuthError("unauthorized_client", "A system client uses client_credentials")
            if grant_type == "authorization_code":
                try:
                    grant = await accounts.redeem_code(
                        session,
                        code=form.get("code", ""),
                        client_id=client.client_id,
                        redirect_uri=form.get("redirect_uri", ""),
                        code_verifier=form.get("code_verifier", ""),
                        now=now,
                    )
                except LoginRefused as refused:
                    failure = OAuthError("invalid_grant", str(refused))
                else:
                    return await _user_tokens(gate, session, grant, address, now, "code")
            else:
                try:
                    grant, refresh = await accounts.use_refresh_token(
                        session,
                        token=form.get("refresh_token", ""),
                        client_id=client.client_id,
                        now=now,
                        ttl_seconds=gate.settings.refresh_token_ttl,
                    )
                except LoginRefused as refused:
                    failure = OAuthError("invalid_grant", str(refused))
                else:
                    return await _user_tokens(
                        gate, session, grant, address, now, "refresh_token", refresh=refresh
                    )
        # A refused code or refresh token: what the refusal revoked has committed.
        raise failure or OAuthError("invalid_grant", "The grant was refused")
    except TooManyAttempts as refused:
        return OAuthError("slow_down", str(refused), 429).response()
    except OAuthError as error:
        if error.error in ("invalid_client", "invalid_grant"):
            await throttle.failed(
                address=address, account=f"client:{client_id}" if client_id else None
            )
        await gate.audit.record(
            login_event(
                Actor(id=f"client:{client_id}" if client_id else None, address=address),
                succeeded=False,
                method="token endpoint",
                now=utcnow(),
                problem=error.error,
            )
        )
        return error.response()


async def _user_tokens(
    gate: Gate,
    session: Any,
    grant: Grant,
    address: str | None,
    now: dt.datetime,
    method: str,
    *,
    refresh: str | None = None,
) -> JSONResponse:
    scope = parse_scopes(grant.scope)
    if refresh is None and "offline_access" in scope.other:
        refresh = await accounts.issue_refresh_token(
            session, grant=grant, now=now, ttl_seconds=gate.settings.refresh_token_ttl
        )
    access, ttl = issue_user_token(gate, grant.user, grant.scope, patient=grant.patient_id)
    user = grant.user
    actor = Actor(
        id=f"user:{user.username}",
        role=user.role,
        organization=user.organization_id,
        practitioner=user.practitioner_id,
        address=address,
    )
    await append(
        session,
        gate.indexer,
        gate.audit.key,
        [login_event(actor, succeeded=True, method=method, now=now)],
    )
    fhir_user = f"Practitioner/{user.practitioner_id}" if user.practitioner_id else None
    return _token_body(
        access,
        ttl,
        grant.scope,
        refresh_token=refresh,
        patient=grant.patient_id,
        fhirUser=fhir_user if "fhirUser" in scope.other else None,
    )


# -- break-glass ---------------------------------------------------------------------------


async def break_glass(
    gate: Gate, bus: MessageBus, caller: RequestCaller, *, patient: str, reason: str
) -> dt.datetime:
    """Open ``patient``'s record to the caller for a while; the expiry. Problem on refusal."""
    subject = caller.subject
    username = subject.username
    if username is None or subject.role not in DOCTOR_ROLES:
        raise Problem(403, "Break-glass is for doctors", "Only doctors may open a record this way")
    reason = reason.strip()
    if len(reason) < MIN_REASON_LENGTH:
        raise Problem(
            400,
            "A reason is required",
            f"Say why you need this record (at least {MIN_REASON_LENGTH} characters)",
            field="reason",
        )
    now = utcnow()
    expires = now + dt.timedelta(seconds=gate.settings.break_glass_seconds)
    async with gate.database.transaction(write=True) as session:
        if not await accounts.resource_exists(session, "Patient", patient):
            raise Problem(
                404, "No such patient", f"Patient/{patient} is not known", field="patient"
            )
        await session.execute(
            access_grants.insert().values(
                username=username,
                patient_id=patient,
                reason=reason,
                granted_at=now,
                expires_at=expires,
            )
        )
        actor = Actor(
            id=subject.id,
            role=subject.role,
            organization=subject.organization,
            practitioner=subject.practitioner,
            address=caller.actor.address,
            purpose="BTG",
        )
        await append(
            session,
            gate.indexer,
            gate.audit.key,
            [break_glass_event(actor, patient=patient, reason=reason, expires=expires, now=now)],
        )
    await bus.publish(
        BREAK_GLASS_CHANNEL,
        {"username": username, "patient": patient, "expires": fhir_instant(expires)},
    )
    return expires


async def api_caller(request: Request) -> RequestCaller:
    """The bearer token's or web session's caller of a JSON API outside ``/fhir``; a 401
    problem (with its WWW-Authenticate) for anyone else."""
    try:
        return await _gate(request).authenticate(request)
    except FhirError as error:
        raise Problem(
            error.status, "Not authenticated", str(error), headers=error.headers
        ) from None


@router.post("/auth/break-glass", status_code=201)
async def break_glass_endpoint(request: Request) -> JSONResponse:
    """Open a patient's record outside your care, for a stated reason (audited)."""
    caller = await api_caller(request)
    try:
        body = await request.json()
    except ValueError:
        raise Problem(400, "The body is not JSON", 'Send {"patient": ..., "reason": ...}') from None
    if not isinstance(body, dict):
        raise Problem(400, "The body must be a JSON object")
    patient, reason = body.get("patient"), body.get("reason")
    if not isinstance(patient, str) or not patient:
        raise Problem(400, "patient is required", "The id of the Patient", field="patient")
    if not isinstance(reason, str):
        raise Problem(400, "reason is required", "Say why you need this record", field="reason")
    expires = await break_glass(
        _gate(request), request.app.state.bus, caller, patient=patient, reason=reason
    )
    return JSONResponse({"patient": patient, "expires": fhir_instant(expires)}, status_code=201)


@router.get("/auth/break-glass")
async def break_glass_report(request: Request, days: int = 30) -> JSONResponse:
    """Break-glass openings of the last ``days`` days, newest first (administrators)."""
    caller = await api_caller(request)
    if caller.subject.role != "admin":
        raise Problem(403, "For administrators", "Only administrators see break-glass reports")
    return JSONResponse(await break_glass_report_rows(_gate(request), days=days))


async def break_glass_report_rows(gate: Gate, *, days: int) -> list[dict[str, Any]]:
    """The break-glass openings of the last ``days`` days (at most 1,000), newest first."""
    since = utcnow() - dt.timedelta(days=max(1, min(days, 366)))
    async with gate.database.transaction(write=False) as session:
        rows = (
            await session.execute(
                select(access_grants)
                .where(access_grants.c.granted_at >= since)
                .order_by(access_grants.c.granted_at.desc())
                .limit(1000)
            )
        ).all()
    return [
        {
            "username": r.username,
            "patient": r.patient_id,
            "reason": r.reason,
            "granted": fhir_instant(r.granted_at),
            "expires": fhir_instant(r.expires_at),
        }
        for r in rows
    ]
