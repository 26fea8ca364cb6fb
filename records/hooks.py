"""Write hooks: rules of other parts of the service that run inside a write's transaction.

The record store knows nothing of consults or registries, yet their rules must hold for
every write, whichever door it came through (the ``/fhir`` API, the pages, a JSON API). The
application registers hooks on :class:`records.api.service.RecordsContext`; each write —
one request, one transaction Bundle, or one entry of a batch Bundle — calls every hook
once, after the write is done and before it commits, with a :class:`WriteContext`:

- what the write changed (``changes``), each change's new and previous content;
- the caller, and reads in the same transaction without the caller's access limits (a rule
  may need to see what the caller cannot, to decide);
- :meth:`WriteContext.write`: more resources in the same transaction, written with the
  service's authority (a rule has decided they follow); they join the write's changes, so
  its audit record and the change feed name them too;
- :meth:`WriteContext.after_commit`: work to do once the write has committed (an
  announcement on the bus); it is dropped if the write is rolled back.

A hook refuses the write by raising :class:`~records.outcome.FhirError`: the whole unit is
rolled back (for a batch entry, that entry only) and the caller gets the OperationOutcome.
Hooks are not called again for what hooks write, nor for bulk imports and the demo seed,
which are the service's own writes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from health.core.ids import new_resource_id
from records.access import FULL_ACCESS, Caller
from records.criteria import Criteria
from records.outcome import FhirError
from records.store import Change, NewResource, ResourceStore
from records.validation import validate_resource

logger = logging.getLogger(__name__)

AfterCommit = Callable[[], Awaitable[None]]


@dataclass
class WriteContext:
    """One write, seen from inside its transaction, for the hooks."""

    caller: Caller
    #: The caller's store: reads here are limited to what the caller may see.
    store: ResourceStore
    #: What the write changed, in order (creates, updates, deletions).
    changes: Sequence[Change]
    base_url: str
    _service: ResourceStore = field(init=False)
    _after_commit: list[AfterCommit] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Same session and the same list of changes: what hooks write is audited and
        # announced with the write.
        self._service = ResourceStore(
            self.store.session, self.store.indexer, access=FULL_ACCESS, changes=self.store.changes
        )

    @property
    def session(self) -> AsyncSession:
        return self.store.session

    async def resource(self, res_type: str, res_id: str) -> dict[str, Any] | None:
        """The current content of a resource, whoever may see it; None if absent or deleted."""
        found = await self._service.current(res_type, res_id)
        if found is None or found.content is None:
            return None
        parsed: dict[str, Any] = orjson.loads(found.content)
        return parsed

    async def content(self, change: Change) -> dict[str, Any] | None:
        """A change's new content (None for a deletion)."""
        if change.method == "DELETE":
            return None
        found = await self._service.vread(change.res_type, change.res_id, change.version)
        return orjson.loads(found.content) if found.content else None

    async def previous(self, change: Change) -> dict[str, Any] | None:
        """The content before a change (None if the change created the resource)."""
        if change.version <= 1:
            return None
        try:
            found = await self._service.vread(change.res_type, change.res_id, change.version - 1)
        except FhirError:  # the version before was a deletion
            return None
        return orjson.loads(found.content) if found.content else None

    async def patients_of(self, res_type: str, res_id: str) -> set[str]:
        """The patients in whose records (Patient compartments) a resource is."""
        owners = await self._service.owners_of([(res_type, res_id)])
        return owners.get((res_type, res_id), set())

    async def search(self, res_type: str, query: str) -> list[dict[str, Any]]:
        """The current content of the resources matching a FHIR search query, whoever's."""
        ids = await Criteria.parse(res_type, query, self.store.indexer).find_ids(
            self.session, access=FULL_ACCESS
        )
        found = [await self.resource(res_type, res_id) for res_id in ids]
        return [r for r in found if r is not None]

    async def write(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Create (no ``id``) or update a resource with the service's authority; its content.

        The resource is validated like any other write: a hook that builds an invalid one
        has a bug, and the write fails rather than store it.
        """
        data = validate_resource(resource)
        res_type = data["resourceType"]
        if "id" in data:
            stored, _ = await self._service.update(res_type, data["id"], data)
        else:
            (stored,) = await self._service.create_many(
                [NewResource(res_type, new_resource_id(), data)]
            )
        assert stored.content is not None
        parsed: dict[str, Any] = orjson.loads(stored.content)
        return parsed

    def after_commit(self, work: AfterCommit) -> None:
        """Run ``work`` once the write has committed (never if it is rolled back)."""
        self._after_commit.append(work)


#: A rule run inside every write; raises FhirError to refuse it.
WriteHook = Callable[[WriteContext], Awaitable[None]]


async def run_hooks(
    hooks: Sequence[WriteHook],
    *,
    caller: Caller,
    store: ResourceStore,
    since: int,
    base_url: str,
    after_commit: list[AfterCommit],
) -> None:
    """Call each hook with the changes made since change number ``since``.

    What the hooks ask to run after the commit is added to ``after_commit`` only if every
    hook accepted the write.
    """
    changes = list(store.changes[since:])
    if not hooks or not changes:
        return
    context = WriteContext(caller=caller, store=store, changes=changes, base_url=base_url)
    for hook in hooks:
        await hook(context)
    after_commit.extend(context._after_commit)


async def run_after_commit(work: Sequence[AfterCommit]) -> None:
    """Run what the hooks asked for after a commit; a failure is logged, not raised (the
    write has committed and cannot be taken back)."""
    for item in work:
        try:
            await item()
        except Exception:
            logger.exception("work after a commit failed")
