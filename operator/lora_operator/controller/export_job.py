"""The merged-model export Job (spec.export.merged): built beside the trainer Job, run after it
succeeded, on CPU. Pure builders and sizing, the failed pod's message, and the pruning of earlier
runs' finished export Jobs; `reconcile._Run.export` creates and follows it.

Sized from the plan's parameter counts by `memory/export_sizing.py` (the one formula, which
`lorajob plan` shows too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lora_contract import pod
from lora_contract.layout import MERGED_DIR
from lora_contract.types import Phase, RunRecord

from ..memory.export_sizing import export_pod_resources
from .kube import Kube
from .manifests import (
    LABEL_JOB,
    LABEL_RUN,
    RunContext,
    _metadata,
    build_env,
    build_volumes,
    container_security_context,
    fail_on_bad_config,
    pod_security_context,
    short_name,
    trainer_account_name,
)
from .ownership import controlled_by, delete_owned
from .workload import JobObservation, JobState

JOBS = "batch/v1/jobs"
EXPORT_COMPONENT = "export"
COMPONENT_LABEL = "app.kubernetes.io/component"
EXPORT_BACKOFF_LIMIT = 2
# The trainer's rendezvous variables mean nothing to a single export process.
RENDEZVOUS_ENV = {
    pod.ENV_MASTER_ADDR,
    pod.ENV_MASTER_PORT,
    pod.ENV_NNODES,
    pod.ENV_NODE_RANK,
    pod.ENV_NPROC_PER_NODE,
    pod.ENV_POD_IP,
    pod.ENV_EPHEMERAL_STORAGE,
}


def export_job_name(job: str, run_id: str) -> str:
    return short_name(job, run_id, EXPORT_COMPONENT)


def export_resources(ctx: RunContext) -> dict[str, dict[str, str]]:
    return export_pod_resources(ctx.plan.total_params, ctx.plan.trainable_params, ctx.spec.export)


def merged_uri(output_uri: str) -> str:
    return f"{output_uri.rstrip('/')}/{MERGED_DIR}"


def build_export_job(ctx: RunContext) -> dict[str, Any]:
    """One pod, no GPU, the trainer image's export entry point, the run's own config and
    credentials; a bad config (exit 3) fails at once, anything else is retried twice."""
    name = export_job_name(ctx.name, ctx.run_id)
    volumes, mounts = build_volumes(ctx)
    env = [e for e in build_env(ctx) if e["name"] not in RENDEZVOUS_ENV]
    container = {
        "name": pod.TRAINER_CONTAINER,
        "image": ctx.spec.trainer_image or ctx.config.trainer_image,
        "imagePullPolicy": ctx.config.image_pull_policy,
        "command": ["python", "-m", "lora_trainer.export"],
        "env": env,
        "resources": export_resources(ctx),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": ctx.config.trainer_service_account or trainer_account_name(ctx.name),
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    resources = ctx.spec.resources
    if resources.node_selector:  # the author's placement rules; no GPU node selector
        pod_spec["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in resources.tolerations]
    if resources.priority_class_name:
        pod_spec["priorityClassName"] = resources.priority_class_name
    metadata = _metadata(ctx, name, EXPORT_COMPONENT)
    job_spec = {
        "completions": 1,
        "parallelism": 1,
        "backoffLimit": EXPORT_BACKOFF_LIMIT,
        "podFailurePolicy": {"rules": [fail_on_bad_config()]},
        "template": {
            "metadata": {"labels": metadata["labels"], "annotations": metadata["annotations"]},
            "spec": pod_spec,
        },
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


async def export_failure_message(kube: Kube, namespace: str, job: str, run_id: str) -> str | None:
    """The export's termination message from its last failed pod (the trainer pods of the same
    run carry another component label)."""
    selector = {LABEL_JOB: job, LABEL_RUN: run_id, COMPONENT_LABEL: EXPORT_COMPONENT}
    for found in reversed(await kube.list("v1/pods", namespace, selector)):
        for status in (found.get("status") or {}).get("containerStatuses", []):
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") and terminated.get("message"):
                return str(terminated["message"]).strip()
    return None


# ------------------------------------------------------------------ pruning earlier runs' Jobs

FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED)


def earlier_exported_runs(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """The runs before the latest that succeeded: the only ones an export Job was made for."""
    return [run for run in runs[:-1] if run.phase == Phase.Succeeded]


def prunable(job: dict[str, Any], uid: str) -> bool:
    """A finished export Job this LoRAJob controls; a running one (a slow earlier export) stays
    until it ends, and a Job of that name someone else controls is never touched."""
    return controlled_by(job, uid) and JobObservation.of(job).state in FINISHED_STATES


async def prune_earlier_exports(
    kube: Kube, namespace: str, job: str, uid: str, runs: Sequence[RunRecord]
) -> list[str]:
    """Once the latest run's export finished, delete the earlier runs' finished export Jobs:
    one Job per run would otherwise pile up with every retrain. What a Job held stays: the merged
    model in S3 and its URI in status.runs. An earlier export that succeeded after a newer run
    started was never followed: its mergedURI is recorded here, before its Job goes.
    Returns the names of the Jobs deleted."""
    pruned = []
    for run in earlier_exported_runs(runs):
        name = export_job_name(job, run.id)
        found = await kube.get(JOBS, namespace, name)
        if found is None or not prunable(found, uid):
            continue
        if JobObservation.of(found).state is JobState.SUCCEEDED and run.merged_uri is None:
            run.merged_uri = merged_uri(run.output_uri)
        if await delete_owned(kube, JOBS, namespace, name, uid):
            pruned.append(name)
    return pruned
