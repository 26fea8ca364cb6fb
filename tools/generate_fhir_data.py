"""Generate ``records/definitions/*.json`` from the official HL7 FHIR R4B core package.

The server must run without ``../shared`` (a clinic's machine has no copy of the HL7
package), so the few definitions it needs are distilled here into small JSON files that are
committed with the code:

- ``resource_types.json``: the concrete resource type names;
- ``bindings.json``: required code bindings that can be enumerated from the package, and the
  way down to them, for :mod:`records.validation.bindings`;
- ``terminology.json``: every value set the package fully enumerates, and the concept
  hierarchy of every complete code system in it, for the bindings and for the token search
  modifiers ``:in``, ``:not-in``, ``:below`` and ``:above``;
- ``search_parameters.json``: every SearchParameter, with FHIRPath expressions rewritten
  where fhirpathpy cannot evaluate them as published, and composite components whose
  expressions the package swapped put back with their definitions;
- ``compartments.json``: the compartment definitions (resource type -> parameter codes);
- ``summary_elements.json``: each resource type's top-level elements marked isSummary, as
  JSON names, for ``_summary=true``;
- ``choice_elements.json``: names of choice elements (``value[x]``) and their types, so the
  search indexer looks for ``valueQuantity`` only where a choice can be.

Run ``python tools/generate_fhir_data.py [--package PATH] [--out DIR]``. The output is
deterministic (sorted keys, package order otherwise), so running it twice gives identical
bytes and a stale committed file shows up as a diff.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PACKAGE = PROJECT_ROOT.parent / "shared" / "fhir" / "hl7.fhir.r4b.core-4.3.0.tgz"
DEFAULT_OUT = PROJECT_ROOT / "records" / "definitions"

Json = dict[str, Any]

# Elements the binding checker never walks: extensions are open by design (their values carry
# whatever the extension's own definition says), Meta has no required binding, and ``id`` is a
# plain string.
UNWALKED_ELEMENTS = frozenset({"extension", "modifierExtension", "meta", "id"})
UNWALKED_TYPES = frozenset({"Extension", "Meta"})
# Primitive types whose value is itself the code, so a required binding applies to the value.
CODE_LIKE_TYPES = frozenset({"code", "string", "uri", "canonical", "url", "id"})
# Datatypes whose required binding applies to the codes inside them; each is a rule kind.
CODED_TYPES = frozenset({"Coding", "CodeableConcept"})

RESOURCE_KINDS = (
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "SearchParameter",
    "CompartmentDefinition",
)


# -- reading the package ---------------------------------------------------------------


@dataclass
class Package:
    """The parts of the core package this script reads, keyed as the package keys them."""

    structure_definitions: list[Json] = field(default_factory=list)
    value_sets: dict[str, Json] = field(default_factory=dict)
    code_systems: dict[str, Json] = field(default_factory=dict)
    search_parameters: list[Json] = field(default_factory=list)
    compartment_definitions: list[Json] = field(default_factory=list)


def read_package(path: Path) -> Package:
    """Read the definitions straight out of the .tgz, in file-name order."""
    package = Package()
    files: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as archive:
        # Read in archive order: going back in a gzip stream means decompressing it again.
        for member in archive:
            if member.isfile() and _wanted(member.name):
                stream = archive.extractfile(member)
                if stream is not None:
                    files[member.name] = stream.read()
    for name in sorted(files):
        resource = json.loads(files[name])
        kind = resource.get("resourceType")
        if kind == "StructureDefinition":
            package.structure_definitions.append(resource)
        elif kind == "ValueSet":
            package.value_sets[resource["url"]] = resource
        elif kind == "CodeSystem":
            package.code_systems[resource["url"]] = resource
        elif kind == "SearchParameter":
            package.search_parameters.append(resource)
        elif kind == "CompartmentDefinition":
            package.compartment_definitions.append(resource)
    return package


def _wanted(name: str) -> bool:
    if not name.startswith("package/") or not name.endswith(".json"):
        return False
    base = name.removeprefix("package/")
    return "/" not in base and base.split("-", 1)[0] in RESOURCE_KINDS


# -- resource types --------------------------------------------------------------------


def concrete_types(package: Package, kind: str) -> list[Json]:
    """Base definitions (not profiles, not abstract) of one kind, sorted by type name."""
    found = [
        sd
        for sd in package.structure_definitions
        if sd.get("kind") == kind
        and sd.get("derivation") == "specialization"
        and not sd.get("abstract", False)
    ]
    return sorted(found, key=lambda sd: sd["type"])


def build_choice_elements(package: Package) -> dict[str, list[str]]:
    """Choice element name -> the type names its JSON keys end with (value -> Quantity, ...)."""
    choices: dict[str, set[str]] = {}
    for kind in ("resource", "complex-type"):
        for sd in concrete_types(package, kind):
            for element in sd.get("snapshot", {}).get("element", []):
                path = element.get("path", "")
                if not path.endswith("[x]"):
                    continue
                name = path.rsplit(".", 1)[-1][: -len("[x]")]
                for type_ in element.get("type", []):
                    code = type_["code"]
                    choices.setdefault(name, set()).add(code[0].upper() + code[1:])
    return {name: sorted(types) for name, types in sorted(choices.items())}


def build_summary_elements(package: Package) -> dict[str, list[str]]:
    """Resource type -> the JSON names of its top-level elements that are in the summary."""
    summaries: dict[str, list[str]] = {}
    for sd in concrete_types(package, "resource"):
        names: list[str] = []
        for element in sd.get("snapshot", {}).get("element", []):
            path = element.get("path", "")
            if path.count(".") != 1 or not element.get("isSummary"):
                continue
            name = path.split(".", 1)[1]
            if name.endswith("[x]"):
                stem = name[: -len("[x]")]
                names += [
                    stem + t["code"][0].upper() + t["code"][1:] for t in element.get("type", [])
                ]
            else:
                names.append(name)
        summaries[sd["type"]] = names
    return summaries


# -- value sets ------------------------------------------------------------------------


class NotEnumerable(Exception):
    """The value set cannot be listed from the package alone; the message says why."""


@dataclass
class ValueSetExpander:
    """Lists value sets whose content the package fully defines, as system -> codes."""

    package: Package
    _done: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    _failed: dict[str, str] = field(default_factory=dict)

    def expand(self, url: str, _stack: tuple[str, ...] = ()) -> dict[str, list[str]]:
        if url in self._done:
            return self._done[url]
        if url in self._failed:
            raise NotEnumerable(self._failed[url])
        if url in _stack:
            raise NotEnumerable(f"value set {url} imports itself")
        try:
            result = self._expand(url, (*_stack, url))
        except NotEnumerable as e:
            self._failed[url] = str(e)
            raise
        self._done[url] = result
        return result

    def _expand(self, url: str, stack: tuple[str, ...]) -> dict[str, list[str]]:
        value_set = self.package.value_sets.get(url)
        if value_set is None:
            raise NotEnumerable("not in the package")
        compose = value_set.get("compose")
        if not compose:
            raise NotEnumerable("has no compose")
        included: dict[str, list[str]] = {}
        for include in compose.get("include", []):
            for system, codes in self._part(include, stack).items():
                _extend_unique(included.setdefault(system, []), codes)
        for exclude in compose.get("exclude", []):
            for system, codes in self._part(exclude, stack).items():
                dropped = set(codes)
                if system in included:
                    included[system] = [c for c in included[system] if c not in dropped]
        return {system: codes for system, codes in included.items() if codes}

    def _part(self, part: Json, stack: tuple[str, ...]) -> dict[str, list[str]]:
        """One include or exclude: the intersection of its system part and its value sets."""
        if part.get("filter"):
            raise NotEnumerable(f"filters on {part.get('system')}")
        sets: list[dict[str, list[str]]] = []
        system = part.get("system")
        if system is not None:
            if "concept" in part:
                # The listed concepts are the enumeration, whether or not the package holds
                # their code system (units-of-time lists UCUM codes, for instance).
                sets.append({system: _unique(c["code"] for c in part["concept"])})
            else:
                sets.append({system: self._whole_code_system(system)})
        for imported in part.get("valueSet", []):
            sets.append(self.expand(_unversioned(imported), stack))
        if not sets:
            raise NotEnumerable("an include names neither a system nor a value set")
        result = sets[0]
        for other in sets[1:]:
            result = {
                s: [c for c in codes if c in set(other.get(s, ()))] for s, codes in result.items()
            }
        return result

    def _whole_code_system(self, system: str) -> list[str]:
        code_system = self.package.code_systems.get(system)
        if code_system is None:
            raise NotEnumerable(f"code system {system} is not in the package")
        if code_system.get("content") != "complete":
            raise NotEnumerable(
                f"code system {system} is not complete ({code_system.get('content')})"
            )
        return _unique(_concept_codes(code_system.get("concept", [])))


def _concept_codes(concepts: list[Json]) -> Iterator[str]:
    # Hierarchical code systems nest concepts; every level is a member of the system.
    for concept in concepts:
        yield concept["code"]
        yield from _concept_codes(concept.get("concept", []))


def _unique(codes: Iterable[str]) -> list[str]:
    out: list[str] = []
    _extend_unique(out, codes)
    return out


def _extend_unique(target: list[str], codes: Iterable[str]) -> None:
    seen = set(target)
    for code in codes:
        if code not in seen:
            seen.add(code)
            target.append(code)


def _unversioned(canonical: str) -> str:
    return canonical.split("|", 1)[0]


def build_terminology(package: Package) -> Json:
    """The terminology.json document: enumerable value sets and code system hierarchies.

    Shape::

        {"valueSets": {vs_url: {system: [code, ...]}},
         "codeSystems": {cs_url: {code: parent_code or ""}}}

    Only complete code systems are listed (a fragment cannot say what is below a code); a
    code's parent is the concept it is nested in, which the package's hierarchical systems
    (all ``is-a`` or unstated) use for subsumption. No concept in the package has a
    ``parent`` or ``subsumedBy`` property, so nesting is the whole hierarchy.
    """
    expander = ValueSetExpander(package)
    value_sets: dict[str, dict[str, list[str]]] = {}
    for url in sorted(package.value_sets):
        try:
            value_sets[url] = expander.expand(url)
        except NotEnumerable:
            continue
    code_systems: dict[str, dict[str, str]] = {}
    for url in sorted(package.code_systems):
        code_system = package.code_systems[url]
        if code_system.get("content") != "complete":
            continue
        parents: dict[str, str] = {}
        _concept_parents(code_system.get("concept", []), "", parents)
        code_systems[url] = parents
    return {"valueSets": value_sets, "codeSystems": code_systems}


def _concept_parents(concepts: list[Json], parent: str, out: dict[str, str]) -> None:
    for concept in concepts:
        out.setdefault(concept["code"], parent)
        _concept_parents(concept.get("concept", []), concept["code"], out)


# -- bindings --------------------------------------------------------------------------


@dataclass
class BindingStats:
    """What the binding extraction kept and skipped, for the summary the script prints."""

    kept_elements: list[str] = field(default_factory=list)
    skipped_elements: dict[str, list[str]] = field(default_factory=dict)  # by value set
    skipped_value_sets: dict[str, str] = field(default_factory=dict)  # url -> reason
    unsupported_types: list[str] = field(default_factory=list)
    value_sets: int = 0


def build_bindings(package: Package, stats: BindingStats) -> Json:
    """The bindings.json document: per type, the rules to walk an instance.

    Shape::

        {"types": {type_name: {json_name: rule}}}

    The value sets the rules name are in terminology.json (see :func:`build_terminology`).

    ``type_name`` is a resource, a complex datatype, or a backbone element path such as
    ``Patient.contact``. A rule is ``["code", vs_url]``, ``["Coding", vs_url]`` or
    ``["CodeableConcept", vs_url]`` for a bound element, ``["node", type_name]`` to descend
    into a type that (transitively) holds a binding, or ``["resource"]`` for an element that
    holds a whole resource (``contained``, ``Bundle.entry.resource``), looked up by its own
    ``resourceType``. Choice elements appear under their JSON names (``valueQuantity``).
    """
    expander = ValueSetExpander(package)
    resources = concrete_types(package, "resource")
    datatypes = concrete_types(package, "complex-type")
    datatype_names = {sd["type"] for sd in datatypes}

    nodes: dict[str, dict[str, list[str]]] = {}
    for sd in [*resources, *datatypes]:
        if sd["type"] in UNWALKED_TYPES:
            continue
        _add_nodes(sd, nodes, datatype_names, expander, stats)

    relevant = _relevant_nodes(nodes)
    types = {
        name: {key: rule for key, rule in rules.items() if rule[0] != "node" or rule[1] in relevant}
        for name, rules in nodes.items()
        if name in relevant
    }
    used = {
        rule[1]
        for rules in types.values()
        for rule in rules.values()
        if rule[0] not in ("node", "resource")
    }
    for url in sorted(used):
        expander.expand(url)  # every value set a rule names is enumerable, or it has no rule
    stats.value_sets = len(used)
    return {"types": types}


def _add_nodes(
    sd: Json,
    nodes: dict[str, dict[str, list[str]]],
    datatype_names: set[str],
    expander: ValueSetExpander,
    stats: BindingStats,
) -> None:
    elements = sd["snapshot"]["element"]
    # Elements with children of their own: backbone elements (typed BackboneElement, or
    # Element inside datatypes such as Timing.repeat).
    parents = {e["path"].rsplit(".", 1)[0] for e in elements if "." in e["path"]}
    root = sd["type"]
    nodes.setdefault(root, {})
    for element in elements:
        path: str = element["path"]
        if path == root:
            continue
        parent, name = path.rsplit(".", 1)
        if name in UNWALKED_ELEMENTS:
            continue
        rules = nodes.setdefault(parent, {})
        type_codes = [t["code"] for t in element.get("type", [])]
        if "contentReference" in element:
            # e.g. Questionnaire.item.item re-uses Questionnaire.item: point at that node.
            rules[name] = ["node", element["contentReference"].split("#", 1)[1]]
            continue
        if path in parents:
            nodes.setdefault(path, {})
            rules[name] = ["node", path]
            continue
        value_set = _required_value_set(element, expander, stats)
        if value_set is not None:
            stats.kept_elements.append(path)
        for type_code in type_codes:
            json_name = _json_name(name, type_code)
            if value_set is not None:
                if type_code in CODE_LIKE_TYPES:
                    rules[json_name] = ["code", value_set]
                    continue
                if type_code in CODED_TYPES:
                    rules[json_name] = [type_code, value_set]
                    continue
                stats.unsupported_types.append(f"{path} ({type_code})")
            if type_code == "Resource":
                rules[json_name] = ["resource"]
            elif type_code in datatype_names and type_code not in UNWALKED_TYPES:
                rules[json_name] = ["node", type_code]


def _required_value_set(
    element: Json, expander: ValueSetExpander, stats: BindingStats
) -> str | None:
    binding = element.get("binding")
    if not binding or binding.get("strength") != "required" or "valueSet" not in binding:
        return None
    url = _unversioned(binding["valueSet"])
    try:
        expander.expand(url)
    except NotEnumerable as e:
        stats.skipped_value_sets[url] = str(e)
        stats.skipped_elements.setdefault(url, []).append(element["path"])
        return None
    return url


def _json_name(name: str, type_code: str) -> str:
    if not name.endswith("[x]"):
        return name
    return name[:-3] + type_code[0].upper() + type_code[1:]


def _relevant_nodes(nodes: dict[str, dict[str, list[str]]]) -> set[str]:
    """Nodes that hold a binding or a resource, directly or through the nodes below them."""
    relevant = {
        name for name, rules in nodes.items() if any(rule[0] != "node" for rule in rules.values())
    }
    changed = True
    while changed:
        changed = False
        for name, rules in nodes.items():
            if name not in relevant and any(
                rule[0] == "node" and rule[1] in relevant for rule in rules.values()
            ):
                relevant.add(name)
                changed = True
    return relevant


# -- search parameters -----------------------------------------------------------------

_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'")
_AS_OPERATOR = re.compile(r"\s+as\s+((?:(?:FHIR|System)\.)?[A-Za-z_]\w*)")
_AS_FUNCTION = re.compile(r"\.as\(")
# Operators that bind tighter than ``as``: a left operand containing one needs brackets, which
# the published expressions never do, so meeting one means this rewriter needs work.
_TIGHTER_OPERATORS = frozenset({"+", "-", "*", "/", "&", "div", "mod"})
# An unqualified ``DateTime`` names the FHIRPath System type, which a FHIR ``dateTime`` element
# is not, so ``value.as(DateTime)`` (Observation-code-value-date) never matches in fhirpathpy.
# The FHIR primitive is meant; casts to these names are written with the FHIR type instead.
_SYSTEM_TO_FHIR_PRIMITIVE = {
    "Boolean": "boolean",
    "String": "string",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}
_AS_FUNCTION_TYPE = re.compile(r"\.as\(\s*((?:(?:FHIR|System)\.)?[A-Za-z_]\w*)\s*\)")


def rewrite_as_casts(expression: str) -> str:
    """Rewrite ``X as T`` and ``X.as(T)`` to ``X.ofType(T)``.

    fhirpathpy raises "Expected singleton on left side of 'as'" when X yields several items
    (``Observation.component.value as Quantity`` on an Observation with two components),
    while a search index wants every matching item; ``ofType`` filters instead.
    ``(X as T)`` loses its now useless brackets, and a System type name used for a FHIR
    primitive (``DateTime``) becomes the FHIR one (``dateTime``).
    """
    text = _replace_as_function(expression)
    while True:
        masked = _masked(text)
        match = _AS_OPERATOR.search(masked)
        if match is None:
            return text
        start = _left_operand_start(masked, match.start())
        left = text[start : match.start()]
        replacement = f"{left}.ofType({_fhir_type(match.group(1))})"
        end = match.end()
        if (
            start > 0
            and masked[start - 1] == "("
            and end < len(masked)
            and masked[end] == ")"
            and (start < 2 or not (masked[start - 2].isalnum() or masked[start - 2] in "._"))
        ):
            start, end = start - 1, end + 1
        text = text[:start] + replacement + text[end:]


def _replace_as_function(expression: str) -> str:
    masked = _masked(expression)
    out = expression
    for match in reversed(list(_AS_FUNCTION_TYPE.finditer(masked))):
        out = out[: match.start()] + f".ofType({_fhir_type(match.group(1))})" + out[match.end() :]
    if _AS_FUNCTION.search(_masked(out)):
        raise ValueError(f"cannot rewrite an as() call whose argument is not a type: {expression}")
    return out


def _fhir_type(name: str) -> str:
    return _SYSTEM_TO_FHIR_PRIMITIVE.get(name, name)


def _masked(expression: str) -> str:
    """The expression with string literal contents blanked, so operators in them are ignored."""
    return _STRING_LITERAL.sub(lambda m: "'" + "_" * (len(m.group()) - 2) + "'", expression)


def _left_operand_start(masked: str, end: int) -> int:
    depth = 0
    i = end - 1
    while i >= 0:
        char = masked[i]
        if char in ")]":
            depth += 1
        elif char in "([":
            if depth == 0:
                return i + 1
            depth -= 1
        elif depth == 0 and (char in "|,=<>~!" or char.isspace()):
            before = masked[:i].rstrip().rsplit(None, 1)
            if char.isspace() and before and before[-1] in _TIGHTER_OPERATORS:
                raise ValueError(f"cannot rewrite 'as' after an arithmetic operator: {masked}")
            return i + 1
        i -= 1
    return 0


@dataclass
class SearchStats:
    total: int = 0
    with_expression: int = 0
    rewritten: int = 0
    rewritten_components: int = 0
    swapped_components: list[str] = field(default_factory=list)
    compile_failures: list[str] = field(default_factory=list)


def build_search_parameters(package: Package, stats: SearchStats) -> list[Json]:
    out: list[Json] = []
    for sp in sorted(package.search_parameters, key=lambda s: s["url"]):
        stats.total += 1
        entry: Json = {
            "url": sp["url"],
            "code": sp["code"],
            "name": sp["name"],
            "base": sp.get("base", []),
            "type": sp["type"],
            "expression": None,
            "xpathUsage": sp.get("xpathUsage"),
            "target": sp.get("target", []),
            "component": [],
            "modifier": sp.get("modifier", []),
            "comparator": sp.get("comparator", []),
            "multipleOr": sp.get("multipleOr"),
            "multipleAnd": sp.get("multipleAnd"),
            "chain": sp.get("chain", []),
        }
        expression = sp.get("expression")
        if expression is not None:
            stats.with_expression += 1
            rewritten = rewrite_as_casts(expression)
            entry["expression"] = rewritten
            if rewritten != expression:
                entry["original_expression"] = expression
                stats.rewritten += 1
        for component in _components_with_their_expressions(sp, package, stats):
            original = component["expression"]
            rewritten = rewrite_as_casts(original)
            item: Json = {"definition": component["definition"], "expression": rewritten}
            if rewritten != original:
                item["original_expression"] = original
                stats.rewritten_components += 1
            if "published_expression" in component:
                item["original_expression"] = component["published_expression"]
            entry["component"].append(item)
        out.append(entry)
    _check_compiles(out, stats)
    return out


def _components_with_their_expressions(
    sp: Json, package: Package, stats: SearchStats
) -> list[Json]:
    """The composite's components, each with the expression that extracts its own value.

    DocumentReference-relationship is published with its two component expressions swapped:
    the reference component (relatesto) says ``code`` and the token one (relation) says
    ``target``. A component whose expression, below the composite's, is exactly what another
    component's definition extracts, while its own definition extracts something else, has
    been swapped; the expressions are given back to their definitions.
    """
    components = [dict(c) for c in sp.get("component", [])]
    by_url = {p["url"]: p for p in package.search_parameters}
    own = [by_url.get(c["definition"], {}).get("expression") for c in components]
    found = [f"{sp.get('expression')}.{c['expression']}" for c in components]
    if len(components) == 2 and own[0] != found[0] and (own[0], own[1]) == (found[1], found[0]):
        components[0]["expression"], components[1]["expression"] = (
            components[1]["expression"],
            components[0]["expression"],
        )
        for component, published in zip(components, found, strict=True):
            component["published_expression"] = published.rsplit(".", 1)[1]
        stats.swapped_components.append(sp["url"])
    return components


def _check_compiles(parameters: list[Json], stats: SearchStats) -> None:
    """Parse every expression strictly, then compile it with fhirpathpy and the R4 model.

    fhirpathpy's own parser ignores syntax errors (it keeps whatever tree it managed to
    build), so a strict parse with its ANTLR grammar comes first.
    """
    from fhirpathpy import compile as compile_fhirpath
    from fhirpathpy.models import models

    model = models["r4"]
    for sp in parameters:
        expressions = [sp["expression"], *(c["expression"] for c in sp["component"])]
        for expression in expressions:
            if expression is None:
                continue
            try:
                _parse_strictly(expression)
                compile_fhirpath(expression, model=model)
            except (SyntaxError, TypeError, ValueError, AttributeError, KeyError) as e:
                stats.compile_failures.append(f"{sp['url']}: {expression!r}: {e}")


def _parse_strictly(expression: str) -> None:
    from antlr4 import CommonTokenStream, InputStream, Token
    from antlr4.error.ErrorListener import ErrorListener
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    class Raise(ErrorListener):  # type: ignore[misc]
        def syntaxError(
            self, recognizer: Any, symbol: Any, line: int, column: int, msg: str, e: Any
        ) -> None:
            raise SyntaxError(f"column {column}: {msg}")

    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(Raise())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(Raise())
    parser.expression()
    if parser.getCurrentToken().type != Token.EOF:
        raise SyntaxError(f"unexpected {parser.getCurrentToken().text!r}")


# -- compartments ----------------------------------------------------------------------


def build_compartments(package: Package, skipped: list[str]) -> dict[str, dict[str, list[str]]]:
    """Compartment code -> resource type -> parameter codes that place it in the compartment.

    Only the official definitions count: the package also holds an *example*
    CompartmentDefinition whose code is ``Device`` too, which must not replace the real one.
    """
    out: dict[str, dict[str, list[str]]] = {}
    for definition in package.compartment_definitions:
        code = definition["code"]
        official = "http://hl7.org/fhir/CompartmentDefinition/" + code[0].lower() + code[1:]
        if definition["url"] != official:
            skipped.append(definition["url"])
            continue
        out[code] = {r["code"]: list(r["param"]) for r in definition["resource"] if r.get("param")}
    return out


# -- main ------------------------------------------------------------------------------


def write_json(path: Path, data: object) -> None:
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_SORT_KEYS) + b"\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--package",
        type=Path,
        default=DEFAULT_PACKAGE,
        help="the hl7.fhir.r4b.core .tgz (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="where to write the JSON files (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.package.is_file():
        print(f"error: no FHIR package at {args.package}", file=sys.stderr)
        return 2

    package = read_package(args.package)
    resource_types = [sd["type"] for sd in concrete_types(package, "resource")]
    binding_stats = BindingStats()
    bindings = build_bindings(package, binding_stats)
    search_stats = SearchStats()
    search_parameters = build_search_parameters(package, search_stats)
    skipped_compartments: list[str] = []
    compartments = build_compartments(package, skipped_compartments)
    terminology = build_terminology(package)

    if search_stats.compile_failures:
        for failure in search_stats.compile_failures:
            print(f"error: fhirpathpy cannot compile {failure}", file=sys.stderr)
        return 1
    if binding_stats.unsupported_types:
        print(
            "error: required bindings on types the checker cannot read: "
            + ", ".join(binding_stats.unsupported_types),
            file=sys.stderr,
        )
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "resource_types.json", resource_types)
    write_json(args.out / "bindings.json", bindings)
    write_json(args.out / "terminology.json", terminology)
    write_json(args.out / "search_parameters.json", search_parameters)
    write_json(args.out / "compartments.json", compartments)
    write_json(args.out / "summary_elements.json", build_summary_elements(package))
    choice_elements = build_choice_elements(package)
    write_json(args.out / "choice_elements.json", choice_elements)

    print(f"resource types: {len(resource_types)}")
    skipped = binding_stats.skipped_elements
    print(
        f"required bindings: {len(binding_stats.kept_elements)} elements checked against "
        f"{binding_stats.value_sets} expanded value sets, walked through "
        f"{len(bindings['types'])} types and backbone elements; "
        f"{sum(map(len, skipped.values()))} elements skipped, their "
        f"{len(skipped)} value sets not enumerable from the package:"
    )
    for url, reason in sorted(binding_stats.skipped_value_sets.items()):
        print(f"  {url} ({reason}): {', '.join(skipped[url])}")
    print(
        f"search parameters: {search_stats.total} "
        f"({search_stats.with_expression} with an expression), "
        f"{search_stats.rewritten} expressions and {search_stats.rewritten_components} "
        f"component expressions rewritten from 'as' to ofType(); all parse strictly and compile "
        f"with fhirpathpy's R4 model; component expressions put back with their definitions in "
        f"{', '.join(search_stats.swapped_components) or 'none'}"
    )
    print(
        f"compartments: {', '.join(f'{c} ({len(m)} types)' for c, m in compartments.items())}"
        + (f"; skipped {', '.join(skipped_compartments)}" if skipped_compartments else "")
    )
    print(f"choice elements: {len(choice_elements)} names")
    hierarchical = [cs for cs in terminology["codeSystems"].values() if any(cs.values())]
    print(
        f"terminology: {len(terminology['valueSets'])} enumerable value sets of "
        f"{len(package.value_sets)}; {len(terminology['codeSystems'])} complete code systems, "
        f"{len(hierarchical)} of them hierarchical"
    )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
