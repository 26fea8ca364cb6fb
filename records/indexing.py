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
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from records import pinyin
from records.datetimes import EARLIEST, LATEST, date_range
from records.definitions import choice_elements, compartments, search_parameters

logger = logging.getLogger(__name__)

#: Parameter types whose values are written to the index tables.
INDEXED_TYPES = frozenset(
    {"token", "string", "date", "reference", "quantity", "number", "uri", "composite"}
)

Node = Any
#: Index rows of ``identifier:of-type`` are stored under the parameter code plus this suffix.
OF_TYPE_SUFFIX = ":of-type"
Evaluator = Callable[[dict[str, Any]], list[Node]]

_STEP = r"(?:extension\('[^']+'\)|[a-z][A-Za-z0-9]*(?:\.ofType\([A-Za-z]+\))?)"
_SIMPLE_PART = re.compile(
    rf"^\(?(?P<type>[A-Z][A-Za-z]+)(?P<steps>(?:\.{_STEP})*)\)?"
    r"(?:\.where\(resolve\(\) is (?P<target>[A-Z][A-Za-z]+)\))?"
    r"(?:\.where\(system='(?P<system>[a-z\-]+)'\))?$"
)
_EXTENSION = re.compile(r"^extension\('(?P<url>[^']+)'\)$")
_OF_TYPE = re.compile(r"^(?P<name>[a-z][A-Za-z0-9]*)\.ofType\((?P<type>[A-Za-z]+)\)$")


@functools.lru_cache(maxsize=65536)
def normalize_text(value: str) -> str:
    """Lower case with accents removed: how string and :text searches compare."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@dataclass(frozen=True, slots=True)
class _Step:
    """One step of a simple path: an element, a typed choice element, or an extension by url."""

    name: str
    #: JSON keys to look in, first found wins: ``valueQuantity`` for ``value.ofType(Quantity)``;
    #: the name, then every typed key, for a name that is a choice element somewhere.
    keys: tuple[str, ...]
    extension_url: str | None = None

    @classmethod
    def parse(cls, text: str) -> _Step:
        extension = _EXTENSION.match(text)
        if extension:
            return cls("extension", ("extension",), extension["url"])
        of_type = _OF_TYPE.match(text)
        if of_type:
            kind = of_type["type"]
            return cls(of_type["name"], (of_type["name"] + kind[0].upper() + kind[1:],))
        # A name is a choice element in some types and a plain one in others (subject, code).
        return cls(text, (text, *(text + kind for kind in choice_elements().get(text, ()))))

    def children(self, nodes: Iterable[Node]) -> list[Node]:
        # A list built in one loop, not a generator chained per step: every resource written
        # and every AuditEvent walks some twenty of these paths.
        found: list[Node] = []
        url = self.extension_url
        for node in nodes:
            if not isinstance(node, dict):
                continue
            for key in self.keys:
                value = node.get(key)
                if value is None:
                    continue
                items = value if isinstance(value, list) else (value,)
                if url is None:
                    found.extend(items)
                else:
                    for item in items:
                        if isinstance(item, dict) and item.get("url") == url:
                            # An extension stands for its value[x], as search sees it.
                            found.append(
                                next((v for k, v in item.items() if k.startswith("value")), item)
                            )
                break
        return found


class _Walks:
    """A JSON walk for an expression made of plain paths joined by ``|``: each path's nodes
    that name their ``target`` type (a reference) and ``system`` (a coding), when given."""

    __slots__ = ("roots", "walks")

    def __init__(self, walks: list[tuple[list[_Step], str | None, str | None]]) -> None:
        self.walks = walks
        #: The keys of the resource where the paths start (None: one starts at the resource
        #: itself). A resource with none of them has nothing to index for the parameter and
        #: is not walked: 12,945 of the 26,879 parameters of three Synthea records and fifty
        #: AuditEvents, a tenth of their indexing time.
        self.roots: frozenset[str] | None = (
            None
            if any(not steps for steps, _, _ in walks)
            else frozenset(key for steps, _, _ in walks for key in steps[0].keys)
        )

    def __call__(self, resource: dict[str, Any]) -> list[Node]:
        found: list[Node] = []
        for steps, target, system in self.walks:
            nodes: list[Node] = [resource]
            for step in steps:
                nodes = step.children(nodes)
                if not nodes:
                    break
            if target is None and system is None:
                found.extend(nodes)
                continue
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


def _compile_simple(resource_type: str, expression: str) -> _Walks | None:
    """A JSON walk for an expression made of plain paths joined by ``|``; None if it isn't."""
    walks: list[tuple[list[_Step], str | None, str | None]] = []
    for part in (p.strip() for p in expression.split("|")):
        match = _SIMPLE_PART.match(part)
        if match is None:
            return None
        if match.group("type") != resource_type:
            continue  # this part of a shared expression is about another resource type
        steps = [_Step.parse(step) for step in re.findall(_STEP, match.group("steps"))]
        walks.append((steps, match.group("target"), match.group("system")))
    return _Walks(walks) if walks else None


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
        return [{"system": None, "code": str(node)[:255], "text": None}]
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
        kind = node.get("type")
        type_text = kind.get("text") if isinstance(kind, dict) else None
        value = str(node["value"])[:255]
        rows = [
            {
                "system": node.get("system"),
                "code": value,
                "text": normalize_text(type_text)[:255] if type_text else None,
            }
        ]
        # identifier:of-type=type-system|type-code|value: rows of their own, keyed by the
        # identifier's type coding, with the value where :text rows keep display text.
        for coding in kind.get("coding") or () if isinstance(kind, dict) else ():
            if isinstance(coding, dict) and coding.get("code"):
                rows.append(
                    {
                        "system": coding.get("system"),
                        "code": coding["code"],
                        "text": value,
                        OF_TYPE_SUFFIX: True,
                    }
                )
        return rows
    return []


