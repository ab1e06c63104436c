"""Size the vLLM server that serves a finished adapter, from the same architecture counts as the
training plan: GPU type, tensor-parallel size, vLLM's memory flags, and the pod's requests.

Per GPU, with `tp` the tensor-parallel size (vLLM shards weights and KV heads over it):
- `weights`: quantizable linears at 2 / 1 / 0.5 bytes (16 / 8 / 4-bit, by
  spec.serving.quantization: none / int8 / nf4; 8-bit adds one fp32
  scale per row, 4-bit one fp32 absmax per 64 weights) + the rest (embeddings, norms, lm_head)
  in 16-bit, over `tp`.
- `kv_cache`: 2 (K and V) x layers x kv heads on this GPU (max(1, kv_heads / tp): vLLM
  replicates a KV head when tp exceeds them) x head_dim x 2 bytes x maxModelLen x maxConcurrency.
- `lora_slots`: vLLM preallocates `--max-loras` slots of every LoRA-capable linear at
  `--max-lora-rank` in the model dtype, whatever the adapter targets, so the slots are
  all-linear at the vLLM rank (the training estimate's exact count); not divided by tp (vLLM
  shards only one of each A/B pair unless --fully-sharded-loras): an upper bound.
- `activations`: the profile run's forward over PREFILL_TOKENS tokens (hidden states and the
  MLP's inner width, twice each, 16-bit) + the sampler's fp32 logits and probabilities for
  maxConcurrency rows.
- `cuda_graphs`, `runtime_other`, `cuda_context`: constants below, with their sources.

vLLM takes `--gpu-memory-utilization` of the card and fills what the other terms leave with KV
blocks; the plan sets it to cover the sum (at least vLLM's default 0.90, at most
MAX_UTILIZATION), so the configured concurrency at the full context always fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lora_contract.types import (
    CPU_GPU_TYPE,
    VLLM_LORA_RANKS,
    LoRAJobSpec,
    QuantizationMode,
    ResourceAmounts,
    ServingPlanStatus,
)

from ..api.operator_config import GpuType
from .architecture import Architecture
from .catalog import GpuCatalog
from .errors import PlanningError
from .estimate import GIB, lora_param_count

# Defaults of spec.serving (types.ServingSpec documents them).
DEFAULT_CONTEXT_CAP = 8192  # maxModelLen default: min(max_position_embeddings, 8192)
SERVING_DTYPE_BYTES = 2  # vLLM's dtype "auto" serves fp32 checkpoints in 16-bit too
KV_BYTES = 2  # --kv-cache-dtype auto: the model dtype
WEIGHT_BYTES = {16: 2.0, 8: 1.0, 4: 0.5}
NF4_BLOCK = 64
# spec.serving.quantization -> the served weights' bits and vLLM's flags. vLLM quantizes a
# 16-bit checkpoint in flight with bitsandbytes to 4-bit only (int8 is refused by the contract,
# vllm-project/vllm#11655). vLLM 0.6's bnb page also sets `--load-format bitsandbytes`, 0.8's
# only `--quantization`; later versions still accept both (vllm-project/vllm#29896, 2025).
SERVED_BITS = {QuantizationMode.none: 16, QuantizationMode.int8: 8, QuantizationMode.nf4: 4}
BNB_FLAGS = ("--quantization=bitsandbytes", "--load-format=bitsandbytes")

# vLLM V1 profiles one forward of max_num_batched_tokens; 8192 is its default on the large
# cards (2048 elsewhere), taken for all as the upper bound.
PREFILL_TOKENS = 8192
# CUDA graph capture: kvplan (pypi.org/project/kvplan) estimates 0.25 GiB for Llama-3.1-8B on an
# L4, vLLM's startup log reports ~0.3-1 GiB ("Graph capturing finished ... took X GiB"): 0.5.
CUDA_GRAPHS_GIB = 0.5
# torch.compile and other non-torch memory: kvplan's "other" (0.25) + "torch.compile" (0.11),
# rounded up.
RUNTIME_OTHER_GIB = 0.4
CUDA_CONTEXT_GIB = 0.5  # the training estimate's Assumptions.cuda_context_gib
VLLM_DEFAULT_UTILIZATION = 0.90
MAX_UTILIZATION = 0.95  # the rest of the card for the driver and a second process's context

# Host side of the predictor pod (one pod, `tp` GPU workers).
HOST_BASE_GIB = 4.0  # API server, tokenizer, Python and CUDA host side
HOST_PER_WORKER_GIB = 2.0  # each GPU worker process (vLLM spawns one per GPU)
SHARD_GIB = 5.0  # safetensors shards load one at a time (the training pods' rule)
CPUS_BASE = 2  # API server + tokenizer
CPUS_PER_WORKER = 2  # each GPU worker's busy loop + NCCL's proxy thread
CPU_SERVING_CPUS = 4


@dataclass(frozen=True)
class ServingKnobs:
    """spec.serving's sizing knobs with their defaults filled in."""

    max_model_len: int
    max_concurrency: int
    max_loras: int
    lora_rank: int  # the vLLM --max-lora-rank the trained rank needs
    weight_bits: int = 16


