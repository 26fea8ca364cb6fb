"""records store and search index tables

Revision ID: 0001
Revises:
Create Date: 2026-11-28 18:31:24.853432
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column(
            "rid",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("rid", name=op.f("pk_resources")),
        sa.UniqueConstraint("res_type", "res_id", name=op.f("uq_resources_res_type_res_id")),
    )
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_resources_res_type_last_updated"),
            ["res_type", "last_updated"],
            unique=False,
        )

    op.create_table(
        "resource_versions",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("content", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_resource_versions_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_resource_versions")),
        sa.UniqueConstraint("rid", "version", name=op.f("uq_resource_versions_rid_version")),
    )
    with op.batch_alter_table("resource_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_resource_versions_last_updated"), ["last_updated"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_resource_versions_res_type_seq"), ["res_type", "seq"], unique=False
        )

    op.create_table(
        "search_date",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_search_date_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_date")),
    )
    with op.batch_alter_table("search_date", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_search_date_res_type_param_end"),
            ["res_type", "param", "end"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_search_date_res_type_param_start"),
            ["res_type", "param", "start"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_search_date_rid"), ["rid"], unique=False)

    op.create_table(
        "search_number",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Numeric(precision=38, scale=10), nullable=False),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_search_number_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_number")),
    )
    with op.batch_alter_table("search_number", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_search_number_res_type_param_value"),
            ["res_type", "param", "value"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_search_number_rid"), ["rid"], unique=False)

    op.create_table(
        "search_quantity",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Numeric(precision=38, scale=10), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_search_quantity_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_quantity")),
    )
    with op.batch_alter_table("search_quantity", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_search_quantity_res_type_param_code_value"),
            ["res_type", "param", "code", "value"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_search_quantity_rid"), ["rid"], unique=False)

    op.create_table(
        "search_reference",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_search_reference_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_reference")),
    )
    with op.batch_alter_table("search_reference", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_search_reference_res_type_param_target_id_target_type"),
            ["res_type", "param", "target_id", "target_type"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_search_reference_rid"), ["rid"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_search_reference_target_type_target_id"),
            ["target_type", "target_id"],
            unique=False,
        )

    op.create_table(
        "search_string",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value_normalized", sa.String(length=255), nullable=False),
        sa.Column("value_exact", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_search_string_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_string")),
    )
    with op.batch_alter_table("search_string", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_search_string_res_type_param_value_normalized"),
            ["res_type", "param", "value_normalized"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_search_string_rid"), ["rid"], unique=False)

    op.create_table(
        "search_token",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=255), nullable=True),
        sa.Column("text", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_search_token_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_token")),
    )
    with op.batch_alter_table("search_token", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_search_token_res_type_param_code_system"),
            ["res_type", "param", "code", "system"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_search_token_rid"), ["rid"], unique=False)

    op.create_table(
        "search_uri",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.String(length=2048), nullable=False),
        sa.ForeignKeyConstraint(
            ["rid"], ["resources.rid"], name=op.f("fk_search_uri_rid_resources"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_uri")),
    )
    with op.batch_alter_table("search_uri", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_search_uri_res_type_param_uri"),
            ["res_type", "param", "uri"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_search_uri_rid"), ["rid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("search_uri", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_uri_rid"))
        batch_op.drop_index(batch_op.f("ix_search_uri_res_type_param_uri"))

    op.drop_table("search_uri")
    with op.batch_alter_table("search_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_token_rid"))
        batch_op.drop_index(batch_op.f("ix_search_token_res_type_param_code_system"))

    op.drop_table("search_token")
    with op.batch_alter_table("search_string", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_string_rid"))
        batch_op.drop_index(batch_op.f("ix_search_string_res_type_param_value_normalized"))

    op.drop_table("search_string")
    with op.batch_alter_table("search_reference", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_reference_target_type_target_id"))
        batch_op.drop_index(batch_op.f("ix_search_reference_rid"))
        batch_op.drop_index(batch_op.f("ix_search_reference_res_type_param_target_id_target_type"))

    op.drop_table("search_reference")
    with op.batch_alter_table("search_quantity", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_quantity_rid"))
        batch_op.drop_index(batch_op.f("ix_search_quantity_res_type_param_code_value"))

    op.drop_table("search_quantity")
    with op.batch_alter_table("search_number", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_number_rid"))
        batch_op.drop_index(batch_op.f("ix_search_number_res_type_param_value"))

    op.drop_table("search_number")
    with op.batch_alter_table("search_date", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_date_rid"))
        batch_op.drop_index(batch_op.f("ix_search_date_res_type_param_start"))
        batch_op.drop_index(batch_op.f("ix_search_date_res_type_param_end"))

    op.drop_table("search_date")
    with op.batch_alter_table("resource_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_resource_versions_res_type_seq"))
        batch_op.drop_index(batch_op.f("ix_resource_versions_last_updated"))

    op.drop_table("resource_versions")
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_resources_res_type_last_updated"))

    op.drop_table("resources")
