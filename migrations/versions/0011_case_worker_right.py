"""case worker right

``users.case_worker``: whether the user may see the names and resident identity numbers of
the households on the commission's dashboard (``health user add --case-worker``). Analysts
without it see the same figures and case lists, by household number and village only.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("case_worker", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("case_worker")
