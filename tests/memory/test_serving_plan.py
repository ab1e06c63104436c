"""The serving plan (memory/serving_plan.py), against numbers worked by hand from the published
model configs: KV bytes per token, weights by bit width, each per-GPU term of the 8B and 70B
examples, the tensor-parallel size, vLLM's flags, the predictor's requests, the GPU choice
(spec's, training's, cheapest by price x GPUs) and the refusals naming the field."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from lora_contract.types import LoRAJob, LoRAJobSpec, ResourceAmounts
from lora_devkit.bench import serving_memory
from lora_operator.api.loading import load_lorajobs
from lora_operator.api.operator_config import GpuType
from lora_operator.memory import GpuCatalog, PlanningError, plan_job
from lora_operator.memory.architecture import Architecture, LinearModule, architecture_of
from lora_operator.memory.model_config import ModelConfig, shipped_config
from lora_operator.memory.report import render_table
from lora_operator.memory.serving_plan import (
    ServingKnobs,
    cpu_terms,
    kv_bytes_per_token,
    memory_terms,
    plan_serving,
    tensor_parallel_sizes,
    vllm_rank,
    weight_bytes,
)

GIB = 1024**3
ROOT = Path(__file__).resolve().parents[2]
Spec = Callable[..., LoRAJobSpec]


def load_example(path: Path) -> LoRAJob:
    return load_lorajobs(str(path))[0]


def arch(name: str) -> Architecture:
    return architecture_of(shipped_config(name))


LLAMA_8B = "meta-llama/Llama-3.1-8B"
LLAMA_70B = "meta-llama/Llama-3.1-70B"


def made_up(
    kv_heads: int, total: int = 1000, quantizable: int = 640, rows: int = 10
) -> Architecture:
    """A hand-sized architecture: Llama-2-7B's attention shape (32 layers, 32 heads of 128)."""
    return Architecture(
        source="hand",
        model_type="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_layers=32,
        num_heads=32,
        num_kv_heads=kv_heads,
        head_dim=128,
        vocab_size=32000,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        num_experts=0,
        experts_per_token=0,
        total_params=total,
        quantizable_params=quantizable,
        quantizable_rows=rows,
        linears=(LinearModule("model.layers.0.self_attn.q_proj", 4096, 4096),),
        largest_layer_params=0,
    )


def test_kv_bytes_per_token_by_hand() -> None:
    # 2 (K, V) x layers x kv heads x head_dim x 2 bytes
    assert kv_bytes_per_token(arch(LLAMA_8B)) == 2 * 32 * 8 * 128 * 2 == 128 * 1024
    assert kv_bytes_per_token(arch(LLAMA_70B)) == 2 * 80 * 8 * 128 * 2 == 320 * 1024
    assert kv_bytes_per_token(made_up(kv_heads=32)) == 512 * 1024  # Llama-2-7B, no GQA
    # tensor parallel splits the KV heads: 8 / 4 = 2 per GPU; past 8 GPUs a head is replicated
    assert kv_bytes_per_token(arch(LLAMA_8B), tp=4) == 2 * 32 * 2 * 128 * 2
    assert kv_bytes_per_token(arch(LLAMA_8B), tp=16) == 2 * 32 * 1 * 128 * 2


def test_weights_by_bit_width() -> None:
    a = made_up(kv_heads=8, total=1000, quantizable=640, rows=20)
    assert weight_bytes(a, 16) == 2000  # everything 16-bit
    assert weight_bytes(a, 8) == 640 + 20 * 4 + 360 * 2  # int8 + fp32 row scales + 16-bit rest
    assert weight_bytes(a, 4) == 320 + 640 / 64 * 4 + 360 * 2  # nf4 + fp32 absmax per 64
    with pytest.raises(PlanningError, match="3-bit"):
        weight_bytes(a, 3)


def test_8b_terms_by_hand() -> None:
    knobs = ServingKnobs(max_model_len=8192, max_concurrency=8, max_loras=4, lora_rank=16)
    terms = memory_terms(arch(LLAMA_8B), knobs, tp=1)
    assert terms["weights"] == pytest.approx(8_030_261_248 * 2 / GIB)  # Llama-3.1-8B's count
    assert terms["kv_cache"] == 8.0  # 128 KiB x 8192 tokens x 8 sequences
    # all seven linears at rank 16, per layer: r x (in + out) summed = 1,310,720; 32 layers
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3)
    assert per_layer == 1_310_720
    assert terms["lora_slots"] == pytest.approx(4 * per_layer * 32 * 2 / GIB)  # 0.3125
    # forward over 8192 tokens: (2 x 4096 + 2 x 14336) x 2 bytes; sampler: 8 x 128256 x 8 bytes
    assert terms["activations"] == pytest.approx((8192 * 36864 * 2 + 8 * 128256 * 8) / GIB)
    assert (terms["cuda_graphs"], terms["runtime_other"], terms["cuda_context"]) == (
        0.5,
        0.4,
        0.5,
    )


