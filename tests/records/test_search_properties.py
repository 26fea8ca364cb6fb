"""Property tests of search: date ranges, quantities with implicit precision, the query parser.

The date and quantity properties store one Observation per example on the running app (each
with its own identifier, so that no example sees another's) and compare what a search finds
with a small model of the FHIR search rules written here, independently of the server's code:
a FHIR date is the range of instants at its precision, a value without a time zone is read as
UTC+8 (the clinics' local time); a number in a query has the implicit precision it is written
in for ``eq`` and ``ne``, and compares exactly for the other prefixes.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import unicodedata
import uuid
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from records.datetimes import date_range
from records.indexing import SearchIndexer
from records.outcome import FhirError
from records.search.parse import SearchParser

MARKER_SYSTEM = "urn:test:search-properties"
UCUM = "http://unitsofmeasure.org"

HTTP_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- the model of a FHIR date -----------------------------------------------------------------

LOCAL = dt.timezone(dt.timedelta(hours=8))
_DATE = re.compile(
    r"(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})"
    r"(?P<z>Z|[+-]\d{2}:\d{2})?)?)?)?",
    re.ASCII,
)


def model_range(text: str) -> tuple[dt.datetime, dt.datetime]:
    """``[first instant, first instant after)`` of a date, year-month, day or dateTime."""
    match = _DATE.fullmatch(text)
    assert match is not None, text
    zone_text = match["z"]
    if zone_text is None:
        zone: dt.tzinfo = LOCAL
    elif zone_text == "Z":
        zone = dt.UTC
    else:
        offset = dt.timedelta(hours=int(zone_text[1:3]), minutes=int(zone_text[4:6]))
        zone = dt.timezone(offset if zone_text[0] == "+" else -offset)
    year = int(match["y"])
    if match["m"] is None:
        return dt.datetime(year, 1, 1, tzinfo=zone), dt.datetime(year + 1, 1, 1, tzinfo=zone)
    month = int(match["m"])
    if match["d"] is None:
        after = (year + 1, 1) if month == 12 else (year, month + 1)
        return (
            dt.datetime(year, month, 1, tzinfo=zone),
            dt.datetime(*after, 1, tzinfo=zone),
        )
    day = dt.datetime(year, month, int(match["d"]), tzinfo=zone)
    if match["H"] is None:
        return day, day + dt.timedelta(days=1)
    start = day.replace(hour=int(match["H"]), minute=int(match["M"]), second=int(match["S"]))
    return start, start + dt.timedelta(seconds=1)


def model_date_match(prefix: str, stored: str, query: str) -> bool:
    """The FHIR prefix rules, on half-open ranges (so 'end' is the first instant after)."""
    ts, te = model_range(stored)
    qs, qe = model_range(query)
    within = qs <= ts and te <= qe
    return {
        "eq": within,
        "ne": not within,
        "gt": te > qe,  # the stored range ends after the query range
        "lt": ts < qs,  # it starts before the query range
        "ge": te > qs,  # its last instant is at or after the query's first
        "le": ts < qe,  # its first instant is at or before the query's last
        "sa": ts >= qe,  # it starts after the query range is over
        "eb": te <= qs,  # it is over before the query range starts
    }[prefix]


ZONES = ("Z", "+00:00", "+08:00", "-05:00", "+05:30", "+14:00", "-12:00")
#: Moments where ranges meet: midnight in UTC, in UTC+8, and at the ends of months and years.
EDGES = tuple(
    dt.datetime.fromisoformat(text)
    for text in (
        "2020-12-31T23:59:59",
        "2021-01-01T00:00:00",
        "2020-12-31T16:00:00",
        "2020-12-31T15:59:59",
        "2021-01-01T07:59:59",
        "2021-01-01T08:00:00",
        "2021-01-31T23:59:59",
        "2021-02-01T00:00:00",
        "2020-12-01T00:00:00",
        "2020-11-30T16:00:00",
    )
)


@st.composite
def fhir_dates(draw: st.DrawFn, *, zone_optional: bool) -> str:
    """A date at a random precision near the turn of 2020 into 2021."""
    moment = draw(
        st.one_of(
            st.sampled_from(EDGES),
            st.datetimes(dt.datetime(2020, 11, 20), dt.datetime(2021, 2, 10)),
        )
    )
    precision = draw(st.sampled_from(("year", "month", "day", "second")))
    if precision == "year":
        return moment.strftime("%Y")
    if precision == "month":
        return moment.strftime("%Y-%m")
    if precision == "day":
        return moment.strftime("%Y-%m-%d")
    zone = draw(st.sampled_from((*ZONES, None) if zone_optional else ZONES))
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (zone or "")


DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


def test_the_model_knows_the_local_time_rule() -> None:
    # 2021 in UTC+8 starts at 16:00 UTC on the last day of 2020.
    assert model_range("2021")[0] == dt.datetime(2020, 12, 31, 16, tzinfo=dt.UTC)
    assert model_range("2020-02")[1] - model_range("2020-02")[0] == dt.timedelta(days=29)
    assert model_date_match("eq", "2020-12-31T20:00:00Z", "2021")
    assert not model_date_match("eq", "2020-12-31T20:00:00Z", "2020-12-31T20:00:00")


@given(text=fhir_dates(zone_optional=True))
def test_date_range_agrees_with_the_model(text: str) -> None:
    start, end = model_range(text)
    assert date_range(text) == (start, end - dt.timedelta(microseconds=1))


def _post_observation(fhir: httpx.Client, marker: str, **values: object) -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "search property"},
        "identifier": [{"system": MARKER_SYSTEM, "value": marker}],
        **values,
    }
    response = fhir.post("/Observation", content=json.dumps(observation))
    assert response.status_code == 201, response.text


def _found(fhir: httpx.Client, marker: str, **params: str) -> bool:
    response = fhir.get(
        "/Observation", params={**params, "identifier": f"{MARKER_SYSTEM}|{marker}"}
    )
    assert response.status_code == 200, response.text
    ids = [e["resource"]["id"] for e in response.json().get("entry", [])]
    assert len(ids) <= 1
    return bool(ids)


@HTTP_SETTINGS
@given(
    stored=fhir_dates(zone_optional=False),
    query=fhir_dates(zone_optional=True),
    prefix=st.sampled_from(DATE_PREFIXES),
)
def test_date_search_follows_the_range_rules(
    fhir: httpx.Client, stored: str, query: str, prefix: str
) -> None:
    marker = uuid.uuid4().hex
    _post_observation(fhir, marker, effectiveDateTime=stored)
    found = _found(fhir, marker, date=prefix + query)
    event(f"found={found}")
    assert found == model_date_match(prefix, stored, query), (
        f"effectiveDateTime {stored}, date={prefix}{query}"
    )


# -- quantities ---------------------------------------------------------------------------


def model_quantity_match(prefix: str, value: Decimal, query: Decimal) -> bool:
    # eq 100 means [99.5, 100.5): half a unit of the last digit written, either side.
    exponent = query.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5) * Decimal(10) ** (exponent - 1)
    within = query - half <= value < query + half
    return {
        "eq": within,
        "ne": not within,
        "gt": value > query,
        "lt": value < query,
        "ge": value >= query,
        "le": value <= query,
    }[prefix]


def _places(number: Decimal, places: int, rounding: str) -> Decimal:
    result = number.quantize(Decimal(1).scaleb(-places), rounding=rounding)
    return abs(result) if result == 0 else result  # no "-0"


@st.composite
def decimals(draw: st.DrawFn) -> Decimal:
    """A number with 0 to 3 decimals, as a clinic would write it."""
    number = draw(st.decimals(min_value=-1000, max_value=1000, places=3))
    return _places(number, draw(st.integers(0, 3)), ROUND_HALF_UP)


@st.composite
def quantity_examples(draw: st.DrawFn) -> tuple[Decimal, Decimal]:
    """A stored value and a query number, often near each other or the stored one rounded."""
    value = draw(decimals())
    how = draw(st.sampled_from(("rounded", "truncated", "nearby", "any")))
    places = draw(st.integers(0, 3))
    if how == "rounded":
        query = _places(value, places, ROUND_HALF_UP)
    elif how == "truncated":
        query = _places(value, places, ROUND_DOWN)
    elif how == "nearby":
        step = Decimal(draw(st.sampled_from(("0.5", "0.05", "0.005", "1", "0.001"))))
        query = _places(value + step * draw(st.integers(-2, 2)), places, ROUND_HALF_UP)
    else:
        query = draw(decimals())
    return value, query


@HTTP_SETTINGS
@given(
    numbers=quantity_examples(),
    prefix=st.sampled_from(("eq", "ne", "gt", "lt", "ge", "le")),
)
@example(numbers=(Decimal("99.5"), Decimal("100")), prefix="eq")
@example(numbers=(Decimal("100.5"), Decimal("100")), prefix="eq")
@example(numbers=(Decimal("100.05"), Decimal("100.0")), prefix="ne")
def test_quantity_search_uses_implicit_precision(
    fhir: httpx.Client, numbers: tuple[Decimal, Decimal], prefix: str
) -> None:
    value, query = numbers
    marker = uuid.uuid4().hex
    # The JSON number is written as the decimal text: no float in between.
    quantity = f'{{"value": {value}, "unit": "mg", "system": "{UCUM}", "code": "mg"}}'
    observation = json.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "search property"},
            "identifier": [{"system": MARKER_SYSTEM, "value": marker}],
            "valueQuantity": "QUANTITY",
        }
    ).replace('"QUANTITY"', quantity)
    response = fhir.post("/Observation", content=observation)
    assert response.status_code == 201, response.text
    found = _found(fhir, marker, **{"value-quantity": f"{prefix}{query}|{UCUM}|mg"})
    event(f"found={found}")
    assert found == model_quantity_match(prefix, value, query), (
        f"valueQuantity {value} mg, value-quantity={prefix}{query}"
    )


def test_model_quantity_precision() -> None:
    assert model_quantity_match("eq", Decimal("99.5"), Decimal("100"))
    assert not model_quantity_match("eq", Decimal("100.5"), Decimal("100"))
    assert model_quantity_match("eq", Decimal("100.04"), Decimal("100.0"))
    assert not model_quantity_match("eq", Decimal("100.05"), Decimal("100.0"))


# -- Chinese names --------------------------------------------------------------------------

#: Characters of a few names, with one of CJK Extension B (outside the BMP) and a CJK
#: compatibility ideograph (豈, which NFKD folds into its unified form 豈).
HAN = "马王小明建国兰𠀾\uf900豈"


def model_normalized(text: str) -> str:
    """Compatibility forms folded (NFKD), accents dropped, case folded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def model_name_match(name: dict[str, object], query: str) -> bool:
    """A Han query matches a name whose text, family or given contains it (normalised)."""
    parts = [name["text"], name["family"], *name["given"]]  # type: ignore[misc]
    return any(model_normalized(query) in model_normalized(str(part)) for part in parts)


