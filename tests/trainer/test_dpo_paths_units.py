"""method dpo on the QLoRA path, in-process and fast: TRL 1.16's DPOTrainer built the way
train.py builds it (our PEFT model, `ref_model=None`) over a real NF4 model (bitsandbytes' CPU
kernels): TRL adds the frozen `ref` adapter as a copy of the starting adapter, and the trainable
adapters keep the dtype the compute dtype calls for (TRL's blanket bf16 cast undone unless the
run computes in bf16). The DeepSpeed ZeRO-3 path is trained for real by hand (docs/training.md,
"DPO on two processes, ZeRO-3 and QLoRA"); its config round trip is in tests/api."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bitsandbytes  # noqa: F401  (NF4 on bitsandbytes' CPU kernels)
import torch
import transformers

from lora_contract.types import TrainerConfig
from lora_trainer.data import ListDataset
from lora_trainer.model import apply_lora, prepare_quantized_model, quantization_config
from lora_trainer.objectives import (
    OBJECTIVES,
    dpo_arguments,
    is_quantized,
    restore_adapter_dtype,
)
from lora_trainer.preference_data import load_pairs
from lora_trainer.train import training_arguments

from .test_dpo import dpo_spec, text_rows, write


def qlora_dpo_config(tmp_path: Path) -> TrainerConfig:
    spec = dpo_spec(write(tmp_path / "pref.jsonl", text_rows(8)))
    spec["quantization"] = {"mode": "nf4", "computeDtype": "bf16"}
    spec["resources"] = {"gpuType": "L4-24GB"}
    spec["lora"]["targetModules"] = ["q_proj", "v_proj"]
    return TrainerConfig.model_validate(
        {
            "jobName": "j",
            "namespace": "n",
            "runId": "r1",
            "outputUri": "s3://b/p/n/j/r1",
            "spec": spec,
        }
    )


def nf4_peft_model(model_dir: Path, config: TrainerConfig) -> Any:
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=torch.bfloat16,
        quantization_config=quantization_config(config.spec.quantization),
    )
    return apply_lora(prepare_quantized_model(base), config.spec)


def adapter_tensors(model: Any, name: str) -> dict[str, torch.Tensor]:
    marker = f".{name}."
    return {
        key.replace(marker, "."): param.detach().clone()
        for key, param in model.named_parameters()
        if marker in key
    }


def test_qlora_dpo_trainer_adds_the_ref_copy_and_keeps_fp32_adapters(
    model_dir: Path, tmp_path: Path
) -> None:
    config = qlora_dpo_config(tmp_path)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = load_pairs(tmp_path / "pref.jsonl", "dataset.source", config.spec, tokenizer)
    model = nf4_peft_model(model_dir, config)
    assert is_quantized(model)
    with torch.no_grad():  # a started adapter (B != 0), as with spec.baseAdapter
        for key, param in model.named_parameters():
            if ".default." in key and "lora_B" in key:
                param.fill_(0.01)
    started = adapter_tensors(model, "default")
    shared = training_arguments(config, tmp_path / "out", False, False, 1)
    args = dpo_arguments(config, shared)
    assert args.bf16 is False  # on CPU: the fp32-compute case of a GPU run
    trainer = OBJECTIVES[config.spec.method].trainer(
        tokenizer=tokenizer,
        model=model,
        args=args,
        train_dataset=ListDataset(pairs),
        eval_dataset=None,
    )
    peft_model = trainer.model
    assert set(peft_model.peft_config) == {"default", "ref"}
    ref = adapter_tensors(peft_model, "ref")
    assert ref.keys() == started.keys() and len(ref) == 2 * 2 * 2  # A, B x q, v x 2 layers
    for key, weight in started.items():
        assert torch.equal(ref[key].float(), weight.float()), key
    trainable = {k: p for k, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in k for k in trainable)  # ref is frozen
    assert {p.dtype for p in trainable.values()} == {torch.float32}  # TRL had made them bf16


def test_the_bf16_cast_stands_under_bf16_compute_and_a_plain_model_is_left_alone() -> None:
    class Quantized(torch.nn.Module):
        is_loaded_in_4bit = True

        def __init__(self) -> None:
            super().__init__()
            self.adapter = torch.nn.Linear(2, 2).to(torch.bfloat16)
            self.frozen = torch.nn.Linear(2, 2).to(torch.bfloat16).requires_grad_(False)

    model = Quantized()
    assert restore_adapter_dtype(model, bf16=True) == 0
    assert model.adapter.weight.dtype == torch.bfloat16
    assert restore_adapter_dtype(model, bf16=False) == 2  # weight and bias
    assert model.adapter.weight.dtype == torch.float32 and model.adapter.bias.dtype == torch.float32
    assert model.frozen.weight.dtype == torch.bfloat16  # frozen weights keep their storage
    plain = torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert not is_quantized(plain) and restore_adapter_dtype(plain, bf16=False) == 0
    assert plain.weight.dtype == torch.bfloat16

    class EightBit(torch.nn.Module):
        is_loaded_in_8bit = True

        def __init__(self) -> None:
            super().__init__()
            self.adapter = torch.nn.Linear(2, 2, bias=False).to(torch.bfloat16)

    assert is_quantized(EightBit()) and restore_adapter_dtype(EightBit(), bf16=False) == 1
