"""Placement choices for the shipped example shapes, explicit placements, warnings, errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lora_contract.types import LoRAJobSpec, PlanStatus, Strategy, TrainingOverrides
from lora_operator.api.operator_config import GpuType
from lora_operator.memory import GpuCatalog, PlanningError, plan_job

Spec = Callable[..., LoRAJobSpec]
LLAMA_70B = {"name": "meta-llama/Llama-3.1-70B", "source": "s3://models/llama-3.1-70b"}


def test_qlora_8b_fits_one_24gb_gpu(spec: Spec) -> None:
    for gpu in ("L4-24GB", "RTX4090-24GB", "L4"):
        result = plan_job(spec(quantization={"mode": "nf4"}, resources={"gpuType": gpu}))
        assert (result.nodes, result.gpus_per_node, result.strategy) == (1, 1, Strategy.ddp)
        assert result.estimate.peak_gib < 0.9 * result.gpu.memory_gib


def test_bf16_lora_8b_fits_one_a100_80gb(spec: Spec) -> None:
    result = plan_job(spec(resources={"gpuType": "A100-80GB"}))
    status = result.to_status()
    assert isinstance(status, PlanStatus)
    assert (status.nodes, status.gpus_per_node, status.strategy) == (1, 1, Strategy.ddp)
    assert 16 < status.per_gpu_peak_gib < 30
    assert "fits one GPU" in status.reason
    assert status.trainable_params == 13_631_488


def test_bf16_lora_8b_at_8k_fits_one_24gb_card_with_offloading(spec: Spec) -> None:
    # as written it needs more than one L4; offloading the checkpointed inputs fits one, and
    # ZeRO-3 on two saves less than the 10% that scaling out must save
    result = plan_job(spec(resources={"gpuType": "L4-24GB"}, dataset={"maxSeqLength": 8192}))
    assert (result.total_gpus, result.strategy) == (1, Strategy.ddp)
    assert result.training_overrides == TrainingOverrides(activation_offloading=True)
    zero3 = result.alternatives[0]
    assert (zero3.nodes, zero3.gpus_per_node, zero3.strategy) == (1, 2, Strategy.deepspeed_zero3)
    assert 1 / 1.1 <= zero3.relative_cost < 1.0
    assert "would cost 4% less, under the 10% that scaling out must save" in result.reason


def test_70b_explicit_two_nodes_of_eight_h100(spec: Spec) -> None:
    result = plan_job(
        spec(
            baseModel=LLAMA_70B,
            resources={"gpuType": "H100-80GB"},
            distributed={"nodes": 2, "gpusPerNode": 8, "strategy": "deepspeed-zero3"},
        )
    )
    assert (result.nodes, result.gpus_per_node) == (2, 8)
    assert result.strategy == Strategy.deepspeed_zero3
    assert result.estimate.peak_gib < 40
    assert result.requests.cpu == "64"
    # s3 source: each node downloads ~141 GB of 16-bit weights
    assert int((result.requests.ephemeral_storage or "0Gi").removesuffix("Gi")) > 140


def test_70b_auto_shards_with_zero3(spec: Spec) -> None:
    result = plan_job(spec(baseModel=LLAMA_70B, resources={"gpuType": "H100-80GB"}))
    assert result.strategy == Strategy.deepspeed_zero3
    assert 2 <= result.total_gpus <= 8


def test_explicit_placement_that_cannot_fit_is_an_error(spec: Spec) -> None:
    too_small = spec(
        baseModel=LLAMA_70B,
        resources={"gpuType": "A100-40GB"},
        distributed={"nodes": 1, "gpusPerNode": 1, "strategy": "ddp"},
    )
    with pytest.raises(PlanningError, match=r"^spec.distributed: 1 node\(s\) x 1 GPU"):
        plan_job(too_small)


def test_nothing_fits_is_an_error(spec: Spec) -> None:
    huge = spec(
        baseModel={"name": "meta-llama/Llama-3.1-405B", "source": "s3://m/405b"},
        resources={"gpuType": "T4-16GB", "maxGpusPerNode": 1},
        distributed={"strategy": "ddp"},
    )
    with pytest.raises(PlanningError, match=r"^spec.resources.gpuType: this job does not fit"):
        plan_job(huge)


def test_unknown_gpu_type(spec: Spec) -> None:
    with pytest.raises(PlanningError, match=r"^spec.resources.gpuType: unknown GPU type 'B300'"):
        plan_job(spec(resources={"gpuType": "B300"}))


def test_catalog_merge_adds_and_overrides(spec: Spec) -> None:
    extra = [GpuType(name="B300", memory_gib=270), GpuType(name="L4-24GB", memory_gib=6)]
    catalog = GpuCatalog.default().merged(extra)
    assert plan_job(spec(resources={"gpuType": "B300"}), catalog).gpu.memory_gib == 270
    qlora = spec(quantization={"mode": "nf4"}, resources={"gpuType": "L4-24GB"})
    assert plan_job(qlora, catalog).total_gpus > 1
    assert GpuCatalog.default().get("L4-24GB").memory_gib == 22


def test_tiny_cpu_job_honours_explicit_processes(spec: Spec, tiny_config: Path) -> None:
    model = {"name": "tiny-llama", "source": "s3://models/tiny", "config": str(tiny_config)}
    single = plan_job(spec(baseModel=model, resources={"gpuType": "cpu"}))
    assert (single.on_cpu, single.nodes, single.gpus_per_node) == (True, 1, 1)
    assert single.gpu_resource_name is None
    assert single.estimate.breakdown_gib["cuda_context"] == 0
    two = plan_job(
        spec(
            baseModel=model,
            resources={"gpuType": "cpu"},
            distributed={"nodes": 2, "gpusPerNode": 1, "strategy": "deepspeed-zero2"},
        )
    )
    assert (two.nodes, two.gpus_per_node, two.strategy) == (2, 1, Strategy.deepspeed_zero2)
    assert two.requests.cpu == "2"


def test_resource_overrides_win(spec: Spec) -> None:
    result = plan_job(
        spec(resources={"requests": {"cpu": "3", "memory": "50Gi"}, "limits": {"cpu": "4"}})
    )
    assert (result.requests.cpu, result.requests.memory) == ("3", "50Gi")
    assert result.limits.cpu == "4"
    assert result.requests.ephemeral_storage == "10Gi"


def test_offload_raises_host_memory_request(spec: Spec) -> None:
    on = plan_job(spec(baseModel=LLAMA_70B, distributed={"strategy": "deepspeed-zero3"}))
    off = plan_job(
        spec(
            baseModel=LLAMA_70B,
            distributed={"strategy": "deepspeed-zero3", "offload": "cpu"},
        )
    )
    assert on.estimate.host_offload_gib == 0 and off.estimate.host_offload_gib > 0
    assert off.total_gpus <= on.total_gpus


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"lora": {"r": 64}, "dataset": {"numExamples": 200}}, "spec.lora.r: rank 64 is high"),
        ({"lora": {"r": 128}, "dataset": {"numExamples": 2000}}, "several thousand"),
        ({"lora": {"r": 8, "alpha": 256}}, "spec.lora.alpha: 256 is far from r..2r"),
        ({"dataset": {"numExamples": 100000}}, "attention-only targets"),
        (
            {
                "baseModel": {"name": "meta-llama/Meta-Llama-3-8B", "source": "hf://x/y"},
                "dataset": {"maxSeqLength": 16384},
            },
            "exceeds the model's context of 8192",
        ),
        (
            {"training": {"attention": "eager"}, "dataset": {"maxSeqLength": 8192}},
            "eager attention at 8192 tokens",
        ),
        (
            {"quantization": {"mode": "nf4"}, "resources": {"gpuType": "T4-16GB"}},
            "T4-16GB has no native bf16",
        ),
    ],
)
def test_warnings(spec: Spec, sections: dict[str, dict[str, object]], expected: str) -> None:
    warnings = plan_job(spec(**sections)).warnings
    assert any(expected in w for w in warnings), warnings


def test_good_defaults_have_no_warnings(spec: Spec) -> None:
    assert plan_job(spec(dataset={"numExamples": 5000})).warnings == []


def test_repeat_planning_is_fast(spec: Spec) -> None:
    job = spec(quantization={"mode": "nf4"}, resources={"gpuType": "L4-24GB"})
    plan_job(job)
    started = time.perf_counter()
    for _ in range(200):
        plan_job(job)
    assert (time.perf_counter() - started) / 200 < 0.01
