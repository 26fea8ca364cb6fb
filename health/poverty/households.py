"""A household (一户一档案) as the rules see it, read from its FHIR Group.

A household is a Group (``type`` person, ``actual`` true) identified by its registry
household number (户编号, ``HOUSEHOLD_NUMBER_SYSTEM``). The poverty household registry
(建档立卡, the national register of poor households since 2014, and since 2021 the
防返贫监测 system that monitors households against a return to poverty) is the source of
what the Group says about the household:

* ``member``: each person, with the relationship to the head (``HOUSEHOLD_RELATIONSHIP_URL``)
  — a literal reference to the Patient where one is known, and always the resident identity
  number, so members without a clinical record still count;
* ``quantity``: the number of people in the household, the divisor of per-capita figures;
* ``characteristic`` (codes in ``HOUSEHOLD_CHARACTERISTIC_SYSTEM``): ``registry-status``,
  ``main-poverty-cause`` and ``other-poverty-cause``, ``income-per-capita`` (家庭年人均纯收入,
  a CNY Quantity, ``period`` the income year), ``township`` and ``village``.

``integrations.household_registry`` writes these Groups from the registry's export and the
demo seed writes them for its made-up households; this module only reads them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from health.core.naming import (
    HOUSEHOLD_CHARACTERISTIC_SYSTEM,
    HOUSEHOLD_NUMBER_SYSTEM,
    HOUSEHOLD_RELATIONSHIP_URL,
    REGISTRY_STATUS_SYSTEM,
    REGISTRY_STATUSES,
)
from health.poverty.money import yuan
from records.validation.resident_id import RESIDENT_ID_SYSTEM

#: The status a Group without one is given: not in the registry means an ordinary household.
DEFAULT_STATUS = "ordinary"


@dataclass(frozen=True, slots=True)
class Member:
    patient_id: str | None  # None: known to the registry only, by identity number
    name: str | None
    relationship: str | None  # Chinese text, e.g. 户主


@dataclass(slots=True)
class Household:
    group_id: str
    number: str | None  # 户编号
    name: str
    status: str  # code of REGISTRY_STATUSES
    status_text: str
    size: int  # people in the household
    members: list[Member] = field(default_factory=list)
    income_per_capita: Decimal | None = None
    income_year: int | None = None
    main_cause: str | None = None  # Chinese text, e.g. 因病
    other_causes: tuple[str, ...] = ()
    township: str | None = None
    village: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def patient_ids(self) -> list[str]:
        return [m.patient_id for m in self.members if m.patient_id]

    @property
    def label(self) -> str:
        """马国军户（640121105201000007）: what a township worker recognises."""
        return f"{self.name}（{self.number}）" if self.number else self.name

    @property
    def income(self) -> Decimal | None:
        """The household's annual net income: per capita times the household's size."""
        if self.income_per_capita is None:
            return None
        return self.income_per_capita * self.size


def is_household(group: dict[str, Any]) -> bool:
    """A Group the rules apply to: a person group with a registry household number."""
    return (
        group.get("resourceType") == "Group"
        and group.get("type") == "person"
        and any(i.get("system") == HOUSEHOLD_NUMBER_SYSTEM for i in group.get("identifier", []))
    )


def _code(concept: dict[str, Any] | None, system: str) -> str | None:
    for coding in (concept or {}).get("coding", []):
        if coding.get("system") == system:
            return coding.get("code")
    return None


def _text(concept: dict[str, Any] | None) -> str | None:
    if not concept:
        return None
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding", []):
        if coding.get("display"):
            return str(coding["display"])
    return None


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A member as the Group lists them, whatever the day: the first ten characters of the
    member's ``period`` start and end (None: open), compared with a day as text."""

    position: int  # in Group.member
    member: Member
    resident_id: str | None
    start: str | None = None
    end: str | None = None

    def active_on(self, day: str) -> bool:
        """Whether the member belongs on ``day`` (``YYYY-MM-DD``)."""
        return (not self.start or self.start <= day) and (not self.end or self.end >= day)


