"""Vital-sign readings sent during a call: what they may say, checked before anyone sees them.

A reading is a JSON object on the call's data channel (``consult.datachannel``), from the
village page or a device gateway (``health consult join --vitals``)::

    {"type": "reading", "id": "bp-1", "kind": "blood-pressure",
     "systolic": 148, "diastolic": 92, "unit": "mm[Hg]",
     "time": "2025-06-01T10:15:00+08:00", "device": "Omron HEM-7121"}
    {"type": "reading", "id": "hr-1", "kind": "heart-rate", "value": 88, "unit": "/min"}
    {"type": "reading", "id": "ox-1", "kind": "spo2", "value": 95, "unit": "%"}
    {"type": "reading", "id": "t-1", "kind": "temperature", "value": 37.8, "unit": "Cel"}
    {"type": "reading", "id": "g-1", "kind": "glucose", "value": 6.8, "unit": "mmol/L"}

:func:`parse_reading` checks the kind, that each value is a number in a physiologically
plausible range (not a normal range: a reading far from normal is exactly what a
specialist must see), that the unit is one the kind is measured in, and the time; it
returns a :class:`~consult.call_records.VitalSignReading` with the LOINC codes and UCUM
units the Observation carries, or raises :class:`InvalidReading` naming the field.

Units are UCUM codes; the spellings devices and people use (``mmHg``, ``bpm``, ``°C``,
``mg/dl``...) are accepted and stored as the UCUM code. Values are kept as measured, in
the unit they came in; the range check converts. Glucose takes its LOINC code from its
unit: 15074-8 (moles/volume, mmol/L, what Chinese meters show) or 2339-0 (mass/volume,
mg/dL).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consult.call_records import Measurement, VitalSignReading
from health.core.clock import utcnow

#: Readings older than this are refused (a gateway's stored readings, sent late, are fine).
MAX_AGE = dt.timedelta(hours=24)
#: A device clock this far ahead of ours is still believed.
MAX_AHEAD = dt.timedelta(minutes=5)
MAX_DEVICE_CHARS = 200
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class InvalidReading(ValueError):
    """A reading refused; ``field`` names what is wrong, ``message`` says it for a person."""

    def __init__(self, field: str, message: str, *, code: str = "invalid-reading") -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.code = code


@dataclass(frozen=True)
class _Unit:
    ucum: str
    #: To the kind's canonical unit, for the range check.
    to_canonical: Callable[[float], float]


def _same(value: float) -> float:
    return value


_MMHG = _Unit("mm[Hg]", _same)
_KPA = _Unit("kPa", lambda v: v * 7.50062)
_PER_MIN = _Unit("/min", _same)
_PERCENT = _Unit("%", _same)
_CELSIUS = _Unit("Cel", _same)
_FAHRENHEIT = _Unit("[degF]", lambda v: (v - 32) * 5 / 9)
_MMOL_L = _Unit("mmol/L", _same)
_MG_DL = _Unit("mg/dL", lambda v: v / 18.016)

#: Accepted spellings of each unit (compared case-sensitively after these, as UCUM is).
_SPELLINGS: dict[str, _Unit] = {
    "mm[Hg]": _MMHG,
    "mmHg": _MMHG,
    "mmhg": _MMHG,
    "kPa": _KPA,
    "kpa": _KPA,
    "/min": _PER_MIN,
    "bpm": _PER_MIN,
    "beats/min": _PER_MIN,
    "{beats}/min": _PER_MIN,
    "次/分": _PER_MIN,
    "%": _PERCENT,
    "Cel": _CELSIUS,
    "°C": _CELSIUS,
    "℃": _CELSIUS,
    "C": _CELSIUS,
    "degC": _CELSIUS,
    "[degF]": _FAHRENHEIT,
    "°F": _FAHRENHEIT,
    "F": _FAHRENHEIT,
    "degF": _FAHRENHEIT,
    "mmol/L": _MMOL_L,
    "mmol/l": _MMOL_L,
    "mg/dL": _MG_DL,
    "mg/dl": _MG_DL,
}


@dataclass(frozen=True)
class _Field:
    name: str
    loinc: str
    display: str
    low: float
    high: float


@dataclass(frozen=True)
class _Kind:
    loinc: str
    display: str
    category: str
    units: tuple[_Unit, ...]
    canonical: str
    fields: tuple[_Field, ...]
    #: Further codings of the observation (pulse oximetry is also 2708-6).
    also: tuple[tuple[str, str], ...] = ()


KINDS: dict[str, _Kind] = {
    "blood-pressure": _Kind(
        loinc="85354-9",
        display="Blood pressure panel with all children optional",
        category="vital-signs",
        units=(_MMHG, _KPA),
        canonical="mm[Hg]",
        fields=(
            _Field("systolic", "8480-6", "Systolic blood pressure", 50, 300),
            _Field("diastolic", "8462-4", "Diastolic blood pressure", 20, 200),
        ),
    ),
    "heart-rate": _Kind(
        loinc="8867-4",
        display="Heart rate",
        category="vital-signs",
        units=(_PER_MIN,),
        canonical="/min",
        fields=(_Field("value", "8867-4", "Heart rate", 20, 300),),
    ),
    "spo2": _Kind(
        loinc="59408-5",
        display="Oxygen saturation in Arterial blood by Pulse oximetry",
        category="vital-signs",
        units=(_PERCENT,),
        canonical="%",
        fields=(
            _Field(
                "value", "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", 50, 100
            ),
        ),
        also=(("2708-6", "Oxygen saturation in Arterial blood"),),
    ),
    "temperature": _Kind(
        loinc="8310-5",
        display="Body temperature",
        category="vital-signs",
        units=(_CELSIUS, _FAHRENHEIT),
        canonical="Cel",
        fields=(_Field("value", "8310-5", "Body temperature", 30, 45),),
    ),
    "glucose": _Kind(
        loinc="15074-8",
        display="Glucose [Moles/volume] in Blood",
        category="laboratory",
        units=(_MMOL_L, _MG_DL),
        canonical="mmol/L",
        fields=(_Field("value", "15074-8", "Glucose [Moles/volume] in Blood", 0.5, 40),),
    ),
}
_GLUCOSE_MASS = ("2339-0", "Glucose [Mass/volume] in Blood")


def _number(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    if value is None:
        raise InvalidReading(name, f'"{name}" is missing: send the measured number')
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidReading(name, f'"{name}" must be a number, not {value!r:.40}')
    return float(value)


def _format(value: float) -> str:
    return f"{value:g}"


def _time(data: dict[str, Any], now: dt.datetime) -> dt.datetime:
    text = data.get("time")
    if text is None:
        return now
    if not isinstance(text, str):
        raise InvalidReading("time", '"time" must be an ISO 8601 date and time with its zone')
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidReading(
            "time", f'"time" {text[:40]!r} is not an ISO 8601 date and time'
        ) from None
    if moment.tzinfo is None:
        raise InvalidReading("time", '"time" must say its time zone (e.g. +08:00)')
    if moment > now + MAX_AHEAD:
        raise InvalidReading("time", '"time" is in the future: check the device\'s clock')
    if moment < now - MAX_AGE:
        raise InvalidReading("time", '"time" is more than a day ago: enter old readings by hand')
    return moment


def parse_reading(data: dict[str, Any], *, now: dt.datetime | None = None) -> VitalSignReading:
    """The reading in a ``reading`` message, checked (see the module docstring)."""
    now = now or utcnow()
    reading_id = data.get("id")
    if not isinstance(reading_id, str) or not _ID.match(reading_id):
        raise InvalidReading(
            "id", '"id" must be 1 to 64 letters, digits or ._:- naming the reading'
        )
    kind_name = data.get("kind")
    kind = KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise InvalidReading(
            "kind", f'"kind" must be one of {", ".join(KINDS)}, not {kind_name!r:.40}'
        )
    unit_text = data.get("unit", kind.units[0].ucum)
    unit = _SPELLINGS.get(unit_text) if isinstance(unit_text, str) else None
    if unit is None or unit not in kind.units:
        accepted = " or ".join(u.ucum for u in kind.units)
        raise InvalidReading(
            "unit", f"{kind_name} is measured in {accepted}, not {unit_text!r:.20}"
        )
    measurements = []
    values: dict[str, float] = {}
    for field in kind.fields:
        value = _number(data, field.name)
        canonical = unit.to_canonical(value)
        if not field.low <= canonical <= field.high:
            shown = f"{_format(value)} {unit.ucum}"
            raise InvalidReading(
                field.name,
                f"{field.name} {shown} is outside the plausible range "
                f"{_format(field.low)}–{_format(field.high)} {kind.canonical}: "
                "measure again, or check the unit",
                code="implausible-reading",
            )
        values[field.name] = canonical
        loinc, display = field.loinc, field.display
        if kind_name == "glucose" and unit is _MG_DL:
            loinc, display = _GLUCOSE_MASS
        measurements.append(Measurement(loinc, display, value, unit.ucum))
    if kind_name == "blood-pressure" and values["diastolic"] >= values["systolic"]:
        raise InvalidReading(
            "diastolic",
            "diastolic must be lower than systolic: were the two swapped?",
            code="implausible-reading",
        )
    device = data.get("device")
    if device is not None and (not isinstance(device, str) or len(device) > MAX_DEVICE_CHARS):
        raise InvalidReading("device", f'"device" must be text of at most {MAX_DEVICE_CHARS}')
    loinc, display = kind.loinc, kind.display
    if kind_name == "glucose" and unit is _MG_DL:
        loinc, display = _GLUCOSE_MASS
    return VitalSignReading(
        reading_id=reading_id,
        kind=str(kind_name),
        loinc=loinc,
        display=display,
        category=kind.category,
        measurements=tuple(measurements),
        effective=_time(data, now),
        device=device,
        panel=len(kind.fields) > 1,
        also=kind.also,
    )


def reading_to_message(reading: VitalSignReading) -> dict[str, Any]:
    """The reading as the other participants receive it (values in the unit measured)."""
    message: dict[str, Any] = {
        "kind": reading.kind,
        "id": reading.reading_id,
        "time": reading.effective.isoformat(),
        "unit": reading.measurements[0].unit,
        "device": reading.device,
    }
    fields = KINDS[reading.kind].fields
    for field, measurement in zip(fields, reading.measurements, strict=True):
        message[field.name] = measurement.value
    return message


__all__ = ["KINDS", "InvalidReading", "parse_reading", "reading_to_message"]
