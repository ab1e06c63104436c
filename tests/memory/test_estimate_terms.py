"""Each memory term of a tiny hand-written model, computed by hand from first principles.

The models are small enough to count every parameter on paper:

TINY (llama): hidden 64, intermediate 176, 2 layers, 4 heads of 16 (q 64 wide), 2 KV heads
(k/v 32 wide), vocab 1000, untied lm_head.
  embeddings 1000*64 = 64,000; lm_head 64*1000 = 64,000; final norm 64
  per layer: q 64*64 = 4,096, k 64*32 = 2,048, v 2,048, o 4,096 (attention 12,288);
             gate 64*176 = 11,264, up 11,264, down 176*64 = 11,264 (MLP 33,792); 2 norms 128
             = 46,208 parameters
  total 64,000 + 64,000 + 64 + 2*46,208 = 220,480
  quantizable (decoder linears) 2*(12,288 + 33,792) = 92,160, kept 16-bit 128,320
  output rows of those linears 2*(64 + 32 + 32 + 64 + 176 + 176 + 64) = 1,216

Byte counts are compared exactly (to a thousandth of a byte) wherever the module gives them
unrounded: `weight_bytes`, `activation_terms`, `lora_param_count`, and `peak_allocated_gib`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lora_contract.types import Attention, ComputeDtype, Optimizer, QuantizationMode, Strategy
from lora_operator.memory import (
    Architecture,
    Assumptions,
    PlanningError,
    TrainingShape,
    estimate_memory,
    load_architecture,
)
from lora_operator.memory.estimate import (
    activation_terms,
    lora_param_count,
    loss_chunk_positions,
    targeted_linears,
    weight_bytes,
)

from .conftest import HAND_LLAMA

GIB = 1024**3
BYTE = 1e-3  # tolerance on byte counts: exact up to float noise

TINY = HAND_LLAMA
# Mixtral-style MoE with the same attention and 2 fused experts per layer (each gate/up/down as
# above): top-1 routing on one layer, and top-2 routing on two layers.
MOE_TOP1: dict[str, Any] = {
    **TINY,
    "model_type": "mixtral",
    "num_hidden_layers": 1,
    "num_local_experts": 2,
    "num_experts_per_tok": 1,
}
MOE_TOP2: dict[str, Any] = {**MOE_TOP1, "num_hidden_layers": 2, "num_experts_per_tok": 2}

QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")
# The default shape: bf16, r=16 on q/k/v/o, dropout 0.05, 2048 tokens, checkpointing, SDPA.
BASE = TrainingShape()
TOKENS = 2048


def _load(tmp: Path, name: str, config: dict[str, Any]) -> Architecture:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    return load_architecture(name, str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Architecture:
    return _load(tmp_path_factory.mktemp("tiny"), "tiny-llama-64", TINY)


@pytest.fixture(scope="module")
def moe1(tmp_path_factory: pytest.TempPathFactory) -> Architecture:
    return _load(tmp_path_factory.mktemp("moe1"), "tiny-moe-top1", MOE_TOP1)


@pytest.fixture(scope="module")
def moe2(tmp_path_factory: pytest.TempPathFactory) -> Architecture:
    return _load(tmp_path_factory.mktemp("moe2"), "tiny-moe-top2", MOE_TOP2)


def shape(**changes: Any) -> TrainingShape:
    return replace(BASE, **changes)


def test_the_tiny_model_counts_as_derived_by_hand(tiny: Architecture) -> None:
    assert tiny.total_params == 220_480
    assert tiny.quantizable_params == 92_160
    assert tiny.unquantized_params == 128_320
    assert tiny.quantizable_rows == 1_216
    assert tiny.largest_layer_params == 46_208
    assert (tiny.head_dim, tiny.num_layers, tiny.experts_per_token) == (16, 2, 0)


# ------------------------------------------------------------------------------ base weights


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # 16-bit: every parameter in the compute dtype, 2 bytes
        ({}, 220_480 * 2),
        # fp32 compute: 4 bytes
        ({"compute_dtype": ComputeDtype.fp32}, 220_480 * 4),
        # LLM.int8: 1 byte per quantized weight + one fp32 scale per output row; the trainer
        # keeps the rest in the compute dtype (no fp32 upcast): 2 bytes
        ({"quantization": QuantizationMode.int8}, 92_160 * 1 + 1_216 * 4 + 128_320 * 2),
        # NF4 without double quant: half a byte per weight + an fp32 absmax per block of 64
        (
            {"quantization": QuantizationMode.nf4, "double_quant": False},
            92_160 * 0.5 + (92_160 / 64) * 4 + 128_320 * 2,
        ),
        # NF4 with double quant: absmax as 1 byte each, plus an fp32 constant per 256 absmaxes
        (
            {"quantization": QuantizationMode.nf4},
            92_160 * 0.5 + (92_160 / 64) * 1 + (92_160 / 64 / 256) * 4 + 128_320 * 2,
        ),
    ],
)
def test_weight_bytes(tiny: Architecture, changes: dict[str, Any], expected: float) -> None:
    assert weight_bytes(tiny, shape(**changes), Assumptions()) == pytest.approx(expected, abs=BYTE)


def test_quantized_rest_follows_the_upcast_assumption(tiny: Architecture) -> None:
    # with peft's fp32 upcast (kbit_upcast_bytes 4) the 128,320 non-quantized take 4 bytes
    upcast = Assumptions(kbit_upcast_bytes=4.0)
    int8 = weight_bytes(tiny, shape(quantization=QuantizationMode.int8), upcast)
    assert int8 == pytest.approx(92_160 + 1_216 * 4 + 128_320 * 4, abs=BYTE)


# ------------------------------------------------------------------------------ LoRA size


def test_lora_parameters_are_r_times_in_plus_out(tiny: Architecture, moe1: Architecture) -> None:
    # r=16 on q (64->64), k (64->32), v (64->32), o (64->64), 2 layers
    qkvo = 2 * 16 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64))
    assert lora_param_count(tiny, QKVO, 16, False) == qkvo == 14_336
    # DoRA adds one magnitude per output feature of each adapted matrix
    assert lora_param_count(tiny, QKVO, 16, True) == qkvo + 2 * (64 + 32 + 32 + 64)
    # all-linear adds gate/up (64->176) and down (176->64), never lm_head
    all_linear = 2 * 8 * ((64 + 64) + 2 * (64 + 32) + (64 + 64) + 3 * (64 + 176))
    assert lora_param_count(tiny, ("all-linear",), 8, False) == all_linear
    # lm_head only by name: 64 -> 1000 (DoRA: + 1000 magnitudes)
    assert lora_param_count(tiny, ("lm_head",), 4, False) == 4 * (64 + 1000)
    assert lora_param_count(tiny, ("lm_head",), 4, True) == 4 * (64 + 1000) + 1000
    # fused experts (one layer, 2 experts): w1 is 64 -> 176 per expert, one adapter each
    assert lora_param_count(moe1, ("w1",), 8, False) == 2 * 8 * (64 + 176)
    assert lora_param_count(moe1, ("w1",), 8, True) == 2 * 8 * (64 + 176) + 2 * 176


def test_unknown_targets_are_refused_with_the_model_s_modules(tiny: Architecture) -> None:
    modules = "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"
    with pytest.raises(PlanningError) as none_found:
        targeted_linears(tiny, ("query",))
    assert str(none_found.value) == (
        "spec.lora.targetModules: none of ['query'] is a linear module of this model; its "
        f"modules are {modules} (or use ['all-linear'])"
    )
    with pytest.raises(PlanningError) as one_missing:
        targeted_linears(tiny, ("q_proj", "query"))
    assert str(one_missing.value) == (
        f"spec.lora.targetModules: ['query'] not found in this model; its modules are {modules}"
    )


def test_a_model_without_lm_head_linear_still_resolves_targets(tiny: Architecture) -> None:
    headless = replace(tiny, head=None)
    assert len(targeted_linears(headless, ("q_proj",))) == 2
    with pytest.raises(PlanningError, match="none of"):
        targeted_linears(headless, ("lm_head",))


# ------------------------------------------------------------------------------ activations

# Per token and layer, bf16 (cb = 2), frozen linears saving no input:
#   2 RMSNorm inputs in fp32          2 * 64 * 4         = 512
#   q, k, v after rotary              (64 + 2 * 32) * 2  = 256
#   attention output                  64 * 2             = 128
#   log-sum-exp, fp32 per head        4 * 4              = 16
#   SwiGLU: gate, act(gate), up       3 * 176 * 2        = 1,056
#   the layer input                   64 * 2             = 128
PER_TOKEN_LAYER_BF16 = 512 + 256 + 128 + 16 + 1_056 + 128  # 2,096
EMBED_AND_FINAL_NORM = 2 * 64 * 4  # fp32 embedding output and final norm input, per token


def test_activations_with_and_without_checkpointing(tiny: Architecture) -> None:
    # checkpointing: each of the 2 layers keeps its bf16 input (64*2), one layer is recomputed
    ckpt = activation_terms(tiny, BASE, Assumptions())["activations"]
    expected = TOKENS * (2 * 64 * 2 + PER_TOKEN_LAYER_BF16 + EMBED_AND_FINAL_NORM)
    assert ckpt == pytest.approx(expected, abs=BYTE)
    # without: both layers' full working sets
    full = activation_terms(tiny, shape(gradient_checkpointing=False), Assumptions())
    expected = TOKENS * (2 * PER_TOKEN_LAYER_BF16 + EMBED_AND_FINAL_NORM)
    assert full["activations"] == pytest.approx(expected, abs=BYTE)


def test_kbit_training_saves_what_lora_saves_without_the_upcast(tiny: Architecture) -> None:
    # NF4 + bf16 compute, no fp32 upcast (the trainer): the same bf16 tensors as plain LoRA
    nf4 = shape(quantization=QuantizationMode.nf4)
    terms = activation_terms(tiny, nf4, Assumptions())
    assert terms == activation_terms(tiny, BASE, Assumptions())
    # with peft's upcast the MLP's saved tensors (3 * 176) and the checkpointed layer inputs
    # are fp32 (4 bytes); attention's saved tensors stay bf16
    per_layer = 512 + 256 + 128 + 16 + 3 * 176 * 4 + 128
    upcast = activation_terms(tiny, nf4, Assumptions(kbit_upcast_bytes=4.0))
    expected = TOKENS * (2 * 64 * 4 + per_layer + EMBED_AND_FINAL_NORM)
    assert upcast["activations"] == pytest.approx(expected, abs=BYTE)


def test_old_bitsandbytes_keeps_every_4bit_linear_input(tiny: Architecture) -> None:
    # bitsandbytes < 0.43.2 (the LitGPT rows' pin): attention input (64) and output (64), MLP
    # input (64) and inner activation (176) per layer, bf16, for both layers without
    # checkpointing; nothing for a bf16 model, and the adapters' shared inputs are those tensors
    old = Assumptions(adapter_bytes=2.0, kbit_saves_input=True)
    nf4 = shape(quantization=QuantizationMode.nf4, gradient_checkpointing=False, dropout=0.0)
    now = activation_terms(tiny, nf4, Assumptions(adapter_bytes=2.0))
    then = activation_terms(tiny, nf4, old)
    extra = TOKENS * 2 * (64 + 64 + 64 + 176) * 2
    assert then["activations"] - now["activations"] == pytest.approx(extra, abs=BYTE)
    assert now["lora_dropout"] == pytest.approx(TOKENS * 2 * 64 * 2, abs=BYTE)  # q/k/v input
    assert then["lora_dropout"] == 0.0
    bf16 = replace(nf4, quantization=QuantizationMode.none)
    assert activation_terms(tiny, bf16, old) == activation_terms(
        tiny, bf16, Assumptions(adapter_bytes=2.0)
    )


def test_fp32_compute_doubles_the_16_bit_tensors(tiny: Architecture) -> None:
    # cb = 4: norms 512, qkv (64 + 64) * 4, attention output 64 * 4, lse 16, MLP 3 * 176 * 4,
    # layer input 64 * 4; checkpointed layer inputs 64 * 4
    per_layer = 512 + 128 * 4 + 64 * 4 + 16 + 3 * 176 * 4 + 64 * 4
    terms = activation_terms(tiny, shape(compute_dtype=ComputeDtype.fp32), Assumptions())
    assert terms["activations"] == pytest.approx(
        TOKENS * (2 * 64 * 4 + per_layer + EMBED_AND_FINAL_NORM), abs=BYTE
    )
    # fp32 adapters in an fp32 model: no autocast copy, just the dropout output (4) + mask (1)
    # of each of q/k/v/o's 64-wide inputs, one layer live
    assert terms["lora_dropout"] == pytest.approx(TOKENS * 4 * 64 * (4 + 1), abs=BYTE)


def test_moe_mlp_saves_one_working_set_per_active_expert(moe2: Architecture) -> None:
    # top-2: each token's MLP tensors exist for 2 experts: 3 * (2 * 176) * 2 bytes
    per_layer = 512 + 256 + 128 + 16 + 3 * 2 * 176 * 2 + 128
    terms = activation_terms(moe2, shape(gradient_checkpointing=False), Assumptions())
    assert terms["activations"] == pytest.approx(
        TOKENS * (2 * per_layer + EMBED_AND_FINAL_NORM), abs=BYTE
    )


@pytest.mark.parametrize(("checkpointing", "layers_live"), [(True, 1), (False, 2)])
def test_eager_attention_scores(tiny: Architecture, checkpointing: bool, layers_live: int) -> None:
    # fp32 softmax (4 bytes) + its bf16 copy (2) per head and query-key pair, per live layer
    eager = shape(attention=Attention.eager, seq_len=512, gradient_checkpointing=checkpointing)
    scores = activation_terms(tiny, eager, Assumptions())["attention_scores"]
    assert scores == pytest.approx(1 * 4 * 512**2 * (4 + 2) * layers_live, abs=BYTE)
    sdpa = shape(seq_len=512, gradient_checkpointing=checkpointing)
    assert activation_terms(tiny, sdpa, Assumptions())["attention_scores"] == 0


def test_logits_in_fp32_with_their_gradient(tiny: Architecture) -> None:
    # 2 sequences of 1024 tokens: b*s*vocab, 12 bytes each (bf16 + fp32 copy + fp32 log-softmax
    # + grad)
    two = shape(micro_batch=2, seq_len=1024)
    assert activation_terms(tiny, two, Assumptions())["logits"] == 2 * 1024 * 1000 * 12
    # LitGPT's list of bf16 logit chunks + bf16 log-softmax: 4 bytes each
    litgpt = Assumptions(logits_bytes_per_element=4.0)
    assert activation_terms(tiny, two, litgpt)["logits"] == 2 * 1024 * 1000 * 4


def test_chunked_loss_keeps_the_hidden_states_and_one_chunk(tiny: Architecture) -> None:
    # the labelled hidden states (64 wide, bf16) + one chunk of 2**25 // 1000 = 33,554 positions
    # (all 2,048 here) x vocab x 12 bytes
    chunked = shape(micro_batch=2, seq_len=1024, chunked_loss=True)
    assert activation_terms(tiny, chunked, Assumptions())["logits"] == 2048 * 64 * 2 + (
        2048 * 1000 * 12
    )
    # a 128k vocabulary at 2 x 2048: 261 positions per chunk instead of 4,096
    assert loss_chunk_positions(128_256) == 261


# q/k/v/o read 64-wide inputs: 4 * 64 = 256 input elements per token and layer
QKVO_INPUTS = 4 * 64


@pytest.mark.parametrize(
    ("checkpointing", "dropout", "adapter_bytes", "per_token_bytes"),
    [
        # dropout: each module's fp32 dropout output (4) + mask (1) + autocast's bf16 copy (2)
        (True, 0.05, 4.0, QKVO_INPUTS * (4 + 1 + 2)),
        (False, 0.05, 4.0, 2 * QKVO_INPUTS * (4 + 1 + 2)),
        # no dropout, fp32 adapters: autocast's bf16 copy of each module's input
        (True, 0.0, 4.0, QKVO_INPUTS * 2),
        (False, 0.0, 4.0, 2 * QKVO_INPUTS * 2),
        # bf16 adapters with dropout: no cast copy, dropout output (2) + mask (1)
        (True, 0.05, 2.0, QKVO_INPUTS * (2 + 1)),
        # bf16 adapters, no dropout: q/k/v share the norm's output (64, once); o_proj reads
        # what attention saved already
        (True, 0.0, 2.0, 64 * 2),
        (False, 0.0, 2.0, 2 * 64 * 2),
    ],
)
def test_lora_dropout_copies(
    tiny: Architecture,
    checkpointing: bool,
    dropout: float,
    adapter_bytes: float,
    per_token_bytes: int,
) -> None:
    job = shape(dropout=dropout, gradient_checkpointing=checkpointing)
    terms = activation_terms(tiny, job, Assumptions(adapter_bytes=adapter_bytes))
    assert terms["lora_dropout"] == pytest.approx(TOKENS * per_token_bytes, abs=BYTE)


@pytest.mark.parametrize(
    ("targets", "width"),
    [
        (("o_proj",), 0),  # reads attention's saved output: nothing extra
        (("down_proj",), 176),  # the MLP's inner activation
        (("gate_proj", "up_proj"), 64),  # both read the MLP norm's output
        (("all-linear",), 64 + 64 + 176),  # attention input, MLP input, MLP inner, once each
    ],
)
def test_shared_adapter_inputs_are_counted_once(
    tiny: Architecture, targets: tuple[str, ...], width: int
) -> None:
    # bf16 adapters without dropout: lora_A saves its (bf16) input, one layer live
    job = shape(dropout=0.0, target_modules=targets)
    terms = activation_terms(tiny, job, Assumptions(adapter_bytes=2.0))
    assert terms["lora_dropout"] == pytest.approx(TOKENS * width * 2, abs=BYTE)


def test_lm_head_adapter_input_without_checkpointing(tiny: Architecture) -> None:
    # lm_head reads the final norm's 64-wide output, which nothing else keeps: saved once
    job = shape(dropout=0.0, target_modules=("lm_head",), gradient_checkpointing=False)
    terms = activation_terms(tiny, job, Assumptions(adapter_bytes=2.0))
    assert terms["lora_dropout"] == pytest.approx(TOKENS * 64 * 2, abs=BYTE)


def test_lm_head_adapter_input_with_checkpointing(tiny: Architecture) -> None:
    """lm_head runs outside the checkpointed layers: its adapter's whole input stays alive (was
    counted as 1/num_layers of it before this test found it)."""
    job = shape(dropout=0.0, target_modules=("lm_head",))
    terms = activation_terms(tiny, job, Assumptions(adapter_bytes=2.0))
    assert terms["lora_dropout"] == pytest.approx(TOKENS * 64 * 2, abs=BYTE)


def test_expert_adapters_read_one_input_per_active_expert(
    moe1: Architecture, moe2: Architecture
) -> None:
    bf16 = Assumptions(adapter_bytes=2.0)
    # top-1, one layer: gate_up_proj's adapter reads the 64-wide routed input once per token
    top1 = shape(dropout=0.0, target_modules=("gate_up_proj",))
    assert activation_terms(moe1, top1, bf16)["lora_dropout"] == pytest.approx(
        TOKENS * 64 * 2, abs=BYTE
    )
    # top-2: twice per token (each active expert's adapter keeps its own input); w2 reads the
    # 176-wide inner activation of each active expert
    top2 = shape(dropout=0.0, target_modules=("gate_up_proj", "w2"))
    assert activation_terms(moe2, top2, bf16)["lora_dropout"] == pytest.approx(
        TOKENS * 2 * (64 + 176) * 2, abs=BYTE
    )
    # with dropout (fp32 adapters): the dense q_proj once per token, w1 once per active expert,
    # each 64 wide, fp32 output + mask + bf16 copy; one layer live
    mixed = shape(target_modules=("q_proj", "w1"))
    assert activation_terms(moe2, mixed, Assumptions())["lora_dropout"] == pytest.approx(
        TOKENS * (64 + 2 * 64) * (4 + 1 + 2), abs=BYTE
    )


# ------------------------------------------------------------------------------ whole estimate

LORA = 14_336  # r=16 on q/k/v/o (test_lora_parameters_are_r_times_in_plus_out)
WEIGHTS_BF16 = 220_480 * 2
ACTIVATIONS = TOKENS * (2 * 64 * 2 + PER_TOKEN_LAYER_BF16 + EMBED_AND_FINAL_NORM)
DROPOUT = TOKENS * QKVO_INPUTS * (4 + 1 + 2)
LOGITS = TOKENS * 1000 * 12
SAVED = ACTIVATIONS + DROPOUT + LOGITS


def allocated_bytes(arch: Architecture, job: TrainingShape, a: Assumptions | None = None) -> float:
    return estimate_memory(arch, job, a).peak_allocated_gib * GIB


@pytest.mark.parametrize(
    ("changes", "model_states"),
    [
        # one rank: weights + fp32 adapters (4 B) + fp32 grads (4 B) + AdamW's 2 fp32 moments
        ({}, WEIGHTS_BF16 + LORA * (4 + 4 + 8)),
        # DDP with 2 ranks: the gradient buckets hold a second copy of the gradients
        ({"data_parallel": 2}, WEIGHTS_BF16 + LORA * (4 + 2 * 4 + 8)),
        # data_parallel 0 means one rank
        ({"data_parallel": 0}, WEIGHTS_BF16 + LORA * (4 + 4 + 8)),
        # 8-bit Adam: 2 bytes of state per parameter
        ({"optimizer": Optimizer.adamw_8bit}, WEIGHTS_BF16 + LORA * (4 + 4 + 2)),
        ({"optimizer": Optimizer.paged_adamw_32bit}, WEIGHTS_BF16 + LORA * (4 + 4 + 8)),
        # ZeRO-2 on 4 ranks shards gradients and optimizer states, not weights or adapters
        (
            {"strategy": Strategy.deepspeed_zero2, "data_parallel": 4},
            WEIGHTS_BF16 + LORA * (4 + (4 + 8) / 4),
        ),
        # ZeRO-3 on 4 ranks shards the weights and adapters too, and gathers 2 full layers
        # (46,208 parameters, 2 bytes each) at a time
        (
            {"strategy": Strategy.deepspeed_zero3, "data_parallel": 4},
            WEIGHTS_BF16 / 4 + 2 * 46_208 * 2 + LORA * (4 + 4 + 8) / 4,
        ),
    ],
)
def test_model_states_per_strategy(
    tiny: Architecture, changes: dict[str, Any], model_states: float
) -> None:
    assert allocated_bytes(tiny, shape(**changes)) == pytest.approx(model_states + SAVED, abs=BYTE)


def test_zero3_gather_uses_the_bytes_per_parameter_of_the_stored_weights(
    tiny: Architecture,
) -> None:
    # NF4 weights, 4 ranks: the gathered layers cost the average stored bytes per parameter
    # (2 x 46,208 x 1.3796 = 127,500 bytes), lm_head gathered for the loss its 16-bit 64,000 x 2
    # = 128,000: the head is the larger gather here
    nf4 = 92_160 * 0.5 + 92_160 / 64 + 92_160 / 64 / 256 * 4 + 128_320 * 2
    job = shape(
        quantization=QuantizationMode.nf4, strategy=Strategy.deepspeed_zero3, data_parallel=4
    )
    saved = SAVED  # no upcast: the same activations as 16-bit LoRA
    layers, head = 2 * 46_208 * (nf4 / 220_480), 64_000 * 2
    assert layers < head
    expected = nf4 / 4 + head + LORA * (4 + 4 + 8) / 4 + saved
    assert allocated_bytes(tiny, job) == pytest.approx(expected, abs=BYTE)
    # 16-bit weights: two gathered layers (2 x 46,208 x 2 = 184,832 bytes) outweigh the head
    bf16 = shape(strategy=Strategy.deepspeed_zero3, data_parallel=4)
    expected = 220_480 * 2 / 4 + 2 * 46_208 * 2 + LORA * (4 + 4 + 8) / 4 + SAVED
    assert allocated_bytes(tiny, bf16) == pytest.approx(expected, abs=BYTE)


# DoRA on q/k/v/o (outputs 64, 32, 32, 64; inputs 64), per layer, with dropout under autocast:
# base and adapter outputs (bf16), the dropout path's bf16 weight copy, three fp32 scale vectors
# (memory/dora.py, measured by tests/memory/test_dora_memory.py)
DORA_OUTS = 64 + 32 + 32 + 64
DORA_SAVED_LAYER = TOKENS * DORA_OUTS * (2 + 2) + DORA_OUTS * 64 * 2 + 3 * DORA_OUTS * 4


def test_dora_adds_magnitudes_to_every_adapter_state(tiny: Architecture) -> None:
    dora = LORA + 2 * DORA_OUTS
    est = estimate_memory(tiny, shape(use_dora=True))
    assert est.trainable_params == dora
    # checkpointing: one layer's DoRA saves; the tiny transient stays under the logits buffers
    assert est.peak_allocated_gib * GIB == pytest.approx(
        WEIGHTS_BF16 + dora * (4 + 4 + 8) + SAVED + DORA_SAVED_LAYER, abs=BYTE
    )
    assert est.breakdown_gib["dora_magnitude"] == round(2 * DORA_OUTS * 16 / GIB, 3)
    assert est.breakdown_gib["dora_transient"] == 0
    assert estimate_memory(tiny, BASE).breakdown_gib["dora_magnitude"] == 0


def test_dora_saves_per_layer_and_follows_the_adapter_autocast(tiny: Architecture) -> None:
    """Without checkpointing both layers keep DoRA's saves; without autocast (PEFT's
    use_amp=False runs) the adapter output, F.linear's output and weight copy are fp32."""

    def dora_saved(job: TrainingShape, a: Assumptions | None = None) -> float:
        lora = allocated_bytes(tiny, replace(job, use_dora=False), a)
        magnitude = 2 * DORA_OUTS * (4 + 4 + 8)
        return allocated_bytes(tiny, job, a) - lora - magnitude

    no_ckpt = shape(use_dora=True, gradient_checkpointing=False)
    assert dora_saved(no_ckpt) == pytest.approx(2 * DORA_SAVED_LAYER, abs=BYTE)
    fp32 = TOKENS * DORA_OUTS * (4 + 4) + DORA_OUTS * 64 * 4 + 3 * DORA_OUTS * 4
    assert dora_saved(no_ckpt, Assumptions(adapter_autocast=False)) == pytest.approx(
        2 * fp32, abs=BYTE
    )
    no_dropout = TOKENS * DORA_OUTS * (2 + 2) + 3 * DORA_OUTS * 4
    assert dora_saved(replace(no_ckpt, dropout=0.0)) == pytest.approx(2 * no_dropout, abs=BYTE)


