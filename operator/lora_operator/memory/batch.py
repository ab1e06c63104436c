"""The global batch is the spec's, on every placement.

Samples per optimizer step = `training.microBatchSize x training.gradientAccumulation`, times
`distributed.nodes x gpusPerNode` only when the spec pins both (then the spec names its world
size, and that product is what it always meant). Whatever world size the planner picks for an
unpinned job, each rank gets `global / world` samples per step: the accumulation follows the
world size, the micro batch shrinks only when a rank's share is smaller than it. The learning
rate, warm-up and step counts therefore mean the same on one GPU and on sixteen.

A world size that does not divide the global batch is never picked by the planner (it would
change the maths); the plan refuses a pinned placement only through the schema's own bounds.
"""

from __future__ import annotations

from lora_contract.types import LoRAJobSpec


def global_batch(spec: LoRAJobSpec) -> int:
    """Samples per optimizer step that `spec` asks for (module docstring)."""
    t, dist = spec.training, spec.distributed
    pinned = 1
    if dist.nodes is not None and dist.gpus_per_node is not None:
        pinned = dist.nodes * dist.gpus_per_node
    return t.micro_batch_size * t.gradient_accumulation * pinned


def split(spec: LoRAJobSpec, world: int) -> tuple[int, int] | None:
    """(micro batch, accumulation) per rank that keeps `global_batch(spec)` on `world` ranks:
    the largest micro batch up to the spec's that divides a rank's share; None when `world`
    does not divide the global batch."""
    total = global_batch(spec)
    if world < 1 or total % world:
        return None
    share = total // world
    micro = next(
        m for m in range(min(spec.training.micro_batch_size, share), 0, -1) if share % m == 0
    )
    return micro, share // micro


def split_spec(spec: LoRAJobSpec, world: int) -> LoRAJobSpec | None:
    """`spec` with the per-rank micro batch and accumulation of `split` (None: no even split)."""
    found = split(spec, world)
    if found is None:
        return None
    micro, accumulation = found
    t = spec.training
    if (micro, accumulation) == (t.micro_batch_size, t.gradient_accumulation):
        return spec
    training = t.model_copy(
        update={"micro_batch_size": micro, "gradient_accumulation": accumulation}
    )
    return spec.model_copy(update={"training": training})
