"""The `weights` term in absolute bytes, against what bitsandbytes itself stores.

A small random Llama is loaded the way the trainer loads it (bf16; NF4 with or without double
quantization; LLM.int8), k-bit models then go through `prepare_quantized_model`, and the
bytes of every parameter and quantization state are added up: packed 4-bit data, the per-block
absmax (uint8 under double quantization, plus the fp32 second-level absmax and offset), int8 data
plus one fp32 scale per row (`SCB`). The shared 16- and 256-entry lookup tables are not counted
(a few KB per model). The estimate must agree within 1%: a wrong bytes-per-parameter (0.75 for NF4
instead of 0.5, say) or a missing absmax is tens of percent off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bitsandbytes  # noqa: F401  (the NF4/int8 layers below; CPU kernels suffice)
import pytest
import torch
import transformers

from lora_contract.types import QuantizationMode
from lora_operator.memory import Assumptions, TrainingShape, estimate_memory, load_architecture
from lora_operator.memory.estimate import weight_bytes
from lora_trainer.model import prepare_quantized_model

from .conftest import save_random_llama

CONFIG = {
    "model_type": "llama",
    "hidden_size": 512,
    "intermediate_size": 1792,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "max_position_embeddings": 1024,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_llama(tmp_path_factory.mktemp("llama-weights"), CONFIG)


def load(checkpoint: Path, mode: QuantizationMode, double_quant: bool) -> Any:
    options: dict[str, Any] = {"dtype": torch.bfloat16}
    if mode == QuantizationMode.nf4:
        options["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    elif mode == QuantizationMode.int8:
        options["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, **options)
    if mode != QuantizationMode.none:
        model = prepare_quantized_model(model)
    return model


def nbytes(tensor: Any) -> int:
    return int(tensor.numel() * tensor.element_size())


def stored_bytes(model: Any) -> dict[str, int]:
    """Bytes per kind of storage, each parameter counted once (tied weights share one)."""
    totals = {"packed": 0, "absmax": 0, "row_scales": 0, "unquantized": 0}
    seen: set[int] = set()
    for param in model.parameters():
        if param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        state = getattr(param, "quant_state", None)
        if state is not None:  # bitsandbytes Params4bit
            totals["packed"] += nbytes(param.data)
            totals["absmax"] += nbytes(state.absmax)
            if state.nested:
                totals["absmax"] += nbytes(state.state2.absmax) + nbytes(state.offset)
        elif getattr(param, "SCB", None) is not None:  # bitsandbytes Int8Params
            totals["packed"] += nbytes(param.data)
            totals["row_scales"] += nbytes(param.SCB)
        else:
            totals["unquantized"] += nbytes(param.data)
    return totals


def estimated_weight_bytes(checkpoint: Path, mode: QuantizationMode, double_quant: bool) -> float:
    """The term as `estimate_memory` uses it (its breakdown is rounded to MiB for display)."""
    arch = load_architecture("small-llama", str(checkpoint / "arch.json"))
    shape = TrainingShape(quantization=mode, double_quant=double_quant, rank=8)
    exact = weight_bytes(arch, shape, Assumptions())
    shown = estimate_memory(arch, shape, Assumptions()).breakdown_gib["weights"] * 1024**3
    assert shown == pytest.approx(exact, abs=0.001 * 1024**3)
    return exact


@pytest.mark.parametrize(
    ("mode", "double_quant"),
    [
        (QuantizationMode.none, False),
        (QuantizationMode.nf4, True),
        (QuantizationMode.nf4, False),
        (QuantizationMode.int8, False),
    ],
)
def test_weights_term_matches_bitsandbytes_storage(
    checkpoint: Path, mode: QuantizationMode, double_quant: bool
) -> None:
    measured = stored_bytes(load(checkpoint, mode, double_quant))
    ours = estimated_weight_bytes(checkpoint, mode, double_quant)
    assert ours == pytest.approx(sum(measured.values()), rel=0.01), measured


def test_nf4_storage_is_half_a_byte_per_weight_plus_block_absmax(checkpoint: Path) -> None:
    """The model's NF4 constants, checked on their own against bitsandbytes' layout."""
    arch = load_architecture("small-llama", str(checkpoint / "arch.json"))
    plain = stored_bytes(load(checkpoint, QuantizationMode.nf4, double_quant=False))
    double = stored_bytes(load(checkpoint, QuantizationMode.nf4, double_quant=True))
    assert plain["packed"] == arch.quantizable_params // 2
    assert plain["absmax"] == arch.quantizable_params // 64 * 4  # fp32 per block of 64
    assert double["packed"] == plain["packed"]
    assert double["absmax"] < plain["absmax"] / 3.5  # uint8 per block + fp32 per 256 blocks
    # the trainer leaves embeddings, norms and lm_head in the compute dtype (bf16), not fp32
    assert plain["unquantized"] == (arch.total_params - arch.quantizable_params) * 2
