"""The sweep of shared-server registries, on its own: takes off every entry whose LoRAJob is gone
or no longer serves shared. Run at once when the watch shows a shared job deleted (no
finalizer: the job is already gone from the API), and from the resync loop, so a deletion the
operator missed while it was down is swept by its next pass (level-based). A job's own reconcile
sweeps its server too (shared_serving.ensure_shared_serving); this one needs no job left on it.

Each stale uid goes through `leave_shared_serving`, the path a job takes when it leaves: the
last adapter out deletes the InferenceService the registry controls and leaves the empty
registry to the garbage collector. Only registries that pass `is_operator_registry` are read
further, and one namespace's jobs decide only that namespace's registries.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from .kube import Kube, KubeError
from .shared_registry import COMPONENT, MANAGED_BY, digest_of, entries, is_operator_registry
from .shared_serving import CONFIG_MAPS, is_shared, leave_shared_serving, live_shared_uids

log = logging.getLogger("lora_operator.shared_sweep")

REGISTRY_LABELS = {"app.kubernetes.io/component": COMPONENT, **MANAGED_BY}
# A registration racing the sweep makes its patch 409: read again, at most this often.
SWEEP_TRIES = 3


def served_shared(job: dict[str, Any]) -> bool:
    """Whether a LoRAJob (as the watch last showed it) may have an entry on a shared server:
    its spec asks for one, or its status names one (it left shared mode moments ago)."""
    server = str((job.get("status") or {}).get("inferenceService") or "")
    return is_shared(job.get("spec") or {}) or server.startswith(f"{COMPONENT}-")


def operator_registries(configmaps: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The operator's registries among `configmaps`, by namespace (a look-alike is left out:
    never patched)."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for obj in configmaps:
        meta = obj.get("metadata") or {}
        name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "")
        if namespace and is_operator_registry(obj, digest_of(name)):
            found[namespace].append(obj)
    return dict(found)


def stale_uids(registry: dict[str, Any], live: set[str]) -> list[str]:
    """The LoRAJob uids the registry lists (an entry or an owner reference) that are not in
    `live`, sorted. `live` must be read after `registry`: a uid in the registry then belongs to
    a job that existed before the list, so its absence means it left, not that it is new. None
    from a registry without entries: its last owner stays for the garbage collector."""
    listed = set(entries(registry))
    if not listed:
        return []
    owners = {
        str(ref.get("uid"))
        for ref in (registry.get("metadata") or {}).get("ownerReferences") or []
        if isinstance(ref, dict) and ref.get("uid")
    }
    return sorted((owners | listed) - live)


async def _leave(kube: Kube, namespace: str, server: str, uid: str) -> bool:
    """`leave_shared_serving` for a job that is gone; a 409 (a registration won the race) is
    decided again on a fresh read."""
    tries = 1
    while True:
        try:
            return await leave_shared_serving(kube, namespace, server, uid)
        except KubeError as exc:
            if exc.status != 409 or tries >= SWEEP_TRIES:
                raise
            tries += 1


async def sweep_registries(kube: Kube, namespace: str | None) -> list[tuple[str, str, str]]:
    """Sweep the registries of `namespace` (None: every namespace the operator may list).
    Returns the (namespace, server, uid) taken off. An API error on one registry is logged and
    left for the next pass; the others are still swept."""
    listed = await kube.list(CONFIG_MAPS, namespace, REGISTRY_LABELS)
    swept: list[tuple[str, str, str]] = []
    for ns, registries in sorted(operator_registries(listed).items()):
        live = await live_shared_uids(kube, ns)  # after the registries were read
        for registry in registries:
            server = str(registry["metadata"]["name"])
            for uid in stale_uids(registry, live):
                try:
                    if await _leave(kube, ns, server, uid):
                        swept.append((ns, server, uid))
                except KubeError as exc:
                    log.warning("sweeping %s/%s (uid %s) failed: %s", ns, server, uid, exc)
    return swept
