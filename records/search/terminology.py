"""The codes a token modifier stands for: ``:in`` / ``:not-in`` a value set, ``:below`` /
``:above`` a code.

The server has no terminology service. What it knows is what the FHIR R4B package defines
(``records/definitions/terminology.json``): the value sets the package enumerates, and the
concept hierarchy of its complete code systems (``condition-clinical``: ``resolved`` and
``remission`` are below ``inactive``). A value set or code system outside that — SNOMED CT,
LOINC, ICD-10, a ValueSet stored on this server — is refused with a message saying so, as
the search page asks of a server that cannot honour a modifier; it never silently matches
nothing.
"""

from __future__ import annotations

import functools

from records.definitions import terminology

#: system -> the codes of it that a value of the clause stands for.
Codes = dict[str, frozenset[str]]

_OUTSIDE = (
    "this server knows the value sets and code systems of the FHIR R4B package only "
    "(SNOMED CT, LOINC, ICD-10 and value sets stored here need a terminology server)"
)


def value_set_codes(canonical: str) -> Codes:
    """The expansion of the value set ``canonical`` (a version after ``|`` is ignored)."""
    url = canonical.split("|", 1)[0]
    expansion = terminology()["valueSets"].get(url)
    if expansion is None:
        raise ValueError(f"cannot expand the value set '{url}': {_OUTSIDE}")
    return {system: frozenset(codes) for system, codes in expansion.items()}


def below(system: str, code: str) -> Codes:
    """``code`` and every code under it in ``system``'s hierarchy."""
    _known(system, code)
    children = _children(system)
    found = {code}
    frontier = [code]
    while frontier:
        nested = [c for parent in frontier for c in children.get(parent, ())]
        frontier = [c for c in nested if c not in found]
        found.update(frontier)
    return {system: frozenset(found)}


def above(system: str, code: str) -> Codes:
    """``code`` and every code it is under in ``system``'s hierarchy."""
    parents = _known(system, code)
    found = {code}
    while parents[code] and parents[code] not in found:
        code = parents[code]
        found.add(code)
    return {system: frozenset(found)}


def _known(system: str, code: str) -> dict[str, str]:
    parents = terminology()["codeSystems"].get(system)
    if parents is None:
        raise ValueError(f"cannot look below or above codes of '{system}': {_OUTSIDE}")
    if code not in parents:
        raise ValueError(f"'{code}' is not a code of {system}")
    return parents


@functools.cache
def _children(system: str) -> dict[str, tuple[str, ...]]:
    """Parent code -> its child codes, in one code system."""
    children: dict[str, list[str]] = {}
    for child, parent in terminology()["codeSystems"][system].items():
        if parent:
            children.setdefault(parent, []).append(child)
    return {parent: tuple(codes) for parent, codes in children.items()}
