"""Accounts: users, API clients, authorization codes, web sessions and refresh tokens.

Every function takes the caller's session and keyword arguments, and never commits: the
caller's transaction decides. Password checks run Argon2 in a thread (tens of milliseconds
of CPU each) so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from health.auth.passwords import hash_password, password_problem, verify_password
from health.auth.policy import ROLES
from health.auth.scopes import ScopeSet, parse_scopes
from health.auth.tables import (
    authorization_codes,
    clients,
    refresh_tokens,
    users,
    web_sessions,
)
from health.core.clock import utcnow
from records.tables import resources

USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,63}$")
#: Roles whose work is at one organisation, which must exist in the directory.
ROLES_AT_AN_ORGANIZATION = frozenset(
    {"village_doctor", "township_doctor", "specialist", "commission_analyst"}
)
#: A hash to verify against when the account does not exist, so that the answer takes as
#: long for an unknown username as for a wrong password.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """Input an operator or admin must fix; the message names the field."""


class SessionEnded(Exception):
    """The web session a change was made in has ended (revoked or expired) meanwhile."""


class LoginRefused(Exception):
    """A login that fails. The message is safe to show: it never says which part was wrong."""


#: The page where a person chooses her own password (``health.web.pages``): where a session
#: whose password someone else set is sent, and what the API's refusal of it names.
CHANGE_PASSWORD_PATH = "/account/password"


@dataclass(frozen=True)
class User:
    username: str
    role: str
    organization_id: str | None
    practitioner_id: str | None
    display_name: str | None
    disabled: bool
    #: May see households' names and resident identity numbers on the dashboard.
    case_worker: bool = False
    #: Her password was set by someone else: she must choose her own before anything else.
    password_change_required: bool = False

    @classmethod
    def from_row(cls, row: object) -> User:
        return cls(
            username=row.username,  # type: ignore[attr-defined]
            role=row.role,  # type: ignore[attr-defined]
            organization_id=row.organization_id,  # type: ignore[attr-defined]
            practitioner_id=row.practitioner_id,  # type: ignore[attr-defined]
            display_name=row.display_name,  # type: ignore[attr-defined]
            disabled=row.disabled,  # type: ignore[attr-defined]
            case_worker=bool(row.case_worker),  # type: ignore[attr-defined]
            password_change_required=bool(row.password_change_required),  # type: ignore[attr-defined]
        )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def resource_exists(session: AsyncSession, res_type: str, res_id: str) -> bool:
    """Whether the resource is in the store and not deleted (whoever may see it)."""
    found = await session.execute(
        select(resources.c.rid).where(
            resources.c.res_type == res_type,
            resources.c.res_id == res_id,
            resources.c.deleted.is_(False),
        )
    )
    return found.first() is not None


# -- users ---------------------------------------------------------------------------------


async def add_user(
    session: AsyncSession,
    *,
    username: str,
    role: str,
    organization_id: str | None,
    password: str | None,
    practitioner_id: str | None = None,
    display_name: str | None = None,
    case_worker: bool = False,
    temporary_password: bool = False,
    now: dt.datetime,
) -> User:
    """Create a user. ``temporary_password``: the password is someone else's choice (an
    administrator's), so she must change it at her first login."""
    if not USERNAME.match(username):
        raise AccountError(
            "username: 2–64 lower-case letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    if role not in ROLES:
        raise AccountError(f"role: one of {', '.join(ROLES)}")
    if role in ROLES_AT_AN_ORGANIZATION and not organization_id:
        raise AccountError(f"organization: a {role} works at an Organization; give its id")
    if organization_id and not await resource_exists(session, "Organization", organization_id):
        raise AccountError(f"organization: Organization/{organization_id} is not in the directory")
    if practitioner_id and not await resource_exists(session, "Practitioner", practitioner_id):
        raise AccountError(f"practitioner: Practitioner/{practitioner_id} is not in the directory")
    if role == "specialist" and not practitioner_id:
        raise AccountError("practitioner: a specialist is shared records as a Practitioner")
    if password is not None and (problem := password_problem(password)):
        raise AccountError(f"password: {problem}")
    existing = await session.execute(select(users.c.username).where(users.c.username == username))
    if existing.first() is not None:
        raise AccountError(f"username: {username} already exists")
    password_hash = await asyncio.to_thread(hash_password, password) if password else None
    await session.execute(
        users.insert().values(
            username=username,
            role=role,
            organization_id=organization_id,
            practitioner_id=practitioner_id,
            display_name=display_name,
            password_hash=password_hash,
            disabled=False,
            case_worker=case_worker,
            password_change_required=bool(password) and temporary_password,
            failed_logins=0,
            created_at=now,
        )
    )
    return User(
        username,
        role,
        organization_id,
        practitioner_id,
        display_name,
        False,
        case_worker,
        password_change_required=bool(password) and temporary_password,
    )


async def get_user(session: AsyncSession, *, username: str) -> User | None:
    row = (await session.execute(select(users).where(users.c.username == username))).first()
    return User.from_row(row) if row else None


async def list_users(session: AsyncSession) -> list[User]:
    rows = (await session.execute(select(users).order_by(users.c.username))).all()
    return [User.from_row(r) for r in rows]


async def disable_user(session: AsyncSession, *, username: str) -> None:
    """Disable the account and end its web sessions and refresh tokens at once."""
    done = await session.execute(
        update(users).where(users.c.username == username).values(disabled=True)
    )
    if done.rowcount == 0:  # type: ignore[attr-defined]
        raise AccountError(f"username: no user {username}")
    await session.execute(
        update(web_sessions).where(web_sessions.c.username == username).values(revoked=True)
    )
    await session.execute(
        update(refresh_tokens).where(refresh_tokens.c.username == username).values(revoked=True)
    )


async def update_user(
    session: AsyncSession,
    *,
    username: str,
    role: str,
    organization_id: str | None,
    practitioner_id: str | None,
    display_name: str | None,
) -> User:
    """Change a user's role, organisation, practitioner and name, checked as add_user checks
    them. A changed role or organisation ends the user's sessions and refresh tokens, so
    nobody keeps the access of the old post."""
    before = await get_user(session, username=username)
    if before is None:
        raise AccountError(f"username: no user {username}")
    if role not in ROLES:
        raise AccountError(f"role: one of {', '.join(ROLES)}")
    if role in ROLES_AT_AN_ORGANIZATION and not organization_id:
        raise AccountError(f"organization: a {role} works at an Organization; give its id")
    if organization_id and not await resource_exists(session, "Organization", organization_id):
        raise AccountError(f"organization: Organization/{organization_id} is not in the directory")
    if practitioner_id and not await resource_exists(session, "Practitioner", practitioner_id):
        raise AccountError(f"practitioner: Practitioner/{practitioner_id} is not in the directory")
    if role == "specialist" and not practitioner_id:
        raise AccountError("practitioner: a specialist is shared records as a Practitioner")
    await session.execute(
        update(users)
        .where(users.c.username == username)
        .values(
            role=role,
            organization_id=organization_id,
            practitioner_id=practitioner_id,
            display_name=display_name,
        )
    )
    if (before.role, before.organization_id, before.practitioner_id) != (
        role,
        organization_id,
        practitioner_id,
    ):
        await _end_logins(session, username)
    return replace(
        before,
        role=role,
        organization_id=organization_id,
        practitioner_id=practitioner_id,
        display_name=display_name,
    )


async def set_case_worker(session: AsyncSession, *, username: str, case_worker: bool) -> None:
    """Give or take the case-worker right; the user's sessions end, so that a page already
    open cannot keep showing names the user may no longer see."""
    done = await session.execute(
        update(users).where(users.c.username == username).values(case_worker=case_worker)
    )
    if done.rowcount == 0:  # type: ignore[attr-defined]
        raise AccountError(f"username: no user {username}")
    await _end_logins(session, username)


async def enable_user(session: AsyncSession, *, username: str) -> None:
    """Let a disabled user log in again (with their password; sessions stay ended)."""
    done = await session.execute(
        update(users)
        .where(users.c.username == username)
        .values(disabled=False, failed_logins=0, locked_until=None)
    )
    if done.rowcount == 0:  # type: ignore[attr-defined]
        raise AccountError(f"username: no user {username}")


async def _end_logins(session: AsyncSession, username: str, *, keep: str | None = None) -> None:
    """End the user's web sessions (but the one of cookie token ``keep``) and refresh tokens."""
    ended = update(web_sessions).where(web_sessions.c.username == username)
    if keep is not None:
        ended = ended.where(web_sessions.c.token_hash != _digest(keep))
    await session.execute(ended.values(revoked=True))
    await session.execute(
        update(refresh_tokens).where(refresh_tokens.c.username == username).values(revoked=True)
    )


async def set_password(
    session: AsyncSession,
    *,
    username: str,
    password: str,
    temporary: bool,
    keep_session: str | None = None,
) -> None:
    """Set the user's password and unlock the account; every login made with the old one
    ends (but the web session of cookie token ``keep_session``: hers, when she changes it
    herself, which must still be live, else :class:`SessionEnded`). ``temporary``: set by
    someone else, so she must change it at her next login."""
    if problem := password_problem(password):
        raise AccountError(f"password: {problem}")
    if keep_session is not None:
        kept = await find_session(session, token=keep_session, now=utcnow())
        if kept is None or kept.user.username != username:
            raise SessionEnded()
    password_hash = await asyncio.to_thread(hash_password, password)
    done = await session.execute(
        update(users)
        .where(users.c.username == username)
        .values(
            password_hash=password_hash,
            password_change_required=temporary,
            failed_logins=0,
            locked_until=None,
        )
    )
    if done.rowcount == 0:  # type: ignore[attr-defined]
        raise AccountError(f"username: no user {username}")
    await _end_logins(session, username, keep=keep_session)


async def check_password(
    session: AsyncSession,
    *,
    username: str,
    password: str,
    now: dt.datetime,
    lockout_after: int,
    lockout_seconds: int,
) -> User:
    """The user, if the password is right and the account usable; else :class:`LoginRefused`.

    ``lockout_after`` failures in a row lock the account for ``lockout_seconds``; while it is
    locked even the right password is refused, so guessing cannot continue. Only the right
    password hears that the account is locked: to a wrong one a locked account answers as an
    unknown name does, so the lock tells a guesser nothing about which accounts exist.
    """
    row = (
        await session.execute(select(users).where(users.c.username == username).with_for_update())
    ).first()
    stored = row.password_hash if row is not None and row.password_hash else _DUMMY_HASH
    matches = await asyncio.to_thread(verify_password, stored, password)
    if row is None or row.disabled or not row.password_hash:
        raise LoginRefused("Wrong username or password")
    if row.locked_until is not None and _aware(row.locked_until) > now:
        if not matches:
            raise LoginRefused("Wrong username or password")
        raise LoginRefused("This account is locked after repeated failed logins; try later")
    if not matches:
        failures = row.failed_logins + 1
        locked_until = (
            now + dt.timedelta(seconds=lockout_seconds) if failures >= lockout_after else None
        )
        await session.execute(
            update(users)
            .where(users.c.username == username)
            .values(failed_logins=0 if locked_until else failures, locked_until=locked_until)
        )
        raise LoginRefused("Wrong username or password")
    if row.failed_logins or row.locked_until:
        await session.execute(
            update(users)
            .where(users.c.username == username)
            .values(failed_logins=0, locked_until=None)
        )
    return User.from_row(row)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# -- API clients ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    kind: str
    scope: ScopeSet
    redirect_uris: tuple[str, ...]
    public: bool


def _client_from_row(row: Any) -> Client:
    return Client(
        client_id=row.client_id,
        name=row.name,
        kind=row.kind,
        scope=parse_scopes(row.scope),
        redirect_uris=tuple((row.redirect_uris or "").split()),
        public=row.secret_hash is None,
    )


def _check_redirect_uri(uri: str) -> None:
    parts = urlsplit(uri)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if (
        parts.fragment
        or not parts.netloc
        or not (parts.scheme == "https" or (parts.scheme == "http" and loopback))
    ):
        raise AccountError(
            f"redirect-uri: {uri!r} must be an absolute https:// URI without a fragment "
            "(http:// only on this machine's loopback address)"
        )


async def add_client(
    session: AsyncSession,
    *,
    name: str,
    scope: str,
    now: dt.datetime,
    redirect_uris: tuple[str, ...] = (),
    public: bool = False,
) -> tuple[str, str | None]:
    """Register a client; returns (client_id, client_secret), the secret shown only once.

    Without redirect URIs the client is a system (``system/`` scopes, client_credentials);
    with them it is an app people log in to (``user/`` and ``patient/`` scopes), public
    (no secret, PKCE only) when ``public``.
    """
    if not name.strip():
        raise AccountError("name: give the client a name")
    try:
        scopes = parse_scopes(scope)
    except ValueError as error:
        raise AccountError(f"scope: {error}") from None
    kind = "app" if redirect_uris else "system"
    if public and kind == "system":
        raise AccountError("public: only an app (with a redirect URI) can be public")
    if kind == "system" and (not scopes.scopes or scopes.contexts() != {"system"}):
        raise AccountError("scope: a system client is given system/ scopes, e.g. system/*.rs")
    if kind == "app" and (not scopes.scopes or "system" in scopes.contexts()):
        raise AccountError("scope: an app is given user/ or patient/ scopes, e.g. user/*.rs")
    for uri in redirect_uris:
        _check_redirect_uri(uri)
    client_id = secrets.token_hex(16)
    secret = None if public else secrets.token_urlsafe(32)
    await session.execute(
        clients.insert().values(
            client_id=client_id,
            name=name.strip(),
            kind=kind,
            secret_hash=await asyncio.to_thread(hash_password, secret) if secret else None,
            scope=str(scopes),
            redirect_uris=" ".join(redirect_uris) or None,
            disabled=False,
            created_at=now,
        )
    )
    return client_id, secret


async def get_client(session: AsyncSession, *, client_id: str) -> Client | None:
    row = (
        await session.execute(
            select(clients).where(clients.c.client_id == client_id, clients.c.disabled.is_(False))
        )
    ).first()
    return _client_from_row(row) if row else None


async def check_client(session: AsyncSession, *, client_id: str, secret: str | None) -> Client:
    """The client, if it exists, is enabled and (unless public) the secret is right."""
    row = (await session.execute(select(clients).where(clients.c.client_id == client_id))).first()
    if row is not None and row.secret_hash is None and not row.disabled:
        if secret:
            raise LoginRefused("A public client has no secret to send")
        return _client_from_row(row)
    stored = row.secret_hash if row is not None and row.secret_hash else _DUMMY_HASH
    matches = await asyncio.to_thread(verify_password, stored, secret or "")
    if row is None or row.disabled or not matches:
        raise LoginRefused("Unknown client or wrong secret")
    return _client_from_row(row)


# -- authorization codes -------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """What an authorization code (or a refresh token) was given for."""

    user: User
    client_id: str
    scope: str
    patient_id: str | None
    family: str | None = None


async def issue_code(
    session: AsyncSession,
    *,
    client_id: str,
    username: str,
    scope: str,
    redirect_uri: str,
    code_challenge: str,
    patient_id: str | None,
    now: dt.datetime,
    ttl_seconds: int = 120,
) -> str:
    code = secrets.token_urlsafe(32)
    await session.execute(
        authorization_codes.insert().values(
            code_hash=_digest(code),
            client_id=client_id,
            username=username,
            scope=scope,
            redirect_uri=redirect_uri,
            code_challenge=code_challenge,
            patient_id=patient_id,
            expires_at=now + dt.timedelta(seconds=ttl_seconds),
        )
    )
    return code


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii", "replace")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def redeem_code(
    session: AsyncSession,
    *,
    code: str,
    client_id: str,
    redirect_uri: str,
    code_verifier: str,
    now: dt.datetime,
) -> Grant:
    """Spend an authorization code. A code presented twice revokes what its first use gave."""
    row = (
        await session.execute(
            select(authorization_codes)
            .where(authorization_codes.c.code_hash == _digest(code))
            .with_for_update()
        )
    ).first()
    if row is None or row.client_id != client_id:
        raise LoginRefused("Unknown authorization code")
    if row.used_at is not None:
        if row.family:
            await _revoke_family(session, row.family)
        raise LoginRefused("This authorization code was already used; its tokens are revoked")
    if _aware(row.expires_at) <= now:
        raise LoginRefused("The authorization code has expired")
    if row.redirect_uri != redirect_uri:
        raise LoginRefused("redirect_uri differs from the one the code was issued for")
    if not hmac.compare_digest(pkce_challenge(code_verifier), row.code_challenge):
        raise LoginRefused("code_verifier does not match the code_challenge")
    user = await get_user(session, username=row.username)
    if user is None or user.disabled:
        raise LoginRefused("The account is disabled")
    family = secrets.token_hex(16)
    await session.execute(
        update(authorization_codes)
        .where(authorization_codes.c.code_hash == row.code_hash)
        .values(used_at=now, family=family)
    )
    return Grant(user, row.client_id, row.scope, row.patient_id, family)


