"""household records and evidence digests

What a full recompute reads, kept by the record store as rows so that it parses no JSON.

``poverty_households`` and ``poverty_household_members`` hold all that the illness-poverty
rules read of a household Group (``health.poverty.households.HouseholdRecord``), so that a
recompute never parses a Group's JSON: the Group's quantity, the status's words, the
income's year, the other causes of poverty, the meta tags and security labels that flags
copy, and every member the Group lists with the period they belong (before, only the
members of the day the row was written). Texts are no longer cut to a length.

``poverty_assessments`` (new) keeps a digest of what each illness-poverty RiskAssessment
says (``health.poverty.flags.evidence_digest``): a recompute tells unchanged evidence from
changed without reading the RiskAssessment.

The household tables are emptied and, with the new one, filled again from the stored Groups
and RiskAssessments by the extraction of the installed code (``health.poverty.derived``,
through ``records.derived.refill``, which writes only the columns the tables have at this
revision): derived rows are always what today's extraction makes of the stored JSON.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WIDENED = {
    "poverty_households": ("number", "name", "township", "village", "main_cause"),
    "poverty_household_members": ("name", "relationship"),
}
_ADDED = {
    "poverty_households": (
        sa.Column("quantity", sa.Integer(), nullable=True),
        sa.Column("status_text", sa.Text(), nullable=True),
        sa.Column("income_year", sa.Integer(), nullable=True),
        sa.Column("other_causes", sa.Text(), nullable=True),
        sa.Column("meta", sa.Text(), nullable=True),
    ),
    "poverty_household_members": (
        sa.Column("period_start", sa.String(10), nullable=True),
        sa.Column("period_end", sa.String(10), nullable=True),
    ),
}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":  # SQLite does not hold text to a declared length
        for table, names in _WIDENED.items():
            for name in names:
                op.alter_column(table, name, type_=sa.Text())
    for table, added in _ADDED.items():
        for column in added:
            op.add_column(table, column)
    op.create_table(
        "poverty_assessments",
        sa.Column("rid", _KEY, nullable=False),
        sa.Column("assessment_id", sa.String(64), nullable=False),
        sa.Column("evidence", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["rid"],
            ["resources.rid"],
            name=op.f("fk_poverty_assessments_rid_resources"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rid", name=op.f("pk_poverty_assessments")),
        sa.UniqueConstraint("assessment_id", name=op.f("uq_poverty_assessments_assessment_id")),
    )

    from health.poverty.derived import ASSESSMENTS, HOUSEHOLD_MEMBERS, HOUSEHOLDS
    from records.derived import refill

    for derived in (HOUSEHOLDS, HOUSEHOLD_MEMBERS):
        op.execute(sa.text(f"DELETE FROM {derived.table.name}"))
    for derived in (HOUSEHOLDS, HOUSEHOLD_MEMBERS, ASSESSMENTS):
        refill(bind, derived)


def downgrade() -> None:
    op.drop_table("poverty_assessments")
    for table, added in _ADDED.items():
        with op.batch_alter_table(table) as batch:
            for column in added:
                batch.drop_column(column.name)
