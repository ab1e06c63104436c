"""Status conditions on the typed status: merged by type so writing one never drops the others,
and `lastTransitionTime` moves only when a condition's status flips (as Kubernetes expects)."""

from __future__ import annotations

from typing import Literal

from lora_contract.timestamps import now_iso
from lora_contract.types import Condition, ConditionType, Reason

ConditionStatus = Literal["True", "False", "Unknown"]


def _status_value(status: bool | ConditionStatus) -> ConditionStatus:
    if isinstance(status, bool):
        return "True" if status else "False"
    return status


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    status: bool | ConditionStatus,
    reason: Reason | str,
    message: str = "",
    generation: int | None = None,
) -> bool:
    """Set one condition in place; True when its status, reason or message changed. `reason`:
    a `Reason`, or one copied from another object (a Job's, an InferenceService's)."""
    value = _status_value(status)
    reason = str(reason)
    for i, current in enumerate(conditions):
        if current.type != type_.value:
            continue
        same_status = current.status == value
        changed = not (same_status and current.reason == reason and current.message == message)
        conditions[i] = current.model_copy(
            update={
                "status": value,
                "reason": reason,
                "message": message,
                "last_transition_time": current.last_transition_time if same_status else now_iso(),
                "observed_generation": generation
                if generation is not None
                else current.observed_generation,
            }
        )
        return changed
    conditions.append(
        Condition(
            type=type_.value,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=now_iso(),
            observed_generation=generation,
        )
    )
    return True


def find(conditions: list[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_.value), None)
