"""`lorajob plan FILE...`: the memory breakdown, placement and warnings of LoRAJob manifests."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import replace
from typing import Any

import yaml

from lora_contract.types import ForecastStatus, LoRAJob, PlanStatus, ServingPlanStatus

from ..api.loading import SpecError, load_lorajobs
from .catalog import GpuCatalog
from .dataset_stats import read_dataset_stats
from .errors import PlanningError
from .estimate import TERM_HELP, estimate_memory
from .export_sizing import (
    DISK_FLOOR_GIB,
    GIB,
    MEMORY_FLOOR_GIB,
    MEMORY_MARGIN,
    export_disk_gib,
    export_memory_gib,
    export_memory_terms,
    export_pod_resources,
)
from .fit import DEFAULT_MAX_SEQ, SEQ_STEP, longest_fitting
from .local_config import read_config
from .objective import SCALE_OUT_TOLERANCE
from .placement import PlanResult, plan_job, shape_for

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorajob plan",
        description="Estimate per-GPU peak memory of LoRAJobs and choose a placement.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="LoRAJob YAML file(s)")
    parser.add_argument("--output", "-o", choices=["table", "json", "yaml"], default="table")
    parser.add_argument(
        "--gpu-type", metavar="NAME", help="plan for this GPU type instead of resources.gpuType"
    )
    parser.add_argument(
        "--model-config",
        metavar="PATH_OR_URL",
        help="the model's config.json (a file, folder or URL) instead of spec.baseModel's; for "
        "a config kept in a ConfigMap (baseModel.configMapRef)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    results: list[tuple[LoRAJob, PlanResult]] = []
    try:
        for path in args.files:
            for job in load_lorajobs(path):
                if args.gpu_type:
                    job.spec.resources.gpu_type = args.gpu_type
                results.append((job, _plan(job, path, args.model_config)))
    except SpecError as exc:
        for problem in exc.problems:
            print(f"error: {exc.source}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.output == "table":
        print("\n\n".join(render_table(job, result) for job, result in results))
    else:
        docs = [
            {"name": job.metadata.name, "plan": result.to_status().to_wire()}
            for job, result in results
        ]
        payload: Any = docs[0] if len(docs) == 1 else docs
        if args.output == "json":
            print(json.dumps(payload, indent=2))
        else:
            print(yaml.safe_dump(payload, sort_keys=False), end="")
    return 0


def _plan(job: LoRAJob, path: str, model_config: str | None = None) -> PlanResult:
    try:
        given = read_config(job.spec.base_model.name, model_config) if model_config else None
        dataset = read_dataset_stats(job.spec.dataset.source, job.spec.dataset.max_seq_length)
        return plan_job(job.spec, GpuCatalog.default(), given, dataset)
    except PlanningError as exc:
        raise SpecError(f"{path} ({job.metadata.name})", [str(exc)]) from None


def render_table(job: LoRAJob, result: PlanResult) -> str:
    status = result.to_status()
    run = status.applied_to(job.spec)
    unit = status.unit
    lines = [
        f"LoRAJob {job.metadata.name}: {job.spec.base_model.name}",
        f"  parameters: {status.total_params:,} total, {status.trainable_params:,} trainable "
        f"({100 * status.trainable_params / max(status.total_params, 1):.3f}%)",
        "",
        f"  per-{unit} memory at peak (GiB)",
    ]
    for term, gib in status.breakdown_gib.items():
        if gib == 0:
            continue
        lines.append(f"    {term:<20}{gib:>9.2f}  {TERM_HELP.get(term, '')}")
    lines.append(f"    {'total':<20}{status.per_gpu_peak_gib:>9.2f}  of {status.gpu_memory_gib:g}")
    if result.estimate.host_offload_gib:
        lines.append(f"    offloaded to host: {result.estimate.host_offload_gib:.2f} GiB per rank")
    lines += [
        "",
        f"  placement: {status.nodes} node(s) x {status.gpus_per_node} {unit}(s) of "
        f"{status.gpu_type}, strategy {status.strategy.value}",
        f"  global batch: {status.global_batch_size} samples per optimizer step = "
        f"{status.total_gpus} {unit}(s) x microBatchSize {run.training.micro_batch_size} x "
        f"gradientAccumulation {run.training.gradient_accumulation}",
        f"  why: {status.reason}",
        f"  pod requests: {_amounts(status.requests.to_wire())}",
        f"  pod limits:   {_amounts(status.limits.to_wire())}",
    ]
    if status.termination_grace_seconds:
        lines.append(
            f"  termination grace: {status.termination_grace_seconds} s after SIGTERM "
            f"({status.termination_grace_basis})"
        )
    if status.adjustments:
        lines += ["", "  changed to fit (same training maths; the trainer runs these values):"]
        lines += [f"    - {change}" for change in status.adjustments]
    lines += alternative_lines(status)
    lines += ["", *longest_sequence_lines(job, result)]
    lines += ["", *forecast_lines(status.forecast, unit)]
    if status.serving is not None:
        lines += ["", *serving_lines(status.serving)]
    if job.spec.export.merged:
        lines += ["", *export_lines(job, status)]
    if status.warnings:
        lines += ["", "  warnings:"] + [f"    - {w}" for w in status.warnings]
    return "\n".join(lines)


def longest_sequence_lines(
    job: LoRAJob, result: PlanResult, catalog: GpuCatalog | None = None
) -> list[str]:
    """The longest dataset.maxSeqLength that fits each catalog GPU, within its safety margin,
    with the job's other settings on the planned number of GPUs and strategy."""
    arch = result.architecture
    if arch is None or result.on_cpu:
        return []
    run = result.to_status().applied_to(job.spec)
    ranks, strategy = result.total_gpus, result.strategy

    @functools.cache
    def peak(seq_len: int) -> float:
        shape = replace(shape_for(run, strategy, ranks), seq_len=seq_len)
        return estimate_memory(arch, shape).peak_gib

    upper = arch.max_position_embeddings or DEFAULT_MAX_SEQ
    lines = [
        f"  longest dataset.maxSeqLength that fits ({ranks} GPU(s), {strategy.value}, "
        f"up to the model's {upper:,}; within each card's safety margin)"
    ]
    for gpu in (catalog or GpuCatalog.default()).entries.values():
        if GpuCatalog.is_cpu(gpu):
            continue
        longest = longest_fitting(peak, gpu.memory_gib * (1 - gpu.safety_margin_fraction), upper)
        shown = f"{longest:,}" if longest else f"none (not even {SEQ_STEP} tokens)"
        mark = "  <- resources.gpuType" if gpu.name == result.gpu.name else ""
        lines.append(f"    {gpu.name:<16}{shown:>10}{mark}")
    return lines


