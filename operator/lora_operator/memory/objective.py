"""Which fitting placement a job gets: the cheapest by the forecast, never more GPUs for about
the same price.

Every variant that fits the card (GPU count and nodes; DDP or ZeRO-3; micro batch and
accumulation; gradient checkpointing; the chunked loss; activation offloading) is an `Option`
priced by its forecast GPU-hours (memory/forecast.py; the catalog's price per GPU-hour is one
number per GPU type, so GPU-hours order options as cost does). The rule:

1. `cheapest` = the lowest GPU-hours of all options.
2. Among the options within `SCALE_OUT_TOLERANCE` (10%) of `cheapest`, the fewest GPUs win.
   Scaling out costs what the forecast does not count (pods started and the model downloaded
   per node, a gang that waits for more free GPUs, more ranks that can fail), and the forecast's
   own knob costs are estimates of about that size, so a larger placement must save more than
   that to be worth it.
3. Then the lower GPU-hours, then the shorter wall time, then the search order.

When the forecast cannot be computed (no dataset size, no peak in the catalog) options are
priced on a nominal step (the global batch at maxSeqLength on a nominal peak): the same global
batch runs the same number of steps on every placement, so the ranking holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lora_contract.types import LoRAJobSpec, Strategy

from .estimate import MemoryEstimate
from .forecast import Forecast

SCALE_OUT_TOLERANCE = 0.10
ALTERNATIVES_SHOWN = 3


@dataclass(frozen=True)
class Option:
    """One fitting variant: where it runs, what the trainer runs there, what it costs."""

    strategy: Strategy
    nodes: int
    per_node: int
    run: LoRAJobSpec  # the spec with the per-rank batch and knobs the trainer runs
    estimate: MemoryEstimate
    gpu_hours: float  # forecast, or on the nominal step when `forecast` is None
    hours: float
    forecast: Forecast | None
    order: int  # position in the search (placements, then strategies, then variants)
    fitted: bool = False  # a fit variant (memory/fit.py) of the placement's per-rank split

    @property
    def gpus(self) -> int:
        return self.nodes * self.per_node


def may_matter(lower_bound: float, cheapest: float | None, tolerance: float) -> bool:
    """False when no variant of a placement whose cheapest possible cost is `lower_bound` can
    be chosen over options found already (their lowest cost: `cheapest`)."""
    return cheapest is None or lower_bound <= cheapest * (1 + tolerance)


def choose(options: Sequence[Option], tolerance: float = SCALE_OUT_TOLERANCE) -> Option:
    """The option the rule in the module docstring picks; `options` must not be empty."""
    cheapest = min(o.gpu_hours for o in options)
    near = [o for o in options if o.gpu_hours <= cheapest * (1 + tolerance)]
    return min(near, key=lambda o: (o.gpus, o.gpu_hours, o.hours, o.order))


def alternatives(
    options: Sequence[Option], chosen: Option, count: int = ALTERNATIVES_SHOWN
) -> list[Option]:
    """The best other option of each (GPU count, strategy), cheapest first: what the platform
    could trade the chosen one for (e.g. more GPUs for a shorter wall time)."""
    best: dict[tuple[int, Strategy], Option] = {}
    for o in sorted(options, key=lambda o: (o.gpu_hours, o.hours, o.order)):
        key = (o.gpus, o.strategy)
        if key != (chosen.gpus, chosen.strategy) and key not in best:
            best[key] = o
    return sorted(best.values(), key=lambda o: (o.gpu_hours, o.hours, o.order))[:count]
