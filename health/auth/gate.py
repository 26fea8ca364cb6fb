"""Who is calling: bearer access tokens and web sessions turned into a :class:`Subject`.

:class:`Gate` is the one place every request is identified. The FHIR API asks it for a
:class:`RequestCaller` (``records.access.Caller``): the caller's access policy, and its way
onto the audit trail. Pages ask it for the web session. A request with neither a valid
token nor a live session is refused with 401 — the default is deny.

A web session may call the API from its own pages (the cookie is ``SameSite=Lax`` and
``HttpOnly``); anything but GET must then carry the session's CSRF token in the
``X-CSRF-Token`` header, so another site cannot make the browser write on the user's behalf.
A WebSocket (the consult's signalling) is identified the same way; one opened with the
session cookie must come from this site's own pages (its ``Origin`` is this host), since
browsers send cookies with cross-site WebSocket handshakes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from health.auth import accounts
from health.auth.accounts import User, WebSession
from health.auth.audit import Actor, AuditWriter, append, login_event, record_access_events
from health.auth.policy import AccessPolicy, Subject
from health.auth.scopes import ScopeSet, parse_scopes
from health.auth.tokens import InvalidToken, TokenSigner
from health.core.clock import utcnow
from health.core.database import Database
from health.core.settings import Settings
from records.access import AccessEvent
from records.indexing import SearchIndexer
from records.outcome import FhirError

SESSION_COOKIE = "health_session"
CSRF_HEADER = "x-csrf-token"
#: What a person may ask for at most; the role's policy narrows it further.
USER_SCOPES = "user/*.cruds"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def mask_csrf(token: str) -> str:
    """The CSRF token as a page carries it: XORed with a fresh random pad, pad in front.

    Every response shows it differently, so a compressed page cannot leak it byte by byte
    (BREACH) however often an attacker makes the browser fetch it.
    """
    raw = token.encode()
    pad = secrets.token_bytes(len(raw))
    masked = bytes(a ^ b for a, b in zip(raw, pad, strict=True))
    return base64.urlsafe_b64encode(pad + masked).decode().rstrip("=")


def unmask_csrf(sent: str) -> str:
    try:
        data = base64.urlsafe_b64decode(sent + "=" * (-len(sent) % 4))
    except (ValueError, binascii.Error):
        return ""
    half = len(data) // 2
    if not half or len(data) != 2 * half:
        return ""
    return bytes(a ^ b for a, b in zip(data[:half], data[half:], strict=True)).decode("latin-1")


def client_address(request: HTTPConnection) -> str | None:
    return request.client.host if request.client else None


def _is_socket(connection: HTTPConnection) -> bool:
    return connection.scope.get("type") == "websocket"


def _same_origin(connection: HTTPConnection) -> bool:
    origin = connection.headers.get("origin")
    host = connection.headers.get("host")
    return bool(origin and host) and urlsplit(origin or "").netloc == host


def user_subject(user: User, scopes: ScopeSet, *, token_id: str | None = None) -> Subject:
    return Subject(
        id=f"user:{user.username}",
        role=user.role,
        organization=user.organization_id,
        practitioner=user.practitioner_id,
        scopes=scopes,
        token_id=token_id,
        case_worker=user.case_worker,
    )


def actor_of(subject: Subject | None, request: HTTPConnection | None, **extra: Any) -> Actor:
    address = client_address(request) if request is not None else None
    if subject is None:
        return Actor(id=None, address=address, **extra)
    return Actor(
        id=subject.id,
        role=subject.role,
        organization=subject.organization,
        practitioner=subject.practitioner,
        address=address,
        **extra,
    )


def _unauthorized(message: str) -> FhirError:
    error = FhirError.of(401, message, code="login")
    error.headers["WWW-Authenticate"] = 'Bearer realm="fhir"'
    return error


@dataclass
class RequestCaller:
    """One request's caller, as the records API needs it (``records.access.Caller``)."""

    subject: Subject
    policy: AccessPolicy
    actor: Actor
    gate: Gate

    @property
    def access(self) -> AccessPolicy:
        return self.policy

    async def audit(self, event: AccessEvent, *, session: AsyncSession | None = None) -> None:
        records = record_access_events(self.actor, event, now=utcnow())
        if session is not None:
            await append(session, self.gate.indexer, self.gate.audit.key, records)
        else:
            await self.gate.audit.record(*records, wait=self.gate.settings.audit_reads_wait)


