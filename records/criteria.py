"""Search criteria for conditional interactions and conditional references.

``Patient?identifier=urn:oid:2.16.156.10011.1.3|640104198005060122`` picks the resources a
conditional create, update, delete or reference means. Criteria are matched in SQL against the
search indexes and, inside a transaction Bundle, in memory against the resources the same
Bundle is writing (so an entry may refer by identifier to a clinic created three entries
later). Supported here: ``_id`` and every token parameter, with ``system|code``, ``code``,
``|code`` and ``system|``; a comma means OR, a repeated parameter means AND. An unsupported
parameter or modifier is refused with a 400 naming it: guessing would pick the wrong record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from records.indexing import SearchIndexer
from records.outcome import FhirError
from records.tables import resources, search_token

#: Result and format parameters that carry no criteria.
_IGNORED = frozenset({"_format", "_pretty", "_summary", "_count", "_offset", "_elements", "_total"})


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code

    @classmethod
    def parse(cls, text: str) -> TokenValue:
        if "|" not in text:
            return cls(None, text)
        system, code = text.split("|", 1)
        return cls(system, code or None)

    def matches(self, row: dict[str, Any]) -> bool:
        if self.code is not None and row.get("code") != self.code:
            return False
        if self.system is None:
            return True
        if self.system == "":
            return row.get("system") in (None, "")
        return row.get("system") == self.system


@dataclass(frozen=True, slots=True)
class Criterion:
    param: str
    #: Alternatives (comma-separated): any may match.
    ids: tuple[str, ...] = ()
    tokens: tuple[TokenValue, ...] = ()


@dataclass(frozen=True, slots=True)
class Criteria:
    res_type: str
    criteria: tuple[Criterion, ...]
    #: Parameters left out because they are not supported (only when not strict).
    ignored: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls, res_type: str, query: str, indexer: SearchIndexer, *, conditional: bool = True
    ) -> Criteria:
        """Parse criteria. For a conditional interaction (the default) anything unsupported is
        a 400, and empty criteria are too; for a plain search it is ignored and listed."""
        known = indexer.parameters(res_type)
        parsed = []
        ignored = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in _IGNORED:
                continue
            base_name = name.split(":")[0]
            problem: str | None = None
            alternatives = tuple(v for v in value.split(",") if v != "")
            if ":" in name:
                problem = f"modifier '{name}' is not supported"
            elif not alternatives:
                problem = f"parameter '{name}' has no value"
            elif name == "_id":
                parsed.append(Criterion(name, ids=alternatives))
            elif known.get(base_name) == "token":
                parsed.append(
                    Criterion(name, tokens=tuple(TokenValue.parse(v) for v in alternatives))
                )
            else:
                problem = (
                    f"'{name}' is not a supported search parameter for {res_type} "
                    "(supported: _id and the token parameters)"
                )
            if problem is not None:
                if conditional:
                    raise FhirError.of(
                        400, f"Conditional criteria: {problem}", code="not-supported"
                    )
                ignored.append(problem)
        if conditional and not parsed:
            raise FhirError.of(
                400, f"Conditional criteria for {res_type} are empty: '{query}'", code="required"
            )
        return cls(res_type, tuple(parsed), tuple(ignored))

    def _query(self, columns: Any) -> Any:
        query = select(columns).where(
            resources.c.res_type == self.res_type, resources.c.deleted.is_(False)
        )
        for criterion in self.criteria:
            if criterion.ids:
                query = query.where(resources.c.res_id.in_(criterion.ids))
                continue
            alternatives = []
            for token in criterion.tokens:
                conditions = [search_token.c.param == criterion.param]
                if token.code is not None:
                    conditions.append(search_token.c.code == token.code)
                if token.system == "":
                    conditions.append(search_token.c.system.is_(None))
                elif token.system is not None:
                    conditions.append(search_token.c.system == token.system)
                alternatives.append(and_(*conditions))
            query = query.where(
                select(search_token.c.rid)
                .where(
                    search_token.c.rid == resources.c.rid,
                    search_token.c.res_type == self.res_type,
                    or_(*alternatives),
                )
                .exists()
            )
        return query

    async def count(self, session: AsyncSession) -> int:
        return int((await session.execute(self._query(func.count()))).scalar_one())

    async def find_ids(
        self, session: AsyncSession, *, limit: int = 2, offset: int = 0
    ) -> list[str]:
        """Ids of current, undeleted resources that match, oldest first, at most ``limit``."""
        query = self._query(resources.c.res_id).order_by(resources.c.rid)
        return list((await session.execute(query.offset(offset).limit(limit))).scalars().all())

    def matches(self, res_id: str, index_rows: dict[str, list[dict[str, Any]]]) -> bool:
        """Whether a resource about to be written (its id and index rows) matches."""
        tokens = index_rows.get("token", [])
        for criterion in self.criteria:
            if criterion.ids:
                if res_id not in criterion.ids:
                    return False
                continue
            rows = [r for r in tokens if r["param"] == criterion.param]
            if not any(t.matches(r) for t in criterion.tokens for r in rows):
                return False
        return True
