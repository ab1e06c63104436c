"""Ways to make a job fit a card without changing what it learns.

A placement that does not fit is often one knob away from fitting: a smaller micro batch with
more gradient accumulation (the global batch, memory/batch.py, stays exactly the same), gradient
checkpointing, the chunked loss, or activation offloading to host memory. None of them changes
the training maths, so the plan may apply one by itself under `distributed.strategy: auto`, and
otherwise names them in the refusal. Pure: the caller passes the estimator, this module only
orders and tries variants; memory/objective.py picks among what fits by forecast cost.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from lora_contract.types import LoRAJobSpec, TrainingOverrides

# Relative step time of each knob (rough, for ordering only): checkpointing reruns each layer's
# forward in backward (~1/3 more compute); a micro batch of fewer tokens runs smaller matmuls
# (micro_batch_efficiency); the chunked loss recomputes only the lm_head matmul; activation
# offloading's copies mostly overlap compute on a side stream, the rest is a guess (no published
# figure for LoRA: torchtune and TRL report it as "slower", not by how much).
CHECKPOINTING_COST = 4 / 3
CHUNKED_LOSS_COST = 1.02
# Tokens per micro-batch at which a LoRA step reaches the catalog's efficiency, and the loss
# below it. Qwen's single-A100 LoRA profile (QwenLM/Qwen README, "Profiling of Memory and
# Speed", micro batch 1) reached 0.45 of peak at 2,048 tokens and 0.24 at 256: (256/2048)^0.3 =
# 0.54, about 0.24/0.45. Above 2,048 tokens a smaller micro batch costs nothing.
SATURATING_TOKENS = 2048
BELOW_SATURATION_EXPONENT = 0.3
ACTIVATION_OFFLOADING_COST = 1.15
MAX_ACCUMULATION = 4096  # training.gradientAccumulation's upper bound
MAX_MICRO_BATCH_STEPS = 8

T = TypeVar("T")


def micro_batch_efficiency(tokens: float) -> float:
    """Share of the catalog efficiency a micro-batch of `tokens` tokens reaches (above)."""
    return float(min(1.0, tokens / SATURATING_TOKENS) ** BELOW_SATURATION_EXPONENT)


def micro_batch_slowdown(seq_len: int, written: int, micro: int) -> float:
    """Step-time factor of running micro batch `micro` instead of the `written` one."""
    return micro_batch_efficiency(written * seq_len) / micro_batch_efficiency(micro * seq_len)


def batch_change(spec: LoRAJobSpec, micro: int, accumulation: int, ranks: int) -> str | None:
    """'training.microBatchSize 2 -> 1 and gradientAccumulation 8 -> 4 per rank on 2 ranks
    (global batch 16 kept)', or None when the run keeps the spec's values."""
    t = spec.training
    if (micro, accumulation) == (t.micro_batch_size, t.gradient_accumulation):
        return None
    changed = f"training.gradientAccumulation {t.gradient_accumulation} -> {accumulation}"
    if micro != t.micro_batch_size:
        changed = (
            f"training.microBatchSize {t.micro_batch_size} -> {micro} and gradientAccumulation "
            f"{t.gradient_accumulation} -> {accumulation}"
        )
    where = "" if ranks == 1 else f" per rank on {ranks} ranks"
    return f"{changed}{where} (global batch {micro * accumulation * ranks} kept)"


# The on/off knobs a variant may turn on: (attribute, spec field, what it costs).
SWITCHES = (
    ("gradient_checkpointing", "gradientCheckpointing", " (~1/3 more compute)"),
    ("chunked_loss", "chunkedLoss", ""),
    ("activation_offloading", "activationOffloading", " (activations in host memory)"),
)


@dataclass(frozen=True)
class Variant:
    """The spec's training knobs after a change that keeps the maths; `cost` is the relative
    step time (1.0 = the spec as written)."""

    micro_batch_size: int
    gradient_accumulation: int
    gradient_checkpointing: bool
    chunked_loss: bool
    cost: float
    activation_offloading: bool = False

    def overrides(self, spec: LoRAJobSpec) -> TrainingOverrides:
        """Only the fields this variant changes."""
        t = spec.training
        return TrainingOverrides(
            micro_batch_size=_changed(t.micro_batch_size, self.micro_batch_size),
            gradient_accumulation=_changed(t.gradient_accumulation, self.gradient_accumulation),
            gradient_checkpointing=_changed(t.gradient_checkpointing, self.gradient_checkpointing),
            chunked_loss=_changed(t.chunked_loss, self.chunked_loss),
            activation_offloading=_changed(t.activation_offloading, self.activation_offloading),
        )

    def applied_to(self, spec: LoRAJobSpec) -> LoRAJobSpec:
        return self.overrides(spec).applied_to(spec)

    def _switched_on(self, spec: LoRAJobSpec) -> list[tuple[str, str]]:
        """(spec field, what it costs) of each on/off knob this variant sets differently."""
        t = spec.training
        return [
            (name, note) for attr, name, note in SWITCHES if getattr(self, attr) != getattr(t, attr)
        ]

    def changes(self, spec: LoRAJobSpec, ranks: int) -> list[str]:
        """One phrase per changed knob against the spec as written (batch_change for the
        batch), e.g. 'training.gradientCheckpointing true (~1/3 more compute)'."""
        batch = batch_change(spec, self.micro_batch_size, self.gradient_accumulation, ranks)
        out = [] if batch is None else [batch]
        out += [f"training.{name} true{note}" for name, note in self._switched_on(spec)]
        return out

    def summary(self, spec: LoRAJobSpec) -> str:
        """Short form for a refusal: 'microBatchSize 1 + gradientAccumulation 16'."""
        t = spec.training
        parts: list[str] = []
        if self.micro_batch_size != t.micro_batch_size:
            parts.append(
                f"microBatchSize {self.micro_batch_size} + gradientAccumulation "
                f"{self.gradient_accumulation}"
            )
        parts += [f"{name} true" for name, _ in self._switched_on(spec)]
        return " + ".join(parts)


@dataclass(frozen=True)
class FitSearch:
    """`cheapest`: the first fitting variant in cost order (None: nothing fits); `fitting`: the
    cheapest fitting variant of each knob combination, in cost order."""

    cheapest: Variant | None
    fitting: list[Variant]


def _changed(old: T, new: T) -> T | None:
    return None if old == new else new


def _micro_batches(micro: int, accumulation: int) -> list[int]:
    """Smaller micro batches that divide the per-rank batch exactly, largest first; at most
    MAX_MICRO_BATCH_STEPS of them (the largest, then 1) to bound the search."""
    per_rank = micro * accumulation
    found = [
        m
        for m in range(micro - 1, 0, -1)
        if per_rank % m == 0 and per_rank // m <= MAX_ACCUMULATION
    ]
    if len(found) > MAX_MICRO_BATCH_STEPS:
        found = [*found[: MAX_MICRO_BATCH_STEPS - 1], found[-1]]
    return found


def candidates(spec: LoRAJobSpec, chunked_loss_applies: bool = True) -> list[list[Variant]]:
    """Per knob combination (checkpointing, chunked loss, offloading), its micro-batch variants
    from the largest micro batch down; the spec as written is left out, and the last variant of
    the last group is the most saving one. `chunked_loss_applies`: False
    where the trainer ignores the chunked loss (ZeRO-3), so turning it on would change nothing."""
    t = spec.training
    seq = spec.dataset.max_seq_length
    per_rank = t.micro_batch_size * t.gradient_accumulation
    checkpointing = [t.gradient_checkpointing] + ([] if t.gradient_checkpointing else [True])
    chunked = [t.chunked_loss] + ([] if t.chunked_loss or not chunked_loss_applies else [True])
    offloading = [t.activation_offloading] + ([] if t.activation_offloading else [True])
    smaller = _micro_batches(t.micro_batch_size, t.gradient_accumulation)
    groups: list[list[Variant]] = []
    for ckpt, chunk, offload in itertools.product(checkpointing, chunked, offloading):
        if offload and not ckpt and not t.activation_offloading:
            # without checkpointing every layer's saved tensors go to host memory (~128 GiB per
            # GPU for an 8B model at 2 x 8192): the plan does not know node memory, so it only
            # offers offloading the checkpointed layer inputs
            continue
        knob_cost = (
            (CHECKPOINTING_COST if ckpt != t.gradient_checkpointing else 1.0)
            * (CHUNKED_LOSS_COST if chunk != t.chunked_loss else 1.0)
            * (ACTIVATION_OFFLOADING_COST if offload != t.activation_offloading else 1.0)
        )
        micros = [t.micro_batch_size, *smaller]
        group = [
            Variant(
                micro_batch_size=m,
                gradient_accumulation=per_rank // m,
                gradient_checkpointing=ckpt,
                chunked_loss=chunk,
                activation_offloading=offload,
                cost=knob_cost * micro_batch_slowdown(seq, t.micro_batch_size, m),
            )
            for m in micros
        ]
        if (ckpt, chunk, offload) == (
            t.gradient_checkpointing,
            t.chunked_loss,
            t.activation_offloading,
        ):
            group = group[1:]  # the spec itself
        if group:
            groups.append(group)
    return groups


def search_fit(
    spec: LoRAJobSpec,
    peak_gib: Callable[[LoRAJobSpec], float],
    limit_gib: float,
    chunked_loss_applies: bool = True,
) -> FitSearch:
    """Variants of `spec` whose `peak_gib` is at most `limit_gib`. Every knob only lowers the
    peak, so the most saving variant is tried first and, when it does not fit, nothing does
    (one estimate); otherwise each knob combination stops at its largest fitting micro batch."""
    fitting: list[Variant] = []
    groups = candidates(spec, chunked_loss_applies)
    if not groups or peak_gib(groups[-1][-1].applied_to(spec)) > limit_gib:
        return FitSearch(cheapest=None, fitting=[])
    for group in groups:
        for variant in group:
            if peak_gib(variant.applied_to(spec)) <= limit_gib:
                fitting.append(variant)
                break
    fitting.sort(key=lambda v: (v.cost, len(v.summary(spec))))
    fitting = [v for i, v in enumerate(fitting) if not _dominated(v, fitting[:i])]
    return FitSearch(cheapest=fitting[0] if fitting else None, fitting=fitting)


def _knobs(variant: Variant) -> set[str]:
    return {
        name
        for name, on in (
            ("checkpointing", variant.gradient_checkpointing),
            ("chunked", variant.chunked_loss),
            ("offloading", variant.activation_offloading),
        )
        if on
    }


def _dominated(variant: Variant, cheaper: list[Variant]) -> bool:
    """True if a cheaper fitting variant turns on no knob this one leaves off and keeps at least
    its micro batch: naming this one too would only add a slowdown (e.g. offloading on top of a
    micro batch that already fits)."""
    return any(
        _knobs(c) <= _knobs(variant) and c.micro_batch_size >= variant.micro_batch_size
        for c in cheaper
    )


SEQ_STEP = 128  # the longest-sequence answer is a multiple of this
DEFAULT_MAX_SEQ = 131_072  # upper bound when the model states no max_position_embeddings


def longest_fitting(peak_gib: Callable[[int], float], limit_gib: float, upper: int) -> int | None:
    """The longest multiple of SEQ_STEP up to `upper` whose `peak_gib` is at most `limit_gib`
    (None: not even SEQ_STEP). Peak memory grows with the sequence, near linearly, so an
    interpolation search needs a handful of estimates; `peak_gib` should be memoised by the
    caller when it asks for several limits."""
    lo, hi = 1, max(upper // SEQ_STEP, 1)  # in steps; lo fits, hi + 1 does not (once checked)
    p_lo = peak_gib(lo * SEQ_STEP)
    if p_lo > limit_gib:
        return None
    p_hi = peak_gib(hi * SEQ_STEP)
    if p_hi <= limit_gib:
        return hi * SEQ_STEP
    while hi - lo > 1:
        slope = (p_hi - p_lo) / (hi - lo)
        guess = lo + int((limit_gib - p_lo) / slope) if slope > 0 else (lo + hi) // 2
        mid = min(max(guess, lo + 1), hi - 1)
        p_mid = peak_gib(mid * SEQ_STEP)
        if p_mid <= limit_gib:
            lo, p_lo = mid, p_mid
            # the next step up usually settles it for a near-linear peak
            if mid + 1 < hi:
                p_next = peak_gib((mid + 1) * SEQ_STEP)
                if p_next > limit_gib:
                    return mid * SEQ_STEP
                lo, p_lo = mid + 1, p_next
        else:
            hi, p_hi = mid, p_mid
    return lo * SEQ_STEP
