"""The Job controller's podFailurePolicy decision, shared by the local executor and the test
JobDriver, so both react to a pod's exit code the way the operator's own Job spec says (a rule
flipped in the manifest builder changes what happens to the Job, and tests see it)."""

from __future__ import annotations

from typing import Any

COUNT = "Count"


def policy_action(policy: dict[str, Any] | None, exit_code: int) -> str:
    """The first `onExitCodes` rule matching the exit code decides; otherwise `Count`.

    Like Kubernetes, `NotIn` never matches exit code 0, and rules on pod conditions are not
    matched by an exit code.
    """
    for rule in (policy or {}).get("rules", []):
        on_codes = rule.get("onExitCodes")
        if not on_codes:
            continue
        values = {int(v) for v in on_codes.get("values", [])}
        matched = exit_code in values
        if on_codes.get("operator", "In") == "NotIn":
            matched = exit_code != 0 and not matched
        if matched:
            return str(rule["action"])
    return COUNT
