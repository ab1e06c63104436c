"""The causal-LM loss without the full `[batch, seq, vocab]` logits.

The stock path (model forward with `labels`) projects every position onto the vocabulary, upcasts
those logits to fp32 and keeps them and their gradient alive: ~6 GiB at 2 x 2048 x 128k, the
largest single buffer of a LoRA step. Here the model runs with no logits at all (`logits_to_keep`
of zero positions), the decoder's last hidden state is taken by a forward hook, and lm_head +
cross-entropy run on chunks of the positions that have a label, each under activation
checkpointing: a chunk's logits are freed as soon as its loss is summed and are recomputed in
backward. On CUDA, liger-kernel's fused linear cross-entropy (which never materialises a chunk
either) is used when it imports and lm_head is a plain frozen linear. Under DeepSpeed ZeRO-3 the
chunks run on lm_head's weight gathered once per micro-batch's forward and once per backward
(`lora_trainer.gathered_head`).

Semantics are the stock ones (transformers' `ForCausalLMLoss`): labels shifted left by one, -100
ignored, the sum divided by `num_items_in_batch` when the Trainer passes it (gradient
accumulation and multi-device token averaging stay the Trainer's), else the mean over labelled
positions. The Trainer's own scaling is kept by going through `compute_loss_func`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import Trainer

from .gathered_head import GatheredHead, gatherable, is_partitioned
from .lean_steps import LeanStepsMixin
from .metrics import log
from .offload import OffloadPath, offload_contexts

IGNORE_INDEX = -100
# Logit elements per chunk: 2**25 is 256 positions at a 128k vocabulary, 128 MiB per fp32 copy.
CHUNK_LOGIT_ELEMENTS = 2**25
# Config fields that transform logits after lm_head (soft-capping, scaling): the chunked loss
# would skip them, so such models keep the stock loss.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


class LossPath(str, Enum):
    """How the loss was computed; recorded in the run's metrics."""

    standard = "standard"  # the model's own loss over full logits
    chunked = "chunked"  # chunked lm_head + cross-entropy with recomputation (any device)
    fused = "fused-liger"  # liger-kernel's fused linear cross-entropy (CUDA)


def chunk_positions(vocab_size: int) -> int:
    """Positions per loss chunk for this vocabulary (the memory model uses the same number)."""
    return max(1, CHUNK_LOGIT_ELEMENTS // max(vocab_size, 1))


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Position i predicts label i+1; the last position predicts nothing (as transformers)."""
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


Projection = Callable[[torch.Tensor], torch.Tensor]


def _chunk_loss_sum(head: Projection, hidden: torch.Tensor, target: torch.Tensor) -> Any:
    logits = head(hidden).float()  # the stock loss upcasts too: same numerics per position
    return F.cross_entropy(logits, target, reduction="sum")


def _sum_chunks(
    head: Projection, selected: torch.Tensor, wanted: torch.Tensor, chunk: int, recompute: bool
) -> torch.Tensor:
    total = selected.sum() * 0.0  # zero, but connected to the graph when nothing is labelled
    for start in range(0, selected.shape[0], chunk):
        part = (selected[start : start + chunk], wanted[start : start + chunk])
        if recompute:
            total = total + checkpoint(_chunk_loss_sum, head, *part, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(head, *part)
    return total


def chunked_cross_entropy_sum(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: torch.nn.Module,
    chunk: int,
    gathered: GatheredHead | None = None,
) -> torch.Tensor:
    """Sum of cross-entropy over the labelled positions, `chunk` positions at a time; each chunk
    is checkpointed, so only its input (a slice of the labelled hidden states) is kept. A batch
    that fits in one chunk is not: its buffers are alive from the loss straight into backward
    either way, so recomputing them would only add an lm_head forward. With `gathered` (ZeRO-3)
    every chunk is checkpointed and runs on the gathered weight (`GatheredHead.loss_sum`)."""
    keep = targets.ne(IGNORE_INDEX)
    selected = hidden[keep]  # only labelled positions are projected at all
    wanted = targets[keep]
    if gathered is not None:
        project = gathered.project
        return gathered.loss_sum(
            selected, lambda part, recompute: _sum_chunks(project, part, wanted, chunk, recompute)
        )
    recompute = torch.is_grad_enabled() and selected.shape[0] > chunk
    return _sum_chunks(head, selected, wanted, chunk, recompute)


def fused_cross_entropy_sum(
    hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module
) -> torch.Tensor:
    """liger-kernel's fused lm_head + cross-entropy (CUDA), summed over labelled positions."""
    from liger_kernel.transformers import (  # type: ignore[import-not-found]
        LigerFusedLinearCrossEntropyLoss,
    )

    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")
    flat = hidden.reshape(-1, hidden.shape[-1])
    result: torch.Tensor = fused(head.weight, flat, targets.reshape(-1), head.bias)
    return result


def normalise(
    total: torch.Tensor, targets: torch.Tensor, num_items_in_batch: Any | None
) -> torch.Tensor:
    """The stock reduction: sum / num_items_in_batch if given, else the mean over labels."""
    if num_items_in_batch is None:
        return total / targets.ne(IGNORE_INDEX).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def causal_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: torch.nn.Module,
    path: LossPath = LossPath.chunked,
    num_items_in_batch: Any | None = None,
    chunk: int | None = None,
    gathered: GatheredHead | None = None,
) -> torch.Tensor:
    """The causal-LM loss of `hidden` ([batch, seq, hidden]) through `head` against `labels`;
    `gathered` when lm_head's weight is ZeRO-3-partitioned."""
    targets = shifted_targets(labels.to(hidden.device))
    if path is LossPath.fused:
        total = fused_cross_entropy_sum(hidden, targets, head)
    else:
        vocab = gathered.vocab if gathered else int(cast(torch.Tensor, head.weight).shape[0])
        chunk = chunk or chunk_positions(vocab)
        total = chunked_cross_entropy_sum(hidden, targets, head, chunk, gathered)
    return normalise(total, targets, num_items_in_batch)