@HTTP_SETTINGS
@given(
    family=st.text(HAN, min_size=1, max_size=2),
    given=st.text(HAN, min_size=1, max_size=3),
    query=st.text(HAN, min_size=1, max_size=4),
)
@example(family="马", given="小明", query="小明")
@example(family="王", given="马马", query="马马")
@example(family="豈", given="明", query="\uf900明")
def test_chinese_name_search_finds_every_substring(
    fhir: httpx.Client, family: str, given: str, query: str
) -> None:
    """Whatever narrows the search on PostgreSQL (trigrams, Han grams) loses no match."""
    marker = uuid.uuid4().hex
    name = {"text": family + given, "family": family, "given": [given]}
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": MARKER_SYSTEM, "value": marker}],
        "name": [name],
    }
    assert fhir.post("/Patient", content=json.dumps(patient)).status_code == 201
    response = fhir.get(
        "/Patient", params={"name": query, "identifier": f"{MARKER_SYSTEM}|{marker}"}
    )
    assert response.status_code == 200, response.text
    found = bool(response.json().get("entry"))
    event(f"found={found}")
    assert found == model_name_match(name, query), f"{name} name={query}"


# -- the query parser ---------------------------------------------------------------------


@functools.cache
def parser() -> SearchParser:
    return SearchParser(SearchIndexer(), max_count=1000, default_count=50)


