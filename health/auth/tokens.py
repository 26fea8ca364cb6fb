"""Short-lived access tokens: HS256 JWTs that this service signs and checks itself.

The signing key is shared by every worker process through a file (``load_or_create_secret``).
Only HS256 is accepted when verifying, so a token claiming ``alg: none`` or an RSA algorithm
(the key-confusion attack) is refused before its claims are read.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

logger = logging.getLogger(__name__)

ALGORITHM = "HS256"
SECRET_BYTES = 32
# Clock difference tolerated between the worker that issued a token and the one checking it.
LEEWAY_SECONDS = 5

_REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "exp", "jti", "role", "scope"]
_OPTIONAL_STRING_CLAIMS = ("organization", "practitioner", "patient")


class InvalidToken(Exception):
    """A token was refused; the message is short, never contains the token, and is safe to
    show to the client."""


@dataclass(frozen=True, kw_only=True)
class AccessClaims:
    """What a verified access token says about its bearer."""

    subject: str
    role: str
    organization: str | None
    practitioner: str | None
    scope: str
    patient: str | None = None
    token_id: str
    expires_at: int
    issued_at: int
    #: The user's case-worker right (``users.case_worker``) when the token was issued.
    case_worker: bool = False


class TokenSigner:
    """Issues and verifies the access tokens of one issuer, with one shared secret."""

    def __init__(self, secret: bytes, *, issuer: str, audience: str = "fhir") -> None:
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"the token secret must be at least {SECRET_BYTES} bytes")
        self._secret = secret
        self._issuer = issuer
        self._audience = audience

    def issue(
        self,
        *,
        subject: str,
        role: str,
        organization: str | None,
        practitioner: str | None,
        scope: str,
        patient: str | None = None,
        case_worker: bool = False,
        ttl_seconds: int,
        now: float | None = None,
    ) -> tuple[str, AccessClaims]:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        issued_at = int(time.time() if now is None else now)
        claims = AccessClaims(
            subject=subject,
            role=role,
            organization=organization,
            practitioner=practitioner,
            scope=scope,
            patient=patient,
            token_id=secrets.token_urlsafe(16),
            expires_at=issued_at + ttl_seconds,
            issued_at=issued_at,
            case_worker=case_worker,
        )
        payload: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": claims.subject,
            "iat": claims.issued_at,
            "exp": claims.expires_at,
            "jti": claims.token_id,
            "role": claims.role,
            "scope": claims.scope,
        }
        for name in _OPTIONAL_STRING_CLAIMS:
            value = getattr(claims, name)
            if value is not None:
                payload[name] = value
        if case_worker:
            payload["case_worker"] = True
        token = jwt.encode(payload, self._secret, algorithm=ALGORITHM)
        return token, claims

    def verify(self, token: str, *, now: float | None = None) -> AccessClaims:
        """The claims of ``token`` if it is genuine, current and ours; InvalidToken otherwise."""
        moment = time.time() if now is None else now
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require": _REQUIRED_CLAIMS,
                    # Times are checked below against ``moment``, which pyjwt cannot be given.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "strict_aud": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidToken("token signature invalid") from None
        except jwt.InvalidAlgorithmError:
            raise InvalidToken("token algorithm not accepted") from None
        except jwt.DecodeError:
            raise InvalidToken("token malformed") from None
        except jwt.MissingRequiredClaimError as error:
            raise InvalidToken(f"token lacks the {error.claim!r} claim") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("token issuer not accepted") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("token audience not accepted") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("token invalid") from None

        expires_at = _integer_claim(payload, "exp")
        issued_at = _integer_claim(payload, "iat")
        if expires_at <= moment - LEEWAY_SECONDS:
            raise InvalidToken("token expired")
        if issued_at > moment + LEEWAY_SECONDS:
            raise InvalidToken("token issued in the future")
        if "nbf" in payload and _integer_claim(payload, "nbf") > moment + LEEWAY_SECONDS:
            raise InvalidToken("token not yet valid")
        return AccessClaims(
            subject=_string_claim(payload, "sub"),
            role=_string_claim(payload, "role"),
            organization=_optional_string_claim(payload, "organization"),
            practitioner=_optional_string_claim(payload, "practitioner"),
            scope=_string_claim(payload, "scope"),
            patient=_optional_string_claim(payload, "patient"),
            token_id=_string_claim(payload, "jti"),
            expires_at=expires_at,
            issued_at=issued_at,
            case_worker=_flag_claim(payload, "case_worker"),
        )


def _flag_claim(payload: dict[str, Any], name: str) -> bool:
    value = payload.get(name, False)
    if not isinstance(value, bool):
        raise InvalidToken("token malformed")
    return value


def _integer_claim(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name)
    # bool is an int subclass; JSON true is not a time.
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidToken("token malformed")
    return value


def _string_claim(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise InvalidToken("token malformed")
    return value


def _optional_string_claim(payload: dict[str, Any], name: str) -> str | None:
    if payload.get(name) is None:
        return None
    return _string_claim(payload, name)


def load_or_create_secret(path: Path) -> bytes:
    """The signing secret stored (as hex) at ``path``, created there on first use.

    Several worker processes may start at once: each writes a candidate to a private file
    and hard-links it into place, which fails if ``path`` exists, so exactly one wins and the
    others read the winner's complete file (a reader never sees a half-written one).
    Blocking file I/O: call it at start-up, not on the event loop.
    """
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(SECRET_BYTES)
    candidate = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            # The umask may only remove bits, but be exact about who can read the key.
            os.fchmod(file.fileno(), 0o600)
            file.write(secret.hex() + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(candidate, path)
        except FileExistsError:
            return _read_secret(path)
    finally:
        candidate.unlink(missing_ok=True)
    return secret


def _read_secret(path: Path) -> bytes:
    raw = path.read_bytes()
    try:
        secret = bytes.fromhex(raw.decode("ascii"))
    except ValueError:
        raise ValueError(f"{path}: the token secret must be written as hex") from None
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"{path}: the token secret must be at least {SECRET_BYTES} bytes")
    if path.stat().st_mode & 0o077:
        logger.warning("%s: the token secret is readable by other users; chmod 600 it", path)
    return secret


def service_secret(configured_hex: str | None, default_path: Path) -> bytes:
    """The service's secret: ``HEALTH_SECRET_KEY`` (hex) if set, else the key file's."""
    if configured_hex:
        try:
            secret = bytes.fromhex(configured_hex.strip())
        except ValueError:
            raise ValueError("HEALTH_SECRET_KEY must be hex") from None
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"HEALTH_SECRET_KEY must be at least {SECRET_BYTES} bytes")
        return secret
    return load_or_create_secret(default_path)
