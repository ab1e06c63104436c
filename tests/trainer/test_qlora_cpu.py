"""QLoRA as the trainer builds it, without peft's fp32 upcast: NF4 base (bitsandbytes' CPU kernels),
embeddings / norms / lm_head left in the compute dtype, fp32 adapters, the chunked loss under
bf16 autocast. The loss must stay finite and go down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bitsandbytes  # noqa: F401  (NF4 on bitsandbytes' CPU kernels)
import torch
import transformers

from lora_contract.types import LoRAJobSpec
from lora_trainer.loss import HiddenStateCapture, LossPath, causal_lm_loss, causal_lm_of
from lora_trainer.model import apply_lora, prepare_quantized_model, quantization_config


def qlora_spec() -> LoRAJobSpec:
    return LoRAJobSpec.model_validate(
        {
            "baseModel": {"name": "tiny", "source": "pvc://models/tiny"},
            "dataset": {"source": "/d.jsonl", "format": "chat"},
            "lora": {"targetModules": ["all-linear"], "r": 8, "alpha": 16, "dropout": 0.0},
            "quantization": {"mode": "nf4", "computeDtype": "bf16"},
            "training": {"gradientCheckpointing": False},
            "output": {"bucket": "out"},
            "resources": {"gpuType": "L4-24GB"},
        }
    )


def test_qlora_keeps_the_compute_dtype_and_learns_on_cpu(model_dir: Path) -> None:
    spec = qlora_spec()
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, quantization_config=quantization_config(spec.quantization)
    )
    model = apply_lora(prepare_quantized_model(base), spec)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    frozen = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert not any(p.requires_grad for p in frozen)
    # nothing but the adapters is fp32: embeddings, norms and lm_head stay bf16
    assert {p.dtype for p in frozen if p.__class__.__name__ != "Params4bit"} == {torch.bfloat16}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}

    vocab = base.config.vocab_size
    ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :8] = -100
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    causal_lm = causal_lm_of(model)
    capture = HiddenStateCapture(causal_lm.get_decoder())
    losses = []
    model.train()
    for _ in range(8):
        with torch.autocast("cpu", dtype=torch.bfloat16), capture.active():
            model(input_ids=ids, logits_to_keep=torch.zeros(0, dtype=torch.long))
            loss: Any = causal_lm_loss(
                capture.take(), labels, causal_lm.get_output_embeddings(), LossPath.chunked
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.5, losses
