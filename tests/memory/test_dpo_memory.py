"""The DPO terms of the memory model (memory/dpo.py), by hand for the tiny hand-written Llama.

TINY: hidden 64, intermediate 176, vocab 1000, 2 layers (tests/memory/conftest.py HAND_LLAMA).
bf16 (2 bytes), micro-batch 1 x 2048 tokens: DPO's policy forward sees chosen and rejected, so
N = 2 x 2048 = 4096 tokens.

dpo_logprobs (TRL's fused log-prob head):
  saved: N x (64 x 2 + 25 per-token bytes) = 4096 x 153 = 626,688
  backward: fp32 hidden gradient N x 64 x 4 = 1,048,576, plus one tile of
            min(4096, 4096) x min(1000, 32768) = 4,096,000 elements x (2 + 4) = 24,576,000
  = 626,688 + 1,048,576 + 24,576,000 = 26,251,264
dpo_reference: max(layer N x (2 x 64 + 2 x 176) x 2 = 3,932,160,
                   head 24,576,000 + N x 25 = 24,678,400) = 24,678,400, below the backward's
  25,624,576: it adds 0. With micro-batch 4 x 8192 (N = 65,536): layer 65,536 x 960 =
  62,914,560 against 65,536 x 256 + 24,576,000 = 41,353,216: it adds 21,561,344.
dpo_ref_adapter (TRL's frozen `ref` copy of the starting adapter, fp32, no grads or Adam states):
  r 16 on q/k/v/o, head dim 64 / 4 = 16, k/v width 2 x 16 = 32: per layer q and o
  16 x (64 + 64) = 2,048 each, k and v 16 x (64 + 32) = 1,536 each: 7,168 x 2 layers = 14,336
  parameters x 4 bytes = 57,344 bytes; under ZeRO-3 on 4 ranks a quarter: 14,336 bytes.
  The trainer's tiny model (r 8, all-linear, MLP 128): per layer q, o 8 x 128 = 1,024, k, v
  8 x 96 = 768, gate, up, down 8 x 192 = 1,536: 8,192 x 2 = 16,384 parameters = 65,536 bytes
  (measured on TRL's `ref` adapter: tests/trainer/test_dpo_paths_units.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lora_contract.types import LoRAJobSpec, Strategy, TrainingMethod
from lora_operator.memory import Architecture, Assumptions, TrainingShape, dpo, estimate_memory
from lora_operator.memory.estimate import activation_terms, dpo_shape
from lora_operator.memory.placement import shape_for

from .conftest import HAND_LLAMA

GIB = 1024**3
BASE = TrainingShape()  # bf16, micro-batch 1, 2048 tokens, checkpointing, r 16 on q/k/v/o


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Architecture:
    from lora_operator.memory import load_architecture

    path = tmp_path_factory.mktemp("tiny") / "tiny.json"
    path.write_text(json.dumps(HAND_LLAMA))
    return load_architecture("tiny-llama-64", str(path))


def test_the_dpo_terms_by_hand(tiny: Architecture) -> None:
    policy = replace(BASE, micro_batch=2)
    s = dpo_shape(tiny, policy)
    assert (s.tokens, s.hidden, s.vocab, s.mlp_width, s.compute_bytes) == (4096, 64, 1000, 176, 2)
    assert dpo.logprob_saved_bytes(s) == 626_688
    assert dpo.logprob_backward_bytes(s) == 1_048_576 + 24_576_000
    assert dpo.logprobs_bytes(s) == 26_251_264
    assert dpo.reference_forward_bytes(s) == 24_678_400
    assert dpo.reference_at_peak(s) == 0
    big = dpo_shape(tiny, replace(BASE, micro_batch=8, seq_len=8192))
    assert big.tokens == 65_536
    assert dpo.reference_forward_bytes(big) == 62_914_560
    assert dpo.reference_at_peak(big) == 62_914_560 - 41_353_216 == 21_561_344


def test_the_ref_adapter_term_by_hand() -> None:
    assert dpo.ref_adapter_bytes(16_384, 4.0, 1) == 65_536
    assert dpo.ref_adapter_bytes(14_336, 4.0, 1) == 57_344
    assert dpo.ref_adapter_bytes(14_336, 4.0, 4) == 14_336  # ZeRO-3 on 4 ranks
    assert dpo.ref_adapter_bytes(14_336, 2.0, 1) == 28_672  # bf16 adapters (an assumption)
    assert dpo.ref_adapter_bytes(14_336, 4.0, 0) == 57_344  # no ranks counted: one copy


@pytest.mark.parametrize(
    ("strategy", "ranks", "ref_bytes"),
    [
        (Strategy.ddp, 1, 57_344),
        (Strategy.ddp, 4, 57_344),  # DDP: every rank holds the whole copy
        (Strategy.deepspeed_zero3, 4, 14_336),
    ],
)
def test_estimate_doubles_the_policy_and_swaps_the_loss(
    tiny: Architecture, strategy: Strategy, ranks: int, ref_bytes: int
) -> None:
    placed = replace(BASE, strategy=strategy, data_parallel=ranks)
    sft = estimate_memory(tiny, placed)
    pref = estimate_memory(tiny, replace(placed, preference=True))
    assert "dpo_ref_adapter" not in sft.breakdown_gib
    assert pref.breakdown_gib["dpo_ref_adapter"] == round(ref_bytes / GIB, 3)
    assert "dpo_logprobs" not in sft.breakdown_gib  # SFT's breakdown is as before
    # chosen + rejected: the saved tensors of a 2-sequence batch (by hand in
    # test_estimate_terms: 2048 tokens x (2 x 64 x 2 + 2,096 + 512) per sequence)
    per_sequence = 2048 * (2 * 64 * 2 + 2_096 + 512)
    two = activation_terms(tiny, replace(BASE, micro_batch=2), Assumptions())
    assert two["activations"] == pytest.approx(2 * per_sequence)
    assert pref.breakdown_gib["activations"] == round(2 * per_sequence / GIB, 3)
    assert pref.breakdown_gib["logits"] == 0
    assert pref.breakdown_gib["dpo_logprobs"] == round(26_251_264 / GIB, 3)
    assert pref.breakdown_gib["dpo_reference"] == 0
    # everything else unchanged, the allocated peak moved by exactly the DPO terms' difference
    for key in ("weights", "lora_weights", "gradients", "optimizer"):
        assert pref.breakdown_gib[key] == sft.breakdown_gib[key]
    sft_terms = activation_terms(tiny, BASE, Assumptions())
    extra = (
        sum(two[k] for k in ("activations", "attention_scores", "lora_dropout"))
        - sum(sft_terms.values())
        + 26_251_264
        + ref_bytes
    )
    assert pref.peak_allocated_gib * GIB == pytest.approx(sft.peak_allocated_gib * GIB + extra)


def test_the_spec_method_reaches_the_shape(tmp_path: Path) -> None:
    spec = {
        "baseModel": {"name": "m", "source": "hf://m/m"},
        "dataset": {"source": "s3://d/train.jsonl", "format": "prompt-completion"},
        "output": {"bucket": "adapters"},
    }
    sft = LoRAJobSpec.model_validate(spec)
    dpo_job = LoRAJobSpec.model_validate({**spec, "method": "dpo"})
    assert dpo_job.method == TrainingMethod.dpo
    assert shape_for(sft, Strategy.ddp, 1).preference is False
    assert shape_for(dpo_job, Strategy.ddp, 1).preference is True


def test_plan_shows_the_dpo_terms() -> None:
    from lora_operator.api.loading import load_lorajobs
    from lora_operator.memory.estimate import TERM_HELP
    from lora_operator.memory.report import _plan, render_table

    path = Path(__file__).resolve().parents[2] / "examples" / "dpo-tiny-cpu.yaml"
    (job,) = load_lorajobs(path)
    table = render_table(job, _plan(job, str(path)))
    (line,) = [x for x in table.splitlines() if x.strip().startswith("dpo_logprobs")]
    assert line.endswith(TERM_HELP["dpo_logprobs"])
    assert not any(x.strip().startswith("logits ") for x in table.splitlines()), table


def test_forecast_counts_two_sequences_and_the_reference_forward() -> None:
    """test_forecast_units' toy model at context 100 (its hand-worked FLOPs per token: forward
    3504, backward 5216, recompute 1904): 900 training rows x 2 epochs, 18 evaluations of 100
    rows. SFT: 180,000 tokens. DPO: each row is two sequences of 100 tokens (360,000 tokens, the
    attention context stays 100) and every forward runs twice (policy, reference): 7008 + 5216 +
    1904 = 14,128 per token; eval 18 x 100 rows x 200 tokens x 7008."""
    from .test_forecast_units import forecast, job

    sft = job()
    pref = LoRAJobSpec.model_validate({**sft.model_dump(by_alias=True), "method": "dpo"})
    assert forecast(sft).tokens == 180_000
    result = forecast(pref)
    assert result.tokens == 360_000
    assert result.flops_per_token.total == 14_128
    assert result.eval_flops == 18 * 100 * 200 * 7008
    assert result.total_flops == 360_000 * 14_128 + 2_522_880_000
    assert any(a.startswith("dpo: chosen + rejected") for a in result.assumptions)
