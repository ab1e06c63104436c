"""Per-GPU peak memory of a LoRA/QLoRA training step, term by term, from the architecture only.

What "peak" means here: `peak_allocated` estimates torch's `max_memory_allocated` on one rank
(tensors alive at the worst moment of a step). `peak` adds what nvidia-smi also sees: the
allocator's cache/fragmentation (a fraction of allocated) and the CUDA context. Placement checks
`peak` against the card. Every constant is an explicit `Assumptions` field.

Term names (stable; they are the keys of `breakdown_gib`):
- `weights`: frozen base weights (16/32-bit, LLM.int8 + per-row scales, or NF4 + absmax) plus
  the embeddings, lm_head and norms in the compute dtype (the trainer does not upcast them under
  k-bit training); ZeRO-3 shards it.
- `zero3_gather`: the full parameters ZeRO-3 gathers at once: the current and the prefetched
  decoder layer, or lm_head's whole weight (16-bit even under k-bit quantization) while the
  loss runs on it (the trainer's chunked loss gathers it for the loss forward and again for
  its backward, `lora_trainer.gathered_head`; the stock loss's module hook gathers it too),
  whichever is larger; the rank's own shard stays counted in `weights`.
- `lora_weights`: adapter weights, fp32 as PEFT keeps them under autocast.
- `gradients`: adapter gradients (fp32); ZeRO-2/3 shard them.
- `optimizer`: optimizer states (AdamW 8 B, 8-bit Adam 2 B per trainable parameter); ZeRO-2/3
  shard them, CPU offload moves them to host memory.
- `activations`: tensors saved for backward (per-layer formula, gradient checkpointing aware).
  With `training.activationOffloading` the per-layer saved tensors (with checkpointing: the
  layer inputs) live in host memory, counted in `host_offload_gib`; the GPU keeps what the
  offloader keeps there (see `OFFLOAD_GPU_TENSORS`).
- `attention_scores`: eager attention's softmax (b*heads*s^2), absent with SDPA/flash.
- `lora_dropout`: what the adapters keep of their inputs for backward: with dropout, each target
  module's dropped-out copy and mask; without, lora_A's input itself where nothing else saves it.
- `logits`: the loss. Unchunked: b*s*vocab logits, their fp32 upcast and the loss gradient.
  Chunked (`training.chunkedLoss`, the default; under ZeRO-3 too unless lm_head is a LoRA
  target, `lora_trainer.loss.choose_loss_path`): the labelled hidden states
  kept for the recomputation plus one chunk's logits, upcast and gradient.
- `dora_magnitude`, `dora_activations`, `dora_transient` (0 without DoRA; `memory/dora.py`): the
  magnitude vectors' share of the adapter weights, gradients and optimizer states; what PEFT's
  DoRA forward saves beyond LoRA (base and adapter outputs, with dropout a weight copy); and its
  largest module's transient (the full B@A delta and weight norm, or the scaling products) as far
  as it exceeds the loss's buffers, which are not alive when it happens.
- `dpo_logprobs`, `dpo_reference`, `dpo_ref_adapter` (only with `method: dpo`; `memory/dpo.py`):
  the policy's terms above are taken at 2 x micro-batch (chosen and rejected in one forward) and
  `logits` is 0: TRL's fused log-prob head replaces it (`dpo_logprobs`), the reference forward
  (TRL's frozen `ref` copy of the starting adapter, no grad) adds what exceeds that head's
  backward buffers, and the `ref` copy's own weights (the adapter's parameters once more, in the
  adapter dtype, no gradients or optimizer states; ZeRO-3 shards them) are `dpo_ref_adapter`.
- `allocator_overhead`, `cuda_context`: not in max_memory_allocated, seen by nvidia-smi.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from lora_contract.types import Attention, ComputeDtype, Optimizer, QuantizationMode, Strategy

from . import dora, dpo
from .architecture import Architecture, LinearModule
from .errors import PlanningError

GIB = 1024**3
NF4_BLOCK = 64
NF4_DOUBLE_QUANT_BLOCK = 256
# Logit elements per chunk of the trainer's chunked loss (lora_trainer.loss.CHUNK_LOGIT_ELEMENTS;
# a test keeps the two equal).
LOSS_CHUNK_LOGIT_ELEMENTS = 2**25

# Activation offloading (lora_trainer.offload, TRL's OffloadActivations): the forward keeps its
# last `max_fwd_stash_size` (5) offloaded tensors on the GPU until their copies finish, backward
# brings back one tensor and prefetches the next. Counted as that many per-layer saved tensors:
# with checkpointing, five layer inputs; without, the layer in backward plus the next one's.
OFFLOAD_GPU_TENSORS = 5
OFFLOAD_GPU_LAYERS = 2

# Optimizer state bytes per trainable parameter; None = two moments in the adapter dtype.
OPTIMIZER_BYTES: dict[Optimizer, float | None] = {
    Optimizer.adamw_torch: None,
    Optimizer.paged_adamw_32bit: 8.0,
    Optimizer.adamw_8bit: 2.0,
    Optimizer.paged_adamw_8bit: 2.0,
}

# in the breakdown of a DPO shape only
DPO_TERMS = ("dpo_logprobs", "dpo_reference", "dpo_ref_adapter")
TERM_HELP: dict[str, str] = {
    "weights": "frozen base weights (quantized linears + 16-bit embeddings/norms/lm_head)",
    "zero3_gather": "what ZeRO-3 gathers at once: two decoder layers, or lm_head for the loss",
    "lora_weights": "LoRA adapter weights (fp32, as PEFT keeps them under autocast)",
    "gradients": "adapter gradients (fp32)",
    "optimizer": "optimizer states (AdamW: 2 fp32 moments; 8-bit: 2 bytes per parameter)",
    "activations": "saved for backward: checkpointed layer inputs + one layer's working set",
    "attention_scores": "eager attention's softmax scores, batch x heads x seq^2",
    "lora_dropout": "adapter inputs kept for backward (dropout copies, or the shared inputs)",
    "logits": "the loss: full batch x seq x vocab logits (fp32 + gradient), or one chunk of them",
    "dora_magnitude": "DoRA magnitude vectors: weights, gradients and optimizer states",
    "dora_activations": "DoRA's saved base/adapter outputs (and weight copies with dropout)",
    "dora_transient": "DoRA's largest module transient (B@A delta + weight norm) over the loss",
    "dpo_logprobs": "DPO: TRL's fused log-prob head on chosen + rejected (hidden states, tiles)",
    "dpo_reference": "DPO: the no-grad reference forward (ref adapter) over the log-prob backward",
    "dpo_ref_adapter": "DPO: TRL's frozen ref copy of the starting adapter (weights only, fp32)",
    "allocator_overhead": "PyTorch caching-allocator slack and fragmentation",
    "cuda_context": "CUDA context and kernels (seen by nvidia-smi, not by torch)",
}


@dataclass(frozen=True)
class Assumptions:
    """The knobs published measurements disagree on; defaults match HF Trainer + PEFT."""

    cuda_context_gib: float = 0.5
    allocator_overhead_fraction: float = 0.05
    adapter_bytes: float = 4.0  # PEFT keeps adapters, their grads and Adam moments in fp32
    # Bytes of the non-quantized parameters under k-bit training; None = the compute dtype (our
    # trainer); 4.0 = peft's prepare_model_for_kbit_training, which upcasts them to fp32.
    kbit_upcast_bytes: float | None = None
    logits_bytes_per_element: float = 12.0  # bf16 logits + fp32 copy + fp32 log-softmax + grad
    norm_bytes_per_element: float = 4.0  # RMSNorm upcasts its input to fp32 and saves it
    zero3_prefetch_layers: float = 2.0  # ZeRO-3 holds the current and the prefetched layer
    # True when the trainer runs every activation as one kernel (LitGPT's F.gelu); HF runs
    # `gelu_new`/`gelu_fast` as Python expressions that save several intermediates.
    fused_activations: bool = False
    # bitsandbytes before 0.43.2 kept every 4-bit linear's input for backward (MatMul4Bit's
    # `ctx.tensors = (A, B)`, dropped by bitsandbytes#1270), frozen or not; 0.50 keeps none.
    kbit_saves_input: bool = False
    # False: the adapters run outside autocast (PEFT's MetaMathQA runs, use_amp=False), so their
    # matmuls save and return the adapter dtype. Read by the DoRA terms only (memory/dora.py).
    adapter_autocast: bool = True


# Tensors an activation function saves for backward, per element of its input: one (its input)
# for a fused kernel; HF's Python GELUs save input, tanh(...), 0.5*x and 1+tanh(...).
COMPOSITE_ACTIVATION_SAVES = {"gelu_new": 4, "gelu_fast": 4, "quick_gelu": 2}


def mlp_saved_widths(arch: Architecture, assumptions: Assumptions) -> int:
    """MLP-wide tensors one layer saves for backward (frozen linears save no input): the
    activation's own saves, plus act(gate) and up for the product of a gated MLP."""
    act = 1 if assumptions.fused_activations else COMPOSITE_ACTIVATION_SAVES.get(arch.hidden_act, 1)
    return act + (2 if arch.mlp_gated else 0)


