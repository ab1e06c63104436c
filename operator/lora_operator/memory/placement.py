"""Choose GPUs, nodes and a strategy for a LoRAJob, and the pod's resource requests.

Search order when nothing is pinned: one GPU (plain DDP with one rank) if a full replica fits;
otherwise ZeRO-3 sharding across more GPUs of one node, then across nodes. Explicit
`distributed.nodes`/`gpusPerNode`/`strategy` are honoured. What does not fit is retried with the
maths-preserving changes of memory/fit.py (applied under strategy auto, named in the refusal
otherwise: an OOM found at plan time instead of an hour into a queue). The card's safety margin
is preferred, never required: a peak inside it is a warning, only a peak above the card refuses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from lora_contract.types import (
    ComputeDtype,
    LoRAJobSpec,
    Offload,
    PlanStatus,
    QuantizationMode,
    ResourceAmounts,
    Strategy,
    TrainingOverrides,
)

from ..api.operator_config import GpuType
from .advice import lora_warnings
from .architecture import Architecture, architecture_of
from .catalog import GpuCatalog
from .errors import PlanningError
from .estimate import GIB, Assumptions, MemoryEstimate, TrainingShape, estimate_memory
from .fit import FitSearch, Variant, search_fit
from .forecast import DatasetStats, Forecast, forecast_job
from .local_config import read_local_config
from .model_config import ModelConfig

CPUS_PER_GPU = 8
MAX_CPUS_PER_NODE = 96
CPUS_PER_CPU_PROCESS = 2
MAX_NODES = 64
HOST_BASE_GIB = 8.0  # Python, CUDA host side, dataloader workers, one model shard while loading
SCRATCH_GIB = 10.0  # checkpoints staged before upload, dataset copy


@dataclass(frozen=True)
class PlanResult:
    """The memory model's decision for one spec."""

    gpu: GpuType
    nodes: int
    gpus_per_node: int
    strategy: Strategy
    estimate: MemoryEstimate
    usable_gib: float
    requests: ResourceAmounts
    limits: ResourceAmounts
    reason: str
    warnings: list[str] = field(default_factory=list)
    on_cpu: bool = False
    forecast: Forecast | None = None
    adjustments: list[str] = field(default_factory=list)
    training_overrides: TrainingOverrides | None = None
    # kept for `lorajob plan`'s longest-sequence table (memory/fit.py), not part of the status
    architecture: Architecture | None = field(default=None, repr=False, compare=False)

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def gpu_resource_name(self) -> str | None:
        return None if self.on_cpu else self.gpu.resource_name

    def to_status(self) -> PlanStatus:
        return PlanStatus(
            gpu_type=self.gpu.name,
            gpu_memory_gib=self.gpu.memory_gib,
            nodes=self.nodes,
            gpus_per_node=self.gpus_per_node,
            total_gpus=self.total_gpus,
            strategy=self.strategy,
            per_gpu_peak_gib=round(self.estimate.peak_gib, 2),
            headroom_gib=round(self.gpu.memory_gib - self.estimate.peak_gib, 2),
            breakdown_gib=dict(self.estimate.breakdown_gib),
            total_params=self.estimate.total_params,
            trainable_params=self.estimate.trainable_params,
            requests=self.requests,
            limits=self.limits,
            reason=self.reason,
            warnings=list(self.warnings),
            forecast=self.forecast.to_status() if self.forecast else None,
            adjustments=list(self.adjustments),
            training_overrides=self.training_overrides,
        )


