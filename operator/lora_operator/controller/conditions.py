"""Status conditions, merged by type so writing one never drops the others."""

from __future__ import annotations

from typing import Any

from lora_contract.timestamps import now_iso


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    generation: int | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Return (new list, changed). lastTransitionTime moves only when the status flips."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    result: list[dict[str, Any]] = []
    changed = True
    found = False
    for condition in conditions:
        if condition.get("type") != type_:
            result.append(condition)
            continue
        found = True
        same_status = condition.get("status") == value
        changed = not (
            same_status
            and condition.get("reason") == reason
            and condition.get("message") == message
        )
        new = {
            **condition,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": condition.get("lastTransitionTime") if same_status else now_iso(),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        result.append(new)
    if not found:
        new = {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_iso(),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        result.append(new)
    return result, changed
