"""What a demo visit costs and who pays: the settlement, and its ExplanationOfBenefit.

A bill is settled in one go at the counter (一站式结算), layer by layer:

1. **基本医保** (``basic-medical-insurance``, 城乡居民基本医疗保险) pays a share of the part of
   the bill inside the insurance catalogue (政策范围内), above a per-stay deductible for
   inpatient care. The shares are rough figures for rural Ningxia, not the published policy:
   village outpatient 65 %, township outpatient 60 %, city-hospital general outpatient 30 %,
   special-disease outpatient (dialysis, chemotherapy) 65 %, township inpatient 80 % above
   ¥200, city-hospital inpatient 65 % above ¥900 (registered-poor and monitored households
   +5 points). With 10–15 % of an inpatient bill outside the catalogue that is 50–70 % of
   the whole bill, as the brief for this data asks.
2. **大病保险** (``serious-illness-insurance``) pays 60 % (70 % for registered-poor and
   monitored households) of the in-catalogue amount a patient has left to pay in a calendar
   year above a deductible of ¥10,000 (¥5,000) — inpatient and special outpatient only.
3. **医疗救助** (``medical-assistance``) pays part of what is still left of the in-catalogue
   amount for registered-poor (70 %), monitored (60 %) and exited (40 %, the transition
   period) households — inpatient and special outpatient only.
4. **个人自付** (``out-of-pocket``) is the rest: submitted = the three layers + out-of-pocket.

The EOB shows it all in ``total``: the standard ``submitted`` (the bill) and ``benefit``
(the three layers together, everything paid on the patient's behalf), then one total per
layer, category coded in ``PAYMENT_LAYER_SYSTEM``, always all four, zeros included. Each
item (药品费, 检查费 ...) carries its own ``submitted`` adjudication; items sum to the bill.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from health.core.naming import PAYMENT_LAYER_SYSTEM, PAYMENT_LAYERS

ADJUDICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/adjudication"

_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Setting:
    """Where care was given, as the insurance rules see it."""

    inpatient: bool
    catalogue_share: Decimal  # part of the bill inside the insurance catalogue
    deductible: Decimal  # per visit or stay, basic insurance
    rate: Decimal  # basic insurance share above the deductible
    serious_illness: bool  # counts toward serious-illness insurance and medical assistance
    items: tuple[tuple[str, int], ...]  # (item, weight) the bill is split into


_OUTPATIENT_ITEMS = (("诊查费", 2), ("药品费", 7), ("治疗费", 1))
_HOSPITAL_OUTPATIENT_ITEMS = (("挂号诊查费", 1), ("检查费", 3), ("化验费", 2), ("药品费", 5))
_INPATIENT_ITEMS = (
    ("床位费", 1),
    ("诊查费", 1),
    ("检查费", 2),
    ("化验费", 2),
    ("治疗费", 2),
    ("药品费", 6),
    ("卫生材料费", 2),
    ("护理费", 1),
)

SETTINGS: dict[str, Setting] = {
    "village-outpatient": Setting(
        False, Decimal("0.95"), Decimal(0), Decimal("0.65"), False, _OUTPATIENT_ITEMS
    ),
    "township-outpatient": Setting(
        False, Decimal("0.95"), Decimal(0), Decimal("0.60"), False, _OUTPATIENT_ITEMS
    ),
    "hospital-outpatient": Setting(
        False, Decimal("0.90"), Decimal(0), Decimal("0.30"), False, _HOSPITAL_OUTPATIENT_ITEMS
    ),
    "special-outpatient": Setting(
        False,
        Decimal("0.90"),
        Decimal(0),
        Decimal("0.65"),
        True,
        (("治疗费", 6), ("药品费", 3), ("卫生材料费", 2)),
    ),
    "township-inpatient": Setting(
        True, Decimal("0.90"), Decimal(200), Decimal("0.80"), True, _INPATIENT_ITEMS
    ),
    "hospital-inpatient": Setting(
        True, Decimal("0.85"), Decimal(900), Decimal("0.65"), True, _INPATIENT_ITEMS
    ),
    "hospital-surgery": Setting(
        True,
        Decimal("0.85"),
        Decimal(900),
        Decimal("0.65"),
        True,
        (*_INPATIENT_ITEMS, ("手术费", 4)),
    ),
}

_PRIORITY_STATUSES = frozenset({"registered-poor", "monitored"})
_ASSISTANCE_RATES = {
    "registered-poor": Decimal("0.70"),
    "monitored": Decimal("0.60"),
    "exited": Decimal("0.40"),
}


def _cents(value: Decimal) -> Decimal:
    return value.quantize(_CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Bill:
    items: tuple[tuple[str, Decimal], ...]
    submitted: Decimal
    layers: dict[str, Decimal]  # PAYMENT_LAYERS code -> amount; sums to submitted

    @property
    def benefit(self) -> Decimal:
        return self.submitted - self.layers["out-of-pocket"]


@dataclass(slots=True)
class Settlement:
    """Settles one patient's bills in date order, keeping the yearly serious-illness tally."""

    status: str  # the household's registry status
    _left_to_pay: dict[int, Decimal] = field(default_factory=dict)

    def settle(self, rng: random.Random, setting_key: str, amount: Decimal, on: dt.date) -> Bill:
        setting = SETTINGS[setting_key]
        submitted = _cents(amount)
        items = _split(rng, submitted, setting.items)
        priority = self.status in _PRIORITY_STATUSES
        in_catalogue = _cents(submitted * setting.catalogue_share)
        deductible = setting.deductible / 2 if priority else setting.deductible
        rate = setting.rate + (Decimal("0.05") if priority else Decimal(0))
        basic = _cents(max(Decimal(0), in_catalogue - deductible) * rate)
        left_in_catalogue = in_catalogue - basic
        serious = assistance = Decimal(0)
        if setting.serious_illness:
            threshold = Decimal(5000) if priority else Decimal(10000)
            before = self._left_to_pay.get(on.year, Decimal(0))
            after = before + left_in_catalogue
            self._left_to_pay[on.year] = after
            above = max(Decimal(0), after - max(threshold, before))
            serious = _cents(above * (Decimal("0.70") if priority else Decimal("0.60")))
            assistance = _cents(
                (left_in_catalogue - serious) * _ASSISTANCE_RATES.get(self.status, Decimal(0))
            )
        layers = {
            "basic-medical-insurance": basic,
            "serious-illness-insurance": serious,
            "medical-assistance": assistance,
            "out-of-pocket": submitted - basic - serious - assistance,
        }
        return Bill(items, submitted, layers)


