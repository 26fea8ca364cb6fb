"""Where a search page starts: the ``_cursor`` of ``next`` and ``previous`` links.

A cursor holds the sort values and ``rid`` of the row next to the page and the direction to
read from it. Pages are read with a keyset condition ("after this row in this order") instead
of an offset, so a resource created or deleted before the page does not shift what the next
page holds: each resource still matching is on exactly one page. The cursor is opaque to
clients (base64url of a small JSON list); its values only ever reach the database as bound
parameters.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, false, or_


@dataclass(frozen=True)
class Cursor:
    #: True: the rows after this one in the search's order; False: the rows before it.
    forward: bool
    values: tuple[Any, ...]
    rid: int

    def encode(self) -> str:
        raw = orjson.dumps([1 if self.forward else 0, self.rid, [_tag(v) for v in self.values]])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            forward, rid, values = orjson.loads(raw)
            if forward not in (0, 1) or not isinstance(rid, int) or not isinstance(values, list):
                raise ValueError
            return cls(bool(forward), tuple(_untag(v) for v in values), rid)
        except (ValueError, TypeError, binascii.Error, InvalidOperation, orjson.JSONDecodeError):
            raise ValueError("_cursor is not one this server gave out") from None

    def condition(self, keys: list[tuple[Any, bool]], rid_column: Any) -> ColumnElement[bool]:
        """Rows beyond this cursor in the order of ``keys`` (value, descending), then rid.

        The order puts NULL (a resource without the sort value) last in either direction.
        """
        beyond: ColumnElement[bool] = (
            rid_column > self.rid if self.forward else (rid_column < self.rid)
        )
        for (value, descending), at in reversed(list(zip(keys, self.values, strict=True))):
            if at is None:
                # NULLs sort last: nothing is after a NULL but other NULLs; everything with a
                # value is before it.
                strictly = false() if self.forward else value.is_not(None)
                equal = value.is_(None)
            else:
                later = value < at if descending else value > at
                earlier = value > at if descending else value < at
                strictly = or_(later, value.is_(None)) if self.forward else earlier
                equal = value == at
            beyond = or_(strictly, and_(equal, beyond))
        return beyond


def _tag(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"t": value.isoformat()}
    if isinstance(value, Decimal):
        return {"d": str(value)}
    return value


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        if "t" in value:
            return dt.datetime.fromisoformat(value["t"])
        if "d" in value:
            return Decimal(value["d"])
        raise ValueError
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise ValueError
