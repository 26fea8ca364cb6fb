"""What a bill cost and who paid it, from whichever FHIR resource a clinic sends.

Each bill becomes a :class:`CostLine` in CNY: the total billed, the three insurance layers
(三重保障: 城乡居民基本医保 basic medical insurance, 大病保险 serious-illness insurance,
医疗救助 medical assistance), any other benefit a source does not attribute to a layer, and
what is left to the family (个人自付, out-of-pocket):

* **ExplanationOfBenefit** (the settlement): ``total`` by category. The layers are categories
  of ``PAYMENT_LAYER_SYSTEM``; a source that gives only the standard ``submitted`` and
  ``benefit`` categories (any FHIR system) has out-of-pocket = submitted − benefit, and its
  benefit is "other". Without a ``benefit`` total, ``payment.amount`` is what the insurer paid.
* **Claim** (a bill sent for settlement, no adjudication yet): the ``total`` billed. Once an
  ExplanationOfBenefit names it (``ExplanationOfBenefit.claim``) the Claim no longer counts;
  until then the rule set decides whether its whole total counts as out-of-pocket.
* **Invoice** (what the patient is asked to pay): ``totalGross`` billed, ``totalNet`` left to
  the patient; ``totalPriceComponent`` deductions coded in ``PAYMENT_LAYER_SYSTEM`` are the
  layers.

A bill is dated by when it was settled (``ExplanationOfBenefit.created``, ``Claim.created``,
``Invoice.date``) in China Standard Time: the day the family paid.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from health.core.naming import PAYMENT_LAYER_SYSTEM
from health.poverty.money import ZERO, yuan

ADJUDICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/adjudication"
CHINA_TIME = dt.timezone(dt.timedelta(hours=8), "CST")
#: The resource types that carry bills, with the search parameter that dates them.
COST_TYPES: dict[str, str] = {
    "ExplanationOfBenefit": "created",
    "Claim": "created",
    "Invoice": "date",
}
_LAYERS = ("basic-medical-insurance", "serious-illness-insurance", "medical-assistance")


class NotCounted(ValueError):
    """A bill that does not count (cancelled, not in CNY...); the message says why."""


@dataclass(frozen=True, slots=True)
class CostLine:
    source: str  # "ExplanationOfBenefit/<id>"
    patient_id: str
    on: dt.date
    provider: str | None
    billed: Decimal
    basic: Decimal
    serious: Decimal
    assistance: Decimal
    other: Decimal
    out_of_pocket: Decimal
    #: False for a Claim no ExplanationOfBenefit has answered: its split is not known.
    settled: bool = True
    #: "Claim/<id>" an ExplanationOfBenefit answers.
    answers: str | None = None


@dataclass(slots=True)
class CostTotals:
    """Sums over cost lines, with the bills behind them."""

    billed: Decimal = ZERO
    basic: Decimal = ZERO
    serious: Decimal = ZERO
    assistance: Decimal = ZERO
    other: Decimal = ZERO
    out_of_pocket: Decimal = ZERO
    sources: list[str] = field(default_factory=list)
    unsettled: int = 0

    def add(self, line: CostLine) -> None:
        self.billed += line.billed
        self.basic += line.basic
        self.serious += line.serious
        self.assistance += line.assistance
        self.other += line.other
        self.out_of_pocket += line.out_of_pocket
        self.sources.append(line.source)
        self.unsettled += not line.settled

    @classmethod
    def of(cls, lines: Iterable[CostLine]) -> CostTotals:
        totals = cls()
        for line in lines:
            totals.add(line)
        return totals


def china_date(value: str) -> dt.date:
    """The day in China Standard Time of a FHIR date (``2026``, ``2026-10``, ``2026-10-31``)
    or dateTime; a partial date means its first day."""
    if "T" not in value:
        parts = [int(part) for part in value.split("-")]
        return dt.date(parts[0], *[*parts[1:3], 1, 1][:2])
    moment = dt.datetime.fromisoformat(value)
    return moment.astimezone(CHINA_TIME).date() if moment.tzinfo else moment.date()


def _patient(reference: dict[str, Any] | None) -> str:
    text = (reference or {}).get("reference") or ""
    if not text.startswith("Patient/"):
        raise NotCounted("it names no Patient")
    return text.split("/", 2)[1]


def _amount(money: dict[str, Any] | None) -> Decimal | None:
    if not money or money.get("value") is None:
        return None
    currency = money.get("currency", "CNY")
    if currency != "CNY":
        raise NotCounted(f"its amounts are in {currency}, not CNY")
    try:
        return yuan(money["value"])
    except ValueError as error:
        raise NotCounted(str(error)) from None


def _date(value: Any, element: str) -> dt.date:
    if not isinstance(value, str) or len(value) < 4:
        raise NotCounted(f"it has no {element}")
    try:
        return china_date(value)
    except ValueError:
        raise NotCounted(f"{element} {value!r} is not a date") from None


def _provider(reference: dict[str, Any] | None) -> str | None:
    if not reference:
        return None
    return reference.get("display") or reference.get("reference")


def _categories(totals: Iterable[dict[str, Any]]) -> dict[tuple[str, str], Decimal]:
    found: dict[tuple[str, str], Decimal] = {}
    for total in totals:
        amount = _amount(total.get("amount"))
        if amount is None:
            continue
        for coding in (total.get("category") or {}).get("coding", []):
            key = (coding.get("system") or "", coding.get("code") or "")
            found[key] = found.get(key, ZERO) + amount
    return found


def _line(
    source: str,
    patient_id: str,
    on: dt.date,
    provider: str | None,
    *,
    billed: Decimal,
    layers: dict[str, Decimal],
    out_of_pocket: Decimal,
    settled: bool = True,
    answers: str | None = None,
) -> CostLine:
    basic, serious, assistance = (layers.get(code, ZERO) for code in _LAYERS)
    out_of_pocket = max(ZERO, min(out_of_pocket, billed))
    other = max(ZERO, billed - out_of_pocket - basic - serious - assistance)
    return CostLine(
        source,
        patient_id,
        on,
        provider,
        billed,
        basic,
        serious,
        assistance,
        other,
        out_of_pocket,
        settled,
        answers,
    )


def eob_cost(res_id: str, eob: dict[str, Any]) -> CostLine:
    source = f"ExplanationOfBenefit/{res_id}"
    if eob.get("status") != "active":
        raise NotCounted(f"its status is {eob.get('status')}")
    if eob.get("use", "claim") != "claim":
        raise NotCounted(f"it is a {eob.get('use')}, not a settled claim")
    if eob.get("outcome") == "error":
        raise NotCounted("its adjudication failed (outcome error)")
    patient_id = _patient(eob.get("patient"))
    on = _date(eob.get("created"), "created date")
    totals = _categories(eob.get("total", []))
    layers = {
        code: amount for (system, code), amount in totals.items() if system == PAYMENT_LAYER_SYSTEM
    }
    billed = totals.get((ADJUDICATION_SYSTEM, "submitted"))
    if billed is None:
        if not layers:
            raise NotCounted("it has no submitted total")
        billed = sum(layers.values(), ZERO)
    benefit = totals.get((ADJUDICATION_SYSTEM, "benefit"))
    if benefit is None:
        in_layers = [layers[c] for c in _LAYERS if c in layers]
        if in_layers:
            benefit = sum(in_layers, ZERO)
        else:
            benefit = _amount((eob.get("payment") or {}).get("amount")) or ZERO
    out_of_pocket = layers.get("out-of-pocket", billed - benefit)
    claim = (eob.get("claim") or {}).get("reference")
    return _line(
        source,
        patient_id,
        on,
        _provider(eob.get("provider")),
        billed=billed,
        layers=layers,
        out_of_pocket=out_of_pocket,
        answers=claim if claim and claim.startswith("Claim/") else None,
    )


def claim_cost(res_id: str, claim: dict[str, Any]) -> CostLine:
    if claim.get("status") != "active":
        raise NotCounted(f"its status is {claim.get('status')}")
    if claim.get("use", "claim") != "claim":
        raise NotCounted(f"it is a {claim.get('use')}, not a bill")
    billed = _amount(claim.get("total"))
    if billed is None:
        raise NotCounted("it has no total")
    return _line(
        f"Claim/{res_id}",
        _patient(claim.get("patient")),
        _date(claim.get("created"), "created date"),
        _provider(claim.get("provider")),
        billed=billed,
        layers={},
        out_of_pocket=billed,
        settled=False,
    )


def invoice_cost(res_id: str, invoice: dict[str, Any]) -> CostLine:
    if invoice.get("status") not in ("issued", "balanced"):
        raise NotCounted(f"its status is {invoice.get('status')}")
    layers: dict[str, Decimal] = {}
    for component in invoice.get("totalPriceComponent", []):
        amount = _amount(component.get("amount"))
        if amount is None or component.get("type") != "deduction":
            continue
        for coding in (component.get("code") or {}).get("coding", []):
            if coding.get("system") == PAYMENT_LAYER_SYSTEM:
                code = coding.get("code") or ""
                layers[code] = layers.get(code, ZERO) + abs(amount)
    gross = _amount(invoice.get("totalGross"))
    net = _amount(invoice.get("totalNet"))
    deducted = sum((layers.get(code, ZERO) for code in _LAYERS), ZERO)
    if gross is None and net is None:
        raise NotCounted("it has neither totalGross nor totalNet")
    billed = gross if gross is not None else (net or ZERO) + deducted
    out_of_pocket = net if net is not None else billed - deducted
    return _line(
        f"Invoice/{res_id}",
        _patient(invoice.get("subject")),
        _date(invoice.get("date"), "date"),
        _provider(invoice.get("issuer")),
        billed=billed,
        layers=layers,
        out_of_pocket=out_of_pocket,
    )


_READERS = {"ExplanationOfBenefit": eob_cost, "Claim": claim_cost, "Invoice": invoice_cost}


def cost_line(res_type: str, res_id: str, data: dict[str, Any]) -> CostLine:
    """The bill ``data`` describes; raises NotCounted saying why it does not count."""
    return _READERS[res_type](res_id, data)


def counted_lines(lines: Iterable[CostLine], *, unsettled_claims: str) -> list[CostLine]:
    """The lines that count: Claims answered by an ExplanationOfBenefit drop out, and
    unanswered ones stay only when the rule set counts them in full."""
    lines = list(lines)
    answered = {line.answers for line in lines if line.answers}
    return [
        line
        for line in lines
        if line.settled or (line.source not in answered and unsettled_claims == "count-in-full")
    ]
