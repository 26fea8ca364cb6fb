"""index rows without a foreign key

The search index tables lose their foreign key to ``resources``. Their rows are derived:
the store writes them in the transaction that writes the resource, from its content, and
removes them with it; a row never names a resource it did not come from. Checking the key
was a lookup of the resource's row, and a lock on it, for each index row: a resource writes
some 16 of them and an AuditEvent 20, and 650 index rows (a search's audit events) took
PostgreSQL 10.5 ms to insert with the check and 6.5 ms without.

What removed index rows by cascade must now remove them itself: nothing in the service
deletes a ``resources`` row (a FHIR delete is a version).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 07:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
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


def _key(table: str) -> str:
    return f"fk_{table}_rid_resources"


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in TABLES:
        if postgresql:
            op.drop_constraint(_key(table), table, type_="foreignkey")
        else:
            with op.batch_alter_table(table, recreate="always") as batch_op:
                batch_op.drop_constraint(_key(table), type_="foreignkey")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in TABLES:
        if postgresql:
            op.create_foreign_key(
                _key(table), table, "resources", ["rid"], ["rid"], ondelete="CASCADE"
            )
        else:
            with op.batch_alter_table(table, recreate="always") as batch_op:
                batch_op.create_foreign_key(
                    _key(table), "resources", ["rid"], ["rid"], ondelete="CASCADE"
                )
