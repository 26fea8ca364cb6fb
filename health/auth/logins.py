"""Logging in with a password: throttled per address and per account, locked out after
repeated failures, and every attempt on the audit trail.

The throttle counts attempts on the message bus, so with Redis configured every worker
process shares the counts; the lockout (``users.failed_logins``/``locked_until``) is kept in
the database, so it survives restarts. Both answer a guesser the same way whatever part of
the guess was wrong.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from health.auth import accounts
from health.auth.accounts import LoginRefused, User
from health.auth.audit import Actor, login_event
from health.auth.gate import Gate, client_address
from health.core.bus import MessageBus
from health.core.clock import utcnow


class TooManyAttempts(LoginRefused):
    """Refused before the password was even looked at: too many attempts in a minute."""


#: Failed attempts allowed on one account per minute, from anywhere (the lockout comes on
#: top of it, after consecutive failures).
ATTEMPTS_PER_ACCOUNT_PER_MINUTE = 10


@dataclass
class LoginThrottle:
    """Failed attempts per minute, per client address and per account.

    Only failures count, so a clinic's many people behind one address log in freely while a
    guesser is stopped after a few wrong guesses a minute.
    """

    bus: MessageBus
    per_address: int
    per_account: int = ATTEMPTS_PER_ACCOUNT_PER_MINUTE

    async def admit(self, *, address: str | None, account: str | None) -> None:
        if address is not None and await self.bus.hits(f"login:address:{address}", 60) >= (
            self.per_address
        ):
            raise TooManyAttempts("Too many failed logins from this address; wait a minute")
        if account is not None and await self.bus.hits(f"login:account:{account}", 60) >= (
            self.per_account
        ):
            raise TooManyAttempts("Too many failed logins for this account; wait a minute")

    async def failed(self, *, address: str | None, account: str | None) -> None:
        if address is not None:
            await self.bus.hit(f"login:address:{address}", 60)
        if account is not None:
            await self.bus.hit(f"login:account:{account}", 60)


async def password_login(
    gate: Gate,
    throttle: LoginThrottle,
    request: Request,
    *,
    username: str,
    password: str,
    method: str = "password",
    then: Callable[[AsyncSession, User], Awaitable[None]] | None = None,
) -> User:
    """The user whose password this is, or LoginRefused; the attempt is audited either way.
    ``method`` names the door in the audit trail (``password-change``: her current password,
    asked again before she sets a new one; throttled and locked out as any login).

    ``then`` is what the right password allows, done in the transaction that checked it,
    with the account's row still locked: nobody changes the password or disables the
    account between the check and the change. What it raises undoes it and is raised."""
    address = client_address(request)
    account = username.strip().lower()[:64]
    user: User | None = None
    failure: LoginRefused | None = None
    try:
        await throttle.admit(address=address, account=account)
        async with gate.database.transaction(write=True) as session:
            try:
                user = await accounts.check_password(
                    session,
                    username=account,
                    password=password,
                    now=utcnow(),
                    lockout_after=gate.settings.lockout_after,
                    lockout_seconds=gate.settings.lockout_seconds,
                )
            except LoginRefused as refused:
                failure = refused  # the failure count it raised must commit
            else:
                if then is not None:
                    await then(session, user)
        if user is None:
            raise failure or LoginRefused("Wrong username or password")
    except LoginRefused as refused:
        if not isinstance(refused, TooManyAttempts):
            await throttle.failed(address=address, account=account)
        # The account name is recorded as typed (it may not exist); the password never is.
        await gate.audit.record(
            login_event(
                Actor(id=f"user:{account}", address=address),
                succeeded=False,
                method=method,
                now=utcnow(),
                problem=str(refused),
            )
        )
        raise
    await gate.audit.record(
        login_event(
            Actor(
                id=f"user:{user.username}",
                role=user.role,
                organization=user.organization_id,
                practitioner=user.practitioner_id,
                address=address,
            ),
            succeeded=True,
            method=method,
            now=utcnow(),
        )
    )
    return user
