"""The plan fits instead of refusing: maths-preserving variants (memory/fit.py), applied under
`distributed.strategy: auto` and named in the refusal otherwise; the safety margin as a warning;
the longest sequence per catalog GPU; the trainer receiving the adjusted values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import yaml

from lora_contract import pod
from lora_contract.types import LoRAJobSpec, Strategy, TrainingOverrides
from lora_operator.api.operator_config import GpuType, OperatorConfig
from lora_operator.controller.manifests import RunContext, build_config_map
from lora_operator.deepspeed_config import deepspeed_config
from lora_operator.memory import (
    GpuCatalog,
    PlanningError,
    estimate_memory,
    load_architecture,
    plan_job,
    shape_for,
)
from lora_operator.memory.fit import (
    CHECKPOINTING_COST,
    SEQ_STEP,
    candidates,
    longest_fitting,
    search_fit,
)

Spec = Callable[..., LoRAJobSpec]


def catalog_with(memory_gib: float, **fields: Any) -> GpuCatalog:
    gpu = GpuType.model_validate({"name": "TEST", "memory_gib": memory_gib, **fields})
    return GpuCatalog.default().merged([gpu])


def peak(job: LoRAJobSpec, strategy: Strategy = Strategy.ddp, ranks: int = 1) -> float:
    arch = load_architecture(job.base_model.name, job.base_model.config)
    return estimate_memory(arch, shape_for(job, strategy, ranks)).peak_gib


def batched(spec: Spec, **distributed: Any) -> LoRAJobSpec:
    """Llama-3.1-8B LoRA, micro batch 4 x accumulation 4 on one pinned GPU."""
    return spec(
        resources={"gpuType": "TEST"},
        training={"microBatchSize": 4, "gradientAccumulation": 4},
        distributed={"nodes": 1, "gpusPerNode": 1, **distributed},
    )


def with_micro(job: LoRAJobSpec, micro: int) -> LoRAJobSpec:
    return TrainingOverrides(micro_batch_size=micro, gradient_accumulation=16 // micro).applied_to(
        job
    )


# --------------------------------------------------------------------------- the search


def test_every_variant_keeps_the_global_batch(spec: Spec) -> None:
    job = spec(training={"microBatchSize": 12, "gradientAccumulation": 3})
    variants = [v for group in candidates(job) for v in group]
    assert variants
    assert {v.micro_batch_size * v.gradient_accumulation for v in variants} == {36}
    # only exact divisors, smaller than the spec's micro batch (offloading alone keeps it)
    same_knobs = {v.micro_batch_size for v in variants if not v.activation_offloading}
    assert same_knobs == {1, 2, 3, 4, 6, 9}


def test_cheapest_first_micro_batch_before_checkpointing(spec: Spec) -> None:
    job = spec(
        training={"microBatchSize": 8, "gradientAccumulation": 2, "gradientCheckpointing": False}
    )

    def fake_peak(variant_spec: LoRAJobSpec) -> float:
        t = variant_spec.training
        return 1.0 if t.gradient_checkpointing or t.micro_batch_size <= 2 else 9.0

    result = search_fit(job, fake_peak, limit_gib=5.0)
    assert result.cheapest is not None
    assert (result.cheapest.micro_batch_size, result.cheapest.gradient_accumulation) == (2, 8)
    assert not result.cheapest.gradient_checkpointing
    # both knobs named, cheapest first; the checkpointing one keeps micro batch 8
    assert [v.summary(job) for v in result.fitting] == [
        "microBatchSize 2 + gradientAccumulation 8",
        "gradientCheckpointing true",
    ]
    assert result.fitting[1].cost == pytest.approx(CHECKPOINTING_COST)


def test_checkpointing_wins_over_a_much_smaller_micro_batch(spec: Spec) -> None:
    # 64 x 32 tokens per micro-batch: micro batch 1 would run 32-token matmuls,
    # (32 / 2048) ** 0.3 = 0.29 of the efficiency, far slower than checkpointing's 4/3
    job = spec(
        training={"microBatchSize": 64, "gradientAccumulation": 1, "gradientCheckpointing": False},
        dataset={"maxSeqLength": 32},
    )

    def fake_peak(variant_spec: LoRAJobSpec) -> float:
        t = variant_spec.training
        return 1.0 if t.gradient_checkpointing or t.micro_batch_size == 1 else 9.0

    result = search_fit(job, fake_peak, limit_gib=5.0)
    assert result.cheapest is not None
    assert result.cheapest.gradient_checkpointing
    assert result.cheapest.micro_batch_size == 64


def test_nothing_fits_gives_no_variant(spec: Spec) -> None:
    job = spec(training={"microBatchSize": 4, "gradientAccumulation": 4})
    tried: list[LoRAJobSpec] = []

    def too_big(variant_spec: LoRAJobSpec) -> float:
        tried.append(variant_spec)
        return 100.0

    result = search_fit(job, too_big, limit_gib=5.0)
    assert result.cheapest is None and result.fitting == []
    # the most saving variant alone is tried: if it does not fit, nothing does
    assert [(t.training.micro_batch_size, t.training.gradient_accumulation) for t in tried] == [
        (1, 16)
    ]


# --------------------------------------------------------------------------- in the plan


def test_auto_strategy_applies_the_cheapest_variant_and_records_it(spec: Spec) -> None:
    job = batched(spec)
    two, four = peak(with_micro(job, 2)), peak(job)
    memory = (two + four) / 2  # safety margin 0: only micro batch 2 or less fits
    result = plan_job(job, catalog_with(memory, safety_margin_fraction=0.0))
    assert result.training_overrides == TrainingOverrides(
        micro_batch_size=2, gradient_accumulation=8
    )
    assert result.estimate.peak_gib == two
    assert result.adjustments == [
        "training.microBatchSize 4 -> 2 and gradientAccumulation 4 -> 8 (global batch 16 kept)"
    ]
    assert result.reason.endswith(
        "Changed to fit (same training maths): training.microBatchSize 4 -> 2 and "
        "gradientAccumulation 4 -> 8 (global batch 16 kept); "
        f"{four:.1f} GiB per GPU as written, {two:.1f} with the change ({memory:.1f} GiB allowed)."
    )
    wire = result.to_status().to_wire()
    assert wire["trainingOverrides"] == {"microBatchSize": 2, "gradientAccumulation": 8}
    assert wire["adjustments"] == result.adjustments


def test_explicit_strategy_is_refused_naming_what_fits(spec: Spec) -> None:
    job = batched(spec, strategy="ddp")
    memory = (peak(with_micro(job, 2)) + peak(job)) / 2
    with pytest.raises(PlanningError) as refused:
        plan_job(job, catalog_with(memory, safety_margin_fraction=0.0))
    message = str(refused.value)
    assert message.startswith(
        f"spec.distributed: 1 node(s) x 1 GPU(s) with ddp needs {peak(job):.1f} GiB per GPU"
    )
    assert message.endswith(
        "; fits with training.microBatchSize 2 + gradientAccumulation 8; activationOffloading "
        "true (set distributed.strategy auto to apply it)"
    )


def test_safety_margin_is_a_warning_not_a_refusal(spec: Spec) -> None:
    job = batched(spec, strategy="ddp")
    four = peak(job)
    # 10% margin: usable is below the peak, the card is above it
    result = plan_job(job, catalog_with(four * 1.05))
    assert result.total_gpus == 1 and result.training_overrides is None
    assert any("inside TEST's 10% safety margin" in w for w in result.warnings)
    assert "inside its 10% safety margin" in result.reason
    # the platform's per-type margin: none at all, no warning
    quiet = plan_job(job, catalog_with(four * 1.05, safety_margin_fraction=0.0))
    assert not any("safety margin" in w for w in quiet.warnings)


def test_auto_prefers_a_variant_inside_the_margin_to_a_warning(spec: Spec) -> None:
    job = batched(spec)
    two, four = peak(with_micro(job, 2)), peak(job)
    # the spec as written fits the card only inside the margin; micro batch 2 fits under it
    memory = four * 1.01
    assert two < memory * 0.9 < four
    result = plan_job(job, catalog_with(memory))
    assert result.training_overrides is not None
    assert result.training_overrides.micro_batch_size == 2
    assert not any("safety margin" in w for w in result.warnings)


# --------------------------------------------------------------------------- longest sequence


def test_longest_sequence_is_the_boundary_and_grows_with_the_card(spec: Spec) -> None:
    job = spec()
    arch = load_architecture(job.base_model.name, job.base_model.config)
    shape = shape_for(job, Strategy.ddp, 1)
    calls: list[int] = []

    def at(seq_len: int) -> float:
        calls.append(seq_len)
        return estimate_memory(arch, replace(shape, seq_len=seq_len)).peak_gib

    upper = arch.max_position_embeddings or 131_072
    answers = []
    for limit in (18.0, 19.0, 22.0, 30.0, 45.0, 80.0, 140.0):
        calls.clear()
        longest = longest_fitting(at, limit, upper)
        assert longest is not None and longest % SEQ_STEP == 0
        assert at(longest) <= limit
        assert longest == upper or at(longest + SEQ_STEP) > limit
        assert len(calls) <= 12  # an interpolation search, not a scan
        answers.append(longest)
    assert answers == sorted(answers) and answers[0] < answers[-1]
    assert longest_fitting(at, 1.0, upper) is None


def test_plan_table_lists_the_longest_sequence_per_gpu(spec: Spec) -> None:
    from lora_contract.types import LoRAJob
    from lora_operator.memory.report import longest_sequence_lines

    job = LoRAJob.model_validate(
        {
            "apiVersion": "finetune.lora-operator.io/v1alpha1",
            "kind": "LoRAJob",
            "metadata": {"name": "j"},
            "spec": spec(resources={"gpuType": "L4-24GB"}).to_wire(),
        }
    )
    lines = longest_sequence_lines(job, plan_job(job.spec))
    names = [gpu for gpu in GpuCatalog.default().names() if gpu != "cpu"]
    assert [line.split()[0] for line in lines[1:]] == names
    assert lines[1 + names.index("L4-24GB")].endswith("<- resources.gpuType")


# --------------------------------------------------------------------------- the trainer


def test_the_trainer_config_gets_the_adjusted_values(spec: Spec) -> None:
    job = batched(spec)
    memory = (peak(with_micro(job, 2)) + peak(job)) / 2
    plan = plan_job(job, catalog_with(memory, safety_margin_fraction=0.0)).to_status()
    config = OperatorConfig.model_validate(
        {
            "trainerImage": "trainer:1",
            "s3": {"endpoint": "http://minio.s3:9000", "credentialsSecret": {"name": "s3"}},
        }
    )
    ctx = RunContext(
        name="fit",
        namespace="ml",
        uid="u",
        run_id="r1",
        spec=job,
        plan=plan,
        config=config,
        output_uri="s3://b/runs/fit/r1",
    )
    rendered = yaml.safe_load(build_config_map(ctx)["data"][pod.CONFIG_FILE])
    training = rendered["spec"]["training"]
    assert (training["microBatchSize"], training["gradientAccumulation"]) == (2, 8)
    assert rendered["plan"]["trainingOverrides"] == {"microBatchSize": 2, "gradientAccumulation": 8}
    # the stored spec keeps what the user wrote
    assert job.training.micro_batch_size == 4
    # DeepSpeed, when used, is built from the same adjusted spec (controller/reconcile.py)
    zero = replace_strategy(job, "deepspeed-zero2")
    ds = deepspeed_config(plan.applied_to(zero), Strategy.deepspeed_zero2)
    assert ds is not None and ds["train_micro_batch_size_per_gpu"] == 2


def replace_strategy(job: LoRAJobSpec, strategy: str) -> LoRAJobSpec:
    distributed = job.distributed.model_copy(update={"strategy": Strategy(strategy)})
    return job.model_copy(update={"distributed": distributed})
