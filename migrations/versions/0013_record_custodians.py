"""record custodians

``search_custodian``: for each resource in a patient's record, the organisations that manage
that patient (``records.custodians``). The access policy asks of every row a clinic's search
looks at whether one of the clinic's organisations holds it; before, it looked the row's
patients up among all the clinic's patients. Filled here from the compartment and reference
indexes already stored, with the statement the store itself uses.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from records.custodians import fill_all

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "search_custodian",
        sa.Column("id", _KEY, autoincrement=True, nullable=False),
        sa.Column("rid", _KEY, nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_search_custodian_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_custodian")),
    )
    op.execute(fill_all())
    # The indexes after the rows: one sort each instead of a million insertions.
    op.create_index(op.f("ix_search_custodian_rid"), "search_custodian", ["rid"])
    op.create_index(
        op.f("ix_search_custodian_param_org_id_res_type_rid"),
        "search_custodian",
        ["param", "org_id", "res_type", "rid"],
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ANALYZE search_custodian")


def downgrade() -> None:
    op.drop_table("search_custodian")