@dataclass(frozen=True)
class TrainingShape:
    """Everything about a job that moves per-GPU memory, resolved from the spec + placement."""

    quantization: QuantizationMode = QuantizationMode.none
    double_quant: bool = True
    compute_dtype: ComputeDtype = ComputeDtype.bf16
    rank: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    dropout: float = 0.05
    use_dora: bool = False
    seq_len: int = 2048
    micro_batch: int = 1
    gradient_checkpointing: bool = True
    attention: Attention = Attention.sdpa
    optimizer: Optimizer = Optimizer.adamw_torch
    strategy: Strategy = Strategy.ddp
    data_parallel: int = 1  # ranks that ZeRO shards across
    offload_cpu: bool = False
    chunked_loss: bool = False  # training.chunkedLoss: the trainer's chunked/fused loss
    activation_offloading: bool = False  # training.activationOffloading: saved tensors on host
    preference: bool = False  # method dpo: chosen + rejected per example (memory/dpo.py)


@dataclass(frozen=True)
class MemoryEstimate:
    breakdown_gib: dict[str, float]
    peak_allocated_gib: float
    peak_gib: float  # + allocator overhead + CUDA context: what must fit on the card
    total_params: int
    trainable_params: int
    host_offload_gib: float  # optimizer states / params / activations in CPU RAM, per rank
    notes: list[str] = field(default_factory=list)


