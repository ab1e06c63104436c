"""The merge patch that turns the status the reconciler read into the one it computed.

A JSON merge patch (RFC 7386, what `Kube.patch` sends) merges nested objects key by key, so a
key that disappeared from a nested object (a recovered run's `progress.lastError`, a plan
field no longer set) stays in the stored status unless the patch says `null` for it. The
wire form of the status drops None fields, so this adds those nulls back, at every depth.
"""

from __future__ import annotations

from typing import Any


def with_removals(old: Any, new: Any) -> Any:
    """`new`, plus `None` for every key of `old` that `new` no longer has, in nested objects
    too (lists are replaced whole by a merge patch, so they are left as they are)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    patched = {key: with_removals(old.get(key), value) for key, value in new.items()}
    patched.update({key: None for key in old if key not in new})
    return patched


def status_patch(original: dict[str, Any], wire: dict[str, Any]) -> dict[str, Any]:
    """Only the top-level fields that changed (an idle resync writes nothing), each with the
    nulls that remove what it lost; a field gone altogether becomes null."""
    patch = {
        key: with_removals(original.get(key), value)
        for key, value in wire.items()
        if original.get(key) != value
    }
    patch.update({key: None for key in original if key not in wire})
    return patch
