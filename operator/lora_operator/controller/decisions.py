"""The reconciler's decisions as pure functions: what a job claims from the GPU quotas, which
Kueue queue it goes to, when a finished job's TTL expires, whether a retrain stops the previous
run, and what happens to serving after a run. No IO and no clock of their own (`now` is passed
in), so each rule is tested, and mutation-tested, on its own; `reconcile._Run` does the IO around
them. What a Job's status means is `workload.JobObservation`."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

from lora_contract.timestamps import parse_iso
from lora_contract.types import CPU_GPU_TYPE, Phase, PlanStatus, Reason, RunRecord

from ..api.operator_config import KueueConfig
from .quota import Demand

FINISHED = (Phase.Succeeded, Phase.Failed)


def mapping(value: Any) -> dict[str, Any]:
    """A section of an object that should be a mapping; {} when a malformed object (written
    under an older, looser CRD) has something else there, so one bad object never breaks the
    bookkeeping of all the others."""
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------ quota demand


def quota_gpus(gpu_type: str, total_gpus: int) -> int:
    """GPUs a plan takes from the quotas: all of them, over every node (`totalGpus` is nodes x
    gpusPerNode); none for a CPU job, whose processes are not GPUs."""
    return 0 if gpu_type == CPU_GPU_TYPE else total_gpus


def plan_demand(plan: PlanStatus, namespace: str, name: str, created: str) -> Demand:
    """The claim a job about to be admitted makes (not holding yet: admission decides)."""
    return Demand(
        namespace=namespace,
        name=name,
        gpu_type=plan.gpu_type,
        gpus=quota_gpus(plan.gpu_type, plan.total_gpus),
        created=created,
    )


def demand_from(obj: dict[str, Any]) -> Demand | None:
    """What a LoRAJob, as the watch delivers it, holds (Running) or waits for (Queued) from its
    stored plan; None: neither, or a plan too malformed to count."""
    status = mapping(obj.get("status"))
    plan = mapping(status.get("plan"))
    phase = status.get("phase")
    if phase not in (Phase.Running.value, Phase.Queued.value) or not plan:
        return None
    gpu_type = plan.get("gpuType", "")
    try:
        gpus = quota_gpus(gpu_type, int(plan.get("totalGpus", 0)))
    except (TypeError, ValueError):
        return None
    meta = mapping(obj.get("metadata"))
    return Demand(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        gpu_type=gpu_type,
        gpus=gpus,
        created=meta.get("creationTimestamp", ""),
        holding=phase == Phase.Running.value,
    )


# ------------------------------------------------------------------ admission path


def kueue_queue(spec_queue: str | None, kueue: KueueConfig) -> str | None:
    """The Kueue LocalQueue a job's Job is labelled with: the spec's, else the operator config's
    default when Kueue is enabled; None: the operator's own GPU quotas admit it."""
    if spec_queue:
        return spec_queue
    return kueue.default_queue if kueue.enabled else None


# ------------------------------------------------------------------ runs


def needs_new_run(run: RunRecord | None, spec_hash: str) -> bool:
    """A first run, or the retraining fields changed since the current run started."""
    return run is None or run.spec_hash != spec_hash


def planning_failed_before(stored_hash: str | None, phase: Phase | None, spec_hash: str) -> bool:
    """Planning already failed for exactly this spec: wait for a change, do not plan again."""
    return stored_hash == spec_hash and phase == Phase.Failed


def run_to_stop(previous: RunRecord) -> bool:
    """A retrain supersedes the previous run only while it is unfinished (its Job is then
    stopped); a finished run keeps its outcome and its objects."""
    return previous.phase not in FINISHED


# ------------------------------------------------------------------ after completion


def ttl_deadline(ttl_seconds: int | None, completed_at: str | None) -> float | None:
    """The instant (epoch seconds) a finished job is deleted: its run's completion time plus
    `ttlSecondsAfterFinished`; None: no TTL, or no (readable) completion time to count from."""
    if ttl_seconds is None:
        return None
    finished = parse_iso(completed_at)
    return None if finished is None else finished + ttl_seconds


def ttl_expired(ttl_seconds: int | None, completed_at: str | None, now: float) -> bool:
    """True from the deadline's instant on (kept until one second before it)."""
    deadline = ttl_deadline(ttl_seconds, completed_at)
    return deadline is not None and now >= deadline


def deletion_precondition(uid: str) -> str | None:
    """The uid a delete of this LoRAJob must carry, so that a newer LoRAJob that took the name
    meanwhile is refused by the server (409), never deleted; None only without a uid."""
    return uid or None


class ServingAction(enum.Enum):
    """What after_completion does about the InferenceService."""

    NOTHING = "nothing"
    ENSURE = "ensure"  # create or update it for the adapter
    STOP = "stop"  # delete the serving objects this LoRAJob controls


def serving_action(
    *,
    enabled: bool,
    succeeded: bool,
    adapter: str | None,
    inference_service: str | None,
    serving_reason: str | None,
) -> ServingAction:
    """Serve an adapter when asked to and there is one (a failed retrain still serves the last
    good one); stop serving once disabled, only if something was served or a name conflict was
    reported (so a job that never served makes no calls)."""
    if not succeeded and not adapter:
        return ServingAction.NOTHING
    if enabled:
        return ServingAction.ENSURE if adapter else ServingAction.NOTHING
    if inference_service or serving_reason == Reason.NameConflict:
        return ServingAction.STOP
    return ServingAction.NOTHING


def serving_run_id(runs: Iterable[RunRecord], adapter: str, current: str) -> str:
    """The run whose adapter is served: the first that produced `adapter`, else the current."""
    return next((r.id for r in runs if r.adapter_uri == adapter), current)
