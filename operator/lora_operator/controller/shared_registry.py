"""The pure decisions of shared serving (`serving.mode: shared`, docs/serving.md): which server
a job's adapter goes to, what the server's registry holds, and how the registry changes.

One server per (namespace, base model name, revision, source, quantization): its registry is a
ConfigMap `lora-server-<digest>` in the job's namespace (the tenant boundary: a key never spans
namespaces). Each adapter is one data entry keyed by its LoRAJob's uid, and each contributing
LoRAJob is a non-controller owner reference, so Kubernetes' garbage collector removes the
registry, and the InferenceService it controls, once the last LoRAJob is gone. No IO here: the
reconciler (shared_serving.py) reads and writes around these functions; the entry format is
the contract's (lora_contract.adapter_registry), read by the adapter syncer beside vLLM.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from lora_contract.adapter_registry import ENTRY_PREFIX, SERVER_DATA_KEY, Entry
from lora_contract.types import API_VERSION, KIND, LoRAJobSpec

COMPONENT = "lora-server"
LABEL_SERVER_KEY = "lora-operator.io/server-key"
MANAGED_BY = {"app.kubernetes.io/managed-by": "lora-operator"}


@dataclass(frozen=True)
class ServerKey:
    """What makes two adapters servable by one vLLM process: the same base weights."""

    base_model: str
    revision: str
    source: str
    quantization: str

    @property
    def digest(self) -> str:
        text = json.dumps(
            [self.base_model, self.revision, self.source, self.quantization], separators=(",", ":")
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        """The registry ConfigMap's and the shared InferenceService's name."""
        return f"{COMPONENT}-{self.digest}"


def server_key(spec: LoRAJobSpec) -> ServerKey:
    """The weights vLLM serves: `serving.quantization`, not the training's (a QLoRA adapter
    and a LoRA adapter of one base model share one 16-bit server)."""
    return ServerKey(
        base_model=spec.base_model.name,
        revision=spec.base_model.revision or "",
        source=spec.base_model.source,
        quantization=spec.serving.quantization.value,
    )


def entry_key(uid: str) -> str:
    return f"{ENTRY_PREFIX}{uid}"


def job_owner_reference(name: str, uid: str) -> dict[str, Any]:
    """A non-controller reference: the registry has as many owners as it serves adapters."""
    return {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid}


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = obj.get("metadata") or {}
    return meta


def _references(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in _meta(obj).get("ownerReferences") or [] if isinstance(r, dict)]


def is_operator_registry(obj: dict[str, Any], digest: str) -> bool:
    """Whether `obj` is the operator's registry for `key`: its labels say so, nothing controls
    it, and every owner is a LoRAJob. Anything else of that name (a tenant's ConfigMap, one a
    controller owns) is a NameConflict and is never patched."""
    labels = _meta(obj).get("labels") or {}
    if labels.get("app.kubernetes.io/component") != COMPONENT:
        return False
    if labels.get("app.kubernetes.io/managed-by") != MANAGED_BY["app.kubernetes.io/managed-by"]:
        return False
    if labels.get(LABEL_SERVER_KEY) != digest:
        return False
    return all(
        not r.get("controller") and r.get("kind") == KIND and r.get("apiVersion") == API_VERSION
        for r in _references(obj)
    )


def digest_of(name: str) -> str:
    """The server key digest in a registry's name (`lora-server-<digest>`)."""
    return name.removeprefix(f"{COMPONENT}-")


def entries(registry: dict[str, Any]) -> dict[str, Entry]:
    """The registry's adapters by LoRAJob uid (unparseable entries left out)."""
    result: dict[str, Entry] = {}
    for key, text in (registry.get("data") or {}).items():
        if key.startswith(ENTRY_PREFIX) and isinstance(text, str):
            entry = Entry.from_data(text)
            if entry is not None:
                result[key[len(ENTRY_PREFIX) :]] = entry
    return result


def adapter_holder(registry: dict[str, Any], uid: str, adapter: str) -> str | None:
    """The job that already serves `adapter` on this server under another uid (clients could
    not tell the two apart), else None."""
    for other, entry in sorted(entries(registry).items()):
        if other != uid and entry.adapter == adapter:
            return entry.job
    return None