_NAME_PARTS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")
_SKIPPED_KEYS = frozenset({"system", "url", "extension", "id", "reference", "use", "type"})


def _strings_of(node: Node) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        if "family" in node or "given" in node:
            parts: tuple[str, ...] = _NAME_PARTS
        elif "line" in node or "city" in node or "district" in node:
            parts = _ADDRESS_PARTS
        else:
            parts = tuple(k for k in node if k not in _SKIPPED_KEYS)
        for key in parts:
            value = node.get(key)
            if isinstance(value, list):
                for item in value:
                    yield from _strings_of(item)
            elif value is not None:
                yield from _strings_of(value)


def _string_rows(node: Node) -> list[dict[str, Any]]:
    rows = []
    for text in _strings_of(node):
        if text:
            rows.append({"value_normalized": normalize_text(text)[:255], "value_exact": text})
    return rows


def _phonetic_rows(node: Node) -> list[dict[str, Any]]:
    """Pinyin keys of a Chinese name (full and initials), or its letters for other names."""
    if not isinstance(node, dict):
        return []
    family = node.get("family") if isinstance(node.get("family"), str) else None
    given = "".join(g for g in node.get("given") or () if isinstance(g, str))
    text = node.get("text") if isinstance(node.get("text"), str) else (family or "") + given
    keys = set(pinyin.name_keys(text, family))
    if not keys:
        keys = {pinyin.query_key(part) for part in (family or "", given, text) if part}
    return [{"value_normalized": k[:255], "value_exact": text} for k in sorted(keys) if k]


def _date_rows(node: Node) -> list[dict[str, Any]]:
    try:
        if isinstance(node, str):
            start, end = date_range(node)
        elif isinstance(node, dict) and ("start" in node or "end" in node):  # Period
            start = date_range(node["start"])[0] if node.get("start") else EARLIEST
            end = date_range(node["end"])[1] if node.get("end") else LATEST
        elif isinstance(node, dict) and "event" in node:  # Timing
            return [row for event in node["event"] for row in _date_rows(event)]
        else:
            return []
    except ValueError:
        return []
    return [{"start": start, "end": end}]


def _reference_rows(node: Node) -> list[dict[str, Any]]:
    if isinstance(node, str):  # a canonical
        return [{"target_type": None, "target_id": None, "url": node.split("|")[0]}]
    if not isinstance(node, dict) or not isinstance(node.get("reference"), str):
        return []
    reference = node["reference"].split("/_history/")[0]
    if reference.startswith("#"):
        return []  # contained: found through the container, not the index
    parts = reference.split("/")
    if len(parts) == 2 and parts[0][:1].isupper():
        return [{"target_type": parts[0], "target_id": parts[1], "url": None}]
    if (
        reference.startswith(("http://", "https://"))
        and len(parts) >= 2
        and parts[-2][:1].isupper()
    ):
        return [{"target_type": parts[-2], "target_id": parts[-1], "url": reference}]
    return [{"target_type": None, "target_id": None, "url": reference}]


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        return None
    # Beyond what the index column holds (28 digits before the point) a value is not indexed.
    if not number.is_finite() or abs(number.adjusted()) > 27:
        return None
    return number


