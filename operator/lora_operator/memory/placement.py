"""Choose GPUs, nodes and a strategy for a LoRAJob, and the pod's resource requests.

Search order when nothing is pinned: one GPU (plain DDP with one rank) if a full replica fits;
otherwise ZeRO-3 sharding across more GPUs of one node, then across nodes. Explicit
`distributed.nodes`/`gpusPerNode`/`strategy` are honoured; if they cannot fit, that is an error
(an OOM found at plan time instead of an hour into a queue).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lora_contract.types import (
    ComputeDtype,
    LoRAJobSpec,
    Offload,
    PlanStatus,
    ResourceAmounts,
    Strategy,
)

from ..api.operator_config import GpuType
from .advice import lora_warnings
from .architecture import Architecture, architecture_of
from .catalog import GpuCatalog
from .errors import PlanningError
from .estimate import GIB, Assumptions, MemoryEstimate, TrainingShape, estimate_memory
from .forecast import DatasetStats, Forecast, forecast_job
from .local_config import read_local_config
from .model_config import ModelConfig

USABLE_FRACTION = 0.90  # plan peak must stay under 90% of the card
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
    usable = gpu.memory_gib * USABLE_FRACTION
    max_per_node = min(gpu.max_per_node, spec.resources.max_gpus_per_node)
    chosen = _choose(spec, arch, assumptions, usable, max_per_node, on_cpu, gpu)
    strategy, nodes, per_node, estimate, why = chosen
    requests, limits = _pod_resources(spec, arch, estimate, per_node, on_cpu)
    return PlanResult(
        gpu=gpu,
        nodes=nodes,
        gpus_per_node=per_node,
        strategy=strategy,
        estimate=estimate,
        usable_gib=usable,
        requests=requests,
        limits=limits,
        reason=why,
        warnings=lora_warnings(spec, arch, gpu, on_cpu) + estimate.notes,
        on_cpu=on_cpu,
        forecast=forecast_job(spec, arch, gpu, nodes, per_node, dataset),
    )


Choice = tuple[Strategy, int, int, MemoryEstimate, str]


def _choose(
    spec: LoRAJobSpec,
    arch: Architecture,
    assumptions: Assumptions,
    usable: float,
    max_per_node: int,
    on_cpu: bool,
    gpu: GpuType,
) -> Choice:
    dist = spec.distributed
    unit = "process" if on_cpu else "GPU"
    card = f"{gpu.name} ({usable:.1f} of {gpu.memory_gib:g} GiB usable)"

    def fits(strategy: Strategy, nodes: int, per_node: int) -> MemoryEstimate:
        shape = shape_for(spec, strategy, nodes * per_node, on_cpu)
        return estimate_memory(arch, shape, assumptions)

    if dist.nodes is not None and dist.gpus_per_node is not None:
        nodes, per_node = dist.nodes, dist.gpus_per_node
        if per_node > max_per_node and not on_cpu:
            raise PlanningError(
                f"spec.distributed.gpusPerNode: {per_node} exceeds the {max_per_node} "
                f"{gpu.name} GPUs a node offers (resources.maxGpusPerNode / catalog maxPerNode)"
            )
        candidates = _strategies(dist.strategy, nodes * per_node)
        for strategy in candidates:
            est = fits(strategy, nodes, per_node)
            if est.peak_gib <= usable or on_cpu:
                why = _reason_explicit(strategy, nodes, per_node, est, card, unit, on_cpu)
                if on_cpu and est.peak_gib > usable:
                    why += f" Warning: {est.peak_gib:.1f} GiB per process exceeds {usable:.1f}."
                return strategy, nodes, per_node, est, why
        est = fits(candidates[-1], nodes, per_node)
        raise PlanningError(
            f"spec.distributed: {nodes} node(s) x {per_node} {unit}(s) with "
            f"{candidates[-1].value} needs {est.peak_gib:.1f} GiB per {unit}, more than "
            f"{card}; add GPUs, use quantization.mode nf4, or shorten dataset.maxSeqLength"
        )
    if on_cpu:
        strategy = Strategy.ddp if dist.strategy == Strategy.auto else dist.strategy
        est = fits(strategy, 1, 1)
        why = (
            f"CPU placement: 1 training process with {strategy.value}; about "
            f"{est.peak_gib:.1f} GiB of host memory at peak."
        )
        return strategy, 1, 1, est, why
    smallest: MemoryEstimate | None = None
    for nodes, per_node in _placements(max_per_node):
        for strategy in _strategies(dist.strategy, nodes * per_node):
            est = fits(strategy, nodes, per_node)
            smallest = smallest or est
            if est.peak_gib <= usable:
                return (
                    strategy,
                    nodes,
                    per_node,
                    est,
                    _reason_auto(strategy, nodes, per_node, est, card, smallest),
                )
    need = smallest.peak_gib if smallest else float("nan")
    raise PlanningError(
        f"spec.resources.gpuType: this job does not fit on any placement of {card} up to "
        f"{MAX_NODES} nodes x {max_per_node} GPUs (one GPU would need {need:.1f} GiB); use "
        "quantization.mode nf4, distributed.offload cpu, a shorter dataset.maxSeqLength or a "
        "larger GPU"
    )


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
    single: MemoryEstimate,
) -> str:
    peak = f"{est.peak_gib:.1f} GiB per GPU fits {card}"
    if nodes * per_node == 1:
        return f"A full replica fits one GPU: {peak}."
    if strategy == Strategy.ddp:
        return f"{peak} with plain data parallelism on {per_node} GPUs."
    where = f"{per_node} GPUs" if nodes == 1 else f"{nodes} nodes x {per_node} GPUs"
    return (
        f"One GPU would need {single.peak_gib:.1f} GiB, so {strategy.value} shards the weights "
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
