"""Search criteria that pick one resource: conditional interactions and references.

``Patient?identifier=urn:oid:2.16.156.10011.1.3|640104198005060122`` says which resource a
conditional create, update, delete or reference means. The criteria are parsed strictly by
the search parser (anything unsupported is a 400: guessing would pick the wrong record) and
matched in SQL like any search. Inside a transaction Bundle they are also matched in memory
against the resources the same Bundle writes, so an entry may refer by identifier to a clinic
created three entries later; that in-memory match understands ``_id`` and token parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from records.access import FULL_ACCESS, RecordAccess
from records.indexing import SearchIndexer
from records.outcome import FhirError
from records.search.parse import Clause, SearchParser, SearchQuery, split_token
from records.search.sql import condition
from records.tables import resources


@dataclass(frozen=True)
class Criteria:
    res_type: str
    query: SearchQuery

    @classmethod
    def parse(cls, res_type: str, query: str, indexer: SearchIndexer) -> Criteria:
        parsed = SearchParser(indexer, max_count=1, default_count=1).parse(
            res_type, query, strict=True
        )
        if not parsed.clauses:
            raise FhirError.of(
                400, f"Conditional criteria for {res_type} are empty: '{query}'", code="required"
            )
        return cls(res_type, parsed)

    async def find_ids(
        self, session: AsyncSession, *, access: RecordAccess = FULL_ACCESS, limit: int = 2
    ) -> list[str]:
        """Ids of current, undeleted resources that match and that ``access`` shows, oldest
        first, at most ``limit``: a record the caller may not see never decides a condition."""
        visible = access.visible(resources)
        statement = (
            select(resources.c.res_id)
            .where(
                resources.c.res_type == self.res_type,
                resources.c.deleted.is_(False),
                *(condition(clause, resources, "", access) for clause in self.query.clauses),
                *([] if visible is None else [visible]),
            )
            .order_by(resources.c.rid)
            .limit(limit)
        )
        return list((await session.execute(statement)).scalars().all())

    def matches(self, res_id: str, index_rows: dict[str, list[dict[str, Any]]]) -> bool:
        """Whether a resource about to be written (its id and index rows) matches."""
        return all(_matches(clause, res_id, index_rows) for clause in self.query.clauses)


def _matches(clause: Clause, res_id: str, index_rows: dict[str, list[dict[str, Any]]]) -> bool:
    if clause.param == "_id":
        return res_id in {v.text for v in clause.values}
    if clause.type != "token" or clause.modifier or clause.chain is not None:
        return False  # only _id and plain tokens are matched against a Bundle's own entries
    rows = [r for r in index_rows.get("token", []) if r["param"] == clause.param]
    for value in clause.values:
        system, code = split_token(value.text)
        for row in rows:
            if code and row.get("code") != code:
                continue
            if system is not None and (row.get("system") or "") != system:
                continue
            return True
    return False
