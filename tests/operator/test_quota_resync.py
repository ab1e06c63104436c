"""What the resync loop does with quota-queued jobs: their own resync is slow (60 s), since the
ledger names the queued jobs that fit now and every tick reconciles those (after a release or a
quota change); a job kopf has not reconciled yet is left to kopf for a grace period. The watch's
event handler reconciles a job whose spec the reconciler has not seen (`needs_reconcile`)."""

from __future__ import annotations

import time
from typing import Any

from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.events import post_event
from lora_operator.controller.kube import KubeHolder
from lora_operator.controller.reconcile import (
    QUOTA_QUEUE_RESYNC_SECONDS,
    UNHANDLED_GRACE_SECONDS,
    Reconciler,
    needs_reconcile,
    resync_interval,
)


def lorajob(
    name: str, phase: str | None, gpus: int = 4, reason: str = "QuotaExceeded"
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase is not None:
        status = {
            "phase": phase,
            "plan": {"gpuType": "A100", "nodes": 1, "gpusPerNode": gpus, "totalGpus": gpus},
            "conditions": [{"type": "Admitted", "status": "False", "reason": reason}],
        }
    return {
        "metadata": {
            "namespace": "ml",
            "name": name,
            "creationTimestamp": f"2026-01-01T00:00:0{len(name) % 10}Z",
        },
        "status": status,
    }


def reconciler(quotas: dict[str, Any]) -> Reconciler:
    source = ConfigSource()
    source._config = OperatorConfig.model_validate({"quotas": quotas})
    return Reconciler(config=source, kube_factory=KubeHolder.get, emit=post_event)


def test_a_quota_queued_job_resyncs_slowly_a_kueue_queued_one_every_time() -> None:
    assert resync_interval(lorajob("q", "Queued")) == QUOTA_QUEUE_RESYNC_SECONDS
    assert resync_interval(lorajob("k", "Queued", reason="WaitingForKueue")) == 0


def test_queued_jobs_that_fit_are_due_at_every_tick() -> None:
    owner = reconciler({"default": {"gpus": 4}})
    owner.observe(lorajob("holder", "Running", reason="Admitted"))
    owner.observe(lorajob("waiter", "Queued"))
    now = time.monotonic()
    assert owner.periodic_keys(now) == [("ml", "holder"), ("ml", "waiter")]
    assert owner.periodic_keys(now + 1) == [("ml", "holder")]  # waiter: 60 s, and does not fit
    owner.observe(lorajob("holder", "Succeeded", reason="Admitted"))  # 4 GPUs free
    assert owner.periodic_keys(now + 2) == [("ml", "waiter")]


def test_a_raised_quota_makes_a_queued_job_due_at_once() -> None:
    owner = reconciler({"default": {"gpus": 0}})
    owner.observe(lorajob("starved", "Queued"))
    now = time.monotonic()
    assert owner.periodic_keys(now) == [("ml", "starved")]  # first sight
    assert owner.periodic_keys(now + 1) == []
    owner.config._config = OperatorConfig.model_validate({"quotas": {"default": {"gpus": 8}}})
    assert owner.periodic_keys(now + 2) == [("ml", "starved")]


def test_a_job_kopf_has_not_reconciled_yet_waits_out_the_grace() -> None:
    owner = reconciler({})
    owner.observe(lorajob("new", None))
    now = time.monotonic()
    assert owner.periodic_keys(now) == []
    assert owner.periodic_keys(now + UNHANDLED_GRACE_SECONDS + 1) == [("ml", "new")]


def test_an_event_reconciles_a_new_or_edited_spec_only() -> None:
    new = {"metadata": {"name": "x", "generation": 1}}
    assert needs_reconcile(new)
    seen = {"metadata": {"generation": 1}, "status": {"phase": "Queued", "observedGeneration": 1}}
    assert not needs_reconcile(seen)  # our own status write, kopf's annotations, a label
    edited = {**seen, "metadata": {"generation": 2}}
    assert needs_reconcile(edited)
    assert resync_interval(edited) == 0  # a failed reconcile of the edit is retried
    deleting = {"metadata": {"generation": 2, "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert not needs_reconcile({**edited, **deleting})
