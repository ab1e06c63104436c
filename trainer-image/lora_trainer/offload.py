"""Activation offloading (`training.activationOffloading`): the tensors the forward pass saves
for backward go to host memory and come back when backward needs them.

On CUDA this is TRL's `OffloadActivations` (maintained, used by TRL's SFTTrainer): pinned host
buffers, copies on a side stream overlapped with compute, a stash of the last few tensors kept on
the GPU until their copy is done, lm_head's input kept on the GPU (it is needed right away), and
tensors under 1 KiB or sharing a parameter's storage left in place. TRL's version needs an
accelerator, so without one torch's own `save_on_cpu` hooks run instead: on CPU they copy each
saved tensor and give the copy back, the same pack/unpack path, which is what the CPU tests check.

With gradient checkpointing the checkpointed layers' inputs are the only tensors saved across the
forward, so those are what moves; the chunked loss's per-chunk inputs move too.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from enum import Enum
from typing import Any

import torch


class OffloadPath(str, Enum):
    """Where saved tensors lived; recorded in the run's metrics beside the loss path."""

    off = "off"
    trl = "trl-streams"  # TRL's OffloadActivations (CUDA, side-stream copies to pinned memory)
    save_on_cpu = "torch-save-on-cpu"  # torch.autograd.graph.save_on_cpu (no accelerator)


def choose_offload_path(enabled: bool, on_cuda: bool) -> OffloadPath:
    if not enabled:
        return OffloadPath.off
    return OffloadPath.trl if on_cuda else OffloadPath.save_on_cpu


def offload_contexts(model: Any, path: OffloadPath) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of the context to run each training step under. TRL's manager hooks lm_head
    once, so one instance serves every step; torch's hooks are cheap to make per step."""
    if path is OffloadPath.trl:
        from trl.models.activation_offloading import get_act_offloading_ctx_manager

        manager = get_act_offloading_ctx_manager(model, use_pin_memory=True, use_streams=True)
        return lambda: manager
    if path is OffloadPath.save_on_cpu:
        pin = torch.cuda.is_available()
        return lambda: torch.autograd.graph.save_on_cpu(pin_memory=pin)
    return nullcontext