def shape_for(
    spec: LoRAJobSpec, strategy: Strategy, ranks: int, on_cpu: bool = False
) -> TrainingShape:
    """The memory-relevant shape of `spec`; CPU runs train in fp32 (as the trainer does)."""
    return TrainingShape(
        quantization=spec.quantization.mode,
        double_quant=spec.quantization.double_quant,
        compute_dtype=ComputeDtype.fp32 if on_cpu else spec.quantization.compute_dtype,
        rank=spec.lora.r,
        target_modules=tuple(spec.lora.target_modules),
        dropout=spec.lora.dropout,
        use_dora=spec.lora.use_dora,
        seq_len=spec.dataset.max_seq_length,
        micro_batch=spec.training.micro_batch_size,
        gradient_checkpointing=spec.training.gradient_checkpointing,
        attention=spec.training.attention,
        optimizer=spec.training.optimizer,
        strategy=strategy,
        data_parallel=ranks,
        offload_cpu=spec.distributed.offload == Offload.cpu,
        # the trainer keeps the stock loss under ZeRO-3 (lora_trainer.loss.choose_loss_path)
        chunked_loss=spec.training.chunked_loss and strategy != Strategy.deepspeed_zero3,
        # on CPU the saved tensors are in host memory already (counted once, in the terms)
        activation_offloading=spec.training.activation_offloading and not on_cpu,
    )


def plan_job(
    spec: LoRAJobSpec,
    catalog: GpuCatalog | None = None,
    model_config: ModelConfig | None = None,
    dataset: DatasetStats | None = None,
) -> PlanResult:
    """Estimate memory and place `spec`; raises PlanningError with one clear sentence.

    The operator passes the `model_config` it resolved without blocking; without one the config
    is read here, as `lorajob plan` does on the user's machine (local paths and URLs allowed).
    `dataset`: row count and mean tokens when the caller could read the data (the forecast)."""
    catalog = catalog or GpuCatalog.default()
    gpu = catalog.get(spec.resources.gpu_type)
    on_cpu = GpuCatalog.is_cpu(gpu)
    arch = architecture_of(model_config or read_local_config(spec.base_model))
    assumptions = Assumptions(cuda_context_gib=0.0) if on_cpu else Assumptions()
    usable = gpu.memory_gib * (1 - gpu.safety_margin_fraction)
    max_per_node = min(gpu.max_per_node, spec.resources.max_gpus_per_node)
    chosen = _choose(spec, arch, assumptions, usable, max_per_node, on_cpu, gpu)
    run = chosen.variant.applied_to(spec) if chosen.variant else spec  # what the trainer runs
    requests, limits = _pod_resources(run, arch, chosen.estimate, chosen.per_node, on_cpu)
    return PlanResult(
        gpu=gpu,
        nodes=chosen.nodes,
        gpus_per_node=chosen.per_node,
        strategy=chosen.strategy,
        estimate=chosen.estimate,
        usable_gib=usable,
        requests=requests,
        limits=limits,
        reason=chosen.reason,
        warnings=chosen.warnings
        + _uncalibrated_kbit(run, chosen.estimate, gpu, on_cpu)
        + lora_warnings(run, arch, gpu, on_cpu)
        + chosen.estimate.notes,
        on_cpu=on_cpu,
        forecast=forecast_job(run, arch, gpu, chosen.nodes, chosen.per_node, dataset),
        adjustments=chosen.adjustments,
        training_overrides=chosen.variant.overrides(spec) if chosen.variant else None,
        architecture=arch,
    )


