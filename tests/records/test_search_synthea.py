"""Searches a clinic makes, over 25 real Synthea bundles, checked against a plain-Python reading.

The module loads the first 25 Synthea bundles (sorted by name) with ``import_files`` into a
fresh database on each backend, starts the app, and reads every stored resource back from the
database, so that the test knows the ids the server assigned and the references it rewrote.
Each case then runs one search over HTTP (following every ``next`` link) and compares the ids
found with those that a small reference evaluator finds in the stored JSON: plain predicates
that follow the FHIR search page for that parameter type (dates as ranges at their precision,
a value without a zone read as UTC+8; strings matched case- and accent-insensitively at the
start of any part; tokens on any coding; quantities with the implicit precision of the value).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from records.importer import import_files
from tests.conftest import BACKENDS, fresh_database
from tests.services import AppServer, query_database

BUNDLES = 25
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
CVX = "http://hl7.org/fhir/sid/cvx"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"

# The codes the FHIR R4B specification lists, written out here rather than read from the
# server's definitions: what :in, :not-in, :below and :above must expand to.
OBSERVATION_CATEGORIES = {
    "social-history",
    "vital-signs",
    "imaging",
    "laboratory",
    "procedure",
    "survey",
    "exam",
    "therapy",
    "activity",
}
# condition-clinical: active > (recurrence, relapse); inactive > (remission, resolved).
CONDITION_CLINICAL_BELOW = {"inactive": {"inactive", "remission", "resolved"}}
CONDITION_CLINICAL_ABOVE = {"resolved": {"resolved", "inactive"}}
# condition-ver-status: unconfirmed > (provisional, differential), confirmed, refuted,
# entered-in-error.
CONDITION_VERIFICATIONS = {
    "unconfirmed",
    "provisional",
    "differential",
    "confirmed",
    "refuted",
    "entered-in-error",
}
DIAGNOSTIC_REPORT_STATUSES = {
    "registered",
    "partial",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "appended",
    "cancelled",
    "entered-in-error",
    "unknown",
}

Resource = dict[str, Any]


# -- the reference evaluator ----------------------------------------------------------------

CHINA = dt.timezone(dt.timedelta(hours=8))
NEVER_BEFORE = dt.datetime.min.replace(tzinfo=dt.UTC)
NEVER_AFTER = dt.datetime.max.replace(tzinfo=dt.UTC)
_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)(?=[\d+\-])")


def fhir_range(text: str) -> tuple[dt.datetime, dt.datetime]:
    """The half-open range ``[start, end)`` a FHIR date/dateTime/instant covers."""
    match = _DATE.match(text)
    assert match, text
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if zone is None:
        tz: dt.tzinfo = CHINA  # no zone: the clinics' local time
    elif zone == "Z":
        tz = dt.UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    y = int(year)
    if month is None:
        return dt.datetime(y, 1, 1, tzinfo=tz), dt.datetime(y + 1, 1, 1, tzinfo=tz)
    m = int(month)
    if day is None:
        following = dt.datetime(y + 1, 1, 1) if m == 12 else dt.datetime(y, m + 1, 1)
        return dt.datetime(y, m, 1, tzinfo=tz), following.replace(tzinfo=tz)
    start = dt.datetime(y, m, int(day), tzinfo=tz)
    if hour is None:
        return start, start + dt.timedelta(days=1)
    start = start.replace(hour=int(hour), minute=int(minute))
    if second is None:
        return start, start + dt.timedelta(minutes=1)
    start = start.replace(second=int(second))
    if fraction:
        start = start.replace(microsecond=int(fraction[1:7].ljust(6, "0")))
        return start, start + dt.timedelta(microseconds=1)
    return start, start + dt.timedelta(seconds=1)


def target_range(value: Any) -> tuple[dt.datetime, dt.datetime] | None:
    """The range of a stored date, dateTime, instant or Period (open ends are unbounded)."""
    if isinstance(value, str):
        return fhir_range(value)
    if isinstance(value, dict) and ("start" in value or "end" in value):
        start = fhir_range(value["start"])[0] if value.get("start") else NEVER_BEFORE
        end = fhir_range(value["end"])[1] if value.get("end") else NEVER_AFTER
        return start, end
    return None


def split_prefix(text: str) -> tuple[str, str]:
    match = _PREFIX.match(text)
    return (match.group(1), text[2:]) if match else ("eq", text)


def date_matches(value: Any, query: str) -> bool:
    """Does a stored date match ``[prefix]date``? Ranges compared as the FHIR search page says."""
    target = target_range(value)
    if target is None:
        return False
    prefix, text = split_prefix(query)
    (ts, te), (qs, qe) = target, fhir_range(text)  # both half-open
    within = qs <= ts and te <= qe
    return {
        "eq": within,
        "ne": not within,
        "gt": te > qe,  # the target ends after the search range
        "lt": ts < qs,  # the target starts before it
        "ge": te > qs,  # the target's last instant is at or after the search start
        "le": ts < qe,  # the target's first instant is at or before the search end
        "sa": ts >= qe,  # the target starts after the search range ends
        "eb": te <= qs,  # the target ends before the search range starts
    }[prefix]


def normalized(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def string_matches(values: list[str], query: str, modifier: str | None = None) -> bool:
    if modifier == "exact":
        return query in values
    if modifier == "contains":
        return any(normalized(query) in normalized(v) for v in values)
    return any(normalized(v).startswith(normalized(query)) for v in values)


def name_parts(names: list[Resource] | None) -> list[str]:
    """The strings a ``name`` search looks at: text, family, given, prefix and suffix."""
    parts: list[str] = []
    for name in names or ():
        parts += [name[k] for k in ("text", "family") if k in name]
        for key in ("given", "prefix", "suffix"):
            parts += name.get(key) or []
    return parts


def codings(node: Any) -> list[Resource]:
    if node is None:
        return []
    if isinstance(node, list):
        return [c for item in node for c in codings(item)]
    if isinstance(node, str):  # a code
        return [{"code": node}]
    if "coding" in node:  # a CodeableConcept
        return node["coding"]
    return [node]  # a Coding


def token_matches(node: Any, query: str) -> bool:
    """``code``, ``system|code``, ``|code`` or ``system|`` against any coding of ``node``."""
    for coding in codings(node):
        if "|" not in query:
            if coding.get("code") == query:
                return True
            continue
        system, code = query.split("|", 1)
        if code and coding.get("code") != code:
            continue
        if coding.get("system") != (system or None):
            continue
        return True
    return False


def token_text_matches(node: Any, query: str) -> bool:
    """``:text``: CodeableConcept.text or any Coding.display starts with the words."""
    nodes = node if isinstance(node, list) else [node]
    texts = [n["text"] for n in nodes if isinstance(n, dict) and "text" in n]
    texts += [c["display"] for c in codings(node) if "display" in c]
    return string_matches(texts, query)


def quantity_matches(quantity: Resource | None, query: str) -> bool:
    """``[prefix]number[|system|code]``; eq and ne use the precision the number is written in."""
    if quantity is None or "value" not in quantity:
        return False
    number_text, *unit = query.split("|")
    prefix, number_text = split_prefix(number_text)
    number = Decimal(number_text)
    value = Decimal(str(quantity["value"]))
    half = Decimal(5).scaleb(number.as_tuple().exponent - 1)  # type: ignore[operator]
    in_precision = number - half <= value < number + half
    if not {
        "eq": in_precision,
        "ne": not in_precision,
        "gt": value > number,
        "lt": value < number,
        "ge": value >= number,
        "le": value <= number,
    }[prefix]:
        return False
    if unit:
        system, code = unit
        if system and quantity.get("system") != system:
            return False
        if code and code not in (quantity.get("code"), quantity.get("unit")):
            return False
    return True


def coded_in(node: Any, system: str, codes: set[str]) -> bool:
    """Any coding of ``node`` with one of ``codes`` of ``system`` (a bare code counts)."""
    return any(c.get("code") in codes and c.get("system") in (system, None) for c in codings(node))


def pairs(resource: Resource, code: str, value: Callable[[Resource], bool]) -> bool:
    """A composite on the resource and its components: the code and the value in one place."""
    places = [resource, *resource.get("component", [])]
    return any(token_matches(p.get("code"), code) and value(p) for p in places)


def refers(reference: Resource | list[Resource] | None, target: str) -> bool:
    references = reference if isinstance(reference, list) else [reference]
    return any(isinstance(r, dict) and r.get("reference") == target for r in references)


# -- the stored data ------------------------------------------------------------------------


class Stored:
    """Every current resource as the server stores it, by type and id, and named values."""

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        self.by_type: dict[str, dict[str, Resource]] = defaultdict(dict)
        for res_type, res_id, content in rows:
            self.by_type[res_type][res_id] = json.loads(content, parse_float=Decimal)
        self.var: dict[str, str] = {}

    def __call__(self, res_type: str) -> list[Resource]:
        return list(self.by_type[res_type].values())

    def where(self, res_type: str, predicate: Callable[[Resource], bool]) -> set[str]:
        return {r["id"] for r in self(res_type) if predicate(r)}

    def patient_named(self, family: str) -> str:
        (found,) = [
            p["id"]
            for p in self("Patient")
            if any(n.get("use") == "official" and n.get("family") == family for n in p["name"])
        ]
        return found


def stored_resources(database_url: str) -> list[tuple[str, str, str]]:
    return query_database(  # type: ignore[return-value]
        database_url,
        "SELECT r.res_type, r.res_id, v.content FROM resources r "
        "JOIN resource_versions v ON v.rid = r.rid AND v.version = r.version "
        "WHERE NOT r.deleted",
    )


def named_values(stored: Stored) -> dict[str, str]:
    """Ids and values the queries use, picked from the data so that the answers are not empty."""
    koepp = stored.patient_named("Koepp")
    toy = stored.patient_named("Toy")
    providers = Counter(
        e["serviceProvider"]["reference"] for e in stored("Encounter") if "serviceProvider" in e
    )
    busiest = providers.most_common(1)[0][0]
    # A day in local time (UTC+8) on which Mr Koepp had observations taken: their UTC time
    # is late in the evening, so the local day is the next one.
    first = min(
        (o for o in stored("Observation") if refers(o.get("subject"), f"Patient/{koepp}")),
        key=lambda o: o["effectiveDateTime"],
    )
    local_day = fhir_range(first["effectiveDateTime"])[0].astimezone(CHINA).date()
    # A second in the middle of the import, for _lastUpdated.
    updated = sorted(
        fhir_range(r["meta"]["lastUpdated"])[0] for t in stored.by_type for r in stored(t)
    )
    middle = updated[len(updated) // 2].replace(microsecond=0) + dt.timedelta(seconds=1)
    synthea_id = next(
        i["value"]
        for i in stored.by_type["Patient"][koepp]["identifier"]
        if i.get("system") == "https://github.com/synthetichealth/synthea"
    )
    return {
        "koepp": koepp,
        "koepp_synthea": synthea_id,
        "first_observation_time": first["effectiveDateTime"],
        "toy": toy,
        "provider": busiest.split("/")[1],
        "local_day": local_day.isoformat(),
        "updated_utc": middle.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "updated_local": middle.astimezone(CHINA).strftime("%Y-%m-%dT%H:%M:%S"),
    }


@dataclass
class Synthea:
    client: httpx.Client
    stored: Stored
    backend: str


@pytest.fixture(scope="module", params=BACKENDS)
def synthea(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_dir: Path
) -> Iterator[Synthea]:
    backend = request.param
    url = fresh_database(request, backend, tmp_path_factory.mktemp(f"synthea-{backend}"))
    files = sorted((shared_dir / "data" / "synthea-r4").glob("*.json.gz"))[:BUNDLES]
    results = import_files(url, files, jobs=2)
    assert [r.error for r in results if r.error] == []
    stored = Stored(stored_resources(url))
    assert len(stored("Patient")) == BUNDLES
    stored.var = named_values(stored)
    server = AppServer(url).start()
    try:
        with httpx.Client(
            base_url=f"{server.url}/fhir",
            headers={"Accept": "application/fhir+json", **server.auth_headers()},
            timeout=120,
        ) as client:
            yield Synthea(client, stored, backend)
    finally:
        server.stop()


def search_ids(client: httpx.Client, path: str, query: str) -> list[str]:
    """The ids of every match, following ``next`` links."""
    found: list[str] = []
    params = [tuple(pair.split("=", 1)) for pair in query.split("&") if pair]
    response = client.get(f"/{path}", params=[*params, ("_count", "200")])
    while True:
        assert response.status_code == 200, response.text[:2000]
        bundle = response.json()
        found += [
            e["resource"]["id"]
            for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        ]
        following = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
        if not following:
            return found
        response = client.get(following[0])


# -- the searches ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    path: str  # a type, or a compartment such as Patient/{koepp}/Condition
    query: str  # with {names} from named_values
    expected: Callable[[Stored], set[str]]
    empty: bool = False  # deliberately no match
    bug: str | None = None  # a known server bug: the case is expected to fail


def _birth(query: str) -> Callable[[Stored], set[str]]:
    return lambda s: s.where("Patient", lambda p: date_matches(p.get("birthDate"), query))


def _obs_code(*queries: str) -> Callable[[Resource], bool]:
    return lambda o: any(token_matches(o.get("code"), q) for q in queries)


SEARCHES: dict[str, Search] = {
    # -- patients -------------------------------------------------------------------------
    "patient-family-prefix": Search(
        "Patient",
        "family=how",  # Howe, and a maiden name Howe
        lambda s: s.where(
            "Patient", lambda p: string_matches([n.get("family", "") for n in p["name"]], "how")
        ),
    ),
    "patient-given-accent-insensitive": Search(
        "Patient",
        "given=ADAN",
        lambda s: s.where(
            "Patient",
            lambda p: string_matches([g for n in p["name"] for g in n.get("given", [])], "ADAN"),
        ),
    ),
    "patient-name-any-part": Search(
        "Patient",
        "name=mrs",
        lambda s: s.where("Patient", lambda p: string_matches(name_parts(p["name"]), "mrs")),
    ),
    "patient-family-exact": Search(
        "Patient",
        "family:exact=Rice",
        lambda s: s.where(
            "Patient",
            lambda p: string_matches([n.get("family", "") for n in p["name"]], "Rice", "exact"),
        ),
    ),
    "patient-family-exact-is-case-sensitive": Search(
        "Patient",
        "family:exact=rice",
        lambda s: s.where(
            "Patient",
            lambda p: string_matches([n.get("family", "") for n in p["name"]], "rice", "exact"),
        ),
        empty=True,
    ),
    "patient-name-contains": Search(
        "Patient",
        "name:contains=ann",
        lambda s: s.where(
            "Patient", lambda p: string_matches(name_parts(p["name"]), "ann", "contains")
        ),
    ),
    "patient-address-city": Search(
        "Patient",
        "address-city=spring",
        lambda s: s.where(
            "Patient", lambda p: string_matches([a.get("city", "") for a in p["address"]], "spring")
        ),
    ),
    "patient-gender": Search(
        "Patient",
        "gender=female",
        lambda s: s.where("Patient", lambda p: p.get("gender") == "female"),
    ),
    "patient-gender-not": Search(
        "Patient",
        "gender:not=male",
        lambda s: s.where("Patient", lambda p: p.get("gender") != "male"),
    ),
    "patient-birthdate-year": Search("Patient", "birthdate=1980", _birth("1980")),
    "patient-birthdate-range-and": Search(
        "Patient",
        "birthdate=ge1980-01-01&birthdate=lt2000-01-01",
        lambda s: _birth("ge1980-01-01")(s) & _birth("lt2000-01-01")(s),
    ),
    "patient-birthdate-le-month": Search("Patient", "birthdate=le1950-06", _birth("le1950-06")),
    "patient-birthdate-gt-day": Search("Patient", "birthdate=gt2010-01-01", _birth("gt2010-01-01")),
    "patient-birthdate-ne-day": Search("Patient", "birthdate=ne1980-10-28", _birth("ne1980-10-28")),
    "patient-birthdate-sa-eb-or": Search(
        "Patient",
        "birthdate=sa2015-12-31,eb1935",
        lambda s: _birth("sa2015-12-31")(s) | _birth("eb1935")(s),
    ),
    "patient-birthdate-none": Search("Patient", "birthdate=1800", _birth("1800"), empty=True),
    "patient-death-date-present": Search(
        "Patient",
        "death-date:missing=false",
        lambda s: s.where("Patient", lambda p: "deceasedDateTime" in p),
    ),
    "patient-deceased": Search(
        "Patient",
        "deceased=true",
        lambda s: s.where(
            "Patient", lambda p: p.get("deceasedBoolean", "deceasedDateTime" in p) is True
        ),
    ),
    "patient-id-or": Search(
        "Patient", "_id={koepp},{toy}", lambda s: {s.var["koepp"], s.var["toy"]}
    ),
    "patient-has-hba1c-observation": Search(
        "Patient",
        f"_has:Observation:patient:code={LOINC}|4548-4",
        lambda s: {
            o["subject"]["reference"].split("/")[1]
            for o in s("Observation")
            if token_matches(o["code"], f"{LOINC}|4548-4")
        },
    ),
    "patient-given-accented-query": Search(
        "Patient",
        "given=Adán",
        lambda s: s.where(
            "Patient",
            lambda p: string_matches([g for n in p["name"] for g in n.get("given", [])], "Adán"),
        ),
    ),
    "patient-postal-code-prefix": Search(
        "Patient",
        "address-postalcode=0101",
        lambda s: s.where(
            "Patient",
            lambda p: string_matches([a.get("postalCode", "") for a in p["address"]], "0101"),
        ),
    ),
    "patient-identifier": Search(
        "Patient",
        "identifier=https://github.com/synthetichealth/synthea|{koepp_synthea}",
        lambda s: s.where(
            "Patient",
            lambda p: any(
                i.get("system") == "https://github.com/synthetichealth/synthea"
                and i["value"] == s.var["koepp_synthea"]
                for i in p.get("identifier", [])
            ),
        ),
    ),
    "patient-has-emergency-and-gender": Search(
        "Patient",
        "_has:Encounter:patient:class=EMER&gender=male",
        lambda s: s.where(
            "Patient",
            lambda p: (
                p["gender"] == "male"
                and any(
                    refers(e["subject"], f"Patient/{p['id']}") and e["class"]["code"] == "EMER"
                    for e in s("Encounter")
                )
            ),
        ),
    ),
    "patient-name-or": Search(
        "Patient",
        "name=RICE,howe",
        lambda s: s.where(
            "Patient",
            lambda p: (
                string_matches(name_parts(p["name"]), "RICE")
                or string_matches(name_parts(p["name"]), "howe")
            ),
        ),
    ),
    "patient-alive": Search(
        "Patient",
        "deceased=false",
        lambda s: s.where("Patient", lambda p: "deceasedDateTime" not in p),
    ),
    "patient-identifier-text": Search(
        "Patient",
        "identifier:text=driver",
        lambda s: s.where(
            "Patient",
            lambda p: string_matches(
                [i["type"]["text"] for i in p["identifier"] if "text" in i.get("type", {})],
                "driver",
            ),
        ),
    ),
    "patient-has-has-lipid-panel": Search(
        "Patient",
        f"_has:Observation:patient:_has:DiagnosticReport:result:code={LOINC}|57698-3",
        lambda s: {
            o["subject"]["reference"].split("/")[1]
            for o in s("Observation")
            if any(
                token_matches(r["code"], f"{LOINC}|57698-3")
                and refers(r.get("result"), f"Observation/{o['id']}")
                for r in s("DiagnosticReport")
            )
        },
    ),
    # -- observations ---------------------------------------------------------------------
    "observation-loinc-system-and-code": Search(
        "Observation",
        f"code={LOINC}|8302-2",
        lambda s: s.where("Observation", _obs_code(f"{LOINC}|8302-2")),
    ),
    "observation-code-only": Search(
        "Observation", "code=29463-7", lambda s: s.where("Observation", _obs_code("29463-7"))
    ),
    "observation-code-or": Search(
        "Observation",
        f"code={LOINC}|2093-3,{LOINC}|2571-8",
        lambda s: s.where("Observation", _obs_code(f"{LOINC}|2093-3", f"{LOINC}|2571-8")),
    ),
    "observation-code-text": Search(
        "Observation",
        "code:text=body",
        lambda s: s.where("Observation", lambda o: token_text_matches(o["code"], "body")),
    ),
    "observation-code-not": Search(
        "Observation",
        f"code:not={LOINC}|72166-2&patient={{koepp}}",
        lambda s: s.where(
            "Observation",
            lambda o: (
                not token_matches(o["code"], f"{LOINC}|72166-2")
                and refers(o["subject"], f"Patient/{s.var['koepp']}")
            ),
        ),
    ),
    "observation-patient-id": Search(
        "Observation",
        "patient={koepp}",
        lambda s: s.where(
            "Observation", lambda o: refers(o["subject"], f"Patient/{s.var['koepp']}")
        ),
    ),
    "observation-subject-typed-reference": Search(
        "Observation",
        f"subject=Patient/{{toy}}&code={LOINC}|8302-2",
        lambda s: s.where(
            "Observation",
            lambda o: (
                refers(o["subject"], f"Patient/{s.var['toy']}")
                and token_matches(o["code"], f"{LOINC}|8302-2")
            ),
        ),
    ),
    "observation-date-ge-lt": Search(
        "Observation",
        "date=ge2015-01-01&date=lt2016-01-01",
        lambda s: s.where(
            "Observation",
            lambda o: (
                date_matches(o.get("effectiveDateTime"), "ge2015-01-01")
                and date_matches(o.get("effectiveDateTime"), "lt2016-01-01")
            ),
        ),
    ),
    "observation-date-month": Search(
        "Observation",
        "date=2019-03",
        lambda s: s.where(
            "Observation", lambda o: date_matches(o.get("effectiveDateTime"), "2019-03")
        ),
    ),
    "observation-date-local-day": Search(
        "Observation",
        "date={local_day}",
        lambda s: s.where(
            "Observation", lambda o: date_matches(o.get("effectiveDateTime"), s.var["local_day"])
        ),
    ),
    "observation-value-gt-mg-dl": Search(
        "Observation",
        f"value-quantity=gt200|{UCUM}|mg/dL",
        lambda s: s.where(
            "Observation", lambda o: quantity_matches(o.get("valueQuantity"), f"gt200|{UCUM}|mg/dL")
        ),
    ),
    "observation-value-eq-implicit-precision": Search(
        "Observation",
        f"value-quantity=80|{UCUM}|kg",
        lambda s: s.where(
            "Observation", lambda o: quantity_matches(o.get("valueQuantity"), f"80|{UCUM}|kg")
        ),
    ),
    "observation-value-le-code-only": Search(
        "Observation",
        "value-quantity=le18.5||kg/m2",
        lambda s: s.where(
            "Observation", lambda o: quantity_matches(o.get("valueQuantity"), "le18.5||kg/m2")
        ),
    ),
    "observation-value-lt-decimal": Search(
        "Observation",
        f"value-quantity=lt6.0|{UCUM}|%",
        lambda s: s.where(
            "Observation", lambda o: quantity_matches(o.get("valueQuantity"), f"lt6.0|{UCUM}|%")
        ),
    ),
    "observation-value-missing": Search(
        "Observation",
        "value-quantity:missing=true",
        lambda s: s.where("Observation", lambda o: "valueQuantity" not in o),
    ),
    "observation-chain-female-weight": Search(
        "Observation",
        f"subject:Patient.gender=female&code={LOINC}|29463-7",
        lambda s: s.where(
            "Observation",
            lambda o: (
                token_matches(o["code"], f"{LOINC}|29463-7")
                and s.by_type["Patient"][o["subject"]["reference"].split("/")[1]]["gender"]
                == "female"
            ),
        ),
    ),
    "observation-category": Search(
        "Observation",
        "category=vital-signs",
        lambda s: s.where("Observation", lambda o: token_matches(o.get("category"), "vital-signs")),
    ),
    "observation-category-system-and-date": Search(
        "Observation",
        f"category={OBSERVATION_CATEGORY}|laboratory&date=ge2020",
        lambda s: s.where(
            "Observation",
            lambda o: (
                token_matches(o.get("category"), f"{OBSERVATION_CATEGORY}|laboratory")
                and date_matches(o.get("effectiveDateTime"), "ge2020")
            ),
        ),
    ),
    "observation-last-updated-ge": Search(
        "Observation",
        "_lastUpdated=ge{updated_utc}",
        lambda s: s.where(
            "Observation",
            lambda o: date_matches(o["meta"]["lastUpdated"], "ge" + s.var["updated_utc"]),
        ),
    ),
    "observation-last-updated-lt-local-time": Search(
        "Observation",
        "_lastUpdated=lt{updated_local}",
        lambda s: s.where(
            "Observation",
            lambda o: date_matches(o["meta"]["lastUpdated"], "lt" + s.var["updated_local"]),
        ),
    ),
    "observation-date-second-precision": Search(
        "Observation",
        "date={first_observation_time}",
        lambda s: s.where(
            "Observation",
            lambda o: date_matches(o.get("effectiveDateTime"), s.var["first_observation_time"]),
        ),
    ),
    "observation-value-ne": Search(
        "Observation",
        f"value-quantity=ne80|{UCUM}|kg&patient={{koepp}}",
        lambda s: s.where(
            "Observation",
            lambda o: (
                quantity_matches(o.get("valueQuantity"), f"ne80|{UCUM}|kg")
                and refers(o["subject"], f"Patient/{s.var['koepp']}")
            ),
        ),
    ),
    "observation-chain-name": Search(
        "Observation",
        f"subject:Patient.name=rice&code={LOINC}|8302-2",
        lambda s: s.where(
            "Observation",
            lambda o: (
                token_matches(o["code"], f"{LOINC}|8302-2")
                and string_matches(
                    name_parts(
                        s.by_type["Patient"][o["subject"]["reference"].split("/")[1]]["name"]
                    ),
                    "rice",
                )
            ),
        ),
    ),
    "observation-combo-code-component": Search(
        "Observation",
        f"combo-code={LOINC}|8462-4",
        lambda s: s.where(
            "Observation",
            lambda o: (
                token_matches(o["code"], f"{LOINC}|8462-4")
                or token_matches([c["code"] for c in o.get("component", [])], f"{LOINC}|8462-4")
            ),
        ),
    ),
    "observation-value-concept": Search(
        "Observation",
        f"value-concept={SNOMED}|8517006,{SNOMED}|449868002",
        lambda s: s.where(
            "Observation",
            lambda o: (
                token_matches(o.get("valueCodeableConcept"), f"{SNOMED}|8517006")
                or token_matches(o.get("valueCodeableConcept"), f"{SNOMED}|449868002")
            ),
        ),
    ),
    "observation-value-concept-present": Search(
        "Observation",
        "value-concept:missing=false",
        lambda s: s.where("Observation", lambda o: "valueCodeableConcept" in o),
    ),
    "observation-chain-emergency-encounter": Search(
        "Observation",
        "encounter.class=EMER",
        lambda s: s.where(
            "Observation",
            lambda o: (
                s.by_type["Encounter"][o["encounter"]["reference"].split("/")[1]]["class"]["code"]
                == "EMER"
            ),
        ),
    ),
    # -- conditions -----------------------------------------------------------------------
    "condition-code": Search(
        "Condition",
        f"code={SNOMED}|444814009",
        lambda s: s.where("Condition", lambda c: token_matches(c["code"], f"{SNOMED}|444814009")),
    ),
    "condition-clinical-status": Search(
        "Condition",
        "clinical-status=active",
        lambda s: s.where("Condition", lambda c: token_matches(c.get("clinicalStatus"), "active")),
    ),
    "condition-codes-or-and-status": Search(
        "Condition",
        "code=38341003,15777000,55822004&clinical-status=active",
        lambda s: s.where(
            "Condition",
            lambda c: (
                any(token_matches(c["code"], q) for q in ("38341003", "15777000", "55822004"))
                and token_matches(c.get("clinicalStatus"), "active")
            ),
        ),
    ),
    "condition-onset-before-2000": Search(
        "Condition",
        "onset-date=lt2000-01-01",
        lambda s: s.where(
            "Condition", lambda c: date_matches(c.get("onsetDateTime"), "lt2000-01-01")
        ),
    ),
    "condition-not-abated": Search(
        "Condition",
        "abatement-date:missing=true",
        lambda s: s.where("Condition", lambda c: "abatementDateTime" not in c),
    ),
    "condition-compartment": Search(
        "Patient/{koepp}/Condition",
        "",
        lambda s: s.where("Condition", lambda c: refers(c["subject"], f"Patient/{s.var['koepp']}")),
    ),
    # -- encounters -----------------------------------------------------------------------
    "encounter-date-half-year": Search(
        "Encounter",
        "date=ge2018-01-01&date=lt2018-07-01",
        lambda s: s.where(
            "Encounter",
            lambda e: (
                date_matches(e.get("period"), "ge2018-01-01")
                and date_matches(e.get("period"), "lt2018-07-01")
            ),
        ),
    ),
    "encounter-date-local-day": Search(
        "Encounter",
        "date={local_day}",
        lambda s: s.where("Encounter", lambda e: date_matches(e.get("period"), s.var["local_day"])),
    ),
    "encounter-class": Search(
        "Encounter",
        "class=EMER",
        lambda s: s.where("Encounter", lambda e: token_matches(e.get("class"), "EMER")),
    ),
    "encounter-class-system-or": Search(
        "Encounter",
        f"class={ACT_CODE}|IMP,{ACT_CODE}|EMER",
        lambda s: s.where(
            "Encounter",
            lambda e: (
                token_matches(e.get("class"), f"{ACT_CODE}|IMP")
                or token_matches(e.get("class"), f"{ACT_CODE}|EMER")
            ),
        ),
    ),
    "encounter-type": Search(
        "Encounter",
        f"type={SNOMED}|424619006",
        lambda s: s.where(
            "Encounter", lambda e: token_matches(e.get("type"), f"{SNOMED}|424619006")
        ),
    ),
    "encounter-service-provider": Search(
        "Encounter",
        "service-provider=Organization/{provider}",
        lambda s: s.where(
            "Encounter",
            lambda e: refers(e.get("serviceProvider"), f"Organization/{s.var['provider']}"),
        ),
    ),
    "encounter-patient-and-class": Search(
        "Encounter",
        "patient={koepp}&class=AMB",
        lambda s: s.where(
            "Encounter",
            lambda e: (
                refers(e["subject"], f"Patient/{s.var['koepp']}") and e["class"]["code"] == "AMB"
            ),
        ),
    ),
    "encounter-date-ne-local-day": Search(
        "Encounter",
        "date=ne{local_day}&patient={koepp}",
        lambda s: s.where(
            "Encounter",
            lambda e: (
                date_matches(e.get("period"), "ne" + s.var["local_day"])
                and refers(e["subject"], f"Patient/{s.var['koepp']}")
            ),
        ),
    ),
    "encounter-date-sa-or-eb": Search(
        "Encounter",
        "date=sa2020-06-01,eb1980",
        lambda s: s.where(
            "Encounter",
            lambda e: (
                date_matches(e.get("period"), "sa2020-06-01")
                or date_matches(e.get("period"), "eb1980")
            ),
        ),
    ),
    "encounter-reason-present": Search(
        "Encounter",
        "reason-code:missing=false&class=AMB",
        lambda s: s.where(
            "Encounter", lambda e: bool(e.get("reasonCode")) and e["class"]["code"] == "AMB"
        ),
    ),
    "encounter-chain-young-patients": Search(
        "Encounter",
        "patient.birthdate=ge2000",
        lambda s: s.where(
            "Encounter",
            lambda e: date_matches(
                s.by_type["Patient"][e["subject"]["reference"].split("/")[1]]["birthDate"],
                "ge2000",
            ),
        ),
    ),
    # -- procedures, immunizations, medication requests -------------------------------------
    "procedure-date-ge": Search(
        "Procedure",
        "date=ge2019-01-01",
        lambda s: s.where(
            "Procedure", lambda p: date_matches(p.get("performedPeriod"), "ge2019-01-01")
        ),
    ),
    "procedure-date-year-eq": Search(
        "Procedure",
        "date=2012",
        lambda s: s.where("Procedure", lambda p: date_matches(p.get("performedPeriod"), "2012")),
    ),
    "immunization-vaccine-and-date": Search(
        "Immunization",
        f"vaccine-code={CVX}|140&date=ge2017",
        lambda s: s.where(
            "Immunization",
            lambda i: (
                token_matches(i["vaccineCode"], f"{CVX}|140")
                and date_matches(i.get("occurrenceDateTime"), "ge2017")
            ),
        ),
    ),
    "immunization-vaccine-code-only": Search(
        "Immunization",
        "vaccine-code=133",
        lambda s: s.where("Immunization", lambda i: token_matches(i["vaccineCode"], "133")),
    ),
    "medication-request-status": Search(
        "MedicationRequest",
        "status=active",
        lambda s: s.where("MedicationRequest", lambda m: m["status"] == "active"),
    ),
    "medication-request-status-authoredon": Search(
        "MedicationRequest",
        "status=stopped&authoredon=ge2015-06-01",
        lambda s: s.where(
            "MedicationRequest",
            lambda m: (
                m["status"] == "stopped" and date_matches(m.get("authoredOn"), "ge2015-06-01")
            ),
        ),
    ),
    "medication-request-authoredon-le": Search(
        "MedicationRequest",
        "authoredon=le2010-12",
        lambda s: s.where(
            "MedicationRequest", lambda m: date_matches(m.get("authoredOn"), "le2010-12")
        ),
    ),
    # -- token terminology modifiers --------------------------------------------------------
    "condition-clinical-status-below-inactive": Search(
        "Condition",
        f"clinical-status:below={CONDITION_CLINICAL}|inactive",
        lambda s: s.where(
            "Condition",
            lambda c: coded_in(
                c.get("clinicalStatus"), CONDITION_CLINICAL, CONDITION_CLINICAL_BELOW["inactive"]
            ),
        ),
    ),
    "condition-clinical-status-above-resolved": Search(
        "Condition",
        f"clinical-status:above={CONDITION_CLINICAL}|resolved",
        lambda s: s.where(
            "Condition",
            lambda c: coded_in(
                c.get("clinicalStatus"), CONDITION_CLINICAL, CONDITION_CLINICAL_ABOVE["resolved"]
            ),
        ),
    ),
    "condition-verification-status-in": Search(
        "Condition",
        "verification-status:in=http://hl7.org/fhir/ValueSet/condition-ver-status",
        lambda s: s.where(
            "Condition",
            lambda c: coded_in(
                c.get("verificationStatus"), CONDITION_VERIFICATION, CONDITION_VERIFICATIONS
            ),
        ),
    ),
    "allergy-clinical-status-below-active": Search(
        "AllergyIntolerance",
        f"clinical-status:below={ALLERGY_CLINICAL}|active",
        lambda s: s.where(
            "AllergyIntolerance",
            lambda a: coded_in(a.get("clinicalStatus"), ALLERGY_CLINICAL, {"active"}),
        ),
    ),
    "observation-category-in": Search(
        "Observation",
        "category:in=http://hl7.org/fhir/ValueSet/observation-category&patient={toy}",
        lambda s: s.where(
            "Observation",
            lambda o: (
                coded_in(o.get("category"), OBSERVATION_CATEGORY, OBSERVATION_CATEGORIES)
                and refers(o["subject"], f"Patient/{s.var['toy']}")
            ),
        ),
    ),
    "observation-category-not-in": Search(
        "Observation",
        "category:not-in=http://hl7.org/fhir/ValueSet/observation-category",
        lambda s: s.where(
            "Observation",
            lambda o: not coded_in(o.get("category"), OBSERVATION_CATEGORY, OBSERVATION_CATEGORIES),
        ),
        empty=True,
    ),
    "diagnostic-report-status-in-bare-codes": Search(
        "DiagnosticReport",
        "status:in=http://hl7.org/fhir/ValueSet/diagnostic-report-status",
        lambda s: s.where(
            "DiagnosticReport",
            lambda d: coded_in(
                d.get("status"),
                "http://hl7.org/fhir/diagnostic-report-status",
                DIAGNOSTIC_REPORT_STATUSES,
            ),
        ),
    ),
    # -- composites and substrings ------------------------------------------------------------
    "observation-body-height-over-170": Search(
        "Observation",
        f"code={LOINC}|8302-2&value-quantity=gt170",
        lambda s: s.where(
            "Observation",
            lambda o: (
                token_matches(o["code"], f"{LOINC}|8302-2")
                and quantity_matches(o.get("valueQuantity"), "gt170")
            ),
        ),
    ),
    "observation-code-value-quantity": Search(
        "Observation",
        f"code-value-quantity={LOINC}|8302-2$gt170",
        lambda s: s.where(
            "Observation",
            lambda o: (
                token_matches(o["code"], f"{LOINC}|8302-2")
                and quantity_matches(o.get("valueQuantity"), "gt170")
            ),
        ),
    ),
    "observation-component-systolic-over-140": Search(
        "Observation",
        f"component-code-value-quantity={LOINC}|8480-6$gt140",
        lambda s: s.where(
            "Observation",
            lambda o: any(
                token_matches(c["code"], f"{LOINC}|8480-6")
                and quantity_matches(c.get("valueQuantity"), "gt140")
                for c in o.get("component", [])
            ),
        ),
    ),
    "observation-combo-diastolic-under-75": Search(
        "Observation",
        f"combo-code-value-quantity={LOINC}|8462-4$lt75",
        lambda s: s.where(
            "Observation",
            lambda o: pairs(
                o, f"{LOINC}|8462-4", lambda p: quantity_matches(p.get("valueQuantity"), "lt75")
            ),
        ),
    ),
    "observation-code-value-concept-smokers": Search(
        "Observation",
        f"code-value-concept={LOINC}|72166-2${SNOMED}|449868002,{LOINC}|72166-2$8517006",
        lambda s: s.where(
            "Observation",
            lambda o: (
                token_matches(o["code"], f"{LOINC}|72166-2")
                and (
                    token_matches(o.get("valueCodeableConcept"), f"{SNOMED}|449868002")
                    or token_matches(o.get("valueCodeableConcept"), "8517006")
                )
            ),
        ),
    ),
    "patient-address-city-contains": Search(
        "Patient",
        "address-city:contains=ton",
        lambda s: s.where(
            "Patient",
            lambda p: string_matches([a.get("city", "") for a in p["address"]], "ton", "contains"),
        ),
    ),
    "patient-name-contains-two-letters": Search(
        "Patient",
        "name:contains=ar",
        lambda s: s.where(
            "Patient", lambda p: string_matches(name_parts(p["name"]), "ar", "contains")
        ),
    ),
    # -- claims -----------------------------------------------------------------------------
    "claim-patient": Search(
        "Claim",
        "patient=Patient/{koepp}",
        lambda s: s.where("Claim", lambda c: refers(c["patient"], f"Patient/{s.var['koepp']}")),
    ),
    "eob-patient": Search(
        "ExplanationOfBenefit",
        "patient={toy}",
        lambda s: s.where(
            "ExplanationOfBenefit", lambda c: refers(c["patient"], f"Patient/{s.var['toy']}")
        ),
    ),
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=search.bug))
        if search.bug
        else name
        for name, search in SEARCHES.items()
    ],
)
def test_search_finds_what_the_data_says(synthea: Synthea, name: str) -> None:
    search = SEARCHES[name]
    stored = synthea.stored
    path = search.path.format(**stored.var)
    query = search.query.format(**stored.var)
    expected = search.expected(stored)
    found = search_ids(synthea.client, path, query)
    assert len(found) == len(set(found)), "an id came back twice across the pages"
    assert set(found) == expected, (
        f"{path}?{query}: missing {sorted(expected - set(found))[:5]}, "
        f"unexpected {sorted(set(found) - expected)[:5]}"
    )
    if search.empty:
        assert expected == set()
    else:
        assert expected, f"{path}?{query} should find something in the data"
