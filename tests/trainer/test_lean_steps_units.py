"""lora_trainer.lean_steps, fast: the FLOP count taken once, the train() switch done for real
only when a module may be out of training mode, and clipping over the trainable parameters
only where accelerate clips with torch. The mixin sits on a small recording base in place of
transformers.Trainer (whose real steps test_lean_steps.py runs)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from accelerate.utils import DistributedType

from lora_trainer.lean_steps import PLAIN_CLIPPING, LeanStepsMixin, train_switch_skipped


class Counted(torch.nn.Module):
    """Two layers whose train()/num_parameters calls are counted."""

    main_input_name = "input_ids"

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 3)  # 30 parameters
        self.layer = torch.nn.Linear(3, 2)  # 6 + 2 parameters
        self.counts: list[bool] = []  # exclude_embeddings of each num_parameters call

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        self.counts.append(exclude_embeddings)
        return 8 if exclude_embeddings else 38


class Accelerator:
    def __init__(self, kind: DistributedType) -> None:
        self.distributed_type = kind
        self.clipped: list[tuple[list[torch.nn.Parameter], float]] = []

    def clip_grad_norm_(self, params: list[torch.nn.Parameter], max_norm: float) -> str:
        self.clipped.append((list(params), max_norm))
        return "clipped"


class Args:
    max_grad_norm = 0.5


class RecordingBase:
    """What the mixin calls through super(): records the model's state at each call."""

    def __init__(self) -> None:
        self.step_modes: list[tuple[bool, bool]] = []  # (model.training, layer.training)
        self.patched: list[bool] = []
        self.stock_clips: list[torch.nn.Module] = []
        self.evaluations = 0

    def training_step(self, model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        self.step_modes.append((model.training, model.layer.training))  # type: ignore[union-attr]
        self.patched.append("train" in vars(model))
        model.train()  # what the stock step does: inside a lean step it must not switch
        return ("loss", args, kwargs)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        self.evaluations += 1
        return ("eval", args, kwargs)

    def _clip_grad_norm(self, model: torch.nn.Module) -> str:
        self.stock_clips.append(model)
        return "stock"


class Lean(LeanStepsMixin, RecordingBase):
    def __init__(self, model: torch.nn.Module, kind: DistributedType = DistributedType.NO) -> None:
        super().__init__()
        self.model = model
        self.accelerator = Accelerator(kind)
        self.args = Args()


def test_flops_are_six_per_token_per_non_embedding_parameter_counted_once() -> None:
    model = Counted()
    trainer = Lean(model)
    ids = torch.zeros(2, 5, dtype=torch.long)  # 10 tokens
    assert trainer.floating_point_ops({"input_ids": ids}) == 6 * 10 * 8
    assert trainer.floating_point_ops({"input_ids": torch.zeros(1, 7)}) == 6 * 7 * 8
    assert model.counts == [True]  # one count, embeddings excluded


def test_flops_are_zero_without_the_main_input_or_a_parameter_count() -> None:
    model = Counted()
    assert Lean(model).floating_point_ops({"attention_mask": torch.ones(2, 5)}) == 0
    assert model.counts == []
    plain = torch.nn.Linear(2, 2)  # no num_parameters; main input defaults to input_ids
    assert Lean(plain).floating_point_ops({"input_ids": torch.zeros(2, 5)}) == 0


def test_flops_of_a_model_without_a_main_input_name_read_input_ids() -> None:
    class Unnamed(torch.nn.Module):
        def num_parameters(self, exclude_embeddings: bool = False) -> int:
            return 5

    assert Lean(Unnamed()).floating_point_ops({"input_ids": torch.zeros(2, 3)}) == 6 * 6 * 5


def test_flops_read_the_models_own_main_input_name() -> None:
    model = Counted()
    model.main_input_name = "pixel_values"
    trainer = Lean(model)
    assert trainer.floating_point_ops({"input_ids": torch.zeros(4)}) == 0
    assert trainer.floating_point_ops({"pixel_values": torch.zeros(3)}) == 6 * 3 * 8


def test_inside_the_context_train_returns_without_switching_and_eval_switches() -> None:
    model = Counted()
    model.layer.eval()
    with train_switch_skipped(model):
        assert model.train() is model
        assert model.train(True) is model
        assert model.training and not model.layer.training  # nothing switched
        assert model.train(False) is model
        assert not model.training and not model.embed.training  # eval() still switches
    assert "train" not in vars(model)  # the class's train() again
    model.train()
    assert model.layer.training


def test_the_context_restores_train_after_an_error() -> None:
    model = Counted()
    with pytest.raises(RuntimeError, match="boom"), train_switch_skipped(model):
        raise RuntimeError("boom")
    assert "train" not in vars(model)


def test_the_first_step_switches_for_real_and_the_next_ones_do_not() -> None:
    model = Counted()
    model.layer.eval()  # as from_pretrained leaves a base under a train-mode wrapper
    trainer = Lean(model)
    assert trainer.training_step(model, "inputs", n=1) == ("loss", ("inputs",), {"n": 1})
    assert trainer.step_modes == [(True, True)]
    model.layer.eval()  # a child out of mode behind the trainer's back: a lean step keeps it
    trainer.training_step(model)
    assert trainer.step_modes[-1] == (True, False)
    assert trainer.patched == [True, True]  # the stock step ran with train() skipped
    assert "train" not in vars(model)


def test_eval_mode_of_the_model_makes_the_next_step_switch() -> None:
    model = Counted()
    trainer = Lean(model)
    trainer.training_step(model)
    model.eval()
    trainer.training_step(model)
    assert trainer.step_modes[-1] == (True, True)


def test_a_wrapper_still_training_over_an_evaluated_model_switches() -> None:
    """DDP: the wrapper's flag stays True while evaluation switched the unwrapped model."""
    inner = Counted()
    wrapper = torch.nn.Sequential(inner)
    wrapper.training = True
    wrapper.layer = inner.layer  # the recorder reads model.layer
    trainer = Lean(inner)
    trainer.training_step(wrapper)
    inner.eval()  # the unwrapped model's eval(): the wrapper's own flag stays True
    assert wrapper.training
    trainer.training_step(wrapper)
    assert trainer.step_modes[-1] == (True, True)
    assert inner.training


def test_another_model_object_switches() -> None:
    first, second = Counted(), Counted()
    trainer = Lean(first)
    trainer.training_step(first)
    second.layer.eval()
    trainer.training_step(second)
    assert trainer.step_modes[-1] == (True, True)


def test_after_an_evaluation_loop_the_next_step_switches() -> None:
    model = Counted()
    trainer = Lean(model)
    trainer.training_step(model)
    assert trainer.evaluation_loop("data", k=2) == ("eval", ("data",), {"k": 2})
    assert trainer.evaluations == 1
    model.layer.eval()  # evaluation left a child in eval; model.training itself is True
    trainer.training_step(model)
    assert trainer.step_modes[-1] == (True, True)


@pytest.mark.parametrize(
    "kind", [DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU]
)
def test_plain_clipping_covers_the_trainable_parameters_only_listed_once(
    kind: DistributedType,
) -> None:
    model = Counted()
    model.embed.weight.requires_grad_(False)
    trainer = Lean(model, kind)
    assert trainer._clip_grad_norm(model) == "clipped"
    model.layer.bias.requires_grad_(False)  # the list is kept: trainable params do not change
    trainer._clip_grad_norm(model)
    expected = [model.layer.weight, model.layer.bias]
    assert len(trainer.accelerator.clipped) == 2
    for params, max_norm in trainer.accelerator.clipped:
        assert max_norm == 0.5
        assert len(params) == 2 and all(p is q for p, q in zip(params, expected, strict=True))
    assert trainer.stock_clips == []


@pytest.mark.parametrize(
    "kind", [DistributedType.DEEPSPEED, DistributedType.FSDP, DistributedType.XLA]
)
def test_engines_that_clip_themselves_keep_the_stock_path(kind: DistributedType) -> None:
    model = Counted()
    trainer = Lean(model, kind)
    assert trainer._clip_grad_norm(model) == "stock"
    assert trainer.stock_clips == [model] and trainer.accelerator.clipped == []
    assert trainer.stock_clips[0] is model


def test_plain_clipping_is_exactly_the_three_torch_clipping_types() -> None:
    torch_clipped = {t for t in DistributedType if t in PLAIN_CLIPPING}
    assert torch_clipped == {
        DistributedType.NO,
        DistributedType.MULTI_CPU,
        DistributedType.MULTI_GPU,
    }
