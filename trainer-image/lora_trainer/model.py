"""Load the base model (optionally quantized with bitsandbytes) and wrap it with PEFT LoRA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lora_contract.types import (
    ComputeDtype,
    ExportDtype,
    LoRAJobSpec,
    LoRASpec,
    QuantizationMode,
    QuantizationSpec,
)

from .errors import InvalidConfigError

ADAPTER_CONFIG = "adapter_config.json"


# The one dtype table, keyed by torch's name (spec.export.dtype's values): computeDtype's short
# names map onto it, so training (model.py) and the merged export (export.py) cannot drift.
TORCH_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def torch_dtype(dtype: ComputeDtype | ExportDtype) -> Any:
    """The torch dtype of spec.quantization.computeDtype or spec.export.dtype."""
    import torch

    name = TORCH_DTYPE_NAMES.get(dtype.value, dtype.value)
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def quantization_config(spec: QuantizationSpec) -> Any | None:
    """The BitsAndBytesConfig for the spec: NF4 (+ double quant, compute dtype) or LLM.int8."""
    if spec.mode == QuantizationMode.none:
        return None
    from transformers import BitsAndBytesConfig

    if spec.mode == QuantizationMode.nf4:
        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=spec.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(spec.compute_dtype),
            bnb_4bit_quant_storage=torch_dtype(spec.compute_dtype),
        )
    return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]


def check_quantization_device(spec: QuantizationSpec, has_cuda: bool) -> None:
    """bitsandbytes k-bit kernels need CUDA: fail early and clearly instead of deep in a kernel."""
    if spec.mode != QuantizationMode.none and not has_cuda:
        raise InvalidConfigError(
            f"quantization.mode {spec.mode.value} needs a CUDA GPU (bitsandbytes kernels), but "
            "this pod sees none: set quantization.mode none, or request a GPU resources.gpuType"
        )


def lora_config(spec: LoRASpec) -> Any:
    from peft import LoraConfig

    targets: str | list[str] = (
        "all-linear" if spec.target_modules == ["all-linear"] else list(spec.target_modules)
    )
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft accepts float alphas
        lora_dropout=spec.dropout,
        target_modules=targets,
        bias=spec.bias,
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
        task_type="CAUSAL_LM",
    )


def model_dtype(spec: LoRAJobSpec, has_cuda: bool) -> Any:
    """Base weights in the compute dtype on GPU; fp32 on CPU (CPU half-precision is slow)."""
    import torch

    return torch_dtype(spec.quantization.compute_dtype) if has_cuda else torch.float32


def load_tokenizer(path: str | Path, local_only: bool = True) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise InvalidConfigError(f"cannot load the tokenizer from {path}: {exc}") from None
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; padding positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_kwargs(spec: LoRAJobSpec, local_rank: int, has_cuda: bool, zero3: bool) -> dict[str, Any]:
    """`from_pretrained` arguments. A quantized model is placed on this rank's GPU with a
    `device_map`, except under ZeRO-3: transformers refuses a device_map there, and DeepSpeed
    partitions the weights itself (the 4-bit weights are stored in the compute dtype,
    `bnb_4bit_quant_storage`, so they shard like any other parameter)."""
    kwargs: dict[str, Any] = {
        "dtype": model_dtype(spec, has_cuda),
        "attn_implementation": spec.training.attention.value,
        "local_files_only": True,
    }
    if spec.base_model.revision:
        kwargs["revision"] = spec.base_model.revision
    quant = quantization_config(spec.quantization)
    if quant is not None:
        kwargs["quantization_config"] = quant
        if not zero3:
            kwargs["device_map"] = {"": local_rank}
    return kwargs


def load_base_model(
    path: str | Path, spec: LoRAJobSpec, local_rank: int, zero3: bool = False
) -> Any:
    """The base model on this process's device, quantized when the spec asks for it. Under
    ZeRO-3 the Trainer's arguments must exist before this call, so that transformers loads the
    weights partitioned (`zero.Init`)."""
    from transformers import AutoModelForCausalLM

    has_cuda = cuda_available()
    check_quantization_device(spec.quantization, has_cuda)
    kwargs = load_kwargs(spec, local_rank, has_cuda, zero3)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise InvalidConfigError(f"cannot load baseModel from {path}: {exc}") from None
    if spec.quantization.mode != QuantizationMode.none:
        model = prepare_quantized_model(model)
    return model


def prepare_quantized_model(model: Any) -> Any:
    """A k-bit model ready for LoRA: every base parameter frozen, nothing upcast.

    peft's `prepare_model_for_kbit_training` also casts every non-4-bit parameter (embeddings,
    lm_head, norms) to fp32, which makes the whole residual stream fp32 and doubles those weights
    and most saved activations. As TRL's SFTTrainer and Axolotl do, they stay in the compute
    dtype here: RMSNorm already normalises in fp32 internally, the adapters are fp32 (PEFT's
    default) and the loss upcasts its logits. Gradient checkpointing and the inputs' requires-grad
    come from the Trainer's arguments and `apply_lora`, as for plain LoRA."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def apply_lora(model: Any, spec: LoRAJobSpec, base_adapter: Path | None = None) -> Any:
    """A fresh adapter (B = 0), or with `base_adapter` (spec.baseAdapter, downloaded) that
    adapter's weights, trainable: SFT and DPO alike start from the model built here."""
    from peft import get_peft_model

    if base_adapter is not None:
        peft_model = continue_adapter(model, spec, base_adapter)
    else:
        try:
            peft_model = get_peft_model(model, lora_config(spec.lora))
        except ValueError as exc:
            raise InvalidConfigError(
                f"lora.targetModules {spec.lora.target_modules}: {exc}"
            ) from None
    # Every adapter_config.json saved (checkpoints, final) names the hub model and revision, not
    # the pod-local path it was loaded from: vLLM and PEFT users resolve the name.
    for adapter in peft_model.peft_config.values():
        adapter.base_model_name_or_path = spec.base_model.name
        adapter.revision = spec.base_model.revision
    if spec.training.gradient_checkpointing:
        # Inputs must require grad or checkpointed blocks with frozen weights get no gradient.
        peft_model.enable_input_require_grads()
    return peft_model


def continue_adapter(model: Any, spec: LoRAJobSpec, folder: Path) -> Any:
    """PEFT's model with the saved adapter loaded as `default`, trainable. Its shape must be the
    spec's (the operator checked the named job's spec; this checks the files); alpha, dropout and
    the rest are this spec's, as for a fresh adapter."""
    from peft import PeftModel

    saved_file = folder / ADAPTER_CONFIG
    if not saved_file.is_file():
        raise InvalidConfigError(f"spec.baseAdapter: {folder} holds no {ADAPTER_CONFIG}")
    try:
        saved = json.loads(saved_file.read_text())
        rank = int(saved["r"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidConfigError(f"spec.baseAdapter: unreadable {ADAPTER_CONFIG}: {exc}") from None
    if rank != spec.lora.r:
        raise InvalidConfigError(
            f"spec.baseAdapter: the adapter has rank {rank}, spec.lora.r is {spec.lora.r}"
        )
    try:
        return PeftModel.from_pretrained(
            model, str(folder), is_trainable=True, config=lora_config(spec.lora)
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InvalidConfigError(f"spec.baseAdapter: cannot load the adapter: {exc}") from None


def trainable_summary(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
