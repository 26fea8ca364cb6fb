"""Search index extraction: the values a resource is found by, from the official expressions.

:class:`SearchIndexer` compiles each SearchParameter's FHIRPath expression once. Most
expressions are plain paths (``Patient.identifier``, ``Observation.value.ofType(Quantity)``,
``Encounter.subject.where(resolve() is Patient)``); those are compiled into a direct walk of
the JSON, which is tens of times faster than a FHIRPath engine. Anything else is evaluated by
fhirpathpy with its R4 model. Extracted values become rows of the typed ``search_*`` tables.

Which parameter types are indexed is set by :data:`INDEXED_TYPES`; the search issue widens it.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from records.definitions import search_parameters

logger = logging.getLogger(__name__)

#: Parameter types whose values are written to the index tables.
INDEXED_TYPES = frozenset({"token"})

Node = Any
Evaluator = Callable[[dict[str, Any]], list[Node]]

_STEP = r"[a-z][A-Za-z0-9]*(?:\.ofType\([A-Za-z]+\))?"
_SIMPLE_PART = re.compile(
    rf"^\(?(?P<type>[A-Z][A-Za-z]+)(?P<steps>(?:\.{_STEP})*)\)?"
    r"(?:\.where\(resolve\(\) is (?P<target>[A-Z][A-Za-z]+)\))?"
    r"(?:\.where\(system='(?P<system>[a-z\-]+)'\))?$"
)
_OF_TYPE = re.compile(r"^(?P<name>[a-z][A-Za-z0-9]*)\.ofType\((?P<type>[A-Za-z]+)\)$")


@functools.lru_cache(maxsize=65536)
def normalize_text(value: str) -> str:
    """Lower case with accents removed: how string and :text searches compare."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _children(nodes: Iterable[Node], name: str, of_type: str | None) -> Iterator[Node]:
    for node in nodes:
        if not isinstance(node, dict):
            continue
        if of_type is not None:
            key = name + of_type[0].upper() + of_type[1:]
            value = node.get(key)
        else:
            value = node.get(name)
            if value is None:
                # A choice element (value[x]) named without its type: take whichever is there.
                for key, candidate in node.items():
                    if key.startswith(name) and len(key) > len(name) and key[len(name)].isupper():
                        value = candidate
                        break
        if value is None:
            continue
        if isinstance(value, list):
            yield from value
        else:
            yield value


def _compile_simple(resource_type: str, expression: str) -> Evaluator | None:
    """A JSON walk for an expression made of plain paths joined by ``|``; None if it isn't."""
    walks: list[tuple[list[tuple[str, str | None]], str | None, str | None]] = []
    for part in (p.strip() for p in expression.split("|")):
        match = _SIMPLE_PART.match(part)
        if match is None:
            return None
        if match.group("type") != resource_type:
            continue  # this part of a shared expression is about another resource type
        steps: list[tuple[str, str | None]] = []
        for step in re.findall(_STEP, match.group("steps")):
            of_type = _OF_TYPE.match(step)
            steps.append((of_type["name"], of_type["type"]) if of_type else (step, None))
        walks.append((steps, match.group("target"), match.group("system")))
    if not walks:
        return None

    def evaluate(resource: dict[str, Any]) -> list[Node]:
        found: list[Node] = []
        for steps, target, system in walks:
            nodes: Iterable[Node] = (resource,)
            for name, of_type in steps:
                nodes = list(_children(nodes, name, of_type))
            for node in nodes:
                if target is not None:
                    reference = node.get("reference", "") if isinstance(node, dict) else ""
                    if not reference.startswith(f"{target}/") and f"/{target}/" not in reference:
                        continue
                if system is not None and (
                    not isinstance(node, dict) or node.get("system") != system
                ):
                    continue
                found.append(node)
        return found

    return evaluate


