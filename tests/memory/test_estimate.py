"""Internal consistency of the memory terms: each knob moves the estimate the right way."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lora_contract.types import Attention, Optimizer, QuantizationMode, Strategy
from lora_operator.memory import (
    TERM_HELP,
    Architecture,
    Assumptions,
    TrainingShape,
    estimate_memory,
    load_architecture,
)
from lora_operator.memory.estimate import DPO_TERMS


@pytest.fixture(scope="module")
def llama8b() -> Architecture:
    return load_architecture("meta-llama/Llama-3.1-8B", None)


BASE = TrainingShape()


def peak(arch: Architecture, **changes: object) -> float:
    return estimate_memory(arch, replace(BASE, **changes)).peak_allocated_gib  # type: ignore[arg-type]


def term(arch: Architecture, name: str, **changes: object) -> float:
    shape = replace(BASE, **changes)  # type: ignore[arg-type]
    return estimate_memory(arch, shape).breakdown_gib[name]


def test_terms_are_documented_and_sum_to_the_peak(llama8b: Architecture) -> None:
    est = estimate_memory(llama8b, BASE)
    assert set(est.breakdown_gib) == set(TERM_HELP) - set(DPO_TERMS)  # DPO's only with DPO
    assert sum(est.breakdown_gib.values()) == pytest.approx(est.peak_gib, abs=0.01)
    assert est.peak_gib > est.peak_allocated_gib
    dpo = estimate_memory(llama8b, replace(BASE, preference=True))
    assert set(dpo.breakdown_gib) == set(TERM_HELP)
    assert sum(dpo.breakdown_gib.values()) == pytest.approx(dpo.peak_gib, abs=0.01)


@pytest.mark.parametrize(
    ("knob", "low", "high"),
    [("seq_len", 1024, 4096), ("micro_batch", 1, 4), ("rank", 8, 128)],
)
def test_monotonic(llama8b: Architecture, knob: str, low: int, high: int) -> None:
    assert peak(llama8b, **{knob: low}) < peak(llama8b, **{knob: high})


def test_bf16_weights_are_two_bytes_per_parameter(llama8b: Architecture) -> None:
    assert term(llama8b, "weights") == pytest.approx(8_030_261_248 * 2 / 1024**3, abs=0.001)


def test_nf4_lt_int8_lt_bf16(llama8b: Architecture) -> None:
    nf4 = term(llama8b, "weights", quantization=QuantizationMode.nf4)
    int8 = term(llama8b, "weights", quantization=QuantizationMode.int8)
    bf16 = term(llama8b, "weights")
    assert nf4 < int8 < bf16


def test_double_quant_saves_about_0_37_gb_on_7b() -> None:
    arch = load_architecture("mistralai/Mistral-7B-v0.1", None)
    single = term(arch, "weights", quantization=QuantizationMode.nf4, double_quant=False)
    double = term(arch, "weights", quantization=QuantizationMode.nf4, double_quant=True)
    saved_gb = (single - double) * 1024**3 / 1e9
    assert 0.3 < saved_gb < 0.45  # the QLoRA paper: ~0.37 GB for a 7B (65B: ~3 GB)


def test_checkpointing_reduces_activations(llama8b: Architecture) -> None:
    with_ckpt = term(llama8b, "activations", gradient_checkpointing=True)
    without = term(llama8b, "activations", gradient_checkpointing=False)
    assert with_ckpt * 5 < without


def test_eager_attention_adds_quadratic_scores(llama8b: Architecture) -> None:
    assert term(llama8b, "attention_scores") == 0
    short = term(llama8b, "attention_scores", attention=Attention.eager, seq_len=1024)
    long = term(llama8b, "attention_scores", attention=Attention.eager, seq_len=2048)
    assert long == pytest.approx(4 * short, rel=0.01)


def test_dropout_copies_and_logits(llama8b: Architecture) -> None:
    # without dropout, lora_A still saves its input: autocast's bf16 copy of each fp32-adapter
    # input, or (bf16 adapters) the inputs the modules share, once
    no_dropout = term(llama8b, "lora_dropout", dropout=0.0)
    assert 0 < no_dropout < term(llama8b, "lora_dropout", dropout=0.1)
    bf16_adapters = Assumptions(adapter_bytes=2.0)
    shared = estimate_memory(llama8b, replace(BASE, dropout=0.0), bf16_adapters)
    assert 0 < shared.breakdown_gib["lora_dropout"] < no_dropout
    shape = replace(BASE, seq_len=4096)
    chunked = estimate_memory(llama8b, replace(shape, chunked_loss=True))
    assert (
        0
        < chunked.breakdown_gib["logits"]
        < estimate_memory(llama8b, shape).breakdown_gib["logits"] / 10
    )
    # 128k vocabulary: the logits dominate activations at 4k tokens
    full = estimate_memory(llama8b, shape).breakdown_gib
    assert full["logits"] > full["activations"]


def test_optimizer_bytes(llama8b: Architecture) -> None:
    adam = term(llama8b, "optimizer")
    eight_bit = term(llama8b, "optimizer", optimizer=Optimizer.adamw_8bit)
    assert adam == pytest.approx(4 * eight_bit, rel=0.02)


def test_zero3_shards_weights_and_zero2_does_not(llama8b: Architecture) -> None:
    one = term(llama8b, "weights")
    zero3 = term(llama8b, "weights", strategy=Strategy.deepspeed_zero3, data_parallel=8)
    zero2 = term(llama8b, "weights", strategy=Strategy.deepspeed_zero2, data_parallel=8)
    assert zero3 == pytest.approx(one / 8, rel=0.01)
    assert zero2 == one
    opt2 = term(llama8b, "optimizer", strategy=Strategy.deepspeed_zero2, data_parallel=8)
    assert opt2 == pytest.approx(term(llama8b, "optimizer") / 8, rel=0.05)


def test_offload_moves_optimizer_and_params_to_host(llama8b: Architecture) -> None:
    shape = replace(BASE, strategy=Strategy.deepspeed_zero3, data_parallel=4)
    on_gpu = estimate_memory(llama8b, shape)
    offloaded = estimate_memory(llama8b, replace(shape, offload_cpu=True))
    assert offloaded.peak_gib < on_gpu.peak_gib
    assert offloaded.breakdown_gib["optimizer"] == 0
    assert on_gpu.host_offload_gib == 0 and offloaded.host_offload_gib > 0  # not a default


def test_mlp_activations_follow_the_mlp_and_its_activation(llama8b: Architecture) -> None:
    """Frozen linears save no input: a gated MLP saves gate, act(gate) and up; a plain one only
    its activation's input, unless the activation is HF's Python GELU (four intermediates)."""
    shape = replace(BASE, gradient_checkpointing=False)
    plain = replace(llama8b, mlp_gated=False, hidden_act="gelu")
    composite = replace(plain, hidden_act="gelu_new")

    def activations(arch: Architecture, assumptions: Assumptions | None = None) -> float:
        return estimate_memory(arch, shape, assumptions).breakdown_gib["activations"]

    tokens = shape.micro_batch * shape.seq_len
    width_gib = tokens * llama8b.num_layers * llama8b.intermediate_size * 2 / 1024**3
    assert activations(llama8b) - activations(plain) == pytest.approx(2 * width_gib)
    assert activations(composite) - activations(plain) == pytest.approx(3 * width_gib)
    fused = Assumptions(fused_activations=True)
    assert activations(composite, fused) == pytest.approx(activations(plain))