def _quantity_rows(node: Node) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return []
    value = _decimal(node.get("value"))
    if value is None:
        return []
    if "currency" in node:  # Money
        return [
            {
                "value": value,
                "system": "urn:iso:std:iso:4217",
                "code": node["currency"],
                "unit": None,
            }
        ]
    return [
        {
            "value": value,
            "system": node.get("system"),
            "code": (node.get("code") or None) and str(node["code"])[:64],
            "unit": (node.get("unit") or None) and str(node["unit"])[:64],
        }
    ]


def _number_rows(node: Node) -> list[dict[str, Any]]:
    value = _decimal(node)
    return [] if value is None else [{"value": value}]


def _uri_rows(node: Node) -> list[dict[str, Any]]:
    return [{"uri": node[:2048]}] if isinstance(node, str) and node else []


_ROWS: dict[str, Callable[[Node], list[dict[str, Any]]]] = {
    "token": _token_rows,
    "string": _string_rows,
    "date": _date_rows,
    "reference": _reference_rows,
    "quantity": _quantity_rows,
    "number": _number_rows,
    "uri": _uri_rows,
}


def _composite_token(node: Node) -> list[dict[str, Any]]:
    return [
        {"value_system": t["system"], "value_code": t["code"]}
        for t in _token_rows(node)
        if t["code"]
    ]


def _composite_quantity(node: Node) -> list[dict[str, Any]]:
    return [
        {
            "value_number": q["value"],
            "value_system": q["system"],
            "value_code": q["code"],
            "value_text": q["unit"],
        }
        for q in _quantity_rows(node)
    ]


def _composite_date(node: Node) -> list[dict[str, Any]]:
    return [{"value_start": d["start"], "value_end": d["end"]} for d in _date_rows(node)]


def _composite_string(node: Node) -> list[dict[str, Any]]:
    return [{"value_text": r["value_normalized"]} for r in _string_rows(node)]


def _composite_number(node: Node) -> list[dict[str, Any]]:
    return [{"value_number": n["value"]} for n in _number_rows(node)]


def composite_reference_key(target_type: str | None, target_id: str | None, url: str | None) -> str:
    """How a reference is kept as the first component of a composite: its URL when it has
    one (an absolute reference), else ``Type/id``."""
    return url or f"{target_type}/{target_id}"


def _composite_first_token(node: Node) -> list[dict[str, Any]]:
    return [{"system": t["system"], "code": t["code"]} for t in _token_rows(node) if t["code"]]


def _composite_first_reference(node: Node) -> list[dict[str, Any]]:
    return [
        {"system": None, "code": composite_reference_key(**r)[:255]}
        for r in _reference_rows(node)
        if r["url"] or r["target_id"]
    ]


#: The first component of a composite: a token (code, combo-code...) or, in
#: DocumentReference's relationship, a reference.
_COMPOSITE_FIRST_ROWS: dict[str, Callable[[Node], list[dict[str, Any]]]] = {
    "token": _composite_first_token,
    "reference": _composite_first_reference,
}
#: The second component, in the value columns its type needs.
_COMPOSITE_VALUE_ROWS: dict[str, Callable[[Node], list[dict[str, Any]]]] = {
    "token": _composite_token,
    "quantity": _composite_quantity,
    "date": _composite_date,
    "string": _composite_string,
    "number": _composite_number,
}
#: The third component of the three-part composites (MolecularSequence coordinates).
_COMPOSITE_THIRD_ROWS: dict[str, Callable[[Node], list[dict[str, Any]]]] = {
    "number": lambda node: [{"third_number": n["value"]} for n in _number_rows(node)],
}
_EMPTY_COMPOSITE_VALUE = dict.fromkeys(
    (
        "value_system",
        "value_code",
        "value_number",
        "value_start",
        "value_end",
        "value_text",
        "third_number",
    )
)


#: Common parameters answered from the ``resources`` table, not from index rows.
_IN_RESOURCES_TABLE = frozenset({"_id", "_lastUpdated"})


#: Index rows of a Reference's own ``identifier`` (for ``subject:identifier=``) are token
#: rows stored under the parameter code plus this suffix.
IDENTIFIER_SUFFIX = ":identifier"
CompositeRows = Callable[[Node, dict[str, Any]], list[dict[str, Any]]]


def _reference_identifier_rows(node: Node) -> list[dict[str, Any]]:
    """The token row of a Reference.identifier (a logical reference), if it has one."""
    identifier = node.get("identifier") if isinstance(node, dict) else None
    if not isinstance(identifier, dict) or identifier.get("value") is None:
        return []
    return [
        {"system": identifier.get("system"), "code": str(identifier["value"])[:255], "text": None}
    ]