# -- web sessions --------------------------------------------------------------------------


@dataclass(frozen=True)
class WebSession:
    user: User
    csrf_token: str


async def open_session(
    session: AsyncSession, *, username: str, now: dt.datetime, ttl_seconds: int, address: str | None
) -> tuple[str, str]:
    """A new web session: (cookie token, CSRF token)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    await session.execute(
        web_sessions.insert().values(
            token_hash=_digest(token),
            username=username,
            csrf_token=csrf,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl_seconds),
            address=address,
            revoked=False,
        )
    )
    return token, csrf


async def find_session(session: AsyncSession, *, token: str, now: dt.datetime) -> WebSession | None:
    row = (
        await session.execute(
            select(users, web_sessions.c.csrf_token)
            .select_from(web_sessions.join(users, users.c.username == web_sessions.c.username))
            .where(
                web_sessions.c.token_hash == _digest(token),
                web_sessions.c.revoked.is_(False),
                web_sessions.c.expires_at > now,
                users.c.disabled.is_(False),
            )
        )
    ).first()
    return WebSession(User.from_row(row), row.csrf_token) if row else None


async def close_session(session: AsyncSession, *, token: str) -> None:
    await session.execute(
        update(web_sessions).where(web_sessions.c.token_hash == _digest(token)).values(revoked=True)
    )


# -- refresh tokens ------------------------------------------------------------------------


async def issue_refresh_token(
    session: AsyncSession, *, grant: Grant, now: dt.datetime, ttl_seconds: int
) -> str:
    token = secrets.token_urlsafe(32)
    await session.execute(
        refresh_tokens.insert().values(
            token_hash=_digest(token),
            family=grant.family or secrets.token_hex(16),
            username=grant.user.username,
            client_id=grant.client_id,
            scope=grant.scope,
            patient_id=grant.patient_id,
            issued_at=now,
            expires_at=now + dt.timedelta(seconds=ttl_seconds),
            revoked=False,
        )
    )
    return token


async def _revoke_family(session: AsyncSession, family: str) -> None:
    await session.execute(
        update(refresh_tokens).where(refresh_tokens.c.family == family).values(revoked=True)
    )


async def use_refresh_token(
    session: AsyncSession, *, token: str, client_id: str, now: dt.datetime, ttl_seconds: int
) -> tuple[Grant, str]:
    """Rotate: (what the login was given, the new refresh token). The old one is spent.

    A refresh token presented a second time means it was copied: the whole family (every
    token rotated from the same login) is revoked, so the thief's copy dies with the user's.
    """
    row = (
        await session.execute(
            select(refresh_tokens)
            .where(refresh_tokens.c.token_hash == _digest(token))
            .with_for_update()
        )
    ).first()
    if row is None or row.client_id != client_id:
        raise LoginRefused("Unknown refresh token")
    if row.used_at is not None or row.revoked:
        await _revoke_family(session, row.family)
        raise LoginRefused("This refresh token was already used; its login is now revoked")
    if _aware(row.expires_at) <= now:
        raise LoginRefused("The refresh token has expired; log in again")
    user = await get_user(session, username=row.username)
    if user is None or user.disabled:
        raise LoginRefused("The account is disabled")
    await session.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.token_hash == row.token_hash)
        .values(used_at=now)
    )
    grant = Grant(user, row.client_id, row.scope, row.patient_id, row.family)
    return grant, await issue_refresh_token(session, grant=grant, now=now, ttl_seconds=ttl_seconds)