@dataclass(slots=True)
class HouseholdRecord:
    """What a household Group says, whatever the day of assessment: :meth:`on` gives the
    household on one day. The record store keeps one in ``poverty_households`` and
    ``poverty_household_members`` for every household Group (``health.poverty.derived``), so
    that a recompute reads rows, never the Group's JSON."""

    group_id: str
    number: str | None
    name: str
    status: str
    status_text: str
    quantity: int  # Group.quantity, 0 when not given
    enrolments: list[Enrolment] = field(default_factory=list)
    income_per_capita: Decimal | None = None
    income_year: int | None = None
    main_cause: str | None = None
    other_causes: tuple[str, ...] = ()
    township: str | None = None
    village: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def on(self, day: dt.date) -> Household:
        """The household on ``day``: members whose period does not cover it are out."""
        iso = day.isoformat()
        members = [e.member for e in self.enrolments if e.active_on(iso)]
        return Household(
            group_id=self.group_id,
            number=self.number,
            name=self.name,
            status=self.status,
            status_text=self.status_text,
            size=max(self.quantity, len(members), 1),
            members=members,
            income_per_capita=self.income_per_capita,
            income_year=self.income_year,
            main_cause=self.main_cause,
            other_causes=self.other_causes,
            township=self.township,
            village=self.village,
            meta=self.meta,
        )


def _enrolment(position: int, member: dict[str, Any]) -> Enrolment:
    entity = member.get("entity") or {}
    reference = entity.get("reference") or ""
    patient_id = reference.split("/", 1)[1] if reference.startswith("Patient/") else None
    relationship = None
    for extension in member.get("extension", []):
        if extension.get("url") == HOUSEHOLD_RELATIONSHIP_URL:
            relationship = _text(extension.get("valueCodeableConcept"))
    identifier = entity.get("identifier") or {}
    resident_id = (
        identifier.get("value") if identifier.get("system") == RESIDENT_ID_SYSTEM else None
    )
    period = member.get("period") or {}
    start, end = period.get("start"), period.get("end")
    return Enrolment(
        position,
        Member(patient_id, entity.get("display"), relationship),
        resident_id or None,
        start[:10] if start else None,
        end[:10] if end else None,
    )


def read_household(group_id: str, group: dict[str, Any]) -> HouseholdRecord:
    """The household a stored Group describes, on every day (members marked inactive are out)."""
    number = next(
        (
            i.get("value")
            for i in group.get("identifier", [])
            if i.get("system") == HOUSEHOLD_NUMBER_SYSTEM
        ),
        None,
    )
    record = HouseholdRecord(
        group_id=group_id,
        number=number,
        name=group.get("name") or (f"户 {number}" if number else f"Group/{group_id}"),
        status=DEFAULT_STATUS,
        status_text=REGISTRY_STATUSES[DEFAULT_STATUS],
        quantity=int(group.get("quantity") or 0),
        enrolments=[
            _enrolment(position, member)
            for position, member in enumerate(group.get("member", []))
            if not member.get("inactive")
        ],
        meta=group.get("meta") or {},
    )
    other_causes: list[str] = []
    for characteristic in group.get("characteristic", []):
        if characteristic.get("exclude"):
            continue
        code = _code(characteristic.get("code"), HOUSEHOLD_CHARACTERISTIC_SYSTEM)
        concept = characteristic.get("valueCodeableConcept")
        if code == "registry-status":
            status = _code(concept, REGISTRY_STATUS_SYSTEM)
            if status in REGISTRY_STATUSES:
                record.status = status
                record.status_text = _text(concept) or REGISTRY_STATUSES[status]
        elif code == "main-poverty-cause":
            record.main_cause = _text(concept)
        elif code == "other-poverty-cause":
            text = _text(concept)
            if text:
                other_causes.append(text)
        elif code == "income-per-capita":
            quantity = characteristic.get("valueQuantity") or {}
            if quantity.get("value") is not None and quantity.get("code", "CNY") == "CNY":
                record.income_per_capita = yuan(quantity["value"])
                start = (characteristic.get("period") or {}).get("start")
                record.income_year = int(start[:4]) if start else None
        elif code == "township":
            record.township = _text(concept)
        elif code == "village":
            record.village = _text(concept)
    record.other_causes = tuple(other_causes)
    return record


def household_from_group(group_id: str, group: dict[str, Any], on: dt.date) -> Household:
    """The household a stored Group describes, as of ``on`` (members inactive then are out)."""
    return read_household(group_id, group).on(on)
