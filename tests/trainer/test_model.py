"""Quantization and LoRA configuration from the spec; the real 4-bit load needs CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lora_contract.types import LoRAJobSpec, LoRASpec, QuantizationSpec
from lora_trainer.errors import InvalidConfigError
from lora_trainer.model import (
    apply_lora,
    check_quantization_device,
    load_kwargs,
    lora_config,
    quantization_config,
    trainable_summary,
)


def test_nf4_bitsandbytes_config() -> None:
    import torch

    config = quantization_config(
        QuantizationSpec.model_validate(
            {"mode": "nf4", "doubleQuant": True, "computeDtype": "bf16"}
        )
    )
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant is True
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    single = quantization_config(
        QuantizationSpec.model_validate(
            {"mode": "nf4", "doubleQuant": False, "computeDtype": "fp16"}
        )
    )
    assert single.bnb_4bit_use_double_quant is False
    assert single.bnb_4bit_compute_dtype == torch.float16


def test_int8_and_none() -> None:
    assert quantization_config(QuantizationSpec.model_validate({"mode": "int8"})).load_in_8bit
    assert quantization_config(QuantizationSpec()) is None


def test_quantization_needs_cuda() -> None:
    with pytest.raises(InvalidConfigError, match="int8 needs a CUDA GPU"):
        check_quantization_device(QuantizationSpec.model_validate({"mode": "int8"}), False)
    check_quantization_device(QuantizationSpec(), False)
    check_quantization_device(QuantizationSpec.model_validate({"mode": "nf4"}), True)


def test_lora_config_from_spec() -> None:
    config = lora_config(
        LoRASpec.model_validate(
            {
                "r": 4,
                "alpha": 8,
                "dropout": 0.1,
                "targetModules": ["all-linear"],
                "useRslora": True,
                "useDora": True,
                "bias": "lora_only",
            }
        )
    )
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert config.target_modules == "all-linear"
    assert config.use_rslora and config.use_dora and config.bias == "lora_only"
    assert set(lora_config(LoRASpec()).target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def _spec(targets: list[str], source: str = "pvc://models/tiny") -> LoRAJobSpec:
    return LoRAJobSpec.model_validate(
        {
            "baseModel": {"name": "tiny", "source": source},
            "dataset": {"source": "/d.jsonl", "format": "chat"},
            "lora": {"targetModules": targets, "r": 4},
            "output": {"bucket": "out"},
            "resources": {"gpuType": "cpu"},
        }
    )


def test_all_linear_adapts_every_linear_layer_but_lm_head(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = apply_lora(AutoModelForCausalLM.from_pretrained(model_dir), _spec(["all-linear"]))
    names = {n.split(".")[-1] for n, _ in model.named_modules() if hasattr(_, "lora_A")}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable, total = trainable_summary(model)
    assert 0 < trainable < total


def test_unknown_target_module_is_a_config_error(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    with pytest.raises(InvalidConfigError, match=r"lora\.targetModules"):
        apply_lora(AutoModelForCausalLM.from_pretrained(model_dir), _spec(["no_such_proj"]))


@pytest.mark.gpu
def test_real_nf4_load_and_lora_on_cuda(model_dir: Path) -> None:
    spec = _spec(["all-linear"])
    spec.resources.gpu_type = "A100-80GB"
    spec.quantization = QuantizationSpec.model_validate({"mode": "nf4"})
    from lora_trainer.model import load_base_model

    model: Any = apply_lora(load_base_model(model_dir, spec, local_rank=0), spec)
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    import torch

    out = model(
        torch.tensor([[1, 2, 3]], device="cuda"), labels=torch.tensor([[1, 2, 3]], device="cuda")
    )
    out.loss.backward()
    assert torch.isfinite(out.loss)


def _qlora_spec() -> LoRAJobSpec:
    return LoRAJobSpec.model_validate(
        {
            "baseModel": {"name": "meta-llama/Llama-3.1-70B", "source": "s3://models/llama-70b"},
            "quantization": {"mode": "nf4", "computeDtype": "bf16"},
            "dataset": {"source": "s3://data/train.jsonl", "format": "chat"},
            "resources": {"gpuType": "A100-80GB"},
            "distributed": {"nodes": 1, "gpusPerNode": 4, "strategy": "deepspeed-zero3"},
            "output": {"bucket": "adapters"},
        }
    )


def test_qlora_under_zero3_loads_without_a_device_map_and_shards_in_the_compute_dtype() -> None:
    """transformers refuses a device_map under ZeRO-3 (a 70B QLoRA across GPUs failed at load);
    the 4-bit weights are stored in bf16 so that DeepSpeed can partition them."""
    import torch

    spec = _qlora_spec()
    sharded = load_kwargs(spec, local_rank=2, has_cuda=True, zero3=True)
    assert "device_map" not in sharded
    assert sharded["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    assert sharded["dtype"] == torch.bfloat16
    placed = load_kwargs(spec, local_rank=2, has_cuda=True, zero3=False)
    assert placed["device_map"] == {"": 2}


def test_one_dtype_table_for_training_and_export() -> None:
    """spec.quantization.computeDtype (bf16/fp16/fp32) and spec.export.dtype (torch's names)
    resolve through the same table: export.py has no twin of its own."""
    import torch

    from lora_contract.types import ComputeDtype, ExportDtype
    from lora_trainer import export, model

    assert export.torch_dtype is model.torch_dtype and not hasattr(export, "export_dtype")
    expected = {
        ComputeDtype.bf16: torch.bfloat16,
        ComputeDtype.fp16: torch.float16,
        ComputeDtype.fp32: torch.float32,
        ExportDtype.bfloat16: torch.bfloat16,
        ExportDtype.float16: torch.float16,
        ExportDtype.float32: torch.float32,
    }
    assert {dtype: model.torch_dtype(dtype) for dtype in expected} == expected
    # a dtype added to one enum and not the other fails here, not in a pod
    assert {model.torch_dtype(d) for d in ComputeDtype} == {
        model.torch_dtype(d) for d in ExportDtype
    }
