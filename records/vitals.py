"""The vital signs the record keeps: one table for every way in.

A visit form (``health.web.visits``) and a call's data channel (``consult.vitals``) both
read readings through this table: its LOINC codes, the UCUM unit each code is stored in,
the units a clinic or a device gives them in, and the ranges that make a value unusual
(the form warns) or impossible (refused everywhere).

Values are stored in one unit per code (mm[Hg], /min, Cel, kg, cm, %, mmol/L) so that charts
and ``code-value-quantity`` searches compare like with like; a value given in another unit
(°F, kPa, 斤 — half a kilogram, the unit markets and many patients weigh in — or glucose in
mg/dL) is converted on the way in. Blood glucose is LOINC 15074-8 (moles/volume, mmol/L),
as the demo data records it and Chinese clinics report it; :data:`GLUCOSE_MASS` (2339-0,
mg/dL) is only read, from records that came from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
BLOOD_PRESSURE_PANEL = ("85354-9", "Blood pressure panel with all children optional", "血压")
#: Glucose in mg/dL, as a meter or a lab abroad may report it (read in, stored as mmol/L).
GLUCOSE_MASS = "2339-0"
GLUCOSE_MG_PER_MMOL = Decimal("18.016")


@dataclass(frozen=True)
class Unit:
    key: str  # the form's value for the unit
    label: str  # as shown on the page (units are not translated)
    ucum: str  # the UCUM code, as a device sends it (斤 has none: its label)
    to_stored: tuple[Decimal, Decimal]  # stored = typed * factor + offset
    #: Other spellings devices and people use (``mmHg``, ``bpm``, ``°C``...).
    spellings: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return (self.key, self.label, self.ucum, *self.spellings)


@dataclass(frozen=True)
class Vital:
    key: str  # the form field
    loinc: str
    display: str  # LOINC display
    text: str  # Chinese, as the demo writes Observation.code.text
    ucum: str  # stored unit
    unit_text: str
    category: str  # observation-category
    units: tuple[Unit, ...]
    plausible: tuple[Decimal, Decimal]  # in the stored unit: outside it, warn
    possible: tuple[Decimal, Decimal]  # outside it, refuse
    decimals: int
    #: Further (LOINC code, display) codings of the observation (pulse oximetry is 2708-6).
    also: tuple[tuple[str, str], ...] = ()

    def unit(self, name: str) -> Unit | None:
        """The unit called ``name`` (form key, label, UCUM code or a usual spelling)."""
        return next((u for u in self.units if name in u.names()), None)


def _unit(
    key: str, label: str, ucum: str, factor: str = "1", offset: str = "0", *spellings: str
) -> Unit:
    return Unit(key, label, ucum, (Decimal(factor), Decimal(offset)), spellings)


_MMHG = _unit("mmHg", "mmHg", "mm[Hg]", "1", "0", "mmhg")
_KPA = _unit("kPa", "kPa", "kPa", "7.50062", "0", "kpa")
_PER_MIN = _unit("per-min", "/min", "/min", "1", "0", "bpm", "beats/min", "{beats}/min", "次/分")

VITALS: dict[str, Vital] = {
    v.key: v
    for v in (
        Vital(
            "systolic",
            "8480-6",
            "Systolic blood pressure",
            "收缩压",
            "mm[Hg]",
            "mmHg",
            "vital-signs",
            (_MMHG, _KPA),
            (Decimal(70), Decimal(230)),
            (Decimal(30), Decimal(320)),
            0,
        ),
        Vital(
            "diastolic",
            "8462-4",
            "Diastolic blood pressure",
            "舒张压",
            "mm[Hg]",
            "mmHg",
            "vital-signs",
            (_MMHG, _KPA),
            (Decimal(40), Decimal(140)),
            (Decimal(10), Decimal(220)),
            0,
        ),
        Vital(
            "heart_rate",
            "8867-4",
            "Heart rate",
            "心率",
            "/min",
            "次/分",
            "vital-signs",
            (_PER_MIN,),
            (Decimal(40), Decimal(160)),
            (Decimal(15), Decimal(300)),
            0,
        ),
        Vital(
            "temperature",
            "8310-5",
            "Body temperature",
            "体温",
            "Cel",
            "℃",
            "vital-signs",
            (
                _unit("Cel", "℃", "Cel", "1", "0", "°C", "C", "degC"),
                _unit(
                    "degF",
                    "℉",
                    "[degF]",
                    str(Decimal(5) / Decimal(9)),
                    "-17.7777778",
                    "°F",
                    "F",
                ),
            ),
            (Decimal("35.0"), Decimal("41.0")),
            (Decimal("25.0"), Decimal("45.0")),
            1,
        ),
        Vital(
            "weight",
            "29463-7",
            "Body weight",
            "体重",
            "kg",
            "kg",
            "vital-signs",
            (_unit("kg", "kg", "kg"), _unit("jin", "斤", "斤", "0.5")),
            (Decimal(2), Decimal(200)),
            (Decimal("0.3"), Decimal(400)),
            1,
        ),
        Vital(
            "height",
            "8302-2",
            "Body height",
            "身高",
            "cm",
            "cm",
            "vital-signs",
            (_unit("cm", "cm", "cm"), _unit("m", "m", "m", "100")),
            (Decimal(40), Decimal(210)),
            (Decimal(20), Decimal(260)),
            1,
        ),
        Vital(
            "spo2",
            "59408-5",
            "Oxygen saturation in Arterial blood by Pulse oximetry",
            "血氧饱和度",
            "%",
            "%",
            "vital-signs",
            (_unit("percent", "%", "%"),),
            (Decimal(85), Decimal(100)),
            (Decimal(40), Decimal(100)),
            0,
            also=(("2708-6", "Oxygen saturation in Arterial blood"),),
        ),
        Vital(
            "glucose",
            "15074-8",
            "Glucose [Moles/volume] in Blood",
            "血糖",
            "mmol/L",
            "mmol/L",
            "laboratory",
            (
                _unit("mmol/L", "mmol/L", "mmol/L", "1", "0", "mmol/l"),
                _unit("mg/dL", "mg/dL", "mg/dL", str(1 / GLUCOSE_MG_PER_MMOL), "0", "mg/dl"),
            ),
            (Decimal("2.8"), Decimal("25.0")),
            (Decimal("0.5"), Decimal("60.0")),
            1,
        ),
    )
}


@dataclass
class Reading:
    vital: Vital
    typed: str
    unit: str
    value: Decimal | None = None  # in the stored unit
    #: ``impossible``, ``implausible``, ``number`` (not a number), ``unit`` or "".
    problem: str = ""

    @property
    def stored(self) -> int | float:
        """The value as the Observation's ``valueQuantity.value`` carries it."""
        assert self.value is not None
        return int(self.value) if self.vital.decimals == 0 else float(self.value)


def read_vital(vital: Vital, typed: str, unit_name: str, *, strict: bool = False) -> Reading:
    """A value in the named unit, converted to the stored unit and judged.

    An unknown unit is the vital's first (a form's default), unless ``strict``: then it
    is the problem ``unit`` (a device that sends kilograms for a temperature).
    """
    reading = Reading(vital, typed.strip(), unit_name)
    if not reading.typed:
        return reading
    unit = vital.unit(unit_name)
    if unit is None:
        if strict:
            reading.problem = "unit"
            return reading
        unit = vital.units[0]
    reading.unit = unit.key
    try:
        number = Decimal(reading.typed.replace("，", ".").replace(",", "."))
    except InvalidOperation:
        reading.problem = "number"
        return reading
    if not number.is_finite():
        reading.problem = "number"
        return reading
    factor, offset = unit.to_stored
    value = (number * factor + offset).quantize(Decimal(1).scaleb(-vital.decimals))
    reading.value = value
    low, high = vital.possible
    if not low <= value <= high:
        reading.problem = "impossible"
    elif not vital.plausible[0] <= value <= vital.plausible[1]:
        reading.problem = "implausible"
    return reading
