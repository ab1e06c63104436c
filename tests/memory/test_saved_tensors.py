"""The activation terms against a real measurement: the bytes autograd saves for backward in one
forward pass of the trainer's own code path (transformers + PEFT, bitsandbytes NF4 prepared by
`lora_trainer.model.prepare_quantized_model`, bf16 autocast, the loss of `lora_trainer.loss`
chunked or not), on the CPU, for a small random Llama.

Counted: every distinct storage a saved-tensor hook sees whose leading dimension is per token,
parameters excluded. Unchunked, the logits (and their fp32 copy) are left out: the estimate's
`logits` term also counts their gradient. Chunked, the labelled hidden states the loss keeps for
its recomputation are counted against the kept part of that term (its chunk buffers are transient,
measured by the trainer-memory bench). The small differences that remain are the estimate's
deliberately kept extras (the layer input, the embedding output, dropout's mask).
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
from lora_devkit.bench.trainer_memory import SMALL_LLAMA, TARGETS
from lora_operator.memory import Assumptions, TrainingShape, estimate_memory, load_architecture
from lora_operator.memory.estimate import GIB, LOSS_CHUNK_LOGIT_ELEMENTS, loss_chunk_positions
from lora_trainer.loss import CHUNK_LOGIT_ELEMENTS, LossPath, lean_forward_loss
from lora_trainer.model import prepare_quantized_model

from .conftest import save_random_llama

CONFIG = SMALL_LLAMA  # the trainer-memory benchmark's small model
BATCH, SEQ = 2, 256


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_llama(tmp_path_factory.mktemp("llama"), CONFIG)


def peft_model(checkpoint: Path, quantized: bool, dropout: float) -> Any:
    """As the trainer builds it (lora_trainer/model.py): bf16 base, NF4 + double quant without
    any upcast for QLoRA, PEFT's default fp32 adapters."""
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
        model = prepare_quantized_model(model)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS), lora_dropout=dropout)
    return peft.get_peft_model(model, config)


def training_forward(model: Any, ids: Any, chunked: bool) -> Any:
    """One forward + loss as `lora_trainer.loss.LeanLossTrainer` runs it (or the stock path)."""
    return lean_forward_loss(model, ids, ids, LossPath.chunked if chunked else LossPath.standard)


def saved_activation_bytes(model: Any, chunked: bool) -> int:
    """Bytes of the distinct per-token tensors saved for backward in one training forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    vocab = CONFIG["vocab_size"]
    seen: dict[int, int] = {}
    labelled = BATCH * (SEQ - 1)  # the chunked loss keeps the hidden states of these positions

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        per_token = tensor.dim() >= 2 and tensor.shape[0] in (BATCH, BATCH * SEQ, labelled)
        if per_token and tensor.shape[-1] != vocab and storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    model.train()
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        training_forward(model, ids, chunked)
    return sum(seen.values())


def estimated_bytes(checkpoint: Path, quantized: bool, dropout: float, chunked: bool) -> float:
    arch = load_architecture("small-llama", str(checkpoint / "arch.json"))
    shape = TrainingShape(
        quantization=QuantizationMode.nf4 if quantized else QuantizationMode.none,
        rank=8,
        target_modules=TARGETS,
        dropout=dropout,
        seq_len=SEQ,
        micro_batch=BATCH,
        gradient_checkpointing=False,
        chunked_loss=chunked,
    )
    terms = estimate_memory(arch, shape, Assumptions()).breakdown_gib
    kept_by_loss = 0.0
    if chunked:  # the `logits` term less its transient chunk buffers
        chunk = min(BATCH * SEQ, loss_chunk_positions(arch.vocab_size))
        buffers = chunk * arch.vocab_size * Assumptions().logits_bytes_per_element
        kept_by_loss = terms["logits"] - buffers / GIB
    return (terms["activations"] + terms["lora_dropout"] + kept_by_loss) * GIB


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_activation_estimate_matches_saved_tensors(
    checkpoint: Path, dropout: float, chunked: bool
) -> None:
    measured = {
        q: saved_activation_bytes(peft_model(checkpoint, q, dropout), chunked) for q in (0, 1)
    }
    ours = {q: estimated_bytes(checkpoint, bool(q), dropout, chunked) for q in (0, 1)}
    for q in (0, 1):
        assert 0.97 <= ours[q] / measured[q] <= 1.25, (q, ours[q], measured[q])
    # Without the fp32 upcast QLoRA saves exactly what LoRA saves, and the estimate agrees
    assert measured[1] == measured[0]
    assert ours[1] == pytest.approx(ours[0], abs=1024**2 / 1000)  # the breakdown's rounding


def test_the_plan_and_the_trainer_chunk_the_loss_alike() -> None:
    assert LOSS_CHUNK_LOGIT_ELEMENTS == CHUNK_LOGIT_ELEMENTS
