"""Thin kopf handlers: every trigger ends in `Reconciler.reconcile(namespace, name)`.

No kopf timers or daemons: those make kopf put a finalizer on every LoRAJob, which blocks
deletion while the operator is down. Periodic work (progress, queue, TTL, serving readiness) runs
in one resync loop over the jobs the watch has shown us, at `--resync-seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import kopf

from lora_contract.types import GROUP, PLURAL, VERSION

from .config import ConfigSource
from .events import post_event
from .kube import KubeHolder
from .reconcile import SERVED_RESYNC_SECONDS, Reconciler, lacks_summary, needs_reconcile
from .shared_sweep import served_shared, sweep_registries

log = logging.getLogger("lora_operator.handlers")


@dataclass
class Options:
    config: ConfigSource
    resync_seconds: float
    namespaces: list[str]
    concurrency: int = 16


def register(registry: kopf.OperatorRegistry, options: Options) -> Reconciler:
    """Register all handlers on `registry`; returns the reconciler (tests and bench use it)."""
    reconciler = Reconciler(
        config=options.config,
        kube_factory=KubeHolder.get,
        emit=post_event,
        namespaces=options.namespaces,
    )
    resource = (GROUP, VERSION, PLURAL)
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None:
            KubeHolder.set(info)
        return info

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, options.concurrency)
        tasks.append(asyncio.get_running_loop().create_task(resync_loop(reconciler, options)))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        # Stop the resync loop first: kopf otherwise waits 5 s for it as a "hung" task.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await reconciler.model_configs.close()  # config fetches still hanging: same reason
        if KubeHolder.kube is not None:
            await KubeHolder.kube.close()

    # One handler for everything: every watch event updates the admission view, and an event
    # showing a spec the reconciler has not seen yet (a new job, an edited spec: generation !=
    # status.observedGeneration) reconciles it. kopf's create/update/resume handlers kept a
    # diff-base and progress in annotations: one more patch, watch event and several deep copies
    # a job (a third of the operator's CPU at 10,000 jobs). Async, so it runs on the event loop:
    # kopf runs a plain function in a worker thread, where it would change the admission view
    # while an admission reads it.
    @kopf.on.event(*resource, registry=registry)
    async def observed(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        obj = dict(body)
        deleted = event.get("type") == "DELETED"
        reconciler.observe(obj, deleted=deleted)
        if deleted and served_shared(obj):  # its entry off the shared server now, not at resync
            meta = obj.get("metadata") or {}
            await sweep_shared(reconciler, [str(meta.get("namespace") or "")])
        if not deleted and (needs_reconcile(obj) or lacks_summary(obj)):
            meta = obj.get("metadata") or {}
            await reconciler.reconcile(meta.get("namespace") or "", meta.get("name") or "")

    return reconciler


async def sweep_shared(reconciler: Reconciler, namespaces: list[str | None]) -> None:
    """Sweep the shared-server registries of `namespaces` (None: all) of jobs that are gone;
    an error is logged, the next pass retries (shared_sweep.py)."""
    kube = reconciler.kube_factory()
    for namespace in namespaces:
        try:
            swept = await sweep_registries(kube, namespace)
        except Exception:
            log.exception("sweeping the shared-server registries of %s failed", namespace or "all")
            continue
        for ns, server, uid in swept:
            log.info("took LoRAJob uid %s off %s/%s: it is gone", uid, ns, server)


def configure_kopf(settings: kopf.OperatorSettings, concurrency: int) -> None:
    """kopf's settings for this operator. A kopf worker keeps its slot in `worker_limit` until
    its object has been quiet for `idle_timeout` (5 s by default): with 64 slots, 1000 new jobs
    went through in waves of 64 every ~6 s (49 s); at 0.5 s they took 25-28 s, and 10,000 new
    jobs were held to ~100 a second (64 slots / ~0.6 s). kopf writes nothing of its own since
    the reconcile runs from the event handler, so no worker waits for its own patch: 0.1 s."""
    # Progress/diff-base in annotations, should a create/update handler come back: status stays
    # ours and readable.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="finetune.lora-operator.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="finetune.lora-operator.io"
    )
    settings.posting.level = logging.WARNING  # kopf posts only its failures
    settings.watching.server_timeout = 300
    settings.queueing.worker_limit = concurrency * 4
    settings.queueing.idle_timeout = 0.1


async def resync_loop(reconciler: Reconciler, options: Options) -> None:
    """Every `resync_seconds`: re-reconcile every known job (bounded concurrency)."""
    semaphore = asyncio.Semaphore(options.concurrency)

    async def one(namespace: str, name: str) -> None:
        async with semaphore:
            try:
                await reconciler.reconcile(namespace, name)
            except Exception:
                log.exception("resync of %s/%s failed", namespace, name)

    next_sweep = 0.0
    while True:
        await asyncio.sleep(options.resync_seconds)
        if time.monotonic() >= next_sweep:  # a deletion missed while the operator was down
            next_sweep = time.monotonic() + SERVED_RESYNC_SECONDS
            await sweep_shared(reconciler, list(options.namespaces) or [None])
        keys = reconciler.periodic_keys()
        if keys:
            await asyncio.gather(*(one(ns, name) for ns, name in keys))
        try:
            reconciler.publish_metrics()
        except Exception:
            log.exception("publishing metrics failed")
