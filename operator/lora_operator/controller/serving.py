"""Serve a finished adapter with KServe (vLLM multi-LoRA) and report its readiness.

Returns the Serving condition rather than raising: a cluster without KServe still gets a
Succeeded job, with Serving=False/KServeNotInstalled saying why nothing serves it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lora_contract.types import LoRAJobSpec

from .conditions import ConditionStatus
from .kube import Kube, KubeError
from .manifests import (
    build_inference_service,
    build_serving_account,
    build_serving_secret,
    serving_names,
)
from .progress import S3Credentials

ISVC = "serving.kserve.io/v1beta1/inferenceservices"


@dataclass(frozen=True)
class ServingState:
    status: ConditionStatus
    reason: str
    message: str
    url: str | None = None


async def _apply(kube: Kube, resource: str, namespace: str, body: dict[str, Any]) -> None:
    """Create, or merge-patch what we own (spec/data/annotations) into the existing object."""
    existing, created = await kube.create(resource, namespace, body)
    if created:
        return
    patch = {k: v for k, v in body.items() if k not in ("apiVersion", "kind", "metadata")}
    patch["metadata"] = {"labels": body["metadata"].get("labels", {})}
    if body["metadata"].get("annotations"):
        patch["metadata"]["annotations"] = body["metadata"]["annotations"]
    if any(existing.get(k) != v for k, v in patch.items() if k != "metadata"):
        await kube.patch(resource, namespace, body["metadata"]["name"], patch)


def readiness(isvc: dict[str, Any]) -> ServingState:
    status = isvc.get("status") or {}
    ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), None)
    url = status.get("url")
    if ready is None:
        return ServingState("Unknown", "Deploying", "InferenceService created, not ready yet")
    if ready.get("status") == "True":
        return ServingState("True", "Ready", f"serving at {url}" if url else "ready", url)
    return ServingState(
        "False",
        ready.get("reason") or "NotReady",
        ready.get("message") or "InferenceService is not ready",
        url,
    )


async def ensure_serving(
    kube: Kube,
    name: str,
    namespace: str,
    uid: str,
    spec: LoRAJobSpec,
    adapter_uri: str,
    run_id: str,
    creds: S3Credentials | None,
) -> ServingState:
    try:
        if creds is not None:
            secret = build_serving_secret(
                name,
                namespace,
                uid,
                creds.endpoint,
                creds.region,
                creds.access_key,
                creds.secret_key,
            )
            await _apply(kube, "v1/secrets", namespace, secret)
            await _apply(
                kube, "v1/serviceaccounts", namespace, build_serving_account(name, namespace, uid)
            )
        body = build_inference_service(
            name, namespace, uid, spec, adapter_uri, run_id, with_service_account=creds is not None
        )
        await _apply(kube, ISVC, namespace, body)
        isvc = await kube.get(ISVC, namespace, name)
    except KubeError as exc:
        if exc.status == 404:
            return ServingState(
                "False",
                "KServeNotInstalled",
                "the InferenceService resource (serving.kserve.io/v1beta1) is not installed; "
                "install KServe to serve the adapter",
            )
        return ServingState("False", "ServingError", f"cannot create InferenceService: {exc}")
    return readiness(isvc or body)


async def remove_serving(kube: Kube, name: str, namespace: str) -> bool:
    """serving.enabled turned off: delete what ensure_serving made. True if something existed."""
    existed = False
    try:
        existed = await kube.delete(ISVC, namespace, name)
    except KubeError as exc:
        if exc.status != 404:
            raise
    secret, account = serving_names(name)
    await kube.delete("v1/serviceaccounts", namespace, account)
    await kube.delete("v1/secrets", namespace, secret)
    return existed