def _split(
    rng: random.Random, total: Decimal, weights: tuple[tuple[str, int], ...]
) -> tuple[tuple[str, Decimal], ...]:
    """Split ``total`` over the items, roughly by weight; the last item takes the rounding."""
    shares = [weight * rng.uniform(0.6, 1.4) for _, weight in weights]
    scale = sum(shares)
    items: list[tuple[str, Decimal]] = []
    allotted = Decimal(0)
    for (name, _), share in zip(weights[:-1], shares[:-1], strict=True):
        amount = _cents(total * Decimal(str(share / scale)))
        items.append((name, amount))
        allotted += amount
    items.append((weights[-1][0], total - allotted))
    return tuple(items)


def money(amount: Decimal) -> dict[str, Any]:
    # Two decimals, as a JSON number: the value the counter printed on the receipt.
    return {"value": float(amount), "currency": "CNY"}


def _adjudication_category(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": ADJUDICATION_SYSTEM, "code": code, "display": display}]}


def _layer_category(code: str) -> dict[str, Any]:
    return {
        "coding": [{"system": PAYMENT_LAYER_SYSTEM, "code": code, "display": PAYMENT_LAYERS[code]}],
        "text": PAYMENT_LAYERS[code],
    }


def eob_body(bill: Bill, *, encounter_url: str, inpatient: bool) -> dict[str, Any]:
    """The EOB parts that describe the money: type, item, total, payment."""
    claim_type = "institutional" if inpatient else "professional"
    items = [
        {
            "sequence": sequence,
            "encounter": [{"reference": encounter_url}],
            "productOrService": {"text": name},
            "net": money(amount),
            "adjudication": [
                {
                    "category": _adjudication_category("submitted", "Submitted Amount"),
                    "amount": money(amount),
                }
            ],
        }
        for sequence, (name, amount) in enumerate(bill.items, start=1)
    ]
    total = [
        {
            "category": _adjudication_category("submitted", "Submitted Amount"),
            "amount": money(bill.submitted),
        },
        {
            "category": _adjudication_category("benefit", "Benefit Amount"),
            "amount": money(bill.benefit),
        },
    ]
    total.extend(
        {"category": _layer_category(code), "amount": money(bill.layers[code])}
        for code in PAYMENT_LAYERS
    )
    return {
        "type": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": claim_type}
            ],
            "text": "住院" if inpatient else "门诊",
        },
        "item": items,
        "total": total,
    }
