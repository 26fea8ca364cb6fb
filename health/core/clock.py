"""Time: one place that says what "now" is and how FHIR writes instants."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fhir_instant(moment: dt.datetime) -> str:
    """An instant as FHIR writes it: ISO 8601 with milliseconds and a ``Z`` or an offset."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    text = moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def http_date(moment: dt.datetime) -> str:
    """RFC 9110 IMF-fixdate, for ``Last-Modified``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
