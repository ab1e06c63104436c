"""controller/health.py, the pure function behind Ready / Reconciling / Stalled: one row per state
a LoRAJob's status can be in, with the three statuses, the reason and the message written out by
hand (not taken from the code), plus the rules the table relies on (suspension wins, a stalling
condition wins over the phase, serving only counts when it is on)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lora_contract.types import Condition, ConditionType, LoRAJobStatus, Phase
from lora_operator.controller.health import Health, State, health


def cond(type_: str, status: str, reason: str, message: str = "") -> Condition:
    return Condition(type=type_, status=status, reason=reason, message=message)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Row:
    name: str
    phase: str | None
    message: str | None
    conditions: tuple[Condition, ...]
    serving: bool
    # expected: Ready, Reconciling, Stalled, reason, message
    ready: bool
    reconciling: bool
    stalled: bool
    reason: str
    said: str


VALID = cond("Validated", "True", "Valid", "spec is valid")
PLANNED = cond("Planned", "True", "Planned", "1x1 processes on CPU")
SUCCEEDED = cond("Succeeded", "True", "Completed", "adapter at s3://b/r1/final")

ROWS = [
    Row("unseen", None, None, (), False, False, True, False, "Validating", "validating"),
    Row(
        "planned, creating",
        "Pending",
        "run r1 planned: 1x1 processes on CPU",
        (VALID, PLANNED),
        False,
        False,
        True,
        False,
        "Starting",
        "run r1 planned: 1x1 processes on CPU",
    ),
    Row(
        "fetching the model config",
        "Pending",
        "fetching spec.baseModel.config https://x/config.json",
        (VALID, cond("Planned", "Unknown", "FetchingModelConfig", "fetching https://x")),
        False,
        False,
        True,
        False,
        "FetchingModelConfig",
        "fetching https://x",
    ),
    Row(
        "retrain fetching while the last run succeeded",
        "Succeeded",
        "adapter at s3://b/r1/final",
        (VALID, cond("Planned", "Unknown", "FetchingModelConfig", "fetching https://y"), SUCCEEDED),
        False,
        False,
        True,
        False,
        "FetchingModelConfig",
        "fetching https://y",
    ),
    Row(
        "queued by quota",
        "Queued",
        "queued (position 2): 8 A100 wanted",
        (VALID, PLANNED, cond("Admitted", "False", "QuotaExceeded", "8 A100 wanted")),
        False,
        False,
        True,
        False,
        "Queued",
        "queued (position 2): 8 A100 wanted",
    ),
    Row(
        "training",
        "Running",
        "training, step 20/40 (50%)",
        (VALID, PLANNED, cond("Running", "True", "PodsRunning", "1/1 pod(s) active")),
        False,
        False,
        True,
        False,
        "Training",
        "training, step 20/40 (50%)",
    ),
    Row(
        "succeeded, no serving",
        "Succeeded",
        "adapter at s3://b/r1/final",
        (VALID, PLANNED, SUCCEEDED),
        False,
        True,
        False,
        False,
        "Succeeded",
        "adapter at s3://b/r1/final",
    ),
    Row(
        "succeeded, serving not applied yet",
        "Succeeded",
        "adapter at s3://b/r1/final",
        (VALID, PLANNED, SUCCEEDED),
        True,
        False,
        True,
        False,
        "ServingRollout",
        "creating the InferenceService",
    ),
    Row(
        "succeeded, InferenceService deploying",
        "Succeeded",
        "adapter at s3://b/r1/final",
        (VALID, SUCCEEDED, cond("Serving", "Unknown", "Deploying", "not ready yet")),
        True,
        False,
        True,
        False,
        "ServingRollout",
        "not ready yet",
    ),
    Row(
        "succeeded and served",
        "Succeeded",
        "adapter at s3://b/r1/final",
        (VALID, SUCCEEDED, cond("Serving", "True", "Ready", "serving at http://h")),
        True,
        True,
        False,
        False,
        "Serving",
        "serving at http://h",
    ),
    Row(
        "serving switched off after serving",
        "Succeeded",
        "adapter at s3://b/r1/final",
        (VALID, SUCCEEDED, cond("Serving", "False", "Disabled", "serving.enabled is false")),
        False,
        True,
        False,
        False,
        "Succeeded",
        "adapter at s3://b/r1/final",
    ),
    Row(
        "KServe not installed",
        "Succeeded",
        "adapter at s3://b/r1/final",
        (VALID, SUCCEEDED, cond("Serving", "False", "KServeNotInstalled", "install KServe")),
        True,
        False,
        False,
        True,
        "KServeNotInstalled",
        "install KServe",
    ),
    Row(
        "serving name taken",
        "Succeeded",
        "adapter at s3://b/r1/final",
        (VALID, SUCCEEDED, cond("Serving", "False", "NameConflict", "InferenceService x")),
        True,
        False,
        False,
        True,
        "NameConflict",
        "InferenceService x",
    ),
    Row(
        "InferenceService not ready (KServe's reason)",
        "Succeeded",
        "adapter at s3://b/r1/final",
        (VALID, SUCCEEDED, cond("Serving", "False", "RevisionMissing", "no revision")),
        True,
        False,
        True,
        False,
        "ServingRollout",
        "no revision",
    ),
    Row(
        "invalid spec",
        "Failed",
        "invalid spec: lora.r: must be >= 1",
        (cond("Validated", "False", "InvalidSpec", "invalid spec: lora.r: must be >= 1"),),
        False,
        False,
        False,
        True,
        "InvalidSpec",
        "invalid spec: lora.r: must be >= 1",
    ),
    Row(
        "missing configuration",
        "Failed",
        "set spec.output.endpoint",
        (cond("Validated", "False", "MissingConfiguration", "set spec.output.endpoint"),),
        False,
        False,
        False,
        True,
        "MissingConfiguration",
        "set spec.output.endpoint",
    ),
    Row(
        "policy refusal mid-run (the phase stays Running)",
        "Running",
        "image x is not allowed",
        (cond("Validated", "False", "PolicyViolation", "image x is not allowed"), PLANNED),
        False,
        False,
        False,
        True,
        "PolicyViolation",
        "image x is not allowed",
    ),
    Row(
        "planning refused",
        "Failed",
        "planning failed: no GPU fits",
        (VALID, cond("Planned", "False", "PlanningFailed", "planning failed: no GPU fits")),
        False,
        False,
        False,
        True,
        "PlanningFailed",
        "planning failed: no GPU fits",
    ),
    Row(
        "run failed",
        "Failed",
        "exit 3: bad dataset column",
        (VALID, PLANNED, cond("Failed", "True", "PodFailurePolicy", "exit 3: bad column")),
        False,
        False,
        False,
        True,
        "Failed",
        "exit 3: bad column",
    ),
    Row(
        "run failed, no Failed condition (older operator)",
        "Failed",
        "the trainer Job failed",
        (VALID, PLANNED),
        False,
        False,
        False,
        True,
        "Failed",
        "the trainer Job failed",
    ),
    Row(
        "a Job name held by someone else",
        "Pending",
        "Job n-r1 exists and is not owned by this LoRAJob",
        (VALID, PLANNED, cond("Running", "False", "NameConflict", "Job n-r1 is not ours")),
        False,
        False,
        False,
        True,
        "NameConflict",
        "Job n-r1 is not ours",
    ),
    Row(
        "suspended",
        "Suspended",
        "suspended; checkpoints kept",
        (VALID, PLANNED, cond("Running", "False", "Suspended", "spec.suspend is true")),
        False,
        False,
        False,
        False,
        "Suspended",
        "suspended; checkpoints kept",
    ),
    Row(
        "suspended, no message",
        "Suspended",
        None,
        (),
        False,
        False,
        False,
        False,
        "Suspended",
        "spec.suspend is true",
    ),
    Row(
        "failed, no words at all",
        "Failed",
        None,
        (),
        False,
        False,
        False,
        True,
        "Failed",
        "the run failed",
    ),
    Row(
        "succeeded, no words at all",
        "Succeeded",
        None,
        (),
        False,
        True,
        False,
        False,
        "Succeeded",
        "the run succeeded",
    ),
    Row(
        "suspended with a policy refusal: still only suspended",
        "Suspended",
        "suspended; checkpoints kept",
        (cond("Validated", "False", "PolicyViolation", "image x"),),
        False,
        False,
        False,
        False,
        "Suspended",
        "suspended; checkpoints kept",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_health_table(row: Row) -> None:
    status = LoRAJobStatus(
        phase=Phase(row.phase) if row.phase else None,
        message=row.message,
        conditions=list(row.conditions),
    )
    result = health(status, row.serving)
    statuses = result.statuses()
    assert statuses == {
        ConditionType.Ready: row.ready,
        ConditionType.Reconciling: row.reconciling,
        ConditionType.Stalled: row.stalled,
    }
    expected_state = (
        State.READY
        if row.ready
        else State.RECONCILING
        if row.reconciling
        else State.STALLED
        if row.stalled
        else State.SUSPENDED
    )
    assert result.state is expected_state
    assert str(result.reason) == row.reason
    assert result.message == row.said
    # at most one of the three is True; none only when suspended
    assert sum(statuses.values()) == (0 if row.phase == "Suspended" else 1)


def test_the_table_covers_every_state_and_phase() -> None:
    """So a new phase or state cannot go untested here."""
    assert {p.value for p in Phase} <= {r.phase for r in ROWS}
    seen = {(r.ready, r.reconciling, r.stalled) for r in ROWS}
    assert seen == {
        (True, False, False),
        (False, True, False),
        (False, False, True),
        (False, False, False),
    }


def test_statuses_name_exactly_the_three_summary_conditions() -> None:
    summary = Health(State.STALLED, "X", "m").statuses()
    assert [t.value for t in summary] == ["Ready", "Reconciling", "Stalled"]
    assert summary[ConditionType.Stalled] and not summary[ConditionType.Ready]
