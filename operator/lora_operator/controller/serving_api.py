"""Which serving API a shared server uses, learned from API discovery (docs/serving.md, "Which
serving API"): KServe's LLMInferenceService where the cluster serves it, else the InferenceService
with the registry's own ServingRuntime; the Inference Extension's scheduler (KServe then creates
the InferencePool and the endpoint picker) only where an InferencePool API is served too.

Discovery (`GET /apis/<group>/<version>`) is a non-resource URL every authenticated client may
read (the `system:discovery` ClusterRole): no RBAC of the operator's own. The answer is cached
per Kube client (one per operator process) for DISCOVERY_SECONDS, the served jobs' resync
period, so KServe or the Inference Extension installed later is picked up at the next resync.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .kube import Kube, KubeError

LLMISVC_GROUP_VERSION = "serving.kserve.io/v1alpha1"
LLMISVC_RESOURCE = "llminferenceservices"
# The InferencePool went GA in inference.networking.k8s.io/v1; KServe releases before that
# create the alpha one. Either is enough for KServe's scheduler.
POOL_GROUP_VERSIONS = ("inference.networking.k8s.io/v1", "inference.networking.x-k8s.io/v1alpha2")
POOL_RESOURCE = "inferencepools"
DISCOVERY_GROUP_VERSIONS = (LLMISVC_GROUP_VERSION, *POOL_GROUP_VERSIONS)
DISCOVERY_SECONDS = 60.0  # = reconcile.SERVED_RESYNC_SECONDS (not imported: a cycle)


def discovery_path(group_version: str) -> str:
    return f"/apis/{group_version}"


def is_discovery(path: str) -> bool:
    """Whether a request path is one of the discovery reads below (no RBAC resource)."""
    return path.split("?", 1)[0].rstrip("/") in {
        discovery_path(gv) for gv in DISCOVERY_GROUP_VERSIONS
    }


@dataclass(frozen=True)
class ServingApis:
    """What the cluster serves for a shared server."""

    llm_inference_service: bool = False
    inference_pool: bool = False

    @property
    def kind(self) -> str:
        return "LLMInferenceService" if self.llm_inference_service else "InferenceService"

    @property
    def scheduler(self) -> bool:
        """Ask KServe for Inference Extension routing: only an LLMInferenceService can, and
        only where the InferencePool it would create is served."""
        return self.llm_inference_service and self.inference_pool


def resource_names(discovery: Any) -> set[str]:
    """The top-level resources of an APIResourceList (subresources such as `x/status` left
    out); nothing for a body that is not one."""
    if not isinstance(discovery, dict):
        return set()
    names = {
        str(r.get("name", "")) for r in discovery.get("resources") or [] if isinstance(r, dict)
    }
    return {name for name in names if name and "/" not in name}


def decide(served: dict[str, set[str]]) -> ServingApis:
    """`served`: group/version -> the resources discovery lists there (absent: not served)."""
    return ServingApis(
        llm_inference_service=LLMISVC_RESOURCE in served.get(LLMISVC_GROUP_VERSION, set()),
        inference_pool=any(POOL_RESOURCE in served.get(gv, set()) for gv in POOL_GROUP_VERSIONS),
    )


async def discover(
    kube: Kube, group_versions: Iterable[str] = DISCOVERY_GROUP_VERSIONS
) -> ServingApis:
    """Read discovery for each group/version; a 404 is a group/version not served. Any other
    error is raised (the caller reports it; nothing is decided on a guess)."""
    served: dict[str, set[str]] = {}
    for gv in group_versions:
        try:
            served[gv] = resource_names(await kube.request("GET", discovery_path(gv)))
        except KubeError as exc:
            if exc.status != 404:
                raise
    return decide(served)


_CACHE: weakref.WeakKeyDictionary[Kube, tuple[float, ServingApis]] = weakref.WeakKeyDictionary()


def fresh(checked_at: float | None, now: float, period: float = DISCOVERY_SECONDS) -> bool:
    """Whether an answer read at `checked_at` still stands at `now`."""
    return checked_at is not None and 0 <= now - checked_at < period


async def serving_apis(kube: Kube, clock: Callable[[], float] = time.monotonic) -> ServingApis:
    """The cached answer for this client, read again once DISCOVERY_SECONDS have passed."""
    now = clock()
    cached = _CACHE.get(kube)
    if cached is not None and fresh(cached[0], now):
        return cached[1]
    apis = await discover(kube)
    _CACHE[kube] = (now, apis)
    return apis


__all__ = [
    "ServingApis",
    "decide",
    "discover",
    "fresh",
    "is_discovery",
    "resource_names",
    "serving_apis",
]
