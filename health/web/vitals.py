"""The vital signs a visit records: LOINC codes, UCUM units, the units a clinic types them in,
and the ranges that make a value implausible (a warning) or impossible (refused).

Values are stored in one unit per code (mm[Hg], /min, Cel, kg, cm, %, mmol/L) so that charts
and ``code-value-quantity`` searches compare like with like; a value typed in another unit
(°F, 斤 — half a kilogram, the unit markets and many patients weigh in — or glucose in mg/dL)
is converted when the form is read. Blood glucose is LOINC 15074-8 (moles/volume, mmol/L),
as the demo data records it and Chinese clinics report it.
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
    to_stored: tuple[Decimal, Decimal]  # stored = typed * factor + offset


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


def _unit(key: str, label: str, factor: str = "1", offset: str = "0") -> Unit:
    return Unit(key, label, (Decimal(factor), Decimal(offset)))


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
            (_unit("mmHg", "mmHg"),),
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
            (_unit("mmHg", "mmHg"),),
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
            (_unit("per-min", "/min"),),
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
            (_unit("Cel", "℃"), _unit("degF", "℉", str(Decimal(5) / Decimal(9)), "-17.7777778")),
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
            (_unit("kg", "kg"), _unit("jin", "斤", "0.5")),
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
            (_unit("cm", "cm"), _unit("m", "m", "100")),
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
            (_unit("percent", "%"),),
            (Decimal(85), Decimal(100)),
            (Decimal(40), Decimal(100)),
            0,
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
                _unit("mmol/L", "mmol/L"),
                _unit("mg/dL", "mg/dL", str(1 / GLUCOSE_MG_PER_MMOL)),
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


def read_vital(vital: Vital, typed: str, unit_key: str) -> Reading:
    """A typed value in the chosen unit, converted to the stored unit and judged."""
    reading = Reading(vital, typed.strip(), unit_key)
    if not reading.typed:
        return reading
    unit = next((u for u in vital.units if u.key == unit_key), vital.units[0])
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
