"""Building searchset and history Bundles around stored resource text.

Entries embed each version's stored JSON as an ``orjson.Fragment``, so a page of a thousand
resources is written out without parsing or re-serialising any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from health.core.clock import fhir_instant, utcnow
from health.core.ids import new_resource_id
from records.definitions import summary_elements
from records.outcome import Issue, operation_outcome
from records.store import HistoryPage, StoredVersion


def resource_fragment(version: StoredVersion) -> orjson.Fragment:
    assert version.content is not None
    return orjson.Fragment(version.content)


_SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
_ALWAYS = ("resourceType", "id", "meta")


@dataclass(frozen=True)
class Subset:
    """``_summary`` and ``_elements``: which parts of each resource a search returns."""

    summary: str | None
    elements: list[str] | None

    def apply(self, version: StoredVersion) -> Any:
        if self.summary in (None, "false") and not self.elements:
            return resource_fragment(version)
        assert version.content is not None
        resource = orjson.loads(version.content)
        if self.summary == "true":
            keep = summary_elements().get(version.res_type, frozenset())
            resource = {k: v for k, v in resource.items() if k in _ALWAYS or k in keep}
        elif self.summary == "text":
            resource = {k: v for k, v in resource.items() if k in (*_ALWAYS, "text")}
        elif self.summary == "data":
            resource = {k: v for k, v in resource.items() if k != "text"}
        if self.elements:
            resource = {k: v for k, v in resource.items() if k in _ALWAYS or k in self.elements}
        meta = resource.setdefault("meta", {})
        meta["tag"] = [*meta.get("tag", []), _SUBSETTED]
        return resource


def _link(relation: str, url: str) -> dict[str, str]:
    return {"relation": relation, "url": url}


def _url(base: str, path: str, params: list[tuple[str, str]]) -> str:
    query = urlencode(params)
    return f"{base}/{path}" + (f"?{query}" if query else "")


def searchset(
    *,
    base: str,
    path: str,
    criteria: list[tuple[str, str]],
    versions: list[StoredVersion],
    count: int,
    position: list[tuple[str, str]],
    next_cursor: str | None,
    previous_cursor: str | None,
    total: int | None,
    included: list[StoredVersion] | None = None,
    subset: Subset | None = None,
    warnings: list[Issue] | None = None,
) -> dict[str, Any]:
    """``position`` is how the client reached this page (``_cursor`` or ``_offset``), if at all."""
    paged = [*criteria, ("_count", str(count))]
    links = [_link("self", _url(base, path, [*paged, *position]))]
    if previous_cursor is not None:
        links.append(_link("previous", _url(base, path, [*paged, ("_cursor", previous_cursor)])))
    if next_cursor is not None:
        links.append(_link("next", _url(base, path, [*paged, ("_cursor", next_cursor)])))
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": new_resource_id(),
        "meta": {"lastUpdated": fhir_instant(utcnow())},
        "type": "searchset",
    }
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    subset = subset or Subset(None, None)
    bundle["entry"] = [
        {"fullUrl": f"{base}/{v.path}", "resource": subset.apply(v), "search": {"mode": mode}}
        for mode, group in (("match", versions), ("include", included or []))
        for v in group
    ]
    if warnings:
        bundle["entry"].append(
            {"resource": operation_outcome(warnings), "search": {"mode": "outcome"}}
        )
    return bundle


def history(
    *, base: str, path: str, params: list[tuple[str, str]], page: HistoryPage, count: int
) -> dict[str, Any]:
    """A history Bundle; paging keys are version sequence numbers, stable under new writes."""
    kept = [(k, v) for k, v in params if k not in ("_older_than", "_newer_than", "_count")]
    kept.append(("_count", str(count)))
    links = [_link("self", _url(base, path, params))]
    if page.has_newer and page.first_seq is not None:
        links.append(
            _link("previous", _url(base, path, [*kept, ("_newer_than", str(page.first_seq))]))
        )
    if page.has_more and page.last_seq is not None:
        links.append(_link("next", _url(base, path, [*kept, ("_older_than", str(page.last_seq))])))
    entries = []
    for version in page.versions:
        entry: dict[str, Any] = {"fullUrl": f"{base}/{version.path}"}
        if version.content is not None:
            entry["resource"] = resource_fragment(version)
        request_url = version.res_type if version.method == "POST" else version.path
        entry["request"] = {"method": version.method, "url": request_url}
        entry["response"] = {
            "status": "201 Created"
            if version.method == "POST"
            else ("204 No Content" if version.deleted else "200 OK"),
            "etag": version.etag,
            "lastModified": fhir_instant(version.last_updated),
        }
        entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": new_resource_id(),
        "meta": {"lastUpdated": fhir_instant(utcnow())},
        "type": "history",
        "total": page.total,
        "link": links,
        "entry": entries,
    }
