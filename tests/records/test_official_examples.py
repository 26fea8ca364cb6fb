"""The official R4B examples round-trip through the REST API: what goes in comes back out."""

from __future__ import annotations

import functools
import tarfile
from pathlib import Path
from typing import Any

import httpx
import orjson

from health.core.ids import is_valid_resource_id
from records.definitions import resource_types
from records.outcome import FhirError
from records.validation import validate_resource


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


@functools.cache
def load_examples(shared: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The examples ``fhir.resources`` accepts as R4B, and (name, reason) for those we refuse."""
    accepted: list[dict[str, Any]] = []
    refused: list[tuple[str, str]] = []
    with tarfile.open(shared / "fhir" / "hl7.fhir.r4b.examples-4.3.0.tgz") as archive:
        for member in archive.getmembers():
            if not member.name.endswith(".json") or not member.isfile():
                continue
            data = orjson.loads(archive.extractfile(member).read())  # type: ignore[union-attr]
            res_type = data.get("resourceType") if isinstance(data, dict) else None
            if res_type not in resource_types() or not data.get("id"):
                continue
            if not is_valid_resource_id(data["id"]):
                continue  # not valid R4B as published (ids are at most 64 characters)
            try:
                validate_resource(data)
            except FhirError as error:
                if error.status == 400:
                    continue  # fhir.resources finds it structurally invalid R4B: out of scope
                refused.append((member.name, str(error)))
                continue
            accepted.append(data)
    return accepted, refused


def test_valid_examples_round_trip(fhir: httpx.Client, shared_dir: Path) -> None:
    examples, refused = load_examples(shared_dir)
    assert len(examples) > 1000
    # The official examples that break a required binding or carry a bad value that
    # fhir.resources does not check: each is a real fault in the example, so few are allowed.
    assert len(refused) <= len(examples) // 50, refused[:20]
    mismatches = []
    for example in examples:
        path = f"/{example['resourceType']}/{example['id']}"
        response = fhir.put(path, json=example)
        if example["resourceType"] == "AuditEvent":
            # The audit trail is the service's own, kept in a hash chain: even a system
            # client with every scope may not write into it.
            assert response.status_code == 403, (path, response.text[:500])
            continue
        assert response.status_code in (200, 201), (path, response.text[:500])
        stored = fhir.get(path).json()
        if _without_meta(stored) != _without_meta(example):
            mismatches.append(path)
        assert stored["meta"]["versionId"]
    assert mismatches == []