def test_dora_transient_counts_what_exceeds_the_loss(tiny: Architecture) -> None:
    """One token, unchunked logits of 1000 x 12 bytes: q_proj's weight phase (identity 64^2 bf16,
    four 64 x 64 fp32 matrices, rank-wide casts) is the largest and exceeds them."""
    job = shape(use_dora=True, seq_len=1, dropout=0.0)
    weight_phase = 64 * 64 * 2 + 4 * 64 * 64 * 4 + (2 * 64 + 64) * 16 * 2
    transient = weight_phase - 1000 * 12
    assert estimate_memory(tiny, job).breakdown_gib["dora_transient"] == round(transient / GIB, 3)
    lora = allocated_bytes(tiny, replace(job, use_dora=False))
    saved = DORA_OUTS * (2 + 2) + 3 * DORA_OUTS * 4
    assert allocated_bytes(tiny, job) - lora == pytest.approx(
        2 * DORA_OUTS * 16 + saved + transient, abs=BYTE
    )


def test_adam_moments_follow_the_adapter_dtype(tiny: Architecture) -> None:
    # bf16 adapters: weights, grads and both AdamW moments in 2 bytes; dropout keeps a bf16
    # output + mask per module (no cast copy)
    bf16 = Assumptions(adapter_bytes=2.0)
    saved = ACTIVATIONS + TOKENS * QKVO_INPUTS * (2 + 1) + LOGITS
    assert allocated_bytes(tiny, BASE, bf16) == pytest.approx(
        WEIGHTS_BF16 + LORA * (2 + 2 + 4) + saved, abs=BYTE
    )


