"""FHIR date, dateTime and instant values as ranges of instants.

Every FHIR date is a range at its precision: ``2024`` is the whole year, ``2024-03-05`` the
whole day, ``2024-03-05T10:15:00+08:00`` one second. Search compares such ranges, so both
the index and the query turn their values into ``(start, end)``, with ``end`` inclusive to the
microsecond. A value without a time zone is read as China Standard Time (UTC+8), where the
clinics are; everything is stored in UTC.
"""

from __future__ import annotations

import datetime as dt
import re

LOCAL_TIME_ZONE = dt.timezone(dt.timedelta(hours=8), "CST")
EARLIEST = dt.datetime(1, 1, 2, tzinfo=dt.UTC)
LATEST = dt.datetime(9999, 12, 30, tzinfo=dt.UTC)
_ONE = dt.timedelta(microseconds=1)

_PATTERN = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def _zone(text: str | None) -> dt.tzinfo:
    if text is None:
        return LOCAL_TIME_ZONE
    if text == "Z":
        return dt.UTC
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))


def date_range(text: str) -> tuple[dt.datetime, dt.datetime]:
    """The instants a FHIR date/dateTime/instant covers, in UTC; ValueError if it is not one."""
    match = _PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"'{text}' is not a FHIR date or dateTime (such as 2024-03-05)")
    parts = match.groupdict()
    year = int(parts["year"])
    zone = _zone(parts["zone"])
    try:
        if parts["month"] is None:
            start = dt.datetime(year, 1, 1, tzinfo=zone)
            end = dt.datetime(year + 1, 1, 1, tzinfo=zone) if year < 9999 else LATEST
        elif parts["day"] is None:
            month = int(parts["month"])
            start = dt.datetime(year, month, 1, tzinfo=zone)
            end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
        elif parts["hour"] is None:
            start = dt.datetime(year, int(parts["month"]), int(parts["day"]), tzinfo=zone)
            end = start + dt.timedelta(days=1)
        else:
            second = int(parts["second"] or 0)
            start = dt.datetime(
                year,
                int(parts["month"]),
                int(parts["day"]),
                int(parts["hour"]),
                int(parts["minute"]),
                second,
                tzinfo=zone,
            )
            if parts["fraction"]:
                start = start.replace(microsecond=int((parts["fraction"][1:] + "000000")[:6]))
                end = start + _ONE
            elif parts["second"] is not None:
                end = start + dt.timedelta(seconds=1)
            else:
                end = start + dt.timedelta(minutes=1)
        return start.astimezone(dt.UTC), (end - _ONE).astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"'{text}' is not a date this server can compare") from None
