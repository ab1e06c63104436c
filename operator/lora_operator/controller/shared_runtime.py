"""The shared server's pods, built from its registry alone (pure: shared_serving.py applies
them). KServe runs a multi-container predictor only through a ServingRuntime (kserve#2321), so
each registry gets an operator-owned ServingRuntime of its own name holding the vLLM container
and the `adapter-sync` sidecar that fills vLLM's resolver directory from the registry; the
InferenceService only names that runtime and the base model's storage URI.

Why these choices (docs/serving.md, "How adapters reach the server"):
- the runtime is never auto-selected (`autoSelect: false`): no other InferenceService in the
  namespace lands on a runtime holding these teams' Secrets;
- the sidecar runs the operator config's trainer image, never a job's `spec.trainerImage`: it
  reads every listed team's credentials Secret, so it must be the platform's code;
- each credentials Secret is one read-only volume under CREDENTIALS_DIR/<secret>, and the
  syncer downloads an entry only with the keys of the Secret that entry names;
- the size comes from the creating job's serving plan, recorded in `server.json`, so every
  job on the server declares the same runtime (no two jobs fighting over its spec).
"""

from __future__ import annotations

import json
from typing import Any

from lora_contract import pod
from lora_contract.adapter_registry import SERVER_DATA_KEY
from lora_contract.types import LoRAJobSpec, ServingPlanStatus

from .manifests import container_security_context
from .s3_target import S3Target
from .serving import (
    SERVING_HOME,
    ServerSize,
    scratch_mounts,
    scratch_volumes,
    server_size,
    vllm_lora_rank,
)
from .shared_registry import entries, max_rank

RUNTIME_API_VERSION = "serving.kserve.io/v1alpha1"
MODEL_FORMAT = "huggingface"
MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the runtime's storageUri
ADAPTER_DIR = "/mnt/adapters"  # vLLM's filesystem resolver reads adapters from here
REGISTRY_DIR = "/etc/lora-registry"  # the registry ConfigMap, as kubelet mounts it
CREDENTIALS_DIR = "/etc/lora-credentials"  # one folder per listed credentials Secret
VLLM_CONTAINER = "kserve-container"  # the name KServe gives the predictor's model container
SYNC_CONTAINER = "adapter-sync"
# The syncer is a Python loop downloading one object at a time through the minio client, which
# streams it to disk (fget_object): 43 MiB resident once imported (measured, maxrss); 256Mi is
# ample, the 512Mi limit bounds a runaway without taking much from vLLM's host memory.
SYNC_REQUESTS = {"cpu": "100m", "memory": "256Mi"}
SYNC_LIMITS = {"memory": "512Mi"}


def server_shape(
    spec: LoRAJobSpec, plan: ServingPlanStatus | None = None, target: S3Target | None = None
) -> dict[str, Any]:
    """What the server is, taken from the job that creates it and kept in `server.json`: the
    base model, replicas, the serving plan's size and where adapters are downloaded from. Keys
    without a value are left out, so a job without a plan records today's shape exactly."""
    size = server_size(spec, plan)
    shape: dict[str, Any] = {
        "baseModel": spec.base_model.name,
        "source": spec.base_model.source,
        "gpuResourceName": size.gpu_resource_name,
        "gpus": size.gpus,
        "replicas": spec.serving.replicas,
    }
    optional: dict[str, Any] = {
        "vllmArgs": list(size.vllm_args),
        "requests": size.requests,
        "limits": size.limits,
        "nodeSelector": size.node_selector,  # as the dedicated server: the spec's labels too
        "s3Endpoint": target.endpoint if target is not None else None,
        "s3Region": target.region if target is not None else None,
    }
    shape.update({key: value for key, value in optional.items() if value})
    return shape


def shape_of(registry: dict[str, Any]) -> dict[str, Any]:
    """The registry's `server.json` ({} when absent: a CPU server of one replica)."""
    shape: dict[str, Any] = json.loads((registry.get("data") or {}).get(SERVER_DATA_KEY) or "{}")
    return shape


def size_of(shape: dict[str, Any]) -> ServerSize:
    """The recorded size; a registry written before plans were recorded: GPUs only."""
    return ServerSize(
        int(shape.get("gpus", 0)),
        str(shape.get("gpuResourceName", "nvidia.com/gpu")),
        tuple(str(arg) for arg in shape.get("vllmArgs") or ()),
        dict(shape.get("requests") or {}),
        dict(shape.get("limits") or {}),
        dict(shape.get("nodeSelector") or {}),
        planned=bool(shape.get("requests") or shape.get("limits")),
    )