def quantization_flags(mode: QuantizationMode) -> tuple[str, ...]:
    """vLLM's flags for serving the base weights at `mode` (none: 16-bit, no flag)."""
    return () if mode is QuantizationMode.none else BNB_FLAGS


def kv_bytes_per_token(arch: Architecture, tp: int = 1) -> int:
    """KV cache bytes one token takes on one GPU."""
    kv_heads = max(1, arch.num_kv_heads // tp)
    return 2 * arch.num_layers * kv_heads * arch.head_dim * KV_BYTES


def weight_bytes(arch: Architecture, bits: int) -> float:
    """Base weights of the whole model at `bits` (unquantized parts in 16-bit)."""
    if bits not in WEIGHT_BYTES:
        raise PlanningError(f"serving weights: {bits}-bit is not one of 16, 8, 4")
    q = arch.quantizable_params
    if bits == 16:
        return arch.total_params * SERVING_DTYPE_BYTES
    scales = arch.quantizable_rows * 4.0 if bits == 8 else q / NF4_BLOCK * 4.0
    return q * WEIGHT_BYTES[bits] + scales + arch.unquantized_params * SERVING_DTYPE_BYTES


def vllm_rank(r: int) -> int:
    """Smallest vLLM-supported --max-lora-rank >= r."""
    for rank in VLLM_LORA_RANKS:
        if r <= rank:
            return rank
    raise PlanningError(f"spec.lora.r: {r} is above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def knobs_for(spec: LoRAJobSpec, arch: Architecture) -> ServingKnobs:
    """The sizing knobs of `spec.serving`, defaults filled, checked against the model."""
    serving = spec.serving
    limit = arch.max_position_embeddings
    max_len = serving.max_model_len or min(limit or DEFAULT_CONTEXT_CAP, DEFAULT_CONTEXT_CAP)
    if limit and max_len > limit:
        raise PlanningError(
            f"spec.serving.maxModelLen: {max_len} is above the model's "
            f"max_position_embeddings {limit}"
        )
    return ServingKnobs(
        max_model_len=max_len,
        max_concurrency=serving.max_concurrency,
        max_loras=serving.max_loras,
        lora_rank=vllm_rank(spec.lora.r),
        weight_bits=SERVED_BITS[serving.quantization],
    )


def memory_terms(arch: Architecture, knobs: ServingKnobs, tp: int) -> dict[str, float]:
    """Per-GPU bytes of each term (module docstring), in GiB."""
    tokens = knobs.max_model_len * knobs.max_concurrency
    slots = lora_param_count(arch, ("all-linear",), knobs.lora_rank, dora=False)
    activations = PREFILL_TOKENS * (2 * arch.hidden_size + 2 * arch.intermediate_size // tp) * 2
    sampler = knobs.max_concurrency * arch.vocab_size * 8
    return {
        "weights": weight_bytes(arch, knobs.weight_bits) / tp / GIB,
        "kv_cache": kv_bytes_per_token(arch, tp) * tokens / GIB,
        "lora_slots": knobs.max_loras * slots * SERVING_DTYPE_BYTES / GIB,
        "activations": (activations + sampler) / GIB,
        "cuda_graphs": CUDA_GRAPHS_GIB,
        "runtime_other": RUNTIME_OTHER_GIB,
        "cuda_context": CUDA_CONTEXT_GIB,
    }


def cpu_terms(arch: Architecture, knobs: ServingKnobs) -> dict[str, float]:
    """On CPU the same tensors live in host memory; no CUDA graphs or context."""
    gpu_only = ("cuda_graphs", "runtime_other", "cuda_context")
    return {k: v for k, v in memory_terms(arch, knobs, 1).items() if k not in gpu_only}


def tensor_parallel_sizes(arch: Architecture, gpu: GpuType) -> list[int]:
    """Powers of two up to one node of `gpu` that vLLM accepts: dividing the attention heads,
    and dividing the KV heads or divided by them (a KV head is then replicated)."""
    sizes = []
    tp = 1
    while tp <= gpu.max_per_node:
        kv = arch.num_kv_heads
        if arch.num_heads % tp == 0 and (kv % tp == 0 or tp % kv == 0):
            sizes.append(tp)
        tp *= 2
    return sizes


@dataclass(frozen=True)
class ServingFit:
    gpu: GpuType
    tp: int
    terms: dict[str, float]

    @property
    def need_gib(self) -> float:
        return sum(self.terms.values())

    @property
    def utilization(self) -> float:
        """vLLM's share of the card: the terms' sum, at least vLLM's default."""
        needed = math.ceil(self.need_gib / self.gpu.memory_gib * 100) / 100
        return max(VLLM_DEFAULT_UTILIZATION, needed)


def smallest_fit(arch: Architecture, knobs: ServingKnobs, gpu: GpuType) -> ServingFit | None:
    """The smallest tensor-parallel size of `gpu` the server fits on (None: none)."""
    for tp in tensor_parallel_sizes(arch, gpu):
        fit = ServingFit(gpu, tp, memory_terms(arch, knobs, tp))
        if fit.need_gib <= gpu.memory_gib * MAX_UTILIZATION:
            return fit
    return None


def _cost(fit: ServingFit) -> tuple[float, float, str]:
    """Priced types by price x GPUs first, then by GPU memory bought (tp x card)."""
    price = fit.gpu.price_per_gpu_hour
    return (
        math.inf if price is None else price * fit.tp,
        fit.tp * fit.gpu.memory_gib,
        fit.gpu.name,
    )


def choose_fit(
    spec: LoRAJobSpec, arch: Architecture, knobs: ServingKnobs, catalog: GpuCatalog
) -> ServingFit:
    """spec.serving.gpuType if set; else the training's type if it fits; else the cheapest."""
    if spec.serving.gpu_type:
        gpu = catalog.get(spec.serving.gpu_type)
        fit = smallest_fit(arch, knobs, gpu)
        if fit is None:
            raise PlanningError(_refusal(arch, knobs, [gpu], "spec.serving.gpuType"))
        return fit
    training = catalog.get(spec.resources.gpu_type)
    if not GpuCatalog.is_cpu(training):
        fit = smallest_fit(arch, knobs, training)
        if fit is not None:
            return fit
    gpus = [g for g in catalog.entries.values() if not GpuCatalog.is_cpu(g)]
    fits = [f for f in (smallest_fit(arch, knobs, g) for g in gpus) if f is not None]
    if not fits:
        raise PlanningError(_refusal(arch, knobs, gpus, "spec.serving"))
    return min(fits, key=_cost)


def _refusal(arch: Architecture, knobs: ServingKnobs, gpus: list[GpuType], field: str) -> str:
    one = kv_bytes_per_token(arch) * knobs.max_model_len / GIB
    names = ", ".join(g.name for g in gpus)
    return (
        f"{field}: the vLLM server does not fit {names} at any tensor-parallel size of one "
        f"node: weights {weight_bytes(arch, knobs.weight_bits) / GIB:.1f} GiB, KV cache "
        f"{one:.2f} GiB per sequence of maxModelLen {knobs.max_model_len} x maxConcurrency "
        f"{knobs.max_concurrency}; lower spec.serving.maxModelLen or maxConcurrency, or name "
        "a larger spec.serving.gpuType"
    )


def _quantity_gi(gib: float) -> str:
    return f"{math.ceil(gib)}Gi"  # at least HOST_BASE_GIB


def host_resources(
    arch: Architecture, knobs: ServingKnobs, adapter_params: int, tp: int, on_cpu: bool
) -> tuple[ResourceAmounts, ResourceAmounts]:
    """Predictor pod: CPU by the rule above; host memory for one weights shard while loading,
    the worker processes and the CPU-cached adapters (on CPU: the whole model and KV too)."""
    cpu_loras = 2 * knobs.max_loras * adapter_params * SERVING_DTYPE_BYTES / GIB
    if on_cpu:
        memory = HOST_BASE_GIB + sum(cpu_terms(arch, knobs).values()) + cpu_loras
        cpu = CPU_SERVING_CPUS
    else:
        shard = min(SHARD_GIB, weight_bytes(arch, knobs.weight_bits) / GIB)
        memory = HOST_BASE_GIB + HOST_PER_WORKER_GIB * tp + shard + cpu_loras
        cpu = CPUS_BASE + CPUS_PER_WORKER * tp
    requests = ResourceAmounts(cpu=str(cpu), memory=_quantity_gi(memory))
    return requests, ResourceAmounts(memory=requests.memory)


def plan_serving(
    spec: LoRAJobSpec, arch: Architecture, catalog: GpuCatalog | None = None
) -> ServingPlanStatus:
    """The serving plan of `spec` (raises PlanningError naming the field when nothing fits)."""
    catalog = catalog or GpuCatalog.default()
    knobs = knobs_for(spec, arch)
    adapter = lora_param_count(arch, tuple(spec.lora.target_modules), spec.lora.r, dora=False)
    serve_on = spec.serving.gpu_type or spec.resources.gpu_type
    on_cpu = GpuCatalog.is_cpu(catalog.get(serve_on))
    flags = [
        f"--max-model-len={knobs.max_model_len}",
        f"--max-num-seqs={knobs.max_concurrency}",
        f"--max-loras={knobs.max_loras}",
        f"--max-cpu-loras={2 * knobs.max_loras}",
    ]
    if on_cpu and knobs.weight_bits != 16:  # a catalog type without a GPU resource
        raise PlanningError(
            f"spec.serving.quantization: {spec.serving.quantization.value} needs a CUDA GPU "
            f"(bitsandbytes); {serve_on} has none"
        )
    if on_cpu:
        requests, limits = host_resources(arch, knobs, adapter, 1, on_cpu=True)
        terms = cpu_terms(arch, knobs)
        return ServingPlanStatus(
            gpu_type=CPU_GPU_TYPE,
            gpus=0,
            tensor_parallel_size=1,
            memory_gib={k: round(v, 3) for k, v in terms.items()},
            vllm_args=flags,
            requests=requests,
            limits=limits,
            reason="served on CPU, like the training (no accelerator flags)",
        )
    fit = choose_fit(spec, arch, knobs, catalog)
    requests, limits = host_resources(arch, knobs, adapter, fit.tp, on_cpu=False)
    flags += [
        f"--tensor-parallel-size={fit.tp}",
        f"--gpu-memory-utilization={fit.utilization:.2f}",
        *quantization_flags(spec.serving.quantization),
    ]
    return ServingPlanStatus(
        gpu_type=fit.gpu.name,
        gpu_memory_gib=fit.gpu.memory_gib,
        gpus=fit.tp,
        tensor_parallel_size=fit.tp,
        resource_name=fit.gpu.resource_name,
        node_selector=dict(fit.gpu.node_selector),
        memory_gib={k: round(v, 3) for k, v in fit.terms.items()},
        per_gpu_gib=round(fit.need_gib, 2),
        gpu_memory_utilization=fit.utilization,
        vllm_args=flags,
        requests=requests,
        limits=limits,
        reason=(
            f"{fit.tp} x {fit.gpu.name}: {fit.need_gib:.1f} GiB per GPU for "
            f"{knobs.max_concurrency} sequences of {knobs.max_model_len} tokens"
        ),
    )