def test_cpu_offload_moves_optimizer_states_to_host(tiny: Architecture) -> None:
    # ZeRO-2, 4 ranks: each rank's quarter of the AdamW states lives on the host
    est = estimate_memory(
        tiny, shape(strategy=Strategy.deepspeed_zero2, data_parallel=4, offload_cpu=True)
    )
    assert est.host_offload_gib * GIB == pytest.approx(LORA * 8 / 4, abs=BYTE)
    assert est.peak_allocated_gib * GIB == pytest.approx(
        WEIGHTS_BF16 + LORA * (4 + 4 / 4) + SAVED, abs=BYTE
    )
    assert est.notes == ["optimizer states are offloaded to host memory (CPU Adam)"]


def test_zero3_offload_moves_weight_shards_and_optimizer_states_to_host(
    tiny: Architecture,
) -> None:
    est = estimate_memory(
        tiny, shape(strategy=Strategy.deepspeed_zero3, data_parallel=4, offload_cpu=True)
    )
    # host: a quarter of the bf16 weights + a quarter of the AdamW states
    assert est.host_offload_gib * GIB == pytest.approx(WEIGHTS_BF16 / 4 + LORA * 8 / 4, abs=BYTE)
    # GPU: no resident weights, the 2 gathered layers, sharded adapters and grads
    assert est.peak_allocated_gib * GIB == pytest.approx(
        2 * 46_208 * 2 + LORA * (4 + 4) / 4 + SAVED, abs=BYTE
    )
    assert est.notes == [
        "ZeRO-3 offload: base weights live in host memory between layers",
        "optimizer states are offloaded to host memory (CPU Adam)",
    ]


