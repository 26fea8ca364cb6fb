"""The tables of accounts, API clients, authorization codes, refresh tokens, web sessions,
break-glass grants and the audit chain.

Users are the people who log in: each is a Practitioner of the directory with one role at one
Organization. Clinical access is derived from that (see :mod:`health.auth.policy`), never
stored per record. Secrets are stored only as hashes: passwords and client secrets with
Argon2, refresh tokens with SHA-256 (they are long random strings, so a fast hash suffices).
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    false,
)

from health.core.schema import SurrogateKey, metadata

users = Table(
    "users",
    metadata,
    Column("username", String(64), primary_key=True),
    Column("role", String(32), nullable=False),
    #: The Organization (clinic, township centre, hospital department, commission) of the role.
    Column("organization_id", String(64), nullable=True),
    #: The user's Practitioner in the directory (audit "who", consult actor), if any.
    Column("practitioner_id", String(64), nullable=True),
    Column("display_name", String(128), nullable=True),
    Column("password_hash", Text, nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    #: The case-worker right: sees the names and identity numbers of illness-poverty
    #: households on the commission's dashboard (analysts without it see numbers only).
    Column("case_worker", Boolean, nullable=False, default=False, server_default=false()),
    #: The password was set by someone else (an administrator): she must choose her own at
    #: her next login before she can use anything.
    Column(
        "password_change_required",
        Boolean,
        nullable=False,
        default=False,
        server_default=false(),
    ),
    #: Failed logins since the last success, and the lockout they earned.
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

clients = Table(
    "api_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    #: ``system``: a system acting for itself (client_credentials); ``app``: an application
    #: a person logs in to (authorization code with PKCE), acting for that person.
    Column("kind", String(16), nullable=False),
    #: None for a public app (it cannot keep a secret; PKCE protects its codes).
    Column("secret_hash", Text, nullable=True),
    #: The most this client may ask for, in SMART syntax (``system/*.rs``, ``user/*.rs``).
    Column("scope", Text, nullable=False),
    #: An app's registered redirect URIs, space-separated; codes go to these only.
    Column("redirect_uris", Text, nullable=True),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    #: Every token rotated from one login shares a family; a replay revokes the family.
    Column("family", String(64), nullable=False),
    Column("username", String(64), ForeignKey("users.username"), nullable=False),
    Column("client_id", String(64), ForeignKey("api_clients.client_id"), nullable=False),
    Column("scope", Text, nullable=False),
    #: The patient of a ``patient/`` launch, carried into every token the login refreshes.
    Column("patient_id", String(64), nullable=True),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
    Index(None, "family"),
)

#: Authorization codes of the SMART app launch: one use each, minutes long, bound to the
#: client, its redirect URI and the PKCE challenge.
authorization_codes = Table(
    "authorization_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(64), ForeignKey("api_clients.client_id"), nullable=False),
    Column("username", String(64), ForeignKey("users.username"), nullable=False),
    Column("scope", Text, nullable=False),
    Column("redirect_uri", Text, nullable=False),
    #: BASE64URL(SHA-256(code_verifier)), S256 being the only method accepted.
    Column("code_challenge", String(128), nullable=False),
    Column("patient_id", String(64), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
    #: The refresh-token family its exchange started, so a replayed code can revoke it.
    Column("family", String(64), nullable=True),
)

#: Web logins: the cookie holds a random token, the table its hash, so logout and disabling
#: an account end the session at once.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("username", String(64), ForeignKey("users.username"), nullable=False),
    #: Sent back with every form and unsafe request (double submit, tied to this session).
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("address", String(64), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
)

#: Break-glass: a user opened a patient's record outside their care, for a stated reason.
access_grants = Table(
    "access_grants",
    metadata,
    Column("id", SurrogateKey, primary_key=True, autoincrement=True),
    Column("username", String(64), ForeignKey("users.username"), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index(None, "username", "expires_at"),
)

#: The audit trail's hash chain: entry n's hash covers entry n-1's hash and the exact JSON
#: text of AuditEvent n as stored, so changing, removing or reordering an AuditEvent in the
#: database breaks every hash after it (``health audit verify``).
audit_chain = Table(
    "audit_chain",
    metadata,
    Column("position", SurrogateKey, primary_key=True, autoincrement=False),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("hash", String(64), nullable=False),
)
