"""The record store's tables: resources, their versions, and the typed search indexes.

``resources`` holds one row per logical resource (type, id, current version, deleted?).
``resource_versions`` holds every version's JSON text exactly as served; reads return it
without re-serialising. The ``search_*`` tables hold values extracted from the current
version by the official SearchParameter expressions, one table per parameter type, in the
shape HAPI FHIR and Blaze use; they are rewritten in the same transaction as each write and
are never the truth (``health reindex`` rebuilds them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    or_,
)

from health.core.schema import SurrogateKey, metadata

resources = Table(
    "resources",
    metadata,
    Column("rid", SurrogateKey, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("deleted", Boolean, nullable=False),
    UniqueConstraint("res_type", "res_id"),
    Index(None, "res_type", "last_updated"),
)


def named(r: Any, items: Iterable[tuple[str, str]]) -> ColumnElement[bool]:
    """The row ``r`` of ``resources`` is one of these (type, id) resources.

    Each type with its own ids: every type with every id had PostgreSQL probe the (type, id)
    index for each pair of the two lists, 550 probes for the 50 resources of a page of
    ``$everything`` over 11 types (10 ms).
    """
    ids: dict[str, set[str]] = {}
    for res_type, res_id in items:
        ids.setdefault(res_type, set()).add(res_id)
    return or_(
        *(
            and_(r.c.res_type == res_type, r.c.res_id.in_(sorted(found)))
            for res_type, found in sorted(ids.items())
        )
    )


resource_versions = Table(
    "resource_versions",
    metadata,
    # A global, increasing sequence: the order of system-level history and its paging key.
    Column("seq", SurrogateKey, primary_key=True, autoincrement=True),
    Column("rid", SurrogateKey, ForeignKey("resources.rid", ondelete="CASCADE"), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    # POST, PUT, PATCH or DELETE: the interaction that made this version (Bundle.entry.request).
    Column("method", String(8), nullable=False),
    # The JSON text served for this version; NULL for a deletion.
    Column("content", Text, nullable=True),
    UniqueConstraint("rid", "version"),
    Index(None, "res_type", "seq"),
    Index(None, "last_updated"),
)


#: Where a ``health reindex`` run has got to, so that a crashed run resumes instead of restarting.
reindex_jobs = Table(
    "reindex_jobs",
    metadata,
    # "*" for every type, else the resource type.
    Column("scope", String(64), primary_key=True),
    Column("last_rid", SurrogateKey, nullable=False),
    Column("started", DateTime(timezone=True), nullable=False),
)


def _index_table(name: str, *columns: Column, indexes: tuple[tuple[str, ...], ...]) -> Table:
    # No key of their own: rows are found by their resource (``rid``) and by value, and
    # written many to a resource (16 a Synthea resource), where a key's sequence and unique
    # index cost PostgreSQL a fifth of each row's insertion for nothing a query reads. No
    # foreign key either (migration 0016): the store writes and removes them with their
    # resource, and the check was a lookup and a lock of its row for each index row.
    table = Table(
        name,
        metadata,
        Column("rid", SurrogateKey, nullable=False),
        Column("res_type", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        *columns,
        Index(None, "rid"),
    )
    for cols in indexes:
        Index(None, *(table.c[c] for c in cols))
    return table


search_string = _index_table(
    "search_string",
    # Lower-cased, accents removed: what prefix and :contains match against.
    Column("value_normalized", String(255), nullable=False),
    Column("value_exact", Text, nullable=False),
    indexes=(("res_type", "param", "value_normalized", "rid"),),
)

search_token = _index_table(
    "search_token",
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    # Display text of the coding or CodeableConcept, normalised, for :text.
    Column("text", String(255), nullable=True),
    indexes=(("res_type", "param", "code", "system", "rid"),),
)

search_date = _index_table(
    "search_date",
    # Every date is a range: a day, a month, a period, an instant of zero length.
    Column("start", DateTime(timezone=True), nullable=False),
    Column("end", DateTime(timezone=True), nullable=False),
    indexes=(("res_type", "param", "start", "rid"), ("res_type", "param", "end", "rid")),
)

search_reference = _index_table(
    "search_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    # Absolute or canonical references that point outside the store.
    Column("url", Text, nullable=True),
    indexes=(
        ("res_type", "param", "target_id", "target_type", "rid"),
        ("target_type", "target_id"),
    ),
)

search_quantity = _index_table(
    "search_quantity",
    Column("value", Numeric(precision=38, scale=10), nullable=False),
    Column("system", String(255), nullable=True),
    Column("code", String(64), nullable=True),
    Column("unit", String(64), nullable=True),
    indexes=(("res_type", "param", "code", "value", "rid"),),
)

search_number = _index_table(
    "search_number",
    Column("value", Numeric(precision=38, scale=10), nullable=False),
    indexes=(("res_type", "param", "value", "rid"),),
)

search_uri = _index_table(
    "search_uri",
    Column("uri", String(2048), nullable=False),
    indexes=(("res_type", "param", "uri", "rid"),),
)

search_composite = _index_table(
    "search_composite",
    # The first component: a token (code, combo-code...) in system and code, or a reference
    # (DocumentReference relationship) in code, as Type/id or its absolute URL.
    Column("system", String(255), nullable=True),
    Column("code", String(255), nullable=True),
    # The second component, in the columns its type needs: token (value_system, value_code),
    # quantity (value_number, value_system, value_code, value_text as unit), date (value_start,
    # value_end), string (value_text, normalised), number (value_number).
    Column("value_system", String(255), nullable=True),
    Column("value_code", String(255), nullable=True),
    Column("value_number", Numeric(precision=38, scale=10), nullable=True),
    Column("value_start", DateTime(timezone=True), nullable=True),
    Column("value_end", DateTime(timezone=True), nullable=True),
    Column("value_text", String(255), nullable=True),
    # The third component of MolecularSequence's coordinates (the end; the start is in
    # value_number).
    Column("third_number", Numeric(precision=38, scale=10), nullable=True),
    indexes=(("res_type", "param", "code", "system", "rid"),),
)

#: Compartment membership: one row per compartment a resource belongs to (``param`` is the
#: compartment type, ``Patient``; ``owner_id`` its owner's id), derived from the reference
#: rows and the official CompartmentDefinition. The access policy and compartment searches
#: ask "is this row in one of these patients' records?" with one indexed lookup.
search_compartment = _index_table(
    "search_compartment",
    Column("owner_id", String(64), nullable=False),
    indexes=(("param", "owner_id", "rid"),),
)

#: Custodians: for each resource in a patient's record (a ``search_compartment`` row with
#: ``param`` Patient), the organisations that manage that patient (Patient.managingOrganization,
#: "the custodian of the patient record"). Kept by the store in the transaction of every write
#: of the resource and of the patient (a patient who moves clinic takes her whole record along),
#: so that "is this row held by one of these clinics?" is one indexed equality per row instead
#: of a lookup among the clinics' patients.
search_custodian = _index_table(
    "search_custodian",
    Column("org_id", String(64), nullable=False),
    indexes=(("param", "org_id", "res_type", "rid"),),
)

SEARCH_TABLES = {
    "string": search_string,
    "token": search_token,
    "date": search_date,
    "reference": search_reference,
    "quantity": search_quantity,
    "number": search_number,
    "uri": search_uri,
    "composite": search_composite,
    "compartment": search_compartment,
    "custodian": search_custodian,
}
