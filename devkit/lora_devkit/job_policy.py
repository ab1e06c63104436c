"""The Job controller's podFailurePolicy decision, shared by the local executor and the test
JobDriver, so both react to a pod's exit code the way the operator's own Job spec says (a rule
flipped in the manifest builder changes what happens to the Job, and tests see it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

COUNT = "Count"


def _on_conditions(rule: dict[str, Any], conditions: set[str]) -> bool:
    """An `onPodConditions` rule matches a pod that has one of its condition types True."""
    wanted = rule.get("onPodConditions") or []
    return any(c.get("type") in conditions and c.get("status", "True") == "True" for c in wanted)


def _on_exit_codes(rule: dict[str, Any], exit_code: int) -> bool:
    on_codes = rule.get("onExitCodes")
    if not on_codes:
        return False
    matched = exit_code in {int(v) for v in on_codes.get("values", [])}
    if on_codes.get("operator", "In") == "NotIn":
        return exit_code != 0 and not matched
    return matched


def policy_action(
    policy: dict[str, Any] | None, exit_code: int, conditions: Iterable[str] = ()
) -> str:
    """The first rule matching the pod decides; otherwise `Count`.

    Like Kubernetes, `NotIn` never matches exit code 0, an `onExitCodes` rule looks at the exit
    code and an `onPodConditions` rule at the failed pod's True conditions (`conditions`: their
    types, e.g. DisruptionTarget, which the kubelet or scheduler sets on a pod it preempts).
    """
    present = set(conditions)
    for rule in (policy or {}).get("rules", []):
        if _on_exit_codes(rule, exit_code) or _on_conditions(rule, present):
            return str(rule["action"])
    return COUNT
