"""index rows without a key

The search index tables lose their ``id`` column. Nothing reads it: rows are found by their
resource and by value. Each resource written inserts some 16 index rows, and for each the
key's sequence and its unique index were a fifth of what PostgreSQL did.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 03:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

TABLES = (
    "search_string",
    "search_token",
    "search_date",
    "search_reference",
    "search_quantity",
    "search_number",
    "search_uri",
    "search_composite",
    "search_compartment",
    "search_custodian",
)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in TABLES:
        if postgresql:
            # Drops the primary key and the sequence with it; the rows are not rewritten.
            op.execute(f"ALTER TABLE {table} DROP COLUMN id")
        else:
            with op.batch_alter_table(table, recreate="always") as batch_op:
                batch_op.drop_constraint(f"pk_{table}", type_="primary")
                batch_op.drop_column("id")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in TABLES:
        if postgresql:
            op.execute(
                f"ALTER TABLE {table} ADD COLUMN id BIGSERIAL, "
                f"ADD CONSTRAINT pk_{table} PRIMARY KEY (id)"
            )
        else:
            with op.batch_alter_table(table, recreate="always") as batch_op:
                batch_op.add_column(
                    sa.Column("id", sa.Integer(), autoincrement=True, nullable=False)
                )
                batch_op.create_primary_key(f"pk_{table}", ["id"])
