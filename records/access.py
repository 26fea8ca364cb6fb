"""What the caller of the record store may see and do, as the store needs to know it.

The application decides the policy (``health.auth.policy``); the store enforces it where the
data is: :meth:`RecordAccess.visible` is a SQL condition on a ``resources`` row that every
read, search, include, chain, ``_has``, history and conditional match adds to its WHERE, so a
resource the caller may not see is never found, counted or paged over. Writes are held to the
same condition: what a caller writes must be visible to that caller when the write is done.
``interaction`` is a SMART letter: ``c`` create, ``r`` read, ``u`` update, ``d`` delete,
``s`` search.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import FromClause


class RecordAccess(Protocol):
    def require(self, res_type: str, interaction: str) -> None:
        """Raise a 403 FhirError unless the caller may do ``interaction`` on ``res_type``."""
        ...

    def types_allowed(self, interaction: str) -> frozenset[str] | None:
        """The types the caller may do ``interaction`` on; None means every type."""
        ...

    def visible(
        self, r: FromClause, types: Collection[str] | None = None
    ) -> ColumnElement[bool] | None:
        """The condition that the ``resources`` row ``r`` is visible; None: everything is.
        ``types``: ``r`` is known to be of one of these types (None: of any).

        A policy keeps one rule the store relies on: every row in the Patient compartment of
        a visible Patient is visible (a compartment search then tests the Patient, not each
        row). What :meth:`types_allowed` leaves out stays out."""
        ...

    async def settled(self, session: AsyncSession, types: Collection[str]) -> RecordAccess:
        """This access for a search of ``types``, with what its condition depends on besides
        the row (whether the caller holds any grant; whether anything of these types is
        about a household) asked once, in ``session``, and answered: its conditions then
        leave out the parts that can match no row. PostgreSQL plans every branch of a
        condition on every statement, whether or not a row reaches it.

        An answer holds for the statements that follow it; a change made in between (a grant
        given, a household's Flag written) is seen by the next search, never a row more than
        the full condition would show."""
        ...


class FullAccess:
    """No restriction: the service itself (imports, seeding, reindexing, the CLI)."""

    def require(self, res_type: str, interaction: str) -> None:
        return None

    def types_allowed(self, interaction: str) -> frozenset[str] | None:
        return None

    def visible(
        self, r: FromClause, types: Collection[str] | None = None
    ) -> ColumnElement[bool] | None:
        return None

    async def settled(self, session: AsyncSession, types: Collection[str]) -> FullAccess:
        return self


FULL_ACCESS = FullAccess()


def interaction_of(method: str, names_instance: bool) -> str:
    """The SMART letter for an HTTP method on a type (``names_instance`` False) or instance."""
    if method in ("GET", "HEAD"):
        return "r" if names_instance else "s"
    return {"POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method, "r")


@dataclass(frozen=True)
class AccessEvent:
    """What one API request did with the records, as the audit trail needs to know it.

    ``interaction`` is a code of http://hl7.org/fhir/restful-interaction (``read``,
    ``search-type``, ``create``, ``transaction``...); ``action`` the AuditEvent action
    (C create, R read, U update, D delete, E execute — a search or an operation).
    """

    interaction: str
    action: str
    status: int
    #: The request as sent below the FHIR base (``Observation?code=...``), for the record.
    request: str
    #: ``(type, id)`` of every resource the caller was shown or wrote.
    resources: tuple[tuple[str, str], ...] = ()
    #: For each patient whose record those resources are in, the ones in it.
    patients: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    #: Why a refused request was refused (safe to keep: never carries the request's values).
    problem: str | None = None


class Caller(Protocol):
    """The authenticated party of one API request: what it may see, and its audit trail."""

    @property
    def access(self) -> RecordAccess: ...

    async def audit(self, event: AccessEvent, *, session: AsyncSession | None = None) -> None:
        """Put ``event`` on the audit trail: in ``session``'s transaction when given (a
        write, so the change and its record commit together), else in a transaction of its
        own that has committed when this returns."""
        ...
