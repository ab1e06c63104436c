"""Placement cost: what auto placement buys for every shipped example on every catalog GPU.

Each example is planned with its placement left to the operator (a pinned world's share of the
global batch moved into the accumulation, so the training is the same), and the table shows the
chosen placement, its forecast GPU-hours and wall time, and the cheapest alternative. Goals: the
8B LoRA example on an L4 plans one GPU (it planned 48 before the placement objective), and the
global batch of every example is the same on every GPU type it fits.
"""

from __future__ import annotations

from pathlib import Path

from lora_contract.types import LoRAJobSpec, Strategy
from lora_operator.api.loading import load_lorajobs
from lora_operator.memory import GpuCatalog, PlanningError, plan_job
from lora_operator.memory.batch import global_batch

from .goals import record

ROOT = Path(__file__).resolve().parents[3]
EIGHT_B = ROOT / "examples" / "lora-llama3-8b-a100.yaml"


def unpinned(spec: LoRAJobSpec) -> LoRAJobSpec:
    """The same training (global batch) with nodes, GPUs and strategy left to the plan."""
    total = global_batch(spec)
    training = spec.training.model_copy(
        update={"gradient_accumulation": total // spec.training.micro_batch_size}
    )
    distributed = spec.distributed.model_copy(
        update={"nodes": None, "gpus_per_node": None, "strategy": Strategy.auto}
    )
    return spec.model_copy(update={"training": training, "distributed": distributed})


def main() -> int:
    catalog = GpuCatalog.default()
    gpus = [g for g in catalog.entries.values() if not GpuCatalog.is_cpu(g)]
    batches_kept = True
    header = f"{'example':<26}{'GPU type':<14}{'placement':<26}{'GPU-h':>9}{'hours':>9}  next"
    print(header)
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for gpu in gpus:
            spec = unpinned(load_lorajobs(str(path))[0].spec)
            spec.resources.gpu_type = gpu.name
            try:
                plan = plan_job(spec, catalog).to_status()
            except PlanningError:
                print(f"{path.stem:<26}{gpu.name:<14}does not fit")
                continue
            run = plan.applied_to(spec).training
            kept = run.micro_batch_size * run.gradient_accumulation * plan.total_gpus
            batches_kept &= kept == global_batch(spec) == plan.global_batch_size
            forecast = plan.forecast
            hours = f"{forecast.gpu_hours:>9,.1f}{forecast.hours:>9,.1f}" if forecast else ""
            nxt = plan.alternatives[0] if plan.alternatives else None
            other = (
                f"{nxt.nodes}x{nxt.gpus_per_node} {nxt.strategy.value} x{nxt.relative_cost:.2f}"
                if nxt
                else "-"
            )
            where = f"{plan.placement} {plan.strategy.value}"
            print(f"{path.stem:<26}{gpu.name:<14}{where:<26}{hours}  {other}")
    spec = load_lorajobs(str(EIGHT_B))[0].spec
    spec.resources.gpu_type = "L4-24GB"
    eight_b = plan_job(spec, catalog)
    record(
        "placement cost",
        "8B LoRA example on L4 plans 1 GPU (was 48)",
        f"{eight_b.total_gpus} GPU(s), {eight_b.forecast.gpu_hours:.1f} GPU-hours"
        if eight_b.forecast
        else f"{eight_b.total_gpus} GPU(s)",
        eight_b.total_gpus == 1,
    )
    record(
        "placement cost",
        "global batch the spec's on every example x GPU type",
        "kept" if batches_kept else "changed somewhere (see the table)",
        batches_kept,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
