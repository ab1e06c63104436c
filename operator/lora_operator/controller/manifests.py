"""Pure builders of the objects a LoRAJob run owns: ConfigMap, headless Service, Indexed Job, and
the serving Secret/ServiceAccount/InferenceService. No I/O, so every field is unit tested.

Why an Indexed Job + headless Service: each pod gets a stable DNS name `<job>-<i>.<service>` for
the torch rendezvous (index 0 is the master) and its node rank from JOB_COMPLETION_INDEX, with no
custom controller in the data path; Kueue admits such a Job natively as one gang.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from lora_contract import pod
from lora_contract.types import (
    API_VERSION,
    CPU_GPU_TYPE,
    KIND,
    LoRAJobSpec,
    PlanStatus,
    TrainerConfig,
)

from ..api.operator_config import OperatorConfig
from .s3_target import s3_target

LABEL_JOB = "finetune.lora-operator.io/job"
LABEL_RUN = "finetune.lora-operator.io/run"
ANNOTATION_SPEC_HASH = "finetune.lora-operator.io/spec-hash"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
MAX_NAME = 52  # Job names: pods are <job>-<index>-<suffix> and hostnames <job>-<index> (<= 63)


@dataclass(frozen=True)
class RunContext:
    """Everything a run's manifests depend on; built by the reconciler from spec + status."""

    name: str
    namespace: str
    uid: str
    run_id: str
    spec: LoRAJobSpec
    plan: PlanStatus
    config: OperatorConfig
    output_uri: str
    spec_hash: str = ""
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    deepspeed: dict[str, Any] | None = None
    queue_name: str | None = None
    base_adapter_uri: str | None = None  # spec.baseAdapter as resolved (base_adapter.py)


def short_name(*parts: str, limit: int = MAX_NAME) -> str:
    """Join with '-', and if too long keep a prefix plus a hash so names stay unique."""
    name = "-".join(p for p in parts if p)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def run_name(job: str, run_id: str) -> str:
    """Name of a run's Job, Service and ConfigMap prefix: `<job>-<run>` (a retrain never
    collides with the previous run's objects)."""
    return short_name(job, run_id)


def config_map_name(job: str, run_id: str) -> str:
    return short_name(run_name(job, run_id), "config", limit=63)


def labels(job: str, run_id: str | None, component: str) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": "lora-operator",
        "app.kubernetes.io/instance": job,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "lora-operator",
        LABEL_JOB: job,
    }
    if run_id:
        result[LABEL_RUN] = run_id
    return result


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """Controller reference to the LoRAJob: deleting it garbage-collects everything we made."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(ctx: RunContext, name: str, component: str = "trainer") -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ctx.namespace,
        "labels": labels(ctx.name, ctx.run_id, component),
        "annotations": {ANNOTATION_SPEC_HASH: ctx.spec_hash} if ctx.spec_hash else {},
        "ownerReferences": [owner_reference(ctx.name, ctx.uid)],
    }


# ------------------------------------------------------------------------------- ConfigMap


def trainer_config(ctx: RunContext) -> TrainerConfig:
    """The spec as the trainer runs it: with the training values the plan changed to fit."""
    return TrainerConfig(
        job_name=ctx.name,
        namespace=ctx.namespace,
        run_id=ctx.run_id,
        output_uri=ctx.output_uri,
        spec=ctx.plan.applied_to(ctx.spec),
        plan=ctx.plan,
        deepspeed=ctx.deepspeed,
        spec_hash=ctx.spec_hash or None,
        base_adapter_uri=ctx.base_adapter_uri,
    )


@functools.lru_cache(maxsize=512)
def _yaml_text(wire_json: str) -> str:
    """The YAML of a TrainerConfig, from its JSON (the same JSON, the same text). Cached: the
    ConfigMap is rebuilt at every resync of a running run to be kept as declared (children.py),
    and libyaml's emitter still took ~3 ms per job; the JSON that keys it, ~0.1 ms."""
    # libyaml's emitter when present: the pure-Python one took ~15 ms per job (operator scale).
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(json.loads(wire_json), Dumper=dumper, sort_keys=False)


def build_config_map(ctx: RunContext) -> dict[str, Any]:
    """The full training config (spec, plan, DeepSpeed config) the trainer reads at start."""
    text = _yaml_text(json.dumps(trainer_config(ctx).to_wire()))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(ctx, config_map_name(ctx.name, ctx.run_id)),
        "data": {pod.CONFIG_FILE: text},
    }


# --------------------------------------------------------------------------------- Service


def build_service(ctx: RunContext) -> dict[str, Any]:
    """Headless; publishNotReadyAddresses so rank 0 resolves before any pod is Ready."""
    name = run_name(ctx.name, ctx.run_id)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ctx, name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: ctx.name, LABEL_RUN: ctx.run_id},
            "ports": [
                {
                    "name": "rendezvous",
                    "port": ctx.config.rendezvous_port,
                    "targetPort": ctx.config.rendezvous_port,
                    "protocol": "TCP",
                }
            ],
        },
    }