@dataclass(frozen=True)
class Choice:
    """A placement, and the maths-preserving change (fit.py) it needed, if any."""

    strategy: Strategy
    nodes: int
    per_node: int
    estimate: MemoryEstimate
    reason: str
    variant: Variant | None = None
    adjustments: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _choose(
    spec: LoRAJobSpec,
    arch: Architecture,
    assumptions: Assumptions,
    usable: float,
    max_per_node: int,
    on_cpu: bool,
    gpu: GpuType,
) -> Choice:
    """The spec as written within the safety margin; else (strategy auto) the cheapest
    maths-preserving variant within it; else the same two inside the margin, with a warning;
    else a refusal naming what would fit."""
    dist = spec.distributed
    unit = "process" if on_cpu else "GPU"
    card = f"{gpu.name} ({usable:.1f} of {gpu.memory_gib:g} GiB usable)"

    def fits(
        strategy: Strategy, nodes: int, per_node: int, job: LoRAJobSpec = spec
    ) -> MemoryEstimate:
        shape = shape_for(job, strategy, nodes * per_node, on_cpu)
        return estimate_memory(arch, shape, assumptions)

    pinned = (
        None
        if dist.nodes is None or dist.gpus_per_node is None
        else (dist.nodes, dist.gpus_per_node)
    )
    explicit = pinned is not None
    if pinned is not None:
        nodes, per_node = pinned
        if per_node > max_per_node and not on_cpu:
            raise PlanningError(
                f"spec.distributed.gpusPerNode: {per_node} exceeds the {max_per_node} "
                f"{gpu.name} GPUs a node offers (resources.maxGpusPerNode / catalog maxPerNode)"
            )
        if on_cpu:
            strategy = _strategies(dist.strategy, nodes * per_node)[0]
            est = fits(strategy, nodes, per_node)
            why = _reason_explicit(strategy, nodes, per_node, est, card, unit, on_cpu)
            if est.peak_gib > usable:
                why += f" Warning: {est.peak_gib:.1f} GiB per process exceeds {usable:.1f}."
            return Choice(strategy, nodes, per_node, est, why)
    if on_cpu:
        strategy = Strategy.ddp if dist.strategy == Strategy.auto else dist.strategy
        est = fits(strategy, 1, 1)
        why = (
            f"CPU placement: 1 training process with {strategy.value}; about "
            f"{est.peak_gib:.1f} GiB of host memory at peak."
        )
        return Choice(strategy, 1, 1, est, why)
    placements = [pinned] if pinned is not None else _placements(max_per_node)

    @functools.cache
    def single() -> MemoryEstimate:  # only for the reasons that name it: one estimate saved
        return fits(_strategies(dist.strategy, 1)[0], 1, 1)

    margin_card = (
        f"{gpu.name} ({gpu.memory_gib:g} GiB, inside its "
        f"{gpu.safety_margin_fraction:.0%} safety margin)"
    )

    def reason(
        strategy: Strategy, nodes: int, per_node: int, est: MemoryEstimate, card_text: str
    ) -> str:
        if explicit:
            return _reason_explicit(strategy, nodes, per_node, est, card_text, unit, False)
        return _reason_auto(strategy, nodes, per_node, est, card_text, single)

    adjust = dist.strategy == Strategy.auto
    for limit, card_text in ((usable, card), (gpu.memory_gib, margin_card)):
        for nodes, per_node in placements:
            for strategy in _strategies(dist.strategy, nodes * per_node):
                est = fits(strategy, nodes, per_node)
                if est.peak_gib <= limit:
                    why = reason(strategy, nodes, per_node, est, card_text)
                    return Choice(
                        strategy, nodes, per_node, est, why, warnings=_margin(est, usable, gpu)
                    )
        if not adjust:
            continue
        found = _fit_variant(spec, placements, limit, fits)
        if found is not None and found[3].cheapest is not None:
            strategy, nodes, per_node, variant = (*found[:3], found[3].cheapest)
            est = fits(strategy, nodes, per_node, variant.applied_to(spec))
            as_written = fits(strategy, nodes, per_node)
            changes = variant.changes(spec, nodes * per_node)
            why = reason(strategy, nodes, per_node, est, card_text)
            why += (
                f" Changed to fit (same training maths): {'; '.join(changes)}; "
                f"{as_written.peak_gib:.1f} GiB per GPU as written, {est.peak_gib:.1f} with "
                f"the change ({limit:.1f} GiB allowed)."
            )
            return Choice(
                strategy,
                nodes,
                per_node,
                est,
                why,
                variant=variant,
                adjustments=changes,
                warnings=_margin(est, usable, gpu),
            )
    alternatives = _fit_variant(spec, placements, gpu.memory_gib, fits)
    if explicit:
        nodes, per_node = placements[0]
        strategy = _strategies(dist.strategy, nodes * per_node)[-1]
        message = (
            f"spec.distributed: {nodes} node(s) x {per_node} {unit}(s) with "
            f"{strategy.value} needs {fits(strategy, nodes, per_node).peak_gib:.1f} GiB per "
            f"{unit}, more than {card}; add GPUs, use quantization.mode nf4, or shorten "
            "dataset.maxSeqLength"
        )
    else:
        message = (
            f"spec.resources.gpuType: this job does not fit on any placement of {card} up to "
            f"{MAX_NODES} nodes x {max_per_node} GPUs (one GPU would need "
            f"{single().peak_gib:.1f} GiB); use quantization.mode nf4, distributed.offload "
            "cpu, a shorter dataset.maxSeqLength or a larger GPU"
        )
    raise PlanningError(message + _alternatives_text(spec, alternatives, explicit))


