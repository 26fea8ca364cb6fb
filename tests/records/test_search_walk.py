"""Pages read by walking the resources in rid order are the pages the full plan gives.

When PostgreSQL prices a search's full count as costly, the engine first looks for the page in
the next resources of the type in rid order (``SearchEngine._walk``) and gives no total beyond
the page. Here the price limit is set to nothing, so every such search walks, and each page,
followed to the end through its ``next`` cursors, must hold exactly the resources the engine
finds without walking, on both databases (SQLite never walks: the two agree trivially there).
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
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _observation(n: int, marker: str) -> dict[str, Any]:
    """Every third a body height, heights from 150 to 199 cm, other readings in between."""
    code, value = ("8302-2", 150 + (n * 7) % 50) if n % 3 == 0 else ("8867-4", 60 + n % 40)
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {
            "resourceType": "Observation",
            "meta": {"tag": [{"system": TAG_SYSTEM, "code": marker}]},
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

    def pages(self, params: dict[str, str], *, costly_count: float) -> list[SearchResult]:
        """Every page of ``Observation?params``, following next cursors."""

        async def run() -> list[SearchResult]:
            indexer = SearchIndexer()
            parser = SearchParser(indexer, max_count=1000, default_count=50)
            database = Database(self.url)
            pages: list[SearchResult] = []
            cursor: str | None = None
            try:
                while True:
                    pairs = [("_tag", f"{TAG_SYSTEM}|{self.marker}"), *params.items()]
                    if cursor is not None:
                        pairs.append(("_cursor", cursor))
                    query = parser.parse("Observation", pairs, strict=True)
                    async with database.transaction(write=False) as session:
                        engine = SearchEngine(
                            session, indexer, base_url="", costly_count=costly_count
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
    ],
    ids=["tall", "very-tall", "pulse", "over-100", "either-under-80"],
)
def test_walked_pages_are_the_full_plans_pages(store: Store, params: dict[str, str]) -> None:
    walked = store.pages(params, costly_count=0)
    planned = store.pages(params, costly_count=math.inf)
    assert _ids(walked) == _ids(planned)
    every = [i for page in _ids(planned) for i in page]
    assert len(every) == len(set(every)) and every, "each match once, and some match"


def test_a_costly_count_gives_no_total_beyond_the_page(store: Store) -> None:
    params = {"code": f"{LOINC}|8302-2", "value-quantity": "gt170", "_count": "7"}
    first = store.pages(params, costly_count=0)[0]
    counted = store.pages(params, costly_count=math.inf)[0]
    assert counted.total is not None and counted.total > 7
    on_postgresql = not store.url.startswith("sqlite")
    assert first.total == (None if on_postgresql else counted.total)
    # A first page holding every match is its own total, costly or not.
    everything = store.pages({**params, "_count": "1000"}, costly_count=0)
    assert everything[0].total == counted.total
