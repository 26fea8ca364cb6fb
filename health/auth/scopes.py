"""SMART App Launch scopes: parsing, canonical printing, and what a set of scopes allows.

Resource scopes are written ``context/Type.letters`` (SMART v2, e.g. ``user/Observation.rs``)
where the letters are a subsequence of ``cruds``: create, read, update, delete, search. The
v1 forms ``.read``, ``.write`` and ``.*`` are accepted and mean ``rs``, ``cud`` and ``cruds``.
Granular v2 scopes (``user/Observation.rs?category=...``) are refused: honouring the scope
without its filter would grant more than the client asked for.

A ``ScopeSet`` is kept in a canonical form (one scope per context and type, sorted, nothing
that a ``*`` scope of the same context already grants), so two sets that allow the same
things compare and print equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

INTERACTIONS = "cruds"
CONTEXTS = frozenset({"patient", "user", "system"})
OTHER_SCOPES = frozenset(
    {"openid", "fhirUser", "profile", "offline_access", "online_access", "launch", "launch/patient"}
)
ANY_TYPE = "*"

_V1_LETTERS = {"read": "rs", "write": "cud", "*": "cruds"}
_V2_LETTERS = re.compile(r"c?r?u?d?s?")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")
_RESOURCE_SCOPE = re.compile(r"(?P<context>[a-z]+)/(?P<type>[^./]+)\.(?P<letters>[^.]+)")

# Scopes come from clients; a message quoting one stays short however long the scope is.
_QUOTE_LIMIT = 80


def _quoted(token: str) -> str:
    if len(token) > _QUOTE_LIMIT:
        token = token[:_QUOTE_LIMIT] + "..."
    return repr(token)


@dataclass(frozen=True)
class Scope:
    """One resource scope: which interactions a context may perform on a resource type."""

    context: str
    resource_type: str
    interactions: frozenset[str]

    def __post_init__(self) -> None:
        interactions = frozenset(self.interactions)
        object.__setattr__(self, "interactions", interactions)
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown scope context {_quoted(self.context)}")
        if self.resource_type != ANY_TYPE and not _RESOURCE_TYPE.fullmatch(self.resource_type):
            raise ValueError(f"invalid resource type {_quoted(self.resource_type)}")
        if not interactions or not interactions <= frozenset(INTERACTIONS):
            raise ValueError(f"interactions must be a non-empty subset of {INTERACTIONS!r}")

    def covers(self, resource_type: str, interaction: str) -> bool:
        return interaction in self.interactions and self.resource_type in (
            ANY_TYPE,
            resource_type,
        )

    def __str__(self) -> str:
        letters = "".join(letter for letter in INTERACTIONS if letter in self.interactions)
        return f"{self.context}/{self.resource_type}.{letters}"


def _parse_scope(token: str) -> Scope | str:
    if token in OTHER_SCOPES:
        return token
    base, question_mark, _query = token.partition("?")
    match = _RESOURCE_SCOPE.fullmatch(base)
    if match is None:
        raise ValueError(f"unknown scope {_quoted(token)}")
    context, resource_type, letters = match.group("context", "type", "letters")
    if context not in CONTEXTS:
        raise ValueError(f"invalid scope {_quoted(token)}: context must be patient, user or system")
    if resource_type != ANY_TYPE and not _RESOURCE_TYPE.fullmatch(resource_type):
        raise ValueError(
            f"invalid scope {_quoted(token)}: resource type must be '*' or a FHIR type name"
        )
    letters = _V1_LETTERS.get(letters, letters)
    if not letters or not _V2_LETTERS.fullmatch(letters):
        raise ValueError(
            f"invalid scope {_quoted(token)}: permissions must be some of c, r, u, d, s"
            " in that order, or read, write or *"
        )
    if question_mark:
        raise ValueError(f"granular scopes are not supported: {_quoted(token)}")
    return Scope(context, resource_type, frozenset(letters))


def _canonical(scopes: tuple[Scope, ...]) -> tuple[Scope, ...]:
    merged: dict[tuple[str, str], frozenset[str]] = {}
    for scope in scopes:
        key = (scope.context, scope.resource_type)
        merged[key] = merged.get(key, frozenset()) | scope.interactions
    result = []
    for (context, resource_type), interactions in sorted(merged.items()):
        if resource_type != ANY_TYPE:
            # What the context's '*' scope grants needs no repeating per type.
            interactions -= merged.get((context, ANY_TYPE), frozenset())
        if interactions:
            result.append(Scope(context, resource_type, interactions))
    return tuple(result)


def _check_interaction(interaction: str) -> None:
    if len(interaction) != 1 or interaction not in INTERACTIONS:
        raise ValueError(f"interaction must be one of c, r, u, d, s, not {interaction!r}")


@dataclass(frozen=True)
class ScopeSet:
    """The scopes of one request or token: resource scopes plus the other kinds (``openid``...)."""

    scopes: tuple[Scope, ...] = ()
    other: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scopes", _canonical(tuple(self.scopes)))
        object.__setattr__(self, "other", frozenset(self.other))
        unknown = self.other - OTHER_SCOPES
        if unknown:
            raise ValueError(f"unknown scope {_quoted(min(unknown))}")

    @classmethod
    def everything(cls, context: str) -> ScopeSet:
        """Every interaction on every resource type, e.g. ``system/*.cruds``."""
        return cls((Scope(context, ANY_TYPE, frozenset(INTERACTIONS)),))

    def allows(self, resource_type: str, interaction: str) -> bool:
        """Whether some scope, in any context, grants ``interaction`` on ``resource_type``."""
        _check_interaction(interaction)
        return any(scope.covers(resource_type, interaction) for scope in self.scopes)

    def types_allowed(self, interaction: str) -> frozenset[str] | None:
        """The resource types ``interaction`` is granted on; None means every type."""
        _check_interaction(interaction)
        types: set[str] = set()
        for scope in self.scopes:
            if interaction in scope.interactions:
                if scope.resource_type == ANY_TYPE:
                    return None
                types.add(scope.resource_type)
        return frozenset(types)

    def contexts(self) -> frozenset[str]:
        return frozenset(scope.context for scope in self.scopes)

    def narrow(self, granted: ScopeSet) -> ScopeSet:
        """The part of these (requested) scopes that ``granted`` covers, context by context."""
        kept: list[Scope] = []
        for requested in self.scopes:
            for grant in granted.scopes:
                if grant.context != requested.context:
                    continue
                if requested.resource_type == ANY_TYPE:
                    # A request for every type gets whatever types the grant names.
                    resource_type = grant.resource_type
                elif grant.resource_type in (ANY_TYPE, requested.resource_type):
                    resource_type = requested.resource_type
                else:
                    continue
                interactions = requested.interactions & grant.interactions
                if interactions:
                    kept.append(Scope(requested.context, resource_type, interactions))
        return ScopeSet(tuple(kept), self.other & granted.other)

    def __str__(self) -> str:
        return " ".join(sorted({str(scope) for scope in self.scopes} | self.other))


def parse_scopes(text: str) -> ScopeSet:
    """Parse a space-separated scope string; ValueError names the first scope that is wrong."""
    scopes: list[Scope] = []
    other: set[str] = set()
    for token in text.split():
        parsed = _parse_scope(token)
        if isinstance(parsed, Scope):
            scopes.append(parsed)
        else:
            other.add(parsed)
    return ScopeSet(tuple(scopes), frozenset(other))
