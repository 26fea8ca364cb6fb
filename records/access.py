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

from typing import Protocol

from sqlalchemy import ColumnElement
from sqlalchemy.sql import FromClause


class RecordAccess(Protocol):
    def require(self, res_type: str, interaction: str) -> None:
        """Raise a 403 FhirError unless the caller may do ``interaction`` on ``res_type``."""
        ...

    def types_allowed(self, interaction: str) -> frozenset[str] | None:
        """The types the caller may do ``interaction`` on; None means every type."""
        ...

    def visible(self, r: FromClause) -> ColumnElement[bool] | None:
        """The condition that the ``resources`` row ``r`` is visible; None: everything is."""
        ...


class FullAccess:
    """No restriction: the service itself (imports, seeding, reindexing, the CLI)."""

    def require(self, res_type: str, interaction: str) -> None:
        return None

    def types_allowed(self, interaction: str) -> frozenset[str] | None:
        return None

    def visible(self, r: FromClause) -> ColumnElement[bool] | None:
        return None


FULL_ACCESS = FullAccess()


def interaction_of(method: str, names_instance: bool) -> str:
    """The SMART letter for an HTTP method on a type (``names_instance`` False) or instance."""
    if method in ("GET", "HEAD"):
        return "r" if names_instance else "s"
    return {"POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method, "r")
