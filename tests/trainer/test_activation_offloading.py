"""Activation offloading (lora_trainer.offload): the same loss and LoRA gradients with the saved
tensors sent through host memory, with gradient checkpointing and the chunked loss, directly and
through two real HF Trainer steps; and what moves under checkpointing (the memory model's
assumption: one layer input per layer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lora_contract.storage import S3Store
from lora_trainer.loss import LossPath
from lora_trainer.offload import OffloadPath, choose_offload_path, offload_contexts

from .test_chunked_loss import (
    adapter_grads,
    batch,
    chunked,
    losses_and_weights,
    run_two_steps,
    tiny_lora,
)

NON_REENTRANT = {"use_reentrant": False}  # as the trainer checkpoints (train.training_arguments)


def test_the_path_follows_the_flag_and_the_device() -> None:
    assert choose_offload_path(enabled=False, on_cuda=True) is OffloadPath.off
    assert choose_offload_path(enabled=True, on_cuda=True) is OffloadPath.trl
    assert choose_offload_path(enabled=True, on_cuda=False) is OffloadPath.save_on_cpu


class SavedTensors:
    """Where the forward's saved tensors went: `outer` counts those an outer saved-tensors hook
    got (what no offloader took), `moved` the devices of the copies the offloader's own pack
    hook made (a spy around it)."""

    def __init__(self) -> None:
        self.outer = 0
        self.moved: list[str] = []

    def spy_on(self, context: Any) -> None:
        if not isinstance(context, torch.autograd.graph.saved_tensors_hooks):
            return  # `off`: a nullcontext, no hook of its own
        pack = context.pack_hook

        def counted(tensor: torch.Tensor) -> Any:
            packed = pack(tensor)
            self.moved.append(packed[1].device.type)  # save_on_cpu packs (device, host copy)
            return packed

        context.pack_hook = counted  # pushed on __enter__

    def count_outer(self, tensor: torch.Tensor) -> torch.Tensor:
        self.outer += 1
        return tensor


def loss_and_grads(
    model: Any, path: OffloadPath
) -> tuple[float, dict[str, torch.Tensor], SavedTensors]:
    ids, labels = batch()
    saved = SavedTensors()
    context = offload_contexts(model, path)()
    saved.spy_on(context)
    with torch.autograd.graph.saved_tensors_hooks(saved.count_outer, lambda t: t), context:
        loss = chunked(model, ids, labels, chunk=5)
        loss.backward()
    return loss.item(), adapter_grads(model), saved


@pytest.mark.parametrize("checkpointing", [False, True])
def test_loss_and_lora_gradients_equal_without_offloading(checkpointing: bool) -> None:
    model = tiny_lora(tied=False, head_target=True)
    if checkpointing:
        model.activation_checkpointing_enable(NON_REENTRANT)
    model.train()
    expected_loss, expected, plain = loss_and_grads(model, OffloadPath.off)
    loss, got, offloaded = loss_and_grads(model, OffloadPath.save_on_cpu)
    assert loss == expected_loss
    for name, grad in expected.items():
        assert torch.equal(got[name], grad), name
    # the feature ran: every tensor the plain step saved went through the offloader, to host
    assert plain.moved == [] and plain.outer > 0
    assert offloaded.outer == 0
    assert offloaded.moved == ["cpu"] * plain.outer


def test_under_checkpointing_the_offloaded_tensors_are_the_layer_inputs() -> None:
    """What a saved-tensors hook (the offloaders' mechanism) sees with non-reentrant
    checkpointing: each checkpointed layer's input, not its working set; the memory model
    moves exactly those to host."""
    model = tiny_lora(tied=False, head_target=False)
    model.activation_checkpointing_enable(NON_REENTRANT)
    model.train()
    ids, labels = batch()
    seen: list[torch.Size] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        seen.append(tensor.shape)
        return tensor

    decoder = model.get_base_model().get_decoder()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = decoder(input_ids=ids).last_hidden_state
    layer_inputs = [s for s in seen if s == torch.Size([*ids.shape, 64])]
    # one hidden-state tensor per checkpointed layer (+ the embedding / final norm's own saves)
    assert len(decoder.layers) <= len(layer_inputs) <= len(decoder.layers) + 2
    assert not any(s[-1] == 128 for s in seen)  # no MLP-wide tensor: the working set is not kept
    del hidden, labels


def train_two_steps(model_dir: Path, output: Path, offload: OffloadPath) -> tuple[Any, Any]:
    """Two optimizer steps of 2 x 2 micro-batches, chunked loss and checkpointing on."""
    trainer = run_two_steps(
        model_dir, output, LossPath.chunked, offload, ("q_proj", "v_proj"), checkpointing=True
    )
    return losses_and_weights(trainer)


def test_the_trainer_takes_the_same_steps_with_offloading(model_dir: Path, tmp_path: Path) -> None:
    plain_saved, offloaded_saved = SavedTensors(), SavedTensors()
    with torch.autograd.graph.saved_tensors_hooks(plain_saved.count_outer, lambda t: t):
        plain_losses, plain = train_two_steps(model_dir, tmp_path / "a", OffloadPath.off)
    with torch.autograd.graph.saved_tensors_hooks(offloaded_saved.count_outer, lambda t: t):
        offloaded_losses, offloaded = train_two_steps(
            model_dir, tmp_path / "b", OffloadPath.save_on_cpu
        )
    # the feature ran: the trainer's steps saved tensors, and with offloading on its hooks took
    # every one (an outer hook sees none)
    assert plain_saved.outer > 0 and offloaded_saved.outer == 0
    assert len(plain_losses) == 2
    assert offloaded_losses == pytest.approx(plain_losses, rel=1e-6)
    for name, weight in plain.items():
        assert torch.allclose(offloaded[name], weight, rtol=1e-5, atol=1e-7), name


@pytest.mark.gpu
def test_trl_offloading_on_cuda_gives_the_same_gradients() -> None:
    """CUDA: TRL's stream offloader (the path the trainer takes) against no offloading, with
    checkpointing and the chunked loss; GPU memory of the saved tensors goes down."""
    model = tiny_lora(tied=False, head_target=False).to("cuda")
    model.activation_checkpointing_enable(NON_REENTRANT)
    model.train()
    ids, labels = (t.cuda() for t in batch())
    plain = chunked(model, ids, labels, chunk=5)
    plain.backward()
    expected = adapter_grads(model)
    with offload_contexts(model, OffloadPath.trl)():
        ours = chunked(model, ids, labels, chunk=5)
        ours.backward()
    got = adapter_grads(model)
    assert ours.item() == pytest.approx(plain.item(), rel=1e-6)
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, rtol=1e-5, atol=1e-7), name


def test_the_trainer_records_the_offload_path(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`training.activationOffloading: true` through the trainer's own entry point: it trains
    and each loss record names the path taken (CPU: torch's hooks)."""
    spec = {"training": {"maxSteps": 8, "checkpointInterval": 8, "activationOffloading": True}}
    run = make_run(spec=spec)
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    data = store.get_bytes(run.location.child("metrics.jsonl"))
    assert data is not None
    records = [json.loads(line) for line in data.decode().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert losses and {r["activation_offload"] for r in losses} == {"torch-save-on-cpu"}
    assert losses[-1]["loss"] < losses[0]["loss"]
