"""Yuan amounts: Decimal with two places in, JSON numbers out, Chinese-style text for people.

FHIR JSON carries money as a number; ``orjson`` reads it as a float whose shortest repr is
the decimal text that was written, so ``Decimal(repr(value))`` gives the amount back exactly.
Every sum and comparison is done in Decimal.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

CENT = Decimal("0.01")
ZERO = Decimal("0.00")


def yuan(value: Any) -> Decimal:
    """A JSON number (or numeric text) as yuan, rounded half up to the cent."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an amount")
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not an amount")
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def money(amount: Decimal) -> dict[str, Any]:
    """A FHIR Money in CNY."""
    return {"value": float(amount.quantize(CENT, rounding=ROUND_HALF_UP)), "currency": "CNY"}


def format_yuan(amount: Decimal) -> str:
    """12,345.67 元"""
    return f"{amount.quantize(CENT, rounding=ROUND_HALF_UP):,.2f} 元"


def format_share(share: Decimal) -> str:
    """0.4 -> 40.0%"""
    return f"{(share * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}%"
