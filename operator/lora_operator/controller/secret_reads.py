"""The Secrets one reconcile reads, each fetched at most once. The platform policy's opt-in check
and the S3 credentials for progress.json look at the same Secret; sharing one read keeps a resync
at one Secret GET, and both see the same version of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .kube import Kube

SECRETS = "v1/secrets"
# name -> the Secret in the job's namespace, or None when it does not exist
SecretReader = Callable[[str], Awaitable[dict[str, Any] | None]]


class SecretReads:
    """A SecretReader bound to one namespace (the job's: it cannot read another's) that
    remembers what it read, for the length of one reconcile."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self._kube = kube
        self._namespace = namespace
        self._read: dict[str, dict[str, Any] | None] = {}

    async def __call__(self, name: str) -> dict[str, Any] | None:
        if name not in self._read:
            self._read[name] = await self._kube.get(SECRETS, self._namespace, name)
        return self._read[name]
