"""How long a LoRA job will train and what it costs: tokens x FLOPs per token over the GPUs'
catalog peak x efficiency. Pure arithmetic on the spec, the architecture and the placement.

Tokens. Training tokens = rows x mean tokens per row x epochs, where rows and the mean come
from the dataset when `lorajob plan` can read it (memory/dataset_stats.py), else
`dataset.numExamples` x `dataset.maxSeqLength` (an upper bound: rows are cut there, not padded
to it). `training.maxSteps` overrides epochs, as it does in the trainer: maxSteps x global batch
(micro x accumulation x ranks) x tokens per row. Held-out eval rows are not trained on; each
evaluation (every `evalInterval` steps) is one forward pass over them.

FLOPs per token (N = parameters a token multiplies with: every decoder linear, the experts a
token is routed to, and lm_head; embeddings are a lookup):
- Full fine-tuning costs 6N: forward 2N (one multiply-add per weight), backward 4N (gradients
  of the activations 2N and of the weights 2N) -- Kaplan et al. 2020, "Scaling Laws for Neural
  Language Models", section 2.1; Hoffmann et al. 2022 (Chinchilla), appendix F.
- LoRA freezes the base, so no weight gradients are computed for it: forward 2N + backward 2N
  = 4N. The adapters (A = r x (in + out) per adapted matrix) cost 2A forward and 4A backward.
- Gradient checkpointing (HF: per decoder layer) runs each layer's forward again in backward:
  + 2 N_layers (lm_head is outside the checkpointed layers), hence ~6N with recomputation.
- Attention scores are not weights: per layer and token, QK^T and AV cost 2 x 2 x heads x
  head_dim x context, and with a causal mask the mean context is half the sequence, so
  forward = 2 x layers x heads x head_dim x seq (the 12·L·H·Q·T of PaLM's appendix B, halved
  for causality and split 1:2 between forward and backward); recomputed under checkpointing.

Wall time = FLOPs / (GPUs x peak x efficiency). `efficiency` counts the recomputed FLOPs as
useful (hardware FLOPs utilisation), so one catalog number serves both checkpointing settings.
QLoRA adds the dequantisation of its 4-bit weights, a cost per weight and micro-batch (below);
LLM.int8 and multi-node rings scale the efficiency down by the factors below; a micro batch the
plan made smaller than the spec's runs smaller matmuls (memory/fit.py, micro_batch_efficiency).
ZeRO-3 adds the time its all-gathers of the sharded base weights take per micro-batch (forward,
recompute, backward), counted as not hidden behind compute: an upper bound, so the planner never
scales out on an optimistic guess. GPU-hours = hours x GPUs; cost = GPU-hours x the catalog's
`pricePerGpuHour` (none when unset).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from lora_contract.timestamps import parse_iso
from lora_contract.types import (
    ForecastStatus,
    LoRAJobSpec,
    PlanStatus,
    Progress,
    QuantizationMode,
    RunForecast,
    RunRecord,
    Strategy,
    TrainingMethod,
)

from ..api.operator_config import GpuType
from . import dpo
from .architecture import Architecture, LinearModule
from .estimate import targeted_linears
from .fit import ACTIVATION_OFFLOADING_COST, micro_batch_slowdown

# bitsandbytes dequantises every NF4 weight to 16-bit before each matmul, once per pass
# (forward, recompute, backward) per micro-batch, whatever the sequence length: a cost per
# weight, not per token. Fitted to Qwen's single-A100 profile (QwenLM/Qwen README, "Profiling
# of Memory and Speed", Qwen-7B, batch 1 x 8): Q-LoRA minus LoRA time is ~1.4 s per step at
# every length from 256 to 8192 tokens (1.8, 1.5, 0.7, 1.8, 1.5, 1.0 s), i.e. ~0.175 s per
# micro-batch for 6.5e9 weights x 3 passes; expressed in the GPU's FLOPs at the catalog
# efficiency (0.175 s x 312 TFLOP/s x 0.40 / 1.95e10) it is ~1,100 FLOPs per weight per pass.
NF4_DEQUANT_FLOPS_PER_WEIGHT = 1100.0
# LLM.int8 splits outliers into a second fp16 matmul; no published LoRA figure at hand.
INT8_THROUGHPUT = 0.5
# Same profile: LoRA on 2 nodes x 2 A100 reached 1,770 tokens/s per GPU at 2048 tokens
# (9.25 s/it for 4 x 8 x 2048) against 3,150 on one GPU.
MULTI_NODE_THROUGHPUT = 0.56
SECONDS_PER_HOUR = 3600.0
# ZeRO-3 all-gather bandwidth, GB/s. Within a node, per GPU: PCIe 4.0 x16 in practice (~25 of
# 32 GB/s), the slowest link a catalog card ships with (NVLink cards gather faster: calibrate).
# Between nodes, per node: one 100 Gb/s NIC (12.5 GB/s), a common floor. A ring all-gather
# moves (g - 1) / g of the weights into each GPU over its own link, and (n - 1) / n of them into
# each node over its NICs; the slower of the two sets the pace.
ZERO3_GATHER_GBPS_IN_NODE = 25.0
ZERO3_GATHER_GBPS_BETWEEN_NODES = 12.5


@dataclass(frozen=True)
class DatasetStats:
    """What reading the dataset told: rows and mean tokens per row (after the cut)."""

    rows: int
    mean_tokens: float
    source: str = "counted"  # how the tokens were counted


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs of one token, by pass."""

    forward: float
    backward: float
    recompute: float

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.recompute


