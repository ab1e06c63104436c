"""kstatus' summary conditions, Ready, Reconciling and Stalled, derived from a LoRAJob's phase and
its other conditions in one pure function (no IO, no clock).

Why: GitOps tools read these, not the phase. Flux's `wait`/health checks use kstatus
(`Reconciling` True -> InProgress, `Stalled` True -> Failed, else Current once
`status.observedGeneration` matches), `kubectl wait --for=condition=Ready` waits for `Ready`, and
the chart's Argo CD health script (charts/lora-operator/argocd/health.lua) reads the same three.
`reconcile._Run.flush` writes them before every status patch, so they never disagree with the
phase. What each means for a pipeline: docs/gitops.md.

All three share one reason and message; only their statuses differ:

- Suspended: none True (Ready False), so a paused job is neither waited on nor failed.
- Stalled: nothing proceeds without a change by someone (the spec, the platform policy, an
  object holding a name, KServe installed): invalid spec, policy refusal, planning refused, the
  run failed (a bad config or retries exhausted; a new run needs a retraining spec change), a
  name conflict.
- Reconciling: work in progress (validating, fetching the model config, queued, training,
  serving rolling out); the message carries the phase's words (progress while training).
- Ready: the latest run succeeded and, with serving on, its InferenceService is Ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from lora_contract.types import ConditionType, LoRAJobStatus, Phase, Reason

from .conditions import find


class State(Enum):
    READY = "ready"
    RECONCILING = "reconciling"
    STALLED = "stalled"
    SUSPENDED = "suspended"


@dataclass(frozen=True)
class Health:
    state: State
    reason: Reason | str  # str: a reason copied from the condition that stalls the job
    message: str

    def statuses(self) -> dict[ConditionType, bool]:
        """The status of each summary condition (all share reason and message)."""
        return {
            ConditionType.Ready: self.state is State.READY,
            ConditionType.Reconciling: self.state is State.RECONCILING,
            ConditionType.Stalled: self.state is State.STALLED,
        }


# A job whose condition says one of these is waiting for someone else: Stalled.
_STALLED_VALIDATION = (Reason.InvalidSpec, Reason.MissingConfiguration, Reason.PolicyViolation)
_STALLED_SERVING = (Reason.NameConflict, Reason.KServeNotInstalled)


def _stalled(status: LoRAJobStatus, serving_enabled: bool) -> Health | None:
    validated = find(status.conditions, ConditionType.Validated)
    if validated is not None and validated.status == "False":
        return Health(State.STALLED, validated.reason, validated.message)
    planned = find(status.conditions, ConditionType.Planned)
    if planned is not None and planned.status == "False":
        return Health(State.STALLED, planned.reason, planned.message)
    if status.phase == Phase.Failed:
        failed = find(status.conditions, ConditionType.Failed)
        message = failed.message if failed is not None else status.message or "the run failed"
        return Health(State.STALLED, Reason.Failed, message)
    running = find(status.conditions, ConditionType.Running)
    if (
        status.phase not in (Phase.Succeeded, None)
        and running is not None
        and running.reason == Reason.NameConflict
    ):
        return Health(State.STALLED, Reason.NameConflict, running.message)
    serving = find(status.conditions, ConditionType.Serving)
    if (
        serving_enabled
        and status.phase == Phase.Succeeded
        and serving is not None
        and serving.status == "False"
        and serving.reason in _STALLED_SERVING
    ):
        return Health(State.STALLED, serving.reason, serving.message)
    return None


def _reconciling_reason(phase: Phase | None) -> Reason:
    if phase == Phase.Queued:
        return Reason.Queued
    if phase == Phase.Running:
        return Reason.Training
    if phase == Phase.Pending:
        return Reason.Starting  # planned, its objects being created (or waiting for a name)
    return Reason.Validating  # not reconciled yet


def health(status: LoRAJobStatus, serving_enabled: bool) -> Health:
    """The summary of `status` for a job whose spec has `serving.enabled == serving_enabled`."""
    if status.phase == Phase.Suspended:
        return Health(State.SUSPENDED, Reason.Suspended, status.message or "spec.suspend is true")
    stalled = _stalled(status, serving_enabled)
    if stalled is not None:
        return stalled
    planned = find(status.conditions, ConditionType.Planned)
    if planned is not None and planned.status == "Unknown":
        return Health(State.RECONCILING, Reason.FetchingModelConfig, planned.message)
    if status.phase != Phase.Succeeded:
        return Health(
            State.RECONCILING, _reconciling_reason(status.phase), status.message or "validating"
        )
    if not serving_enabled:
        return Health(State.READY, Reason.Succeeded, status.message or "the run succeeded")
    serving = find(status.conditions, ConditionType.Serving)
    if serving is None or serving.status != "True":
        message = serving.message if serving is not None else "creating the InferenceService"
        return Health(State.RECONCILING, Reason.ServingRollout, message)
    return Health(State.READY, Reason.Serving, serving.message)
