"""Reading a FHIR search query: parameters, modifiers, chains, prefixes and result options.

``parse_search`` turns ``name:modifier=value,value`` pairs into :class:`Clause` objects (each
an AND term whose values are OR alternatives) and the result parameters into
:class:`ResultOptions`. What the server cannot do is either refused (conditional criteria,
``Prefer: handling=strict``) or listed in ``ignored`` for an OperationOutcome entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from records.datetimes import date_range
from records.definitions import resource_types
from records.indexing import SearchIndexer
from records.outcome import FhirError
from records.search import terminology
from records.search.cursor import Cursor

#: Numbers are stored with 28 digits before the point and 10 after; beyond that, no match.
MAX_EXPONENT = 27
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "missing", "of-type", "in", "not-in", "below", "above"},
    "reference": {"missing", "identifier"},  # plus a resource type (subject:Patient)
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"below", "above", "missing"},
    "composite": {"missing"},
}
_RESULT = frozenset(
    {
        "_count",
        "_offset",
        "_cursor",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_format",
        "_pretty",
        "_contained",
        "_containedType",
        "_type",
    }
)
#: Common parameters answered from the resources table: of the modifiers only _id:not.
_IN_RESOURCES_TABLE = frozenset({"_id", "_lastUpdated"})
_PREFIXED = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)(?=[\d+\-])")


@dataclass(frozen=True)
class Value:
    """One alternative of a clause: the text, and the comparison prefix where the type has one."""

    text: str
    prefix: str = "eq"


@dataclass(frozen=True)
class Clause:
    """One search term: ``param[:modifier]`` on ``res_type``, possibly through a chain."""

    res_type: str
    param: str
    type: str
    modifier: str | None
    values: tuple[Value, ...]
    #: For a chained parameter (subject:Patient.name): the clause to apply to the target type,
    #: and the same clause on other target types when the chain names no type (subject.name).
    chain: Clause | None = None
    chain_alternatives: tuple[Clause, ...] = ()
    #: Target resource types of a reference parameter (or the one named by the modifier).
    targets: tuple[str, ...] = ()
    #: For _has: the referring type and the reference parameter that points back at us.
    has: tuple[str, str] | None = None
    #: For a composite (code-value-quantity): the types of its ``$``-separated components.
    component_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Include:
    source_type: str
    param: str
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass
class ResultOptions:
    count: int
    offset: int = 0
    cursor: Cursor | None = None
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param, descending)
    includes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] | None = None
    #: ``accurate`` counts every match; ``estimate`` (the default) counts up to a limit.
    total: str = "estimate"
    types: list[str] | None = None


@dataclass
class SearchQuery:
    res_type: str | None  # None for a system-level search
    clauses: list[Clause]
    options: ResultOptions
    ignored: list[str]


def _split_values(raw: str) -> list[str]:
    """Split on commas not escaped with a backslash, and unescape \\, \\$ and \\\\.

    An escaped ``\\|`` stays escaped: only the token parser knows whether a bar separates the
    system from the code (see :func:`split_token`).
    """
    values, current, escaped = [], "", False
    for char in raw:
        if escaped:
            current += ("\\" + char) if char == "|" else char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [v for v in values if v != ""]


def _value(param_type: str, text: str) -> Value:
    if param_type != "token":
        text = text.replace("\\|", "|")  # only tokens give a bar a meaning
    if param_type in ("date", "number", "quantity"):
        match = _PREFIXED.match(text)
        if match:
            return Value(text[2:], match.group(1))
    return Value(text)


def composite_parts(text: str, component_types: tuple[str, ...]) -> list[Value]:
    """A composite value's components (``code$value`` or ``code$start$end``), each with its
    prefix where its type has one."""
    parts = text.split("$", len(component_types) - 1)
    if len(parts) != len(component_types):
        example = (
            "chromosome$start$end, e.g. 1$ge22125500$le22125510"
            if len(component_types) == 3
            else "code$value, e.g. http://loinc.org|8480-6$gt140"
        )
        raise ValueError(f"a value of this composite is {example}")
    return [_value(kind, part) for kind, part in zip(component_types, parts, strict=True)]


def token_codes(modifier: str, text: str) -> terminology.Codes:
    """What a ``:in``, ``:not-in``, ``:below`` or ``:above`` value stands for, by system."""
    if modifier in ("in", "not-in"):
        return terminology.value_set_codes(text)
    system, code = split_token(text)
    if not system or not code:
        raise ValueError(f":{modifier} takes system|code, e.g. {_BELOW_EXAMPLE}")
    return (
        terminology.below(system, code) if modifier == "below" else terminology.above(system, code)
    )


_BELOW_EXAMPLE = "http://terminology.hl7.org/CodeSystem/condition-clinical|inactive"


def check_number(text: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"'{text}' is not a number") from None
    if not number.is_finite() or abs(number.adjusted()) > MAX_EXPONENT:
        raise ValueError(f"'{text}' is not a number this server can compare")
    return number


class SearchParser:
    def __init__(self, indexer: SearchIndexer, *, max_count: int, default_count: int) -> None:
        self.indexer = indexer
        self.max_count = max_count
        self.default_count = default_count

    def parse(
        self, res_type: str | None, query: str | list[tuple[str, str]], *, strict: bool
    ) -> SearchQuery:
        pairs = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else query
        options = ResultOptions(count=self.default_count)
        for name, raw in pairs:  # _type first: a system search's criteria depend on it
            if name == "_type":
                options.types = [t for t in raw.split(",") if t]
                unknown = [t for t in options.types if t not in resource_types()]
                if unknown:
                    raise FhirError.of(400, f"_type names unknown types: {', '.join(unknown)}")
        clauses: list[Clause] = []
        ignored: list[str] = []

        def refuse(problem: str) -> None:
            if strict:
                raise FhirError.of(400, problem, code="not-supported")
            ignored.append(problem)

        for name, raw in pairs:
            try:
                if name in _RESULT or name.startswith(("_include", "_revinclude")):
                    self._result(res_type, name, raw, options, refuse)
                    continue
                types = [res_type] if res_type else (options.types or [])
                if not types:
                    refuse(f"'{name}' needs _type on a search of the whole server")
                    continue
                for one_type in types:
                    clause = self._clause(one_type, name, raw)
                    if clause is None:
                        refuse(f"'{name}' is not a supported search parameter of {one_type}")
                    else:
                        clauses.append(clause)
            except ValueError as error:
                raise FhirError.of(400, f"Search parameter {name}: {error}", code="value") from None
        if options.cursor is not None and len(options.cursor.values) != len(options.sort):
            raise FhirError.of(400, "_cursor belongs to a search with another _sort", code="value")
        return SearchQuery(res_type, clauses, options, ignored)

    # -- criteria --------------------------------------------------------------------------

    def _clause(self, res_type: str, name: str, raw: str) -> Clause | None:
        if name.startswith("_has:"):
            return self._has(res_type, name, raw)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        definition = self.indexer.definition(res_type, code)
        if definition is None:
            return None
        param_type = definition["type"]
        targets = tuple(definition.get("target") or ())
        if dot:  # a chain: subject:Patient.name=王
            if param_type != "reference":
                raise ValueError(f"only reference parameters can be chained, not {code}")
            if modifier and not modifier[:1].isupper():
                raise ValueError(
                    f"a chain names a resource type (subject:Patient.name), not :{modifier}"
                )
            chosen = [modifier] if modifier else list(targets)
            chained = [self._clause(t, rest, raw) for t in chosen if t]
            chained = [c for c in chained if c is not None]
            if not chained:
                return None
            # Without a type (subject.name) the chain runs through every target type that has
            # the chained parameter.
            return Clause(
                res_type,
                code,
                param_type,
                None,
                (),
                chain=chained[0],
                chain_alternatives=tuple(chained[1:]),
                targets=tuple(c.res_type for c in chained),
            )
        if modifier and code in _IN_RESOURCES_TABLE:
            if (code, modifier) != ("_id", "not"):
                raise ValueError(f"modifier :{modifier} is not supported on {code}")
        elif modifier:
            allowed = _MODIFIERS.get(param_type, set())
            if param_type == "reference" and modifier[:1].isupper():
                targets = (modifier,)
            elif modifier not in allowed:
                raise ValueError(
                    f"modifier :{modifier} is not supported on a {param_type} parameter"
                )
        values = tuple(_value(param_type, v) for v in _split_values(raw))
        if not values:
            raise ValueError("no value given")
        if modifier == "of-type" and any(len(_UNESCAPED_BAR.split(v.text)) != 3 for v in values):
            raise ValueError(":of-type takes type-system|type-code|identifier-value")
        if modifier == "missing":
            if values[0].text not in ("true", "false"):
                raise ValueError(":missing takes true or false")
            return Clause(res_type, code, param_type, modifier, values, targets=targets)
        if param_type == "composite":
            component_types = self.indexer.composites[(res_type, code)]
            for value in values:
                for kind, part in zip(
                    component_types, composite_parts(value.text, component_types), strict=True
                ):
                    if kind in ("quantity", "number"):
                        check_number(part.text.split("|")[0])
                    elif kind == "date":
                        date_range(part.text)
            if component_types[0] == "reference":
                targets = self.indexer.component_targets(res_type, code)
            return Clause(
                res_type,
                code,
                param_type,
                modifier or None,
                values,
                targets=targets,
                component_types=component_types,
            )
        if modifier in ("in", "not-in", "below", "above"):
            for value in values:
                token_codes(modifier, value.text)
        if param_type in ("number", "quantity"):
            for value in values:
                check_number(value.text.split("|")[0])
        if param_type == "date" or code == "_lastUpdated":
            for value in values:
                date_range(value.text)
        return Clause(res_type, code, param_type, modifier or None, values, targets=targets)

    def _has(self, res_type: str, name: str, raw: str) -> Clause | None:
        # _has:Observation:patient:code=1234-5  (possibly nested: _has:A:p:_has:B:q:r)
        parts = name.split(":", 3)
        if len(parts) != 4:
            raise ValueError("_has takes the form _has:Type:reference:parameter")
        _, referring_type, reference_param, rest = parts
        definition = self.indexer.definition(referring_type, reference_param)
        if definition is None or definition["type"] != "reference":
            raise ValueError(f"{referring_type}.{reference_param} is not a reference parameter")
        inner = self._clause(referring_type, rest, raw)
        if inner is None:
            return None
        return Clause(
            res_type,
            "_has",
            "special",
            None,
            (),
            chain=inner,
            has=(referring_type, reference_param),
        )

    # -- result parameters -----------------------------------------------------------------

    def _result(
        self, res_type: str | None, name: str, raw: str, options: ResultOptions, refuse: Any
    ) -> None:
        if name == "_count":
            count = int(raw) if raw.lstrip("-").isdigit() else None
            if count is None or count < 0:
                raise ValueError("_count must be a whole number, 0 or more")
            options.count = min(count, self.max_count)
        elif name == "_offset":
            offset = int(raw) if raw.isdigit() else None
            if offset is None:
                raise ValueError("_offset must be a whole number, 0 or more")
            options.offset = offset
        elif name == "_cursor":
            options.cursor = Cursor.decode(raw)
        elif name == "_sort":
            for key in (k.strip() for k in raw.split(",") if k.strip()):
                descending = key.startswith("-")
                code = key.lstrip("-")
                definition = self.indexer.definition(res_type, code) if res_type else None
                if code in ("_id", "_lastUpdated") or (
                    definition is not None and definition["type"] not in ("composite", "special")
                ):
                    options.sort.append((code, descending))
                else:
                    refuse(
                        f"_sort by '{code}' is not supported for {res_type or 'a system search'}"
                    )
        elif name.startswith(("_include", "_revinclude")):
            reverse = name.startswith("_revinclude")
            iterate = name.endswith((":iterate", ":recurse"))
            parts = raw.split(":")
            if len(parts) < 2:
                raise ValueError(f"{name} takes Type:parameter[:targetType]")
            source, param = parts[0], parts[1]
            target = parts[2] if len(parts) > 2 else None
            if (
                param != "*"
                and (self.indexer.definition(source, param) or {}).get("type") != "reference"
            ):
                refuse(f"{name}={raw}: {source}.{param} is not a reference parameter")
                return
            options.includes.append(Include(source, param, target, iterate, reverse))
        elif name == "_summary":
            if raw not in ("true", "false", "text", "data", "count"):
                raise ValueError("_summary is one of true, text, data, count, false")
            options.summary = None if raw == "false" else raw
        elif name == "_elements":
            options.elements = [e.strip() for e in raw.split(",") if e.strip()]
        elif name == "_total":
            if raw not in ("none", "estimate", "accurate"):
                raise ValueError("_total is one of none, estimate, accurate")
            options.total = raw
        elif name == "_type":
            pass  # read before the criteria
        elif name in ("_contained", "_containedType"):
            refuse(f"{name} is not supported")


_UNESCAPED_BAR = re.compile(r"(?<!\\)\|")


def split_token(text: str) -> tuple[str | None, str]:
    """``system|code`` → (system, code); ``code`` → (None, code); ``\\|`` is a literal bar."""
    parts = _UNESCAPED_BAR.split(text, maxsplit=1)
    if len(parts) == 1:
        return None, parts[0].replace("\\|", "|")
    return parts[0].replace("\\|", "|"), parts[1].replace("\\|", "|")
