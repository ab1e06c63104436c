"""lm_head's weight gathered for the chunked loss under DeepSpeed ZeRO-3.

ZeRO-3 keeps 1/world of every weight on a rank. The chunked loss projects chunks of hidden states
onto the vocabulary outside the model's forward, so it gathers lm_head's full weight itself
(`deepspeed.zero.GatheredParameters`, modifier_rank=None): once around a micro-batch's forward
over all chunks, and once around its backward, where the checkpointed chunks recompute their
logits. Two identity autograd nodes bracket that backward: the one on the summed loss runs before
any chunk (gather), the one on the chunks' input after all of them (partition again).

The gather is a collective and ranks hold different numbers of labelled positions (so of chunks):
each rank gathers exactly twice per micro-batch, whatever its chunk count. The cost is the full
vocab x hidden weight in the compute dtype, alive during the loss's forward and its backward.
The projection calls `F.linear` on the weight, not the module: ZeRO-3's module hooks would
partition the weight again after the first chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def is_partitioned(param: Any) -> bool:
    """True for a ZeRO-3 parameter (DeepSpeed tags them with a `ds_id`)."""
    return hasattr(param, "ds_id")


def gatherable(head: Any) -> bool:
    """Whether the chunks may run on lm_head's gathered weight: a plain nn.Linear (a LoRA-adapted
    lm_head adds its adapters in its own forward) whose parameters are frozen (a trainable one
    would get a full-size gradient that ZeRO-3 cannot take)."""
    if type(head) is not torch.nn.Linear:
        return False
    return not any(p.requires_grad for p in head.parameters())


class GatheredHead:
    """A frozen plain nn.Linear lm_head whose ZeRO-3 shards are gathered around the chunked loss.
    `gathers` counts the collectives (a log line and the tests read it)."""

    def __init__(self, head: torch.nn.Linear) -> None:
        self.head = head
        self.params = [p for p in (head.weight, head.bias) if p is not None]
        self.gathers = 0
        self._backward: Any = None  # the gather held open over a backward pass

    @property
    def vocab(self) -> int:
        return int(self.head.out_features)

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.head.weight, self.head.bias)

    def _gather(self) -> Any:
        import deepspeed

        self.gathers += 1
        context = deepspeed.zero.GatheredParameters(self.params, modifier_rank=None)
        context.__enter__()
        return context

    def open_for_backward(self) -> None:
        self._backward = self._gather()

    def close_after_backward(self) -> None:
        context, self._backward = self._backward, None
        if context is not None:
            context.__exit__(None, None, None)

    def loss_sum(
        self,
        selected: torch.Tensor,
        chunks: Callable[[torch.Tensor, bool], torch.Tensor],
    ) -> torch.Tensor:
        """`chunks(selected, recompute)` (the chunked loss's loop over `project`) with the weight
        gathered. With a backward to come, every chunk is checkpointed, so no chunk keeps the
        gathered weight for its backward; the recomputation runs inside the backward gather."""
        backward = torch.is_grad_enabled() and selected.requires_grad
        if backward:
            selected = _CloseAfterBackward.apply(selected, self)  # type: ignore[no-untyped-call]
        context = self._gather()
        try:
            total = chunks(selected, backward)
        finally:
            context.__exit__(None, None, None)
        if not backward:
            return total
        opened: torch.Tensor = _OpenForBackward.apply(total, self)  # type: ignore[no-untyped-call]
        return opened


class _OpenForBackward(torch.autograd.Function):
    """Identity on the loss; its backward runs first of the loss's backward: gather."""

    @staticmethod
    def forward(ctx: Any, total: torch.Tensor, head: GatheredHead) -> torch.Tensor:
        ctx.head = head
        return total.view_as(total)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.head.open_for_backward()
        return grad, None


class _CloseAfterBackward(torch.autograd.Function):
    """Identity on the chunks' input; its backward runs after every chunk's: partition again."""

    @staticmethod
    def forward(ctx: Any, selected: torch.Tensor, head: GatheredHead) -> torch.Tensor:
        ctx.head = head
        return selected.view_as(selected)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.head.close_after_backward()
        return grad, None
