"""Namespaces in the emulator: every namespace is usable, and the ones a client creates, applies,
patches or deletes answer as the API server's do.

Why: kmock cannot route `/api/v1/namespaces` at all, and a GitOps pipeline's first object is
often a Namespace (`kubectl create namespace`, `kubectl apply -f ns.yaml`). Namespaces that
objects live in (and `default`) exist implicitly, as before; created ones are kept with their
labels and annotations. Deleting one forgets it but, unlike a real cluster, does not delete
what it holds.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from lora_contract.timestamps import now_iso

Answer = tuple[int, dict[str, Any]]


def _status(code: int, reason: str, message: str, name: str = "") -> Answer:
    details = {"name": name, "kind": "namespaces"} if name else {}
    return code, {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def implied(name: str) -> dict[str, Any]:
    """A namespace nobody created but objects live in (or `default`)."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": name,
            "resourceVersion": "1",
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: a patch's object members merge (null removes), anything else replaces — also
    a scalar patched over an object, which kmock refuses with a 500."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class Namespaces:
    """The created namespaces, and the HTTP answers for `/api/v1/namespaces[/NAME]`."""

    def __init__(self, in_use: Callable[[], Iterable[str]]) -> None:
        self._in_use = in_use
        self.created: dict[str, dict[str, Any]] = {}

    def names(self) -> list[str]:
        return sorted({"default", *self._in_use(), *self.created})

    def get(self, name: str) -> dict[str, Any] | None:
        if name in self.created:
            return self.created[name]
        return implied(name) if name in self.names() else None

    def listed(self) -> dict[str, Any]:
        items = [self.get(name) for name in self.names()]
        return {
            "apiVersion": "v1",
            "kind": "NamespaceList",
            "metadata": {"resourceVersion": "1"},
            "items": [item for item in items if item is not None],
        }

    def answer(self, method: str, name: str | None, body: Any) -> Answer:
        """(HTTP status, body) for a request on the collection (`name` None) or one namespace."""
        if name is None:
            if method == "GET":
                return 200, self.listed()
            if method == "POST":
                return self._create(body)
            return _status(405, "MethodNotAllowed", f"{method} is not allowed on namespaces")
        current = self.get(name)
        if current is None:
            return _status(404, "NotFound", f'namespaces "{name}" not found', name)
        if method == "GET":
            return 200, current
        if method == "DELETE":
            self.created.pop(name, None)
            return 200, {**current, "status": {"phase": "Terminating"}}
        if method in ("PATCH", "PUT"):
            if not isinstance(body, dict):
                return _status(400, "BadRequest", "the body must be a JSON object", name)
            changed = copy.deepcopy(body) if method == "PUT" else merge_patch(current, body)
            return self._store(name, changed, current)
        return _status(405, "MethodNotAllowed", f"{method} is not allowed on a namespace")

    def _create(self, body: Any) -> Answer:
        meta = body.get("metadata") if isinstance(body, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not name:
            return _status(422, "Invalid", "Namespace is invalid: metadata.name: Required value")
        if name in self.created or name == "default":
            return _status(409, "AlreadyExists", f'namespaces "{name}" already exists', name)
        stored = copy.deepcopy(body)
        stored["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=now_iso())
        return self._store(name, stored, None, created=True)

    def _store(
        self, name: str, obj: dict[str, Any], current: dict[str, Any] | None, created: bool = False
    ) -> Answer:
        meta = obj.setdefault("metadata", {})
        old = (current or {}).get("metadata") or {}
        for key in ("uid", "creationTimestamp"):
            if key in old:
                meta[key] = old[key]
        meta["name"] = name
        meta["resourceVersion"] = uuid.uuid4().hex[:8]
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj.update(apiVersion="v1", kind="Namespace", status={"phase": "Active"})
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        self.created[name] = obj
        return (201 if created else 200), obj