KNOWN_NAMES = (
    "family",
    "given",
    "name",
    "birthdate",
    "gender",
    "identifier",
    "general-practitioner",
    "code",
    "date",
    "value-quantity",
    "subject",
    "patient",
    "_id",
    "_lastUpdated",
    "_count",
    "_offset",
    "_cursor",
    "_sort",
    "_include",
    "_revinclude",
    "_revinclude:iterate",
    "_summary",
    "_elements",
    "_total",
    "_type",
    "_has:Observation:patient:code",
    "_has:Observation:subject:value-quantity",
    "subject:Patient.name",
    "subject.gender",
    "patient:Patient",
    "code-value-quantity",
    "code-value-date",
    "combo-code-value-concept",
)
MODIFIERS = (
    "",
    ":missing",
    ":exact",
    ":contains",
    ":not",
    ":text",
    ":below",
    ":above",
    ":in",
    ":not-in",
    ":identifier",
    ":Patient",
)

names = st.one_of(
    st.text(max_size=20),
    st.builds(lambda n, m: n + m, st.sampled_from(KNOWN_NAMES), st.sampled_from(MODIFIERS)),
    st.builds(lambda n, t: n + t, st.sampled_from(KNOWN_NAMES), st.text(max_size=10)),
)
values = st.one_of(
    st.text(max_size=30),
    st.builds(lambda p, t: p + t, st.sampled_from((*DATE_PREFIXES, "ap")), st.text(max_size=12)),
    st.sampled_from(("true", "false", "", ",", "\\", "|", "a|b|c", "-1", "1e3", "Patient/x")),
)