# --------------------------------------------------------------------------------- the Job


def _claim_and_path(uri: str) -> tuple[str, str]:
    rest = uri[len("pvc://") :]
    claim, _, path = rest.partition("/")
    return claim, path


def pvc_claims(spec: LoRAJobSpec) -> dict[str, bool]:
    """claim -> read-only, for every pvc:// source (model and data are only read)."""
    uris = [spec.base_model.source, spec.dataset.source, spec.dataset.eval_source or ""]
    claims: dict[str, bool] = {}
    for uri in uris:
        if uri.startswith("pvc://"):
            claims[_claim_and_path(uri)[0]] = True
    return claims


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def trainer_image(ctx: RunContext) -> str:
    return ctx.spec.trainer_image or ctx.config.trainer_image


def build_env(ctx: RunContext) -> list[dict[str, Any]]:
    service = run_name(ctx.name, ctx.run_id)
    env: list[dict[str, Any]] = [
        {"name": pod.ENV_CONFIG, "value": pod.CONFIG_PATH},
        {"name": pod.ENV_RUN_ID, "value": ctx.run_id},
        {"name": pod.ENV_JOB_UID, "value": ctx.uid},
        {"name": pod.ENV_MASTER_ADDR, "value": f"{service}-0.{service}.{ctx.namespace}.svc"},
        {"name": pod.ENV_MASTER_PORT, "value": str(ctx.config.rendezvous_port)},
        {"name": pod.ENV_NNODES, "value": str(ctx.plan.nodes)},
        {
            "name": pod.ENV_NODE_RANK,
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}
            },
        },
        {"name": pod.ENV_NPROC_PER_NODE, "value": str(ctx.plan.gpus_per_node)},
        # torchrun's --local-addr: where peers reach this node's workers (no DNS needed).
        {"name": pod.ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": pod.ENV_PVC_ROOT, "value": pod.PVC_ROOT},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": pod.ENV_TRAINER_IMAGE, "value": trainer_image(ctx)},  # lineage
    ]
    # The root file system is read-only: every cache and scratch path points into an emptyDir.
    env.extend({"name": name, "value": value} for name, value in pod.SCRATCH_ENV.items())
    target = s3_target(ctx.spec, ctx.config)
    if target.endpoint:
        env.append({"name": pod.ENV_S3_ENDPOINT, "value": target.endpoint})
    if target.region:
        env.append({"name": pod.ENV_AWS_REGION, "value": target.region})
    if target.secret is not None:
        ref = target.secret
        env.append(_secret_env(pod.ENV_ACCESS_KEY, ref.name, ref.access_key_key))
        env.append(_secret_env(pod.ENV_SECRET_KEY, ref.name, ref.secret_key_key))
    if ctx.spec.base_model.source.startswith("hf://"):
        env.append({"name": pod.ENV_HF_HOME, "value": pod.HF_HOME})
    scratch = build_resources(ctx)["requests"].get("ephemeral-storage")
    if scratch:  # named in the trainer's disk-full error
        env.append({"name": pod.ENV_EPHEMERAL_STORAGE, "value": scratch})
    return env


def build_volumes(ctx: RunContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts): config, /dev/shm in RAM, the writable scratch emptyDirs (the
    root file system is read-only), pvc:// claims, the HF cache."""
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(ctx.name, ctx.run_id)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": pod.CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": pod.SHM_DIR},
        {"name": "tmp", "mountPath": pod.TMP_DIR},
        {"name": "home", "mountPath": pod.HOME_DIR},
    ]
    for i, (claim, read_only) in enumerate(sorted(pvc_claims(ctx.spec).items())):
        volume = f"pvc-{i}"
        volumes.append(
            {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only},
            }
        )
        mounts.append(
            {"name": volume, "mountPath": f"{pod.PVC_ROOT}/{claim}", "readOnly": read_only}
        )
    if ctx.spec.base_model.source.startswith("hf://"):
        if ctx.config.model_cache_claim:
            volumes.append(
                {
                    "name": "hf-cache",
                    "persistentVolumeClaim": {"claimName": ctx.config.model_cache_claim},
                }
            )
        else:
            volumes.append({"name": "hf-cache", "emptyDir": {}})
        mounts.append({"name": "hf-cache", "mountPath": pod.HF_HOME})
    return volumes, mounts


