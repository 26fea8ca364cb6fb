"""Required code bindings: codes that must come from an official value set.

``fhir.resources`` checks structure and formats but lets ``Patient.gender = "robot"`` through.
This module walks a resource's JSON along the paths that ``records/definitions/bindings.json``
lists (generated from the HL7 package: every required binding whose value set the package
enumerates, and the datatypes and backbone elements that lead to one) and reports each code
outside its value set as a ``code-invalid`` issue naming the element, e.g.
``Patient.telecom[1].system``. Contained resources, and resources inside a Bundle or
Parameters, are checked against their own type.

It runs on every write, so the JSON rules are compiled once into nested dictionaries of
tuples and frozensets, and the walk touches only the elements that can lead to a binding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from records.definitions import bindings, resource_types
from records.outcome import Issue

__all__ = ["check_bindings"]

#: How many allowed codes a diagnostic lists before pointing at the value set instead.
MAX_LISTED_CODES = 10

# Rule kinds, as small ints so the walk compares them cheaply.
_NODE = 0  # descend into a datatype or backbone element: target is its rules
_CODE = 1  # a code-typed value bound to a value set: target is a _ValueSet
_CODING = 2
_CODEABLE_CONCEPT = 3
_RESOURCE = 4  # a whole resource (contained, Bundle.entry.resource): target is rules by type

_KINDS = {"code": _CODE, "Coding": _CODING, "CodeableConcept": _CODEABLE_CONCEPT}

_Rules = dict[str, tuple[int, Any]]


@dataclass(frozen=True, slots=True)
class _ValueSet:
    """One expanded value set, in the forms the checks need."""

    url: str
    codes: frozenset[str]  # every code, whatever its system: what a plain ``code`` may hold
    by_system: dict[str, frozenset[str]]
    allowed: str  # the allowed codes as the diagnostics list them
    systems: str  # the code systems, for diagnostics

    @classmethod
    def of(cls, url: str, systems: dict[str, list[str]]) -> _ValueSet:
        ordered = list(dict.fromkeys(code for codes in systems.values() for code in codes))
        allowed = ", ".join(ordered[:MAX_LISTED_CODES])
        if len(ordered) > MAX_LISTED_CODES:
            allowed += f" and {len(ordered) - MAX_LISTED_CODES} more (see {url})"
        return cls(
            url=url,
            codes=frozenset(ordered),
            by_system={system: frozenset(codes) for system, codes in systems.items()},
            allowed=allowed,
            systems=", ".join(systems),
        )


@cache
def _rules_by_resource_type() -> dict[str, _Rules]:
    """Compile bindings.json: rule lists become dicts of (kind, target) with targets resolved."""
    data = bindings()
    value_sets = {url: _ValueSet.of(url, systems) for url, systems in data["valueSets"].items()}
    # Create every node first: backbone elements can refer to themselves
    # (Questionnaire.item.item) or to an earlier node, so targets are shared, not copied.
    nodes: dict[str, _Rules] = {name: {} for name in data["types"]}
    by_resource_type = {name: nodes[name] for name in resource_types() if name in nodes}
    for name, rules in data["types"].items():
        node = nodes[name]
        for element, rule in rules.items():
            kind = rule[0]
            if kind == "node":
                node[element] = (_NODE, nodes[rule[1]])
            elif kind == "resource":
                node[element] = (_RESOURCE, by_resource_type)
            else:
                node[element] = (_KINDS[kind], value_sets[rule[1]])
    return by_resource_type


def check_bindings(resource: dict[str, Any]) -> list[Issue]:
    """Every code in ``resource`` that breaks a required binding, as ``code-invalid`` issues.

    Elements the definitions do not know are ignored here: structure is checked elsewhere.
    """
    issues: list[Issue] = []
    resource_type = resource.get("resourceType")
    if isinstance(resource_type, str):
        rules = _rules_by_resource_type().get(resource_type)
        if rules is not None:
            _walk(rules, resource, resource_type, issues)
    return issues


# Where the walk is: the root resource type, or (parent, element name, list index or None).
# Formatting "Patient.contact[0].telecom[1]" for every element visited costs more than the
# whole check, so the text is only built for an issue.
_Location = str | tuple["_Location", str, int | None]


def _expression(location: _Location) -> str:
    parts: list[str] = []
    while not isinstance(location, str):
        location, name, index = location
        parts.append(f".{name}" if index is None else f".{name}[{index}]")
    return location + "".join(reversed(parts))


def _walk(rules: _Rules, element: dict[str, Any], at: _Location, issues: list[Issue]) -> None:
    # The two common rules (descend, plain code) are handled inline: this loop is the hot path.
    for name, value in element.items():
        rule = rules.get(name)
        if rule is None:
            continue
        kind, target = rule
        if type(value) is list:
            for index, item in enumerate(value):
                if kind == _NODE:
                    if type(item) is dict:
                        _walk(target, item, (at, name, index), issues)
                elif kind == _CODE:
                    if type(item) is not str or item not in target.codes:
                        issues.append(_invalid_code(item, _expression((at, name, index)), target))
                else:
                    _check_other(kind, target, item, (at, name, index), issues)
        elif kind == _NODE:
            if type(value) is dict:
                _walk(target, value, (at, name, None), issues)
        elif kind == _CODE:
            if type(value) is not str or value not in target.codes:
                issues.append(_invalid_code(value, _expression((at, name, None)), target))
        else:
            _check_other(kind, target, value, (at, name, None), issues)


def _check_other(kind: int, target: Any, value: Any, at: _Location, issues: list[Issue]) -> None:
    if type(value) is not dict:
        return
    if kind == _RESOURCE:
        rules = target.get(value.get("resourceType"))
        if rules is not None:
            _walk(rules, value, at, issues)
    elif kind == _CODING:
        _check_coding(value, at, target, issues)
    else:
        _check_codeable_concept(value, at, target, issues)


def _check_coding(
    coding: dict[str, Any], at: _Location, vs: _ValueSet, issues: list[Issue]
) -> None:
    code = coding.get("code")
    if code is None:
        # A Coding with only a display or extensions states no code to check.
        return
    system = coding.get("system")
    allowed = vs.by_system.get(system) if type(system) is str else None
    if allowed is None:
        # Every value set kept in bindings.json is fully enumerated, hence closed: a code
        # from any other system (or from no stated system) cannot be in it.
        issues.append(_foreign_system(system, code, _expression(at), vs))
    elif type(code) is not str or code not in allowed:
        issues.append(_invalid_code(code, _expression((at, "code", None)), vs, system=system))


def _check_codeable_concept(
    concept: dict[str, Any], at: _Location, vs: _ValueSet, issues: list[Issue]
) -> None:
    # Lenient on purpose: a CodeableConcept may carry translations in other code systems
    # beside the bound one, and may hold only text where no code fits (real data, the
    # official examples and Synthea all do this). So only a coding that claims one of the
    # value set's own systems is held to it; a concept with no such coding is accepted.
    codings = concept.get("coding")
    if type(codings) is not list:
        return
    for index, coding in enumerate(codings):
        if type(coding) is not dict:
            continue
        system = coding.get("system")
        allowed = vs.by_system.get(system) if type(system) is str else None
        if allowed is None or "code" not in coding:
            continue
        code = coding["code"]
        if type(code) is not str or code not in allowed:
            location = ((at, "coding", index), "code", None)
            issues.append(_invalid_code(code, _expression(location), vs, system=system))


def _invalid_code(value: Any, path: str, vs: _ValueSet, *, system: str | None = None) -> Issue:
    shown = f"'{value}'" if type(value) is str else f"{value!r} (not a code string)"
    where = f" in system {system}" if system else ""
    return Issue(
        diagnostics=f"{shown} is not a valid code for {path}{where}; allowed: {vs.allowed}",
        code="code-invalid",
        expression=(path,),
    )


def _foreign_system(system: Any, code: Any, path: str, vs: _ValueSet) -> Issue:
    if system is None:
        problem = f"code '{code}' has no system"
    else:
        problem = f"system '{system}' is not one the value set uses"
    return Issue(
        diagnostics=(
            f"{path} must be coded from {vs.url}, but {problem}; use system {vs.systems} "
            f"with one of: {vs.allowed}"
        ),
        code="code-invalid",
        expression=(f"{path}.system",),
    )
