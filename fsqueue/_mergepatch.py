"""JSON Merge Patch (RFC 7396): the update language of shared-state documents.

A patch is a JSON value. An object patch names the members to change: a ``null`` value removes the
member, an object value is merged recursively, any other value replaces the member. Any patch that is
not an object replaces the whole target. Arrays are values like any other: a patch replaces them
whole, never element by element (RFC 7396 section 1). Applying the same patch twice gives the same
result as applying it once, which is why a steward that re-applies after a crash would be harmless
for the document -- yet it must not, because the version number counts applications.
"""

from __future__ import annotations

from typing import Any


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """``MergePatch(Target, Patch)`` of RFC 7396 section 2; neither argument is modified.

    The result shares unchanged members with ``target`` and non-object values with ``patch``, so
    callers treat all three as immutable. Recursion is as deep as ``patch`` is nested.
    """
    if not isinstance(patch, dict):
        return patch
    # Copy only the objects on the patch's paths: a large document costs a shallow copy per level.
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            # An absent member is "undefined" in the RFC: MergePatch(undefined, object) starts from {}.
            result[name] = apply_merge_patch(result.get(name), value)
    return result


def json_depth(value: Any, limit: int) -> int:
    """How deeply ``value`` nests objects and arrays, counting up to ``limit + 1`` at most.

    Iterative, so a hostile value can raise no RecursionError, and bounded, so a cyclic Python
    object ends the count instead of looping.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest
