"""Shared serving (`serving.mode: shared`): one KServe InferenceService per base model in a
namespace, its adapters listed in a registry ConfigMap (shared_registry.py decides what it
holds). The registry controls the InferenceService and is owned (non-controller references) by
every LoRAJob on it, so the garbage collector removes both when the last such LoRAJob is gone;
no finalizer. A job's own resync registers it and sweeps the entries of jobs that are gone or no
longer serve shared, level-based, so an operator restart loses nothing: the registry is the
record. How adapters reach vLLM (a resolver directory) is in docs/serving.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

from lora_contract.adapter_registry import Entry, is_endpoint_url
from lora_contract.types import (
    GROUP,
    PLURAL,
    VERSION,
    LoRAJobSpec,
    Reason,
    SecretRef,
    ServingPlanStatus,
)

from ..api.operator_config import OperatorConfig
from .children import (
    INFERENCE_SERVICE,
    LLM_INFERENCE_SERVICE,
    SERVING_ACCOUNT,
    SERVING_RUNTIME,
    apply,
)
from .kube import Kube, KubeError
from .ownership import NameConflict, controlled_by, delete_owned
from .s3_target import s3_target
from .serving import ServingState, failed_state, predictor_pod_security_context, readiness
from .serving_api import serving_apis
from .shared_llmisvc import build_shared_llm_inference_service
from .shared_registry import (
    ServerKey,
    adapter_holder,
    build_registry,
    digest_of,
    entries,
    entry_key,
    is_empty,
    is_operator_registry,
    listed_secrets,
    patched,
    server_key,
    sweep_and_registration,
    sweep_patch,
)
from .shared_runtime import (
    build_shared_predictor_model,
    build_shared_runtime,
    registry_child_metadata,
    server_shape,
    shape_of,
)

CONFIG_MAPS = "v1/configmaps"
ISVC = INFERENCE_SERVICE.resource
ACCOUNTS = SERVING_ACCOUNT.resource
RUNTIMES = SERVING_RUNTIME.resource
LLMISVC = LLM_INFERENCE_SERVICE.resource
LORAJOBS = f"{GROUP}/{VERSION}/{PLURAL}"


def is_shared(spec: dict[str, Any]) -> bool:
    serving = spec.get("serving") or {}
    return bool(serving.get("enabled")) and serving.get("mode") == "shared"


async def live_shared_uids(kube: Kube, namespace: str) -> set[str]:
    """The uids of the namespace's LoRAJobs that serve on a shared server (the sweep keeps only
    their entries)."""
    jobs = await kube.list(LORAJOBS, namespace)
    return {
        str((job.get("metadata") or {}).get("uid"))
        for job in jobs
        if is_shared(job.get("spec") or {})
        and not (job.get("metadata") or {}).get("deletionTimestamp")
    }


def build_shared_account(registry: dict[str, Any]) -> dict[str, Any] | None:
    """The server's ServiceAccount (the registry's name), controlled by the registry, listing
    the credentials Secrets of the jobs on it by name; None when none names one."""
    secrets = listed_secrets(registry)
    if not secrets:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": registry_child_metadata(registry),
        "secrets": [{"name": secret} for secret in secrets],
    }


def build_shared_inference_service(registry: dict[str, Any]) -> dict[str, Any]:
    """The shared server: the registry's own ServingRuntime (vLLM and the adapter syncer,
    shared_runtime.py) on the base model, controlled by the registry. Only pod-level fields are
    here; the containers, their size and volumes are the runtime's."""
    meta = registry["metadata"]
    replicas = int(shape_of(registry).get("replicas", 1))
    predictor: dict[str, Any] = {
        "minReplicas": replicas,
        "maxReplicas": max(replicas, 1),
        "model": build_shared_predictor_model(registry),
        # the pod-level context also covers KServe's storage-initializer
        "securityContext": predictor_pod_security_context(),
        "automountServiceAccountToken": False,  # neither vLLM, the syncer nor the initializer
    }
    if listed_secrets(registry):  # the storage initializer reads the base model with them
        predictor["serviceAccountName"] = meta["name"]
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": registry_child_metadata(registry),
        "spec": {"predictor": predictor},
    }