Fits = Callable[..., MemoryEstimate]


def _fit_variant(
    spec: LoRAJobSpec, placements: list[tuple[int, int]], limit: float, fits: Fits
) -> tuple[Strategy, int, int, FitSearch] | None:
    """The first placement (in search order) where a maths-preserving variant of `spec` fits
    under `limit`, with the search's result there."""
    for nodes, per_node in placements:
        for strategy in _strategies(spec.distributed.strategy, nodes * per_node):

            def peak(
                job: LoRAJobSpec, s: Strategy = strategy, n: int = nodes, g: int = per_node
            ) -> float:
                return fits(s, n, g, job).peak_gib

            result = search_fit(
                spec, peak, limit, chunked_loss_applies=strategy != Strategy.deepspeed_zero3
            )
            if result.cheapest is not None:
                return strategy, nodes, per_node, result
    return None


def _alternatives_text(
    spec: LoRAJobSpec, found: tuple[Strategy, int, int, FitSearch] | None, explicit: bool
) -> str:
    """'; fits with: microBatchSize 1 + gradientAccumulation 16; gradientCheckpointing true'
    (the placement named when the search chose it), or nothing."""
    if found is None:
        return ""
    strategy, nodes, per_node, result = found
    where = "" if explicit else f" on {nodes} node(s) x {per_node} GPU(s) with {strategy.value}"
    names = "; ".join(v.summary(spec) for v in result.fitting)
    return f"; fits{where} with training.{names} (set distributed.strategy auto to apply it)"


def _margin(est: MemoryEstimate, usable: float, gpu: GpuType) -> list[str]:
    """The safety margin is a warning: the estimate fits the card, with less slack than the
    platform asks for (an estimate error of that size would run out of memory)."""
    if est.peak_gib <= usable:
        return []
    return [
        f"memory: the estimated peak {est.peak_gib:.1f} GiB per GPU is inside {gpu.name}'s "
        f"{gpu.safety_margin_fraction:.0%} safety margin ({usable:.1f} of "
        f"{gpu.memory_gib:g} GiB); it fits by the estimate, with "
        f"{gpu.memory_gib - est.peak_gib:.1f} GiB to spare"
    ]


# Published bitsandbytes QLoRA training peaks ran up to 33% above this model (LitGPT and PEFT;
# their bf16 LoRA rows agree within 8%), an excess not yet explained nor measured on a GPU for
# the trainer's own path (docs/benchmarks.md, "What is left is one pattern").
KBIT_PUBLISHED_EXCESS = 0.33