def build_resources(ctx: RunContext) -> dict[str, dict[str, str]]:
    """Requests/limits from the plan, overridden by spec.resources; GPUs in both (K8s needs
    requests == limits for extended resources), none on gpuType cpu."""
    res = ctx.spec.resources
    requests = ctx.plan.requests.overridden_by(res.requests).to_kubernetes()
    limits = ctx.plan.limits.overridden_by(res.limits).to_kubernetes()
    if res.gpu_type != CPU_GPU_TYPE and ctx.plan.gpus_per_node > 0:
        gpus = str(ctx.plan.gpus_per_node)
        requests[res.gpu_resource_name] = gpus
        limits[res.gpu_resource_name] = gpus
    return {"requests": requests, "limits": limits}


def trainer_account_name(job: str) -> str:
    """The per-LoRAJob trainer ServiceAccount, used when the operator config names none."""
    return short_name(job, "trainer", limit=63)


def build_trainer_account(ctx: RunContext) -> dict[str, Any] | None:
    """A ServiceAccount of the trainer's own, with no token and no RBAC binding, so trainer pods
    never run as the namespace's `default` account (which other workloads may have bound
    rights to). One per LoRAJob, shared by its runs; None when the config names an account."""
    if ctx.config.trainer_service_account:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": trainer_account_name(ctx.name),
            "namespace": ctx.namespace,
            "labels": labels(ctx.name, None, "trainer"),
            "ownerReferences": [owner_reference(ctx.name, ctx.uid)],
        },
        "automountServiceAccountToken": False,
    }


def pod_security_context() -> dict[str, Any]:
    """Pod Security Standards 'restricted': the image's non-root user, the runtime's seccomp
    profile. OnRootMismatch: a large model-cache PVC is not re-chowned at every start."""
    return {
        "runAsNonRoot": True,
        "runAsUser": pod.TRAINER_UID,
        "runAsGroup": pod.TRAINER_GID,
        "fsGroup": pod.TRAINER_GID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """No privilege escalation, no capabilities, nothing written outside the emptyDirs."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def fail_on_bad_config() -> dict[str, Any]:
    """The podFailurePolicy rule that fails the Job at once on the trainer's bad-config exit
    (a retry would fail the same way); the trainer and export Jobs both carry it."""
    return {
        "action": "FailJob",
        "onExitCodes": {
            "containerName": pod.TRAINER_CONTAINER,
            "operator": "In",
            "values": [pod.EXIT_INVALID_CONFIG],
        },
    }


def build_job(ctx: RunContext) -> dict[str, Any]:
    name = run_name(ctx.name, ctx.run_id)
    spec = ctx.spec
    nodes = ctx.plan.nodes
    volumes, mounts = build_volumes(ctx)
    container = {
        "name": pod.TRAINER_CONTAINER,
        "image": trainer_image(ctx),
        "imagePullPolicy": ctx.config.image_pull_policy,
        "command": ["python", "-m", "lora_trainer.launch"],
        "env": build_env(ctx),
        "resources": build_resources(ctx),
        "volumeMounts": mounts,
        "ports": [{"name": "rendezvous", "containerPort": ctx.config.rendezvous_port}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": name,
        "serviceAccountName": ctx.config.trainer_service_account or trainer_account_name(ctx.name),
        "automountServiceAccountToken": False,  # trainers never call the Kubernetes API
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    node_selector = {**ctx.gpu_node_selector, **spec.resources.node_selector}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in spec.resources.tolerations]
    if spec.resources.priority_class_name:
        pod_spec["priorityClassName"] = spec.resources.priority_class_name
    if ctx.plan.termination_grace_seconds:  # a step and a checkpoint after SIGTERM (the plan's)
        pod_spec["terminationGracePeriodSeconds"] = ctx.plan.termination_grace_seconds
    metadata = _metadata(ctx, name)
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimitPerIndex": ctx.config.backoff_limit_per_index,
        "maxFailedIndexes": 0,
        "podFailurePolicy": {
            "rules": [
                fail_on_bad_config(),
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
                {  # SIGTERM handled: checkpointed and exited (lora_trainer.preemption)
                    "action": "Ignore",
                    "onExitCodes": {
                        "containerName": pod.TRAINER_CONTAINER,
                        "operator": "In",
                        "values": [pod.EXIT_PREEMPTED],
                    },
                },
            ]
        },
        "template": {
            "metadata": {"labels": metadata["labels"], "annotations": metadata["annotations"]},
            "spec": pod_spec,
        },
    }
    if ctx.queue_name:
        metadata["labels"][KUEUE_QUEUE_LABEL] = ctx.queue_name
        job_spec["suspend"] = True
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def build_run_objects(ctx: RunContext) -> list[tuple[str, dict[str, Any]]]:
    """(resource, object) in creation order: the Job last, so its pods find their
    ServiceAccount, config and DNS."""
    account = build_trainer_account(ctx)
    return [
        *([("v1/serviceaccounts", account)] if account else []),
        ("v1/configmaps", build_config_map(ctx)),
        ("v1/services", build_service(ctx)),
        ("batch/v1/jobs", build_job(ctx)),
    ]
