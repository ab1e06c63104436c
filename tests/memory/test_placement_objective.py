"""The placement objective: the cheapest fitting variant by the forecast, never more GPUs for a
saving under 10%, and the spec's global batch on every placement.

The brute force here enumerates every variant itself (every world size that divides the global
batch, both strategies, every micro batch that divides a rank's share, every knob combination)
and applies the documented rule with its own code, so a pruning or search-order bug in
memory/placement.py or memory/fit.py shows up as a different choice.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lora_contract.types import LoRAJobSpec, QuantizationMode, Strategy
from lora_devkit.bench.placement_cost import unpinned
from lora_operator.api.loading import load_lorajobs
from lora_operator.api.operator_config import GpuType
from lora_operator.memory import GpuCatalog, PlanningError, estimate_memory, plan_job, shape_for
from lora_operator.memory.architecture import architecture_of
from lora_operator.memory.batch import global_batch, split, split_spec
from lora_operator.memory.estimate import GIB, Assumptions
from lora_operator.memory.forecast import forecast_job
from lora_operator.memory.local_config import read_local_config
from lora_operator.memory.objective import Option, alternatives, choose, may_matter
from lora_operator.memory.placement import _placements
from lora_operator.memory.report import render_table

from .conftest import make_spec

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = sorted(EXAMPLE_DIR.glob("*.yaml"))
CATALOG = GpuCatalog.default()
GPUS = [g for g in CATALOG.entries.values() if not GpuCatalog.is_cpu(g)]


@dataclass(frozen=True)
class Found:
    nodes: int
    per_node: int
    strategy: Strategy
    peak: float
    gpu_hours: float
    hours: float


def every_variant(spec: LoRAJobSpec, gpu: GpuType) -> Iterator[Found]:
    arch = architecture_of(read_local_config(spec.base_model))
    t = spec.training
    total = t.micro_batch_size * t.gradient_accumulation
    weights = estimate_memory(arch, shape_for(spec, Strategy.ddp, 1)).breakdown_gib["weights"]
    for nodes, per_node in _placements(min(gpu.max_per_node, spec.resources.max_gpus_per_node)):
        world = nodes * per_node
        if total % world:
            continue
        share = total // world
        micros = [m for m in range(1, t.micro_batch_size + 1) if share % m == 0]
        strategies = [Strategy.ddp] if world == 1 else [Strategy.ddp, Strategy.deepspeed_zero3]
        knobs = itertools.product(
            {t.gradient_checkpointing, True},
            {t.chunked_loss, True},
            {t.activation_offloading, True},
        )
        for strategy, micro, (ckpt, chunk, offload) in itertools.product(
            strategies, micros, list(knobs)
        ):
            if offload and not ckpt and not t.activation_offloading:
                continue  # the plan offloads only checkpointed layer inputs (memory/fit.py)
            update = {
                "micro_batch_size": micro,
                "gradient_accumulation": share // micro,
                "gradient_checkpointing": ckpt,
                "chunked_loss": chunk,
                "activation_offloading": offload,
            }
            run = spec.model_copy(update={"training": t.model_copy(update=update)})
            est = estimate_memory(arch, shape_for(run, strategy, world), Assumptions())
            forecast = forecast_job(
                run,
                arch,
                gpu,
                nodes,
                per_node,
                strategy=strategy,
                weight_bytes=weights * GIB,
                written_micro_batch=t.micro_batch_size,
            )
            assert forecast is not None  # every example states its size
            yield Found(nodes, per_node, strategy, est.peak_gib, forecast.gpu_hours, forecast.hours)


def brute_force(spec: LoRAJobSpec, gpu: GpuType) -> Found | None:
    everything = list(every_variant(spec, gpu))
    for limit in (gpu.memory_gib * (1 - gpu.safety_margin_fraction), gpu.memory_gib):
        fitting = [f for f in everything if f.peak <= limit]
        if fitting:
            cheapest = min(f.gpu_hours for f in fitting)
            near = [f for f in fitting if f.gpu_hours <= cheapest * 1.1]
            return min(near, key=lambda f: (f.nodes * f.per_node, f.gpu_hours, f.hours))
    return None


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
@pytest.mark.parametrize("gpu", GPUS, ids=lambda g: g.name)
def test_auto_placement_is_the_cheapest_fitting_variant(example: Path, gpu: GpuType) -> None:
    spec = unpinned(load_lorajobs(str(example))[0].spec)
    spec.resources.gpu_type = gpu.name
    expected = brute_force(spec, gpu)
    if expected is None:
        with pytest.raises(PlanningError):
            plan_job(spec, CATALOG)
        return
    plan = plan_job(spec, CATALOG)
    assert (plan.nodes, plan.gpus_per_node, plan.strategy) == (
        expected.nodes,
        expected.per_node,
        expected.strategy,
    )
    assert plan.forecast is not None
    assert plan.forecast.gpu_hours == pytest.approx(expected.gpu_hours, rel=1e-9)


def test_the_8b_example_plans_one_l4() -> None:
    spec = load_lorajobs(str(EXAMPLE_DIR / "lora-llama3-8b-a100.yaml"))[0].spec
    assert spec.base_model.name == "meta-llama/Llama-3.1-8B"  # lora-llama3-8b-a100.yaml
    spec.resources.gpu_type = "L4-24GB"
    plan = plan_job(spec, CATALOG)
    assert plan.total_gpus == 1
    assert plan.global_batch_size == 16
    status = plan.to_status()
    assert status.placement == "1 x L4-24GB"
    # what it traded: ZeRO-3 on two L4s is a little cheaper, but not by the 10% scaling out
    # must save; eight L4s would finish 8x sooner for the same GPU-hours
    assert status.alternatives, "the plan names what it could trade"
    assert all(alt.gpu_hours is not None for alt in status.alternatives)
    assert min(alt.relative_cost for alt in status.alternatives) >= 1 / 1.1


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_global_batch_is_the_same_on_every_gpu_type_and_world_size(example: Path) -> None:
    spec = load_lorajobs(str(example))[0].spec
    expected = global_batch(spec)
    for gpu in CATALOG.entries.values():
        for job in (spec, unpinned(spec)):
            job = job.model_copy(deep=True)
            job.resources.gpu_type = gpu.name
            try:
                plan = plan_job(job, CATALOG)
            except PlanningError:
                continue
            run = plan.to_status().applied_to(job).training
            assert plan.global_batch_size == expected
            assert run.micro_batch_size * run.gradient_accumulation * plan.total_gpus == expected
            for alt in plan.to_status().alternatives:
                assert expected % (alt.nodes * alt.gpus_per_node) == 0


# ---------------------------------------------------------------------------- the batch split


def test_global_batch_counts_a_pinned_world_only() -> None:
    pinned = make_spec(
        training={"microBatchSize": 2, "gradientAccumulation": 4},
        distributed={"nodes": 2, "gpusPerNode": 8},
    )
    assert global_batch(pinned) == 2 * 4 * 16
    assert global_batch(make_spec(training={"microBatchSize": 2, "gradientAccumulation": 4})) == 8


@pytest.mark.parametrize(
    ("micro", "accumulation", "world", "expected"),
    [
        (2, 8, 1, (2, 8)),
        (2, 8, 2, (2, 4)),
        (2, 8, 16, (1, 1)),  # a rank's share (1) is below the micro batch
        (4, 3, 2, (3, 2)),  # share 6: the largest micro up to 4 that divides it is 3
        (4, 3, 4, (3, 1)),
        (4, 1, 3, None),  # 3 ranks cannot split 4 samples
        (2, 8, 32, None),
        (1, 7, 7, (1, 1)),
    ],
)
def test_split_keeps_the_global_batch(
    micro: int, accumulation: int, world: int, expected: tuple[int, int] | None
) -> None:
    spec = make_spec(training={"microBatchSize": micro, "gradientAccumulation": accumulation})
    assert split(spec, world) == expected
    assert all(type(n) is int for n in split(spec, world) or ())  # accumulation is a count
    derived = split_spec(spec, world)
    if expected is None:
        assert derived is None
    else:
        assert derived is not None
        assert (
            derived.training.micro_batch_size,
            derived.training.gradient_accumulation,
        ) == expected
        assert derived.dataset == spec.dataset  # only the batch moves


def test_split_of_the_spec_itself_is_the_spec() -> None:
    spec = make_spec(training={"microBatchSize": 2, "gradientAccumulation": 8})
    assert split_spec(spec, 1) is spec
    assert split(spec, 0) is None


# ------------------------------------------------------------------------------ the rule


def option(gpus: int, gpu_hours: float, hours: float = 1.0, order: int = 0) -> Option:
    spec = make_spec()
    est = estimate_memory(
        architecture_of(read_local_config(spec.base_model)), shape_for(spec, Strategy.ddp, 1)
    )
    return Option(
        strategy=Strategy.ddp if gpus == 1 else Strategy.deepspeed_zero3,
        nodes=1,
        per_node=gpus,
        run=spec,
        estimate=est,
        gpu_hours=gpu_hours,
        hours=hours,
        forecast=None,
        order=order,
    )


def test_fewer_gpus_win_within_ten_percent_of_the_cheapest() -> None:
    one, two = option(1, 110.0), option(2, 100.0)
    assert choose([two, one]) is one  # 110 <= 100 x 1.1
    dearer = option(1, 110.0001)
    assert choose([two, dearer]) is two  # just over the tolerance: the cheaper, larger one
    assert choose([two, dearer], tolerance=0.2) is dearer
    # exactly at the tolerance counts as within it (100 x 1.5 is exact in binary)
    assert choose([option(2, 100.0), edge := option(1, 150.0)], tolerance=0.5) is edge


def test_among_equal_gpu_counts_the_cheaper_then_the_faster_then_the_first() -> None:
    a, b = option(2, 100.0, hours=5.0, order=0), option(2, 99.0, hours=9.0, order=1)
    assert choose([a, b]) is b
    c, d = option(2, 100.0, hours=5.0, order=1), option(2, 100.0, hours=4.0, order=2)
    assert choose([c, d]) is d
    e, f = option(2, 100.0, order=3), option(2, 100.0, order=2)
    assert choose([e, f]) is f


def test_a_cheaper_option_on_more_gpus_can_push_fewer_gpus_out() -> None:
    # 1 GPU at 120 is within 10% of 2 GPUs at 110, but 4 GPUs at 100 make 110 the cap
    one, two, four = option(1, 120.0), option(2, 110.0), option(4, 100.0)
    assert choose([one, two]) is one
    assert choose([one, two, four]) is two


def test_may_matter_prunes_only_what_cannot_be_chosen() -> None:
    assert may_matter(110.0, None, 0.1)
    assert may_matter(110.0, 100.0, 0.1)
    assert not may_matter(110.0001, 100.0, 0.1)
    assert may_matter(150.0, 100.0, 0.5)  # exactly at the tolerance may still be chosen


def test_alternatives_are_the_best_other_placement_each_cheapest_first() -> None:
    chosen = option(1, 100.0, order=0)
    same_place = option(1, 90.0, order=1)
    two_a, two_b = option(2, 105.0, order=2), option(2, 104.0, order=3)
    four = option(4, 101.0, order=4)
    eight = option(8, 130.0, order=5)
    found = alternatives([chosen, same_place, two_a, two_b, four, eight], chosen, count=2)
    assert found == [four, two_b]


# ----------------------------------------------------------------------- honest refusals


def test_refusal_never_advises_what_the_job_already_does() -> None:
    nf4 = make_spec(
        quantization={"mode": "nf4"},
        resources={"gpuType": "T4-16GB"},
        dataset={"maxSeqLength": 131072},
        training={"activationOffloading": True},
        distributed={"nodes": 1, "gpusPerNode": 2, "strategy": "ddp"},
    )
    assert nf4.quantization.mode == QuantizationMode.nf4
    with pytest.raises(PlanningError) as refused:
        plan_job(nf4, CATALOG)
    message = str(refused.value)
    assert message.startswith("spec.distributed: 1 node(s) x 2 GPU(s) with ddp needs ")
    assert "quantization.mode nf4" not in message
    # DDP keeps a whole replica per GPU: more GPUs would not help, sharding would
    assert "add GPUs" not in message
    assert "use distributed.strategy deepspeed-zero3" in message


def test_refusal_of_an_unpinned_job_names_the_global_batch_and_a_larger_gpu() -> None:
    job = make_spec(
        resources={"gpuType": "T4-16GB"},
        dataset={"maxSeqLength": 131072},
        training={"activationOffloading": True, "microBatchSize": 1, "gradientAccumulation": 1},
    )
    with pytest.raises(PlanningError) as refused:
        plan_job(job, CATALOG)
    message = str(refused.value)
    assert "whose GPU count divides the global batch of 1" in message
    assert message.endswith("a shorter dataset.maxSeqLength or a larger GPU")
    assert "use quantization.mode nf4" in message


def test_cpu_jobs_are_described_as_processes() -> None:
    spec = load_lorajobs(str(EXAMPLE_DIR / "tiny-cpu.yaml"))[0].spec  # 2 nodes x 1 process
    assert spec.resources.gpu_type == "cpu"
    status = plan_job(spec, CATALOG).to_status()
    assert (status.unit, status.placement) == ("process", "2 CPU processes")
    assert "GPU" not in status.reason
    job = load_lorajobs(str(EXAMPLE_DIR / "tiny-cpu.yaml"))[0]
    table = render_table(job, plan_job(job.spec, CATALOG))
    assert "GPU" not in table.replace("gpuType", "")
    assert "process-hours" in table and "per-process memory at peak" in table


def test_zero3_keeps_the_chunked_loss_unless_lm_head_is_adapted() -> None:
    # the trainer gathers a frozen lm_head's shards for the chunks; an adapted one keeps the
    # stock loss under ZeRO-3 (lora_trainer.loss.choose_loss_path), and so does the estimate
    plain = make_spec()
    head = make_spec(lora={"targetModules": ["q_proj", "lm_head"]})
    assert shape_for(plain, Strategy.deepspeed_zero3, 2).chunked_loss
    assert not shape_for(head, Strategy.deepspeed_zero3, 2).chunked_loss
    assert shape_for(head, Strategy.ddp, 2).chunked_loss
    off = make_spec(training={"chunkedLoss": False})
    assert not shape_for(off, Strategy.deepspeed_zero3, 2).chunked_loss