def test_8b_example_serves_on_its_a100_with_vllm_flags_and_requests() -> None:
    job = load_example(ROOT / "examples" / "lora-llama3-8b-a100.yaml")
    serving = plan_job(job.spec).to_status().serving
    assert serving is not None
    assert (serving.gpu_type, serving.gpus, serving.tensor_parallel_size) == ("A100-80GB", 1, 1)
    # 14.958 + 8 + 0.3125 + 0.5701 + 1.4 = 25.24 GiB of 79.3: vLLM's default 0.90 covers it
    assert serving.per_gpu_gib == 25.24
    assert serving.gpu_memory_utilization == 0.90
    assert serving.vllm_args == [
        "--max-model-len=8192",
        "--max-num-seqs=8",
        "--max-loras=4",
        "--max-cpu-loras=8",
        "--tensor-parallel-size=1",
        "--gpu-memory-utilization=0.90",
    ]
    # cpu 2 + 2 x 1 GPU; memory 4 + 2 + 5 (one shard) + 8 CPU adapters of 41,943,040 x 2 bytes
    assert serving.requests == ResourceAmounts(cpu="4", memory="12Gi")
    assert serving.limits == ResourceAmounts(memory="12Gi")
    assert serving.node_selector == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert (serving.resource_name, serving.gpu_memory_gib) == ("nvidia.com/gpu", 79.3)
    assert serving.reason == "1 x A100-80GB: 25.2 GiB per GPU for 8 sequences of 8192 tokens"


def test_70b_example_needs_four_h100_with_tensor_parallelism() -> None:
    job = load_example(ROOT / "examples" / "lora-llama3-70b-zero3.yaml")
    serving = plan_job(job.spec).to_status().serving
    assert serving is not None
    # TP 2 per GPU: 131.4 / 2 = 65.7 weights + 10 KV + 6.2 slots + ~2 > 0.95 x 79.6 = 75.6
    two = memory_terms(arch(LLAMA_70B), ServingKnobs(8192, 8, 4, 64), tp=2)
    assert sum(two.values()) > 0.95 * 79.6
    assert (serving.gpu_type, serving.gpus, serving.tensor_parallel_size) == ("H100-80GB", 4, 4)
    assert serving.memory_gib["weights"] == round(70_553_706_496 * 2 / 4 / GIB, 3)
    assert serving.memory_gib["kv_cache"] == 5.0  # 2 kv heads per GPU: 80 KiB x 65,536 tokens
    assert "--tensor-parallel-size=4" in serving.vllm_args
    # 32.8537 + 5 + 6.1719 slots (828,375,040 x 4 x 2 B) + 0.4764 activations + 1.4 = 45.902
    assert serving.per_gpu_gib == 45.9
    # cpu 2 + 2 x 4; memory 4 + 2 x 4 + 5 + 8 CPU adapters (all-linear r 64: 828,375,040 x 2 B)
    adapters = 8 * 828_375_040 * 2 / GIB
    assert 4 + 8 + 5 + adapters == pytest.approx(29.34, abs=0.01)
    assert serving.requests == ResourceAmounts(cpu="10", memory="30Gi")


def test_plan_command_shows_the_serving_section() -> None:
    job = load_example(ROOT / "examples" / "lora-llama3-70b-zero3.yaml")
    text = render_table(job, plan_job(job.spec))
    assert "serving (vLLM): 4 x H100-80GB, tensor parallel 4" in text
    assert re.search(r"\n      kv_cache +5\.00  K and V", text)
    assert "--gpu-memory-utilization=0.90" in text
    assert "predictor requests: cpu=10, memory=30Gi" in text


def test_no_serving_section_without_serving(spec: Spec) -> None:
    assert plan_job(spec(resources={"gpuType": "A100-80GB"})).to_status().serving is None


def catalog(*gpus: GpuType) -> GpuCatalog:
    return GpuCatalog().merged(gpus)


SMALL = GpuType(name="small-16", memory_gib=16, max_per_node=1, price_per_gpu_hour=0.5)
MID = GpuType(name="mid-24", memory_gib=24, price_per_gpu_hour=1.5)
BIG = GpuType(name="big-80", memory_gib=80, price_per_gpu_hour=2.5)
UNPRICED = GpuType(name="free-40", memory_gib=40)


