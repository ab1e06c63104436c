"""The activation terms against a real measurement: the bytes autograd saves for backward in one
forward pass of the trainer's own code path (transformers + PEFT, bitsandbytes NF4 with
prepare_model_for_kbit_training, bf16 autocast), on the CPU, for a small random Llama.

Counted: every distinct storage a saved-tensor hook sees whose leading dimension is per token,
parameters excluded; the logits (and their fp32 copy) are left out, the estimate's `logits` term
also counts their gradient. The small differences that remain are the estimate's deliberately
kept extras (the layer input, the embedding output, dropout's mask).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bitsandbytes  # noqa: F401  (the NF4/int8 layers below; CPU kernels suffice)
import peft
import pytest
import torch
import transformers

from lora_contract.types import QuantizationMode
from lora_operator.memory import Assumptions, TrainingShape, estimate_memory, load_architecture

from .conftest import save_random_llama

CONFIG = {
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1792,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "max_position_embeddings": 1024,
}
BATCH, SEQ = 2, 256
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_llama(tmp_path_factory.mktemp("llama"), CONFIG)


def peft_model(checkpoint: Path, quantized: bool, dropout: float) -> Any:
    """As the trainer builds it (lora_trainer/model.py): bf16 base, NF4 + double quant with
    prepare_model_for_kbit_training for QLoRA, PEFT's default fp32 adapters."""
    options: dict[str, Any] = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    if quantized:
        options["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, **options)
    if quantized:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS), lora_dropout=dropout)
    return peft.get_peft_model(model, config)


def saved_activation_bytes(model: Any) -> int:
    """Bytes of the distinct per-token tensors saved for backward in one training forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    vocab = CONFIG["vocab_size"]
    seen: dict[int, int] = {}

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        per_token = tensor.dim() >= 2 and tensor.shape[0] in (BATCH, BATCH * SEQ)
        if per_token and tensor.shape[-1] != vocab and storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    model.train()
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        model(input_ids=ids, labels=ids)
    return sum(seen.values())


def estimated_bytes(checkpoint: Path, quantized: bool, dropout: float) -> float:
    arch = load_architecture("small-llama", str(checkpoint / "arch.json"))
    shape = TrainingShape(
        quantization=QuantizationMode.nf4 if quantized else QuantizationMode.none,
        rank=8,
        target_modules=TARGETS,
        dropout=dropout,
        seq_len=SEQ,
        micro_batch=BATCH,
        gradient_checkpointing=False,
    )
    terms = estimate_memory(arch, shape, Assumptions()).breakdown_gib
    return (terms["activations"] + terms["lora_dropout"]) * 1024**3


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_activation_estimate_matches_saved_tensors(checkpoint: Path, dropout: float) -> None:
    measured = {q: saved_activation_bytes(peft_model(checkpoint, q, dropout)) for q in (0, 1)}
    ours = {q: estimated_bytes(checkpoint, bool(q), dropout) for q in (0, 1)}
    for q in (0, 1):
        assert 0.97 <= ours[q] / measured[q] <= 1.25, (q, ours[q], measured[q])
    # QLoRA saves more than LoRA (its MLP tensors are fp32), and the estimate says by how much
    extra_measured, extra_ours = measured[1] - measured[0], ours[1] - ours[0]
    assert extra_measured > 0
    assert extra_ours == pytest.approx(extra_measured, rel=0.15)