def _parse_or_refuse(res_type: str | None, pairs: list[tuple[str, str]]) -> None:
    try:
        parser().parse(res_type, pairs, strict=False)
    except FhirError as error:
        assert error.status == 400, error


@settings(max_examples=400, deadline=None)
@given(
    res_type=st.sampled_from(("Patient", "Observation", "Encounter", None)),
    pairs=st.lists(st.tuples(names, values), max_size=5),
)
def test_the_parser_refuses_nonsense_with_400_only(
    res_type: str | None, pairs: list[tuple[str, str]]
) -> None:
    _parse_or_refuse(res_type, pairs)


date_like = st.from_regex(
    r"\A(eq|ne|gt|lt|ge|le|sa|eb|ap)?[0-9]{4}(-[0-9]{2}(-[0-9]{2}"
    r"(T[0-9]{2}:[0-9]{2}(:[0-9]{2})?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?\Z"
)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(("birthdate", "_lastUpdated", "death-date")), value=date_like)
@example(name="birthdate", value="0001")
def test_the_parser_refuses_bad_dates_with_400_only(name: str, value: str) -> None:
    _parse_or_refuse("Patient", [(name, value)])


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,")


@given(parts=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4))
@example(parts=["a,b"])
@example(parts=["a\\", ",", "b"])
def test_escaped_commas_round_trip(parts: list[str]) -> None:
    raw = ",".join(_escape(p) for p in parts)
    for query in ([("family", raw)], urlencode([("family", raw)])):
        (clause,) = parser().parse("Patient", query, strict=True).clauses
        assert [v.text for v in clause.values] == parts


# -- values out of range over HTTP ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("value-quantity", "abc", id="not-a-number"),
        pytest.param("date", "2024-02-30", id="not-a-real-date"),
        pytest.param("value-quantity", "1e999999999", id="huge-exponent"),
        pytest.param("value-quantity", "1e-999999999", id="tiny-exponent"),
    ],
)
def test_an_impossible_value_is_a_client_error(fhir: httpx.Client, name: str, value: str) -> None:
    response = fhir.get("/Observation", params={name: value})
    assert response.status_code == 400, response.text
