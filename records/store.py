"""The versioned FHIR resource store.

Each write stores the new version's JSON text once, with the server's ``meta.versionId`` and
``meta.lastUpdated``, updates the resource's current-version row, and rewrites its search
index rows and the rows of any derived table that follows its type (``records.derived``),
all in the caller's transaction. Reads return the stored text unchanged.
The caller owns the transaction (see :meth:`health.core.database.Database.transaction`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, delete, func, insert, not_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from health.core.clock import fhir_instant, utcnow
from health.core.database import insert_rows
from health.core.ids import is_valid_resource_id, new_resource_id
from records import custodians, derived
from records.access import FULL_ACCESS, RecordAccess
from records.indexing import SearchIndexer
from records.outcome import FhirError, Issue
from records.tables import (
    SEARCH_TABLES,
    named,
    resource_versions,
    resources,
    search_compartment,
)


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of one resource, as stored."""

    res_type: str
    res_id: str
    version: int
    last_updated: dt.datetime
    method: str
    content: str | None  # None for a deletion

    @classmethod
    def from_row(
        cls,
        row: Any,
        *,
        res_type: str | None = None,
        res_id: str | None = None,
        version: int | None = None,
    ) -> StoredVersion:
        """From a result row with last_updated, method and content (and the rest, if selected).

        SQLite hands back naive datetimes; everything is stored in UTC.
        """
        moment = row.last_updated
        return cls(
            res_type or row.res_type,
            res_id or row.res_id,
            version if version is not None else row.version,
            moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC),
            row.method,
            row.content,
        )

    @property
    def deleted(self) -> bool:
        return self.content is None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def path(self) -> str:
        return f"{self.res_type}/{self.res_id}"

    @property
    def versioned_path(self) -> str:
        return f"{self.res_type}/{self.res_id}/_history/{self.version}"


@dataclass(frozen=True, slots=True)
class NewResource:
    """A validated resource about to be created; ``res_id`` is already assigned."""

    res_type: str
    res_id: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """What the change feed announces after the transaction commits."""

    res_type: str
    res_id: str
    version: int
    method: str


@dataclass(frozen=True, slots=True)
class HistoryPage:
    versions: list[StoredVersion]
    total: int
    #: seq of the newest and oldest version on the page, the keys of the previous/next page.
    first_seq: int | None
    last_seq: int | None
    has_more: bool
    has_newer: bool