def serving_spec(spec: Spec, gpu: str, **serving: object) -> LoRAJobSpec:
    return spec(resources={"gpuType": gpu}, serving={"enabled": True, **serving})


def test_training_type_preferred_when_it_fits(spec: Spec) -> None:
    plan = plan_serving(serving_spec(spec, "mid-24"), arch(LLAMA_8B), catalog(SMALL, MID, BIG))
    # 25.24 GiB does not fit 0.95 x 24 on one; TP 2: 7.48 + 4 + 0.31 + 0.35 + 1.4 = 13.5
    assert (plan.gpu_type, plan.tensor_parallel_size) == ("mid-24", 2)


def test_cheapest_by_price_times_gpus_when_training_type_does_not_fit(spec: Spec) -> None:
    # small-16 (one per node) cannot hold 25 GiB; mid-24 needs 2 x 1.5 = 3.0 an hour,
    # big-80 one at 2.5: cheaper in total though dearer per GPU; unpriced free-40 ranks last
    plan = plan_serving(
        serving_spec(spec, "small-16"), arch(LLAMA_8B), catalog(SMALL, MID, BIG, UNPRICED)
    )
    assert (plan.gpu_type, plan.gpus) == ("big-80", 1)
    unpriced = plan_serving(
        serving_spec(spec, "small-16"), arch(LLAMA_8B), catalog(SMALL, UNPRICED)
    )
    assert (unpriced.gpu_type, unpriced.gpus) == ("free-40", 1)


def test_serving_gpu_type_is_honoured(spec: Spec) -> None:
    plan = plan_serving(
        serving_spec(spec, "big-80", gpuType="mid-24"), arch(LLAMA_8B), catalog(MID, BIG)
    )
    assert (plan.gpu_type, plan.tensor_parallel_size) == ("mid-24", 2)


def test_utilization_raised_to_cover_the_terms(spec: Spec) -> None:
    card = GpuType(name="card-28", memory_gib=28, max_per_node=1)
    plan = plan_serving(serving_spec(spec, "card-28"), arch(LLAMA_8B), catalog(card))
    # 25.2406 / 28 = 0.9015, rounded up to the next hundredth
    assert plan.gpu_memory_utilization == 0.91
    assert "--gpu-memory-utilization=0.91" in plan.vllm_args


def test_knobs_change_the_flags_and_the_kv_cache(spec: Spec) -> None:
    plan = plan_serving(
        serving_spec(spec, "big-80", maxModelLen=4096, maxConcurrency=2, maxLoras=1),
        arch(LLAMA_8B),
        catalog(BIG),
    )
    assert plan.memory_gib["kv_cache"] == 1.0  # 128 KiB x 4096 x 2
    assert plan.vllm_args[:4] == [
        "--max-model-len=4096",
        "--max-num-seqs=2",
        "--max-loras=1",
        "--max-cpu-loras=2",
    ]


def test_default_context_is_the_models_when_shorter(
    spec: Spec, tiny_llama: dict[str, object]
) -> None:
    tiny = ModelConfig("tiny", tiny_llama)
    plan = plan_job(serving_spec(spec, "cpu"), model_config=tiny).to_status().serving
    assert plan is not None
    assert plan.vllm_args == [
        "--max-model-len=256",  # the tiny model's max_position_embeddings
        "--max-num-seqs=8",
        "--max-loras=4",
        "--max-cpu-loras=8",
    ]
    assert (plan.gpu_type, plan.gpus) == ("cpu", 0)
    assert set(plan.memory_gib) == {"weights", "kv_cache", "lora_slots", "activations"}


def test_context_above_the_model_is_refused(spec: Spec) -> None:
    with pytest.raises(PlanningError, match=r"spec.serving.maxModelLen: 200000 .* 131072"):
        plan_serving(serving_spec(spec, "big-80", maxModelLen=200000), arch(LLAMA_8B))


def test_nothing_fits_is_refused_naming_the_field(spec: Spec) -> None:
    with pytest.raises(PlanningError) as pinned:
        plan_serving(
            serving_spec(spec, "big-80", gpuType="small-16"), arch(LLAMA_8B), catalog(SMALL, BIG)
        )
    assert str(pinned.value) == (
        "spec.serving.gpuType: the vLLM server does not fit small-16 at any tensor-parallel size "
        "of one node: weights 15.0 GiB, KV cache 1.00 GiB per sequence of maxModelLen 8192 x "
        "maxConcurrency 8; lower spec.serving.maxModelLen or maxConcurrency, or name a larger "
        "spec.serving.gpuType"
    )
    with pytest.raises(PlanningError, match=r"^spec\.serving: .* small-16, mid-24 "):
        plan_serving(
            serving_spec(spec, "small-16", maxConcurrency=64), arch(LLAMA_70B), catalog(SMALL, MID)
        )


