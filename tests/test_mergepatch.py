"""JSON Merge Patch exactly as RFC 7396 specifies it: the appendix A table, section 3, and its laws."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsqueue._mergepatch import apply_merge_patch, json_depth

# RFC 7396 Appendix A, row by row: original, patch, result.
APPENDIX_A = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), APPENDIX_A)
def test_rfc7396_appendix_a(original: Any, patch: Any, result: Any) -> None:
    """Every example of RFC 7396 appendix A gives the RFC's result."""
    assert apply_merge_patch(original, patch) == result


def test_rfc7396_section_3_example() -> None:
    """The worked example of RFC 7396 section 3 (title, author, tags, content)."""
    target = json.loads("""{
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged"
    }""")
    patch = json.loads("""{
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": null},
        "tags": ["example"]
    }""")
    assert apply_merge_patch(target, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }


def test_missing_target_member_with_object_patch_drops_nulls() -> None:
    """A patch object under an absent member is merged into {} (so its nulls vanish)."""
    assert apply_merge_patch({}, {"a": {"b": None, "c": 1}}) == {"a": {"c": 1}}


def test_json_depth_is_bounded_and_iterative() -> None:
    """Depth counting survives nesting far past the recursion limit and stops at the bound."""
    deep: Any = []
    for _ in range(50_000):
        deep = [deep]
    assert json_depth(deep, 100) == 101
    assert json_depth({"a": [1, {"b": 2}]}, 100) == 3
    assert json_depth(7, 100) == 0


json_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=3), json_values, max_size=5)


@given(json_values, json_values)
def test_inputs_are_never_modified(target: Any, patch: Any) -> None:
    """Applying a patch leaves both the target and the patch untouched."""
    before_target, before_patch = copy.deepcopy(target), copy.deepcopy(patch)
    apply_merge_patch(target, patch)
    assert target == before_target
    assert patch == before_patch


@given(json_values, json_values)
def test_applying_twice_equals_applying_once(target: Any, patch: Any) -> None:
    """Merge patches are idempotent (RFC 7396 section 1)."""
    once = apply_merge_patch(target, patch)
    assert apply_merge_patch(once, patch) == once


@given(json_values, json_values)
def test_non_object_patch_replaces_the_target(target: Any, patch: Any) -> None:
    """Any patch that is not an object is the result itself."""
    if not isinstance(patch, dict):
        assert apply_merge_patch(target, patch) == patch


@given(json_values, json_objects)
def test_object_patch_members(target: Any, patch: dict[str, Any]) -> None:
    """After an object patch: null members are gone, scalar and array members equal the patch's, others stay."""
    result = apply_merge_patch(target, patch)
    assert isinstance(result, dict)
    for name, value in patch.items():
        if value is None:
            assert name not in result
        elif not isinstance(value, dict):
            assert result[name] == value
    if isinstance(target, dict):
        for name, value in target.items():
            if name not in patch:
                assert result[name] == value