def test_nothing_on_host_without_offload(tiny: Architecture) -> None:
    est = estimate_memory(tiny, shape(strategy=Strategy.deepspeed_zero3, data_parallel=4))
    assert est.host_offload_gib == 0
    assert est.notes == []


def test_paged_optimizers_are_noted(tiny: Architecture) -> None:
    for optimizer in (Optimizer.paged_adamw_8bit, Optimizer.paged_adamw_32bit):
        notes = estimate_memory(tiny, shape(optimizer=optimizer)).notes
        assert notes == ["paged optimizer: states can page to host memory under pressure"]


def test_peak_adds_allocator_slack_and_cuda_context(tiny: Architecture) -> None:
    # 5% of allocated for the caching allocator, 0.5 GiB of CUDA context
    est = estimate_memory(tiny, BASE)
    allocated = WEIGHTS_BF16 + LORA * 16 + SAVED
    assert est.peak_gib * GIB == pytest.approx(allocated * 1.05 + 0.5 * GIB, abs=BYTE)
    assert est.total_params == 220_480
    assert est.trainable_params == LORA
    no_context = estimate_memory(tiny, BASE, Assumptions(cuda_context_gib=0.0))
    assert no_context.peak_gib * GIB == pytest.approx(allocated * 1.05, abs=BYTE)


