"""The ICD-10 picker's search (``GET /icd10?q=``) and the catalogue every worker keeps.

The catalogue is terminology, nobody's record: it is read straight from the store (never
through a person's access policy, and without an audit event per keystroke). A worker keeps
the parsed list in memory and re-reads it only when the imported CodeSystem's version
changes — one indexed lookup per search — so ``health icd10 import`` reaches running
servers at once. Without an imported edition the village list shipped with the service is
used.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select

from health.auth.gate import Gate
from health.terminology.icd10 import (
    CODESYSTEM_ID,
    Catalogue,
    concepts_of,
    village_list,
)
from health.web.signed_in import signed_in
from records.store import ResourceStore
from records.tables import resources

router = APIRouter(include_in_schema=False)


@dataclass
class CatalogueCache:
    """The catalogue in force, re-read when the imported edition changes."""

    _version: int | None = None
    _catalogue: Catalogue | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def catalogue(self, gate: Gate) -> Catalogue:
        async with gate.database.transaction(write=False) as session:
            row = (
                await session.execute(
                    select(resources.c.version, resources.c.deleted).where(
                        resources.c.res_type == "CodeSystem", resources.c.res_id == CODESYSTEM_ID
                    )
                )
            ).first()
            version = None if row is None or row.deleted else int(row.version)
            if version is None:
                return village_list()
            if version == self._version and self._catalogue is not None:
                return self._catalogue
            async with self._lock:
                found = await ResourceStore(session, gate.indexer).current(
                    "CodeSystem", CODESYSTEM_ID
                )
                if found is None or found.content is None:
                    return village_list()
                resource = orjson.loads(found.content)
                catalogue = await asyncio.to_thread(
                    Catalogue, concepts_of(resource), source=str(resource.get("title") or "")
                )
                self._version, self._catalogue = version, catalogue
                return catalogue


def catalogue_cache(request: Request) -> CatalogueCache:
    state = request.app.state
    if not hasattr(state, "icd10"):
        state.icd10 = CatalogueCache()
    cache: CatalogueCache = state.icd10
    return cache


async def current_catalogue(request: Request) -> Catalogue:
    return await catalogue_cache(request).catalogue(request.app.state.gate)


@router.get("/icd10")
async def icd10_search(request: Request, q: str = "") -> Response:
    """Matches as JSON: ``[{"code", "zh", "en"}]`` (the page's script shows them)."""
    await signed_in(request)
    catalogue = await current_catalogue(request)
    found = catalogue.search(q[:60])
    body = [{"code": c.code, "zh": c.name_zh, "en": c.name_en} for c in found]
    return Response(orjson.dumps(body), media_type="application/json")
