"""substring search and coordinates

On PostgreSQL, two GIN indexes on ``search_string.value_normalized`` let substring searches
start from the index instead of reading every string row of a type:

- a ``pg_trgm`` trigram index, for ``:contains`` and Chinese text of three characters or
  more (``LIKE '%马小明%'``);
- an index on ``search_han_grams(res_type, param, value_normalized)`` for the names of
  people and places (``name``, ``family``, ``given``): the Han characters of the text and its
  pairs of adjacent Han characters. Trigrams cannot serve the one- and two-character queries
  that Chinese names mostly are (小明, 王), so a name search for Han text asks for its grams
  (``@> ARRAY['Patient|given|小明']``), which decide alone for one or two characters and
  narrow the rows for the LIKE beyond. Other parameters and text without Han characters
  have no grams.

pg_trgm ships with PostgreSQL (Debian's postgresql package, ``contrib`` elsewhere) and is a
trusted extension: the database owner may create it. SQLite has no such index; its searches
do not change.

On both databases, ``search_composite`` gains ``third_number`` for the composites of three
components (MolecularSequence coordinates), and every stored Patient is put in its own
compartment where a create with a server-assigned id had left it out (the access policy asks
that row of every patient). Rows of the newly indexed composites and of
references' own identifiers (``subject:identifier=``) appear as resources are written; run
``health reindex`` to add them for resources stored before.

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

# The index of Han grams covers the names of people and places, where the short queries are;
# addresses and other long texts are searched with three characters or more, which trigrams
# serve. Each gram is qualified by the row's type and parameter (Patient|family|马), so the
# index's statistics say how common 马 is among patients' family names, which is what
# PostgreSQL needs to choose between walking the patients (马: a third of them) and looking
# the few up (锁). Kept in step with records.search.sql (HAN_GRAM_PARAMS, han_grams).
#
# Han characters as records.pinyin.has_han sees them: CJK Unified Ideographs (U+4E00..), its
# Extension A (U+3400..) and Extensions B to F (U+20000..U+2FA1F, rare characters some names
# are written with). Code points are compared as numbers: a regular expression per
# character costs three times as much on every write.
_HAN_GRAMS = """
CREATE OR REPLACE FUNCTION search_han_grams(res_type text, param text, value text)
RETURNS text[] LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
  grams text[] := '{}';
  prefix text := res_type || '|' || param || '|';
  previous text := NULL;
  c text;
  point integer;
BEGIN
  IF param NOT IN ('name', 'family', 'given') THEN
    RETURN grams;
  END IF;
  FOR i IN 1..char_length(value) LOOP
    c := substr(value, i, 1);
    point := ascii(c);
    IF point BETWEEN 13312 AND 40959 OR point BETWEEN 131072 AND 195103 THEN
      grams := grams || (prefix || c);
      IF previous IS NOT NULL THEN
        grams := grams || (prefix || previous || c);
      END IF;
      previous := c;
    ELSE
      previous := NULL;
    END IF;
  END LOOP;
  RETURN grams;
END
$$
"""


def upgrade() -> None:
    with op.batch_alter_table("search_composite", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("third_number", sa.Numeric(precision=38, scale=10), nullable=True)
        )
    op.execute(
        "INSERT INTO search_compartment (rid, res_type, param, owner_id) "
        "SELECT r.rid, r.res_type, 'Patient', r.res_id FROM resources r "
        "WHERE r.res_type = 'Patient' AND r.deleted = false AND NOT EXISTS ("
        "SELECT 1 FROM search_compartment c WHERE c.rid = r.rid AND c.param = 'Patient' "
        "AND c.owner_id = r.res_id)"
    )
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
    ).first()
    if available is None:
        raise RuntimeError(
            "PostgreSQL lacks the pg_trgm extension, which substring search needs: install "
            "the server's contrib modules (Debian's postgresql package includes them)"
        )
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute(_HAN_GRAMS)
    op.execute(
        "CREATE INDEX ix_search_string_value_trigrams ON search_string "
        "USING gin (value_normalized gin_trgm_ops)"
    )
    op.execute(
        "CREATE INDEX ix_search_string_han_grams ON search_string "
        "USING gin (search_han_grams(res_type, param, value_normalized))"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_search_string_han_grams")
        op.execute("DROP INDEX IF EXISTS ix_search_string_value_trigrams")
        op.execute("DROP FUNCTION IF EXISTS search_han_grams(text, text, text)")
        # pg_trgm stays: other objects of the database may use it.
    with op.batch_alter_table("search_composite", schema=None) as batch_op:
        batch_op.drop_column("third_number")
