"""memory/fit.py piece by piece, every expected value worked by hand: the micro-batch efficiency
curve, the divisor list, the candidate groups and their costs, the overrides a variant names,
search_fit on a synthetic peak with exact boundaries, and longest_fitting's interpolation search
on synthetic peaks whose probes are traced in the comments."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from lora_contract.types import LoRAJobSpec, TrainingOverrides
from lora_operator.memory.fit import (
    Variant,
    _dominated,
    _micro_batches,
    batch_change,
    candidates,
    longest_fitting,
    micro_batch_efficiency,
    micro_batch_slowdown,
    search_fit,
)

from .conftest import make_spec


def all_off(seq: int = 4096, **training: Any) -> LoRAJobSpec:
    """Micro batch 2 x accumulation 4 (8 rows per rank), every on/off knob off."""
    return make_spec(
        dataset={"maxSeqLength": seq},
        training={
            "microBatchSize": 2,
            "gradientAccumulation": 4,
            "gradientCheckpointing": False,
            "chunkedLoss": False,
            "activationOffloading": False,
            **training,
        },
    )


def shape(groups: list[list[Variant]]) -> list[tuple[bool, bool, bool, list[tuple[int, int]]]]:
    """(checkpointing, chunked, offloading, [(micro, accumulation), ...]) per group."""
    return [
        (
            g[0].gradient_checkpointing,
            g[0].chunked_loss,
            g[0].activation_offloading,
            [(v.micro_batch_size, v.gradient_accumulation) for v in g],
        )
        for g in groups
    ]


# --------------------------------------------------------------------------- efficiency


def test_micro_batch_efficiency_curve() -> None:
    # (tokens / 2048) ** 0.3 below saturation, 1 at and above it
    assert micro_batch_efficiency(1024) == pytest.approx(0.8122523963562356)  # 0.5 ** 0.3
    assert micro_batch_efficiency(256) == pytest.approx(0.5358867312681466)  # 0.125 ** 0.3
    assert micro_batch_efficiency(2048) == 1.0
    assert micro_batch_efficiency(8192) == 1.0  # 4x saturation is still 1, not 4 ** 0.3


def test_micro_batch_slowdown() -> None:
    # micro 2 -> 1 at 1024 tokens: eff(2048) / eff(1024) = 1 / 0.5 ** 0.3 = 2 ** 0.3
    assert micro_batch_slowdown(1024, 2, 1) == pytest.approx(1.2311444133449163)
    # both micro batches saturated: no slowdown
    assert micro_batch_slowdown(4096, 2, 1) == 1.0


# --------------------------------------------------------------------------- micro batches


def test_micro_batches_are_the_divisors_below_the_written_one() -> None:
    # 12 x 3 = 36 rows: divisors of 36 below 12, largest first
    assert _micro_batches(12, 3) == [9, 6, 4, 3, 2, 1]
    assert _micro_batches(1, 8) == []


def test_micro_batches_cut_to_eight_keeping_the_smallest() -> None:
    # 16 x 45 = 720 rows; divisors of 720 below 16: 15 12 10 9 8 6 5 4 3 2 1 (eleven), cut to
    # the first seven and the last one
    assert _micro_batches(16, 45) == [15, 12, 10, 9, 8, 6, 5, 1]


def test_micro_batches_accumulation_bound_is_inclusive() -> None:
    # 2 x 2048 = 4096 rows: micro 1 needs accumulation 4096, exactly the bound, so it is offered
    assert _micro_batches(2, 2048) == [1]
    # 3 x 2048 = 6144 rows: micro 2 -> accumulation 3072 is offered, micro 1 -> 6144 is not
    assert _micro_batches(3, 2048) == [2]


# --------------------------------------------------------------------------- candidates


def test_candidates_with_every_knob_off() -> None:
    # checkpointing [F, T] x chunked [F, T] x offloading [F, T] in product order, minus the
    # two offloading groups without checkpointing; micro batches [2, 1] (8 % 1 == 0), the spec
    # itself (F, F, F, micro 2) left out.
    job = all_off(seq=1024)
    groups = candidates(job)
    both = [(2, 4), (1, 8)]
    assert shape(groups) == [
        (False, False, False, [(1, 8)]),
        (False, True, False, both),
        (True, False, False, both),
        (True, False, True, both),
        (True, True, False, both),
        (True, True, True, both),
    ]
    # knob costs: chunked 1.02, checkpointing 4/3, offloading 1.15, multiplied; micro 1 at
    # 1024 tokens costs 2 ** 0.3 = 1.2311444133449163 more (test_micro_batch_slowdown)
    slow = 1.2311444133449163
    knob = [1.0, 1.02, 4 / 3, 4 / 3 * 1.15, 4 / 3 * 1.02, 4 / 3 * 1.02 * 1.15]
    expected = [[slow], *([k, k * slow] for k in knob[1:])]
    assert [[v.cost for v in g] for g in groups] == [
        pytest.approx(costs, rel=1e-12) for costs in expected
    ]


def test_candidates_without_the_chunked_loss_where_it_does_not_apply() -> None:
    groups = candidates(all_off(), chunked_loss_applies=False)
    assert [(g[0].gradient_checkpointing, g[0].chunked_loss) for g in groups] == [
        (False, False),
        (True, False),
        (True, False),
    ]
    assert [g[0].activation_offloading for g in groups] == [False, False, True]


def test_candidates_with_every_knob_on_only_shrink_the_micro_batch() -> None:
    # every knob already on: one combination, the spec's, and its micro batch 1 only
    job = all_off(gradientCheckpointing=True, chunkedLoss=True, activationOffloading=True)
    groups = candidates(job)
    assert shape(groups) == [(True, True, True, [(1, 8)])]
    assert groups[0][0].cost == 1.0  # 4096 tokens either way: saturated, no slowdown


def test_candidates_keep_offloading_written_without_checkpointing() -> None:
    # offloading written on, checkpointing off: the spec's own offloading stays offered
    job = all_off(activationOffloading=True, chunkedLoss=True)
    groups = candidates(job)
    assert shape(groups) == [
        (False, True, True, [(1, 8)]),
        (True, True, True, [(2, 4), (1, 8)]),
    ]
    assert groups[1][0].cost == pytest.approx(4 / 3)


# --------------------------------------------------------------------------- variants


def test_overrides_name_only_what_changes() -> None:
    job = all_off()
    same = Variant(2, 4, False, False, 1.0, activation_offloading=False)
    assert same.overrides(job) == TrainingOverrides()
    every = Variant(1, 8, True, True, 2.0, activation_offloading=True)
    assert every.overrides(job) == TrainingOverrides(
        micro_batch_size=1,
        gradient_accumulation=8,
        gradient_checkpointing=True,
        chunked_loss=True,
        activation_offloading=True,
    )
    # turning a knob off that the spec has on is named as well
    on = all_off(gradientCheckpointing=True, chunkedLoss=True, activationOffloading=True)
    assert same.overrides(on) == TrainingOverrides(
        gradient_checkpointing=False, chunked_loss=False, activation_offloading=False
    )


def test_summary_and_changes() -> None:
    job = all_off()
    variant = Variant(1, 8, True, True, 2.0)
    assert variant.summary(job) == (
        "microBatchSize 1 + gradientAccumulation 8 + gradientCheckpointing true + chunkedLoss true"
    )
    assert variant.changes(job, 1) == [
        "training.microBatchSize 2 -> 1 and gradientAccumulation 4 -> 8 (global batch 8 kept)",
        "training.gradientCheckpointing true (~1/3 more compute)",
        "training.chunkedLoss true",
    ]


def test_batch_change_of_the_accumulation_alone_per_rank() -> None:
    job = all_off()  # micro 2 x accumulation 4
    # accumulation 2 on two ranks: 2 x 2 x 2 = 8 rows per step, the spec's 2 x 4 on one
    assert batch_change(job, 2, 2, 2) == (
        "training.gradientAccumulation 4 -> 2 per rank on 2 ranks (global batch 8 kept)"
    )
    assert batch_change(job, 2, 4, 1) is None


def test_dominated_by_the_same_knobs_at_a_larger_micro_batch() -> None:
    # a cheaper variant with the same knobs and at least the micro batch dominates
    smaller = Variant(1, 8, True, False, 1.6)
    larger = Variant(2, 4, True, False, 1.4)
    assert _dominated(smaller, [larger])
    assert not _dominated(larger, [smaller])
    other = Variant(2, 4, False, True, 1.0)  # a knob the first leaves off
    assert not _dominated(smaller, [other])


# --------------------------------------------------------------------------- search_fit


def knob_peak(job: LoRAJobSpec) -> float:
    """10 GiB per micro-batch row, + 3 without checkpointing, + 12 without the chunked loss,
    + 1 without offloading."""
    t = job.training
    return (
        10.0 * t.micro_batch_size
        + (0 if t.gradient_checkpointing else 3)
        + (0 if t.chunked_loss else 12)
        + (0 if t.activation_offloading else 1)
    )


def picks(found: list[Variant]) -> list[tuple[bool, bool, bool, int]]:
    return [
        (v.gradient_checkpointing, v.chunked_loss, v.activation_offloading, v.micro_batch_size)
        for v in found
    ]


def test_search_fit_limit_is_inclusive_and_dominated_variants_drop() -> None:
    # knob_peak of all_off() (micro 2): the spec 36; per group, largest micro first, limit 24:
    #   F F F: m1 26                 no
    #   F T F: m2 24 (= limit)       fits, cost 1.02
    #   T F F: m2 33, m1 23          fits at m1, cost 4/3
    #   T F T: m2 32, m1 22          fits at m1, cost 4/3 x 1.15
    #   T T F: m2 21                 fits at m2, cost 4/3 x 1.02
    #   T T T: m2 20                 fits at m2, cost 4/3 x 1.02 x 1.15
    # sorted by cost; T T F m2 and T T T m2 are dominated by F T F m2 ({chunked} and micro 2),
    # T F T m1 by T F F m1 ({checkpointing} and micro 1).
    found = search_fit(all_off(), knob_peak, 24.0)
    assert picks(found.fitting) == [(False, True, False, 2), (True, False, False, 1)]
    assert found.cheapest is not None and picks([found.cheapest]) == [(False, True, False, 2)]
    assert found.cheapest.cost == pytest.approx(1.02)


def test_search_fit_without_the_chunked_loss() -> None:
    # same as above without the chunked groups: T F F m1 (23) and T F T m1 (22, dominated)
    found = search_fit(all_off(), knob_peak, 24.0, chunked_loss_applies=False)
    assert picks(found.fitting) == [(True, False, False, 1)]


def test_search_fit_most_saving_variant_exactly_at_the_limit() -> None:
    # T T T m1: 10 + 0 + 0 + 0 = 10 = the limit; every other variant is above 10
    found = search_fit(all_off(), knob_peak, 10.0)
    assert picks(found.fitting) == [(True, True, True, 1)]
    assert found.cheapest is not None and found.cheapest == found.fitting[0]
    assert found.cheapest.cost == pytest.approx(4 / 3 * 1.02 * 1.15)
    nothing = search_fit(all_off(), knob_peak, 9.5)
    assert nothing.cheapest is None and nothing.fitting == []


# --------------------------------------------------------------------------- longest_fitting


class Probe:
    """A peak in GiB as a function of the step count k = seq / 128, recording each k asked;
    more than 40 estimates is a search that does not end."""

    def __init__(self, peak: Callable[[float], float]) -> None:
        self.peak = peak
        self.steps: list[float] = []

    def __call__(self, seq: int) -> float:
        self.steps.append(seq / 128)
        assert len(self.steps) <= 40, f"no end in sight: {self.steps}"
        return self.peak(seq / 128)


def test_linear_peak_lands_on_the_limit_in_four_estimates() -> None:
    # peak k GiB, limit 5, upper 1280 (hi = 10): p(1) = 1 fits, p(10) = 10 does not;
    # slope (10 - 1) / 9 = 1, guess 1 + int(4 / 1) = 5: p(5) = 5 = limit fits; p(6) = 6 does not
    probe = Probe(lambda k: k)
    assert longest_fitting(probe, 5.0, 1280) == 5 * 128
    assert probe.steps == [1, 10, 5, 6]


def test_convex_peak_climbs_a_step_at_a_time() -> None:
    # peak k^2, limit 20, hi = 10 (fits up to k = 4: 16 <= 20 < 25)
    # p(1) = 1, p(10) = 100; slope 99 / 9 = 11, guess 1 + int(19 / 11) = 2: p(2) = 4 fits,
    # p(3) = 9 fits -> lo 3; slope (100 - 9) / 7 = 13, guess 3 + int(11 / 13) = 3, raised to
    # lo + 1 = 4: p(4) = 16 fits, p(5) = 25 does not -> 4
    probe = Probe(lambda k: k * k)
    assert longest_fitting(probe, 20.0, 1280) == 4 * 128
    assert probe.steps == [1, 10, 2, 3, 4, 5]


def test_next_step_exactly_at_the_limit_fits() -> None:
    # peak k^2, limit 9: p(1) = 1, p(10) = 100; slope 11, guess 1 + int(8 / 11) = 1, raised to
    # 2: p(2) = 4 fits, p(3) = 9 = limit fits -> lo 3; slope 91 / 7 = 13, guess 3 -> 4:
    # p(4) = 16 does not -> hi 4, done: 3
    probe = Probe(lambda k: k * k)
    assert longest_fitting(probe, 9.0, 1280) == 3 * 128
    assert probe.steps == [1, 10, 2, 3, 4]


def test_two_steps_apart_still_tries_the_middle() -> None:
    # peak k, limit 2.5, upper 384 (hi = 3): p(1) = 1, p(3) = 3; slope 1, guess 1 + int(1.5) =
    # 2: p(2) = 2 fits; 3 is hi, already known not to fit -> 2
    probe = Probe(lambda k: k)
    assert longest_fitting(probe, 2.5, 384) == 2 * 128
    assert probe.steps == [1, 3, 2]


def test_first_step_exactly_at_the_limit_fits() -> None:
    # peak k, limit 1: p(1) = 1 fits; p(10) = 10 does not; guess 1 -> 2: p(2) = 2 does not
    probe = Probe(lambda k: k)
    assert longest_fitting(probe, 1.0, 1280) == 128
    assert probe.steps == [1, 10, 2]


def test_not_even_the_first_step() -> None:
    probe = Probe(lambda k: k)
    assert longest_fitting(probe, 0.5, 1280) is None
    assert probe.steps == [1]  # one estimate, at 128 tokens


def test_upper_exactly_at_the_limit_fits() -> None:
    probe = Probe(lambda k: k)
    assert longest_fitting(probe, 10.0, 1280) == 1280
    assert probe.steps == [1, 10]


def test_upper_rounds_down_to_a_step() -> None:
    # upper 1000 is 7 steps (896) and a bit: everything fits, the answer is 896
    probe = Probe(lambda k: k)
    assert longest_fitting(probe, 100.0, 1000) == 896
    assert probe.steps == [1, 7]
    # upper below one step: still one step (asked twice, as lo and as hi), and no more
    short = Probe(lambda k: k)
    assert longest_fitting(short, 100.0, 200) == 128
    assert short.steps == [1, 1]


def test_a_guess_rounded_onto_hi_is_kept_below_it() -> None:
    # peak (k - 1) / 3, upper 512 (hi = 4): p(1) = 0, p(4) = 1.0; the limit one ulp below 1.0.
    # slope 1 / 3 rounds down in binary, so (limit - 0) / slope rounds to exactly 3.0 and the
    # guess is 1 + 3 = 4 = hi, clamped to 3: p(3) = 2/3 fits, and 4 is hi -> 3
    limit = math.nextafter(1.0, 0.0)
    assert limit / (1.0 / 3) == 3.0  # the rounding this test relies on
    probe = Probe(lambda k: (k - 1) / 3)
    assert longest_fitting(probe, limit, 512) == 3 * 128
    assert probe.steps == [1, 4, 3]
