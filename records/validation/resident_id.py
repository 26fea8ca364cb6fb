"""Chinese resident identity numbers (居民身份证号码, GB 11643-1999).

An 18-character number: a 6-digit administrative region code, the birth date as
YYYYMMDD, a 3-digit sequence code whose last digit is odd for men and even for
women, and a check character computed with ISO 7064 MOD 11-2 (0-9 or X).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

#: The identifier system China's health-record sharing standards (WS/T 500) use
#: for the resident identity number.
RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARACTERS = "10X98765432"
_SHAPE = re.compile(r"^[1-9]\d{5}(\d{8})\d{3}[0-9X]$")
# First two digits of the region code: the provinces, autonomous regions and
# municipalities (GB/T 2260), plus 71/81/82 (Taiwan, Hong Kong, Macao).
_PROVINCE_CODES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 "
    "61 62 63 64 65 71 81 82".split()
)


class ResidentIdError(ValueError):
    """The number is not a valid GB 11643 resident identity number; the message says why."""


@dataclass(frozen=True, slots=True)
class ResidentId:
    """A checked resident identity number and what it encodes."""

    number: str
    region_code: str
    birth_date: dt.date
    sex: str  # "male" or "female", as FHIR's administrative gender


def check_character(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character for the first 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise ResidentIdError("the first 17 characters must be digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARACTERS[total % 11]


def parse_resident_id(value: str, *, today: dt.date | None = None) -> ResidentId:
    """Check ``value`` and return what it encodes; raise ResidentIdError naming the fault.

    A lower-case ``x`` is accepted as the check character and normalised to ``X``.
    """
    number = value.strip().upper()
    if len(number) != 18:
        raise ResidentIdError(f"must be 18 characters, got {len(number)}")
    match = _SHAPE.match(number)
    if match is None:
        raise ResidentIdError("must be 17 digits followed by a digit or X")
    if number[:2] not in _PROVINCE_CODES:
        raise ResidentIdError("its region code (first 6 digits) names no province")
    try:
        birth_date = dt.datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        raise ResidentIdError("its birth date (digits 7–14) is not a date") from None
    today = today or dt.date.today()
    if birth_date.year < 1880 or birth_date > today:
        raise ResidentIdError("its birth date (digits 7–14) is out of range")
    expected = check_character(number[:17])
    if number[17] != expected:
        raise ResidentIdError("its check character (the last) does not match the other 17")
    sex = "male" if int(number[16]) % 2 == 1 else "female"
    return ResidentId(number=number, region_code=number[:6], birth_date=birth_date, sex=sex)


def make_resident_id(region_code: str, birth_date: dt.date, sequence: int, sex: str) -> str:
    """Build a valid number: the sequence's last digit is forced odd for male, even otherwise."""
    if not (len(region_code) == 6 and region_code.isdigit()):
        raise ResidentIdError("region code must be 6 digits")
    sequence = sequence % 1000
    odd = sequence % 2 == 1
    if (sex == "male") != odd:
        sequence = (sequence + 1) % 1000
    first17 = f"{region_code}{birth_date:%Y%m%d}{sequence:03d}"
    return first17 + check_character(first17)
