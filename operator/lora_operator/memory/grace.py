"""The trainer pod's terminationGracePeriodSeconds: time to finish one step and save a checkpoint
after a SIGTERM (preemption, node drain, spot reclaim), before the kubelet's SIGKILL.

A preempted trainer finishes (or abandons) its step, rank 0 writes and uploads the adapter's
checkpoint with its manifest, then every rank exits (lora_trainer.preemption). Kubernetes'
default of 30 s is too short for a slow step or a large checkpoint and needlessly long for
neither, so the plan sizes it: checkpoint bytes at a conservative write + upload bandwidth, plus
one forecast step, plus a margin; never under Kubernetes' default, never over a cap (a node
drain waits for it, and a step that long is better lost than waited for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A checkpoint holds the fp32 adapter (4 B per trainable parameter) and Adam's two fp32 moments
# (8 B): optimizer.pt dominates. 8-bit optimizers write less; this errs long.
CHECKPOINT_BYTES_PER_TRAINABLE_PARAM = 12
# Local disk write, then the S3 upload, one after the other, to a slow or remote bucket.
SAVE_BYTES_PER_SECOND = 50e6
MARGIN_S = 15.0  # manifest, progress.json, termination message, processes exiting
FLOOR_S = 30  # Kubernetes' default terminationGracePeriodSeconds
CAP_S = 600


@dataclass(frozen=True)
class GracePeriod:
    seconds: int
    basis: str  # how the number was derived, for the plan and `lorajob plan`


def step_seconds(
    hours: float, tokens: int, rows_per_step: int, max_steps: int | None, max_seq_length: int
) -> float:
    """One optimizer step of the forecast: its hours over its steps. Without maxSteps the steps
    are counted as if every row were maxSeqLength tokens long: no more steps than that, so no
    shorter step (this errs long)."""
    if max_steps is not None:
        steps = float(max_steps)
    else:
        steps = max(1.0, tokens / (rows_per_step * max_seq_length))
    return hours * 3600.0 / steps


def termination_grace(trainable_params: int, one_step_s: float | None) -> GracePeriod:
    """Seconds from SIGTERM to SIGKILL the trainer needs, and why."""
    checkpoint = trainable_params * CHECKPOINT_BYTES_PER_TRAINABLE_PARAM
    save_s = checkpoint / SAVE_BYTES_PER_SECOND
    step_s = one_step_s or 0.0
    needed = save_s + step_s + MARGIN_S
    seconds = min(CAP_S, max(FLOOR_S, math.ceil(needed)))
    step = f"one step {step_s:.1f} s (forecast)" if one_step_s else "one step (no forecast)"
    bound = ""
    if seconds == FLOOR_S and needed < FLOOR_S:
        bound = f", raised to Kubernetes' default {FLOOR_S} s"
    elif seconds == CAP_S and needed > CAP_S:
        bound = f", capped at {CAP_S} s"
    basis = (
        f"checkpoint {checkpoint / 1e6:.1f} MB ({trainable_params:,} trainable params x "
        f"{CHECKPOINT_BYTES_PER_TRAINABLE_PARAM} B: fp32 adapter + 2 Adam moments) at "
        f"{SAVE_BYTES_PER_SECOND / 1e6:.0f} MB/s = {save_s:.1f} s + {step} + "
        f"{MARGIN_S:.0f} s margin = {needed:.1f} s{bound}"
    )
    return GracePeriod(seconds, basis)
