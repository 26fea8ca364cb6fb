"""access and audit

Patient compartment membership as an index (one row per resource and patient), filled here
from the reference rows already indexed; the tables of users, API clients, refresh tokens,
authorization codes, web sessions, break-glass grants and the audit hash chain.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from records.definitions import compartments

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "search_compartment",
        sa.Column("id", _KEY, autoincrement=True, nullable=False),
        sa.Column("rid", _KEY, nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("owner_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_search_compartment_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_compartment")),
    )
    op.create_index(op.f("ix_search_compartment_rid"), "search_compartment", ["rid"])
    op.create_index(
        op.f("ix_search_compartment_param_owner_id"), "search_compartment", ["param", "owner_id"]
    )
    _fill_patient_compartment()

    op.create_table(
        "users",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("organization_id", sa.String(length=64), nullable=True),
        sa.Column("practitioner_id", sa.String(length=64), nullable=True),
        sa.Column("display_name", sa.String(length=128), nullable=True),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_users")),
    )
    op.create_table(
        "api_clients",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("redirect_uris", sa.Text(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_api_clients")),
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["username"], ["users.username"], name=op.f("fk_refresh_tokens_username_users")
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["api_clients.client_id"],
            name=op.f("fk_refresh_tokens_client_id_api_clients"),
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_refresh_tokens")),
    )
    op.create_index(op.f("ix_refresh_tokens_family"), "refresh_tokens", ["family"])
    op.create_table(
        "authorization_codes",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("code_challenge", sa.String(length=128), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("family", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["api_clients.client_id"],
            name=op.f("fk_authorization_codes_client_id_api_clients"),
        ),
        sa.ForeignKeyConstraint(
            ["username"], ["users.username"], name=op.f("fk_authorization_codes_username_users")
        ),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_authorization_codes")),
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["username"], ["users.username"], name=op.f("fk_web_sessions_username_users")
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_web_sessions")),
    )
    op.create_table(
        "access_grants",
        sa.Column("id", _KEY, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["username"], ["users.username"], name=op.f("fk_access_grants_username_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_grants")),
    )
    op.create_index(
        op.f("ix_access_grants_username_expires_at"), "access_grants", ["username", "expires_at"]
    )
    op.create_table(
        "audit_chain",
        sa.Column("position", _KEY, autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_audit_chain")),
        sa.UniqueConstraint("event_id", name=op.f("uq_audit_chain_event_id")),
    )


def _fill_patient_compartment() -> None:
    """Membership of what is already stored: Patients themselves, and what refers to them
    through the parameters of the official Patient CompartmentDefinition."""
    op.execute(
        "INSERT INTO search_compartment (rid, res_type, param, owner_id) "
        "SELECT rid, res_type, 'Patient', res_id FROM resources "
        "WHERE res_type = 'Patient' AND deleted = false"
    )
    links = [
        (res_type, param)
        for res_type, params in compartments().get("Patient", {}).items()
        for param in params
    ]
    pairs = " OR ".join(
        f"(res_type = '{res_type}' AND param = '{param}')" for res_type, param in links
    )
    op.execute(
        "INSERT INTO search_compartment (rid, res_type, param, owner_id) "
        "SELECT DISTINCT rid, res_type, 'Patient', target_id FROM search_reference "
        f"WHERE target_type = 'Patient' AND target_id IS NOT NULL AND ({pairs}) "
        "AND NOT (res_type = 'Patient' AND target_id IN "
        "(SELECT res_id FROM resources r WHERE r.rid = search_reference.rid))"
    )


def downgrade() -> None:
    for table in (
        "audit_chain",
        "access_grants",
        "web_sessions",
        "authorization_codes",
        "refresh_tokens",
        "api_clients",
        "users",
    ):
        op.drop_table(table)
    op.drop_table("search_compartment")
