"""Batch and transaction Bundles.

A **transaction** is all or nothing: every entry is checked and resolved first, then written
in the processing order the specification gives (DELETE, POST, PUT/PATCH, GET), inside the
caller's database transaction; any failure raises and the caller rolls everything back.
``urn:uuid:`` and other fullUrl references between entries are rewritten to the ids the
server assigns, and conditional references (``Patient?identifier=sys|val``) are resolved
against the store and against the Bundle's own entries.

A **batch** runs each entry on its own, inside a savepoint, and reports each entry's status.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from health.core.clock import fhir_instant
from health.core.ids import new_resource_id
from records.bundles import resource_fragment
from records.criteria import Criteria
from records.interactions import FhirRequest, FhirResult, Interactions
from records.outcome import FhirError, Issue, operation_outcome
from records.store import NewResource
from records.validation import validate_resource

_CONDITIONAL_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")
_STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    204: "204 No Content",
    304: "304 Not Modified",
    400: "400 Bad Request",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    409: "409 Conflict",
    410: "410 Gone",
    412: "412 Precondition Failed",
    415: "415 Unsupported Media Type",
    422: "422 Unprocessable Entity",
}
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class _Entry:
    index: int
    method: str
    path: str
    query: str
    full_url: str | None
    resource: dict[str, Any] | None
    if_match: str | None
    if_none_exist: str | None
    if_none_match: str | None
    #: "Type/id" the entry writes, once known.
    target: str | None = None
    #: Conditional create that found its match: nothing to write.
    existing: bool = False
    index_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def _status(code: int) -> str:
    return _STATUS_TEXT.get(code, str(code))


def _parse_entries(bundle: dict[str, Any]) -> list[_Entry]:
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError.of(
            400, "Bundle.entry must be a list", code="structure", expression="Bundle.entry"
        )
    parsed = []
    for index, entry in enumerate(entries):
        where = f"Bundle.entry[{index}]"
        if not isinstance(entry, dict):
            raise FhirError.of(
                400, f"{where} must be an object", code="structure", expression=where
            )
        request = entry.get("request")
        if not isinstance(request, dict) or not request.get("method") or not request.get("url"):
            raise FhirError.of(
                400,
                f"{where}.request needs a method and a url",
                code="required",
                expression=f"{where}.request",
            )
        method = str(request["method"]).upper()
        if method not in _ORDER:
            raise FhirError.of(
                400,
                f"{where}.request.method '{method}' is not one of "
                "GET, HEAD, POST, PUT, PATCH, DELETE",
                code="value",
                expression=f"{where}.request.method",
            )
        url = urlsplit(str(request["url"]))
        resource = entry.get("resource")
        if method in ("POST", "PUT") and not isinstance(resource, dict):
            raise FhirError.of(
                400,
                f"{where}.resource is required for {method}",
                code="required",
                expression=f"{where}.resource",
            )
        if method == "PATCH":
            resource = entry.get("resource")
        parsed.append(
            _Entry(
                index=index,
                method=method,
                path=url.path.strip("/"),
                query=url.query,
                full_url=entry.get("fullUrl"),
                resource=resource if isinstance(resource, dict) else None,
                if_match=request.get("ifMatch"),
                if_none_exist=request.get("ifNoneExist"),
                if_none_match=request.get("ifNoneMatch"),
            )
        )
    return parsed


def _walk_references(node: Any, rewrite: Any) -> None:
    if isinstance(node, dict):
        reference = node.get("reference")
        if isinstance(reference, str):
            replaced = rewrite(reference)
            if replaced is not None:
                node["reference"] = replaced
        for key, value in node.items():
            if key != "reference" and isinstance(value, (dict, list)):
                _walk_references(value, rewrite)
    elif isinstance(node, list):
        for item in node:
            _walk_references(item, rewrite)


def _conditions(entries: list[_Entry]) -> list[tuple[str, str]]:
    """The (type, search) of each conditional create and update among ``entries``."""
    found = []
    for entry in entries:
        res_type = entry.path.split("/")[0]
        if entry.method == "POST" and (entry.if_none_exist or entry.query):
            found.append((res_type, entry.if_none_exist or entry.query))
        elif entry.method == "PUT" and entry.query:
            found.append((res_type, entry.query))
    return found


def _conditional_references(resource: dict[str, Any]) -> list[str]:
    found: list[str] = []

    def collect(reference: str) -> None:
        if _CONDITIONAL_REFERENCE.match(reference):
            found.append(reference)

    _walk_references(resource, collect)
    return found


#: Called when one unit of a Bundle has been written (the whole of a transaction, each entry
#: of a batch) with the number of store changes before it: the write hooks' turn.
AfterWrite = Callable[[int], Awaitable[None]]


class BundleProcessor:
    def __init__(
        self,
        interactions: Interactions,
        *,
        return_resources: bool = False,
        after_write: AfterWrite | None = None,
    ) -> None:
        self.interactions = interactions
        self.store = interactions.store
        self.return_resources = return_resources
        self.after_write = after_write

    async def process(self, bundle: Any, *, scan_identifiers: bool = True) -> dict[str, Any]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise FhirError.of(
                400,
                "Only a Bundle can be posted to the base",
                code="structure",
                expression="resourceType",
            )
        kind = bundle.get("type")
        if kind == "transaction":
            entries = await self._transaction(_parse_entries(bundle), scan_identifiers)
        elif kind == "batch":
            entries = await self._batch(_parse_entries(bundle), scan_identifiers)
        else:
            raise FhirError.of(
                400,
                f"A Bundle posted to the base must be a transaction or a batch, not {kind!r}",
                code="value",
                expression="Bundle.type",
            )
        return {
            "resourceType": "Bundle",
            "id": new_resource_id(),
            "type": f"{kind}-response",
            "entry": entries,
        }

    # -- transaction -----------------------------------------------------------------------

    async def _transaction(
        self, entries: list[_Entry], scan_identifiers: bool
    ) -> list[dict[str, Any]]:
        indexer = self.store.indexer
        session = self.store.session
        aliases: dict[str, str] = {}  # fullUrl -> Type/id
        await self.store.hold_criteria(_conditions(entries))
        for entry in entries:
            if entry.method not in ("POST", "PUT") or entry.resource is None:
                continue
            res_type = entry.path.split("/")[0]
            if entry.resource.get("resourceType") != res_type:
                raise FhirError.of(
                    400,
                    f"{entry.where}.resource is a {entry.resource.get('resourceType')!r} "
                    f"but the request url names {res_type}",
                    code="invalid",
                    expression=f"{entry.where}.resource.resourceType",
                )
            if entry.method == "POST":
                condition = entry.if_none_exist or entry.query or None
                if condition:
                    matches = await self._criteria(entry, res_type, condition).find_ids(
                        session, access=self.store.access
                    )
                    if len(matches) > 1:
                        raise FhirError.of(
                            412,
                            f"{entry.where}: ifNoneExist '{condition}' matches "
                            f"more than one {res_type}",
                            code="duplicate",
                            expression=f"{entry.where}.request.ifNoneExist",
                        )
                    if matches:
                        entry.existing = True
                        entry.target = f"{res_type}/{matches[0]}"
                if entry.target is None:
                    entry.target = f"{res_type}/{new_resource_id()}"
            elif entry.query:
                matches = await self._criteria(entry, res_type, entry.query).find_ids(
                    session, access=self.store.access
                )
                if len(matches) > 1:
                    raise FhirError.of(
                        412,
                        f"{entry.where}: '{entry.query}' matches more than one {res_type}",
                        code="multiple-matches",
                        expression=f"{entry.where}.request.url",
                    )
                body_id = entry.resource.get("id")
                if matches and body_id is not None and body_id != matches[0]:
                    raise FhirError.of(
                        400,
                        f"{entry.where}.resource.id '{body_id}' is not the matching "
                        f"{res_type}/{matches[0]}",
                        code="invalid",
                        expression=f"{entry.where}.resource.id",
                    )
                entry.target = (
                    f"{res_type}/{matches[0] if matches else (body_id or new_resource_id())}"
                )
                entry.resource["id"] = entry.target.split("/")[1]
            else:
                entry.target = entry.path
            if entry.full_url:
                aliases[entry.full_url] = entry.target
        seen_targets: dict[str, int] = {}
        for entry in entries:
            if entry.target and not entry.existing:
                if entry.target in seen_targets:
                    raise FhirError.of(
                        400,
                        f"{entry.where} and Bundle.entry[{seen_targets[entry.target]}] "
                        f"both write {entry.target}",
                        code="duplicate",
                        expression=f"{entry.where}.request.url",
                    )
                seen_targets[entry.target] = entry.index
        # One walk rewrites fullUrl references and collects the conditional ones.
        conditional: dict[int, list[str]] = {}
        for entry in entries:
            if entry.resource is None or entry.existing:
                continue
            found: list[str] = []

            def rewrite_alias(reference: str, found: list[str] = found) -> str | None:
                if _CONDITIONAL_REFERENCE.match(reference):
                    found.append(reference)
                    return None
                return aliases.get(reference)

            _walk_references(entry.resource, rewrite_alias)
            if found:
                conditional[entry.index] = found
        if conditional:
            # Index rows of what the Bundle writes, so conditional references can find them.
            for entry in entries:
                if entry.resource is not None and entry.target and not entry.existing:
                    entry.index_rows = indexer.extract(entry.target.split("/")[0], entry.resource)
            resolved: dict[str, str] = {}
            for entry in entries:
                for reference in conditional.get(entry.index, ()):
                    if reference not in resolved:
                        resolved[reference] = await self._resolve_conditional(
                            entry, reference, entries
                        )
                if entry.index in conditional and entry.resource is not None:
                    _walk_references(entry.resource, resolved.get)
        issues: list[Issue] = []
        status = 400
        for entry in entries:
            if (
                entry.method in ("POST", "PUT")
                and entry.resource is not None
                and not entry.existing
            ):
                if entry.method == "PUT" and not entry.query:
                    body_id = entry.resource.get("id")
                    if body_id != entry.target.split("/")[1] if entry.target else None:
                        issues.append(
                            Issue(
                                f"{entry.where}.resource.id '{body_id}' differs from "
                                f"the request url {entry.path}",
                                expression=(f"{entry.where}.resource.id",),
                            )
                        )
                        continue
                try:
                    validate_resource(entry.resource, scan_identifiers=scan_identifiers)
                except FhirError as error:
                    status = max(status, error.status)
                    issues += [issue.under(f"{entry.where}.resource") for issue in error.issues]
        if issues:
            raise FhirError(status, issues)

        responses: dict[int, dict[str, Any]] = {}
        changes_before = len(self.store.changes)
        for entry in entries:
            if entry.method == "DELETE":
                responses[entry.index] = await self._run(entry, scan_identifiers)
        await self._create_posts(entries, responses)
        for methods in (("PUT", "PATCH"), ("GET", "HEAD")):
            for entry in entries:
                if entry.method in methods:
                    responses[entry.index] = await self._run(entry, scan_identifiers)
        # The batched creates did not pass through Interactions.perform: hold them (and
        # everything else) to the caller's view here, before the transaction commits.
        await self.store.require_writes_visible(changes_before)
        if self.after_write is not None:
            await self.after_write(changes_before)
        return [responses[entry.index] for entry in entries]

    async def _create_posts(
        self, entries: list[_Entry], responses: dict[int, dict[str, Any]]
    ) -> None:
        pending = [e for e in entries if e.method == "POST" and e.index not in responses]
        if not pending:
            return
        new = [e for e in pending if not e.existing]
        for entry in new:
            try:
                self.store.access.require(entry.target.split("/")[0] if entry.target else "", "c")
            except FhirError as error:
                raise FhirError(
                    error.status, [i.under(entry.where) for i in error.issues]
                ) from None
        created = await self.store.create_many(
            [
                NewResource(e.target.split("/")[0], e.target.split("/")[1], e.resource)
                for e in new
                if e.target and e.resource
            ]
        )
        for entry, version in zip(new, created, strict=True):
            responses[entry.index] = self._entry_response(
                FhirResult(201, version=version, location=True)
            )
        for entry in pending:
            if entry.existing and entry.target:
                res_type, res_id = entry.target.split("/")
                existing = await self.store.read(res_type, res_id)
                responses[entry.index] = self._entry_response(
                    FhirResult(200, version=existing, location=True)
                )

    async def _run(self, entry: _Entry, scan_identifiers: bool) -> dict[str, Any]:
        path, query = entry.path, entry.query
        if entry.method == "PUT" and entry.target:
            path, query = entry.target, ""  # conditional update already resolved to its target
        request = FhirRequest(
            method=entry.method,
            path=path,
            query=query,
            body=entry.resource if entry.method != "PATCH" else self._patch_body(entry),
            content_type="application/json-patch+json"
            if entry.method == "PATCH"
            else "application/fhir+json",
            if_match=entry.if_match,
            if_none_match=entry.if_none_match,
            scan_identifiers=scan_identifiers,
        )
        try:
            result = await self.interactions.perform(request)
        except FhirError as error:
            issues = [
                i.under(f"{entry.where}.resource") if i.expression else i.under(entry.where)
                for i in error.issues
            ]
            raise FhirError(
                error.status, issues or [Issue(str(error), expression=(entry.where,))]
            ) from None
        return self._entry_response(result, include_resource=entry.method == "GET")

    def _patch_body(self, entry: _Entry) -> Any:
        resource = entry.resource
        # FHIR carries a JSON Patch in a Bundle as a Binary whose data is the patch, base64.
        if (
            isinstance(resource, dict)
            and resource.get("resourceType") == "Binary"
            and resource.get("data")
        ):
            try:
                return orjson.loads(base64.b64decode(resource["data"]))
            except (ValueError, orjson.JSONDecodeError):
                raise FhirError.of(
                    400,
                    f"{entry.where}.resource.data is not a base64 JSON Patch",
                    code="structure",
                    expression=f"{entry.where}.resource.data",
                ) from None
        raise FhirError.of(
            400,
            f"{entry.where}: a PATCH entry carries its JSON Patch as a Binary resource",
            code="structure",
            expression=f"{entry.where}.resource",
        )

    def _criteria(self, entry: _Entry, res_type: str, query: str) -> Criteria:
        try:
            return Criteria.parse(res_type, query, self.store.indexer)
        except FhirError as error:
            raise FhirError(
                error.status, [i.under(f"{entry.where}.request") for i in error.issues]
            ) from None

    async def _resolve_conditional(
        self, entry: _Entry, reference: str, entries: list[_Entry]
    ) -> str:
        match = _CONDITIONAL_REFERENCE.match(reference)
        assert match is not None
        res_type, query = match.groups()
        criteria = self._criteria(entry, res_type, query)
        ids = set(await criteria.find_ids(self.store.session, access=self.store.access))
        for other in entries:
            if other.target and other.target.startswith(f"{res_type}/") and other.index_rows:
                if criteria.matches(other.target.split("/")[1], other.index_rows):
                    ids.add(other.target.split("/")[1])
        if len(ids) != 1:
            raise FhirError.of(
                412 if ids else 404,
                f"{entry.where}: the conditional reference '{reference}' matches "
                f"{'more than one' if ids else 'no'} {res_type}",
                code="multiple-matches" if ids else "not-found",
                expression=f"{entry.where}.resource",
            )
        return f"{res_type}/{ids.pop()}"

    # -- batch -----------------------------------------------------------------------------

    async def _batch(self, entries: list[_Entry], scan_identifiers: bool) -> list[dict[str, Any]]:
        responses = []
        # Every entry's criteria at once, in one order (see ResourceStore.hold_criteria).
        await self.store.hold_criteria(_conditions(entries))
        for entry in entries:
            changes_before = len(self.store.changes)
            try:
                async with self.store.session.begin_nested():
                    if entry.resource is not None and entry.method in ("POST", "PUT"):
                        await self._resolve_batch_references(entry)
                    result = await self.interactions.perform(
                        FhirRequest(
                            method=entry.method,
                            path=entry.path,
                            query=entry.query,
                            body=entry.resource
                            if entry.method != "PATCH"
                            else self._patch_body(entry),
                            content_type="application/json-patch+json"
                            if entry.method == "PATCH"
                            else "application/fhir+json",
                            if_match=entry.if_match,
                            if_none_exist=entry.if_none_exist,
                            if_none_match=entry.if_none_match,
                            scan_identifiers=scan_identifiers,
                        )
                    )
                    if self.after_write is not None and entry.method != "GET":
                        await self.after_write(changes_before)
                responses.append(
                    self._entry_response(result, include_resource=entry.method == "GET")
                )
            except FhirError as error:
                del self.store.changes[changes_before:]  # the savepoint rolled them back
                responses.append(
                    {
                        "response": {
                            "status": _status(error.status),
                            "outcome": operation_outcome(error.issues),
                        }
                    }
                )
        return responses

    async def _resolve_batch_references(self, entry: _Entry) -> None:
        assert entry.resource is not None
        resolved = {
            ref: await self._resolve_conditional(entry, ref, [])
            for ref in _conditional_references(entry.resource)
        }
        if resolved:
            _walk_references(entry.resource, resolved.get)

    def _entry_response(
        self, result: FhirResult, *, include_resource: bool = False
    ) -> dict[str, Any]:
        response: dict[str, Any] = {"status": _status(result.status)}
        entry: dict[str, Any] = {}
        version = result.version
        if version is not None:
            entry["fullUrl"] = f"{self.interactions.base_url}/{version.path}"
            if not include_resource:
                response["location"] = version.versioned_path
            response["etag"] = version.etag
            response["lastModified"] = fhir_instant(version.last_updated)
            if version.content is not None and (include_resource or self.return_resources):
                entry["resource"] = resource_fragment(version)
        if result.body is not None:
            entry["resource"] = result.body
        if result.issues:
            response["outcome"] = operation_outcome(result.issues)
        entry["response"] = response
        return entry
