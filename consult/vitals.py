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

The table behind the check is the record's one (``records.vitals``), which the visit form
reads too: the same LOINC codes, the same stored units, the same limits. Units are UCUM
codes; the spellings devices and people use (``mmHg``, ``bpm``, ``°C``, ``mg/dl``...) are
accepted. A value is converted on the way in to the unit its code is stored in (°F to Cel,
kPa to mm[Hg], glucose in mg/dL to mmol/L, LOINC 15074-8), so that charts and searches
compare like with like; what was measured stays in the Observation's note. A value outside
the table's possible range is refused; an unusual one (a temperature of 41.5 Cel) is kept
and shown — the specialist must see it — marked with the fields that are (``unusual``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

from consult.call_records import Measurement, VitalSignReading
from health.core.clock import utcnow
from records.vitals import BLOOD_PRESSURE_PANEL, VITALS, Unit, Vital, read_vital

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
class Kind:
    """What a reading of one ``kind`` carries: its message fields, each a vital of the table."""

    loinc: str
    display: str
    fields: tuple[tuple[str, Vital], ...]

    @property
    def category(self) -> str:
        return self.fields[0][1].category

    @property
    def units(self) -> tuple[Unit, ...]:
        return self.fields[0][1].units

    @property
    def also(self) -> tuple[tuple[str, str], ...]:
        return self.fields[0][1].also


def _single(key: str) -> Kind:
    vital = VITALS[key]
    return Kind(vital.loinc, vital.display, (("value", vital),))


KINDS: dict[str, Kind] = {
    "blood-pressure": Kind(
        BLOOD_PRESSURE_PANEL[0],
        BLOOD_PRESSURE_PANEL[1],
        (("systolic", VITALS["systolic"]), ("diastolic", VITALS["diastolic"])),
    ),
    "heart-rate": _single("heart_rate"),
    "spo2": _single("spo2"),
    "temperature": _single("temperature"),
    "glucose": _single("glucose"),
    "weight": _single("weight"),
    "height": _single("height"),
}


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
    unit = kind_unit(kind, unit_text)
    if unit is None:
        accepted = " or ".join(u.ucum for u in kind.units)
        raise InvalidReading(
            "unit", f"{kind_name} is measured in {accepted}, not {unit_text!r:.20}"
        )
    measurements = []
    unusual = []
    for name, vital in kind.fields:
        value = _number(data, name)
        judged = read_vital(vital, str(value), unit.key, strict=True)
        shown = f"{_format(value)} {unit.ucum}"
        if judged.problem == "impossible":
            low, high = vital.possible
            raise InvalidReading(
                name,
                f"{name} {shown} is outside the plausible range "
                f"{_format(float(low))}–{_format(float(high))} {vital.ucum}: "
                "measure again, or check the unit",
                code="implausible-reading",
            )
        if judged.problem == "implausible":
            unusual.append(name)
        measurements.append(
            Measurement(
                vital.loinc,
                vital.display,
                judged.stored,
                vital.ucum,
                measured=shown if unit.ucum != vital.ucum else None,
            )
        )
    if kind_name == "blood-pressure" and measurements[1].value >= measurements[0].value:
        raise InvalidReading(
            "diastolic",
            "diastolic must be lower than systolic: were the two swapped?",
            code="implausible-reading",
        )
    device = data.get("device")
    if device is not None and (not isinstance(device, str) or len(device) > MAX_DEVICE_CHARS):
        raise InvalidReading("device", f'"device" must be text of at most {MAX_DEVICE_CHARS}')
    return VitalSignReading(
        reading_id=reading_id,
        kind=str(kind_name),
        loinc=kind.loinc,
        display=kind.display,
        category=kind.category,
        measurements=tuple(measurements),
        effective=_time(data, now),
        device=device,
        panel=len(kind.fields) > 1,
        also=kind.also,
        unusual=tuple(unusual),
    )


def kind_unit(kind: Kind, name: object) -> Unit | None:
    """The unit ``name`` (a UCUM code or a usual spelling) if the kind is measured in it."""
    if not isinstance(name, str):
        return None
    return kind.fields[0][1].unit(name)


def reading_to_message(reading: VitalSignReading) -> dict[str, Any]:
    """The reading as the other participants receive it (values in the stored unit)."""
    message: dict[str, Any] = {
        "kind": reading.kind,
        "id": reading.reading_id,
        "time": reading.effective.isoformat(),
        "unit": reading.measurements[0].unit,
        "device": reading.device,
    }
    fields = KINDS[reading.kind].fields
    for (name, _vital), measurement in zip(fields, reading.measurements, strict=True):
        message[name] = measurement.value
    if reading.unusual:
        message["unusual"] = list(reading.unusual)
    return message


__all__ = ["KINDS", "InvalidReading", "Kind", "kind_unit", "parse_reading", "reading_to_message"]
