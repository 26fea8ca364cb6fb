from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from health.auth.scopes import OTHER_SCOPES, Scope, ScopeSet, parse_scopes


class TestParsing:
    def test_v2_scope(self) -> None:
        scopes = parse_scopes("user/Observation.rs")
        assert scopes.scopes == (Scope("user", "Observation", frozenset("rs")),)
        assert scopes.other == frozenset()

    def test_v1_forms(self) -> None:
        assert parse_scopes("patient/Observation.read") == parse_scopes("patient/Observation.rs")
        assert parse_scopes("patient/Observation.write") == parse_scopes("patient/Observation.cud")
        assert parse_scopes("user/*.*") == parse_scopes("user/*.cruds")

    def test_other_scopes_are_kept_as_text(self) -> None:
        scopes = parse_scopes("openid fhirUser launch/patient offline_access user/Patient.r")
        assert scopes.other == {"openid", "fhirUser", "launch/patient", "offline_access"}
        assert [str(scope) for scope in scopes.scopes] == ["user/Patient.r"]

    def test_empty_string_is_no_scopes(self) -> None:
        assert parse_scopes("") == ScopeSet()
        assert str(parse_scopes("")) == ""

    def test_canonical_printing(self) -> None:
        assert str(parse_scopes("user/Observation.read")) == "user/Observation.rs"
        assert str(parse_scopes("system/*.*")) == "system/*.cruds"
        # Duplicates merge, order is fixed, and what '*' already grants is not repeated.
        assert (
            str(parse_scopes("user/Patient.s openid user/Patient.r user/Patient.r patient/*.rs"))
            == "openid patient/*.rs user/Patient.rs"
        )
        assert str(parse_scopes("user/*.r user/Patient.rs")) == "user/*.r user/Patient.s"
        assert parse_scopes("user/*.rs user/Patient.r") == parse_scopes("user/*.rs")

    @pytest.mark.parametrize(
        "scope",
        [
            "user/Observation.sr",
            "user/Observation.rr",
            "user/Observation.x",
            "user/Observation.",
            "user/observation.rs",
            "admin/*.r",
            "foo",
        ],
    )
    def test_invalid_scope_is_named(self, scope: str) -> None:
        with pytest.raises(ValueError, match=re.escape(repr(scope))):
            parse_scopes(f"openid {scope} user/Patient.r")

    def test_granular_scope_is_refused_not_widened(self) -> None:
        with pytest.raises(ValueError, match="granular") as raised:
            parse_scopes("user/Observation.rs?category=vital-signs")
        assert "user/Observation.rs?category=vital-signs" in str(raised.value)


class TestAllows:
    def test_allows_named_type_and_interaction(self) -> None:
        scopes = parse_scopes("patient/Observation.rs user/Patient.cu")
        assert scopes.allows("Observation", "r")
        assert scopes.allows("Observation", "s")
        assert not scopes.allows("Observation", "u")
        assert scopes.allows("Patient", "c")
        assert not scopes.allows("Patient", "r")
        assert not scopes.allows("Encounter", "r")

    def test_wildcard_allows_every_type(self) -> None:
        scopes = parse_scopes("user/*.r")
        assert scopes.allows("Encounter", "r")
        assert not scopes.allows("Encounter", "d")

    def test_types_allowed(self) -> None:
        scopes = parse_scopes("user/Observation.rs patient/Patient.r user/*.c")
        assert scopes.types_allowed("r") == {"Observation", "Patient"}
        assert scopes.types_allowed("s") == {"Observation"}
        assert scopes.types_allowed("d") == frozenset()
        assert scopes.types_allowed("c") is None

    def test_unknown_interaction_is_a_mistake(self) -> None:
        with pytest.raises(ValueError):
            parse_scopes("user/*.cruds").allows("Patient", "read")

    def test_contexts(self) -> None:
        assert parse_scopes("openid patient/Observation.rs user/*.r").contexts() == {
            "patient",
            "user",
        }

    def test_everything(self) -> None:
        assert str(ScopeSet.everything("system")) == "system/*.cruds"
        assert ScopeSet.everything("system").types_allowed("d") is None


