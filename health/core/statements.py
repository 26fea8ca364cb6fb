"""SQL constructs of our own, for what SQLAlchemy's do at a cost paid on every statement."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ColumnElement
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.cache_key import NO_CACHE, anon_map
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal


class KeyedOnce(ColumnElement[bool]):
    """A condition, made once and put into many statements, whose part of their cache key
    is worked out once.

    SQLAlchemy finds a statement's compiled form by a key it derives from the whole statement
    on every execution, walking every node of it. A township doctor's access policy is most
    of the nodes of her searches (the clinics, the grants, the households...), and walking it
    cost a search 0.25 ms, twice (the pricing of its count and its page). The condition's key
    and the parameters found in it are the same every time, so they are kept; a copy made by
    SQLAlchemy's cloning holds another condition and works out its own.
    """

    __visit_name__ = "keyed_once"
    inherit_cache = False
    _traverse_internals = [("condition", InternalTraversal.dp_clauseelement)]  # noqa: RUF012

    def __init__(self, condition: ColumnElement[bool]) -> None:
        self.condition = condition
        self.type = Boolean()
        self._keyed: tuple[Any, Any, list[Any]] | None = None

    @property
    def _from_objects(self) -> list[Any]:
        return self.condition._from_objects

    def _gen_cache_key(self, anon_map_: Any, bindparams: list[Any]) -> Any:
        keyed = self._keyed
        if keyed is None or keyed[0] is not self.condition:
            found: list[Any] = []
            own = anon_map()
            key = self.condition._gen_cache_key(own, found)
            if NO_CACHE in own:
                anon_map_[NO_CACHE] = True
                return None
            keyed = self._keyed = (self.condition, (KeyedOnce, key), found)
        bindparams.extend(keyed[2])
        return keyed[1]


@compiles(KeyedOnce)
def _keyed_once(element: KeyedOnce, compiler: SQLCompiler, **kw: Any) -> str:
    # Parenthesised: the condition is often an OR, and goes among a statement's ANDs.
    return f"({compiler.process(element.condition, **kw)})"