def dtype_bytes(dtype: ComputeDtype) -> float:
    return 4.0 if dtype == ComputeDtype.fp32 else 2.0


def targeted_linears(arch: Architecture, targets: tuple[str, ...]) -> list[LinearModule]:
    """Modules PEFT would adapt: suffix match on the dotted name; all-linear skips lm_head and
    the fused expert weights (PEFT's all-linear only finds nn.Linear); lm_head only by name."""
    key = (id(arch), tuple(targets))
    hit = _TARGETED.get(key)
    if hit is None or hit[0] is not arch:  # keyed by identity: hashing the model is slower
        if len(_TARGETED) >= 256:
            _TARGETED.clear()
        hit = _TARGETED[key] = (arch, _targeted_linears(arch, key[1]))
    return list(hit[1])


# targeted_linears' memo: the placement search estimates one model many times.
_TARGETED: dict[tuple[int, tuple[str, ...]], tuple[Architecture, tuple[LinearModule, ...]]] = {}


def _targeted_linears(arch: Architecture, targets: tuple[str, ...]) -> tuple[LinearModule, ...]:
    if tuple(targets) == ("all-linear",):
        return tuple(m for m in arch.linears if m.copies == 1)
    pool = [*arch.linears, *([arch.head] if arch.head is not None else [])]
    chosen = [m for m in pool if any(m.name == t or m.name.endswith(f".{t}") for t in targets)]
    if not chosen:
        raise PlanningError(
            f"spec.lora.targetModules: none of {list(targets)} is a linear module of this "
            f"model; its modules are {', '.join(arch.module_names)} (or use ['all-linear'])"
        )
    missing = [
        t for t in targets if not any(m.name == t or m.name.endswith(f".{t}") for m in chosen)
    ]
    if missing:
        raise PlanningError(
            f"spec.lora.targetModules: {missing} not found in this model; its modules are "
            f"{', '.join(arch.module_names)}"
        )
    return tuple(chosen)