async def _isvc_server(kube: Kube, namespace: str, name: str, controller: str) -> bool:
    """Whether the registry already serves as an InferenceService (made before KServe's
    LLMInferenceService was installed): it keeps that kind until its last job leaves, rather than
    a second server on the same GPUs (docs/serving.md, "Which serving API")."""
    isvc = await kube.get(ISVC, namespace, name)
    return isvc is not None and controlled_by(isvc, controller)


def _state_of_conflict(conflict: NameConflict) -> ServingState:
    return ServingState("False", Reason.NameConflict, conflict.message())


async def _patch_registry(
    kube: Kube, registry: dict[str, Any], patch: dict[str, Any]
) -> dict[str, Any]:
    """A merge patch carrying the resourceVersion read: two jobs registering at once cannot lose
    each other's owner reference (the loser gets 409 and decides again, `_register`)."""
    meta = registry["metadata"]
    body = {
        **patch,
        "metadata": {**patch.get("metadata", {}), "resourceVersion": meta.get("resourceVersion")},
    }
    obj: dict[str, Any] = await kube.patch(CONFIG_MAPS, meta["namespace"], meta["name"], body)
    return obj


# Two jobs registering at once: the loser's patch gets 409 and re-reads; a few tries suffice
# (each retry follows another writer's success), the next resync after that.
REGISTER_TRIES = 3


def _on_server(entry: Entry, shape: dict[str, Any]) -> Entry:
    """The entry as the server records it: the job's S3 endpoint/region only where they are not
    the ones the server's syncer downloads from (`server.json`, its env), so an upgrade rewrites
    no entry of the creating job's store."""
    return entry.on_server(shape.get("s3Endpoint"), shape.get("s3Region"))


async def _register(
    kube: Kube,
    namespace: str,
    key: ServerKey,
    name: str,
    uid: str,
    entry: Entry,
    shape: dict[str, Any],
) -> dict[str, Any] | ServingState:
    """The registry with this job's entry on it (created with it when missing), or the
    NameConflict state of an adapter name another job serves there. A write that lost a race
    (409: the registry changed since it was read) is decided again on a fresh read."""
    tries = 1
    while True:
        registry = await kube.get(CONFIG_MAPS, namespace, key.name)
        if registry is None:
            body = build_registry(key, namespace, name, uid, _on_server(entry, shape), shape)
            registry, _ = await kube.create(CONFIG_MAPS, namespace, body)
        if not is_operator_registry(registry, key.digest):
            raise NameConflict.of(registry, "ConfigMap")
        here = _on_server(entry, shape_of(registry))
        holder = adapter_holder(registry, uid, entry.adapter)
        if holder is not None:
            return ServingState(
                "False",
                Reason.NameConflict,
                f"adapter name {entry.adapter} is already served on {key.name} by LoRAJob "
                f"{holder}; set serving.adapterName to another name",
            )
        live = await live_shared_uids(kube, namespace) | {uid}
        patch = sweep_and_registration(registry, live, name, uid, here)
        if patch is None:
            return registry
        try:
            return await _patch_registry(kube, registry, patch)
        except KubeError as exc:
            if exc.status != 409 or tries >= REGISTER_TRIES:
                raise
            tries += 1


