"""The FHIR RESTful interactions, independent of HTTP.

A :class:`FhirRequest` (method, path below the base, query, headers that matter, body) goes in;
a :class:`FhirResult` comes out. The ``/fhir`` routes and each entry of a batch or transaction
Bundle go through the same :func:`perform`, so a Bundle entry behaves exactly like the
request it describes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import jsonpatch
import orjson

from health.core.ids import is_valid_resource_id, new_resource_id
from records import bundles
from records.access import interaction_of
from records.criteria import Criteria
from records.definitions import compartments
from records.outcome import FhirError, Issue
from records.search.engine import Compartment, SearchEngine
from records.search.parse import SearchParser
from records.store import HistoryPage, NewResource, ResourceStore, StoredVersion, parse_etag
from records.validation import check_resource_type, validate_resource


@dataclass
class FhirRequest:
    method: str
    #: The path below the FHIR base, without slashes at either end: ``Patient/1/_history/2``.
    path: str
    query: str = ""
    body: Any = None
    content_type: str | None = None
    if_match: str | None = None
    if_none_exist: str | None = None
    if_none_match: str | None = None
    if_modified_since: dt.datetime | None = None
    #: Whether the body may hold resident identity numbers (see validation); True if unknown.
    scan_identifiers: bool = True
    #: ``Prefer: handling=strict``: refuse unknown search parameters instead of ignoring them.
    handling_strict: bool = False

    @property
    def segments(self) -> list[str]:
        return [s for s in self.path.split("/") if s]

    def params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)

    def param(self, name: str) -> str | None:
        for key, value in self.params():
            if key == name:
                return value
        return None

    @property
    def interaction(self) -> tuple[str, str]:
        """(restful-interaction code, AuditEvent action) of this request."""
        segments = self.segments
        method = self.method.upper()
        if method == "POST":
            if not segments:
                kind = self.body.get("type") if isinstance(self.body, dict) else None
                return ("batch" if kind == "batch" else "transaction"), "E"
            return "create", "C"
        if method in ("PUT", "PATCH", "DELETE"):
            return {"PUT": ("update", "U"), "PATCH": ("patch", "U"), "DELETE": ("delete", "D")}[
                method
            ]
        if not segments:
            return "search-system", "E"
        if segments == ["_history"]:
            return "history-system", "R"
        if len(segments) == 1:
            return "search-type", "E"
        if segments[1] == "_history":
            return "history-type", "R"
        if len(segments) == 2:
            return "read", "R"
        if segments[2] == "_history":
            return ("vread", "R") if len(segments) == 4 else ("history-instance", "R")
        if segments[2].startswith("$"):
            return "operation", "E"
        return "search-type", "E"


@dataclass
class FhirResult:
    status: int
    #: The resource version the response is about (body, ETag, Last-Modified, Location).
    version: StoredVersion | None = None
    #: A body that is not a stored resource: a Bundle, an OperationOutcome, metadata.
    body: dict[str, Any] | None = None
    #: Send Location (create, and update that created).
    location: bool = False
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    #: The resources a search or history shows (besides ``version``), for the audit trail.
    shown: list[StoredVersion] = field(default_factory=list)


def _resource_body(request: FhirRequest, res_type: str) -> dict[str, Any]:
    data = request.body
    if not isinstance(data, dict):
        raise FhirError.of(
            400, "The request body must be a FHIR resource (a JSON object)", code="structure"
        )
    if data.get("resourceType") != res_type:
        raise FhirError.of(
            400,
            f"The body is a {data.get('resourceType')!r}, but the URL names {res_type}",
            code="invalid",
            expression="resourceType",
        )
    return validate_resource(data, scan_identifiers=request.scan_identifiers)


def _int_param(request: FhirRequest, name: str) -> int | None:
    value = request.param(name)
    if value is None or value == "":
        return None
    if not value.lstrip("-").isdigit():
        raise FhirError.of(400, f"{name} must be a whole number, got {value!r}", code="value")
    return int(value)


def _instant_param(request: FhirRequest, name: str) -> dt.datetime | None:
    value = request.param(name)
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FhirError.of(
            400, f"{name} must be an instant such as 2026-01-31T08:00:00Z", code="value"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


class Interactions:
    """Runs one interaction inside the store's transaction."""

    def __init__(
        self, store: ResourceStore, *, base_url: str, max_page_size: int, default_page_size: int
    ) -> None:
        self.store = store
        self.base_url = base_url.rstrip("/")
        self.max_page_size = max_page_size
        self.default_page_size = default_page_size
        #: ``(type, id)`` of every resource shown to the caller so far (writes are in
        #: ``store.changes``): what the audit trail records as seen.
        self.shown: list[tuple[str, str]] = []

    async def perform(self, request: FhirRequest) -> FhirResult:
        """Run the interaction; a write must leave everything it wrote visible to the caller."""
        changes_before = len(self.store.changes)
        result = await self._dispatch(request)
        if request.method.upper() != "GET":
            await self.store.require_writes_visible(changes_before)
        elif result.version is not None and result.version.content is not None:
            self.shown.append((result.version.res_type, result.version.res_id))
        self.shown += [(v.res_type, v.res_id) for v in result.shown if v.content is not None]
        return result

    async def _dispatch(self, request: FhirRequest) -> FhirResult:
        segments = request.segments
        method = request.method.upper()
        if not segments:
            if method == "GET":
                return await self.search(request, None)
            raise FhirError.of(405, f"{method} is not supported at the base", code="not-supported")
        if segments == ["_history"] and method == "GET":
            return await self._history(request, None, None)
        res_type = segments[0]
        check_resource_type(res_type)
        access = self.store.access
        access.require(res_type, interaction_of(method, segments[1:2] not in ([], ["_history"])))
        if len(segments) == 1:
            if method == "POST":
                return await self.create(request, res_type)
            if method in ("PUT", "DELETE", "PATCH") and request.query:
                return await self._conditional(request, res_type, method)
            if method == "GET":
                return await self.search(request, res_type)
        elif segments[1] == "_history" and len(segments) == 2 and method == "GET":
            return await self._history(request, res_type, None)
        else:
            res_id = segments[1]
            if not is_valid_resource_id(res_id):
                raise FhirError.of(400, f"'{res_id}' is not a valid FHIR id", code="value")
            if len(segments) == 2:
                if method == "GET":
                    return await self.read(request, res_type, res_id)
                if method == "PUT":
                    return await self.update(request, res_type, res_id)
                if method == "PATCH":
                    return await self.patch(request, res_type, res_id)
                if method == "DELETE":
                    return await self.delete(request, res_type, res_id)
            elif len(segments) == 3 and method == "GET" and segments[2] == "$everything":
                if res_type != "Patient":
                    raise FhirError.of(
                        404, "$everything is defined for Patient", code="not-supported"
                    )
                await self.store.read(res_type, res_id)
                # The patient's record, not the trail of who looked at it (AuditEvent?patient=).
                everything = Compartment(res_type, res_id, excluded=frozenset({"AuditEvent"}))
                return await self.search(request, None, compartment=everything)
            elif len(segments) == 3 and method == "GET" and segments[2][:1].isupper():
                # Compartment search: Patient/123/Observation?code=...
                target_type = segments[2]
                check_resource_type(target_type)
                access.require(target_type, "s")
                await self.store.read(res_type, res_id)
                if target_type not in compartments().get(res_type, {}) and target_type != res_type:
                    raise FhirError.of(
                        404, f"{target_type} is not in the {res_type} compartment", code="not-found"
                    )
                return await self.search(
                    request, target_type, compartment=Compartment(res_type, res_id)
                )
            elif segments[2] == "_history" and method == "GET":
                if len(segments) == 3:
                    return await self._history(request, res_type, res_id)
                if len(segments) == 4 and segments[3].isdigit():
                    version = await self.store.vread(res_type, res_id, int(segments[3]))
                    return self._conditional_read(request, version)
        raise FhirError.of(
            405 if len(segments) <= 2 else 404,
            f"{method} {request.path} is not an interaction this server supports",
            code="not-supported",
        )

    # -- instance level --------------------------------------------------------------------

    async def read(self, request: FhirRequest, res_type: str, res_id: str) -> FhirResult:
        return self._conditional_read(request, await self.store.read(res_type, res_id))

    def _conditional_read(self, request: FhirRequest, version: StoredVersion) -> FhirResult:
        if request.if_none_match is not None and request.if_none_match.strip() in (
            version.etag,
            f'"{version.version}"',
            "*",
        ):
            return FhirResult(304, version=version)
        if (
            request.if_modified_since is not None
            and version.last_updated.replace(microsecond=0) <= request.if_modified_since
        ):
            return FhirResult(304, version=version)
        return FhirResult(200, version=version)

    async def create(self, request: FhirRequest, res_type: str) -> FhirResult:
        data = _resource_body(request, res_type)
        condition = request.if_none_exist or (request.query or None)
        if condition:
            await self.store.hold_criteria([(res_type, condition)])
            matches = await Criteria.parse(res_type, condition, self.store.indexer).find_ids(
                self.store.session, access=self.store.access
            )
            if len(matches) > 1:
                raise FhirError.of(
                    412,
                    f"If-None-Exist '{condition}' matches more than one {res_type}",
                    code="duplicate",
                )
            if matches:
                existing = await self.store.read(res_type, matches[0])
                return FhirResult(
                    200,
                    version=existing,
                    issues=[
                        Issue(
                            f"{res_type}/{matches[0]} already matches '{condition}'; "
                            "nothing created",
                            code="informational",
                            severity="information",
                        )
                    ],
                )
        (created,) = await self.store.create_many([NewResource(res_type, new_resource_id(), data)])
        return FhirResult(201, version=created, location=True)

    async def update(self, request: FhirRequest, res_type: str, res_id: str) -> FhirResult:
        data = _resource_body(request, res_type)
        if "id" not in data:
            raise FhirError.of(
                400,
                "The resource in an update must carry its id",
                code="required",
                expression=f"{res_type}.id",
            )
        if data["id"] != res_id:
            raise FhirError.of(
                400,
                f"The body's id '{data['id']}' differs from the URL's '{res_id}'",
                code="invalid",
                expression=f"{res_type}.id",
            )
        version, created = await self.store.update(
            res_type, res_id, data, if_match=parse_etag(request.if_match)
        )
        return FhirResult(201 if created else 200, version=version, location=created)

    async def patch(self, request: FhirRequest, res_type: str, res_id: str) -> FhirResult:
        content_type = (request.content_type or "").split(";")[0].strip()
        if content_type != "application/json-patch+json":
            raise FhirError.of(
                415,
                "PATCH takes a JSON Patch document (Content-Type: application/json-patch+json)",
                code="not-supported",
            )
        current = await self.store.read(res_type, res_id)
        if_match = parse_etag(request.if_match)
        if if_match is not None and if_match != current.version:
            raise FhirError.of(
                412,
                f"{res_type}/{res_id} is at version {current.version}, not {if_match}",
                code="conflict",
            )
        try:
            operations = jsonpatch.JsonPatch(request.body)
            assert current.content is not None
            patched = operations.apply(orjson.loads(current.content))
        except (
            jsonpatch.JsonPatchException,
            jsonpatch.JsonPointerException,
            TypeError,
            KeyError,
        ) as error:
            status = 422 if isinstance(error, jsonpatch.JsonPatchTestFailed) else 400
            raise FhirError.of(
                status, f"The JSON Patch cannot be applied: {error}", code="processing"
            ) from None
        if (
            not isinstance(patched, dict)
            or patched.get("resourceType") != res_type
            or patched.get("id") != res_id
        ):
            raise FhirError.of(
                422, "A patch may not change resourceType or id", code="business-rule"
            )
        validate_resource(patched)
        version, _ = await self.store.update(
            res_type, res_id, patched, if_match=current.version, method="PATCH"
        )
        return FhirResult(200, version=version)

    async def delete(self, request: FhirRequest, res_type: str, res_id: str) -> FhirResult:
        deleted = await self.store.delete(res_type, res_id, if_match=parse_etag(request.if_match))
        if deleted is None:
            return FhirResult(
                204,
                issues=[
                    Issue(
                        f"{res_type}/{res_id} was already deleted",
                        code="informational",
                        severity="information",
                    )
                ],
            )
        return FhirResult(
            200,
            headers={"ETag": deleted.etag},
            issues=[
                Issue(f"Deleted {res_type}/{res_id}", code="informational", severity="information")
            ],
        )

    # -- type level ------------------------------------------------------------------------

    async def _conditional(self, request: FhirRequest, res_type: str, method: str) -> FhirResult:
        criteria = Criteria.parse(res_type, request.query, self.store.indexer)
        if method == "PUT":  # it may create: see create
            await self.store.hold_criteria([(res_type, request.query)])
        matches = await criteria.find_ids(self.store.session, access=self.store.access)
        if len(matches) > 1:
            raise FhirError.of(
                412, f"'{request.query}' matches more than one {res_type}", code="multiple-matches"
            )
        if method == "DELETE":
            if not matches:
                return FhirResult(
                    204,
                    issues=[
                        Issue(
                            f"No {res_type} matches '{request.query}'; nothing deleted",
                            code="not-found",
                            severity="information",
                        )
                    ],
                )
            return await self.delete(request, res_type, matches[0])
        if method == "PATCH":
            if not matches:
                raise FhirError.of(
                    404, f"No {res_type} matches '{request.query}'", code="not-found"
                )
            return await self.patch(request, res_type, matches[0])
        # Conditional update: update the match, or create (with the body's id, or a new one).
        body = request.body if isinstance(request.body, dict) else {}
        body_id = body.get("id")
        if matches:
            if body_id is not None and body_id != matches[0]:
                raise FhirError.of(
                    400,
                    f"The body's id '{body_id}' is not the matching {res_type}/{matches[0]}",
                    code="invalid",
                    expression=f"{res_type}.id",
                )
            res_id = matches[0]
        else:
            res_id = body_id if isinstance(body_id, str) else new_resource_id()
        request.body = {**body, "id": res_id} if body else body
        return await self.update(request, res_type, res_id)

    async def search(
        self, request: FhirRequest, res_type: str | None, *, compartment: Compartment | None = None
    ) -> FhirResult:
        """A search (type, system or compartment level), with includes, paging and summaries.

        Unsupported parameters are ignored and named in an OperationOutcome entry, or refused
        with 400 when the client sends ``Prefer: handling=strict``, as the search page says.
        """
        parser = SearchParser(
            self.store.indexer, max_count=self.max_page_size, default_count=self.default_page_size
        )
        query = parser.parse(res_type, request.params(), strict=request.handling_strict)
        result = await SearchEngine(
            self.store.session, self.store.indexer, base_url=self.base_url, access=self.store.access
        ).run(query, compartment=compartment)
        path = request.path.strip("/")
        paging = ("_count", "_offset", "_cursor")
        kept = [(k, v) for k, v in request.params() if k not in paging]
        return FhirResult(
            200,
            body=bundles.searchset(
                base=self.base_url,
                path=path,
                criteria=kept,
                versions=result.matches,
                included=result.included,
                count=query.options.count,
                position=[(k, v) for k, v in request.params() if k in paging[1:]],
                next_cursor=result.next_cursor,
                previous_cursor=result.previous_cursor,
                total=result.total,
                subset=bundles.Subset(query.options.summary, query.options.elements),
                warnings=[
                    Issue(f"Ignored: {p}", code="not-supported", severity="warning")
                    for p in query.ignored
                ],
            ),
            shown=[*result.matches, *result.included],
        )

    async def _history(
        self, request: FhirRequest, res_type: str | None, res_id: str | None
    ) -> FhirResult:
        count = min(_int_param(request, "_count") or self.default_page_size, self.max_page_size)
        if count < 1:
            raise FhirError.of(400, "_count must be at least 1", code="value")
        page: HistoryPage = await self.store.history(
            res_type=res_type,
            res_id=res_id,
            since=_instant_param(request, "_since"),
            at=_instant_param(request, "_at"),
            count=count,
            older_than=_int_param(request, "_older_than"),
            newer_than=_int_param(request, "_newer_than"),
        )
        path = "/".join(p for p in (res_type, res_id, "_history") if p)
        return FhirResult(
            200,
            body=bundles.history(
                base=self.base_url, path=path, params=request.params(), page=page, count=count
            ),
            shown=page.versions,
        )
