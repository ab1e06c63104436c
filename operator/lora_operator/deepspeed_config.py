"""The DeepSpeed config a LoRAJob trains with, generated from its spec (never hand-written).

The operator renders the result into `TrainerConfig.deepspeed`; the trainer hands it to the HF
Trainer, which fills the "auto" values (learning rate, world-size dependent batch size, bucket
sizes from the model's hidden size) from its own arguments, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

from lora_contract.types import ComputeDtype, LoRAJobSpec, Offload, Strategy

ZERO_STAGES = {Strategy.deepspeed_zero2: 2, Strategy.deepspeed_zero3: 3}


def _precision(spec: LoRAJobSpec) -> dict[str, Any]:
    dtype = spec.quantization.compute_dtype
    return {
        "bf16": {"enabled": dtype == ComputeDtype.bf16},
        # Dynamic loss scaling (loss_scale 0) is what fp16 LoRA needs; it is off for bf16/fp32.
        "fp16": {"enabled": dtype == ComputeDtype.fp16, "loss_scale": 0, "initial_scale_power": 16},
    }


def _zero(stage: int, offload: bool) -> dict[str, Any]:
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 2:
        zero["allgather_bucket_size"] = 5e8
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "stage3_max_live_parameters": 1e9,
                "stage3_max_reuse_distance": 1e9,
                # Gather the (sharded) weights when saving so the adapter file is complete.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return zero


def deepspeed_config(spec: LoRAJobSpec, strategy: Strategy) -> dict[str, Any] | None:
    """ZeRO-2/3 config for `strategy` (the planned one: `auto` must be resolved first), or None
    for DDP. CPU offload comes from `spec.distributed.offload`."""
    if strategy not in ZERO_STAGES:
        return None
    offload = spec.distributed.offload == Offload.cpu
    training = spec.training
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation,
        "train_batch_size": "auto",  # micro x accumulation x world size, filled by the Trainer
        "gradient_clipping": training.max_grad_norm,
        "zero_optimization": _zero(ZERO_STAGES[strategy], offload),
        # bitsandbytes / paged optimizers are not on DeepSpeed's tested list but work with ZeRO.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
        **_precision(spec),
    }
    if offload:
        # ZeRO-Offload needs DeepSpeed's CPU Adam; a client torch optimizer is refused.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config