def test_breakdown_is_each_term_in_gib_to_three_decimals(tiny: Architecture) -> None:
    # a batch of 8 x 4096 tokens makes the activation terms visible at 1/1000 GiB
    job = shape(micro_batch=8, seq_len=4096, attention=Attention.eager)
    tokens = 8 * 4096
    terms: dict[str, float] = {
        "weights": WEIGHTS_BF16,
        "zero3_gather": 0,
        "lora_weights": LORA * 4,
        "gradients": LORA * 4,
        "optimizer": LORA * 8,
        "activations": tokens * (2 * 64 * 2 + PER_TOKEN_LAYER_BF16 + EMBED_AND_FINAL_NORM),
        "attention_scores": 8 * 4 * 4096**2 * (4 + 2),
        "lora_dropout": tokens * QKVO_INPUTS * (4 + 1 + 2),
        "logits": tokens * 1000 * 12,
        **dict.fromkeys(("dora_magnitude", "dora_activations", "dora_transient"), 0),
    }
    allocated = sum(terms.values())
    terms["allocator_overhead"] = allocated * 0.05
    terms["cuda_context"] = 0.5 * GIB
    expected = {name: round(value / GIB, 3) for name, value in terms.items()}
    assert estimate_memory(tiny, job).breakdown_gib == expected
