"""Prometheus metrics: jobs per phase, reconcile latency, queue length, GPUs in use vs quota."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Gauge, Histogram, start_http_server

from lora_contract.types import Phase

from ..api.operator_config import Quotas
from .quota import Demand, namespace_quota, usage_by_namespace

JOBS = Gauge("lorajob_jobs", "LoRAJobs by phase", ["phase"])
RECONCILE_SECONDS = Histogram(
    "lorajob_reconcile_duration_seconds",
    "Time to reconcile one LoRAJob",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_LENGTH = Gauge("lorajob_queue_length", "LoRAJobs waiting for GPU quota", ["namespace"])
GPUS_IN_USE = Gauge(
    "lorajob_gpus_in_use", "GPUs held by admitted LoRAJobs", ["namespace", "gpu_type"]
)
GPU_QUOTA = Gauge(
    "lorajob_gpu_quota",
    "GPU quota per namespace and type (-1: unlimited)",
    ["namespace", "gpu_type"],
)
LEADER = Gauge(
    "lorajob_operator_leader",
    "1 on the replica that holds the leader Lease (or runs without election), 0 on standbys",
)


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address)


def publish(phases: dict[tuple[str, str], str], demands: Iterable[Demand], quotas: Quotas) -> None:
    """Recompute the gauges from the operator's view of all jobs (cheap: one pass)."""
    counts = {phase.value: 0 for phase in Phase}
    queued: dict[str, int] = {}
    for (namespace, _), phase in phases.items():
        counts[phase] = counts.get(phase, 0) + 1
        if phase == Phase.Queued.value:
            queued[namespace] = queued.get(namespace, 0) + 1
    for phase, count in counts.items():
        JOBS.labels(phase=phase).set(count)
    QUEUE_LENGTH.clear()
    for namespace, count in queued.items():
        QUEUE_LENGTH.labels(namespace=namespace).set(count)
    GPUS_IN_USE.clear()
    GPU_QUOTA.clear()
    demands = list(demands)
    for (namespace, gpu_type), gpus in usage_by_namespace(demands).items():
        GPUS_IN_USE.labels(namespace=namespace, gpu_type=gpu_type).set(gpus)
        quota = namespace_quota(quotas, namespace)
        limit = quota.gpu_types.get(gpu_type, quota.gpus)
        GPU_QUOTA.labels(namespace=namespace, gpu_type=gpu_type).set(-1 if limit is None else limit)