def alternative_lines(status: PlanStatus) -> list[str]:
    """The placements the objective did not choose, with what they would cost."""
    if not status.alternatives:
        return []
    lines = [
        "",
        "  other placements that fit (the cheapest forecast wins; more GPUs only for "
        f">{SCALE_OUT_TOLERANCE:.0%}):",
    ]
    for alt in status.alternatives:
        cost = ""
        if alt.gpu_hours is not None and alt.hours is not None:
            cost = f"{alt.gpu_hours:,.2f} GPU-hours, {_duration(alt.hours)}"
        where = f"{alt.nodes} node(s) x {alt.gpus_per_node} GPU(s) {alt.strategy.value}"
        lines.append(
            f"    {where:<36} x{alt.relative_cost:<6.3g} {cost}  {alt.per_gpu_peak_gib:.1f} GiB"
        )
        lines += [f"      - {change}" for change in alt.changes]
    return lines


SERVING_TERM_HELP = {
    "weights": "base weights over the tensor-parallel GPUs",
    "kv_cache": "K and V of maxConcurrency sequences of maxModelLen tokens",
    "lora_slots": "--max-loras adapter slots, all linears at --max-lora-rank (16-bit)",
    "activations": "the profile run's forward over the prefill tokens, sampler logits",
    "cuda_graphs": "captured CUDA graphs",
    "runtime_other": "torch.compile and other non-torch memory",
    "cuda_context": "CUDA context and kernels",
}