@dataclass(frozen=True)
class Forecast:
    tokens: int
    tokens_from: str
    flops_per_token: FlopsPerToken
    eval_flops: float
    peak_tflops: float
    efficiency: float  # the catalog's, what `lorajob calibrate` refits
    gpus: int
    gpu_type: str
    price_per_gpu_hour: float | None
    throughput_factor: float = 1.0  # LLM.int8 matmuls, multi-node traffic
    dequant_flops: float = 0.0  # NF4 dequantisation, in FLOP-equivalents
    assumptions: list[str] = field(default_factory=list)
    gather_seconds: float = 0.0  # ZeRO-3 weight all-gathers per rank, not hidden by compute

    @property
    def total_flops(self) -> float:
        return self.tokens * self.flops_per_token.total + self.eval_flops + self.dequant_flops

    @property
    def hours(self) -> float:
        achieved = self.efficiency * self.throughput_factor
        per_second = self.gpus * self.peak_tflops * 1e12 * achieved
        return (self.total_flops / per_second + self.gather_seconds) / SECONDS_PER_HOUR

    @property
    def gpu_hours(self) -> float:
        return self.hours * self.gpus

    @property
    def cost(self) -> float | None:
        if self.price_per_gpu_hour is None:
            return None
        return self.gpu_hours * self.price_per_gpu_hour

    def to_status(self) -> ForecastStatus:
        cost = self.cost
        return ForecastStatus(
            tokens=self.tokens,
            tokens_from=self.tokens_from,
            flops_per_token=float(f"{self.flops_per_token.total:.4g}"),
            total_flops=float(f"{self.total_flops:.4g}"),
            peak_tflops=self.peak_tflops,
            efficiency=round(self.efficiency, 4),
            hours=float(f"{self.hours:.4g}"),
            gpu_hours=float(f"{self.gpu_hours:.4g}"),
            cost=None if cost is None else round(cost, 2),
            assumptions=list(self.assumptions),
        )


def base_matmul_params(arch: Architecture) -> tuple[float, float]:
    """(decoder-layer params a token multiplies with, lm_head params). Experts count k/E."""
    routed = arch.experts_per_token / arch.num_experts if arch.num_experts else 1.0
    expert_aliases = {"w1", "w2", "w3"}  # halves of fused expert weights, counted once already
    experts = sum(
        m.params for m in arch.linears if m.copies > 1 and m.short_name not in expert_aliases
    )
    layers = arch.quantizable_params - experts + experts * routed
    head = arch.head.params if arch.head is not None else arch.vocab_size * arch.hidden_size
    return float(layers), float(head)


def adapter_flops(arch: Architecture, modules: list[LinearModule], rank: int) -> float:
    """Forward FLOPs of the adapters per token: 2 x r x (in + out) per adapted matrix."""
    routed = arch.experts_per_token / arch.num_experts if arch.num_experts else 1.0
    total = 0.0
    for m in modules:
        share = m.copies * routed if m.copies > 1 else 1.0
        total += 2.0 * rank * (m.in_features + m.out_features) * share
    return total


def flops_per_token(
    arch: Architecture,
    targets: tuple[str, ...],
    rank: int,
    context: float,
    checkpointing: bool,
) -> FlopsPerToken:
    """Training FLOPs of one token at mean attention context `context` (module docstring)."""
    layers, head = base_matmul_params(arch)
    adapted = targeted_linears(arch, targets)
    head_name = arch.head.name if arch.head is not None else None
    head_adapter = adapter_flops(arch, [m for m in adapted if m.name == head_name], rank)
    layer_adapter = adapter_flops(arch, [m for m in adapted if m.name != head_name], rank)
    attention = 2.0 * arch.num_layers * arch.num_heads * arch.head_dim * context
    layer_forward = 2.0 * layers + layer_adapter + attention
    forward = layer_forward + 2.0 * head + head_adapter
    backward = 2.0 * (layers + head) + 2.0 * (layer_adapter + head_adapter) + 2.0 * attention
    return FlopsPerToken(
        forward=forward, backward=backward, recompute=layer_forward if checkpointing else 0.0
    )