def registry_reference(registry: dict[str, Any]) -> dict[str, Any]:
    """The registry as controller of the server's objects (collected with it)."""
    meta = registry["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def registry_child_metadata(registry: dict[str, Any]) -> dict[str, Any]:
    """The metadata of each object the registry controls (runtime, server, ServiceAccount): its
    name, namespace and labels, and the registry as controller."""
    meta = registry["metadata"]
    return {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "labels": dict(meta.get("labels") or {}),
        "ownerReferences": [registry_reference(registry)],
    }


def credential_secrets(registry: dict[str, Any]) -> list[str]:
    """The credentials Secrets the registry's entries name, each once, sorted (their volumes
    are `cred-<index>` in this order)."""
    return sorted({e.secret for e in entries(registry).values() if e.secret})


def vllm_lora_flags(registry: dict[str, Any]) -> list[str]:
    """LoRA on; `--max-lora-rank` covers every entry (a larger adapter rolls the server), the
    plan's flags size it. Shared by both serving APIs (shared_llmisvc.py)."""
    size = size_of(shape_of(registry))
    return [
        "--enable-lora",
        f"--max-lora-rank={vllm_lora_rank(max_rank(registry))}",
        *size.vllm_args,
    ]


def vllm_env() -> list[dict[str, Any]]:
    """vLLM's filesystem resolver reading ADAPTER_DIR, adapters loadable at run time."""
    return [
        {"name": "HOME", "value": SERVING_HOME},
        {"name": "VLLM_PLUGINS", "value": "lora_filesystem_resolver"},
        {"name": "VLLM_LORA_RESOLVER_CACHE_DIR", "value": ADAPTER_DIR},
        {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "true"},
    ]


def vllm_mounts() -> list[dict[str, Any]]:
    return [
        *scratch_mounts(),
        {"name": "adapters", "mountPath": ADAPTER_DIR, "readOnly": True},  # the sidecar writes
    ]


def vllm_container(registry: dict[str, Any], image: str) -> dict[str, Any]:
    """vLLM with LoRA on, its filesystem resolver reading ADAPTER_DIR (`vllm_lora_flags`)."""
    shape = shape_of(registry)
    size = size_of(shape)
    return {
        "name": VLLM_CONTAINER,
        "image": image,
        "args": [
            "--backend=vllm",
            f"--model_name={shape.get('baseModel', '')}",
            f"--model_dir={MODEL_DIR}",
            *vllm_lora_flags(registry),
        ],
        "env": vllm_env(),
        "resources": size.resources(),
        "securityContext": container_security_context(),
        "volumeMounts": vllm_mounts(),
    }


def sync_container(registry: dict[str, Any], image: str) -> dict[str, Any]:
    """The adapter syncer (lora_trainer.adapter_sync): the registry read-only, each listed
    credentials Secret read-only in its own folder, the resolver directory writable."""
    shape = shape_of(registry)
    env = []
    if shape.get("s3Endpoint"):
        env.append({"name": pod.ENV_S3_ENDPOINT, "value": str(shape["s3Endpoint"])})
    if shape.get("s3Region"):
        env.append({"name": pod.ENV_AWS_REGION, "value": str(shape["s3Region"])})
    secret_mounts = [
        {"name": f"cred-{index}", "mountPath": f"{CREDENTIALS_DIR}/{secret}", "readOnly": True}
        for index, secret in enumerate(credential_secrets(registry))
    ]
    return {
        "name": SYNC_CONTAINER,
        "image": image,
        "command": [
            "python",
            "-m",
            "lora_trainer.adapter_sync",
            "--registry",
            REGISTRY_DIR,
            "--dir",
            ADAPTER_DIR,
            "--credentials",
            CREDENTIALS_DIR,
        ],
        "env": env,
        "resources": {"requests": dict(SYNC_REQUESTS), "limits": dict(SYNC_LIMITS)},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "registry", "mountPath": REGISTRY_DIR, "readOnly": True},
            {"name": "adapters", "mountPath": ADAPTER_DIR},
            *secret_mounts,
        ],
    }


def runtime_volumes(registry: dict[str, Any]) -> list[dict[str, Any]]:
    name = registry["metadata"]["name"]
    secrets = [
        {"name": f"cred-{index}", "secret": {"secretName": secret}}
        for index, secret in enumerate(credential_secrets(registry))
    ]
    return [
        *scratch_volumes(),
        {"name": "adapters", "emptyDir": {}},
        {"name": "registry", "configMap": {"name": name}},
        *secrets,
    ]


def build_shared_runtime(
    registry: dict[str, Any], serving_image: str, sync_image: str
) -> dict[str, Any]:
    """The ServingRuntime `<registry name>`, controlled by the registry. `serving_image`: the
    operator config's servingImage; `sync_image`: its trainerImage (never a job's)."""
    size = size_of(shape_of(registry))
    spec: dict[str, Any] = {
        "supportedModelFormats": [{"name": MODEL_FORMAT, "autoSelect": False}],
        "multiModel": False,
        "containers": [
            vllm_container(registry, serving_image),
            sync_container(registry, sync_image),
        ],
        "volumes": runtime_volumes(registry),
    }
    if size.node_selector:
        spec["nodeSelector"] = dict(size.node_selector)
    return {
        "apiVersion": RUNTIME_API_VERSION,
        "kind": "ServingRuntime",
        "metadata": registry_child_metadata(registry),
        "spec": spec,
    }


def build_shared_predictor_model(registry: dict[str, Any]) -> dict[str, Any]:
    """The InferenceService's `predictor.model`: the registry's own runtime, the base model."""
    return {
        "modelFormat": {"name": MODEL_FORMAT},
        "runtime": registry["metadata"]["name"],
        "storageUri": str(shape_of(registry).get("source", "")),
    }
