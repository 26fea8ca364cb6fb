"""SQL conditions for search clauses, over the typed index tables.

Each clause becomes a condition on one ``resources`` row (``r``): an EXISTS over the index
rows of that parameter, with the OR of its values inside. Chains and ``_has`` nest the same
conditions in uncorrelated subqueries over ``resources``. Dates compare as ranges, numbers
and quantities with the implicit precision of the value the client wrote, as the FHIR search
page says.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    ColumnElement,
    Text,
    and_,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import FromClause
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from health.core.clock import utcnow
from records import pinyin
from records.access import FULL_ACCESS, RecordAccess
from records.datetimes import date_range
from records.indexing import (
    IDENTIFIER_SUFFIX,
    OF_TYPE_SUFFIX,
    composite_reference_key,
    normalize_text,
)
from records.search.parse import (
    Clause,
    Value,
    check_number,
    composite_parts,
    split_token,
    token_codes,
)
from records.tables import SEARCH_TABLES, resources, search_reference, search_token

_ESCAPE = "\\"
_UNESCAPED_BAR_SPLIT = re.compile(r"(?<!\\)\|").split


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _matching(table: FromClause, clause: Clause, condition_: ColumnElement[bool]) -> Any:
    """The rids whose index rows for ``clause``'s parameter meet ``condition_``, uncorrelated.

    Chains and ``_has`` use it as ``IN (...)``, so the database starts from the few rows that
    match the inner condition instead of probing every outer row.
    """
    return (
        select(table.c.rid)
        .where(table.c.res_type == clause.res_type, table.c.param == clause.param, condition_)
        .correlate(None)
    )


def _has_row(
    table: FromClause,
    r: FromClause,
    clause: Clause,
    condition_: ColumnElement[bool],
    probe: bool = False,
) -> Any:
    """EXISTS an index row of ``r`` for the clause's parameter that meets ``condition_``.

    Correlated on purpose: with ORDER BY and LIMIT the database may walk the resources in
    order and stop at the page's end, which beats building the set of every match when a
    condition (value > 170) matches half the table.
    """
    rows = (
        select(literal(1))
        .select_from(table)
        .where(
            table.c.rid == r.c.rid,
            table.c.res_type == clause.res_type,
            table.c.param == clause.param,
            condition_,
        )
    )
    return _probed(rows, probe).exists()


def _probed(rows: Any, probe: bool) -> Any:
    """``rows``, as a test of each outer row when ``probe``: ``OFFSET 0`` keeps PostgreSQL
    from turning the EXISTS into a join or a hash of every matching index row."""
    return rows.offset(0) if probe else rows


def condition(
    clause: Clause,
    r: FromClause,
    base_url: str,
    access: RecordAccess = FULL_ACCESS,
    *,
    probe: bool = False,
) -> ColumnElement[bool]:
    """The SQL condition that ``r`` matches ``clause``.

    Chains and ``_has`` look at other resources: only at those ``access`` lets the caller
    see, so a search cannot tell whether a hidden record matches. ``probe`` asks for index
    lookups of each row of ``r`` (a walk in rid order) rather than joins.
    """
    if clause.has is not None:
        return _has(clause, r, base_url, access)
    if clause.chain is not None:
        return _chain(clause, r, base_url, access)
    if clause.param == "_id":
        ids = r.c.res_id.in_([v.text for v in clause.values])
        return not_(ids) if clause.modifier == "not" else ids
    if clause.param == "_lastUpdated":
        return or_(*(_date_value(v, r.c.last_updated, r.c.last_updated) for v in clause.values))
    table = SEARCH_TABLES[clause.type].alias()
    if clause.modifier == "of-type":
        of_type = replace(clause, param=clause.param + OF_TYPE_SUFFIX)
        of_types = or_(*(_of_type(table, v) for v in clause.values))
        return _has_row(table, r, of_type, of_types, probe)
    if clause.modifier == "identifier":
        # Reference.identifier (a logical reference) is indexed as a token of its own.
        token = search_token.alias()
        identifier = replace(clause, param=clause.param + IDENTIFIER_SUFFIX, modifier=None)
        values = or_(*(_token(token, v, identifier, base_url) for v in clause.values))
        return _has_row(token, r, identifier, values, probe)
    if clause.modifier == "missing":
        present = _has_row(table, r, clause, true(), probe)
        if clause.type == "reference":  # a logical reference (identifier only) is there too
            logical = replace(clause, param=clause.param + IDENTIFIER_SUFFIX)
            present = or_(present, _has_row(search_token.alias(), r, logical, true(), probe))
        return not_(present) if clause.values[0].text == "true" else present
    if _by_han_grams(clause):
        return _han_name_rows(table, r, clause, probe)
    build = _BUILDERS[clause.type]
    alternatives = or_(*(build(table, v, clause, base_url) for v in clause.values))
    if clause.modifier in ("not", "not-in"):
        return not_(_has_row(table, r, clause, alternatives, probe))
    return _has_row(table, r, clause, alternatives, probe)


def _seen(access: RecordAccess, res_type: str) -> list[ColumnElement[bool]]:
    """What the caller may see of the ``res_type`` rows of ``resources`` in a chain or
    ``_has``.

    Those subqueries read ``resources`` itself, not an alias of it: they are uncorrelated,
    so SQL scoping gives their columns to their own FROM, and the policy's condition on
    ``resources`` is the one it built once for the type (an alias needed its own, 1.5-3 ms
    of Python for every chained search)."""
    condition_ = access.visible(resources, (res_type,))
    return [] if condition_ is None else [condition_]


def _chain(
    clause: Clause, r: FromClause, base_url: str, access: RecordAccess
) -> ColumnElement[bool]:
    assert clause.chain is not None
    ref = search_reference.alias()
    alternatives = []
    for chained in (clause.chain, *clause.chain_alternatives):
        targets = (
            select(resources.c.res_id)
            .where(
                resources.c.res_type == chained.res_type,
                resources.c.deleted.is_(False),
                condition(chained, resources, base_url, access),
                *_seen(access, chained.res_type),
            )
            .correlate(None)
        )
        alternatives.append(
            and_(ref.c.target_type == chained.res_type, ref.c.target_id.in_(targets))
        )
    return r.c.rid.in_(_matching(ref, clause, or_(*alternatives)))


def _has(clause: Clause, r: FromClause, base_url: str, access: RecordAccess) -> ColumnElement[bool]:
    assert clause.has is not None and clause.chain is not None
    referring_type, reference_param = clause.has
    ref = search_reference.alias()
    referred = (
        select(ref.c.target_id)
        .select_from(ref.join(resources, resources.c.rid == ref.c.rid))
        .where(
            resources.c.res_type == referring_type,
            resources.c.deleted.is_(False),
            ref.c.res_type == referring_type,
            ref.c.param == reference_param,
            ref.c.target_type == clause.res_type,
            condition(clause.chain, resources, base_url, access),
            *_seen(access, referring_type),
        )
        .correlate(None)
    )
    return r.c.res_id.in_(referred)


# -- one value of each type --------------------------------------------------------------


def _token(table: FromClause, value: Value, clause: Clause, base_url: str) -> ColumnElement[bool]:
    text = value.text
    if clause.modifier == "text":
        return table.c.text.like(_like_escape(normalize_text(text)) + "%", escape=_ESCAPE)
    if clause.modifier in ("in", "not-in", "below", "above"):
        return _token_in(table, token_codes(clause.modifier, text))
    system, code = split_token(text)
    if system is None:
        return table.c.code == code
    conditions = []
    if code:
        conditions.append(table.c.code == code)
    if system:
        conditions.append(table.c.system == system)
    else:
        conditions.append(table.c.system.is_(None))
    return and_(*conditions)


def _token_in(table: FromClause, codes: dict[str, frozenset[str]]) -> ColumnElement[bool]:
    """A token row with one of ``codes``. A row without a system is a bare ``code`` element
    (Observation.status), whose system is the one its element is bound to: it is taken to be
    of whichever system lists the code."""
    return or_(
        *(
            and_(
                table.c.code.in_(sorted(system_codes)),
                or_(table.c.system == system, table.c.system.is_(None)),
            )
            for system, system_codes in sorted(codes.items())
        )
    )


def _of_type(table: FromClause, value: Value) -> ColumnElement[bool]:
    parts = _UNESCAPED_BAR_SPLIT(value.text)
    if len(parts) != 3:
        raise ValueError(":of-type takes type-system|type-code|identifier-value")
    system, code, identifier = (p.replace("\\|", "|") for p in parts)
    return and_(table.c.system == system, table.c.code == code, table.c.text == identifier)


def _string(table: FromClause, value: Value, clause: Clause, base_url: str) -> ColumnElement[bool]:
    if clause.param == "phonetic":
        key = pinyin.query_key(value.text)
        return table.c.value_normalized.like(_like_escape(key) + "%", escape=_ESCAPE)
    normalized = normalize_text(value.text)
    if clause.modifier == "exact":
        # The normalised column is indexed; the exact text is what decides.
        return and_(table.c.value_normalized == normalized[:255], table.c.value_exact == value.text)
    needle = _like_escape(normalized)
    # Chinese names have no word boundaries: 小明 should find 马小明, so Han text matches anywhere.
    if clause.modifier == "contains" or pinyin.has_han(value.text):
        return table.c.value_normalized.like(f"%{needle}%", escape=_ESCAPE)
    return table.c.value_normalized.like(f"{needle}%", escape=_ESCAPE)


# -- Chinese names on PostgreSQL ------------------------------------------------------------

#: The string parameters whose rows PostgreSQL indexes by their Han grams (migration 0006):
#: the names of people and places, which are searched by one or two characters.
HAN_GRAM_PARAMS = frozenset({"name", "family", "given"})


def _by_han_grams(clause: Clause) -> bool:
    """A name search whose every value is Han text that matches anywhere in the name."""
    return (
        clause.type == "string"
        and clause.param in HAN_GRAM_PARAMS
        and clause.modifier in (None, "contains")
        and all(han_grams(normalize_text(v.text)) for v in clause.values)
    )


def _han_name_rows(
    table: FromClause, r: FromClause, clause: Clause, probe: bool
) -> ColumnElement[bool]:
    """EXISTS a name row of ``r`` containing one of the clause's Han values.

    On PostgreSQL each value becomes a lookup of its grams, qualified by type and parameter
    (``Patient|family|马``), in the index of ``search_han_grams(res_type, param, text)``.
    When the grams decide alone (one character, or two side by side) the row is asked
    nothing else but a cheap test that it is a name row, so PostgreSQL multiplies in no
    other selectivity: it estimates from the index's own statistics how many names hold 马
    (a third of them) or 锁 (a few), and walks the patients or looks the few up accordingly.
    Elsewhere, and for longer text, the LIKE decides.
    """
    alternatives = []
    for value in clause.values:
        normalized = normalize_text(value.text)
        grams = han_gram_keys(clause.res_type, clause.param, normalized)
        by_like = and_(
            table.c.res_type == clause.res_type,
            table.c.param == clause.param,
            table.c.value_normalized.like(f"%{_like_escape(normalized)}%", escape=_ESCAPE),
        )
        decisive = len(normalized) <= 2 and all(pinyin.has_han(c) for c in normalized)
        match = HanNameMatch if decisive else HanNameMatchChecked
        alternatives.append(
            match(
                table.c.res_type,
                table.c.param,
                table.c.value_normalized,
                literal(grams, ARRAY(Text)),
                by_like,
            )
        )
    rows = select(literal(1)).select_from(table).where(table.c.rid == r.c.rid, or_(*alternatives))
    return _probed(rows, probe).exists()


def han_gram_keys(res_type: str, param: str, normalized: str) -> list[str]:
    """The entries of ``search_han_grams``'s index (``Patient|name|小明``) that every name
    row of that type and parameter containing ``normalized`` text has."""
    return [f"{res_type}|{param}|{gram}" for gram in han_grams(normalized)]


def han_grams(text: str) -> list[str]:
    """The Han grams a text containing ``text`` must have: its pairs of adjacent Han
    characters, and each Han character that is in no such pair.

    PostgreSQL's ``search_han_grams`` (migration 0006) gives every Han character and pair of
    a stored name, so a search for 小明 reads one index entry instead of every name.
    """
    han = [pinyin.has_han(c) for c in text]
    pairs = [text[i : i + 2] for i in range(len(text) - 1) if han[i] and han[i + 1]]
    paired = {i for i in range(len(text) - 1) if han[i] and han[i + 1]}
    paired |= {i + 1 for i in paired}
    singles = [c for i, c in enumerate(text) if han[i] and i not in paired]
    return sorted(set(pairs) | set(singles))


class HanNameMatch(FunctionElement[bool]):
    """A name row holding Han text: by its grams alone on PostgreSQL, by its type,
    parameter and a LIKE elsewhere. Arguments: the res_type, param and value columns, the
    qualified grams, and the LIKE condition."""

    name = "han_name_match"
    type = Boolean()
    inherit_cache = True


class HanNameMatchChecked(HanNameMatch):
    """As :class:`HanNameMatch`, and the LIKE too on PostgreSQL: the grams of text longer
    than two characters narrow the rows without deciding."""

    name = "han_name_match_checked"
    inherit_cache = True


@compiles(HanNameMatch, "postgresql")
def _han_name_match_postgresql(element: HanNameMatch, compiler: SQLCompiler, **kw: Any) -> str:
    res_type, param, value, grams, by_like = element.clauses
    lookup = (
        f"search_han_grams({compiler.process(res_type, **kw)}, {compiler.process(param, **kw)}, "
        f"{compiler.process(value, **kw)}) @> {compiler.process(grams, **kw)}"
    )
    # A cheap test first, so that a walk through a patient's string rows (PostgreSQL's plan for
    # 马, a third of all names) calls the gram function on name rows only.
    names = ", ".join(f"'{p}'" for p in sorted(HAN_GRAM_PARAMS))
    guard = f"{compiler.process(param, **kw)} IN ({names})"
    if isinstance(element, HanNameMatchChecked):
        return f"({guard} AND {lookup} AND {compiler.process(by_like, **kw)})"
    return f"({guard} AND {lookup})"


@compiles(HanNameMatch)
def _han_name_match_elsewhere(element: HanNameMatch, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(list(element.clauses)[4], **kw)})"


def _date_value(value: Value, start: Any, end: Any) -> ColumnElement[bool]:
    low, high = date_range(value.text)
    prefix = value.prefix
    if prefix == "eq":
        return and_(start >= low, end <= high)
    if prefix == "ne":
        return or_(start < low, end > high)
    if prefix == "gt":
        return end > high
    if prefix == "lt":
        return start < low
    if prefix == "ge":
        return end >= low
    if prefix == "le":
        return start <= high
    if prefix == "sa":
        return start > high
    if prefix == "eb":
        return end < low
    # ap: within 10% of the distance from now, at least a day, either side.
    slack = max(abs(utcnow() - low) / 10, dt.timedelta(days=1))
    return and_(end >= low - slack, start <= high + slack)


def _date(table: FromClause, value: Value, clause: Clause, base_url: str) -> ColumnElement[bool]:
    return _date_value(value, table.c.start, table.c.end)


def _number_value(column: Any, text: str, prefix: str) -> ColumnElement[bool]:
    number = check_number(text)
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)
    low, high = number - half, number + half
    if prefix == "eq":
        return and_(column >= low, column < high)
    if prefix == "ne":
        return or_(column < low, column >= high)
    if prefix in ("gt", "sa"):
        return column > number
    if prefix in ("lt", "eb"):
        return column < number
    if prefix == "ge":
        return column >= number
    if prefix == "le":
        return column <= number
    slack = abs(number) / 10
    return and_(column >= number - slack, column <= number + slack)


def _number(table: FromClause, value: Value, clause: Clause, base_url: str) -> ColumnElement[bool]:
    return _number_value(table.c.value, value.text, value.prefix)


def _quantity(
    table: FromClause, value: Value, clause: Clause, base_url: str
) -> ColumnElement[bool]:
    number, _, rest = value.text.partition("|")
    conditions = [_number_value(table.c.value, number, value.prefix)]
    if rest:
        system, _, code = rest.partition("|")
        if system:
            conditions.append(table.c.system == system)
        if code:
            conditions.append(or_(table.c.code == code, table.c.unit == code))
    return and_(*conditions)


def _reference(
    table: FromClause, value: Value, clause: Clause, base_url: str
) -> ColumnElement[bool]:
    text = value.text.split("/_history/")[0]
    if base_url and text.startswith(base_url + "/"):
        text = text[len(base_url) + 1 :]
    if text.startswith(("http://", "https://", "urn:")):
        return table.c.url == text
    parts = text.split("/")
    if len(parts) == 2:
        return and_(table.c.target_type == parts[0], table.c.target_id == parts[1])
    condition_ = table.c.target_id == text
    if len(clause.targets) == 1:
        condition_ = and_(condition_, table.c.target_type == clause.targets[0])
    return condition_


def _uri(table: FromClause, value: Value, clause: Clause, base_url: str) -> ColumnElement[bool]:
    if clause.modifier == "below":
        return table.c.uri.like(_like_escape(value.text) + "%", escape=_ESCAPE)
    if clause.modifier == "above":
        return literal(value.text).like(table.c.uri + "%")
    return table.c.uri == value.text


def _composite(
    table: FromClause, value: Value, clause: Clause, base_url: str
) -> ColumnElement[bool]:
    first, second, *third = composite_parts(value.text, clause.component_types)
    if clause.component_types[0] == "reference":
        conditions = [table.c.code.in_(_reference_keys(first.text, clause, base_url))]
    else:
        system, code = split_token(first.text)
        conditions = [table.c.code == code]
        if system is not None:
            conditions.append(table.c.system == system if system else table.c.system.is_(None))
    kind = clause.component_types[1]
    if kind == "token":
        value_system, value_code = split_token(second.text)
        conditions.append(table.c.value_code == value_code)
        if value_system:
            conditions.append(table.c.value_system == value_system)
    elif kind == "quantity":
        number, _, units = second.text.partition("|")
        conditions.append(_number_value(table.c.value_number, number, second.prefix))
        unit_system, _, unit = units.partition("|")
        if unit_system:
            conditions.append(table.c.value_system == unit_system)
        if unit:
            conditions.append(or_(table.c.value_code == unit, table.c.value_text == unit))
    elif kind == "number":
        conditions.append(_number_value(table.c.value_number, second.text, second.prefix))
    elif kind == "date":
        conditions.append(_date_value(second, table.c.value_start, table.c.value_end))
    else:
        needle = _like_escape(normalize_text(second.text))
        conditions.append(table.c.value_text.like(needle + "%", escape=_ESCAPE))
    for part in third:
        conditions.append(_number_value(table.c.third_number, part.text, part.prefix))
    return and_(*conditions)


def _reference_keys(text: str, clause: Clause, base_url: str) -> list[str]:
    """How a reference value is kept in a composite row (see composite_reference_key)."""
    text = text.split("/_history/")[0]
    if base_url and text.startswith(base_url + "/"):
        text = text[len(base_url) + 1 :]
    if text.startswith(("http://", "https://", "urn:")) or "/" in text:
        return [text]
    return [composite_reference_key(t, text, None) for t in clause.targets]


_BUILDERS = {
    "token": _token,
    "string": _string,
    "date": _date,
    "number": _number,
    "quantity": _quantity,
    "reference": _reference,
    "uri": _uri,
    "composite": _composite,
}


def sort_value(param: str, param_type: str, descending: bool, r: FromClause) -> Any:
    """The value a resource is sorted by for ``param``: its least (or, descending, greatest)."""
    if param == "_id":
        return r.c.res_id
    if param == "_lastUpdated":
        return r.c.last_updated
    table = SEARCH_TABLES[param_type].alias()
    value_column = {
        "string": "value_normalized",
        "token": "code",
        "number": "value",
        "quantity": "value",
        "reference": "target_id",
        "uri": "uri",
        "date": "end" if descending else "start",
    }[param_type]
    aggregate = func.max if descending else func.min
    return (
        select(aggregate(table.c[value_column]))
        .where(table.c.rid == r.c.rid, table.c.res_type == r.c.res_type, table.c.param == param)
        .scalar_subquery()
    )