def _throughput_factor(
    spec: LoRAJobSpec, nodes: int, written_micro_batch: int | None
) -> tuple[float, list[str]]:
    factor, notes = 1.0, []
    micro, seq = spec.training.micro_batch_size, spec.dataset.max_seq_length
    if written_micro_batch is not None and written_micro_batch != micro:
        slower = 1 / micro_batch_slowdown(seq, written_micro_batch, micro)
        if slower < 1.0:
            factor *= slower
            notes.append(
                f"micro batch {micro} instead of {written_micro_batch}: x{slower:.2f} for "
                f"smaller matmuls ({micro * seq:,} tokens per micro-batch)"
            )
    if spec.quantization.mode == QuantizationMode.int8:
        factor *= INT8_THROUGHPUT
        notes.append(f"int8: x{INT8_THROUGHPUT} for LLM.int8's outlier matmuls (assumed)")
    if spec.training.activation_offloading:
        factor /= ACTIVATION_OFFLOADING_COST
        notes.append(
            f"activation offloading: x{1 / ACTIVATION_OFFLOADING_COST:.2f} for host copies not "
            "hidden behind compute (assumed, the same guess the fit search orders by)"
        )
    if nodes > 1:
        factor *= MULTI_NODE_THROUGHPUT
        notes.append(f"{nodes} nodes: x{MULTI_NODE_THROUGHPUT} for gradient traffic between nodes")
    return factor, notes


def zero3_gather_seconds(
    weight_bytes: float, nodes: int, per_node: int, passes: int, micro_batches_per_rank: float
) -> float:
    """Seconds one rank spends gathering the other ranks' shards of the base weights: every
    pass of every micro-batch all-gathers them (bandwidths above)."""
    ranks = nodes * per_node
    if ranks <= 1:
        return 0.0
    in_node = weight_bytes * (per_node - 1) / per_node / (ZERO3_GATHER_GBPS_IN_NODE * 1e9)
    between = weight_bytes * (nodes - 1) / nodes / (ZERO3_GATHER_GBPS_BETWEEN_NODES * 1e9)
    return max(in_node, between) * passes * micro_batches_per_rank


