"""planner statistics

PostgreSQL keeps the 100 most common values of a column, from a sample of 30,000 rows, by
default. Two index columns need more for the planner to see what they hold:

- ``search_token.code`` holds every code of every resource (LOINC, SNOMED CT, ICD-10,
  identifiers...); at a million resources a code held by 15,000 rows fell outside those 100
  and was estimated at 52, and a chained search planned for 52 rows ran a nested loop over
  15,000 (640 ms instead of 36 ms).
- ``search_reference.target_type``: references to households (Groups) are a few hundred
  among millions and were missing from the sample, so estimated at one row; the access
  policy's test of whether a row is about a household in care then read every reference to
  a Group for each row it tested (0.044 ms each) instead of the row's own few references
  (0.013 ms): 24 ms of a township doctor's 40 ms count of her ICD-10 conditions.

A thousand values from a sample of 300,000 rows keeps both in view.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 03:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

COLUMNS = (("search_token", "code"), ("search_reference", "target_type"))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS 1000")
            op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in COLUMNS:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS -1")