def _uncalibrated_kbit(
    spec: LoRAJobSpec, est: MemoryEstimate, gpu: GpuType, on_cpu: bool
) -> list[str]:
    """A k-bit plan that would not survive the published excess says so (not a refusal)."""
    if on_cpu or spec.quantization.mode == QuantizationMode.none:
        return []
    if est.peak_gib * (1 + KBIT_PUBLISHED_EXCESS) <= gpu.memory_gib:
        return []
    return [
        f"memory: spec.quantization.mode {spec.quantization.mode.value} estimates are not yet "
        f"calibrated on a GPU; published bitsandbytes QLoRA peaks ran up to "
        f"{KBIT_PUBLISHED_EXCESS:.0%} above this model, which here would be "
        f"{est.peak_gib * (1 + KBIT_PUBLISHED_EXCESS):.1f} of {gpu.memory_gib:g} GiB; "
        "leave that headroom (a smaller micro batch, checkpointing or a larger GPU)"
    ]


def _strategies(requested: Strategy, ranks: int) -> list[Strategy]:
    if requested != Strategy.auto:
        return [requested]
    if ranks == 1:
        return [Strategy.ddp]
    return [Strategy.ddp, Strategy.deepspeed_zero3]


def _placements(max_per_node: int) -> list[tuple[int, int]]:
    """(nodes, gpus per node): 1, 2, 4, ... GPUs on one node, then whole nodes."""
    single = [g for g in (1, 2, 4, 8, 16, 32, 64) if g < max_per_node] + [max_per_node]
    return [(1, g) for g in single] + [(n, max_per_node) for n in range(2, MAX_NODES + 1)]


def _reason_auto(
    strategy: Strategy,
    nodes: int,
    per_node: int,
    est: MemoryEstimate,
    card: str,
    single: Callable[[], MemoryEstimate],
) -> str:
    peak = f"{est.peak_gib:.1f} GiB per GPU fits {card}"
    if nodes * per_node == 1:
        return f"A full replica fits one GPU: {peak}."
    if strategy == Strategy.ddp:
        return f"{peak} with plain data parallelism on {per_node} GPUs."
    where = f"{per_node} GPUs" if nodes == 1 else f"{nodes} nodes x {per_node} GPUs"
    return (
        f"One GPU would need {single().peak_gib:.1f} GiB, so {strategy.value} shards the weights "
        f"across {where}: {peak}."
    )


def _reason_explicit(
    strategy: Strategy,
    nodes: int,
    per_node: int,
    est: MemoryEstimate,
    card: str,
    unit: str,
    on_cpu: bool,
) -> str:
    place = f"{nodes} node(s) x {per_node} {unit}(s) as requested, {strategy.value}"
    if on_cpu:
        return f"CPU placement: {place}; about {est.peak_gib:.1f} GiB of host memory per process."
    return f"{place}: {est.peak_gib:.1f} GiB per GPU fits {card}."


def _quantity_gi(gib: float) -> str:
    return f"{max(1, math.ceil(gib))}Gi"


def _pod_resources(
    spec: LoRAJobSpec,
    arch: Architecture,
    est: MemoryEstimate,
    per_node: int,
    on_cpu: bool,
) -> tuple[ResourceAmounts, ResourceAmounts]:
    """Per-pod (one pod per node) CPU, host memory and scratch disk, then user overrides."""
    if on_cpu:
        cpu = CPUS_PER_CPU_PROCESS * per_node
        memory = per_node * est.peak_gib * 1.3 + 2.0
    else:
        cpu = min(CPUS_PER_GPU * per_node, MAX_CPUS_PER_NODE)
        shard_gib = min(5.0, arch.total_params * 2 / GIB)  # safetensors shards load one by one
        memory = per_node * (HOST_BASE_GIB + shard_gib + est.host_offload_gib * 1.25)
    storage = SCRATCH_GIB
    if spec.base_model.source.startswith("s3://"):
        storage += arch.total_params * 2 / GIB * 1.1  # 16-bit checkpoint downloaded per node
    requests = ResourceAmounts(
        cpu=str(cpu), memory=_quantity_gi(memory), ephemeral_storage=_quantity_gi(storage)
    )
    limits = ResourceAmounts(memory=requests.memory, ephemeral_storage=requests.ephemeral_storage)
    return (
        requests.overridden_by(spec.resources.requests),
        limits.overridden_by(spec.resources.limits),
    )