def test_bench_rows_match_the_published_vllm_figures() -> None:
    """`make bench`'s serving rows: the KV figure is exact arithmetic, the weights within 1%."""
    rows = {row.id: row for row in serving_memory.rows()}
    assert rows["llama-3.1-8b-kv-per-token"].ours == 131072
    assert rows["llama-3.1-70b-kv-4k-x8"].ours == 327680 * 4096 * 8 / 1e9
    judged = [row for row in rows.values() if row.judged]
    assert len(judged) == 7
    bnb4 = rows.pop("llama-3.2-1b-weights-bnb4")
    assert all(abs(row.error) < 0.01 for row in rows.values() if row.judged)
    # 1B at nf4 by hand: 16 layers x 60,817,408 linear weights at half a byte + an fp32 absmax
    # per 64, + 262,735,872 others (embedding tied, norms) in 16-bit = 1,072,828,416 bytes:
    # 2.1% above vLLM's 0.9786 GiB (the checkpoint double-quantizes its absmax: an upper bound)
    assert bnb4.ours * GIB == 486_539_264 + 60_817_408 + 525_471_744
    assert bnb4.error == pytest.approx(1_072_828_416 / GIB / 0.9786 - 1)
    assert 0.02 < bnb4.error < serving_memory.TARGET_ERROR
    assert not rows["llama-3.1-8b-runtime-l4"].judged  # an estimate, shown only


def test_cheapest_unpriced_takes_the_least_gpu_memory(spec: Spec) -> None:
    # 8B: one 80 GiB card (80 GiB bought) or two 24 GiB cards at TP 2 (48 GiB): the two
    big = GpuType(name="free-80", memory_gib=80)
    pair = GpuType(name="free-24", memory_gib=24)
    plan = plan_serving(serving_spec(spec, "small-16"), arch(LLAMA_8B), catalog(SMALL, big, pair))
    assert (plan.gpu_type, plan.gpus) == ("free-24", 2)


def test_tensor_parallel_sizes_vllm_accepts() -> None:
    eight = GpuType(name="eight", memory_gib=80, max_per_node=8)
    assert tensor_parallel_sizes(made_up(kv_heads=8), eight) == [1, 2, 4, 8]
    # 12 KV heads: 8 neither divides them nor is divided by them
    assert tensor_parallel_sizes(made_up(kv_heads=12), eight) == [1, 2, 4]
    assert tensor_parallel_sizes(made_up(kv_heads=2), eight) == [1, 2, 4, 8]  # replicated


def test_rank_above_vllms_is_refused() -> None:
    assert vllm_rank(17) == 32
    with pytest.raises(PlanningError) as pinned:
        vllm_rank(1024)
    assert str(pinned.value) == "spec.lora.r: 1024 is above vLLM's largest LoRA rank 512"


def test_cpu_terms_and_host_memory_by_hand(spec: Spec, tiny_llama: dict[str, object]) -> None:
    tiny = architecture_of(ModelConfig("tiny", tiny_llama))
    terms = cpu_terms(tiny, ServingKnobs(256, 8, 4, 8))
    # 2 layers x 2 KV heads x 16 dims x 2 (K, V) x 2 bytes = 256 B a token, x 256 x 8
    assert terms["kv_cache"] == 256 * 256 * 8 / GIB
    # embeddings 512 x 64, per layer 4096 + 2048 x 2 + 4096 + 8192 x 3 + 2 norms of 64,
    # final norm, lm_head 512 x 64: 139,584 parameters, 2 bytes each
    assert terms["weights"] == 139_584 * 2 / GIB
    # the 8B trained on CPU is served there: 4 GiB + its terms + 8 CPU adapters (0.625 GiB)
    plan = plan_serving(serving_spec(spec, "cpu"), arch(LLAMA_8B))
    assert plan.memory_gib == {
        "weights": 14.958,
        "kv_cache": 8.0,
        "lora_slots": 0.312,
        "activations": 0.57,
    }
    # 4 + 14.958 + 8 + 0.3125 + 0.5701 + 0.625 = 28.47
    assert (plan.requests, plan.limits) == (
        ResourceAmounts(cpu="4", memory="29Gi"),
        ResourceAmounts(memory="29Gi"),
    )
    assert (plan.gpus, plan.tensor_parallel_size, plan.gpu_memory_utilization) == (0, 1, None)
    assert plan.reason == "served on CPU, like the training (no accelerator flags)"


