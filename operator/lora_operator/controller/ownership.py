"""Which objects are this LoRAJob's to change: only those whose controller owner reference
carries its uid. Every object the operator makes has a fixed, derived name (`<job>-serving`,
`<job>-r1`, the InferenceService `<job>`), so a user's own object of that name, or one left by an
earlier LoRAJob of the same name, must never be patched, followed or deleted: it is reported as a
`NameConflict` and left exactly as it is.
"""

from __future__ import annotations

from typing import Any

from .kube import Kube, KubeError


def controller_reference(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The ownerReference with controller: true (Kubernetes allows at most one)."""
    references = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in references if isinstance(r, dict) and r.get("controller")), None)


def controlled_by(obj: dict[str, Any], uid: str) -> bool:
    """True only when `obj`'s controller is the object with this uid. A name match is not
    enough: a deleted and recreated LoRAJob of the same name has another uid."""
    reference = controller_reference(obj)
    return bool(uid) and reference is not None and reference.get("uid") == uid


def owner_description(obj: dict[str, Any]) -> str:
    """Who controls `obj`, in words, for a condition message."""
    reference = controller_reference(obj)
    if reference is None:
        return "it has no controller owner"
    kind, name = reference.get("kind", "object"), reference.get("name", "?")
    return f"it is controlled by {kind} {name} (uid {reference.get('uid', '?')})"


class NameConflict(Exception):
    """An object the operator would create already exists and is not this LoRAJob's."""

    def __init__(self, kind: str, namespace: str, name: str, owner: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.owner = owner
        super().__init__(self.message())

    @classmethod
    def of(cls, obj: dict[str, Any], kind: str) -> NameConflict:
        meta = obj.get("metadata") or {}
        return cls(kind, meta.get("namespace", ""), meta.get("name", ""), owner_description(obj))

    def message(self) -> str:
        return (
            f"{self.kind} {self.namespace}/{self.name} already exists and is not owned by this "
            f"LoRAJob ({self.owner}); the operator leaves it untouched. Delete or rename that "
            f"{self.kind}, or give the LoRAJob another name"
        )


async def create_owned(
    kube: Kube, resource: str, namespace: str, body: dict[str, Any], uid: str
) -> tuple[dict[str, Any], bool]:
    """(object, created) like `Kube.create`, but an existing object of that name must be
    controlled by `uid`; otherwise NameConflict and nothing is written."""
    obj, created = await kube.create(resource, namespace, body)
    if not created and not controlled_by(obj, uid):
        raise NameConflict.of(obj, body.get("kind", resource.rsplit("/", 1)[-1]))
    return obj, created


async def delete_owned(kube: Kube, resource: str, namespace: str, name: str, uid: str) -> bool:
    """Delete `name` only if `uid` controls it. True if deleted, False if absent (or replaced
    between the read and the delete: the uid precondition refuses that with 409); an existing
    object we do not control raises NameConflict and stays."""
    obj = await kube.get(resource, namespace, name)
    if obj is None:
        return False
    if not controlled_by(obj, uid):
        raise NameConflict.of(obj, obj.get("kind") or resource.rsplit("/", 1)[-1])
    try:
        return await kube.delete(resource, namespace, name, uid=obj["metadata"].get("uid"))
    except KubeError as exc:
        if exc.status == 409:
            return False
        raise
