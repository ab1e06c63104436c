"""Serve a finished adapter with KServe (vLLM multi-LoRA): the objects it takes (an
InferenceService, and a ServiceAccount that lists the job's own credentials Secret the way
KServe's storage initializer finds S3 credentials), applying them (their plugs in children.py:
created when missing, declared fields put back when edited), and their readiness.

The operator never copies a tenant's Secret: KServe's credential builder reads the Secrets named
in the predictor's ServiceAccount and points the storage initializer's env at them by name
(secretKeyRef), so the Secret the job already names is listed, not copied. The operator reads
no Secret for serving, and needs no right to write one (docs/security.md, "Serving credentials").

Returns the Serving condition rather than raising: a cluster without KServe still gets a
Succeeded job, with Serving=False/KServeNotInstalled saying why nothing serves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lora_contract.types import (
    CPU_GPU_TYPE,
    VLLM_LORA_RANKS,
    LoRAJobSpec,
    Reason,
    ServingPlanStatus,
)

from ..memory.serving_plan import quantization_flags
from .children import INFERENCE_SERVICE, SERVING_ACCOUNT, apply
from .conditions import ConditionStatus
from .kube import Kube, KubeError
from .manifests import container_security_context, labels, owner_reference, short_name
from .ownership import NameConflict, delete_owned

ISVC = INFERENCE_SERVICE.resource
ACCOUNTS = SERVING_ACCOUNT.resource
SERVING_BASE_PATH = "/mnt/models/base"
SERVING_ADAPTER_PATH = "/mnt/models/adapter"
# KServe's huggingfaceserver image runs as uid 1000 (user `kserve`, HOME /home/kserve, HF_HOME
# under /tmp): with a read-only root, vLLM's caches (~/.cache/vllm, ~/.triton, torch compile)
# and temp files go to these emptyDirs.
SERVING_UID = 1000
SERVING_TMP = "/tmp"
SERVING_HOME = "/home/kserve"
QUANTIZATION_FLAGS = ("--quantization", "--load-format")  # the spec's, not a stale plan's


def vllm_lora_rank(r: int) -> int:
    """Smallest vLLM-supported --max-lora-rank >= r (vLLM's default 16 fails larger adapters)."""
    for rank in VLLM_LORA_RANKS:
        if r <= rank:
            return rank
    raise ValueError(f"lora.r {r} is above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


@dataclass(frozen=True)
class ServerSize:
    """What a vLLM server pod is sized to (dedicated and shared servers alike): the serving plan's
    GPUs, sizing flags, pod requests/limits and node selector, or without a plan the old shape
    (one GPU of the training's type, vLLM's defaults)."""

    gpus: int
    gpu_resource_name: str
    vllm_args: tuple[str, ...] = ()
    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    planned: bool = False  # from a serving plan: requests/limits are declared even when empty

    def resources(self) -> dict[str, Any]:
        """The vLLM container's resources: the plan's cpu/memory and the GPUs."""
        resources: dict[str, Any] = {}
        if self.planned:
            resources = {"requests": dict(self.requests), "limits": dict(self.limits)}
        if self.gpus:
            resources.setdefault("requests", {})[self.gpu_resource_name] = str(self.gpus)
            resources.setdefault("limits", {})[self.gpu_resource_name] = str(self.gpus)
        return resources


def server_size(spec: LoRAJobSpec, plan: ServingPlanStatus | None) -> ServerSize:
    """`plan`: status.plan.serving (memory/serving_plan.py); None (planned with serving off, or
    by an operator before serving plans): one GPU of the training's type, vLLM's defaults. The
    spec's own node selector labels win over the catalog type's. The quantization flags follow
    `spec.serving.quantization` (the shared server key's) even when the plan is older."""
    gpu_name = spec.resources.gpu_resource_name
    own_labels = dict(spec.resources.node_selector)
    quantized = quantization_flags(spec.serving.quantization)
    if plan is None:
        gpus = 0 if spec.resources.gpu_type == CPU_GPU_TYPE else 1
        return ServerSize(gpus, gpu_name, quantized, node_selector=own_labels)
    sizing = tuple(a for a in plan.vllm_args if not a.startswith(QUANTIZATION_FLAGS))
    return ServerSize(
        plan.gpus,
        gpu_name,
        sizing + quantized,
        plan.requests.to_kubernetes(),
        plan.limits.to_kubernetes(),
        {**plan.node_selector, **own_labels},
        planned=True,
    )


def serving_account_name(job: str) -> str:
    """The ServiceAccount `<job>-serving` the predictor runs as (fits 63 characters)."""
    return short_name(job, "serving", limit=63)


def build_serving_account(
    name: str, namespace: str, uid: str, credentials_secret: str
) -> dict[str, Any]:
    """Owned by the LoRAJob; its `secrets` names the job's own credentials Secret (the one the
    trainer uses), which KServe's storage initializer then reads by reference: no copy."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": serving_account_name(name),
            "namespace": namespace,
            "labels": labels(name, None, "serving"),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "secrets": [{"name": credentials_secret}],
    }


def predictor_pod_security_context() -> dict[str, Any]:
    """The predictor pod's restricted-profile context (dedicated and shared servers alike)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": SERVING_UID,
        "runAsGroup": SERVING_UID,
        "fsGroup": SERVING_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_mounts() -> list[dict[str, Any]]:
    """Where vLLM writes on a read-only root: /tmp, HOME and shared memory."""
    return [
        {"name": "tmp", "mountPath": SERVING_TMP},
        {"name": "home", "mountPath": SERVING_HOME},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]


def scratch_volumes() -> list[dict[str, Any]]:
    """The emptyDirs behind `scratch_mounts` (shared memory in RAM)."""
    return [
        {"name": "tmp", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]


def build_inference_service(
    name: str,
    namespace: str,
    uid: str,
    spec: LoRAJobSpec,
    adapter_uri: str,
    run_id: str,
    with_service_account: bool,
    plan: ServingPlanStatus | None = None,
) -> dict[str, Any]:
    """KServe huggingface runtime on the vLLM backend with the adapter as a LoRA module.

    `plan`: the serving plan in status.plan.serving (memory/serving_plan.py): its GPUs, vLLM
    sizing flags, node selector and pod requests. None (a plan made with serving off, or by an
    operator before serving plans): one GPU of the training's type, vLLM's own defaults."""
    adapter = spec.serving.adapter_name or name
    size = server_size(spec, plan)
    args = [
        "--backend=vllm",
        f"--model_name={spec.base_model.name}",
        f"--model_dir={SERVING_BASE_PATH}",
        "--enable-lora",
        f"--max-lora-rank={vllm_lora_rank(spec.lora.r)}",
        "--lora-modules",
        f"{adapter}={SERVING_ADAPTER_PATH}",
        *size.vllm_args,
    ]
    resources = size.resources()
    node_selector = dict(size.node_selector)
    predictor: dict[str, Any] = {
        "minReplicas": spec.serving.replicas,
        "maxReplicas": max(spec.serving.replicas, 1),
        "model": {
            "modelFormat": {"name": "huggingface"},
            "args": args,
            "storageUris": [
                {"uri": spec.base_model.source, "mountPath": SERVING_BASE_PATH},
                {"uri": adapter_uri, "mountPath": SERVING_ADAPTER_PATH},
            ],
            "resources": resources,
            "env": [{"name": "HOME", "value": SERVING_HOME}],
            "volumeMounts": scratch_mounts(),
            "securityContext": container_security_context(),  # the trainer's rules
        },
        # PodSpec fields are inlined in KServe's PredictorSpec. The pod-level context also
        # covers KServe's storage-initializer (its container-level one is KServe's to set).
        "securityContext": predictor_pod_security_context(),
        "automountServiceAccountToken": False,  # neither vLLM nor the initializer calls the API
        "volumes": scratch_volumes(),
    }
    if node_selector:
        predictor["nodeSelector"] = node_selector
    if spec.resources.tolerations:
        predictor["tolerations"] = [t.to_wire() for t in spec.resources.tolerations]
    if with_service_account:
        predictor["serviceAccountName"] = serving_account_name(name)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(name, run_id, "serving"),
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": {"predictor": predictor},
    }


@dataclass(frozen=True)
class ServingState:
    status: ConditionStatus
    reason: Reason | str  # str: the InferenceService's own Ready reason, passed through
    message: str
    url: str | None = None


def readiness(isvc: dict[str, Any]) -> ServingState:
    status = isvc.get("status") or {}
    ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
    url = status.get("url")
    if ready is None:
        return ServingState("Unknown", Reason.Deploying, "InferenceService created, not ready yet")
    if ready.get("status") == "True":
        return ServingState("True", Reason.Ready, f"serving at {url}" if url else "ready", url)
    return ServingState(
        "False",
        ready.get("reason") or Reason.NotReady,
        ready.get("message") or "InferenceService is not ready",
        url,
    )


def failed_state(exc: KubeError, doing: str) -> ServingState:
    """Serving=False for an API error: KServe not installed (404 on its resource) or another."""
    if exc.status == 404:
        return ServingState(
            "False",
            Reason.KServeNotInstalled,
            "the InferenceService resource (serving.kserve.io/v1beta1) is not installed; "
            "install KServe to serve the adapter",
        )
    return ServingState("False", Reason.ServingError, f"{doing}: {exc}")


async def ensure_serving(
    kube: Kube,
    name: str,
    namespace: str,
    uid: str,
    spec: LoRAJobSpec,
    adapter_uri: str,
    run_id: str,
    credentials_secret: str | None,
    plan: ServingPlanStatus | None = None,
) -> ServingState:
    """`credentials_secret`: the job's credentials Secret (spec.output.credentialsSecret or the
    operator's default), listed by name; None (credentials from the operator's environment):
    no ServiceAccount, KServe's own defaults apply."""
    try:
        if credentials_secret is not None:
            account = build_serving_account(name, namespace, uid, credentials_secret)
            await apply(kube, SERVING_ACCOUNT, namespace, account, uid)
        listed = credentials_secret is not None
        body = build_inference_service(
            name, namespace, uid, spec, adapter_uri, run_id, listed, plan
        )
        isvc = (await apply(kube, INFERENCE_SERVICE, namespace, body, uid)).obj
    except NameConflict as conflict:
        return ServingState("False", Reason.NameConflict, conflict.message())
    except KubeError as exc:
        return failed_state(exc, "cannot create InferenceService")
    return readiness(isvc)


async def remove_serving(kube: Kube, name: str, namespace: str, uid: str) -> list[NameConflict]:
    """serving.enabled turned off: delete what ensure_serving made, and only that (each object
    is checked to be controlled by `uid` and deleted with a uid precondition). Returns the
    objects of those names that are not ours and were left alone. A `<job>-s3` Secret copied by
    an earlier operator version is not deleted here (no Secret delete right): the garbage
    collector removes it with the LoRAJob, whose controller reference it carries."""
    left_alone: list[NameConflict] = []
    for resource, object_name in ((ISVC, name), (ACCOUNTS, serving_account_name(name))):
        try:
            await delete_owned(kube, resource, namespace, object_name, uid)
        except NameConflict as conflict:
            left_alone.append(conflict)
    return left_alone