def test_a_small_model_loads_its_whole_weights_not_a_5gib_shard(
    spec: Spec, tiny_llama: dict[str, object]
) -> None:
    tiny = architecture_of(ModelConfig("tiny", tiny_llama))
    plan = plan_serving(serving_spec(spec, "big-80"), tiny, catalog(BIG))
    # 4 GiB + 2 for one GPU worker + 279,168 B of weights + a few KiB of CPU adapters = 6.0003
    assert plan.requests == ResourceAmounts(cpu="4", memory="7Gi")


# Llama-3.1-8B by hand, per layer: q and o 4096 x 4096, k and v 4096 x 1024, gate/up/down
# 4096 x 14336: 218,103,808 linear weights, 43,008 output rows (4096 + 1024 + 1024 + 4096 +
# 14336 + 14336 + 4096); 32 layers. The rest: embed and untied lm_head 128256 x 4096 each,
# two norms of 4096 per layer and the final one.
LINEARS_8B = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
ROWS_8B = 32 * 43_008
REST_8B = 2 * 128256 * 4096 + 2 * 32 * 4096 + 4096


def test_8b_weights_served_at_4_and_8_bits_by_hand() -> None:
    assert (LINEARS_8B, ROWS_8B, REST_8B) == (6_979_321_856, 1_376_256, 1_050_939_392)
    assert LINEARS_8B + REST_8B == 8_030_261_248  # the published 8.03B
    # nf4: half a byte a weight + one fp32 absmax per 64; the rest stays 16-bit
    nf4 = 3_489_660_928 + 436_207_616 + 2_101_878_784
    assert nf4 == LINEARS_8B // 2 + LINEARS_8B // 64 * 4 + REST_8B * 2 == 6_027_747_328
    # int8: a byte a weight + one fp32 scale per output row
    int8 = 6_979_321_856 + 5_505_024 + 2_101_878_784
    assert int8 == 9_086_705_664
    a = arch(LLAMA_8B)
    for bits, expected in ((4, nf4), (8, int8)):
        knobs = ServingKnobs(8192, 8, 4, 16, weight_bits=bits)
        assert memory_terms(a, knobs, tp=1)["weights"] == pytest.approx(expected / GIB)
        assert memory_terms(a, knobs, tp=2)["weights"] == pytest.approx(expected / 2 / GIB)
    assert nf4 / GIB == pytest.approx(5.6138, abs=1e-4)


def test_nf4_serving_fits_one_24gb_card_where_16_bit_needs_two(spec: Spec) -> None:
    a, cards = arch(LLAMA_8B), catalog(MID)
    sixteen = plan_serving(serving_spec(spec, "mid-24"), a, cards)
    # 16-bit: 25.24 GiB does not fit one card; no quantization flag
    assert (sixteen.gpus, sixteen.vllm_args[-1]) == (2, "--gpu-memory-utilization=0.90")
    four = plan_serving(serving_spec(spec, "mid-24", quantization="nf4"), a, cards)
    # 5.6138 weights + 8 KV + 0.3125 slots + 0.5701 activations + 1.4 = 15.896 of 0.95 x 24
    assert (four.gpu_type, four.gpus, four.per_gpu_gib) == ("mid-24", 1, 15.9)
    assert four.memory_gib["weights"] == 5.614
    assert four.vllm_args == [
        "--max-model-len=8192",
        "--max-num-seqs=8",
        "--max-loras=4",
        "--max-cpu-loras=8",
        "--tensor-parallel-size=1",
        "--gpu-memory-utilization=0.90",
        "--quantization=bitsandbytes",
        "--load-format=bitsandbytes",
    ]
    # the host loads one 5 GiB shard either way: cpu 2 + 2, memory 4 + 2 + 5 + 8 adapters
    assert four.requests == ResourceAmounts(cpu="4", memory="12Gi")


def test_nf4_on_a_catalog_type_without_gpus_is_refused_naming_the_field(spec: Spec) -> None:
    hostonly = GpuType(name="host-only", memory_gib=64, resource_name="")
    job = serving_spec(spec, "A100-80GB", gpuType="host-only", quantization="nf4")
    with pytest.raises(PlanningError) as refused:
        plan_serving(job, arch(LLAMA_8B), catalog(hostonly))
    assert str(refused.value) == (
        "spec.serving.quantization: nf4 needs a CUDA GPU (bitsandbytes); host-only has none"
    )
