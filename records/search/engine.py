"""Running a parsed search: the page, the total, and the included resources.

One SELECT over ``resources`` joined to each row's current version, filtered by the clauses
(see :mod:`records.search.sql`), ordered by the ``_sort`` keys and then by ``rid`` so every
order is total, paged from a keyset cursor (:mod:`records.search.cursor`). The total comes
from the page when the first page holds every match, else from a count with the same filter
(bounded unless the client asks for ``_total=accurate``). On PostgreSQL a search whose count
the planner prices as costly reads its page from a walk in rid order instead and gives no
total beyond it (see ``SearchEngine._walk``).
Includes follow the reference index from the page (``_include``) or to it (``_revinclude``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, func, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from records.access import FULL_ACCESS, RecordAccess
from records.definitions import compartments
from records.indexing import SearchIndexer
from records.search.cursor import Cursor
from records.search.parse import Clause, Include, SearchQuery, split_token
from records.search.sql import condition, sort_value
from records.store import StoredVersion
from records.tables import (
    named,
    resource_versions,
    resources,
    search_compartment,
    search_reference,
    search_token,
)

#: How many rounds ``:iterate`` includes follow before stopping.
MAX_INCLUDE_DEPTH = 4
#: Up to how many matches a search counts when the client did not ask for ``_total=accurate``.
ESTIMATE_LIMIT = 1000
#: The price, in PostgreSQL's planner units, above which counting a search's matches among
#: all the resources is too costly (SearchEngine._count_cost): the search gives no total
#: beyond its page, and looks for a page in rid order in the next resources of the type
#: first (SearchEngine._walk). A patient's 659 readings are priced ~3,600; body heights over
#: 170 cm ~6,300 at 91,000 resources and ~19,000 at 365,000, where the full plan took 30 and
#: 50 ms.
COSTLY_COUNT = 5_000.0
#: How many resources a walk reads for each row of the page it looks for, and at most.
WALK_ROWS_PER_MATCH = 100
MAX_WALK_ROWS = 20_000
#: Of the exact codes a search names, those the planner estimates at fewer resources than
#: this many walks' slices are counted before one is chosen to walk along.
ESTIMATED_SLICES = 4


def _exact_code_clauses(query: SearchQuery) -> list[Clause]:
    """The clauses of the search that each name one exact code (``system|code``) of its
    own type's resources, in the search's order: the codes a walk can follow."""
    found = []
    for clause in query.clauses:
        if (
            clause.type != "token"
            or clause.modifier is not None
            or clause.chain is not None
            or clause.has is not None
            or len(clause.values) != 1
            or clause.res_type != query.res_type
        ):
            continue
        system, code = split_token(clause.values[0].text)
        if system and code:
            found.append(clause)
    return found


def _rows_with_code(clause: Clause) -> Any:
    """The rids of the token index rows with the exact code of ``clause`` (a SELECT)."""
    system, code = split_token(clause.values[0].text)
    token = search_token.alias("driver")
    return select(token.c.rid).where(
        token.c.res_type == clause.res_type,
        token.c.param == clause.param,
        token.c.code == code,
        token.c.system == system,
    )


class _Explain(Executable, ClauseElement):
    """``EXPLAIN (FORMAT JSON) <statement>`` (PostgreSQL): the plan, and so its cost.

    Cached like the statement it explains (its cache key is the statement's), so explaining
    the same search again does not compile it again: compiling a search with the access
    policy in it costs more than PostgreSQL's planning of it."""

    inherit_cache = True
    _traverse_internals = [("statement", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    @property
    def _all_selected_columns(self) -> list[Any]:
        # The plan is one JSON column read by position; a cached compilation asks what the
        # invoked statement selects to adapt its result map, and there is nothing to adapt.
        return []

    def __init__(self, statement: Any) -> None:
        self.statement = statement


@compiles(_Explain, "postgresql")
def _explain(element: _Explain, compiler: SQLCompiler, **kw: Any) -> str:
    return f"EXPLAIN (FORMAT JSON) {compiler.process(element.statement, **kw)}"


@dataclass
class SearchResult:
    matches: list[StoredVersion]
    total: int | None
    has_more: bool
    included: list[StoredVersion] = field(default_factory=list)
    #: Where the pages after and before this one start, when there are such pages.
    next_cursor: str | None = None
    previous_cursor: str | None = None


@dataclass(frozen=True)
class Compartment:
    """``Patient/123``: the resources that refer to it through its compartment's parameters."""

    type: str
    id: str
    #: Member types left out (``$everything`` leaves out the audit trail about the patient).
    excluded: frozenset[str] = frozenset()

    #: That the caller may see the owner (set by :meth:`SearchEngine.run`, which asks
    #: :meth:`owner_question` once before the search): then her whole record is seen.
    owner_seen: bool = False

    def owner_question(self, access: RecordAccess) -> Any:
        """Whether the caller may see the owner of this Patient compartment, as a SELECT of
        one boolean; None for another compartment, or a caller who sees every row.

        Every row in the record of a patient the caller may see is one she may see (the
        contract of :meth:`RecordAccess.visible`), so when she may see the patient her
        record's rows need no test of their own. Asked apart, before the search, and not in
        each of its statements: a township doctor's policy made each of a ``$everything``'s
        three statements take 3-6 ms to plan (PostgreSQL plans every branch of an OR,
        whether or not a row reaches it), more than running them.
        """
        if self.type != "Patient":
            return None
        seen = access.visible(resources, ("Patient",))
        if seen is None:
            return None
        return select(
            select(resources.c.rid)
            .where(
                resources.c.res_type == "Patient",
                resources.c.res_id == self.id,
                resources.c.deleted.is_(False),
                seen,
            )
            .exists()
        )

    def condition(self, r: Any, res_types: list[str] | None) -> ColumnElement[bool]:
        if self.type == "Patient":
            # The Patient compartment is indexed (``search_compartment``, written with every
            # resource from the same CompartmentDefinition): one indexed equality, where the
            # references through each member type's parameters made a condition of 110
            # types that took 15 ms to build and longer to plan for each ``$everything``.
            held = search_compartment.alias()
            conditions = [held.c.param == "Patient", held.c.owner_id == self.id]
            if res_types is not None:
                conditions.append(held.c.res_type.in_(res_types))
            if self.excluded:
                conditions.append(held.c.res_type.not_in(sorted(self.excluded)))
            return r.c.rid.in_(select(held.c.rid).where(*conditions))
        members = compartments().get(self.type, {})
        ref = search_reference.alias()
        per_type = [
            and_(ref.c.res_type == res_type, ref.c.param.in_(params))
            for res_type, params in members.items()
            if (res_types is None or res_type in res_types) and res_type not in self.excluded
        ]
        # One IN over a UNION: the rows that refer to the compartment's owner, and the owner.
        members_rids = select(ref.c.rid).where(
            ref.c.target_type == self.type, ref.c.target_id == self.id, or_(*per_type)
        )
        if res_types is None or self.type in res_types:
            owner = resources.alias()
            members_rids = members_rids.union(
                select(owner.c.rid).where(owner.c.res_type == self.type, owner.c.res_id == self.id)
            )
        return r.c.rid.in_(members_rids)


def _counted(filters: list[ColumnElement[bool]]) -> Any:
    return select(func.count()).select_from(resources).where(*filters)


def _version_columns() -> list[Any]:
    return [
        resources.c.rid,
        resources.c.res_type,
        resources.c.res_id,
        resource_versions.c.version,
        resource_versions.c.last_updated,
        resource_versions.c.method,
        resource_versions.c.content,
    ]


def _ordering(keys: list[tuple[Any, bool]], forward: bool) -> list[Any]:
    """ORDER BY for the sort keys, NULLs last; reading backwards reverses every key."""
    order = []
    for value, descending in keys:
        if forward:
            order.append(value.desc().nulls_last() if descending else value.asc().nulls_last())
        else:
            order.append(value.asc().nulls_first() if descending else value.desc().nulls_first())
    return order


def _ordering_rid(forward: bool) -> Any:
    return resources.c.rid.asc() if forward else resources.c.rid.desc()


def _cursor_at(row: Any, forward: bool, keys: list[tuple[Any, bool]]) -> str:
    values = tuple(row._mapping[f"sort_{i}"] for i in range(len(keys)))
    return Cursor(forward, values, row.rid).encode()


def _current_join() -> Any:
    return resources.join(
        resource_versions,
        and_(
            resource_versions.c.rid == resources.c.rid,
            resource_versions.c.version == resources.c.version,
        ),
    )


class SearchEngine:
    def __init__(
        self,
        session: AsyncSession,
        indexer: SearchIndexer,
        *,
        base_url: str,
        access: RecordAccess = FULL_ACCESS,
        costly_count: float = COSTLY_COUNT,
        walks: bool = True,
    ) -> None:
        self.session = session
        self.indexer = indexer
        self.base_url = base_url
        #: The caller's access, settled by :meth:`run` for the types of each search.
        self.access = access
        self.costly_count = costly_count
        #: False: every page from the full plan (what the walks are compared with in tests).
        self.walks = walks

    def _sees_everything(self) -> bool:
        """Whether the caller's searches are over every resource (a hospital system)."""
        return self.access.types_allowed("s") is None and self.access.visible(resources) is None

    def _seen(
        self,
        r: Any,
        interaction: str,
        searched: Collection[str] | None = None,
        compartment: Compartment | None = None,
    ) -> list[ColumnElement[bool]]:
        """What the caller may see of ``r`` (of the ``searched`` types, when they are known;
        in ``compartment``, when the search is of one): its types for ``interaction`` and
        the policy's rows, which are all of a patient's record when she may see the
        patient (:attr:`Compartment.owner_seen`)."""
        conditions = []
        types = self.access.types_allowed(interaction)
        if types is not None:
            conditions.append(r.c.res_type.in_(types))
        visible = self.access.visible(r, searched)
        if visible is not None and not (compartment is not None and compartment.owner_seen):
            conditions.append(visible)
        return conditions

    def _filters(
        self,
        query: SearchQuery,
        compartment: Compartment | None,
        r: Any = resources,
        *,
        probe: bool = False,
        seen: bool = True,
        given: Clause | None = None,
    ) -> list[ColumnElement[bool]]:
        """The WHERE of a search over ``r``: ``resources``, or (``probe``) each row of a
        slice of it in rid order; without ``seen``, over every row (chains and ``_has``
        too), whoever the caller; without the clause ``given``, which every row of ``r``
        meets (a walk along the index of its code)."""
        types = [query.res_type] if query.res_type else query.options.types
        filters: list[ColumnElement[bool]] = [r.c.deleted.is_(False)]
        if seen:
            filters.extend(self._seen(r, "s", types or None, compartment))
        if types:
            filters.append(r.c.res_type.in_(types))
        if compartment is not None:
            filters.append(compartment.condition(r, types))
        by_type: dict[str, list[ColumnElement[bool]]] = {}
        for clause in query.clauses:
            if clause is given:
                continue
            by_type.setdefault(clause.res_type, []).append(
                condition(
                    clause, r, self.base_url, self.access if seen else FULL_ACCESS, probe=probe
                )
            )
        if query.res_type is None and by_type:
            # A system search: each type's clauses apply to that type's resources.
            filters.append(or_(*(and_(r.c.res_type == t, *conds) for t, conds in by_type.items())))
        else:
            for conds in by_type.values():
                filters.extend(conds)
        return filters

    async def run(
        self, query: SearchQuery, *, compartment: Compartment | None = None
    ) -> SearchResult:
        options = query.options
        types = [query.res_type] if query.res_type else options.types
        if types:
            self.access = await self.access.settled(self.session, types)
        if compartment is not None:
            compartment = await self._settled(compartment)
        filters = self._filters(query, compartment)
        if options.count == 0 or options.summary == "count":
            return SearchResult([], await self._count(filters), False)
        keys = self._sort_keys(query)
        cursor = options.cursor
        forward = cursor is None or cursor.forward
        count_cost: float | None = None
        rows: list[Any] | None = None
        counted: int | None = None
        driven = False
        counting = cursor is None and options.total not in ("accurate", "none")
        if self._walkable(query):
            count_cost = await self._count_cost(query, compartment, filters)
            if count_cost is not None and count_cost > self.costly_count:
                query = await self._rarest_code_first(query)
                walked = await self._walk(query, compartment, counting=counting)
                if walked is not None:
                    rows, counted = walked
                    driven = self._driver(query) is not None
            elif counting:
                rows, counted = await self._page_and_count(
                    query, select(resources.c.rid).where(*filters)
                )
        if rows is None:
            rows = list((await self.session.execute(self._page(query, filters, keys))).all())
        has_more = len(rows) > options.count
        rows = rows[: options.count]
        if not forward:
            rows.reverse()
        first_page = cursor is None and options.offset == 0
        all_on_page = len(rows) if first_page and not has_more else None
        if counted is not None:
            total = counted if counted <= ESTIMATE_LIMIT else None
        elif driven and cursor is not None and options.total not in ("accurate", "none"):
            # A first page's walk has decided its total (_walk); a later page counts anew.
            total = await self._driven_total(query, compartment)
        else:
            total = await self._total(query, compartment, filters, all_on_page, count_cost)
        result = SearchResult([StoredVersion.from_row(r) for r in rows], total, has_more)
        if rows:
            # Reading forward there is more before this page if the client came from one;
            # reading backward, the row past the page says so.
            more_before = (cursor is not None or options.offset > 0) if forward else has_more
            more_after = has_more if forward else True
            if more_after:
                result.next_cursor = _cursor_at(rows[-1], True, keys)
            if more_before:
                result.previous_cursor = _cursor_at(rows[0], False, keys)
        if options.includes:
            result.included = await self._includes(
                options.includes, [(r.rid, r.res_type, r.res_id) for r in rows]
            )
        return result

    async def _settled(self, compartment: Compartment) -> Compartment:
        """``compartment`` with whether the caller may see its owner asked and answered."""
        question = compartment.owner_question(self.access)
        if question is None:
            return compartment
        seen = bool((await self.session.execute(question)).scalar())
        return replace(compartment, owner_seen=seen)

    async def _page_and_count(
        self, query: SearchQuery, matching: Any
    ) -> tuple[list[Any] | None, int]:
        """The first page in rid order and the count up to ``ESTIMATE_LIMIT + 1`` of the
        rids ``matching`` selects, from one statement: the matches are found once, counted,
        and the page is the first of them. When there are more than the limit the page need
        not be among those found, and its rows are None.

        For a count priced as cheap (:meth:`run`), and for a walk whose slice holds all its
        code's resources (:meth:`_walk`). Made apart, the page and the count each tested
        every candidate against the filters, and each was planned: for a township doctor's
        ICD-10 conditions, 652 candidates and the access policy's condition twice.
        """
        matches = (
            matching.limit(ESTIMATE_LIMIT + 1)
            .cte("matches")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        counted = select(func.count()).select_from(matches).scalar_subquery()
        page = (
            select(matches.c.rid)
            .order_by(matches.c.rid)
            .limit(query.options.count + 1)
            .subquery("page")
        )
        statement = (
            select(*_version_columns(), counted.label("matches_counted"))
            .select_from(_current_join().join(page, page.c.rid == resources.c.rid))
            .order_by(page.c.rid)
        )
        rows = list((await self.session.execute(statement)).all())
        found = rows[0].matches_counted if rows else 0
        return (rows if found <= ESTIMATE_LIMIT else None), found

    def _walkable(self, query: SearchQuery) -> bool:
        """A page in rid order, read forward, of one type: one :meth:`_walk` can answer."""
        options = query.options
        return (
            self.walks
            and self.session.get_bind().dialect.name == "postgresql"
            and query.res_type is not None
            and bool(query.clauses)
            and not options.sort
            and options.offset == 0
            and (options.cursor is None or options.cursor.forward)
        )

    async def _walk(
        self, query: SearchQuery, compartment: Compartment | None, *, counting: bool
    ) -> tuple[list[Any], int | None] | None:
        """The page read from the next resources in rid order, at most
        ``WALK_ROWS_PER_MATCH`` per row of the page, and, when ``counting`` (a first page
        whose total is wanted), the number of matches if the slice holds them all (else no
        total: there are more than it can count, as for a costly count); None if the slice
        holds less than a page and may not be all there is.

        PostgreSQL underestimates how many resources match several conditions on different
        index tables (most quantities over 170 are body heights; it assumes a fortieth are),
        and for a page it believes nearly all of them makes it builds the whole match set and
        sorts it: 30 ms at 1,000 matches, growing with the store. The first page of the
        resources in rid order is the first page of the matches among them, so when the
        full plan looks costly this slice is tried first; it costs as much as its length.

        The slice is of the resources of the type, or, when the search names one exact code
        (``code=system|code``), of the resources with that code, read from its index in rid
        order: where the matches are rare among the type's resources (a township doctor's
        body heights among the city's readings) a slice of the type holds too few of them,
        and a slice of that code's resources holds many. A slice that reaches the code's last
        resource holds every match, however few: then they are found, counted and paged in
        one statement, each row tested once. Walked to the page's end and then counted, a
        township doctor's 96 ICD-10 I10 conditions among the city's 652 cost 350 tests and
        then 652 more.
        """
        options = query.options
        length = self._walk_length(query)
        after = options.cursor.rid if options.cursor is not None else None
        walked, driven = self._walked(query, after, length)
        # Each condition a test of the walked row, in rid order, that stops at the page's end.
        tests = self._walk_tests(query, compartment, walked, driven)
        whole: bool | None = None
        if counting and driven is not None:
            whole = await self._slice_is_whole(driven, length)
            if whole:
                found, counted = await self._page_and_count(
                    query, select(walked.c.rid).where(*tests)
                )
                if found is not None:
                    return found, counted
        page = (
            select(walked.c.rid, walked.c.res_type, walked.c.res_id, walked.c.version)
            .where(*tests)
            .order_by(walked.c.rid)
            .limit(options.count + 1)
            .subquery("page")
        )
        current = resource_versions
        statement = (
            select(
                page.c.rid,
                page.c.res_type,
                page.c.res_id,
                current.c.version,
                current.c.last_updated,
                current.c.method,
                current.c.content,
            )
            .select_from(
                page.join(
                    current, and_(current.c.rid == page.c.rid, current.c.version == page.c.version)
                )
            )
            .order_by(page.c.rid)
        )
        rows = list((await self.session.execute(statement)).all())
        if len(rows) > options.count:
            return rows, None
        # Fewer than a page: all there is, if the slice reached the code's last resource.
        if whole is None and driven is not None:
            whole = await self._slice_is_whole(driven, length)
        return (rows, None) if whole else None

    def _walk_length(self, query: SearchQuery) -> int:
        return min(WALK_ROWS_PER_MATCH * (query.options.count + 1), MAX_WALK_ROWS)

    def _walked(self, query: SearchQuery, after: int | None, length: int) -> tuple[Any, Any]:
        """The slice a walk reads (a subquery of ``resources`` rows in rid order), and the
        driver's rows it is made of (None for a slice of the type)."""
        scan = select(resources).where(
            resources.c.res_type == query.res_type, resources.c.deleted.is_(False)
        )
        driven = self._driver(query)
        if driven is None:
            if after is not None:
                scan = scan.where(resources.c.rid > after)
            return scan.order_by(resources.c.rid).limit(length).subquery("walked"), None
        if after is not None:
            driven = driven.where(driven.selected_columns.rid > after)
        driven = driven.limit(length)
        # Joined in the driver's order, so the page's LIMIT stops the walk at its end.
        slice_ = driven.subquery("driven")
        walked = (
            scan.join(slice_, slice_.c.rid == resources.c.rid)
            .order_by(slice_.c.rid)
            .subquery("walked")
        )
        return walked, driven

    async def _slice_is_whole(self, driven: Any, length: int) -> bool:
        """Whether the driver's slice holds fewer than ``length`` rows: all it has left."""
        counted = select(func.count()).select_from(driven.subquery("counted"))
        return int((await self.session.execute(counted)).scalar_one()) < length

    async def _driven_total(
        self, query: SearchQuery, compartment: Compartment | None
    ) -> int | None:
        """The number of matches of a search walked along one code's resources, when they
        all fit in one slice from the first (counted there, each a test as in the walk);
        None when the code has more resources than that, as for a costly count. For the
        pages after the first: the first decides its total with its page (:meth:`_walk`)."""
        length = self._walk_length(query)
        walked, driven = self._walked(query, None, length)
        if not await self._slice_is_whole(driven, length):
            return None
        tests = self._walk_tests(query, compartment, walked, driven)
        counted = select(func.count()).select_from(walked).where(*tests)
        return int((await self.session.execute(counted)).scalar_one())

    def _walk_tests(
        self, query: SearchQuery, compartment: Compartment | None, walked: Any, driven: Any
    ) -> list[ColumnElement[bool]]:
        """What each walked row is tested for: the search's filters, but for the code whose
        index the slice was read from (each row has it; testing it again was a lookup of
        the row's codes for each of them, 4 ms of a township's 650 ICD-10 conditions)."""
        given = self._driving_clause(query) if driven is not None else None
        return self._filters(query, compartment, walked, probe=True, given=given)

    def _driving_clause(self, query: SearchQuery) -> Clause | None:
        """The first clause of the search that names one exact code (``system|code``)."""
        return next(iter(_exact_code_clauses(query)), None)

    async def _rarest_code_first(self, query: SearchQuery) -> SearchQuery:
        """``query`` with the clause naming the exact code that the fewest resources have
        first, so that a walk follows that code (:meth:`_driving_clause`): the same search,
        its clauses all ANDed. Only for a walk, and when the search names several codes.

        The planner's estimates of each code's rows, asked in one EXPLAIN, tell common codes
        apart well (at a million resources: 170,917 vital signs and 27,159 body heights
        estimated, 165,310 and 25,340 stored). Codes estimated at fewer than a few slices
        are counted besides, up to a walk's length, in one statement: whether a code's
        resources fit in one slice (and are then all counted) must be known, not guessed.

        Along the first code a search names, ``category=…|vital-signs&code=…|8302-2`` read
        a slice of vital signs holding less than a page of heights over 170, and fell back
        on the full plan: 62 ms, against 4.5 ms along the heights."""
        clauses = _exact_code_clauses(query)
        if len(clauses) < 2:
            return query
        length = self._walk_length(query)
        plan = await self._plan(union_all(*(_rows_with_code(clause) for clause in clauses)))
        parts = plan.get("Plans", [])
        sizes = [float(part["Plan Rows"]) for part in parts]
        if len(sizes) != len(clauses):  # not one part per code: estimates unknown
            sizes = [0.0] * len(clauses)
        uncertain = [i for i, size in enumerate(sizes) if size < ESTIMATED_SLICES * length]
        if uncertain:
            counts = [
                select(func.count())
                .select_from(_rows_with_code(clauses[i]).limit(length).subquery())
                .scalar_subquery()
                for i in uncertain
            ]
            counted = (await self.session.execute(select(*counts))).one()
            for i, n in zip(uncertain, counted, strict=True):
                # A code counted at the limit has at least as many as estimated.
                sizes[i] = float(n) if n < length else max(float(length), sizes[i])
        rarest = clauses[min(range(len(clauses)), key=lambda i: sizes[i])]
        rest = [clause for clause in query.clauses if clause is not rarest]
        return replace(query, clauses=[rarest, *rest])

    def _driver(self, query: SearchQuery) -> Any:
        """The rids of the resources with the one exact code the search names, in rid order
        (a SELECT), or None when it names none. Such rows come out of the token index (type,
        parameter, code, system, rid) already in rid order."""
        clause = self._driving_clause(query)
        if clause is None:
            return None
        rows = _rows_with_code(clause)
        return rows.distinct().order_by(rows.selected_columns.rid)

    def page_statement(self, query: SearchQuery, *, compartment: Compartment | None = None) -> Any:
        """The SELECT of a page of ``query``'s matches (and one more), as :meth:`run` sends it."""
        return self._page(query, self._filters(query, compartment), self._sort_keys(query))

    def _sort_keys(self, query: SearchQuery) -> list[tuple[Any, bool]]:
        return [
            (sort_value(param, self._sort_type(query, param), descending, resources), descending)
            for param, descending in query.options.sort
        ]

    def _page(
        self, query: SearchQuery, filters: list[ColumnElement[bool]], keys: list[tuple[Any, bool]]
    ) -> Any:
        """The page: its rows chosen first, then their current versions read.

        Joined to the versions before the LIMIT, PostgreSQL read the content of every match
        to keep a page of them: 652 ICD-10 conditions' to show 51.
        """
        options = query.options
        cursor = options.cursor
        forward = cursor is None or cursor.forward
        chosen = (
            select(resources.c.rid, *(v.label(f"sort_{i}") for i, (v, _) in enumerate(keys)))
            .where(*filters)
            .order_by(*_ordering(keys, forward), _ordering_rid(forward))
            .limit(options.count + 1)
        )
        if cursor is not None:
            chosen = chosen.where(cursor.condition(keys, resources.c.rid))
        elif options.offset:
            chosen = chosen.offset(options.offset)
        page = chosen.subquery("page")
        sorts = [page.c[f"sort_{i}"] for i in range(len(keys))]
        return (
            select(*_version_columns(), *sorts)
            .select_from(_current_join().join(page, page.c.rid == resources.c.rid))
            .order_by(
                *_ordering([(c, d) for c, (_, d) in zip(sorts, keys, strict=True)], forward),
                page.c.rid.asc() if forward else page.c.rid.desc(),
            )
        )

    async def _total(
        self,
        query: SearchQuery,
        compartment: Compartment | None,
        filters: list[ColumnElement[bool]],
        all_on_page: int | None,
        count_cost: float | None,
    ) -> int | None:
        """The number of matches: exact when asked, else exact up to ``ESTIMATE_LIMIT``.

        A first page that holds every match is its own count. Beyond that, counting ten
        thousand matches costs more than finding the first page of them, so unless the client
        asks for ``_total=accurate`` the count stops at the limit and a larger result has no
        total; its ``next`` link says there is more. On PostgreSQL a count that would cost
        more than ``costly_count`` is not made either (see :meth:`_count_cost`).
        """
        options = query.options
        if options.total == "accurate":
            return await self._count(filters)
        if options.total == "none":
            return None
        if all_on_page is not None:
            return all_on_page
        if count_cost is None:
            count_cost = await self._count_cost(query, compartment, filters)
        if count_cost is not None and count_cost > self.costly_count:
            return None
        counted = await self._count_up_to(filters, ESTIMATE_LIMIT + 1)
        return counted if counted <= ESTIMATE_LIMIT else None

    async def _count(self, filters: list[ColumnElement[bool]]) -> int:
        return int((await self.session.execute(_counted(filters))).scalar_one())

    def _bounded_count(self, filters: list[ColumnElement[bool]], limit: int) -> Any:
        bounded = select(resources.c.rid).where(*filters).limit(limit).subquery()
        return select(func.count()).select_from(bounded)

    async def _count_up_to(self, filters: list[ColumnElement[bool]], limit: int) -> int:
        """How many rows match, counting no further than ``limit``."""
        return int((await self.session.execute(self._bounded_count(filters, limit))).scalar_one())

    async def _count_cost(
        self,
        query: SearchQuery,
        compartment: Compartment | None,
        filters: list[ColumnElement[bool]],
    ) -> float | None:
        """What PostgreSQL expects counting the search's matches among all the resources to
        cost (``filters``: the caller's, the same when she sees everything); None on other
        databases.

        The planner misjudges how many resources match several conditions on different
        index tables (it multiplies their selectivities as if they were independent), but it
        prices the work well: joining every Observation with every quantity over 170 before
        counting costs as the store grows, whatever it believes of the rows. So its price
        decides, of the whole count: a caller who sees a few of the matches finds them by
        testing them all, and a LIMIT bounds nothing until that many have been found.

        The price is of the question, not of the caller's view of it: priced with the access
        policy in it, the planner's guesses about the policy's subqueries made a township
        doctor's count of one patient's encounters look costly, so that she walked 5,100
        encounters (39 ms) where a hospital system counted hers (2 ms). Whoever asks, the
        same question is answered the same way; the policy is in what is counted.
        """
        if self.session.get_bind().dialect.name != "postgresql":
            return None
        if not self._sees_everything():
            filters = self._filters(query, compartment, seen=False)
        return float((await self._plan(_counted(filters)))["Total Cost"])

    async def _plan(self, statement: Any) -> dict[str, Any]:
        """PostgreSQL's plan of ``statement`` (its top node: ``Total Cost``, ``Plan Rows``)."""
        plan = (await self.session.execute(_Explain(statement))).scalar_one()
        if isinstance(plan, str):  # the driver may or may not decode the json column
            plan = orjson.loads(plan)
        return dict(plan[0]["Plan"])

    def _sort_type(self, query: SearchQuery, param: str) -> str:
        if param == "_id":
            return "token"
        if param == "_lastUpdated":
            return "date"
        return self.indexer.parameters(query.res_type or "")[param]

    async def _includes(
        self, includes: list[Include], page: list[tuple[int, str, str]]
    ) -> list[StoredVersion]:
        seen = {rid for rid, _, _ in page}
        found: list[StoredVersion] = []
        frontier = page
        for depth in range(MAX_INCLUDE_DEPTH):
            round_includes = [i for i in includes if depth == 0 or i.iterate]
            if not round_includes or not frontier:
                break
            rows: list[Any] = []
            for include in round_includes:
                rows += await (
                    self._revinclude(include, frontier)
                    if include.reverse
                    else self._include(include, frontier)
                )
            frontier = []
            for row in rows:
                if row.rid in seen:
                    continue
                seen.add(row.rid)
                found.append(StoredVersion.from_row(row))
                frontier.append((row.rid, row.res_type, row.res_id))
        return found

    async def _include(self, include: Include, frontier: list[tuple[int, str, str]]) -> list[Any]:
        ref = search_reference
        conditions = [
            ref.c.rid.in_(
                [rid for rid, res_type, _ in frontier if res_type == include.source_type]
            ),
            ref.c.target_id.is_not(None),
        ]
        if include.param != "*":
            conditions.append(ref.c.param == include.param)
        if include.target_type:
            conditions.append(ref.c.target_type == include.target_type)
        targets = (
            await self.session.execute(
                select(ref.c.target_type, ref.c.target_id).where(*conditions)
            )
        ).all()
        if not targets:
            return []
        wanted = {(t.target_type, t.target_id) for t in targets}
        rows = (
            await self.session.execute(
                select(*_version_columns())
                .select_from(_current_join())
                .where(
                    resources.c.deleted.is_(False),
                    named(resources, wanted),
                    *self._seen(resources, "r", {res_type for res_type, _ in wanted}),
                )
            )
        ).all()
        return list(rows)

    async def _revinclude(
        self, include: Include, frontier: list[tuple[int, str, str]]
    ) -> list[Any]:
        ref = search_reference
        conditions = [
            ref.c.res_type == include.source_type,
            ref.c.target_id.in_({res_id for _, _, res_id in frontier}),
            ref.c.target_type.in_({res_type for _, res_type, _ in frontier}),
        ]
        if include.param != "*":
            conditions.append(ref.c.param == include.param)
        pairs = {(res_type, res_id) for _, res_type, res_id in frontier}
        referring = (
            await self.session.execute(
                select(ref.c.rid, ref.c.target_type, ref.c.target_id).where(*conditions)
            )
        ).all()
        rids = {r.rid for r in referring if (r.target_type, r.target_id) in pairs}
        if not rids:
            return []
        return list(
            (
                await self.session.execute(
                    select(*_version_columns())
                    .select_from(_current_join())
                    .where(
                        resources.c.deleted.is_(False),
                        resources.c.rid.in_(rids),
                        resources.c.res_type == include.source_type,
                        *self._seen(resources, "r", [include.source_type]),
                    )
                    .order_by(resources.c.rid)
                )
            ).all()
        )