async def ensure_shared_serving(
    kube: Kube,
    name: str,
    namespace: str,
    uid: str,
    spec: LoRAJobSpec,
    adapter_uri: str,
    credentials_secret: str | SecretRef | None = None,
    run_id: str | None = None,
    *,
    plan: ServingPlanStatus | None = None,
    config: OperatorConfig | None = None,
) -> tuple[ServingState, str]:
    """Register this job's adapter on its base model's server (creating registry and server
    when missing), sweep the entries of jobs that left, keep the server (and its ServiceAccount
    listing the jobs' credentials Secrets by name) as declared. Returns the Serving state and
    the server's name. `plan` (status.plan.serving) sizes a server this job creates;
    `config`: the operator's, for the runtime's images and S3 endpoint (default: its defaults).
    `credentials_secret` as a SecretRef also records its key names for the syncer."""
    config = config or OperatorConfig()
    key = server_key(spec)
    adapter = spec.serving.adapter_name or name
    ref = credentials_secret
    if isinstance(ref, str):
        ref = SecretRef(name=ref)  # the default key names
    secret = None if ref is None else ref.name
    # the store the trainer Job wrote to (its env's resolution, already past the policy)
    target = s3_target(spec, config)
    entry = Entry(name, adapter, adapter_uri, spec.lora.r, secret, run_id)
    entry = replace(entry, endpoint=target.endpoint, region=target.region)
    if ref is not None:
        entry = replace(entry, access_key_key=ref.access_key_key, secret_key_key=ref.secret_key_key)
    shape = server_shape(spec, plan, target)
    if target.endpoint is not None and not is_endpoint_url(target.endpoint):
        # an entry the syncer would refuse to parse: said once here, not rewritten each resync
        return ServingState(
            "False",
            Reason.ServingError,
            f"S3 endpoint {target.endpoint!r} (spec.output.endpoint, else the operator's "
            "s3.endpoint) is not an http(s) URL of a host alone (no user, path or query): the "
            f"adapter syncer of {key.name} cannot download from it",
        ), key.name
    try:
        registered = await _register(kube, namespace, key, name, uid, entry, shape)
        if isinstance(registered, ServingState):
            return registered, key.name
        registry = registered
        controller = registry["metadata"]["uid"]
        account = build_shared_account(registry)
        if account is not None:
            await apply(kube, SERVING_ACCOUNT, namespace, account, controller)
        apis = await serving_apis(kube)
        if apis.llm_inference_service and not await _isvc_server(
            kube, namespace, key.name, controller
        ):
            body = build_shared_llm_inference_service(
                registry, config.trainer_image, apis.scheduler
            )
            isvc = (await apply(kube, LLM_INFERENCE_SERVICE, namespace, body, controller)).obj
        else:
            runtime = build_shared_runtime(registry, config.serving_image, config.trainer_image)
            await apply(kube, SERVING_RUNTIME, namespace, runtime, controller)
            body = build_shared_inference_service(registry)
            isvc = (await apply(kube, INFERENCE_SERVICE, namespace, body, controller)).obj
    except NameConflict as conflict:
        return _state_of_conflict(conflict), key.name
    except KubeError as exc:
        return failed_state(exc, f"cannot serve on {key.name}"), key.name
    return readiness(isvc), key.name


async def leave_shared_serving(kube: Kube, namespace: str, server: str, uid: str) -> bool:
    """Take this job's entry off `server`'s registry (and its owner reference, unless it is the
    last one). The last adapter out deletes what the registry controls (InferenceService or
    LLMInferenceService where that is served, ServingRuntime, ServiceAccount); the empty
    registry stays until its last owner LoRAJob is deleted (the garbage collector) or a job
    registers again, so the operator needs no right to delete ConfigMaps. False when the
    registry is absent or not the operator's (left alone), or lists nothing of this job."""
    registry = await kube.get(CONFIG_MAPS, namespace, server)
    if registry is None or not is_operator_registry(registry, digest_of(server)):
        return False
    others = {str(r.get("uid")) for r in registry["metadata"].get("ownerReferences") or []}
    others |= set(entries(registry))
    patch = sweep_patch(registry, others - {uid})
    if patch is None:
        return False
    empty = is_empty(patched(registry, patch))
    if empty:
        patch.pop("metadata", None)  # a registry without owners would never be collected
    if patch:
        registry = await _patch_registry(kube, registry, patch)
    deleted = False
    if empty:  # also a server left behind by a restart between the patch and the delete
        uid_ = registry["metadata"]["uid"]
        # either kind: a server made before LLMInferenceService was installed is ours too
        kinds = [ISVC, LLMISVC] if (await serving_apis(kube)).llm_inference_service else [ISVC]
        for resource in kinds:
            with contextlib.suppress(NameConflict):  # not the registry's server: left alone
                deleted = await delete_owned(kube, resource, namespace, server, uid_) or deleted
        for resource in (RUNTIMES, ACCOUNTS):
            with contextlib.suppress(NameConflict):
                await delete_owned(kube, resource, namespace, server, uid_)
    return bool(patch) or deleted


__all__ = ["ensure_shared_serving", "entry_key", "is_shared", "leave_shared_serving"]
