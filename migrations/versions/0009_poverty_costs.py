"""poverty costs

One row per bill (ExplanationOfBenefit, Claim, Invoice) with its amounts in 分, as
``health.poverty.costs`` reads them, derived by the record store in the same transaction as
each bill (``records.derived``): the illness-poverty recompute sums a city's costs in SQL
instead of parsing every bill's JSON. Filled here from the bills already stored.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "poverty_costs",
        sa.Column("rid", _KEY, nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("settled_on", sa.Date(), nullable=True),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("not_counted", sa.Text(), nullable=True),
        sa.Column("settled", sa.Boolean(), nullable=False),
        sa.Column("answers", sa.String(length=128), nullable=True),
        sa.Column("currency", sa.String(length=8), nullable=True),
        sa.Column("provider", sa.String(length=255), nullable=True),
        *(
            sa.Column(name, sa.BigInteger(), nullable=True)
            for name in ("billed", "basic", "serious", "assistance", "other", "out_of_pocket")
        ),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_poverty_costs_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rid", name=op.f("pk_poverty_costs")),
    )
    op.create_index(
        op.f("ix_poverty_costs_patient_id_settled_on"),
        "poverty_costs",
        ["patient_id", "settled_on"],
    )
    op.create_index(op.f("ix_poverty_costs_answers"), "poverty_costs", ["answers"])

    from health.poverty.derived import BILL_AMOUNTS
    from records.derived import refill

    refill(op.get_bind(), BILL_AMOUNTS)


def downgrade() -> None:
    op.drop_table("poverty_costs")
