"""The plan's side of each case: what `lorajob plan` estimates for the same spec, and which
catalog GPU the measuring device is."""

from __future__ import annotations

from typing import Any

from lora_operator.memory import GpuCatalog, PlanningError, load_architecture, plan_job

from .cases import CPU_GPU_TYPE, DEFAULT_GPU_TYPE, Case, case_spec


def catalog_gpu(on_cuda: bool, total_gib: float | None) -> str:
    """The catalog entry for the measuring device: the card whose memory is nearest this one's
    total (H200 when unknown); `cpu` for a CPU run."""
    if not on_cuda:
        return CPU_GPU_TYPE
    if total_gib is None:
        return DEFAULT_GPU_TYPE
    cards = [g for g in GpuCatalog.default().entries.values() if not GpuCatalog.is_cpu(g)]
    return min(cards, key=lambda g: abs(g.memory_gib - total_gib)).name


def billions(model_id: str) -> float:
    """Parameters of a shipped model, in billions (the schedule's cost prior)."""
    return load_architecture(model_id, None).total_params / 1e9


def planned(case: Case, gpu_type: str) -> dict[str, Any]:
    """The plan's per-GPU estimate for `case` on `gpu_type`, or why it refused."""
    try:
        result = plan_job(case_spec(case, gpu_type))
    except PlanningError as exc:
        return {"gpu_type": gpu_type, "error": str(exc)}
    estimate = result.estimate
    breakdown = dict(estimate.breakdown_gib)
    return {
        "gpu_type": gpu_type,
        "strategy": result.strategy.value,
        "total_gpus": result.total_gpus,
        "peak_allocated_gib": round(estimate.peak_allocated_gib, 3),
        # max_memory_reserved: allocated plus the allocator's slack, without the CUDA context
        "peak_reserved_gib": round(
            estimate.peak_allocated_gib + breakdown.get("allocator_overhead", 0.0), 3
        ),
        "peak_gib": round(estimate.peak_gib, 3),
        "breakdown_gib": breakdown,
    }


def error(planned_gib: float | None, measured_gib: float | None) -> float | None:
    """Estimate relative to the measurement (negative: the plan is under, an OOM risk)."""
    if planned_gib is None or not measured_gib:
        return None
    return round(planned_gib / measured_gib - 1, 4)
