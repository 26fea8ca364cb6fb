"""The FHIR R4B definitions the server needs, read from the JSON files beside this module.

``tools/generate_fhir_data.py`` distils them from the official HL7 core package; the files are
committed so that an installation needs neither the package nor a network. Each loader reads
its file once and returns the same object afterwards: callers must not modify it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, TypedDict

import orjson

_HERE = Path(__file__).parent

#: A rule for one JSON element of a type: ``["code" | "Coding" | "CodeableConcept", vs_url]``
#: for a required binding, ``["node", type_name]`` to walk into a datatype or backbone
#: element, ``["resource"]`` for an element holding a whole resource (``contained``).
BindingRule = list[str]


class BindingData(TypedDict):
    """The enumerable required bindings (bindings.json) and the value sets they name."""

    #: value set canonical url (without version) -> code system url -> codes, in the order
    #: the code system defines them (every value set of terminology.json).
    valueSets: dict[str, dict[str, list[str]]]
    #: resource, datatype or backbone path (``Patient.contact``) -> JSON element name
    #: (choice types expanded: ``valueQuantity``) -> rule. Types without a binding anywhere
    #: below them are absent.
    types: dict[str, dict[str, BindingRule]]


def _load(name: str) -> Any:
    return orjson.loads((_HERE / name).read_bytes())


@cache
def resource_types() -> frozenset[str]:
    """Names of the concrete R4B resource types (``Patient``, ``Observation``…)."""
    return frozenset(_load("resource_types.json"))


class TerminologyData(TypedDict):
    """terminology.json: what the package enumerates, for bindings and token modifiers."""

    #: value set canonical url (without version) -> code system url -> codes.
    valueSets: dict[str, dict[str, list[str]]]
    #: complete code system url -> code -> the code it is nested under ("" at the top).
    codeSystems: dict[str, dict[str, str]]


@cache
def bindings() -> BindingData:
    return {"valueSets": terminology()["valueSets"], "types": _load("bindings.json")["types"]}


@cache
def terminology() -> TerminologyData:
    data: TerminologyData = _load("terminology.json")
    return data


@cache
def search_parameters() -> list[dict[str, Any]]:
    """Every SearchParameter of the package, sorted by url.

    Keys: url, code, name, base (list), type, expression (FHIRPath that fhirpathpy can
    evaluate, or None), xpathUsage, target, component (list of {definition, expression}),
    modifier, comparator, multipleOr, multipleAnd, chain; ``original_expression`` where the
    published expression was rewritten.
    """
    data: list[dict[str, Any]] = _load("search_parameters.json")
    return data


@cache
def compartments() -> dict[str, dict[str, list[str]]]:
    """Compartment (``Patient``…) -> resource type -> the parameters that link it there."""
    data: dict[str, dict[str, list[str]]] = _load("compartments.json")
    return data


@cache
def choice_elements() -> dict[str, tuple[str, ...]]:
    """Choice element names (``value``, ``effective``...) and the types their keys end with."""
    return {name: tuple(types) for name, types in _load("choice_elements.json").items()}


@cache
def summary_elements() -> dict[str, frozenset[str]]:
    """Each resource type's top-level elements that ``_summary=true`` keeps."""
    return {t: frozenset(names) for t, names in _load("summary_elements.json").items()}