def _compile_fhirpath(expression: str) -> Evaluator:
    import fhirpathpy
    from fhirpathpy.models import models

    compiled = fhirpathpy.compile(expression, model=models["r4"])

    def evaluate(resource: dict[str, Any]) -> list[Node]:
        try:
            return list(compiled(resource, {}))
        except Exception:  # an expression the engine cannot run on this data indexes nothing
            logger.debug("FHIRPath %r failed on %s", expression, resource.get("resourceType"))
            return []

    return evaluate


def _token_rows(node: Node) -> list[dict[str, Any]]:
    """Token values of a Coding, CodeableConcept, Identifier, ContactPoint, code or boolean."""
    if isinstance(node, bool):
        return [{"system": None, "code": "true" if node else "false", "text": None}]
    if isinstance(node, (str, int)):
        return [{"system": None, "code": str(node), "text": None}]
    if not isinstance(node, dict):
        return []
    if "coding" in node or ("text" in node and "code" not in node and "value" not in node):
        text = node.get("text")
        rows = []
        for coding in node.get("coding") or ():
            rows += _token_rows(coding)
        if text:
            rows.append({"system": None, "code": None, "text": normalize_text(text)[:255]})
        return rows
    if "code" in node or ("system" in node and "value" not in node):
        display = node.get("display")
        return [
            {
                "system": node.get("system"),
                "code": node.get("code"),
                "text": normalize_text(display)[:255] if display else None,
            }
        ]
    if "value" in node:  # Identifier, ContactPoint
        type_text = (
            (node.get("type") or {}).get("text") if isinstance(node.get("type"), dict) else None
        )
        return [
            {
                "system": node.get("system"),
                "code": str(node["value"])[:255],
                "text": normalize_text(type_text)[:255] if type_text else None,
            }
        ]
    return []


_ROWS: dict[str, Callable[[Node], list[dict[str, Any]]]] = {"token": _token_rows}


#: Common parameters answered from the ``resources`` table, not from index rows.
_IN_RESOURCES_TABLE = frozenset({"_id", "_lastUpdated"})


@dataclass(frozen=True, slots=True)
class _Parameter:
    code: str
    type: str
    evaluate: Evaluator


class SearchIndexer:
    """Turns a resource into index rows for every search parameter of its type."""

    def __init__(self, indexed_types: frozenset[str] = INDEXED_TYPES) -> None:
        self._by_type: dict[str, list[_Parameter]] = {}
        #: Parameters of every resource type (_tag, _security, _profile, _source).
        self._common: list[_Parameter] = []
        for definition in search_parameters():
            if definition["type"] not in indexed_types or not definition.get("expression"):
                continue
            if definition["code"] in _IN_RESOURCES_TABLE:
                continue
            for base in definition["base"]:
                if base in ("Resource", "DomainResource"):
                    evaluate = _compile_simple("Resource", definition["expression"])
                    assert evaluate is not None, definition["expression"]
                    self._common.append(
                        _Parameter(definition["code"], definition["type"], evaluate)
                    )
                    continue
                evaluate = _compile_simple(base, definition["expression"])
                if evaluate is None:
                    evaluate = _compile_fhirpath(definition["expression"])
                self._by_type.setdefault(base, []).append(
                    _Parameter(definition["code"], definition["type"], evaluate)
                )

    def parameters(self, resource_type: str) -> dict[str, str]:
        """The indexed parameter codes of a type and their search types."""
        return {p.code: p.type for p in self._parameters_of(resource_type)}

    def _parameters_of(self, resource_type: str) -> list[_Parameter]:
        return self._common + self._by_type.get(resource_type, [])

    def extract(
        self, resource_type: str, resource: dict[str, Any]
    ) -> dict[str, list[dict[str, Any]]]:
        rows: dict[str, list[dict[str, Any]]] = {}
        for parameter in self._parameters_of(resource_type):
            seen: set[tuple[Any, ...]] = set()
            for node in parameter.evaluate(resource):
                for row in _ROWS[parameter.type](node):
                    key = tuple(row.values())
                    if key in seen:
                        continue
                    seen.add(key)
                    row["param"] = parameter.code
                    rows.setdefault(parameter.type, []).append(row)
        return rows