class TestNarrow:
    def test_request_wider_than_grant_is_cut_down(self) -> None:
        requested = parse_scopes("user/Observation.cruds openid fhirUser")
        granted = parse_scopes("user/Observation.rs user/Patient.r openid")
        assert str(requested.narrow(granted)) == "openid user/Observation.rs"

    def test_request_outside_grant_disappears(self) -> None:
        requested = parse_scopes("user/Encounter.r patient/Observation.r")
        granted = parse_scopes("user/Observation.rs")
        assert requested.narrow(granted) == ScopeSet()

    def test_wildcard_request_takes_the_granted_types(self) -> None:
        requested = parse_scopes("user/*.cruds")
        granted = parse_scopes("user/Patient.rs user/Observation.r")
        assert str(requested.narrow(granted)) == "user/Observation.r user/Patient.rs"

    def test_wildcard_grant_covers_any_requested_type(self) -> None:
        requested = parse_scopes("user/Observation.rs")
        assert requested.narrow(parse_scopes("user/*.r")) == parse_scopes("user/Observation.r")

    def test_grant_in_another_context_does_not_count(self) -> None:
        requested = parse_scopes("patient/Observation.rs")
        assert requested.narrow(parse_scopes("user/*.cruds")) == ScopeSet()


RESOURCE_TYPES = ["*", "Patient", "Observation", "Encounter"]
# Types no generated scope names, to check what '*' scopes (and only they) grant.
UNNAMED_TYPES = ["Condition"]

scope_objects = st.builds(
    Scope,
    context=st.sampled_from(["patient", "user", "system"]),
    resource_type=st.one_of(
        st.sampled_from(RESOURCE_TYPES), st.from_regex(r"[A-Z][A-Za-z]{1,12}", fullmatch=True)
    ),
    interactions=st.frozensets(st.sampled_from("cruds"), min_size=1),
)
scope_sets = st.builds(
    ScopeSet,
    scopes=st.lists(scope_objects, max_size=6).map(tuple),
    other=st.frozensets(st.sampled_from(sorted(OTHER_SCOPES))),
)
small_scope_sets = st.builds(
    ScopeSet,
    scopes=st.lists(
        st.builds(
            Scope,
            context=st.sampled_from(["patient", "user"]),
            resource_type=st.sampled_from(RESOURCE_TYPES),
            interactions=st.frozensets(st.sampled_from("cruds"), min_size=1),
        ),
        max_size=5,
    ).map(tuple),
    other=st.frozensets(st.sampled_from(sorted(OTHER_SCOPES))),
)


def in_context(scopes: ScopeSet, context: str) -> ScopeSet:
    return ScopeSet(tuple(scope for scope in scopes.scopes if scope.context == context))


class TestProperties:
    @given(scopes=scope_sets)
    def test_printing_then_parsing_gives_the_same_set(self, scopes: ScopeSet) -> None:
        assert parse_scopes(str(scopes)) == scopes
        assert str(parse_scopes(str(scopes))) == str(scopes)

    @given(scopes=scope_sets)
    def test_narrowing_by_itself_changes_nothing(self, scopes: ScopeSet) -> None:
        assert scopes.narrow(scopes) == scopes

    @given(requested=scope_sets, granted=scope_sets)
    def test_narrow_never_allows_what_the_grant_does_not(
        self, requested: ScopeSet, granted: ScopeSet
    ) -> None:
        narrowed = requested.narrow(granted)
        types = {scope.resource_type for scope in requested.scopes + granted.scopes}
        for resource_type in (types - {"*"}) | set(UNNAMED_TYPES):
            for interaction in "cruds":
                if narrowed.allows(resource_type, interaction):
                    assert granted.allows(resource_type, interaction)
                    assert requested.allows(resource_type, interaction)

    @given(requested=small_scope_sets, granted=small_scope_sets)
    def test_narrow_allows_exactly_what_both_allow(
        self, requested: ScopeSet, granted: ScopeSet
    ) -> None:
        narrowed = requested.narrow(granted)
        assert narrowed.other == requested.other & granted.other
        for context in ("patient", "user"):
            mine = in_context(narrowed, context)
            wanted = in_context(requested, context)
            given_ = in_context(granted, context)
            for resource_type in RESOURCE_TYPES[1:] + UNNAMED_TYPES:
                for interaction in "cruds":
                    assert mine.allows(resource_type, interaction) == (
                        wanted.allows(resource_type, interaction)
                        and given_.allows(resource_type, interaction)
                    ), (context, resource_type, interaction)
