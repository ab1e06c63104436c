"""Kubernetes Events for a LoRAJob, posted by the operator's own client.

Why not `kopf.event`: it only works inside kopf's handler context, and most transitions (pod
failures, progress, queue admission) are noticed by the resync loop, outside it.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

from lora_contract.timestamps import now_iso

from .kube import Kube

log = logging.getLogger("lora_operator.events")
COMPONENT = "lora-operator"
MAX_MESSAGE = 1024
# Which replica reported an Event (`kubectl get events -o wide` shows it): the pod's name, or the
# leader-election identity when one is set.
_instance = {"name": os.environ.get("POD_NAME") or socket.gethostname()}


def set_reporting_instance(name: str) -> None:
    _instance["name"] = name


def build_event(obj: dict[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Event about `obj` (what `kubectl describe lj` lists)."""
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace") or "default"
    now = now_iso()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta.get('name', 'lorajob')}.{uuid.uuid4().hex[:16]}",
            "namespace": namespace,
        },
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", ""),
            "kind": obj.get("kind", ""),
            "name": meta.get("name", ""),
            "namespace": namespace,
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "source": {"component": COMPONENT, "host": _instance["name"]},
        "reportingComponent": COMPONENT,
        "reportingInstance": _instance["name"],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def post_event(
    kube: Kube, obj: dict[str, Any], type_: str, reason: str, message: str
) -> None:
    """Best effort: an Event that cannot be posted is logged, never fails a reconcile."""
    body = build_event(obj, type_, reason, message)
    try:
        await kube.create("v1/events", body["metadata"]["namespace"], body)
    except Exception:
        log.warning("could not post event %s for %s", reason, body["involvedObject"]["name"])