def lora_param_count(arch: Architecture, targets: tuple[str, ...], rank: int, dora: bool) -> int:
    """Exact adapter size: r*(in+out) per adapted matrix (+ out for DoRA's magnitude)."""
    total = 0
    for m in targeted_linears(arch, targets):
        total += m.copies * rank * (m.in_features + m.out_features)
        if dora:
            total += m.copies * m.out_features
    return total


def kbit_param_bytes(shape: TrainingShape, assumptions: Assumptions) -> float:
    """Bytes per non-quantized parameter of a k-bit model (embeddings, norms, lm_head)."""
    upcast = assumptions.kbit_upcast_bytes
    return upcast if upcast is not None else dtype_bytes(shape.compute_dtype)


def weight_bytes(arch: Architecture, shape: TrainingShape, assumptions: Assumptions) -> float:
    """Frozen base weights on one unsharded replica."""
    cb = dtype_bytes(shape.compute_dtype)
    q = arch.quantizable_params
    if shape.quantization == QuantizationMode.none:
        return arch.total_params * cb
    rest = arch.unquantized_params * kbit_param_bytes(shape, assumptions)
    if shape.quantization == QuantizationMode.int8:
        return q * 1.0 + arch.quantizable_rows * 4.0 + rest
    blocks = q / NF4_BLOCK
    if shape.double_quant:
        absmax = blocks * 1.0 + (blocks / NF4_DOUBLE_QUANT_BLOCK) * 4.0
    else:
        absmax = blocks * 4.0
    return q * 0.5 + absmax + rest


