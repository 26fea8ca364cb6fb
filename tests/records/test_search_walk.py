"""Pages read by walking the resources in rid order are the pages the full plan gives.

A search naming one exact code (``code=system|code``) first looks for its page among that
code's resources in rid order; any other search does so among the next resources of the type
when PostgreSQL prices its full count as costly (``SearchEngine._walk``), and then gives no
total beyond the page. Here the price limit is set to nothing, so every such search walks,
and each page, followed to the end through its ``next`` cursors, must hold exactly the
resources the engine finds without walking (``walks=False``), on both databases (SQLite
never walks: the two agree trivially there).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import pytest

from health.core.database import Database
from records.importer import process_bundle
from records.indexing import SearchIndexer
from records.search.engine import SearchEngine, SearchResult
from records.search.parse import SearchParser

TAG_SYSTEM = "urn:test:search-walk"
HEIGHT_TAG_SYSTEM = "urn:test:search-walk:height"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _observation(n: int, marker: str) -> dict[str, Any]:
    """Every third a body height, heights from 150 to 199 cm, other readings in between;
    the heights tagged besides with ``HEIGHT_TAG_SYSTEM``."""
    code, value = ("8302-2", 150 + (n * 7) % 50) if n % 3 == 0 else ("8867-4", 60 + n % 40)
    tags = [{"system": TAG_SYSTEM, "code": marker}]
    if code == "8302-2":
        tags.append({"system": HEIGHT_TAG_SYSTEM, "code": marker})
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {
            "resourceType": "Observation",
            "meta": {"tag": tags},
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "valueQuantity": {"value": value, "unit": "cm", "system": UCUM, "code": "cm"},
        },
        "request": {"method": "POST", "url": "Observation"},
    }


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.marker = uuid.uuid4().hex
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [_observation(n, self.marker) for n in range(300)],
        }
        asyncio.run(self._load(bundle))

    async def _load(self, bundle: dict[str, Any]) -> None:
        database = Database(self.url)
        try:
            await process_bundle(database, SearchIndexer(), bundle)
        finally:
            await database.dispose()

    def pages(
        self,
        params: dict[str, str],
        *,
        costly_count: float,
        walks: bool = True,
        by_tag: bool = True,
    ) -> list[SearchResult]:
        """Every page of ``Observation?params`` among this store's, following next cursors.

        The store's readings are found by their tag, one exact code that a walk can follow;
        ``by_tag=False`` names a second tag besides (that no reading has), so that the walk
        follows another exact code of ``params``, or walks the type."""
        tag = f"{TAG_SYSTEM}|{self.marker}" + ("" if by_tag else f",{TAG_SYSTEM}|none")

        async def run() -> list[SearchResult]:
            indexer = SearchIndexer()
            parser = SearchParser(indexer, max_count=1000, default_count=50)
            database = Database(self.url)
            pages: list[SearchResult] = []
            cursor: str | None = None
            try:
                while True:
                    pairs = [("_tag", tag), *params.items()]
                    if cursor is not None:
                        pairs.append(("_cursor", cursor))
                    query = parser.parse("Observation", pairs, strict=True)
                    async with database.transaction(write=False) as session:
                        engine = SearchEngine(
                            session, indexer, base_url="", costly_count=costly_count, walks=walks
                        )
                        pages.append(await engine.run(query))
                    cursor = pages[-1].next_cursor
                    if cursor is None:
                        return pages
            finally:
                await database.dispose()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def store(database_url: str) -> Store:
    return Store(database_url)


def _ids(pages: list[SearchResult]) -> list[list[str]]:
    return [[m.res_id for m in page.matches] for page in pages]


@pytest.mark.parametrize(
    "params",
    [
        {"code": f"{LOINC}|8302-2", "value-quantity": "gt170", "_count": "7"},
        {"code": f"{LOINC}|8302-2", "value-quantity": "gt197", "_count": "7"},  # sparse
        {"code": "8867-4", "_count": "25"},
        {"value-quantity": "ge100", "_count": "10"},
        {"code": f"{LOINC}|8302-2,8867-4", "value-quantity": "lt80", "_count": "4"},
        # One exact code: the slice is of that code's readings, whole (every height) or not
        # (the first 200 of the pulses hold the page, and each next page walks on from it).
        {"code": f"{LOINC}|8867-4", "value-quantity": "ge99", "_count": "1"},
    ],
    ids=["tall", "very-tall", "pulse", "over-100", "either-under-80", "rare-pulse"],
)
@pytest.mark.parametrize("by_tag", [True, False], ids=["along-the-tag", "along-the-rest"])
def test_walked_pages_are_the_full_plans_pages(
    store: Store, params: dict[str, str], by_tag: bool
) -> None:
    walked = store.pages(params, costly_count=0, by_tag=by_tag)
    planned = store.pages(params, costly_count=math.inf, walks=False)
    assert _ids(walked) == _ids(planned)
    every = [i for page in _ids(planned) for i in page]
    assert len(every) == len(set(every)) and every, "each match once, and some match"


def test_a_costly_count_gives_no_total_beyond_the_page(store: Store) -> None:
    params = {"value-quantity": "ge100", "_count": "7"}
    first = store.pages(params, costly_count=0, by_tag=False)[0]
    counted = store.pages(params, costly_count=math.inf, walks=False)[0]
    assert counted.total is not None and counted.total > 7
    on_postgresql = not store.url.startswith("sqlite")
    assert first.total == (None if on_postgresql else counted.total)
    # A first page holding every match is its own total, costly or not.
    everything = store.pages({**params, "_count": "1000"}, costly_count=0, by_tag=False)
    assert everything[0].total == counted.total


def test_a_walk_along_one_code_counts_the_matches_when_the_code_s_resources_fit_a_slice(
    store: Store,
) -> None:
    # The 100 heights fit one slice (800 rows for a page of 7): every page knows the total.
    params = {"code": f"{LOINC}|8302-2", "value-quantity": "gt170", "_count": "7"}
    counted = store.pages(params, costly_count=math.inf, walks=False)
    walked = store.pages(params, costly_count=0, by_tag=False)
    assert counted[0].total is not None and counted[0].total > 7
    assert [page.total for page in walked] == [counted[0].total] * len(walked)
    # Beyond a slice (the 200 pulses, for a page of 1: a slice of 200) no total is given.
    pulses = store.pages({"code": f"{LOINC}|8867-4", "_count": "1"}, costly_count=0, by_tag=False)[
        0
    ]
    on_postgresql = not store.url.startswith("sqlite")
    assert pulses.total == (None if on_postgresql else 200)


def test_a_walk_follows_the_rarest_of_the_exact_codes_a_search_names(store: Store) -> None:
    """The store's 300 readings hold more than a walk's slice for a page of one (200); its
    100 heights fit in one. Named after the readings' tag, the heights' tag is the code the
    walk follows: every page finds its match in its slice and knows the total."""
    params = {
        "_tag": f"{HEIGHT_TAG_SYSTEM}|{store.marker}",
        "value-quantity": "gt195",
        "_count": "1",
    }
    counted = store.pages(params, costly_count=math.inf, walks=False)
    walked = store.pages(params, costly_count=0)
    assert _ids(walked) == _ids(counted) and len(walked) > 1
    assert counted[0].total is not None and counted[0].total > 1
    assert [page.total for page in walked] == [counted[0].total] * len(walked)


@pytest.mark.parametrize(
    "params",
    [
        {"code": f"{LOINC}|8302-2", "_count": "7"},
        {"value-quantity": "ge100", "_count": "10"},
        {"code": f"{LOINC}|8302-2", "value-quantity": "gt197", "_count": "50"},
    ],
    ids=["heights", "over-100", "very-tall-on-one-page"],
)
def test_a_cheap_count_made_with_the_first_page_gives_the_same_pages_and_total(
    store: Store, params: dict[str, str]
) -> None:
    """Where the count is cheap the first page and the count come from one statement; its
    pages and total are those of the page and the count made apart."""
    together = store.pages(params, costly_count=math.inf)
    apart = store.pages(params, costly_count=math.inf, walks=False)
    assert _ids(together) == _ids(apart)
    assert [p.total for p in together] == [p.total for p in apart]
    assert together[0].total is not None and together[0].total >= len(together[0].matches)