@dataclass(frozen=True, slots=True)
class _Parameter:
    code: str
    type: str
    evaluate: Evaluator
    #: How a composite turns each element (and the resource, for components that start at
    #: ``%resource``) into rows; other types go by their type.
    composite_rows: CompositeRows | None = None
    #: The resource's keys one of which it must have for the parameter to find anything
    #: (:attr:`_Walks.roots`); None: it is evaluated on every resource (a FHIRPath).
    roots: frozenset[str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if isinstance(self.evaluate, _Walks):
            object.__setattr__(self, "roots", self.evaluate.roots)

    def rows(self, node: Node, resource: dict[str, Any]) -> list[dict[str, Any]]:
        if self.composite_rows is not None:
            return self.composite_rows(node, resource)
        if self.code == "phonetic":
            return _phonetic_rows(node)
        return _ROWS[self.type](node)


def _composite_makers(
    kinds: tuple[str, ...],
) -> list[Callable[[Node], list[dict[str, Any]]]] | None:
    """Row makers for each component of a composite of these types, or None if unsupported."""
    if len(kinds) not in (2, 3) or kinds[0] not in _COMPOSITE_FIRST_ROWS:
        return None
    if len(kinds) == 2:
        second = _COMPOSITE_VALUE_ROWS.get(kinds[1])
        return None if second is None else [_COMPOSITE_FIRST_ROWS[kinds[0]], second]
    if kinds[1:] != ("number", "number"):
        return None
    return [
        _COMPOSITE_FIRST_ROWS[kinds[0]],
        _COMPOSITE_VALUE_ROWS["number"],
        _COMPOSITE_THIRD_ROWS["number"],
    ]


def _compile_component(base: str, expression: str) -> tuple[Evaluator, bool] | None:
    """A composite component's walk, and whether it starts at the resource (``%resource``)
    rather than at the composite's element."""
    parts = [p.strip() for p in expression.split("|")]
    if all(p.startswith("%resource.") for p in parts):
        rooted = " | ".join(f"{base}.{p.removeprefix('%resource.')}" for p in parts)
        walk = _compile_simple(base, rooted)
        return None if walk is None else (walk, True)
    walk = _compile_simple("Element", " | ".join(f"Element.{p}" for p in parts))
    return None if walk is None else (walk, False)


def _composite_rows(
    components: list[tuple[Evaluator, bool, Callable[[Node], list[dict[str, Any]]]]],
) -> CompositeRows:
    """Rows of one composite element: every combination of its components' values."""

    def rows(element: Node, resource: dict[str, Any]) -> list[dict[str, Any]]:
        combined: list[dict[str, Any]] = [{**_EMPTY_COMPOSITE_VALUE}]
        for walk, from_root, maker in components:
            values = [v for node in walk(resource if from_root else element) for v in maker(node)]
            combined = [{**row, **value} for row in combined for value in values]
            if not combined:
                break
        return combined

    return rows


class SearchIndexer:
    """Turns a resource into index rows for every search parameter of its type."""

    def __init__(self, indexed_types: frozenset[str] = INDEXED_TYPES) -> None:
        self._by_type: dict[str, list[_Parameter]] = {}
        #: Parameters of every resource type (_tag, _security, _profile, _source).
        self._common: list[_Parameter] = []
        #: (base type, code) -> the SearchParameter definition, for the search engine.
        self.definitions: dict[tuple[str, str], dict[str, Any]] = {}
        self._codes: dict[str, dict[str, str]] = {}
        #: (base type, code) of an indexed composite -> the types of its components.
        self.composites: dict[tuple[str, str], tuple[str, ...]] = {}
        for definition in search_parameters():
            for base in definition["base"]:
                self.definitions.setdefault((base, definition["code"]), definition)
            if definition["type"] not in indexed_types or not definition.get("expression"):
                continue
            if definition["code"] in _IN_RESOURCES_TABLE:
                continue
            if definition["type"] == "composite":
                self._add_composite(definition)
                continue
            for base in definition["base"]:
                if base in ("Resource", "DomainResource"):
                    evaluate = _compile_simple("Resource", definition["expression"])
                    assert evaluate is not None, definition["expression"]
                    self._common.append(
                        _Parameter(definition["code"], definition["type"], evaluate)
                    )
                    continue
                evaluate = _compile_simple(base, definition["expression"]) or _compile_fhirpath(
                    definition["expression"]
                )
                self._by_type.setdefault(base, []).append(
                    _Parameter(definition["code"], definition["type"], evaluate)
                )

    def _add_composite(self, definition: dict[str, Any]) -> None:
        """Index a composite: a token or reference, then one value or two numbers.

        That is every composite of R4B: 41 of a token and a value, four MolecularSequence
        coordinates (a chromosome or sequence id, then a start and an end) and
        DocumentReference's relationship (a reference and a token). Each row holds the
        components of one element, so a value never pairs with another element's code.
        """
        by_url = {d["url"]: d for d in search_parameters()}
        components = definition.get("component") or []
        kinds = tuple(by_url.get(c["definition"], {}).get("type") or "" for c in components)
        makers = _composite_makers(kinds)
        if makers is None:
            logger.warning("composite %s of %s is not indexed", definition["url"], kinds)
            return
        for base in definition["base"]:
            elements = _compile_simple(base, definition["expression"])
            walks = [_compile_component(base, c["expression"]) for c in components]
            if elements is None or any(walk is None for walk in walks):
                logger.warning("composite %s has expressions beyond a path", definition["url"])
                continue
            parts = [
                (walk, from_root, maker)
                for (walk, from_root), maker in zip(filter(None, walks), makers, strict=True)
            ]
            self.composites[(base, definition["code"])] = kinds
            self._by_type.setdefault(base, []).append(
                _Parameter(definition["code"], "composite", elements, _composite_rows(parts))
            )

    def component_targets(self, resource_type: str, code: str) -> tuple[str, ...]:
        """The target types of a composite's first component, when it is a reference."""
        composite = self.definitions[(resource_type, code)]
        first = next(
            d for d in search_parameters() if d["url"] == composite["component"][0]["definition"]
        )
        return tuple(first.get("target") or ())

    def definition(self, resource_type: str, code: str) -> dict[str, Any] | None:
        """The SearchParameter ``code`` of a type (or of every type), if it is indexed."""
        if code not in self.parameters(resource_type) and code not in ("_id", "_lastUpdated"):
            return None
        return (
            self.definitions.get((resource_type, code))
            or self.definitions.get(("Resource", code))
            or self.definitions.get(("DomainResource", code))
        )

    def parameters(self, resource_type: str) -> dict[str, str]:
        """The indexed parameter codes of a type and their search types."""
        known = self._codes.get(resource_type)
        if known is None:  # asked on every search clause: computed once per type
            known = {p.code: p.type for p in self._parameters_of(resource_type)}
            self._codes[resource_type] = known
        return known

    def _parameters_of(self, resource_type: str) -> list[_Parameter]:
        return self._common + self._by_type.get(resource_type, [])

    def extract(
        self, resource_type: str, resource: dict[str, Any]
    ) -> dict[str, list[dict[str, Any]]]:
        rows: dict[str, list[dict[str, Any]]] = {}
        present = resource.keys()
        for parameter in self._parameters_of(resource_type):
            if parameter.roots is not None and present.isdisjoint(parameter.roots):
                continue
            seen: set[tuple[Any, ...]] = set()
            for node in parameter.evaluate(resource):
                for row in parameter.rows(node, resource):
                    key = tuple(row.values())
                    if key in seen:
                        continue
                    seen.add(key)
                    row["param"] = parameter.code
                    if row.pop(OF_TYPE_SUFFIX, False):
                        row["param"] += OF_TYPE_SUFFIX
                    rows.setdefault(parameter.type, []).append(row)
                if parameter.type == "reference":
                    for row in _reference_identifier_rows(node):
                        key = ("identifier", *row.values())
                        if key not in seen:
                            seen.add(key)
                            row["param"] = parameter.code + IDENTIFIER_SUFFIX
                            rows.setdefault("token", []).append(row)
        owners = self._patient_compartment_owners(resource_type, resource, rows.get("reference"))
        if owners:
            rows["compartment"] = [{"param": "Patient", "owner_id": o} for o in sorted(owners)]
        return rows

    @staticmethod
    def _patient_compartment_owners(
        resource_type: str, resource: dict[str, Any], references: list[dict[str, Any]] | None
    ) -> set[str]:
        """The patients in whose compartment this resource is (CompartmentDefinition Patient)."""
        owners = set()
        if resource_type == "Patient" and isinstance(resource.get("id"), str):
            owners.add(resource["id"])
        links = compartments().get("Patient", {}).get(resource_type) or []
        for row in references or ():
            if row["param"] in links and row["target_type"] == "Patient" and row["target_id"]:
                owners.add(row["target_id"])
        return owners