def serving_lines(serving: ServingPlanStatus) -> list[str]:
    """The "Serving" section: the vLLM server the plan sized (memory/serving_plan.py)."""
    where = (
        "CPU"
        if serving.gpus == 0
        else f"{serving.gpus} x {serving.gpu_type}, tensor parallel {serving.tensor_parallel_size}"
    )
    unit = "host" if serving.gpus == 0 else "per-GPU"
    lines = [f"  serving (vLLM): {where}", f"    {unit} memory (GiB)"]
    for term, gib in serving.memory_gib.items():
        help_ = SERVING_TERM_HELP.get(term, "")
        if serving.gpus == 0:  # one process on the host: no tensor parallelism, no GPU
            help_ = help_.replace(" over the tensor-parallel GPUs", " in host memory")
        lines.append(f"      {term:<18}{gib:>9.2f}  {help_}")
    if serving.gpus:
        lines.append(
            f"      {'total':<18}{serving.per_gpu_gib:>9.2f}  of {serving.gpu_memory_gib:g} "
            f"(--gpu-memory-utilization {serving.gpu_memory_utilization:.2f})"
        )
    lines += [
        f"    vLLM flags: {' '.join(serving.vllm_args)}",
        f"    predictor requests: {_amounts(serving.requests.to_wire())}",
        f"    predictor limits:   {_amounts(serving.limits.to_wire())}",
        f"    why: {serving.reason}",
    ]
    return lines


EXPORT_TERM_HELP = {
    "base": "the base model in the export dtype",
    "adapter": "the adapter in fp32 twice (loaded, the merge's delta)",
    "shard": "one safetensors shard being written (maxShardSize)",
}


def export_lines(job: LoRAJob, status: PlanStatus) -> list[str]:
    """The "Export" section (spec.export.merged): the merge Job's pod, sized by the functions the
    operator builds it with (memory/export_sizing.py)."""
    export, total, trainable = job.spec.export, status.total_params, status.trainable_params
    resources = export_pod_resources(total, trainable, export)
    lines = [
        f"  export (merged model, {export.dtype.value}): one CPU pod after the run succeeded",
        "    host memory (GiB)",
    ]
    for term, counted in export_memory_terms(total, trainable, export).items():
        lines.append(f"      {term:<18}{counted / GIB:>9.2f}  {EXPORT_TERM_HELP[term]}")
    lines += [
        f"      {'total':<18}{export_memory_gib(total, trainable, export):>9}  "
        f"(counted x {MEMORY_MARGIN:g} + {MEMORY_FLOOR_GIB:g} GiB, rounded up)",
        f"    scratch disk (GiB): {export_disk_gib(total, export)} (the base as downloaded, "
        f"fp32 at worst, + the merged copy + {DISK_FLOOR_GIB:g} GiB)",
        f"    pod requests: {_amounts(resources['requests'])}",
        f"    pod limits:   {_amounts(resources['limits'])}",
    ]
    return lines


def forecast_lines(forecast: ForecastStatus | None, unit: str = "GPU") -> list[str]:
    """The "Forecast" section of the table (memory/forecast.py explains the arithmetic)."""
    if forecast is None:
        return [
            "  forecast: none (set dataset.numExamples or training.maxSteps, and the GPU "
            "type's peakTflops in the catalog)"
        ]
    cost = "-" if forecast.cost is None else f"{forecast.cost:,.2f} (pricePerGpuHour)"
    hours_label = f"{unit}-hours"
    return [
        "  forecast",
        f"    tokens              {forecast.tokens:,} ({forecast.tokens_from})",
        f"    wall time           {_duration(forecast.hours)}",
        f"    {hours_label:<20}{forecast.gpu_hours:,.2f}",
        f"    cost                {cost}",
        *[f"    - {note}" for note in forecast.assumptions],
    ]


def _duration(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.1f} min"
    return f"{hours:,.1f} h" if hours < 48 else f"{hours / 24:,.1f} days ({hours:,.0f} h)"


def _amounts(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "-"
