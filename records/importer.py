"""Bulk import of FHIR files: transaction or batch Bundles (JSON, optionally gzip) and NDJSON.

Each Bundle file is processed as the Bundle it is, through the same
:class:`records.transactions.BundleProcessor` as ``POST /fhir``, in one database transaction.
An NDJSON file (one resource a line) is loaded in transactions of :data:`NDJSON_CHUNK`
resources: a line with an id is an update-or-create with that id, one without is a create.
Files are spread over worker processes; one file's failure does not stop the others.
"""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from health.core.bus import MessageBus
from health.core.database import Database
from records.feed import announce
from records.indexing import SearchIndexer
from records.interactions import Interactions
from records.outcome import FhirError
from records.store import Change, ResourceStore
from records.transactions import BundleProcessor
from records.validation import may_carry_resident_id

NDJSON_CHUNK = 1000
_SUFFIXES = (".json", ".json.gz", ".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")


@dataclass(frozen=True)
class FileResult:
    path: Path
    resources: int
    error: str | None = None
    #: What the file's committed transactions changed, for the caller to announce.
    changes: tuple[Change, ...] = ()


def expand_paths(paths: Sequence[Path]) -> list[Path]:
    """Files named, and every importable file inside directories named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES)
            )
        else:
            found.append(path)
    return found


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _ndjson_bundles(raw: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    """(first line number, transaction Bundle) for each chunk of an NDJSON file."""
    entries: list[dict[str, Any]] = []
    first_line = 1
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise FhirError.of(
                400, f"line {number} is not JSON: {error}", code="structure"
            ) from None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FhirError.of(400, f"line {number} is not a FHIR resource", code="structure")
        res_type = resource["resourceType"]
        if isinstance(resource.get("id"), str):
            request = {"method": "PUT", "url": f"{res_type}/{resource['id']}"}
        else:
            request = {"method": "POST", "url": res_type}
        entries.append({"resource": resource, "request": request})
        if len(entries) == NDJSON_CHUNK:
            yield first_line, {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            entries, first_line = [], number + 1
    if entries:
        yield first_line, {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@dataclass(frozen=True)
class BundleOutcome:
    response: dict[str, Any]
    #: Versions written; entries that changed nothing (a repeated conditional update) add none.
    changes: int
    written: tuple[Change, ...] = ()


async def process_bundle(
    database: Database,
    indexer: SearchIndexer,
    bundle: Any,
    *,
    scan_identifiers: bool = True,
    bus: MessageBus | None = None,
) -> BundleOutcome:
    """Run one Bundle in its own transaction; announce its changes on ``bus`` once committed."""
    async with database.transaction(write=True) as session:
        store = ResourceStore(session, indexer)
        interactions = Interactions(store, base_url="", max_page_size=1, default_page_size=1)
        response = await BundleProcessor(interactions).process(
            bundle, scan_identifiers=scan_identifiers
        )
    if bus is not None:
        await announce(bus, store.changes)
    return BundleOutcome(response, len(store.changes), tuple(store.changes))


async def import_file(database: Database, indexer: SearchIndexer, path: Path) -> FileResult:
    try:
        raw = _read(path)
        scan = may_carry_resident_id(raw)
        if path.name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")):
            total = 0
            changes: list[Change] = []
            for first_line, bundle in _ndjson_bundles(raw):
                try:
                    outcome = await process_bundle(database, indexer, bundle, scan_identifiers=scan)
                except FhirError as error:
                    return FileResult(
                        path, total, f"lines from {first_line}: {error}", tuple(changes)
                    )
                total += len(bundle["entry"])
                changes.extend(outcome.written)
            return FileResult(path, total, changes=tuple(changes))
        bundle = orjson.loads(raw)
        outcome = await process_bundle(database, indexer, bundle, scan_identifiers=scan)
        response = outcome.response
        failed = [e for e in response["entry"] if not str(e["response"]["status"]).startswith("2")]
        written = len(response["entry"]) - len(failed)
        if failed:
            return FileResult(
                path,
                written,
                f"{len(failed)} batch entries failed, first: {failed[0]['response']}",
                outcome.written,
            )
        return FileResult(path, written, changes=outcome.written)
    except FhirError as error:
        return FileResult(path, 0, str(error))
    except orjson.JSONDecodeError as error:
        return FileResult(path, 0, f"not JSON: {error}")
    except (OSError, gzip.BadGzipFile, EOFError) as error:
        return FileResult(path, 0, f"cannot read: {error}")


# -- worker processes ----------------------------------------------------------------------

_worker: tuple[asyncio.AbstractEventLoop, Database, SearchIndexer] | None = None


def _start_worker(database_url: str) -> None:
    global _worker
    loop = asyncio.new_event_loop()
    _worker = (loop, Database(database_url), SearchIndexer())


def _import_in_worker(path: Path) -> FileResult:
    assert _worker is not None
    loop, database, indexer = _worker
    return loop.run_until_complete(import_file(database, indexer, path))


def import_files(
    database_url: str, paths: Sequence[Path], *, jobs: int | None = None, progress: Any = None
) -> list[FileResult]:
    """Import every file, ``jobs`` at a time (default: one per CPU); results in file order."""
    jobs = jobs or os.cpu_count() or 1
    results: dict[Path, FileResult] = {}
    if jobs == 1 or len(paths) == 1:

        async def run_all() -> None:
            database = Database(database_url)
            indexer = SearchIndexer()
            try:
                for path in paths:
                    results[path] = await import_file(database, indexer, path)
                    if progress is not None:
                        progress(results[path])
            finally:
                await database.dispose()

        asyncio.run(run_all())
    else:
        with ProcessPoolExecutor(
            max_workers=jobs, initializer=_start_worker, initargs=(database_url,)
        ) as pool:
            futures = {pool.submit(_import_in_worker, path): path for path in paths}
            for future in as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                if progress is not None:
                    progress(result)
    return [results[p] for p in paths]