@dataclass
class Gate:
    """Identifies callers for the whole application (one per process)."""

    settings: Settings
    database: Database
    indexer: SearchIndexer
    signer: TokenSigner
    audit: AuditWriter

    def policy(self, subject: Subject) -> AccessPolicy:
        return AccessPolicy(subject, consent_grace_seconds=self.settings.consent_grace_seconds)

    def subject_from_token(self, token: str) -> Subject:
        claims = self.signer.verify(token)
        try:
            scopes = parse_scopes(claims.scope)
        except ValueError:
            raise InvalidToken("token scope malformed") from None
        return Subject(
            id=claims.subject,
            role=claims.role,
            organization=claims.organization,
            practitioner=claims.practitioner,
            scopes=scopes,
            patient=claims.patient,
            token_id=claims.token_id,
            case_worker=claims.case_worker,
        )

    async def web_session(self, request: HTTPConnection) -> WebSession | None:
        """The live web session of the request's cookie, if any."""
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            return None
        async with self.database.transaction(write=False) as session:
            return await accounts.find_session(session, token=token, now=utcnow())

    @staticmethod
    def csrf_matches(web: WebSession, sent: str | None) -> bool:
        """Whether ``sent`` is the session's CSRF token, in the masked form pages carry."""
        return hmac.compare_digest(web.csrf_token, unmask_csrf(sent or ""))

    async def authenticate(self, request: HTTPConnection) -> RequestCaller:
        """The caller of an API request or a WebSocket, or a 401 FhirError (invalid tokens
        are audited)."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("Send the access token as 'Authorization: Bearer <token>'")
            try:
                subject = self.subject_from_token(token.strip())
            except InvalidToken as error:
                await self.audit.record(
                    _refused_token_event(request, str(error)),
                )
                raise _unauthorized(f"The access token was refused: {error}") from None
            return self._caller(subject, request)
        web = await self.web_session(request)
        if web is not None:
            if web.user.password_change_required:
                raise FhirError.of(
                    403,
                    "The password of this session was set by an administrator: choose your "
                    f"own at {accounts.CHANGE_PASSWORD_PATH} first",
                    code="security",
                )
            if _is_socket(request):
                if not _same_origin(request):
                    raise FhirError.of(
                        403,
                        "A WebSocket opened with a web session must come from this site's pages",
                        code="security",
                    )
                return self.web_caller(web, request)
            if request.method.upper() not in _SAFE_METHODS and not self.csrf_matches(
                web, request.headers.get(CSRF_HEADER)
            ):
                raise FhirError.of(
                    403,
                    "A write from a web session must carry its CSRF token (X-CSRF-Token)",
                    code="security",
                )
            return self.web_caller(web, request)
        raise _unauthorized("Log in, or send an access token (Authorization: Bearer <token>)")

    def web_caller(self, web: WebSession, request: HTTPConnection) -> RequestCaller:
        """The caller of a page request: the signed-in person with the scopes of a person."""
        return self.user_caller(web.user, request)

    def user_caller(self, user: User, request: HTTPConnection | None = None) -> RequestCaller:
        """A person as a caller (a page's, or an operator's command acting as them), with the
        scopes of a person."""
        return self._caller(user_subject(user, parse_scopes(USER_SCOPES)), request)

    def _caller(self, subject: Subject, request: HTTPConnection | None) -> RequestCaller:
        return RequestCaller(subject, self.policy(subject), actor_of(subject, request), self)


def _refused_token_event(request: HTTPConnection, problem: str) -> dict[str, Any]:
    return login_event(
        actor_of(None, request),
        succeeded=False,
        method="bearer token",
        now=utcnow(),
        problem=problem,
    )
