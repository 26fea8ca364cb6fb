"""composite coordinates

``search_composite`` gains ``third_number`` for the composites of three components
(MolecularSequence coordinates). Rows of the newly indexed composites and of references' own
identifiers (``subject:identifier=``) appear as resources are written; run ``health reindex``
to add them for resources stored before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("search_composite", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("third_number", sa.Numeric(precision=38, scale=10), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("search_composite", schema=None) as batch_op:
        batch_op.drop_column("third_number")
