"""An in-memory API server behind the operator's real `Kube` client (only `request` is
replaced), recording every (group, resource, verb) it is asked for. Used to drive the reconciler
through every path in-process, fast, and to check `API_CALLS` (the RBAC the chart grants)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import kopf

from lora_contract.timestamps import now_iso
from lora_operator.controller.api_calls import Call, api_call
from lora_operator.controller.kube import Kube, KubeError
from lora_operator.controller.serving_api import is_discovery


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386): None deletes, dicts merge, everything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class FakeKube(Kube):
    def __init__(self) -> None:
        super().__init__(kopf.ConnectionInfo(server="http://fake"))
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}  # collection path -> name -> obj
        self.calls: list[Call] = []
        # API discovery: group/version -> resources served there (absent: 404), not an RBAC call
        self.discovery: dict[str, list[str]] = {}

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        if is_discovery(path):
            group_version = path.split("/apis/", 1)[1].rstrip("/")
            if group_version not in self.discovery:
                raise KubeError(404, f"{group_version} is not served")
            return {"resources": [{"name": r} for r in self.discovery[group_version]]}
        self.calls.append(api_call(method, path))
        parts = path.strip("/").split("/")
        start = 2 if parts[0] == "api" else 3
        rest = parts[start:]
        if rest and rest[0] == "namespaces":
            rest = rest[2:]
        collection = "/" + "/".join(parts[: len(parts) - len(rest) + 1])
        name = rest[1] if len(rest) > 1 else None
        store = self.objects.setdefault(collection, {})
        if method == "POST":
            obj = copy.deepcopy(body)
            name = obj["metadata"]["name"]
            if name in store:
                raise KubeError(409, f"{name} already exists")
            obj["metadata"].setdefault("uid", str(uuid.uuid4()))
            obj["metadata"].setdefault("creationTimestamp", now_iso())
            store[name] = obj
            return copy.deepcopy(obj)
        if name is None:
            return {"items": [copy.deepcopy(o) for o in store.values()]}
        if name not in store:
            raise KubeError(404, f"{name} not found")
        if method == "GET":
            return copy.deepcopy(store[name])
        if method == "PATCH":
            return copy.deepcopy(merge(store[name], body))
        if method == "DELETE":
            expected = ((body or {}).get("preconditions") or {}).get("uid")
            if expected and store[name]["metadata"].get("uid") != expected:
                raise KubeError(409, f"Precondition failed: UID in precondition: {expected}")
            return store.pop(name)
        raise AssertionError(f"unexpected {method} {path}")

    # test helpers
    def put(self, resource_path: str, obj: dict[str, Any]) -> None:
        self.objects.setdefault(resource_path, {})[obj["metadata"]["name"]] = obj

    def obj(self, resource_path: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(resource_path, {}).get(name)