# Target modules grouped by the tensor they read, for adapters without dropout: q/k/v read the
# attention norm's output, gate/up (fc1) the MLP norm's, down (fc2) the MLP's inner activation;
# the attention output projection reads what attention already saved.
_READS_ATTENTION_INPUT = frozenset(
    {"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "Wqkv", "c_attn"}
)
_READS_ATTENTION_OUTPUT = frozenset({"o_proj", "out_proj", "dense"})
_READS_MLP_INPUT = frozenset(
    {"gate_proj", "up_proj", "gate_up_proj", "fc1", "dense_h_to_4h", "c_fc"}
)
_READS_MLP_INNER = frozenset({"down_proj", "fc2", "dense_4h_to_h"})


def per_layer_inputs(arch: Architecture, modules: list[LinearModule]) -> float:
    """Summed input width of `modules` per decoder layer; an expert adapter reads one input per
    active expert."""
    total = sum(
        m.in_features * (max(arch.experts_per_token, 1) if m.copies > 1 else 1) for m in modules
    )
    return total / max(arch.num_layers, 1)


def unsaved_adapter_inputs(
    arch: Architecture, targeted: list[LinearModule], kept_by_base: bool = False
) -> float:
    """Per token and layer, the width of the adapters' inputs that nothing else keeps: each
    distinct input tensor once (expert adapters: their own input per active expert).
    `kept_by_base`: the base linears keep their inputs already (old bitsandbytes)."""
    short = {m.short_name for m in targeted if m.copies == 1} if not kept_by_base else set()
    width = 0.0
    if short & _READS_ATTENTION_INPUT:
        width += arch.hidden_size
    if short & _READS_MLP_INPUT:
        width += arch.hidden_size
    if short & _READS_MLP_INNER:
        width += arch.intermediate_size
    known = _READS_ATTENTION_INPUT | _READS_ATTENTION_OUTPUT | _READS_MLP_INPUT | _READS_MLP_INNER
    others = [m for m in targeted if m.copies > 1 or m.short_name not in known]
    return width + per_layer_inputs(arch, others)


def saved_layers(arch: Architecture, shape: TrainingShape) -> tuple[int, int]:
    """Layers whose per-layer saved tensors are on the GPU at the peak (one under checkpointing,
    the offloader's window under activation offloading), and those offloaded to host."""
    if shape.gradient_checkpointing:
        return 1, 0
    if shape.activation_offloading:
        return min(arch.num_layers, OFFLOAD_GPU_LAYERS), arch.num_layers
    return arch.num_layers, 0


def dora_dtypes(shape: TrainingShape, assumptions: Assumptions) -> dora.DoraDtypes:
    return dora.DoraDtypes(
        compute=dtype_bytes(shape.compute_dtype),
        adapter=assumptions.adapter_bytes,
        autocast=assumptions.adapter_autocast,
        quantized=shape.quantization != QuantizationMode.none,
    )


def dora_modules(arch: Architecture, shape: TrainingShape) -> list[LinearModule]:
    """The modules DoRA wraps: PEFT refuses DoRA on fused expert parameters (ParamWrapper)."""
    return [m for m in targeted_linears(arch, shape.target_modules) if m.copies == 1]


def dora_activation_split(
    arch: Architecture, shape: TrainingShape, assumptions: Assumptions
) -> tuple[float, float]:
    """DoRA's saved tensors (`dora.saved_bytes` per module) on the GPU at the peak, and on host
    under activation offloading; split by layer like the adapters' inputs, lm_head whole."""
    dt = dora_dtypes(shape, assumptions)
    tokens = shape.micro_batch * shape.seq_len
    head = arch.head.name if arch.head is not None else None
    in_layers = on_head = 0.0
    for m in dora_modules(arch, shape):
        saved = dora.saved_bytes(m.in_features, m.out_features, tokens, shape.dropout > 0, dt)
        if m.name == head:
            on_head += saved
        else:
            in_layers += saved
    per_layer = in_layers / max(arch.num_layers, 1)
    on_gpu, on_host = saved_layers(arch, shape)
    return per_layer * on_gpu + on_head, per_layer * on_host


def dora_transient(arch: Architecture, shape: TrainingShape, assumptions: Assumptions) -> float:
    """The largest single module's DoRA transient (`dora.transient_bytes`); modules run one at
    a time, so only the largest one counts."""
    dt = dora_dtypes(shape, assumptions)
    tokens = shape.micro_batch * shape.seq_len
    return max(
        (
            dora.transient_bytes(m.in_features, m.out_features, shape.rank, tokens, dt)
            for m in dora_modules(arch, shape)
        ),
        default=0.0,
    )


def activation_terms(
    arch: Architecture, shape: TrainingShape, assumptions: Assumptions
) -> dict[str, float]:
    """Bytes saved for backward at the peak on the GPU: activations, eager scores, dropout
    copies, logits."""
    return activation_split(arch, shape, assumptions)[0]


def activation_split(
    arch: Architecture, shape: TrainingShape, assumptions: Assumptions
) -> tuple[dict[str, float], float]:
    """The GPU terms of `activation_terms`, and the bytes activation offloading moves to host
    memory (0 without it). Offloaded: the tensors saved across layers (checkpointed layer inputs,
    or every layer's saved tensors, eager scores and adapter inputs without checkpointing). Kept:
    the offloader's GPU window, one layer's working set (recomputed inside the checkpoint, which
    the offloader does not see), the embedding/final-norm tensors and the loss (both small or
    needed at once; an over-estimate of at most batch x seq x hidden on GPU). Measured with a
    saved-tensors hook on a 6-layer Llama (tests/memory/test_activation_offloading_plan.py): the
    host figure is what the hook sees with checkpointing, and 5-6% above it without."""
    cb = dtype_bytes(shape.compute_dtype)
    tokens = shape.micro_batch * shape.seq_len
    h, hd = arch.hidden_size, arch.head_dim
    q_width = arch.num_heads * hd
    kv_width = arch.num_kv_heads * hd
    mlp_width = arch.intermediate_size * max(arch.experts_per_token, 1)
    # k-bit training with fp32 norms (prepare_model_for_kbit_training) makes the residual stream
    # fp32 and bitsandbytes casts each linear's output back to it; the MLP's saved tensors are
    # then fp32 too. The trainer keeps them in the compute dtype: the same as plain LoRA
    # (measured: tests/memory/test_saved_tensors.py).
    quantized = shape.quantization != QuantizationMode.none
    stream = max(kbit_param_bytes(shape, assumptions), cb) if quantized else cb
    # Per token, per layer, with frozen base weights (frozen linears save no input):
    per_token_layer = (
        2 * h * assumptions.norm_bytes_per_element  # two RMSNorms save their fp32 input
        + (q_width + 2 * kv_width) * cb  # q, k, v after rotary, saved by attention
        + q_width * cb  # attention output
        + arch.num_heads * 4  # attention log-sum-exp (fp32)
        + mlp_saved_widths(arch, assumptions) * mlp_width * stream  # e.g. gate, act(gate), up
        + h * cb  # the layer input
    )
    kbit_keeps_inputs = quantized and assumptions.kbit_saves_input
    if kbit_keeps_inputs:
        # the 4-bit linears' inputs: attention input and output, MLP input and inner activation
        per_token_layer += (2 * h + q_width + mlp_width) * stream
    layer_input = h * stream
    offload = shape.activation_offloading
    host = 0.0
    if shape.gradient_checkpointing:
        kept_inputs = min(arch.num_layers, OFFLOAD_GPU_TENSORS) if offload else arch.num_layers
        saved = tokens * (kept_inputs * layer_input + per_token_layer)
        host += tokens * arch.num_layers * layer_input if offload else 0.0
    else:
        kept_layers = min(arch.num_layers, OFFLOAD_GPU_LAYERS) if offload else arch.num_layers
        saved = tokens * kept_layers * per_token_layer
        host += tokens * arch.num_layers * per_token_layer if offload else 0.0
    saved += tokens * 2 * h * 4  # embedding output and final norm (fp32)
    if offload:
        # the final norm's fp32 input is offloaded too (measured); counted on the GPU as well,
        # where the offloader's stash still holds it when backward starts
        host += tokens * h * 4
    layers_on_gpu, layers_on_host = saved_layers(arch, shape)
    scores = 0.0
    if shape.attention == Attention.eager:
        # fp32 softmax output + its bf16 cast, per head, per query-key pair
        per_layer_scores = shape.micro_batch * arch.num_heads * shape.seq_len**2 * (4 + cb)
        scores = per_layer_scores * layers_on_gpu
        host += per_layer_scores * layers_on_host
    targeted = targeted_linears(arch, shape.target_modules)
    # lm_head runs after the decoder layers, outside gradient checkpointing: its adapter's input
    # is one tensor kept whole, not a per-layer share.
    head = [m for m in targeted if arch.head is not None and m.name == arch.head.name]
    in_layers = [m for m in targeted if m not in head]
    per_layer_in = per_layer_inputs(arch, in_layers)
    head_in = float(sum(m.in_features for m in head))
    # Adapters in another dtype than the compute dtype (PEFT's fp32 default): PEFT casts each
    # module's input to it and autocast casts that back for lora_A's matmul, which saves the cast
    # copy: one per target module, nothing shared.
    cast_copy = cb if assumptions.adapter_bytes != cb else 0
    if shape.dropout > 0:
        # dropout output (adapter dtype) + its mask (1 byte) + autocast's copy, per module
        per_layer, per_head = per_layer_in, head_in
        element = assumptions.adapter_bytes + 1 + cast_copy
    elif cast_copy:
        per_layer, per_head, element = per_layer_in, head_in, cast_copy
    else:
        # lora_A saves its input itself, shared by the modules that read the same tensor
        per_layer = unsaved_adapter_inputs(arch, in_layers, kept_by_base=kbit_keeps_inputs)
        per_head, element = head_in, cb
    dropout = tokens * (per_layer * layers_on_gpu + per_head) * element
    host += tokens * per_layer * layers_on_host * element
    logits = loss_bytes(arch, shape, assumptions)
    terms = {
        "activations": saved,
        "attention_scores": scores,
        "lora_dropout": dropout,
        "logits": logits,
    }
    return terms, host


def loss_chunk_positions(vocab_size: int) -> int:
    """Positions per chunk of the trainer's chunked loss (lora_trainer.loss.chunk_positions)."""
    return max(1, LOSS_CHUNK_LOGIT_ELEMENTS // max(vocab_size, 1))


def loss_bytes(arch: Architecture, shape: TrainingShape, assumptions: Assumptions) -> float:
    """The loss's memory at its peak (backward of the loss).

    Unchunked: the full logits, their fp32 upcast, log-softmax and gradient. Chunked: the
    labelled positions' final hidden states (saved for the recomputation; every position is
    counted, the plan does not know the label mask) plus one chunk's logits buffers, recomputed
    in backward. CUDA's fused kernel (liger) keeps less than that, so the chunked figure bounds
    both."""
    tokens = shape.micro_batch * shape.seq_len
    if not shape.chunked_loss:
        return tokens * arch.vocab_size * assumptions.logits_bytes_per_element
    kept = tokens * arch.hidden_size * dtype_bytes(shape.compute_dtype)
    chunk = min(tokens, loss_chunk_positions(arch.vocab_size))
    return kept + chunk * arch.vocab_size * assumptions.logits_bytes_per_element


def dpo_shape(arch: Architecture, policy: TrainingShape) -> dpo.DpoShape:
    return dpo.DpoShape(
        tokens=policy.micro_batch * policy.seq_len,
        hidden=arch.hidden_size,
        vocab=arch.vocab_size,
        mlp_width=arch.intermediate_size * max(arch.experts_per_token, 1),
        compute_bytes=dtype_bytes(policy.compute_dtype),
    )


def preference_terms(
    arch: Architecture, policy: TrainingShape, on_gpu: dict[str, float]
) -> dict[str, float]:
    """DPO's terms (memory/dpo.py); the SFT loss term gives way to TRL's fused log-prob head."""
    s = dpo_shape(arch, policy)
    on_gpu["logits"] = 0.0
    return {"dpo_logprobs": dpo.logprobs_bytes(s), "dpo_reference": dpo.reference_at_peak(s)}


def estimate_memory(
    arch: Architecture, shape: TrainingShape, assumptions: Assumptions | None = None
) -> MemoryEstimate:
    """Per-rank peak memory for `shape` on `arch` (see the module docstring for the terms)."""
    a = assumptions or Assumptions()
    ranks = max(shape.data_parallel, 1)
    zero2 = shape.strategy in (Strategy.deepspeed_zero2, Strategy.deepspeed_zero3)
    zero3 = shape.strategy == Strategy.deepspeed_zero3
    notes: list[str] = []

    trainable = lora_param_count(arch, shape.target_modules, shape.rank, shape.use_dora)
    weights = weight_bytes(arch, shape, a)
    gather = 0.0
    host = 0.0
    if zero3:
        bytes_per_param = weights / max(arch.total_params, 1)
        layers = a.zero3_prefetch_layers * arch.largest_layer_params * bytes_per_param
        head = arch.head.params if arch.head is not None else arch.vocab_size * arch.hidden_size
        gather = max(layers, head * dtype_bytes(shape.compute_dtype))
        if shape.offload_cpu:
            host += weights / ranks
            weights = 0.0
            notes.append("ZeRO-3 offload: base weights live in host memory between layers")
        else:
            weights = weights / ranks
    lora_weights = trainable * a.adapter_bytes
    grads = trainable * a.adapter_bytes
    optimizer = trainable * (OPTIMIZER_BYTES[shape.optimizer] or 2 * a.adapter_bytes)
    if zero3:
        lora_weights /= ranks
    if zero2:
        grads /= ranks
        optimizer /= ranks
    elif ranks > 1:
        grads *= 2  # DDP's gradient buckets hold a second copy
    if shape.offload_cpu:
        host += optimizer
        optimizer = 0.0
        notes.append("optimizer states are offloaded to host memory (CPU Adam)")
    if shape.optimizer in (Optimizer.paged_adamw_8bit, Optimizer.paged_adamw_32bit):
        notes.append("paged optimizer: states can page to host memory under pressure")

    # DPO's policy forward sees chosen and rejected as one batch of twice the micro-batch
    policy = replace(shape, micro_batch=dpo.policy_micro_batch(shape.micro_batch))
    policy = policy if shape.preference else shape
    on_gpu, offloaded = activation_split(arch, policy, a)
    dpo_terms = preference_terms(arch, policy, on_gpu) if shape.preference else {}
    dora_terms = dict.fromkeys(("dora_magnitude", "dora_activations", "dora_transient"), 0.0)
    if shape.use_dora:
        # the magnitudes' share of each adapter state, so sharding and offload apply alike
        targeted = targeted_linears(arch, shape.target_modules)
        magnitudes = sum(m.copies * m.out_features for m in targeted)  # as lora_param_count
        share = magnitudes / max(trainable, 1)
        dora_terms["dora_magnitude"] = (lora_weights + grads + optimizer) * share
        lora_weights, grads, optimizer = (x * (1 - share) for x in (lora_weights, grads, optimizer))
        saved, saved_on_host = dora_activation_split(arch, policy, a)
        offloaded += saved_on_host
        dora_terms["dora_activations"] = saved
        dora_terms["dora_transient"] = dora.transient_at_peak(
            dora_transient(arch, policy, a), on_gpu["logits"] + sum(dpo_terms.values())
        )
    if shape.preference:  # after DoRA's transient, which sits over the loss buffers only
        shards = ranks if zero3 else 1
        dpo_terms["dpo_ref_adapter"] = dpo.ref_adapter_bytes(trainable, a.adapter_bytes, shards)
    if offloaded:
        host += offloaded
        notes.append("activation offloading: saved activations live in pinned host memory")
    terms = {
        "weights": weights,
        "zero3_gather": gather,
        "lora_weights": lora_weights,
        "gradients": grads,
        "optimizer": optimizer,
        **on_gpu,
        **dora_terms,
        **dpo_terms,
    }
    allocated = sum(terms.values())
    terms["allocator_overhead"] = allocated * a.allocator_overhead_fraction
    terms["cuda_context"] = a.cuda_context_gib * GIB
    peak = sum(terms.values())
    return MemoryEstimate(
        breakdown_gib={k: round(v / GIB, 3) for k, v in terms.items()},
        peak_allocated_gib=allocated / GIB,
        peak_gib=peak / GIB,
        total_params=arch.total_params,
        trainable_params=trainable,
        host_offload_gib=host / GIB,
        notes=notes,
    )