def build_registry(
    key: ServerKey, namespace: str, job: str, uid: str, entry: Entry, server: dict[str, Any]
) -> dict[str, Any]:
    """The registry as its first job creates it: one entry, one owner, the server's shape."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": key.name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "lora-operator",
                "app.kubernetes.io/component": COMPONENT,
                **MANAGED_BY,
                LABEL_SERVER_KEY: key.digest,
            },
            "annotations": {
                "lora-operator.io/base-model": key.base_model,
                "lora-operator.io/revision": key.revision,
                "lora-operator.io/quantization": key.quantization,
            },
            "ownerReferences": [job_owner_reference(job, uid)],
        },
        "data": {
            SERVER_DATA_KEY: json.dumps(server, sort_keys=True),
            entry_key(uid): entry.to_data(),
        },
    }


def registration_patch(
    registry: dict[str, Any], job: str, uid: str, entry: Entry
) -> dict[str, Any] | None:
    """The merge patch that lists `entry` under `uid` and makes the job an owner; None when the
    registry already says exactly that (an idle resync writes nothing)."""
    patch: dict[str, Any] = {}
    data = registry.get("data") or {}
    if Entry.from_data(data.get(entry_key(uid), "")) != entry:
        patch["data"] = {entry_key(uid): entry.to_data()}
    references = _references(registry)
    if not any(r.get("uid") == uid for r in references):
        patch["metadata"] = {"ownerReferences": [*references, job_owner_reference(job, uid)]}
    return patch or None


def sweep_patch(registry: dict[str, Any], live: set[str]) -> dict[str, Any] | None:
    """The merge patch that drops every entry and owner reference whose LoRAJob uid is not in
    `live` (deleted, or no longer serving on a shared server), and every entry that does not
    parse; None when there is nothing to drop."""
    data = registry.get("data") or {}
    stale = {
        key: None
        for key, text in data.items()
        if key.startswith(ENTRY_PREFIX)
        and (key[len(ENTRY_PREFIX) :] not in live or Entry.from_data(str(text)) is None)
    }
    references = _references(registry)
    kept = [r for r in references if r.get("uid") in live]
    patch: dict[str, Any] = {}
    if stale:
        patch["data"] = stale
    if len(kept) != len(references):
        patch["metadata"] = {"ownerReferences": kept}
    return patch or None


def sweep_and_registration(
    registry: dict[str, Any], live: set[str], job: str, uid: str, entry: Entry
) -> dict[str, Any] | None:
    """One merge patch for a job's resync: the sweep of the jobs not in `live`, then `entry`
    under `uid` and the job as an owner; None when the registry already says all that."""
    sweep = sweep_patch(registry, live) or {}
    register = registration_patch(patched(registry, sweep), job, uid, entry) or {}
    if not sweep and not register:
        return None
    patch: dict[str, Any] = {}
    data = {**(sweep.get("data") or {}), **(register.get("data") or {})}
    if data:
        patch["data"] = data
    references = (register.get("metadata") or sweep.get("metadata") or {}).get("ownerReferences")
    if references is not None:
        patch["metadata"] = {"ownerReferences": references}
    return patch


def patched(registry: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The registry as a merge patch from this module leaves it (to decide without a re-read
    whether anything is left)."""
    data = {**(registry.get("data") or {})}
    for key, value in (patch.get("data") or {}).items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    meta = {**_meta(registry), **(patch.get("metadata") or {})}
    return {**registry, "metadata": meta, "data": data}


def is_empty(registry: dict[str, Any]) -> bool:
    """No adapter listed: the registry (and with it its server) is deleted."""
    return not entries(registry)


def max_rank(registry: dict[str, Any]) -> int:
    """The largest LoRA rank on the server (vLLM's --max-lora-rank must cover every adapter)."""
    return max((e.rank for e in entries(registry).values()), default=1)


def listed_secrets(registry: dict[str, Any]) -> list[str]:
    """The credentials Secrets of the jobs on the server, by name, each once: the server's
    ServiceAccount lists them for KServe's storage initializer (no copy, same namespace)."""
    return sorted({e.secret for e in entries(registry).values() if e.secret})
