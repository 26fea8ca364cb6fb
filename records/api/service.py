"""Performing FHIR interactions for a caller: the one way in, for the ``/fhir`` route and for
every other part of the application (pages, consult workflow) that reads or writes records.

:meth:`RecordsContext.perform` runs one interaction, or a transaction/batch Bundle, in one
database transaction (a write transaction for anything but GET) under the caller's access
policy; puts what it showed or wrote — or why it was refused — on the caller's audit trail
before returning (a write's record in the write's own transaction); and after the commit
announces each change on the change feed (:mod:`records.feed`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Request
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.requests import HTTPConnection

from health.core.bus import MessageBus
from health.core.database import Database
from health.core.ids import is_valid_resource_id
from records.access import AccessEvent, Caller
from records.feed import announce
from records.hooks import AfterCommit, WriteHook, run_after_commit, run_hooks
from records.indexing import SearchIndexer
from records.interactions import FhirRequest, FhirResult, Interactions
from records.outcome import FhirError
from records.store import ResourceStore
from records.transactions import BundleProcessor

logger = logging.getLogger(__name__)


@dataclass
class RecordsContext:
    """What the FHIR API needs from the application, set on ``app.state.records``."""

    database: Database
    indexer: SearchIndexer
    bus: MessageBus
    base_url: str | None
    max_page_size: int
    default_page_size: int
    max_body_bytes: int
    #: Who is asking: the caller of a request (or a WebSocket), or a FhirError (401) if
    #: nobody we know.
    authenticate: Callable[[HTTPConnection], Awaitable[Caller]]
    #: ``CapabilityStatement.rest.security`` for a request (how clients get their tokens).
    security: Callable[[Request], dict[str, Any]] | None = None
    #: Rules run inside every write's transaction, in order (see ``records.hooks``).
    write_hooks: list[WriteHook] = field(default_factory=list)

    def fhir_base(self, request: Request) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return str(request.base_url).rstrip("/") + "/fhir"

    async def perform(
        self,
        caller: Caller,
        request: FhirRequest,
        *,
        base_url: str,
        return_resources: bool = False,
    ) -> FhirResult:
        """Run ``request`` for ``caller``; a FhirError (audited) if it is refused.

        A Bundle posted to the base comes back as a FhirResult whose body is the response
        Bundle; ``return_resources`` puts each written resource in it.
        """
        try:
            return await self._perform(caller, request, base_url, return_resources)
        except FhirError as error:
            await self.audit_refusal(caller, request, error)
            raise
        except IntegrityError:
            logger.info("write conflict on %s %s", request.method, request.path)
            conflict = FhirError.of(
                409,
                "Another request changed the same record at the same moment; try again",
                code="conflict",
            )
            await self.audit_refusal(caller, request, conflict)
            raise conflict from None
        except DBAPIError as error:
            if not _is_retryable(error):
                raise
            transient = FhirError.of(
                409,
                "The database could not serialise this change with a concurrent one; try again",
                code="transient",
            )
            await self.audit_refusal(caller, request, transient)
            raise transient from None

    async def _perform(
        self, caller: Caller, request: FhirRequest, base_url: str, return_resources: bool
    ) -> FhirResult:
        is_write = request.method != "GET"
        after_commit: list[AfterCommit] = []
        async with self.database.transaction(write=is_write) as session:
            store = ResourceStore(session, self.indexer, access=caller.access)
            interactions = Interactions(
                store,
                base_url=base_url,
                max_page_size=self.max_page_size,
                default_page_size=self.default_page_size,
            )

            async def after_write(since: int) -> None:
                await run_hooks(
                    self.write_hooks,
                    caller=caller,
                    store=store,
                    since=since,
                    base_url=base_url,
                    after_commit=after_commit,
                )

            if request.path == "" and request.method == "POST":
                processor = BundleProcessor(
                    interactions, return_resources=return_resources, after_write=after_write
                )
                body = await processor.process(
                    request.body, scan_identifiers=request.scan_identifiers
                )
                result = FhirResult(200, body=body)
            else:
                result = await interactions.perform(request)
                if is_write:
                    await after_write(0)
            touched = [*interactions.shown, *((c.res_type, c.res_id) for c in store.changes)]
            event = access_event(
                request, result.status, resources=touched, owners=await store.owners_of(touched)
            )
            if is_write:
                await caller.audit(event, session=session)
        if not is_write:
            await caller.audit(event)
        await announce(self.bus, store.changes)
        await run_after_commit(after_commit)
        return result

    async def audit_refusal(self, caller: Caller, request: FhirRequest, error: FhirError) -> None:
        """Put a refused request on the caller's audit trail."""
        # The reason kept is the error code, not the message: messages may quote values.
        codes = ", ".join(sorted({i.code for i in error.issues})) or str(error.status)
        # What was asked for, if it names a resource: a patient's clinic then sees the attempt.
        segments = request.segments
        named = (
            [(segments[0], segments[1])]
            if len(segments) >= 2
            and segments[0][:1].isupper()
            and segments[1][:1] not in ("_", "$")
            and is_valid_resource_id(segments[1])
            else []
        )
        owners = {(t, i): {i} for t, i in named if t == "Patient"}
        await caller.audit(
            access_event(request, error.status, resources=named, owners=owners, problem=codes)
        )


def resources_of(result: FhirResult) -> list[dict[str, Any]]:
    """The resources a result shows, parsed: the one read, or a search's matches and includes."""
    versions = [result.version] if result.version is not None else result.shown
    return [orjson.loads(v.content) for v in versions if v is not None and v.content]


def access_event(
    request: FhirRequest,
    status: int,
    *,
    resources: list[tuple[str, str]] | None = None,
    owners: dict[tuple[str, str], set[str]] | None = None,
    problem: str | None = None,
) -> AccessEvent:
    interaction, action = request.interaction
    target = request.path + (f"?{request.query}" if request.query else "")
    shown = tuple(dict.fromkeys(resources or ()))
    patients: dict[str, list[tuple[str, str]]] = {}
    for resource in shown:
        for patient in sorted((owners or {}).get(resource, ())):
            patients.setdefault(patient, []).append(resource)
    return AccessEvent(
        interaction=interaction,
        action=action,
        status=status,
        request=f"{request.method} {target}",
        resources=shown,
        patients={p: tuple(r) for p, r in sorted(patients.items())},
        problem=problem,
    )


def _is_retryable(error: DBAPIError) -> bool:
    text = str(error.orig).lower()
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked"))
