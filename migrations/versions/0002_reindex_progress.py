"""reindex progress

Where a `health reindex` run has got to. From this revision the indexer fills every search
parameter type, not only tokens: run `health reindex` once on a database written before it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 19:18:31.200762
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reindex_jobs",
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("last_rid", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_reindex_jobs")),
    )


def downgrade() -> None:
    op.drop_table("reindex_jobs")
