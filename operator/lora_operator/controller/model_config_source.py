"""Where the operator gets a job's config.json: the shipped set, a ConfigMap in the job's own
namespace, or an allow-listed URL; never a path on the operator's disk.

A URL fetch can take up to the policy's deadline, so a reconcile never waits for one: the first
reconcile starts the fetch and gets `Fetching` back (the job shows Planned=Unknown), and the
job is reconciled again when the fetch ends. Jobs naming the same URL share one fetch, and its
outcome is kept for a while, so a thousand jobs on one model cost one request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from lora_contract.types import BaseModelSpec, ConfigMapKeyRef

from ..api.operator_config import PlatformPolicy
from ..memory import ModelConfig, PlanningError
from ..memory.model_config import parse_config, shipped_config
from .kube import Kube
from .model_config_fetch import check_allowed, fetch_config_bytes

Key = tuple[str, str]  # (namespace, name) of a LoRAJob
CONFIGMAPS = "v1/configmaps"
FIELD = "spec.baseModel.config"
# A path names nothing the job author may read; the message is the same whether or not a file
# is there, so the field cannot probe the operator's disk.
LOCAL_PATH_REFUSED = (
    f"{FIELD}: the operator does not read files; give an http(s) URL its "
    "policy.allowedModelConfigUrls allows, or put the config.json in a ConfigMap in this "
    "namespace and set spec.baseModel.configMapRef (`lorajob plan` reads local files)"
)
FETCHED_TTL_SECONDS = 600.0  # a fetched config is reused this long
FAILED_TTL_SECONDS = 30.0  # a failed fetch is not retried for jobs arriving within this
MAX_ENTRIES = 256


@dataclass(frozen=True)
class Fetching:
    """The config is on its way; the job is reconciled again once the fetch ends."""

    url: str


_FetchKey = tuple[str, int, float]  # url, size cap, deadline


@dataclass
class _Fetch:
    task: asyncio.Task[ModelConfig]
    waiters: set[Key] = field(default_factory=set)
    ended_at: float | None = None

    def expired(self, now: float) -> bool:
        if self.ended_at is None:
            return False
        failed = self.task.cancelled() or self.task.exception() is not None
        return now - self.ended_at > (FAILED_TTL_SECONDS if failed else FETCHED_TTL_SECONDS)


class ModelConfigSource:
    """Resolves spec.baseModel to a loaded config; owns the URL fetches and their cache."""

    def __init__(
        self,
        on_ready: Callable[[Key], Coroutine[Any, Any, None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_ready = on_ready
        self._clock = clock
        self._fetches: dict[_FetchKey, _Fetch] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def resolve(
        self, kube: Kube, job: Key, base_model: BaseModelSpec, policy: PlatformPolicy
    ) -> ModelConfig | Fetching:
        """The job's config, or `Fetching` (then `job` is reconciled again when it is fetched).
        Raises PlanningError naming the spec field for a config that cannot be had."""
        if base_model.config_map_ref is not None:
            return await read_config_map(
                kube, job[0], base_model.config_map_ref, policy.model_config_max_bytes
            )
        if base_model.config is not None:
            return self._from_url(base_model.config, policy, job)
        return shipped_config(base_model.name)

    def _from_url(self, url: str, policy: PlatformPolicy, waiter: Key) -> ModelConfig | Fetching:
        if not url.startswith(("http://", "https://")):
            raise PlanningError(LOCAL_PATH_REFUSED)
        check_allowed(url, policy)  # on every call: a narrowed allow-list applies at once
        self._forget_expired()
        key = (url, policy.model_config_max_bytes, policy.model_config_timeout_seconds)
        fetch = self._fetches.get(key)
        if fetch is None:
            fetch = self._start(key, policy)
        if not fetch.task.done():
            fetch.waiters.add(waiter)
            return Fetching(url)
        return fetch.task.result()

    def _start(self, key: _FetchKey, policy: PlatformPolicy) -> _Fetch:
        url = key[0]
        fetch = _Fetch(asyncio.get_running_loop().create_task(_fetch_config(url, policy)))
        self._fetches[key] = fetch

        def ended(task: asyncio.Task[ModelConfig]) -> None:
            fetch.ended_at = self._clock()
            if task.cancelled():  # the operator is stopping
                return
            task.exception()  # retrieved: its waiters read it on their next reconcile
            for waiter in sorted(fetch.waiters):
                again = asyncio.get_running_loop().create_task(self._on_ready(waiter))
                self._background.add(again)
                again.add_done_callback(self._background.discard)
            fetch.waiters.clear()

        fetch.task.add_done_callback(ended)
        return fetch

    async def close(self) -> None:
        """Cancel what is still running (operator shutdown)."""
        running: list[asyncio.Task[Any]] = [f.task for f in self._fetches.values()]
        running += self._background
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._fetches.clear()

    def _forget_expired(self) -> None:
        now = self._clock()
        for key in [k for k, f in self._fetches.items() if f.expired(now)]:
            del self._fetches[key]
        ended = [k for k, f in self._fetches.items() if f.ended_at is not None]
        for key in ended[: max(0, len(self._fetches) - MAX_ENTRIES)]:
            del self._fetches[key]


async def _fetch_config(url: str, policy: PlatformPolicy) -> ModelConfig:
    raw = await fetch_config_bytes(url, policy)
    return ModelConfig(url, parse_config(raw, f"{FIELD}: {url!r}"))


async def read_config_map(
    kube: Kube, namespace: str, ref: ConfigMapKeyRef, max_bytes: int
) -> ModelConfig:
    """The config.json in a key of a ConfigMap in the job's own namespace."""
    where = f"spec.baseModel.configMapRef: ConfigMap {ref.name!r}"
    config_map = await kube.get(CONFIGMAPS, namespace, ref.name)
    if config_map is None:
        raise PlanningError(f"{where} not found in namespace {namespace!r}")
    data = config_map.get("data") or {}
    binary = config_map.get("binaryData") or {}
    if ref.key in data:
        raw: bytes = str(data[ref.key]).encode()
    elif ref.key in binary:
        try:
            raw = base64.b64decode(str(binary[ref.key]), validate=True)
        except (binascii.Error, ValueError):
            raise PlanningError(f"{where}: binaryData key {ref.key!r} is not base64") from None
    else:
        keys = sorted({*data, *binary})
        raise PlanningError(f"{where} has no key {ref.key!r} (keys: {', '.join(keys) or 'none'})")
    if len(raw) > max_bytes:
        raise PlanningError(
            f"{where} key {ref.key!r} is larger than {max_bytes} bytes (policy.modelConfigMaxBytes)"
        )
    source = f"ConfigMap {namespace}/{ref.name} key {ref.key}"
    return ModelConfig(source, parse_config(raw, f"{where} key {ref.key!r}"))
