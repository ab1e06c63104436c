"""memory/forecast.py piece by piece on hand-built architectures (no torch): FLOPs per token,
routed experts and lm_head adapters, tokens and evaluation FLOPs from the spec, NF4
dequantisation, ZeRO-3 gather seconds, the throughput factors and their notes, and the status
and run records. Every expected number is worked by hand in the comments."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lora_contract.types import (
    ForecastStatus,
    LoRAJobSpec,
    PlanStatus,
    Progress,
    RunForecast,
    RunRecord,
    Strategy,
)
from lora_operator.api.operator_config import GpuType
from lora_operator.memory.architecture import Architecture, LinearModule
from lora_operator.memory.forecast import (
    DatasetStats,
    FlopsPerToken,
    Forecast,
    adapter_flops,
    base_matmul_params,
    completed_forecast,
    flops_per_token,
    forecast_job,
    run_forecast,
    with_actual,
    zero3_gather_seconds,
)

from .conftest import BASE

LAYER = "model.layers.0"


def toy(
    linears: tuple[LinearModule, ...],
    quantizable: int,
    experts: int = 0,
    per_token: int = 0,
    head: bool = True,
) -> Architecture:
    """One decoder layer, hidden 8, 2 heads of 4, vocab 100, lm_head 8 -> 100 (800 weights)."""
    return Architecture(
        source="toy",
        model_type="llama",
        hidden_size=8,
        intermediate_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        vocab_size=100,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        num_experts=experts,
        experts_per_token=per_token,
        total_params=quantizable + 800 + 800,
        quantizable_params=quantizable,
        quantizable_rows=0,
        linears=linears,
        largest_layer_params=quantizable,
        head=LinearModule("lm_head", 8, 100) if head else None,
    )


Q = LinearModule(f"{LAYER}.self_attn.q_proj", 8, 8)  # 64 weights
V = LinearModule(f"{LAYER}.self_attn.v_proj", 8, 4)  # 32 weights


def dense(head: bool = True) -> Architecture:
    """q_proj 8x8 + v_proj 8x4: 96 decoder weights."""
    return toy((Q, V), 96, head=head)


def moe(experts: int, per_token: int) -> Architecture:
    """q and v, plus fused experts as architecture.py lists them: gate_up_proj 8 -> 32 (256 per
    expert) with its halves w1/w3 8 -> 16, down_proj 16 -> 8 (128 per expert) with alias w2.
    Quantizable: 96 + 384 per expert."""
    e = f"{LAYER}.mlp.experts"
    fused = (
        LinearModule(f"{e}.gate_up_proj", 8, 32, experts),
        LinearModule(f"{e}.w1", 8, 16, experts),
        LinearModule(f"{e}.w3", 8, 16, experts),
        LinearModule(f"{e}.down_proj", 16, 8, experts),
        LinearModule(f"{e}.w2", 16, 8, experts),
    )
    return toy((Q, V, *fused), 96 + 384 * experts, experts, per_token)


GPU = GpuType(name="TOY", memory_gib=80, peak_tflops=100.0, efficiency=0.5)

DEFAULTS: dict[str, dict[str, Any]] = {
    "dataset": {"numExamples": 1000, "maxSeqLength": 100, "evalSplit": 0.1},
    "training": {"epochs": 2, "microBatchSize": 2, "gradientAccumulation": 5, "evalInterval": 10},
    "lora": {"r": 2, "targetModules": ["q_proj", "v_proj"]},
}


def job(**sections: dict[str, Any]) -> LoRAJobSpec:
    """BASE with DEFAULTS and then `sections` merged per section; a None value drops a key."""
    data = json.loads(json.dumps(BASE))
    for key in {*DEFAULTS, *sections}:
        merged = {**data.get(key, {}), **DEFAULTS.get(key, {}), **sections.get(key, {})}
        data[key] = {k: v for k, v in merged.items() if v is not None}
    return LoRAJobSpec.model_validate(data)


def forecast(spec: LoRAJobSpec, nodes: int = 1, per_node: int = 1, **kw: Any) -> Forecast:
    result = forecast_job(spec, dense(), GPU, nodes, per_node, **kw)
    assert result is not None
    return result


# Per token on dense() with r = 2 on q and v, at context c:
#   layers 96, lm_head 800; adapters 2 x 2 x (8 + 8) + 2 x 2 x (8 + 4) = 64 + 48 = 112;
#   attention 2 x 1 layer x 2 heads x 4 x c = 16c
#   forward  = 2 x 96 + 112 + 16c + 2 x 800       = 1904 + 16c
#   backward = 2 x (96 + 800) + 2 x 112 + 2 x 16c  = 2016 + 32c
#   recompute (checkpointing) = 2 x 96 + 112 + 16c = 304 + 16c
# c = 100: forward 3504, backward 5216, recompute 1904, total 10624 (8720 without recompute).
# c = 50:  forward 2704, backward 3616, recompute 1104, total 7424.
GFLOP_100 = "1.06e-05 GFLOP per token (with recomputation)"  # 10624 / 1e9 to 3 digits
PEAK = "100 TFLOP/s peak x 0.5 efficiency per GPU"
EXCLUDES = "excludes pod start, model download and loading"


# --------------------------------------------------------------------------- FLOPs per token


def test_dense_flops_per_token_by_hand() -> None:
    flops = flops_per_token(dense(), ("q_proj", "v_proj"), 2, 100.0, checkpointing=True)
    assert flops == FlopsPerToken(forward=3504.0, backward=5216.0, recompute=1904.0)
    assert flops.total == 10624.0


def test_an_adapted_lm_head_is_not_recomputed() -> None:
    # moe(4, 2): routed 2/4; experts 4 x (256 + 128) = 1536 (w1/w3/w2 are halves, not extra);
    # layers = 96 + 1536 - 1536 + 1536 x 0.5 = 864; lm_head 800.
    # r = 2 on q (2 x 2 x 16 = 64) and lm_head (2 x 2 x (8 + 100) = 432); attention 16 x 10.
    #   layer forward = 2 x 864 + 64 + 160 = 1952 (recomputed)
    #   forward  = 1952 + 2 x 800 + 432 = 3984
    #   backward = 2 x (864 + 800) + 2 x (64 + 432) + 2 x 160 = 3328 + 992 + 320 = 4640
    arch = moe(4, 2)
    assert base_matmul_params(arch) == (864.0, 800.0)
    flops = flops_per_token(arch, ("q_proj", "lm_head"), 2, 10.0, checkpointing=True)
    assert flops == FlopsPerToken(forward=3984.0, backward=4640.0, recompute=1952.0)


def test_base_matmul_params_of_two_experts_one_routed() -> None:
    # moe(2, 1): experts 2 x 384 = 768, routed 1/2: layers 96 + 768 - 768 + 384 = 480
    assert base_matmul_params(moe(2, 1)) == (480.0, 800.0)


def test_without_an_lm_head_module_the_head_is_vocab_by_hidden() -> None:
    # no head module: 100 x 8 = 800 all the same
    arch = dense(head=False)
    assert base_matmul_params(arch) == (96.0, 800.0)
    flops = flops_per_token(arch, ("q_proj", "v_proj"), 2, 100.0, checkpointing=False)
    assert flops == FlopsPerToken(forward=3504.0, backward=5216.0, recompute=0.0)


def test_adapter_flops_of_routed_experts() -> None:
    # moe(4, 2): a token meets 4 x 2/4 = 2 of each expert's adapters.
    #   gate_up_proj: 2 x r1 x (8 + 32) x 2 = 160; v_proj: 2 x 1 x (8 + 4) x 1 = 24
    arch = moe(4, 2)
    gate_up = arch.linears[2]
    assert gate_up.short_name == "gate_up_proj"
    assert adapter_flops(arch, [gate_up, V], 1) == 184.0
    # moe(2, 2): both experts of two: 2 x 1 x 40 x 2 = 160
    two = moe(2, 2)
    assert adapter_flops(two, [two.linears[2]], 1) == 160.0
    # dense: one copy each, 2 x 3 x (8 + 8) = 96
    assert adapter_flops(dense(), [Q], 3) == 96.0


# --------------------------------------------------------------------------- ZeRO-3 gathers


def test_zero3_gather_seconds_in_one_node() -> None:
    # 50 GB over 4 GPUs: each gathers 3/4 = 37.5 GB at 25 GB/s = 1.5 s per pass;
    # 3 passes x 10 micro-batches = 45 s
    assert zero3_gather_seconds(50e9, 1, 4, 3, 10) == 45.0
    assert zero3_gather_seconds(50e9, 1, 1, 3, 10) == 0.0  # one rank gathers nothing


def test_zero3_gather_seconds_between_nodes() -> None:
    # 2 nodes x 1 GPU: 1/2 of 50 GB = 25 GB at 12.5 GB/s = 2 s per pass; x 3 x 10 = 60 s
    assert zero3_gather_seconds(50e9, 2, 1, 3, 10) == 60.0
    # 2 x 4: in a node 1.5 s, between nodes 2 s: the slower, 2 s; x 2 passes x 1 = 4 s
    assert zero3_gather_seconds(50e9, 2, 4, 2, 1) == 4.0
    # 4 x 8: in a node 7/8 x 50 / 25 = 1.75 s, between 3/4 x 50 / 12.5 = 3 s; x 2 x 0.5 = 3 s
    assert zero3_gather_seconds(50e9, 4, 8, 2, 0.5) == 3.0


# --------------------------------------------------------------------------- tokens and eval


def test_tokens_and_eval_flops_from_num_examples() -> None:
    # 1000 rows, 10% held out: 900 train rows x 100 tokens x 2 epochs = 180,000 tokens;
    # 900 x 2 / (2 x 5) = 180 steps, an evaluation every 10: 18 x 100 eval rows x 100 tokens
    # x forward 3504 = 630,720,000 FLOPs; total 180,000 x 10,624 + 630,720,000 = 2,543,040,000
    f = forecast(job())
    assert f.tokens == 180_000
    assert f.tokens_from == "numExamples x maxSeqLength x 2 epoch(s)"
    assert f.eval_flops == 630_720_000.0
    assert f.total_flops == 2_543_040_000.0
    assert (f.dequant_flops, f.gather_seconds, f.throughput_factor) == (0.0, 0.0, 1.0)
    assert (f.gpus, f.gpu_type, f.peak_tflops, f.efficiency) == (1, "TOY", 100.0, 0.5)
    assert f.assumptions == [GFLOP_100, PEAK, EXCLUDES]


def test_eval_source_trains_on_every_row_and_counts_no_eval() -> None:
    # 1000 rows x 100 x 2 = 200,000 tokens (evalSplit ignored); 200 steps, 20 evaluations of
    # an eval set of unknown size: no eval FLOPs
    f = forecast(job(dataset={"evalSource": "s3://data/eval.jsonl"}))
    assert f.tokens == 200_000
    assert f.eval_flops == 0.0
    assert f.assumptions == [
        GFLOP_100,
        PEAK,
        EXCLUDES,
        "evaluation on dataset.evalSource not counted (its size is unknown)",
    ]


def test_at_least_one_step_and_its_evaluation() -> None:
    # 20 rows, half held out: 10 train rows x 1 epoch / 20 rows per step = 0.5 -> 1 step; one
    # evaluation (every step) of 10 rows x 100 tokens x 3504 = 3,504,000 FLOPs
    f = forecast(
        job(
            dataset={"numExamples": 20, "evalSplit": 0.5},
            training={"epochs": 1, "gradientAccumulation": 10, "evalInterval": 1},
        )
    )
    assert f.tokens == 1000
    assert f.eval_flops == 3_504_000.0


@pytest.mark.parametrize(
    ("dataset", "stats", "tokens_from"),
    [
        ({}, None, "maxSteps x 10 rows per step x maxSeqLength"),
        ({"numExamples": None}, None, "maxSteps x 10 rows per step x maxSeqLength"),
        (
            {},
            DatasetStats(rows=1500, mean_tokens=100.0),
            "maxSteps x 10 rows per step x 100 tokens/row (counted)",
        ),
    ],
)
def test_max_steps_tokens_from(
    dataset: dict[str, Any], stats: DatasetStats | None, tokens_from: str
) -> None:
    # 10 steps x 2 x 5 rows x 100 tokens = 10,000 tokens; one evaluation (step 10)
    f = forecast(job(dataset=dataset, training={"maxSteps": 10}), dataset=stats)
    assert f.tokens == 10_000
    assert f.tokens_from == tokens_from
    if dataset:  # nothing says how many rows: no eval rows, no eval FLOPs
        assert f.eval_flops == 0.0


def test_dataset_stats_and_packing_context() -> None:
    # 1,500 rows of 50 tokens, nothing held out, 2 epochs: 150,000 tokens. Unpacked, attention
    # spans a row's 50 tokens (7424 per token); packed, the whole 100 (10624).
    stats = DatasetStats(rows=1500, mean_tokens=50.0)
    plain = forecast(job(dataset={"evalSplit": 0}), dataset=stats)
    assert plain.tokens == 150_000
    assert plain.tokens_from == "dataset: 1,500 rows x 50 tokens/row (counted) x 2 epoch(s)"
    assert plain.flops_per_token.total == 7424.0
    packed = forecast(job(dataset={"evalSplit": 0, "packing": True}), dataset=stats)
    assert packed.flops_per_token.total == 10624.0


# --------------------------------------------------------------------------- NF4


@pytest.mark.parametrize(
    ("checkpointing", "dequant"), [(True, 380_160_000.0), (False, 285_120_000.0)]
)
def test_nf4_dequantisation_per_pass_and_micro_batch(checkpointing: bool, dequant: float) -> None:
    # 180,000 tokens / 100 / micro 2 = 900 training micro-batches; 18 evaluations x 100 rows /
    # 2 = 900 eval micro-batches (forward only); 96 weights x 1100 = 105,600 FLOPs per pass.
    #   with recompute (3 passes): (900 x 3 + 900) x 105,600 = 380,160,000
    #   without (2 passes):        (900 x 2 + 900) x 105,600 = 285,120,000
    f = forecast(
        job(quantization={"mode": "nf4"}, training={"gradientCheckpointing": checkpointing})
    )
    assert f.dequant_flops == dequant
    gflop = GFLOP_100 if checkpointing else "8.72e-06 GFLOP per token (without recomputation)"
    assert f.assumptions == [
        gflop,
        PEAK,
        "nf4: dequantising the base weights, ~1100 FLOPs per weight per pass and micro-batch",
        EXCLUDES,
    ]


# --------------------------------------------------------------------------- throughput


def test_every_throughput_factor_multiplies_in_order() -> None:
    # micro 1 instead of the written 2 at 1024 tokens: (1024/2048)^0.3 / 1 = 0.5^0.3 =
    # 0.8122523963562356; x 0.5 for int8, / 1.15 for offloading, x 0.56 for two nodes
    spec = job(
        dataset={"maxSeqLength": 1024},
        quantization={"mode": "int8"},
        training={"microBatchSize": 1, "gradientAccumulation": 10, "activationOffloading": True},
    )
    f = forecast(spec, nodes=2, per_node=1, written_micro_batch=2)
    assert f.throughput_factor == pytest.approx(0.8122523963562356 * 0.5 / 1.15 * 0.56)
    assert f.assumptions[2:-1] == [
        "micro batch 1 instead of 2: x0.81 for smaller matmuls (1,024 tokens per micro-batch)",
        "int8: x0.5 for LLM.int8's outlier matmuls (assumed)",
        "activation offloading: x0.87 for host copies not hidden behind compute "
        "(assumed, the same guess the fit search orders by)",
        "2 nodes: x0.56 for gradient traffic between nodes",
    ]


@pytest.mark.parametrize(("seq", "micro", "written"), [(4096, 1, 2), (512, 2, 1), (512, 2, 2)])
def test_a_micro_batch_no_slower_changes_nothing(seq: int, micro: int, written: int) -> None:
    # 4096 x 1 and 4096 x 2 both saturate (factor 1); micro 2 against a written 1 would be
    # 2^0.3 faster, which the forecast does not count; the written micro batch itself: 1
    spec = job(dataset={"maxSeqLength": seq}, training={"microBatchSize": micro})
    f = forecast(spec, written_micro_batch=written)
    assert f.throughput_factor == 1.0
    assert len(f.assumptions) == 3


def test_one_node_has_no_multi_node_factor() -> None:
    f = forecast(job(quantization={"mode": "int8"}), nodes=1, per_node=4)
    assert f.throughput_factor == 0.5


# --------------------------------------------------------------------------- ZeRO-3 in the job


@pytest.mark.parametrize(
    ("checkpointing", "seconds", "hours", "passes"),
    [(True, 0.27000000024, "7.5e-05", 3), (False, 0.18000000016, "5e-05", 2)],
)
def test_zero3_gather_in_the_forecast(
    checkpointing: bool, seconds: float, hours: str, passes: int
) -> None:
    # 1 step x (2 x 4 x 2 ranks) rows x 100 tokens = 1,600 tokens: 1600 / 100 / 2 / 2 = 4
    # micro-batches per rank. 1,125,000,001 bytes on 2 GPUs of a node: half of them at 25 GB/s
    # = 0.02250000002 s per pass; x 3 passes x 4 = 0.27000000024 s (x 2 passes: 0.18000000016).
    # 1.125000001 GB shows as 1.13 to 3 digits.
    spec = job(
        training={
            "maxSteps": 1,
            "gradientAccumulation": 4,
            "gradientCheckpointing": checkpointing,
        }
    )
    f = forecast(spec, 1, 2, strategy=Strategy.deepspeed_zero3, weight_bytes=1_125_000_001.0)
    assert f.tokens == 1600
    assert f.gather_seconds == pytest.approx(seconds, rel=1e-12)
    assert f.assumptions[2] == (
        f"deepspeed-zero3: {hours} h per rank gathering 1.13 GB of sharded weights {passes} "
        "times per micro-batch, assumed not hidden behind compute"
    )


def test_zero3_gathers_any_weight_and_only_under_zero3() -> None:
    spec = job(training={"maxSteps": 1})
    zero3 = Strategy.deepspeed_zero3
    # 1 byte on 2 GPUs: half a byte at 25 GB/s = 2e-11 s per pass, x 3 x 5 micro-batches per
    # rank (1 x 2 x 5 x 2 rows / 2 / 2)
    one_byte = forecast(spec, 1, 2, strategy=zero3, weight_bytes=1.0)
    assert one_byte.gather_seconds == pytest.approx(3e-10, rel=1e-12)
    assert forecast(spec, 1, 2, strategy=zero3).gather_seconds == 0.0  # no weights given
    ddp = forecast(spec, 1, 2, strategy=Strategy.ddp, weight_bytes=50e9)
    assert ddp.gather_seconds == 0.0
    single = forecast(spec, 1, 1, strategy=zero3, weight_bytes=50e9)  # nothing to gather
    assert single.gather_seconds == 0.0 and len(single.assumptions) == 3


# --------------------------------------------------------------------------- notes


def test_process_units_and_dora_notes() -> None:
    cpu = GpuType(name="CPU", memory_gib=64, peak_tflops=100.0, efficiency=0.5, resource_name="")
    f = forecast_job(job(lora={"useDora": True}), dense(), cpu, 1, 1)
    assert f is not None
    assert f.assumptions == [
        GFLOP_100,
        "100 TFLOP/s peak x 0.5 efficiency per process",
        EXCLUDES,
        "DoRA's weight-norm work per step not counted (calibrate)",
    ]


# --------------------------------------------------------------------------- status and runs


def priced() -> Forecast:
    # 1000 tokens x 3234.5678 FLOPs = 3,234,567.8 FLOPs on 2 x 100 TFLOP/s x 0.123456
    # (1.3e-7 s) plus 4444.4 s of gathers: 4444.4000001 / 3600 = 1.2345555... h;
    # GPU-hours 2.4691111..., at 1.5 per GPU-hour 3.7036666...
    return Forecast(
        tokens=1000,
        tokens_from="t",
        flops_per_token=FlopsPerToken(forward=1000.0, backward=2000.0, recompute=234.5678),
        eval_flops=0.0,
        peak_tflops=100.0,
        efficiency=0.123456,
        gpus=2,
        gpu_type="TOY",
        price_per_gpu_hour=1.5,
        assumptions=["a", "b"],
        gather_seconds=4444.4,
    )


def test_to_status_rounds_each_figure() -> None:
    assert priced().to_status() == ForecastStatus(
        tokens=1000,
        tokens_from="t",
        flops_per_token=3235.0,  # 3234.5678 to 4 digits
        total_flops=3_235_000.0,  # 3,234,567.8 to 4 digits
        peak_tflops=100.0,
        efficiency=0.1235,  # 0.123456 to 4 decimals
        hours=1.235,
        gpu_hours=2.469,
        cost=3.7,  # 3.7036... to cents
        assumptions=["a", "b"],
    )


def plan(status: ForecastStatus | None) -> PlanStatus:
    return PlanStatus(
        gpu_type="TOY",
        gpu_memory_gib=80.0,
        nodes=1,
        gpus_per_node=2,
        total_gpus=2,
        strategy=Strategy.ddp,
        per_gpu_peak_gib=10.0,
        headroom_gib=70.0,
        forecast=status,
    )


def test_run_forecast_freezes_the_plan_s_figures() -> None:
    assert run_forecast(plan(priced().to_status())) == RunForecast(
        gpu_type="TOY", gpus=2, efficiency=0.1235, hours=1.235, gpu_hours=2.469, cost=3.7
    )
    assert run_forecast(plan(None)) is None


RECORD = RunForecast(gpu_type="TOY", gpus=2, efficiency=0.5, hours=1.0, gpu_hours=2.0)


def test_with_actual_rounds_and_compares() -> None:
    # 4444.4 s = 1.23455... h -> 1.2346; x 2 GPUs 2.4691; against 1.0 h forecast 1.235
    done = with_actual(RECORD, 4444.4)
    assert (done.actual_hours, done.actual_gpu_hours, done.forecast_ratio) == (
        1.2346,
        2.4691,
        1.235,
    )
    # more than done is clamped to done; half done halves the forecast due: 1.2345 / 0.5
    assert with_actual(RECORD, 4444.4, 1.5).forecast_ratio == 1.235
    assert with_actual(RECORD, 4444.4, 0.5).forecast_ratio == 2.469


def test_with_actual_has_no_ratio_without_a_forecast_due() -> None:
    nothing = RECORD.model_copy(update={"hours": 0.0})
    assert with_actual(nothing, 3600.0).forecast_ratio is None
    assert with_actual(RECORD, 3600.0, -1.0).forecast_ratio is None  # clamped to nothing done


def run(forecast: RunForecast | None, start: str | None, end: str | None) -> RunRecord:
    record = RunRecord(id="r1", spec_hash="h", output_uri="s3://b/r1", forecast=forecast)
    record.start_time, record.completion_time = start, end
    return record


def test_completed_forecast_needs_both_times_and_a_forecast() -> None:
    start, end = "2026-01-01T00:00:00Z", "2026-01-01T02:00:00Z"
    assert completed_forecast(run(RECORD, start, None), None) == RECORD
    assert completed_forecast(run(RECORD, None, end), None) == RECORD
    assert completed_forecast(run(None, start, end), None) is None
    # two hours for a one-hour forecast; a quarter of the steps done: ratio 2 / 0.25 = 8
    full = completed_forecast(run(RECORD, start, end), None)
    assert full is not None and full.actual_hours == 2.0 and full.forecast_ratio == 2.0
    quarter = completed_forecast(run(RECORD, start, end), Progress(step=50, total_steps=200))
    assert quarter is not None and quarter.forecast_ratio == 8.0
