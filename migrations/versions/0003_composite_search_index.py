"""composite search index

Rows for composite search parameters (Observation code-value-quantity and the like): a token
and the value it goes with, from the same element. Run `health reindex` to fill it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 19:42:32.958961
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "search_composite",
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
        sa.Column("value_system", sa.String(length=255), nullable=True),
        sa.Column("value_code", sa.String(length=255), nullable=True),
        sa.Column("value_number", sa.Numeric(precision=38, scale=10), nullable=True),
        sa.Column("value_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("value_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("value_text", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_search_composite_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_composite")),
    )
    with op.batch_alter_table("search_composite", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_search_composite_res_type_param_code_system"),
            ["res_type", "param", "code", "system"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_search_composite_rid"), ["rid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("search_composite", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_search_composite_rid"))
        batch_op.drop_index(batch_op.f("ix_search_composite_res_type_param_code_system"))

    op.drop_table("search_composite")
