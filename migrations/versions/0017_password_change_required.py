"""password change required

``users.password_change_required``: the password was set by someone else (an administrator
creating the account or resetting its password, ``health user add --temporary``), so the
person must choose her own at her next login before she can use anything.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column(
                "password_change_required", sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("password_change_required")