def parse_etag(value: str | None) -> int | None:
    """The version in an ``If-Match`` header (``W/"3"`` or ``"3"``); None when absent."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise FhirError.of(
            400, f'If-Match must name a version such as W/"3", got {value!r}', code="value"
        )
    return int(text)


def _stamp(data: dict[str, Any], res_id: str, version: int, moment: dt.datetime) -> str:
    """The JSON text to store: resourceType, id and meta first, the server's meta values set."""
    meta = dict(data.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = fhir_instant(moment)
    body = {"resourceType": data["resourceType"], "id": res_id, "meta": meta}
    for key, value in data.items():
        if key not in body:
            body[key] = value
    return orjson.dumps(body).decode()


def _without_server_meta(data: dict[str, Any]) -> dict[str, Any]:
    meta = {
        k: v for k, v in (data.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    stripped = {k: v for k, v in data.items() if k not in ("meta", "id")}
    if meta:
        stripped["meta"] = meta
    return stripped


@dataclass
class ResourceStore:
    """Reads and writes resources inside one database transaction."""

    session: AsyncSession
    indexer: SearchIndexer
    #: Whose eyes: reads find only what this lets the caller see, and writes must stay in it.
    access: RecordAccess = FULL_ACCESS
    changes: list[Change] = field(default_factory=list)

    def _visible(self, *types: str) -> list[ColumnElement[bool]]:
        """The caller's condition on the ``resources`` row, which the statement holds to
        ``types`` when it names them (as every read of one resource does): the parts of the
        policy no row of them can meet are then left out, and a township doctor's read of
        one Patient took 3.6 ms to plan with all of them."""
        condition = self.access.visible(resources, types or None)
        return [] if condition is None else [condition]

    async def hold_criteria(self, criteria: Iterable[tuple[str, str]]) -> None:
        """Hold, until this transaction ends, each (type, search) of a conditional write, so
        that two concurrent writes on the same criteria cannot both find nothing and both
        create: the second waits for the first to commit, then finds what it wrote.

        On PostgreSQL an advisory lock per criteria (the same search with its parameters in
        another order is the same lock), taken in one order so that two transactions holding
        several cannot deadlock; SQLite's write transactions are exclusive already."""
        if self.session.bind is None or self.session.bind.dialect.name != "postgresql":
            return
        keys = sorted({f"{t}?{'&'.join(sorted(query.split('&')))}" for t, query in criteria})
        if keys:  # one round trip, however many entries a Bundle has
            await self.session.execute(
                text(
                    "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM "
                    "(SELECT unnest(CAST(:keys AS text[])) AS k ORDER BY 1) AS sorted"
                ),
                {"keys": keys},
            )

    # -- reads -----------------------------------------------------------------------------

    async def current(self, res_type: str, res_id: str) -> StoredVersion | None:
        """The current version (a deletion if deleted), or None if the resource never existed."""
        row = (
            await self.session.execute(
                select(
                    resource_versions.c.version,
                    resource_versions.c.last_updated,
                    resource_versions.c.method,
                    resource_versions.c.content,
                )
                .select_from(resources)
                .join(
                    resource_versions,
                    and_(
                        resource_versions.c.rid == resources.c.rid,
                        resource_versions.c.version == resources.c.version,
                    ),
                )
                .where(
                    resources.c.res_type == res_type,
                    resources.c.res_id == res_id,
                    *self._visible(res_type),
                )
            )
        ).first()
        if row is None:
            return None
        return StoredVersion.from_row(row, res_type=res_type, res_id=res_id)

    async def read(self, res_type: str, res_id: str) -> StoredVersion:
        found = await self.current(res_type, res_id)
        if found is None:
            raise FhirError.of(404, f"{res_type}/{res_id} is not known", code="not-found")
        if found.deleted:
            raise FhirError(
                410,
                [_gone_issue(res_type, res_id, found.version)],
                headers={"ETag": found.etag},
            )
        return found

    async def vread(self, res_type: str, res_id: str, version: int) -> StoredVersion:
        row = (
            await self.session.execute(
                select(
                    resource_versions.c.last_updated,
                    resource_versions.c.method,
                    resource_versions.c.content,
                )
                .select_from(resources)
                .join(resource_versions, resource_versions.c.rid == resources.c.rid)
                .where(
                    resources.c.res_type == res_type,
                    resources.c.res_id == res_id,
                    resource_versions.c.version == version,
                    *self._visible(res_type),
                )
            )
        ).first()
        if row is None:
            raise FhirError.of(
                404, f"{res_type}/{res_id} has no version {version}", code="not-found"
            )
        found = StoredVersion.from_row(row, res_type=res_type, res_id=res_id, version=version)
        if found.deleted:
            raise FhirError(410, [_gone_issue(res_type, res_id, version)])
        return found

    async def history(
        self,
        *,
        res_type: str | None = None,
        res_id: str | None = None,
        since: dt.datetime | None = None,
        at: dt.datetime | None = None,
        count: int,
        older_than: int | None = None,
        newer_than: int | None = None,
    ) -> HistoryPage:
        """Versions newest first, keyed by ``seq`` so pages stay put while new versions arrive."""
        conditions = self._visible(*([res_type] if res_type else []))
        readable = self.access.types_allowed("r")
        if readable is not None:
            conditions.append(resource_versions.c.res_type.in_(readable))
        if res_type is not None:
            conditions.append(resource_versions.c.res_type == res_type)
        if res_id is not None:
            rid = await self._rid(res_type or "", res_id)
            if rid is None:
                raise FhirError.of(404, f"{res_type}/{res_id} is not known", code="not-found")
            conditions.append(resource_versions.c.rid == rid)
        if since is not None:
            conditions.append(resource_versions.c.last_updated >= since)
        if at is not None:
            conditions.append(resource_versions.c.last_updated <= at)
        total = (
            await self.session.execute(
                select(func.count())
                .select_from(resource_versions)
                .join(resources, resources.c.rid == resource_versions.c.rid)
                .where(*conditions)
            )
        ).scalar_one()
        query = (
            select(
                resource_versions.c.seq,
                resources.c.res_type,
                resources.c.res_id,
                resource_versions.c.version,
                resource_versions.c.last_updated,
                resource_versions.c.method,
                resource_versions.c.content,
            )
            .select_from(resource_versions)
            .join(resources, resources.c.rid == resource_versions.c.rid)
            .where(*conditions)
        )
        if newer_than is not None:
            # The previous page: the ``count`` versions just newer than the key, shown newest first.
            rows = list(
                (
                    await self.session.execute(
                        query.where(resource_versions.c.seq > newer_than)
                        .order_by(resource_versions.c.seq.asc())
                        .limit(count + 1)
                    )
                ).all()
            )
            has_newer = len(rows) > count
            rows = list(reversed(rows[:count]))
            has_more = True
        else:
            if older_than is not None:
                query = query.where(resource_versions.c.seq < older_than)
            rows = list(
                (
                    await self.session.execute(
                        query.order_by(resource_versions.c.seq.desc()).limit(count + 1)
                    )
                ).all()
            )
            has_more = len(rows) > count
            rows = rows[:count]
            has_newer = older_than is not None
        versions = [StoredVersion.from_row(r) for r in rows]
        return HistoryPage(
            versions=versions,
            total=total,
            first_seq=rows[0].seq if rows else None,
            last_seq=rows[-1].seq if rows else None,
            has_more=has_more,
            has_newer=has_newer,
        )

    async def owners_of(self, items: Sequence[tuple[str, str]]) -> dict[tuple[str, str], set[str]]:
        """For each resource, the patients in whose records (Patient compartments) it is.

        Read from the compartment index; a deleted resource has no index rows left, so its
        last stored content is indexed again to tell.
        """
        wanted = set(items)
        owners: dict[tuple[str, str], set[str]] = {item: set() for item in wanted}
        if not wanted:
            return owners
        rows = await self.session.execute(
            select(resources.c.res_type, resources.c.res_id, search_compartment.c.owner_id)
            .select_from(resources)
            .join(search_compartment, search_compartment.c.rid == resources.c.rid)
            .where(search_compartment.c.param == "Patient", named(resources, wanted))
        )
        for row in rows:
            owners[(row.res_type, row.res_id)].add(row.owner_id)
        unowned = [key for key, found in owners.items() if not found]
        if not unowned:
            return owners
        # Deleted ones among them: their last content, newest version first. (Most of the
        # unowned are simply outside every record: practitioners, organisations.)
        last: dict[tuple[str, str], str] = {}
        versions = await self.session.execute(
            select(resources.c.res_type, resources.c.res_id, resource_versions.c.content)
            .join(resources, resources.c.rid == resource_versions.c.rid)
            .where(
                named(resources, unowned),
                resources.c.deleted.is_(True),
                resource_versions.c.content.is_not(None),
            )
            .order_by(resource_versions.c.version.desc())
        )
        for row in versions:
            last.setdefault((row.res_type, row.res_id), row.content)
        for (res_type, res_id), content in last.items():
            rows_of = self.indexer.extract(res_type, orjson.loads(content))
            owners[(res_type, res_id)].update(r["owner_id"] for r in rows_of.get("compartment", ()))
        return owners

    # -- writes ----------------------------------------------------------------------------

    async def create_many(
        self, items: Sequence[NewResource], *, method: str = "POST"
    ) -> list[StoredVersion]:
        """Insert new resources (fresh ids) with one statement per table."""
        if not items:
            return []
        now = utcnow()
        # RETURNING the natural key, not in parameter order: SQLAlchemy can then send the rows
        # as a few multi-row INSERTs instead of one statement per row.
        returned = (
            await self.session.execute(
                insert(resources).returning(
                    resources.c.rid, resources.c.res_type, resources.c.res_id
                ),
                [
                    {
                        "res_type": item.res_type,
                        "res_id": item.res_id,
                        "version": 1,
                        "last_updated": now,
                        "deleted": False,
                    }
                    for item in items
                ],
            )
        ).all()
        rid_of = {(row.res_type, row.res_id): row.rid for row in returned}
        rids = [rid_of[(item.res_type, item.res_id)] for item in items]
        stored = []
        version_rows = []
        for rid, item in zip(rids, items, strict=True):
            content = _stamp(item.data, item.res_id, 1, now)
            version_rows.append(
                {
                    "rid": rid,
                    "res_type": item.res_type,
                    "version": 1,
                    "last_updated": now,
                    "method": method,
                    "content": content,
                }
            )
            stored.append(StoredVersion(item.res_type, item.res_id, 1, now, method, content))
            self.changes.append(Change(item.res_type, item.res_id, 1, method))
        await insert_rows(self.session, resource_versions, version_rows)
        # Index what was stored: with the id the server gave (a Patient is in its own
        # compartment by that id), not any id the client sent.
        await self._write_index_rows(
            [
                (
                    rid,
                    item.res_type,
                    item.res_id,
                    item.data
                    if item.data.get("id") == item.res_id
                    else {**item.data, "id": item.res_id},
                )
                for rid, item in zip(rids, items, strict=True)
            ]
        )
        return stored

    async def create(self, data: dict[str, Any]) -> StoredVersion:
        """Create with a server-assigned id (any id in the body is replaced, as FHIR says)."""
        res_type = data["resourceType"]
        (stored,) = await self.create_many([NewResource(res_type, new_resource_id(), data)])
        return stored

    async def update(
        self,
        res_type: str,
        res_id: str,
        data: dict[str, Any],
        *,
        if_match: int | None = None,
        method: str = "PUT",
    ) -> tuple[StoredVersion, bool]:
        """Update, or create with the client's id; returns the version and whether it is new.

        An update that changes nothing but ``meta.versionId``/``lastUpdated`` makes no new
        version, so re-sending the same resource is harmless.
        """
        if not is_valid_resource_id(res_id):
            raise FhirError.of(
                400, f"'{res_id}' is not a valid FHIR id", code="value", expression="id"
            )
        locked = await self._lock(res_type, res_id)
        if locked is None:
            if if_match is not None:
                raise FhirError.of(
                    412,
                    f"{res_type}/{res_id} does not exist, so If-Match cannot hold",
                    code="conflict",
                )
            created = await self._insert_with_client_id(res_type, res_id, data, method)
            if created is not None:
                return created, True
            locked = await self._lock(res_type, res_id)
            assert locked is not None  # another transaction created it between our two looks
        rid, version, deleted = locked
        await self._require_visible(rid, res_type, res_id)
        if if_match is not None and if_match != version:
            raise FhirError.of(
                412,
                f"{res_type}/{res_id} is at version {version}, not {if_match}: "
                "someone changed it since you read it",
                code="conflict",
            )
        if not deleted:
            current = await self.current(res_type, res_id)
            assert current is not None and current.content is not None
            if _without_server_meta(orjson.loads(current.content)) == _without_server_meta(data):
                return current, False
        held_by: dict[str, frozenset[str]] = {}
        if res_type == "Patient" and not deleted:  # her record keeps them unless she moves
            managing = await custodians.organizations_of(self.session, [res_id])
            held_by[res_id] = frozenset(managing.get(res_id, ()))
        now = utcnow()
        content = _stamp(data, res_id, version + 1, now)
        stored = await self._append_version(
            rid, res_type, res_id, version + 1, now, method, content
        )
        await self._write_index_rows([(rid, res_type, res_id, data)], held_by)
        return stored, deleted

    async def delete(
        self, res_type: str, res_id: str, *, if_match: int | None = None
    ) -> StoredVersion | None:
        """Delete; the version history stays. Deleting a deleted resource changes nothing."""
        locked = await self._lock(res_type, res_id)
        if locked is None:
            raise FhirError.of(404, f"{res_type}/{res_id} is not known", code="not-found")
        rid, version, deleted = locked
        await self._require_visible(rid, res_type, res_id)
        if if_match is not None and if_match != version:
            raise FhirError.of(
                412, f"{res_type}/{res_id} is at version {version}, not {if_match}", code="conflict"
            )
        if deleted:
            return None
        stored = await self._append_version(
            rid, res_type, res_id, version + 1, utcnow(), "DELETE", None
        )
        if res_type == "Patient":  # her record is no longer held by anyone
            await custodians.keep(self.session, [], [res_id])
        return stored

    async def _append_version(
        self,
        rid: int,
        res_type: str,
        res_id: str,
        version: int,
        now: dt.datetime,
        method: str,
        content: str | None,
    ) -> StoredVersion:
        """Make ``version`` current (a deletion when ``content`` is None); drop old index rows."""
        await self.session.execute(
            update(resources)
            .where(resources.c.rid == rid)
            .values(version=version, last_updated=now, deleted=content is None)
        )
        await self.session.execute(
            insert(resource_versions).values(
                rid=rid,
                res_type=res_type,
                version=version,
                last_updated=now,
                method=method,
                content=content,
            )
        )
        await self._delete_index_rows(rid, res_type)
        self.changes.append(Change(res_type, res_id, version, method))
        return StoredVersion(res_type, res_id, version, now, method, content)

    async def reindex(self, rids_and_content: Sequence[tuple[int, str, str]]) -> None:
        """Rewrite the index rows of current versions: (rid, type, JSON text) each."""
        for rid, res_type, _content in rids_and_content:
            await self._delete_index_rows(rid, res_type)
        parsed = [
            (rid, res_type, orjson.loads(content)) for rid, res_type, content in rids_and_content
        ]
        await self._write_index_rows(
            [(rid, res_type, str(data.get("id", "")), data) for rid, res_type, data in parsed]
        )

    # -- internals -------------------------------------------------------------------------

    async def _rid(self, res_type: str, res_id: str) -> int | None:
        return (
            await self.session.execute(
                select(resources.c.rid).where(
                    resources.c.res_type == res_type,
                    resources.c.res_id == res_id,
                    *self._visible(res_type),
                )
            )
        ).scalar_one_or_none()

    async def _require_visible(self, rid: int, res_type: str, res_id: str) -> None:
        """An existing resource the caller may not see is, to that caller, not there."""
        visible = self._visible(res_type)
        if (
            visible
            and (
                await self.session.execute(
                    select(resources.c.rid).where(
                        resources.c.rid == rid, resources.c.res_type == res_type, *visible
                    )
                )
            ).first()
            is None
        ):
            raise FhirError.of(404, f"{res_type}/{res_id} is not known", code="not-found")

    async def require_writes_visible(self, since: int = 0) -> None:
        """Refuse (403) if anything written since change ``since`` lies outside the caller's view.

        Checked after the write, in its transaction, with the same condition as every read:
        a record that would land in another clinic's patient, or in nobody's, is refused.
        """
        written = {(c.res_type, c.res_id) for c in self.changes[since:] if c.method != "DELETE"}
        visible = self._visible(*sorted({res_type for res_type, _ in written}))
        if not visible or not written:
            return
        outside = (
            await self.session.execute(
                select(resources.c.res_type, resources.c.res_id).where(
                    named(resources, written), not_(and_(*visible))
                )
            )
        ).all()
        refused = sorted(f"{r.res_type}/{r.res_id}" for r in outside)
        if refused:
            raise FhirError.of(
                403,
                f"{refused[0]} would be outside the records you may write "
                "(it must belong to a patient in your care)",
                code="forbidden",
            )

    async def _lock(self, res_type: str, res_id: str) -> tuple[int, int, bool] | None:
        # FOR UPDATE on PostgreSQL; SQLite's write transactions are already exclusive.
        row = (
            await self.session.execute(
                select(resources.c.rid, resources.c.version, resources.c.deleted)
                .where(resources.c.res_type == res_type, resources.c.res_id == res_id)
                .with_for_update()
            )
        ).first()
        return (row.rid, row.version, row.deleted) if row else None

    async def _insert_with_client_id(
        self, res_type: str, res_id: str, data: dict[str, Any], method: str
    ) -> StoredVersion | None:
        """Insert unless a concurrent transaction got there first (then None)."""
        dialect = self.session.bind.dialect.name if self.session.bind else "sqlite"
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
        now = utcnow()
        rid = (
            await self.session.execute(
                dialect_insert(resources)
                .values(
                    res_type=res_type, res_id=res_id, version=1, last_updated=now, deleted=False
                )
                .on_conflict_do_nothing(index_elements=["res_type", "res_id"])
                .returning(resources.c.rid)
            )
        ).scalar_one_or_none()
        if rid is None:
            return None
        content = _stamp(data, res_id, 1, now)
        await self.session.execute(
            insert(resource_versions).values(
                rid=rid,
                res_type=res_type,
                version=1,
                last_updated=now,
                method=method,
                content=content,
            )
        )
        await self._write_index_rows([(rid, res_type, res_id, {**data, "id": res_id})])
        self.changes.append(Change(res_type, res_id, 1, method))
        return StoredVersion(res_type, res_id, 1, now, method, content)

    async def _delete_index_rows(self, rid: int, res_type: str) -> None:
        for table in SEARCH_TABLES.values():
            await self.session.execute(delete(table).where(table.c.rid == rid))
        await derived.delete_rows(self.session, rid, res_type)

    async def _write_index_rows(
        self,
        items: Sequence[tuple[int, str, str, dict[str, Any]]],
        held_by: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """Search index rows and derived rows of new versions: (rid, type, id, content) each;
        ``held_by``: the organisations that managed some of their Patients before
        (:func:`custodians.keep`)."""
        await derived.write_rows(self.session, items)
        batches: dict[str, list[dict[str, Any]]] = {}
        in_records: list[tuple[int, str, list[str]]] = []
        patients: list[str] = []
        for rid, res_type, res_id, data in items:
            extracted = self.indexer.extract(res_type, data)
            for kind, rows in extracted.items():
                batch = batches.setdefault(kind, [])
                for row in rows:
                    row["rid"] = rid
                    row["res_type"] = res_type
                    batch.append(row)
            if extracted.get("compartment"):
                owners = [row["owner_id"] for row in extracted["compartment"]]
                in_records.append((rid, res_type, owners))
            if res_type == "Patient":
                patients.append(res_id)
        for kind, rows in batches.items():
            if rows:
                await insert_rows(self.session, SEARCH_TABLES[kind], rows)
        if in_records or patients:
            await custodians.keep(self.session, in_records, patients, held_by)


def _gone_issue(res_type: str, res_id: str, version: int) -> Issue:
    return Issue(
        f"{res_type}/{res_id} was deleted (version {version})", code="deleted", severity="error"
    )
