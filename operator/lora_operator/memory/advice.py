"""Warnings drawn from LoRA practice: things that train, but badly or wastefully."""

from __future__ import annotations

from lora_contract.types import Attention, ComputeDtype, LoRAJobSpec, QuantizationMode

from ..api.operator_config import GpuType
from .architecture import Architecture

FEW_EXAMPLES = 300
SOME_EXAMPLES = 5000
LARGE_DATASET = 50_000
EAGER_LONG_SEQ = 4096
ATTENTION_ONLY = {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"}


def lora_warnings(spec: LoRAJobSpec, arch: Architecture, gpu: GpuType, on_cpu: bool) -> list[str]:
    """One sentence per concern, naming the field to change."""
    warnings: list[str] = []
    lora, data = spec.lora, spec.dataset
    n = data.num_examples
    if n is not None and n < FEW_EXAMPLES and lora.r > 16:
        warnings.append(
            f"spec.lora.r: rank {lora.r} is high for {n} examples; use r <= 16 below a few "
            "hundred examples to avoid overfitting"
        )
    elif n is not None and n < SOME_EXAMPLES and lora.r > 64:
        warnings.append(
            f"spec.lora.r: rank {lora.r} needs several thousand examples (have {n}); use r <= 64"
        )
    if not lora.use_rslora and not (0.5 * lora.r <= lora.alpha <= 4 * lora.r):
        warnings.append(
            f"spec.lora.alpha: {lora.alpha:g} is far from r..2r ({lora.r}..{2 * lora.r}); "
            f"the update scale alpha/r = {lora.alpha / lora.r:.2f} is unusual"
        )
    if n is not None and n >= LARGE_DATASET and set(lora.target_modules) <= ATTENTION_ONLY:
        warnings.append(
            f"spec.lora.targetModules: attention-only targets for {n} examples; add the MLP "
            "projections (or use all-linear) for more capacity"
        )
    context = arch.max_position_embeddings
    if context and data.max_seq_length > context:
        warnings.append(
            f"spec.dataset.maxSeqLength: {data.max_seq_length} exceeds the model's context of "
            f"{context} tokens (max_position_embeddings)"
        )
    if spec.training.attention == Attention.eager and data.max_seq_length >= EAGER_LONG_SEQ:
        warnings.append(
            f"spec.training.attention: eager attention at {data.max_seq_length} tokens keeps "
            "batch x heads x seq^2 scores per layer; use sdpa or flash_attention_2"
        )
    if not on_cpu and not gpu.bf16 and spec.quantization.compute_dtype == ComputeDtype.bf16:
        warnings.append(f"spec.quantization.computeDtype: {gpu.name} has no native bf16; use fp16")
    if (
        spec.quantization.mode == QuantizationMode.nf4
        and spec.quantization.compute_dtype == ComputeDtype.fp16
    ):
        warnings.append(
            "spec.quantization.computeDtype: nf4 with fp16 compute is prone to overflow; "
            "prefer bf16 on GPUs that support it"
        )
    if spec.quantization.mode == QuantizationMode.nf4 and not spec.quantization.double_quant:
        warnings.append(
            "spec.quantization.doubleQuant: off; double quantization saves ~0.4 GB per 7B "
            "parameters at no quality cost"
        )
    if not spec.training.gradient_checkpointing and data.max_seq_length >= 4096:
        warnings.append(
            "spec.training.gradientCheckpointing: off at long sequence length; activations "
            "grow with every layer"
        )
    return warnings
