"""Placement decisions a user sees: how many GPUs, which strategy, refusals, pod resources.

Cards are made to measure: a catalog entry whose usable 90% sits exactly at, just below, or
between the per-GPU peaks of two placements, so the expected placement follows from the search
order alone (1, 2, 4, ... GPUs on one node, then whole nodes; DDP first, then ZeRO-3).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from lora_contract.types import (
    Attention,
    ComputeDtype,
    LoRAJobSpec,
    Optimizer,
    QuantizationMode,
    ResourceAmounts,
    Strategy,
)
from lora_operator.api.operator_config import GpuType
from lora_operator.memory import (
    Assumptions,
    GpuCatalog,
    PlanningError,
    TrainingShape,
    estimate_memory,
    load_architecture,
    plan_job,
    shape_for,
)
from lora_operator.memory.placement import _placements

from .conftest import HAND_LLAMA

Spec = Callable[..., LoRAJobSpec]
GIB = 1024**3
LLAMA_8B = "meta-llama/Llama-3.1-8B"
TINY = HAND_LLAMA
TINY_PARAMS = 220_480  # see tests/memory/test_estimate_terms.py


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def tiny_model(path: str, source: str = "s3://models/tiny") -> dict[str, str]:
    return {"name": "tiny-test-llama", "source": source, "config": path}


def catalog_with(memory_gib: float, max_per_node: int = 8, **fields: Any) -> GpuCatalog:
    """The default catalog plus a made-to-measure card named TEST (or `name`)."""
    gpu = GpuType.model_validate(
        {"name": "TEST", "memory_gib": memory_gib, "max_per_node": max_per_node, **fields}
    )
    return GpuCatalog.default().merged([gpu])


def memory_for_usable(usable: float) -> float:
    """A card size whose 90% is exactly `usable` (searched ulp by ulp around usable / 0.9)."""
    memory = usable / 0.9
    for _ in range(64):
        if memory * 0.9 == usable:
            return memory
        memory = math.nextafter(memory, math.inf if memory * 0.9 < usable else 0.0)
    raise AssertionError(f"no card size has exactly {usable} usable")


def peak(spec: LoRAJobSpec, strategy: Strategy, ranks: int) -> float:
    arch = load_architecture(spec.base_model.name, spec.base_model.config)
    return estimate_memory(arch, shape_for(spec, strategy, ranks)).peak_gib


# A global batch every searched world size divides (memory/batch.py), and every fit-search knob
# already on: the placement then follows from the card size and the search alone.
NO_KNOBS = {"gradientAccumulation": 4096, "activationOffloading": True}


def card_text(name: str, memory: float) -> str:
    return f"{name} ({memory * 0.9:.1f} of {memory:g} GiB usable)"


# --------------------------------------------------------------------------- search order


def test_placements_try_powers_of_two_then_whole_nodes() -> None:
    # documented order: 1, 2, 4, ... GPUs below the per-node maximum, the maximum, then 2..64
    # nodes of it
    assert _placements(6) == [(1, 1), (1, 2), (1, 4), (1, 6)] + [(n, 6) for n in range(2, 65)]
    assert [g for _, g in _placements(64)[:7]] == [1, 2, 4, 8, 16, 32, 64]
    assert _placements(64)[7:] == [(n, 64) for n in range(2, 65)]
    assert _placements(1)[:2] == [(1, 1), (2, 1)]


@pytest.mark.parametrize("gpus", [2, 4, 8, 16, 32])
def test_auto_picks_the_smallest_power_of_two_that_fits(spec: Spec, gpus: int) -> None:
    # a card between ZeRO-3's peak on `gpus` GPUs and on half as many: exactly `gpus` fit
    job = spec(resources={"gpuType": "TEST", "maxGpusPerNode": 64}, training=NO_KNOBS)
    fits, too_few = peak(job, Strategy.deepspeed_zero3, gpus), peak(job, Strategy.ddp, 1)
    if gpus > 2:
        too_few = peak(job, Strategy.deepspeed_zero3, gpus // 2)
    assert fits < too_few
    result = plan_job(job, catalog_with((fits + too_few) / 2 / 0.9, max_per_node=64))
    assert (result.nodes, result.gpus_per_node) == (1, gpus)
    assert result.strategy == Strategy.deepspeed_zero3


def test_one_gpu_when_a_full_replica_fits(spec: Spec) -> None:
    job = spec(resources={"gpuType": "TEST"})
    memory = memory_for_usable(peak(job, Strategy.ddp, 1))  # exactly at capacity
    result = plan_job(job, catalog_with(memory))
    assert (result.nodes, result.gpus_per_node, result.strategy) == (1, 1, Strategy.ddp)
    assert result.usable_gib == memory * 0.9
    assert result.reason == (
        f"A full replica fits one GPU: {result.estimate.peak_gib:.1f} GiB per GPU fits "
        f"{card_text('TEST', memory)}."
    )


def test_capacity_boundary_exactly_fits_and_one_ulp_less_does_not(spec: Spec) -> None:
    job = spec(resources={"gpuType": "TEST"})
    two = peak(job, Strategy.deepspeed_zero3, 2)
    exact = plan_job(job, catalog_with(memory_for_usable(two)))
    assert (exact.total_gpus, exact.strategy) == (2, Strategy.deepspeed_zero3)
    assert exact.estimate.peak_gib == two
    below = plan_job(job, catalog_with(memory_for_usable(math.nextafter(two, 0.0))))
    assert below.total_gpus == 4


def test_zero3_reason_names_the_single_gpu_need_and_the_gpus(spec: Spec) -> None:
    job = spec(resources={"gpuType": "TEST"}, training=NO_KNOBS)
    single, four = peak(job, Strategy.ddp, 1), peak(job, Strategy.deepspeed_zero3, 4)
    memory = (four + peak(job, Strategy.deepspeed_zero3, 2)) / 2 / 0.9
    result = plan_job(job, catalog_with(memory))
    assert result.reason == (
        f"One GPU would need {single:.1f} GiB, so deepspeed-zero3 shards the weights across "
        f"4 GPUs: {four:.1f} GiB per GPU fits {card_text('TEST', memory)}."
    )


def test_never_more_gpus_per_node_than_the_catalog_offers(spec: Spec) -> None:
    # 2 GPUs per node: a job that needs 4 GPUs gets 2 nodes x 2 (ZeRO-3 across nodes)
    job = spec(resources={"gpuType": "TEST"}, training=NO_KNOBS)
    four, two = peak(job, Strategy.deepspeed_zero3, 4), peak(job, Strategy.deepspeed_zero3, 2)
    memory = (four + two) / 2 / 0.9
    result = plan_job(job, catalog_with(memory, max_per_node=2))
    assert (result.nodes, result.gpus_per_node) == (2, 2)
    assert result.strategy == Strategy.deepspeed_zero3
    assert result.reason == (
        f"One GPU would need {peak(job, Strategy.ddp, 1):.1f} GiB, so deepspeed-zero3 shards "
        f"the weights across 2 nodes x 2 GPUs: {four:.1f} GiB per GPU fits "
        f"{card_text('TEST', memory)}."
    )
    # the spec's own maxGpusPerNode lowers the catalog's
    capped = spec(resources={"gpuType": "TEST", "maxGpusPerNode": 2}, training=NO_KNOBS)
    assert plan_job(capped, catalog_with(memory, max_per_node=8)).gpus_per_node == 2


def test_up_to_64_nodes_and_no_more(spec: Spec) -> None:
    # offloading already on: the fit search has no knob left that would move the boundary
    job = spec(resources={"gpuType": "TEST"}, training=NO_KNOBS)
    p32, p64 = peak(job, Strategy.deepspeed_zero3, 32), peak(job, Strategy.deepspeed_zero3, 64)
    p65 = peak(job, Strategy.deepspeed_zero3, 65)
    assert p65 < p64 < p32
    # (world sizes that do not divide the global batch of 4096, such as 63, are never tried)
    result = plan_job(job, catalog_with((p64 + p32) / 2 / 0.9, max_per_node=1))
    assert (result.nodes, result.gpus_per_node) == (64, 1)
    # refused only when 64 nodes exceed the card itself: inside the safety margin is a warning
    memory = (p65 + p64) / 2
    with pytest.raises(PlanningError) as refused:
        plan_job(job, catalog_with(memory, max_per_node=1))
    assert str(refused.value) == (
        f"spec.resources.gpuType: this job does not fit on any placement of "
        f"{card_text('TEST', memory)} up to 64 nodes x 1 GPUs whose GPU count divides the "
        f"global batch of 4096 (one GPU would need {peak(job, Strategy.ddp, 1):.1f} GiB); use "
        "quantization.mode nf4, distributed.offload cpu, a shorter dataset.maxSeqLength or a "
        "larger GPU"
    )


def test_auto_with_offload_still_starts_zero3_at_two_gpus(spec: Spec) -> None:
    # documented order: one GPU only as a full DDP replica. With CPU offload, ZeRO-3 on a
    # single rank would keep far less on the GPU (weights on the host), but the search moves on
    # to ZeRO-3 across 2 GPUs instead.
    job = spec(resources={"gpuType": "TEST"}, distributed={"offload": "cpu"})
    single_zero3 = peak(job, Strategy.deepspeed_zero3, 1)
    replica = peak(job, Strategy.ddp, 1)
    assert single_zero3 < replica
    result = plan_job(job, catalog_with((single_zero3 + replica) / 2 / 0.9))
    assert (result.total_gpus, result.strategy) == (2, Strategy.deepspeed_zero3)


# --------------------------------------------------------------------------- explicit placement


def test_explicit_auto_strategy_falls_back_to_zero3(spec: Spec) -> None:
    # 2 nodes x 2 GPUs, strategy auto: DDP (a full replica per GPU) does not fit, ZeRO-3 does
    job = spec(
        resources={"gpuType": "TEST"},
        distributed={"nodes": 2, "gpusPerNode": 2},
    )
    four = peak(job, Strategy.deepspeed_zero3, 4)
    memory = (four + peak(job, Strategy.ddp, 4)) / 2 / 0.9
    result = plan_job(job, catalog_with(memory))
    assert (result.nodes, result.gpus_per_node, result.strategy) == (
        2,
        2,
        Strategy.deepspeed_zero3,
    )
    assert result.reason == (
        f"2 node(s) x 2 GPU(s) as requested, deepspeed-zero3: {four:.1f} GiB per GPU fits "
        f"{card_text('TEST', memory)}."
    )


def test_explicit_placement_exactly_at_capacity(spec: Spec) -> None:
    job = spec(
        resources={"gpuType": "TEST"},
        distributed={"nodes": 1, "gpusPerNode": 2, "strategy": "deepspeed-zero3"},
        training={"activationOffloading": True},  # no fit-search knob left (see above)
    )
    two = peak(job, Strategy.deepspeed_zero3, 2)
    result = plan_job(job, catalog_with(memory_for_usable(two)))
    assert (result.total_gpus, result.strategy) == (2, Strategy.deepspeed_zero3)
    assert "Warning" not in result.reason
    # one ulp inside the safety margin: still placed, with a warning
    inside = plan_job(job, catalog_with(memory_for_usable(math.nextafter(two, 0.0))))
    assert inside.total_gpus == 2
    assert any("safety margin" in w for w in inside.warnings)
    # refused only above the card itself
    memory = math.nextafter(two, 0.0)
    with pytest.raises(PlanningError) as refused:
        plan_job(job, catalog_with(memory))
    # the message names the fields, the placement, the strategy and the number it needs
    assert str(refused.value) == (
        f"spec.distributed: 1 node(s) x 2 GPU(s) with deepspeed-zero3 needs {two:.1f} GiB per "
        f"GPU, more than {card_text('TEST', memory)}; add GPUs (distributed.nodes / "
        "gpusPerNode), use quantization.mode nf4, distributed.offload cpu or a shorter "
        "dataset.maxSeqLength"
    )


def test_explicit_single_gpu_with_auto_strategy_only_tries_ddp(spec: Spec) -> None:
    job = spec(
        baseModel={"name": "meta-llama/Llama-3.1-70B", "source": "s3://m/70b"},
        resources={"gpuType": "A100-40GB"},
        distributed={"nodes": 1, "gpusPerNode": 1},
    )
    with pytest.raises(
        PlanningError, match=r"^spec.distributed: 1 node\(s\) x 1 GPU\(s\) with ddp"
    ):
        plan_job(job)


def test_explicit_gpus_per_node_above_the_node_is_refused(spec: Spec) -> None:
    job = spec(resources={"gpuType": "TEST"}, distributed={"nodes": 1, "gpusPerNode": 4})
    with pytest.raises(PlanningError) as refused:
        plan_job(job, catalog_with(80, max_per_node=2))
    assert str(refused.value) == (
        "spec.distributed.gpusPerNode: 4 exceeds the 2 TEST GPUs a node offers "
        "(resources.maxGpusPerNode / catalog maxPerNode)"
    )
    at_max = spec(resources={"gpuType": "TEST"}, distributed={"nodes": 1, "gpusPerNode": 2})
    assert plan_job(at_max, catalog_with(80, max_per_node=2)).gpus_per_node == 2


# --------------------------------------------------------------------------- CPU placement


def cpu_catalog(memory_gib: float, bf16: bool = True) -> GpuCatalog:
    cpu = GpuType(name="cpu", memory_gib=memory_gib, resource_name="", bf16=bf16)
    return GpuCatalog.default().merged([cpu])


def cpu_estimate(path: str, strategy: Strategy, ranks: int, **changes: Any) -> float:
    """The CPU run's peak: fp32 everywhere, no CUDA context, the spec's default chunked loss
    (under ZeRO-3 too: the trainer gathers lm_head's shards for it)."""
    arch = load_architecture("tiny-test-llama", path)
    shape = replace(
        TrainingShape(chunked_loss=True),
        compute_dtype=ComputeDtype.fp32,
        strategy=strategy,
        data_parallel=ranks,
        **changes,
    )
    return estimate_memory(arch, shape, Assumptions(cuda_context_gib=0.0)).peak_gib


def test_cpu_auto_runs_one_fp32_process(spec: Spec, tiny_path: str) -> None:
    job = spec(baseModel=tiny_model(tiny_path), resources={"gpuType": "cpu"})
    result = plan_job(job, cpu_catalog(16, bf16=False))
    assert (result.on_cpu, result.nodes, result.gpus_per_node) == (True, 1, 1)
    assert result.strategy == Strategy.ddp
    expected = cpu_estimate(tiny_path, Strategy.ddp, 1)
    assert result.estimate.peak_gib == expected
    assert result.estimate.breakdown_gib["weights"] == round(TINY_PARAMS * 4 / GIB, 3)
    assert result.reason == (
        f"CPU placement: 1 training process with ddp; about {expected:.1f} GiB of host memory "
        "at peak."
    )
    # no bf16 warning for a CPU entry marked without bf16
    assert result.warnings == []
    # 2 CPUs for the process, 1.3x its peak + 2 GiB of host memory
    assert result.requests.cpu == "2"
    assert result.requests.memory == f"{math.ceil(expected * 1.3 + 2.0)}Gi"


def test_cpu_keeps_a_requested_strategy(spec: Spec, tiny_path: str) -> None:
    job = spec(
        baseModel=tiny_model(tiny_path),
        resources={"gpuType": "cpu"},
        distributed={"strategy": "deepspeed-zero3"},
    )
    result = plan_job(job, cpu_catalog(16))
    assert result.strategy == Strategy.deepspeed_zero3
    # ZeRO-3 with one rank still gathers two layers: its own estimate, not DDP's
    assert result.estimate.peak_gib == cpu_estimate(tiny_path, Strategy.deepspeed_zero3, 1)
    # (compared with DDP on the same chunked loss)
    assert result.estimate.peak_gib > cpu_estimate(tiny_path, Strategy.ddp, 1)


def test_cpu_explicit_processes(spec: Spec, tiny_path: str) -> None:
    job = spec(
        baseModel=tiny_model(tiny_path),
        resources={"gpuType": "cpu"},
        distributed={"nodes": 1, "gpusPerNode": 3, "strategy": "deepspeed-zero2"},
        # 32 x 4096 tokens: about 1.3 GiB per process, so the 1.3x factor shows in whole GiB
        training={"microBatchSize": 32},
        dataset={"maxSeqLength": 4096},
    )
    expected = cpu_estimate(tiny_path, Strategy.deepspeed_zero2, 3, micro_batch=32, seq_len=4096)
    assert expected > 1.0
    memory = memory_for_usable(expected)  # exactly at the host's usable memory: no warning
    result = plan_job(job, cpu_catalog(memory))
    assert result.reason == (
        "CPU placement: 1 node(s) x 3 process(s) as requested, deepspeed-zero2; about "
        f"{expected:.1f} GiB of host memory per process."
    )
    # per pod: 2 CPUs and 1.3x the peak per process, + 2 GiB
    assert result.requests.cpu == "6"
    assert result.requests.memory == f"{math.ceil(3 * expected * 1.3 + 2.0)}Gi"


def test_cpu_explicit_over_the_host_memory_is_a_warning_not_an_error(
    spec: Spec, tiny_path: str
) -> None:
    job = spec(
        baseModel=tiny_model(tiny_path),
        resources={"gpuType": "cpu"},
        distributed={"nodes": 2, "gpusPerNode": 1, "strategy": "ddp"},
    )
    expected = cpu_estimate(tiny_path, Strategy.ddp, 2)
    usable = math.nextafter(expected, 0.0)
    result = plan_job(job, cpu_catalog(memory_for_usable(usable)))
    assert (result.nodes, result.gpus_per_node) == (2, 1)
    assert result.reason == (
        "CPU placement: 2 node(s) x 1 process(s) as requested, ddp; about "
        f"{expected:.1f} GiB of host memory per process. Warning: {expected:.1f} GiB per "
        f"process exceeds {usable:.1f}."
    )


# --------------------------------------------------------------------------- pod resources


def test_gpu_pod_requests_for_a_small_model(spec: Spec, tiny_path: str) -> None:
    # one GPU: 8 CPUs; host memory 8 GiB + one 16-bit shard (220,480 * 2 bytes), rounded up;
    # s3 source: 10 GiB scratch + the 16-bit checkpoint * 1.1, rounded up
    job = spec(baseModel=tiny_model(tiny_path), resources={"gpuType": "TEST"})
    result = plan_job(job, catalog_with(80))
    assert result.total_gpus == 1
    assert result.requests == ResourceAmounts(cpu="8", memory="9Gi", ephemeral_storage="11Gi")
    assert result.limits == ResourceAmounts(memory="9Gi", ephemeral_storage="11Gi")
    # an hf:// source is mounted, not downloaded: scratch only
    hf = spec(baseModel=tiny_model(tiny_path, "hf://org/tiny"), resources={"gpuType": "TEST"})
    assert plan_job(hf, catalog_with(80)).requests.ephemeral_storage == "10Gi"


def test_gpu_pod_requests_scale_with_the_model_and_gpus(spec: Spec) -> None:
    # Llama-3.2-1B: 1,235,814,400 parameters = 2.302 GiB in 16-bit. 4 GPUs on one node:
    # 32 CPUs; memory 4 * (8 + 2.302) = 41.2 -> 42Gi; scratch 10 + 2.302 * 1.1 = 12.5 -> 13Gi
    job = spec(
        baseModel={"name": "meta-llama/Llama-3.2-1B", "source": "s3://m/1b"},
        distributed={"nodes": 1, "gpusPerNode": 4, "strategy": "ddp"},
    )
    result = plan_job(job)
    assert result.requests == ResourceAmounts(cpu="32", memory="42Gi", ephemeral_storage="13Gi")
    # Llama-3.1-8B: 16 GB of shards, but they load one at a time: at most 5 GiB of them;
    # 16 GPUs on a 16-GPU node would want 128 CPUs, capped at 96
    big = spec(
        resources={"gpuType": "TEST", "maxGpusPerNode": 16},
        distributed={"nodes": 1, "gpusPerNode": 16, "strategy": "ddp"},
    )
    result = plan_job(big, catalog_with(80, max_per_node=16))
    assert result.requests.cpu == "96"
    assert result.requests.memory == f"{16 * (8 + 5)}Gi"


def test_offload_adds_the_host_states_to_the_pod_memory(spec: Spec) -> None:
    # ZeRO-3 offload on 8 GPUs of one node: each rank parks its weight shard and optimizer
    # states in host memory, with 25% slack: 8 * (8 + 5 + host * 1.25)
    job = spec(
        baseModel={"name": "meta-llama/Llama-3.1-70B", "source": "hf://m/70b"},
        distributed={
            "nodes": 1,
            "gpusPerNode": 8,
            "strategy": "deepspeed-zero3",
            "offload": "cpu",
        },
    )
    result = plan_job(job)
    host = result.estimate.host_offload_gib
    # the weight shard alone: 70,553,706,496 * 2 bytes / 8 ranks
    assert host > 70_553_706_496 * 2 / 8 / GIB
    assert result.requests.memory == f"{math.ceil(8 * (8 + 5 + host * 1.25))}Gi"
    assert result.limits.memory == result.requests.memory


def test_overrides_replace_only_what_they_name(spec: Spec, tiny_path: str) -> None:
    job = spec(
        baseModel=tiny_model(tiny_path),
        resources={
            "gpuType": "TEST",
            "requests": {"memory": "20Gi"},
            "limits": {"ephemeralStorage": "50Gi"},
        },
    )
    result = plan_job(job, catalog_with(80))
    assert result.requests == ResourceAmounts(cpu="8", memory="20Gi", ephemeral_storage="11Gi")
    assert result.limits == ResourceAmounts(memory="9Gi", ephemeral_storage="50Gi")


# --------------------------------------------------------------------------- shape and status


def test_shape_for_carries_every_memory_relevant_field(spec: Spec) -> None:
    job = spec(
        quantization={"mode": "nf4", "doubleQuant": False, "computeDtype": "fp16"},
        lora={"r": 8, "dropout": 0.0, "targetModules": ["q_proj", "down_proj"], "useDora": True},
        dataset={"maxSeqLength": 512},
        training={
            "microBatchSize": 3,
            "gradientCheckpointing": False,
            "attention": "eager",
            "optimizer": "paged_adamw_8bit",
        },
        distributed={"strategy": "deepspeed-zero2", "offload": "cpu"},
    )
    expected = TrainingShape(
        quantization=QuantizationMode.nf4,
        double_quant=False,
        compute_dtype=ComputeDtype.fp16,
        rank=8,
        target_modules=("q_proj", "down_proj"),
        dropout=0.0,
        use_dora=True,
        seq_len=512,
        micro_batch=3,
        gradient_checkpointing=False,
        attention=Attention.eager,
        optimizer=Optimizer.paged_adamw_8bit,
        strategy=Strategy.deepspeed_zero2,
        data_parallel=6,
        offload_cpu=True,
        chunked_loss=True,  # training.chunkedLoss's default
    )
    assert shape_for(job, Strategy.deepspeed_zero2, 6) == expected
    # CPU runs train in fp32 whatever the spec says
    on_cpu = shape_for(job, Strategy.deepspeed_zero2, 6, on_cpu=True)
    assert on_cpu == replace(expected, compute_dtype=ComputeDtype.fp32)


def test_gpu_plan_counts_the_cuda_context(spec: Spec, tiny_path: str) -> None:
    result = plan_job(
        spec(baseModel=tiny_model(tiny_path), resources={"gpuType": "TEST"}), catalog_with(80)
    )
    assert result.estimate.breakdown_gib["cuda_context"] == 0.5
    assert result.gpu_resource_name == "nvidia.com/gpu"


def test_to_status_reports_the_decision(spec: Spec) -> None:
    result = plan_job(
        spec(resources={"gpuType": "A100-80GB"}, lora={"r": 64}, dataset={"numExamples": 100})
    )
    status = result.to_status()
    est = result.estimate
    assert status.gpu_type == "A100-80GB"
    assert status.gpu_memory_gib == 79.3
    assert (status.nodes, status.gpus_per_node, status.total_gpus) == (1, 1, 1)
    assert status.strategy == Strategy.ddp
    # peak and headroom (card - peak) to 1/100 GiB
    assert status.per_gpu_peak_gib == round(est.peak_gib, 2) != round(est.peak_gib)
    assert status.headroom_gib == round(79.3 - est.peak_gib, 2) != round(79.3 - est.peak_gib)
    assert status.breakdown_gib == est.breakdown_gib
    assert status.total_params == 8_030_261_248
    # r=64 on q/k/v/o of 32 layers: 64 * (8192 + 2 * 5120 + 8192) per layer
    assert status.trainable_params == 32 * 64 * (8192 + 2 * 5120 + 8192)
    assert status.requests == result.requests
    assert status.limits == result.limits
    assert status.reason == result.reason
    assert status.warnings == result.warnings
    assert any("rank 64 is high for 100 examples" in w for w in status.warnings)


def test_a_kbit_plan_without_the_published_excess_of_headroom_says_so(spec: Spec) -> None:
    """QLoRA estimates are not GPU-calibrated: published bitsandbytes peaks ran up to 33% above
    the model. A k-bit plan that would not survive that is placed with a warning naming the
    field; one with the headroom, and a bf16 plan, are not warned."""
    qlora = spec(resources={"gpuType": "TEST"}, quantization={"mode": "nf4"})
    need = peak(qlora, Strategy.ddp, 1)
    tight = plan_job(qlora, catalog_with(need * 1.2))
    assert tight.total_gpus == 1
    [warning] = [w for w in tight.warnings if "calibrated" in w]
    assert warning.startswith("memory: spec.quantization.mode nf4 estimates are not yet")
    assert f"{need * 1.33:.1f} of {need * 1.2:g} GiB" in warning
    roomy = plan_job(qlora, catalog_with(need * 1.34))
    assert not any("calibrated" in w for w in roomy.warnings)
    bf16 = spec(resources={"gpuType": "TEST"})
    bf16_tight = plan_job(bf16, catalog_with(peak(bf16, Strategy.ddp, 1) * 1.2))
    assert not any("calibrated" in w for w in bf16_tight.warnings)
