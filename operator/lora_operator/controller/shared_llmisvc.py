"""The shared server as KServe's LLMInferenceService (where the cluster serves it, serving_api.py),
built from its registry alone (pure: shared_serving.py applies it). Same pods as the
InferenceService path (shared_runtime.py): vLLM with its filesystem resolver and the
`adapter-sync` sidecar filling it from the registry; only where they are declared differs.

- KServe's well-known config (`kserve-config-llm-template`) runs `vllm serve /mnt/models` in the
  container `main` and appends `VLLM_ADDITIONAL_ARGS`: our flags go there, so the image, port,
  probes and served model name stay KServe's; `spec.template` is merged into that template by
  container name, so the sidecar and the volumes are ours.
- `spec.model.lora` is not used: it lists adapters statically (a change rolls the pods), while
  the registry's adapters reach vLLM at run time through the resolver directory.
- `spec.router` asks for the Inference Extension's scheduler only where the InferencePool API is
  served: KServe then creates the InferencePool and the endpoint picker, which routes a request
  by its `model` field (the adapter name) with LoRA affinity from vLLM's metrics; no object per
  adapter is needed (docs/serving.md, "Which serving API").
"""

from __future__ import annotations

from typing import Any

from .manifests import container_security_context
from .serving import predictor_pod_security_context
from .shared_registry import listed_secrets
from .shared_runtime import (
    registry_child_metadata,
    runtime_volumes,
    shape_of,
    size_of,
    sync_container,
    vllm_env,
    vllm_lora_flags,
    vllm_mounts,
)

LLMISVC_API_VERSION = "serving.kserve.io/v1alpha1"
MAIN_CONTAINER = "main"  # the name KServe's LLM templates give the vLLM container
ADDITIONAL_ARGS = "VLLM_ADDITIONAL_ARGS"  # appended to `vllm serve` by KServe's template
# KServe creates (and owns) the HTTPRoute, Gateway, InferencePool and endpoint picker.
SCHEDULED_ROUTER: dict[str, Any] = {"route": {}, "gateway": {}, "scheduler": {}}


def main_container(registry: dict[str, Any]) -> dict[str, Any]:
    """KServe's vLLM container, our flags, resolver env, size and mounts (no image: KServe's)."""
    size = size_of(shape_of(registry))
    return {
        "name": MAIN_CONTAINER,
        "env": [
            *vllm_env(),
            {"name": ADDITIONAL_ARGS, "value": " ".join(vllm_lora_flags(registry))},
        ],
        "resources": size.resources(),
        "securityContext": container_security_context(),
        "volumeMounts": vllm_mounts(),
    }


def build_shared_llm_inference_service(
    registry: dict[str, Any], sync_image: str, scheduler: bool
) -> dict[str, Any]:
    """The LLMInferenceService `<registry name>`, controlled by the registry. `sync_image`: the
    operator config's trainerImage (never a job's); `scheduler`: the Inference Extension's
    InferencePool API is served."""
    meta = registry["metadata"]
    shape = shape_of(registry)
    size = size_of(shape)
    template: dict[str, Any] = {
        "containers": [main_container(registry), sync_container(registry, sync_image)],
        "volumes": runtime_volumes(registry),
        "securityContext": predictor_pod_security_context(),
        "automountServiceAccountToken": False,  # neither vLLM, the syncer nor the initializer
    }
    if listed_secrets(registry):  # the storage initializer reads the base model with them
        template["serviceAccountName"] = meta["name"]
    if size.node_selector:
        template["nodeSelector"] = dict(size.node_selector)
    spec: dict[str, Any] = {
        "model": {"uri": str(shape.get("source", "")), "name": str(shape.get("baseModel", ""))},
        "replicas": int(shape.get("replicas", 1)),
        "template": template,
    }
    if scheduler:
        spec["router"] = {key: dict(value) for key, value in SCHEDULED_ROUTER.items()}
    return {
        "apiVersion": LLMISVC_API_VERSION,
        "kind": "LLMInferenceService",
        "metadata": registry_child_metadata(registry),
        "spec": spec,
    }
