"""Unit tests: Prometheus gauges from the operator's view of jobs, and the Event body."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from prometheus_client import REGISTRY

from lora_operator.api.operator_config import Quotas
from lora_operator.controller import metrics
from lora_operator.controller.events import build_event
from lora_operator.controller.quota import Demand
from lora_operator.controller.reconcile import needs_resync


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_gauges_count_phases_queue_and_gpus_against_quota() -> None:
    phases = {("a", "x"): "Running", ("a", "y"): "Queued", ("b", "z"): "Queued"}
    demands = [
        Demand("a", "x", "A100", 4, "2026-01-01T00:00:00Z", holding=True),
        Demand("a", "y", "A100", 4, "2026-01-01T00:00:01Z"),
    ]
    quotas = Quotas.model_validate({"namespaces": {"a": {"gpuTypes": {"A100": 6}}}})
    metrics.publish(phases, demands, quotas)
    assert sample("lorajob_jobs", phase="Running") == 1
    assert sample("lorajob_jobs", phase="Queued") == 2
    assert sample("lorajob_jobs", phase="Succeeded") == 0
    assert sample("lorajob_queue_length", namespace="b") == 1
    assert sample("lorajob_gpus_in_use", namespace="a", gpu_type="A100") == 4
    assert sample("lorajob_gpu_quota", namespace="a", gpu_type="A100") == 6


def test_event_body_is_a_valid_core_event() -> None:
    obj = {
        "apiVersion": "finetune.lora-operator.io/v1alpha1",
        "kind": "LoRAJob",
        "metadata": {"name": "j", "namespace": "ml", "uid": "u1", "resourceVersion": "7"},
    }
    event = build_event(obj, "Warning", "PodFailed", "x" * 5000)
    kubernetes_validate.validate(event, "1.33", strict=True)
    assert event["involvedObject"]["uid"] == "u1"
    assert event["metadata"]["namespace"] == "ml"
    assert len(event["message"]) == 1024


def test_only_jobs_with_periodic_work_are_resynced() -> None:
    def job(phase: str | None, spec: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
        return {"spec": spec or {}, "status": {"phase": phase, **status}}

    assert needs_resync(job(None))
    assert needs_resync(job("Running")) and needs_resync(job("Queued"))
    assert not needs_resync(job("Suspended"))
    assert not needs_resync(job("Failed"))
    assert needs_resync(job("Failed", {"ttlSecondsAfterFinished": 60}))
    assert not needs_resync(job("Succeeded"))
    serving = {"serving": {"enabled": True}}
    assert needs_resync(job("Succeeded", serving))
    ready = [{"type": "Serving", "status": "True"}]
    assert not needs_resync(job("Succeeded", serving, conditions=ready))


def test_progress_status_rounds_losses_for_the_printer_column() -> None:
    """`kubectl get lj` prints the Loss column as stored: keep it readable."""
    from lora_operator.api.types import Progress
    from lora_operator.controller.progress import progress_status

    fields = progress_status(
        Progress(step=40, total_steps=40, loss=5.489808082580566, eval_loss=5.47693, epoch=1.0)
    )
    assert fields["progress"]["loss"] == 5.4898
    assert fields["progress"]["evalLoss"] == 5.4769
    assert fields["progressSummary"].startswith("40/40")