def forecast_job(
    spec: LoRAJobSpec,
    arch: Architecture,
    gpu: GpuType,
    nodes: int,
    gpus_per_node: int,
    dataset: DatasetStats | None = None,
    *,
    strategy: Strategy = Strategy.ddp,
    weight_bytes: float = 0.0,
    written_micro_batch: int | None = None,
) -> Forecast | None:
    """The forecast of a placed job; None when the catalog has no peak for the GPU type or
    nothing says how much data there is (no readable dataset, numExamples or maxSteps).
    `spec` is what the trainer runs (per-rank micro batch and accumulation); under ZeRO-3,
    `weight_bytes` (the unsharded base weights) are gathered every pass;
    `written_micro_batch`: the spec's own, when the plan made it smaller."""
    if gpu.peak_tflops is None:
        return None
    ds, training = spec.dataset, spec.training
    ranks = nodes * gpus_per_node
    held_out = 0.0 if ds.eval_source is not None else ds.eval_split
    if dataset is not None:
        rows, mean_tokens = dataset.rows, dataset.mean_tokens
        row_tokens = f"{mean_tokens:.0f} tokens/row ({dataset.source})"
        source = f"dataset: {rows:,} rows x {row_tokens}"
    elif ds.num_examples is not None:
        rows, mean_tokens = ds.num_examples, float(ds.max_seq_length)
        source, row_tokens = "numExamples x maxSeqLength", "maxSeqLength"
    elif training.max_steps is not None:
        rows, mean_tokens, source, row_tokens = 0, float(ds.max_seq_length), "", "maxSeqLength"
    else:
        return None
    sequence_tokens = mean_tokens  # attention's context: one sequence
    preference = spec.method == TrainingMethod.dpo
    if preference:  # a pair is two sequences (chosen, rejected) in the same micro-batch
        mean_tokens *= dpo.SEQUENCES_PER_PAIR
    train_rows = rows * (1.0 - held_out)
    per_step_rows = training.micro_batch_size * training.gradient_accumulation * ranks
    if training.max_steps is not None:  # overrides epochs, as in the trainer
        steps = float(training.max_steps)
        tokens = steps * per_step_rows * mean_tokens
        source = f"maxSteps x {per_step_rows} rows per step x {row_tokens}"
    else:
        tokens = train_rows * mean_tokens * training.epochs
        steps = max(1.0, train_rows * training.epochs / per_step_rows)
        source = f"{source} x {training.epochs:g} epoch(s)"
    context = float(ds.max_seq_length) if ds.packing else sequence_tokens
    per_token = flops_per_token(
        arch,
        tuple(spec.lora.target_modules),
        spec.lora.r,
        context,
        spec.training.gradient_checkpointing,
    )
    if preference:  # the reference forward (frozen ref adapter) on every pass, train and eval
        per_token = replace(per_token, forward=2 * per_token.forward)
    eval_rows = rows * held_out if ds.eval_source is None else 0.0
    evaluations = int(steps // training.eval_interval)
    eval_flops = evaluations * eval_rows * mean_tokens * per_token.forward
    factor, notes = _throughput_factor(spec, nodes, written_micro_batch)
    dequant = 0.0
    if spec.quantization.mode == QuantizationMode.nf4:
        passes = 3 if training.gradient_checkpointing else 2
        micro_batches = tokens / mean_tokens / training.micro_batch_size
        eval_batches = evaluations * eval_rows / training.micro_batch_size
        per_pass = arch.quantizable_params * NF4_DEQUANT_FLOPS_PER_WEIGHT
        dequant = (micro_batches * passes + eval_batches) * per_pass
        notes.append(
            f"nf4: dequantising the base weights, ~{NF4_DEQUANT_FLOPS_PER_WEIGHT:g} FLOPs per "
            "weight per pass and micro-batch"
        )
    gather = 0.0
    if strategy == Strategy.deepspeed_zero3 and weight_bytes > 0:
        passes = 3 if training.gradient_checkpointing else 2
        per_rank = tokens / mean_tokens / training.micro_batch_size / ranks
        gather = zero3_gather_seconds(weight_bytes, nodes, gpus_per_node, passes, per_rank)
        if gather > 0:
            notes.append(
                f"deepspeed-zero3: {gather / SECONDS_PER_HOUR:.3g} h per rank gathering "
                f"{weight_bytes / 1e9:.3g} GB of sharded weights {passes} times per micro-batch, "
                "assumed not hidden behind compute"
            )
    assumptions = [
        f"{per_token.total / 1e9:.3g} GFLOP per token "
        f"({'with' if spec.training.gradient_checkpointing else 'without'} recomputation)",
        f"{gpu.peak_tflops:g} TFLOP/s peak x {gpu.efficiency:g} efficiency per "
        f"{'process' if not gpu.resource_name else 'GPU'}",
        *notes,
        "excludes pod start, model download and loading",
    ]
    if ds.eval_source is not None:
        assumptions.append("evaluation on dataset.evalSource not counted (its size is unknown)")
    if spec.lora.use_dora:
        assumptions.append("DoRA's weight-norm work per step not counted (calibrate)")
    if preference:
        assumptions.append(
            "dpo: chosen + rejected per row, and a reference forward (frozen ref adapter) per token"
        )
    return Forecast(
        tokens=int(tokens),
        tokens_from=source,
        flops_per_token=per_token,
        eval_flops=eval_flops,
        peak_tflops=gpu.peak_tflops,
        efficiency=gpu.efficiency,
        gpus=ranks,
        gpu_type=gpu.name,
        price_per_gpu_hour=gpu.price_per_gpu_hour,
        throughput_factor=factor,
        dequant_flops=dequant,
        assumptions=assumptions,
        gather_seconds=gather,
    )


def run_forecast(plan: PlanStatus) -> RunForecast | None:
    """The forecast frozen into a new run's record (the plan may change with the next run)."""
    if plan.forecast is None:
        return None
    return RunForecast(
        gpu_type=plan.gpu_type,
        gpus=plan.total_gpus,
        efficiency=plan.forecast.efficiency,
        hours=plan.forecast.hours,
        gpu_hours=plan.forecast.gpu_hours,
        cost=plan.forecast.cost,
    )


def completed_forecast(run: RunRecord, progress: Progress | None) -> RunForecast | None:
    """The run's forecast with its actual wall time, Job creation to completion."""
    started, finished = parse_iso(run.start_time), parse_iso(run.completion_time)
    if run.forecast is None or started is None or finished is None:
        return run.forecast
    done = progress.step / progress.total_steps if progress and progress.total_steps else 1.0
    return with_actual(run.forecast, finished - started, done)


def with_actual(record: RunForecast, seconds: float, done_fraction: float = 1.0) -> RunForecast:
    """`record` with the measured wall time; the ratio compares against the forecast of the
    steps actually done (a run stopped early by evaluation did less than planned)."""
    hours = seconds / SECONDS_PER_HOUR
    expected = record.hours * min(1.0, max(done_fraction, 0.0))
    return record.model_copy(
        update={
            "actual_hours": round(hours, 4),
            "actual_gpu_hours": round(hours * record.gpus, 4),
            "forecast_ratio": round(hours / expected, 3) if expected > 0 else None,
        }
    )