def causal_lm_of(model: Any) -> Any:
    """The transformers CausalLM under PEFT's wrappers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base


def skips_logits(causal_lm: Any) -> bool:
    """True if the model's forward takes `logits_to_keep` and applies nothing after lm_head."""
    if "logits_to_keep" not in inspect.signature(causal_lm.forward).parameters:
        return False
    if not hasattr(causal_lm, "get_decoder") or causal_lm.get_output_embeddings() is None:
        return False
    config = causal_lm.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return not any(getattr(text, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)


def fused_kernel_usable(head: Any) -> bool:
    """liger's kernel takes lm_head's weight matrix itself: only a plain, frozen, unsharded
    nn.Linear on CUDA (a LoRA-adapted or ZeRO-3-partitioned lm_head takes the chunked path)."""
    if not (torch.cuda.is_available() and type(head) is torch.nn.Linear):
        return False
    if head.weight.requires_grad or head.weight.device.type != "cuda" or head.weight.numel() == 0:
        return False
    try:
        import liger_kernel.transformers  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def choose_loss_path(model: Any, chunked_loss: bool, zero3: bool = False) -> LossPath:
    """The leanest path this model and device allow (`training.chunkedLoss: false` = stock).

    Under ZeRO-3 the chunks run on lm_head's gathered weight, which needs a frozen plain
    nn.Linear (`gatherable`); a LoRA-adapted lm_head keeps the stock loss there. The fused
    kernel never runs under ZeRO-3 (it takes the weight matrix itself)."""
    causal_lm = causal_lm_of(model)
    if not chunked_loss or not skips_logits(causal_lm):
        return LossPath.standard
    head = causal_lm.get_output_embeddings()
    if zero3:
        return LossPath.chunked if gatherable(head) else LossPath.standard
    if fused_kernel_usable(head):
        return LossPath.fused
    return LossPath.chunked


class HiddenStateCapture:
    """Keeps the decoder's last hidden state of the forward pass in progress."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.decoder = decoder
        self.hidden: torch.Tensor | None = None

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        self.hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

    @contextmanager
    def active(self) -> Iterator[None]:
        handle = self.decoder.register_forward_hook(self._hook)
        try:
            yield
        finally:
            handle.remove()
            self.hidden = None

    def take(self) -> torch.Tensor:
        if self.hidden is None:
            raise RuntimeError("the decoder did not run: no hidden state to compute the loss on")
        hidden, self.hidden = self.hidden, None
        return hidden


def lean_forward_loss(
    model: Any, input_ids: torch.Tensor, labels: torch.Tensor, path: LossPath = LossPath.chunked
) -> torch.Tensor:
    """One forward + loss the way `LeanLossTrainer` runs it, outside a Trainer (benchmarks and
    measurements of the trainer's own code path); `LossPath.standard` is the stock loss."""
    if path is LossPath.standard:
        return cast(torch.Tensor, model(input_ids=input_ids, labels=labels).loss)
    causal_lm = causal_lm_of(model)
    capture = HiddenStateCapture(causal_lm.get_decoder())
    with capture.active():
        model(input_ids=input_ids, logits_to_keep=torch.zeros(0, dtype=torch.long))
        hidden = capture.take()
    return causal_lm_loss(hidden, labels, causal_lm.get_output_embeddings(), path)


def gathered_head_for(head: Any, path: LossPath, zero3: bool) -> GatheredHead | None:
    """A GatheredHead where the chunked loss runs under ZeRO-3, else None. Decided by the
    strategy, not by the weight: a quantized model loads whole and `deepspeed.initialize`
    partitions lm_head only after this Trainer exists."""
    if path is not LossPath.chunked or not (zero3 or is_partitioned(head.weight)):
        return None
    if not gatherable(head):
        raise ValueError("the chunked loss under ZeRO-3 needs a frozen plain nn.Linear lm_head")
    gathered = GatheredHead(head)
    log(
        f"chunked loss under ZeRO-3: lm_head's {gathered.vocab} x {head.in_features} weight is "
        "gathered around each micro-batch's loss forward and backward"
    )
    return gathered


class LeanLossTrainer(LeanStepsMixin, Trainer):  # type: ignore[misc]
    """HF Trainer whose causal-LM loss never materialises the full logits (see the module
    docstring), without the Trainer's per-step module walks (`lean_steps`). With
    `LossPath.standard` its loss is the stock one; with `zero3` the chunks run on lm_head's
    gathered weight (`gathered`)."""

    def __init__(
        self,
        *args: Any,
        loss_path: LossPath = LossPath.standard,
        offload_path: OffloadPath = OffloadPath.off,
        zero3: bool = False,
        **kwargs: Any,
    ) -> None:
        self.loss_path = loss_path
        self.offload_path = offload_path
        self._offload = offload_contexts(kwargs["model"], offload_path)
        self._capture: HiddenStateCapture | None = None
        self._head: torch.nn.Module | None = None
        self.gathered: GatheredHead | None = None
        if loss_path is not LossPath.standard:
            causal_lm = causal_lm_of(kwargs["model"])
            self._capture = HiddenStateCapture(causal_lm.get_decoder())
            self._head = causal_lm.get_output_embeddings()
            self.gathered = gathered_head_for(self._head, loss_path, zero3)
            kwargs["compute_loss_func"] = self._loss_from_hidden
        super().__init__(*args, **kwargs)

    def _loss_from_hidden(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any | None = None
    ) -> torch.Tensor:
        assert self._capture is not None and self._head is not None
        with self.accelerator.autocast():  # lm_head in the dtype the model's forward uses
            return causal_lm_loss(
                self._capture.take(),
                labels,
                self._head,
                self.loss_path,
                num_items_in_batch,
                gathered=self.gathered,
            )

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Forward and backward under the offloading context (lora_trainer.offload): what the
        forward saves, the loss's chunk inputs and checkpointed layer inputs included, moves."""
        with self._offload():
            return super().training_step(*args, **kwargs)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any | None = None,
    ) -> Any:
        if "labels" not in inputs:  # else: transformers' "did not return a loss" or worse
            raise ValueError(
                f"LeanLossTrainer: the batch has no 'labels' (it holds {', '.join(sorted(inputs))})"
                ": the SFT loss needs the collator's labels (PadCollator; -100 where nothing is "
                "learned)"
            )
        if self._capture is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        no_logits = torch.zeros(0, dtype=torch.long, device=inputs["labels"].device)
        with self._capture.active():
            return super().compute_loss(
                model, {**inputs, "logits_to_keep": no_logits}, return_outputs, num_items_in_batch
            )
