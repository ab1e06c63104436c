"""The time and cost forecast: FLOPs per token by hand, tokens from the spec, the catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lora_contract.types import Phase, PlanStatus, Progress, RunRecord, Strategy
from lora_operator.api.operator_config import GpuType
from lora_operator.memory import GpuCatalog, load_architecture, plan_job
from lora_operator.memory.architecture import count_architecture
from lora_operator.memory.dataset_stats import read_dataset_stats
from lora_operator.memory.fit import ACTIVATION_OFFLOADING_COST
from lora_operator.memory.forecast import (
    SECONDS_PER_HOUR,
    base_matmul_params,
    completed_forecast,
    flops_per_token,
    forecast_job,
    run_forecast,
)

from .conftest import TINY_LLAMA, make_spec

CONFIGS = Path(__file__).parents[2] / "operator" / "lora_operator" / "memory" / "configs"


def test_tiny_llama_flops_by_hand() -> None:
    # hidden 64, 4 heads x 16, 2 kv heads, MLP 128, 2 layers, vocab 512, untied lm_head.
    # Decoder linears per layer: q 64x64 + k 64x32 + v 64x32 + o 64x64 + 3 x 64x128 = 36,864;
    # two layers N = 73,728; lm_head 512 x 64 = 32,768.
    # LoRA r=8 on q (8*(64+64)) and v (8*(64+32)): 1,792 per layer -> 2 * 3,584 forward.
    # Causal attention at context 128: 2 * 2 layers * 4 heads * 16 * 128 = 32,768.
    arch = count_architecture("tiny", dict(TINY_LLAMA))
    flops = flops_per_token(arch, ("q_proj", "v_proj"), 8, 128.0, checkpointing=True)
    assert flops.forward == 2 * 73_728 + 7_168 + 32_768 + 2 * 32_768
    assert flops.backward == 2 * (73_728 + 32_768) + 2 * 7_168 + 2 * 32_768
    assert flops.recompute == 2 * 73_728 + 7_168 + 32_768  # layers again, not lm_head
    plain = flops_per_token(arch, ("q_proj", "v_proj"), 8, 128.0, checkpointing=False)
    assert plain.recompute == 0 and plain.total == flops.total - flops.recompute


def test_checkpointing_takes_lora_from_4n_to_about_6n() -> None:
    arch = load_architecture("meta-llama/Llama-3.1-8B", None)
    n = arch.quantizable_params + (arch.head.params if arch.head else 0)
    without = flops_per_token(arch, ("q_proj", "v_proj"), 16, 1.0, checkpointing=False)
    with_ = flops_per_token(arch, ("q_proj", "v_proj"), 16, 1.0, checkpointing=True)
    assert without.total / n == pytest.approx(4.0, rel=0.01)
    assert with_.total / n == pytest.approx(6.0, rel=0.05)  # lm_head is not recomputed


def test_mixture_of_experts_counts_only_the_routed_experts() -> None:
    # Mistral AI's Mixtral announcement: 46.7B parameters, 12.9B used per token (2 of 8
    # experts); the 12.9B include the input embeddings, which are a lookup here.
    arch = load_architecture("mistralai/Mixtral-8x7B-v0.1", None)
    layers, head = base_matmul_params(arch)
    embeddings = arch.vocab_size * arch.hidden_size
    assert layers + head + embeddings == pytest.approx(12.9e9, rel=0.01)


def test_tokens_from_num_examples_times_max_seq_length_times_epochs(tiny_config: Path) -> None:
    spec = make_spec(
        baseModel={"name": "tiny", "source": "s3://m/tiny", "config": str(tiny_config)},
        dataset={"numExamples": 1000, "maxSeqLength": 512, "evalSplit": 0.1},
        training={"epochs": 3},
        resources={"gpuType": "A100-80GB"},
    )
    forecast = plan_job(spec).to_status().forecast
    assert forecast is not None
    assert forecast.tokens == 900 * 512 * 3  # the held-out 10% is not trained on
    assert forecast.tokens_from == "numExamples x maxSeqLength x 3 epoch(s)"


def test_max_steps_overrides_epochs(tiny_config: Path) -> None:
    spec = make_spec(
        baseModel={"name": "tiny", "source": "s3://m/tiny", "config": str(tiny_config)},
        dataset={"numExamples": 100_000, "maxSeqLength": 512},
        training={"epochs": 3, "maxSteps": 10, "microBatchSize": 2, "gradientAccumulation": 4},
        resources={"gpuType": "A100-80GB"},
    )
    forecast = plan_job(spec).to_status().forecast
    assert forecast is not None and forecast.tokens == 10 * 2 * 4 * 512


def test_no_size_no_forecast(tiny_config: Path) -> None:
    spec = make_spec(
        baseModel={"name": "tiny", "source": "s3://m/tiny", "config": str(tiny_config)},
        resources={"gpuType": "A100-80GB"},
    )
    assert plan_job(spec).to_status().forecast is None


def test_wall_time_gpu_hours_and_cost(tiny_config: Path) -> None:
    model = {"name": "tiny", "source": "s3://m/tiny", "config": str(tiny_config)}
    spec = make_spec(
        baseModel=model,
        dataset={"numExamples": 5000, "evalSplit": 0},
        resources={"gpuType": "H100-80GB"},
    )
    arch = count_architecture("tiny", dict(TINY_LLAMA))
    gpu = GpuCatalog.default().get("H100-80GB")
    forecast = forecast_job(spec, arch, gpu, 1, 2)
    assert forecast is not None and forecast.cost is None  # no price in the shipped catalog
    seconds = forecast.total_flops / (2 * 989.4e12 * gpu.efficiency)
    assert forecast.hours == pytest.approx(seconds / SECONDS_PER_HOUR)
    assert forecast.gpu_hours == pytest.approx(2 * forecast.hours)
    priced = GpuCatalog.default().merged(
        [GpuType(name="H100-80GB", memory_gib=79.6, price_per_gpu_hour=3.0)]
    )
    entry = priced.get("H100-80GB")
    assert entry.peak_tflops == 989.4  # an override keeps the fields it does not set
    again = forecast_job(spec, arch, entry, 1, 2)
    assert again is not None and again.cost == pytest.approx(3.0 * again.gpu_hours)


def test_activation_offloading_slows_the_forecast_by_the_fit_search_s_guess(
    tiny_config: Path,
) -> None:
    model = {"name": "tiny", "source": "s3://m/tiny", "config": str(tiny_config)}
    arch = count_architecture("tiny", dict(TINY_LLAMA))
    gpu = GpuCatalog.default().get("H100-80GB")

    def forecast(offloading: bool) -> Any:
        spec = make_spec(
            baseModel=model,
            dataset={"numExamples": 5000, "evalSplit": 0},
            training={"activationOffloading": offloading},
            resources={"gpuType": "H100-80GB"},
        )
        return forecast_job(spec, arch, gpu, 1, 1)

    plain, offloaded = forecast(False), forecast(True)
    assert offloaded.hours == pytest.approx(plain.hours * ACTIVATION_OFFLOADING_COST)
    assert any(a.startswith("activation offloading: x0.87") for a in offloaded.assumptions)


@pytest.mark.parametrize("name", GpuCatalog.default().names())
def test_every_shipped_gpu_has_a_peak(name: str) -> None:
    gpu = GpuCatalog.default().get(name)
    assert gpu.peak_tflops is not None and gpu.peak_tflops > 0
    assert 0 < gpu.efficiency <= 1 and gpu.price_per_gpu_hour is None


def test_readable_dataset_gives_rows_and_mean_tokens(tmp_path: Path, tiny_config: Path) -> None:
    rows = [{"prompt": "x" * 400, "completion": "y" * 400}] * 30  # ~200 tokens per row
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    stats = read_dataset_stats(f"file://{data}", 2048)
    assert stats is not None and stats.rows == 30 and stats.mean_tokens == 200
    cut = read_dataset_stats(str(data), 64)
    assert cut is not None and cut.mean_tokens == 64  # rows are cut at maxSeqLength
    assert read_dataset_stats("s3://bucket/train.jsonl", 2048) is None
    spec = make_spec(
        baseModel={"name": "tiny", "source": "s3://m/tiny", "config": str(tiny_config)},
        dataset={"source": str(data), "numExamples": 99_999, "evalSplit": 0},
        resources={"gpuType": "L4-24GB"},
    )
    forecast = plan_job(spec, dataset=stats).to_status().forecast
    assert forecast is not None and forecast.tokens == 30 * 200


def test_a_deeply_nested_dataset_row_gives_no_stats_not_a_crash(tmp_path: Path) -> None:
    """`lorajob plan` samples the dataset: a [[[...]]] row was a RecursionError traceback."""
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n" + "[" * 50_000 + "\n")
    assert read_dataset_stats(str(data), 2048) is None


def _run(plan: PlanStatus, start: str, end: str) -> RunRecord:
    run = RunRecord(id="r1", spec_hash="h", output_uri="s3://b/r1", phase=Phase.Succeeded)
    run.forecast = run_forecast(plan)
    run.start_time, run.completion_time = start, end
    return run


def test_actual_beside_forecast(tiny_config: Path) -> None:
    spec = make_spec(
        baseModel={"name": "tiny", "source": "s3://m/tiny", "config": str(tiny_config)},
        dataset={"numExamples": 5000},
        resources={"gpuType": "L4-24GB"},
    )
    plan = plan_job(spec).to_status()
    assert plan.forecast is not None
    plan = plan.model_copy(update={"forecast": plan.forecast.model_copy(update={"hours": 2.0})})
    run = _run(plan, "2026-01-01T00:00:00Z", "2026-01-01T03:00:00Z")
    done = completed_forecast(run, None)
    assert done is not None and done.actual_hours == 3.0 and done.forecast_ratio == 1.5
    halfway = Progress(step=50, total_steps=100)  # stopped early: half the forecast was due
    early = completed_forecast(run, halfway)
    assert early is not None and early.forecast_ratio == 3.0
    assert done.actual_gpu_hours == 3.0 * plan.total_gpus


QWEN_7B: dict[str, Any] = {  # Qwen-7B's matmuls are a Llama's of these sizes
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
}


@pytest.mark.parametrize(("mode", "published"), [("none", 5.2), ("nf4", 7.0)])
def test_qwen_7b_published_a100_speed_within_15_percent(mode: str, published: float) -> None:
    """QwenLM/Qwen README, "Profiling of Memory and Speed": Qwen-7B LoRA and Q-LoRA (r=64 on
    every linear, checkpointing, flash-attention 2) on one A100-SXM4-80G, batch 1 x 8
    accumulation, sequence 2048: 5.2 and 7.0 s per optimizer step."""
    spec = make_spec(
        dataset={"maxSeqLength": 2048, "evalSplit": 0},
        quantization={"mode": mode},
        lora={"r": 64, "targetModules": ["all-linear"]},
        training={"maxSteps": 1, "microBatchSize": 1, "gradientAccumulation": 8},
        resources={"gpuType": "A100-80GB"},
    )
    arch = count_architecture("qwen-7b-shaped", QWEN_7B)
    forecast = forecast_job(spec, arch, GpuCatalog.default().get("A100-80GB"), 1, 1)
    assert forecast is not None and forecast.tokens == 8 * 2048
    seconds_per_step = forecast.hours * SECONDS_PER_HOUR
    assert seconds_per_step / published == pytest.approx(1.0, abs=0.15)


def test_plan_status_round_trips_the_forecast(tiny_config: Path) -> None:
    spec = make_spec(
        baseModel={"name": "tiny", "source": "s3://m/tiny", "config": str(tiny_config)},
        dataset={"numExamples": 5000},
        resources={"gpuType": "L4-24GB"},
    )
    wire = plan_job(spec).to_status().to_wire()
    assert {"tokens", "hours", "gpuHours", "assumptions"} <= set(wire["forecast"])
    back = PlanStatus.model_validate(wire)
    assert back.forecast is not None and back.strategy == Strategy.ddp
