"""How records read on a page: names, ages, resident IDs, money and times.

Pages are in China Standard Time (the clinics' clock, whatever the server's), amounts in yuan
with two decimals, resident IDs partly masked in lists (the chart shows them whole).
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from records.validation.resident_id import RESIDENT_ID_SYSTEM

Resource = dict[str, Any]
CHINA_TIME = dt.timezone(dt.timedelta(hours=8))


def today() -> dt.date:
    return dt.datetime.now(CHINA_TIME).date()


def name_of(resource: Resource | None) -> str:
    """A person's name as Chinese writes it: the text, else family then given, no space."""
    if not resource:
        return ""
    for name in resource.get("name") or []:
        if name.get("text"):
            return str(name["text"])
        joined = str(name.get("family") or "") + "".join(name.get("given") or [])
        if joined:
            return joined
    return ""


def resident_id_of(patient: Resource) -> str:
    for identifier in patient.get("identifier") or []:
        if identifier.get("system") == RESIDENT_ID_SYSTEM and identifier.get("value"):
            return str(identifier["value"])
    return ""


def masked_id(number: str) -> str:
    """``640121********1234``: enough to tell two people apart in a list."""
    if len(number) < 10:
        return number
    return number[:6] + "*" * (len(number) - 10) + number[-4:]


def phone_of(resource: Resource) -> str:
    for point in resource.get("telecom") or []:
        if point.get("system") == "phone" and point.get("value"):
            return str(point["value"])
    return ""


def parse_date(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


def age_on(birth: dt.date | None, on: dt.date) -> int | None:
    if birth is None:
        return None
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def parse_instant(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        date = parse_date(value)
        return dt.datetime(date.year, date.month, date.day, tzinfo=CHINA_TIME) if date else None
    return moment if moment.tzinfo else moment.replace(tzinfo=CHINA_TIME)


def local_time(value: str | None) -> str:
    """``2026-10-31 09:15`` in China Standard Time; a bare date stays a date."""
    if not value:
        return ""
    if len(value) <= 10:
        return value
    moment = parse_instant(value)
    return moment.astimezone(CHINA_TIME).strftime("%Y-%m-%d %H:%M") if moment else value


def yuan(value: Any) -> str:
    """``¥1,234.50``."""
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    except (InvalidOperation, ValueError):
        return ""
    return f"¥{amount:,.2f}"


def reference_id(reference: Resource | None, res_type: str) -> str | None:
    """The id of a literal reference ``Type/id`` (or a full URL ending so)."""
    text = str((reference or {}).get("reference") or "")
    parts = text.split("/")
    if len(parts) >= 2 and parts[-2] == res_type:
        return parts[-1]
    return None


def concept_text(concept: Resource | None) -> str:
    if not concept:
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if coding.get("display"):
            return str(coding["display"])
    for coding in concept.get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return ""


def coding_of(concept: Resource | None, system: str) -> Resource | None:
    for coding in (concept or {}).get("coding") or []:
        if coding.get("system") == system:
            return dict(coding)
    return None
