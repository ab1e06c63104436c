"""The trainer's per-step bookkeeping done once (lora_trainer.lean_steps) gives the Trainer's own
results: the same losses, gradient norms, FLOP count and weights as the stock bookkeeping, and
`model.train()` still switches a model that evaluation left in eval mode."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
from transformers import Trainer

from lora_trainer.lean_steps import LeanStepsMixin, train_switch_skipped
from lora_trainer.loss import LossPath

from .test_chunked_loss import run_two_steps


def test_the_same_steps_logs_and_flops_as_the_stock_bookkeeping(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    switches: list[str] = []  # a real train() switch of the whole PEFT model
    real_train = torch.nn.Module.train

    def counted_train(module: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
        if mode and isinstance(module, peft.PeftModel):
            switches.append("switch")
        return real_train(module, mode)

    monkeypatch.setattr(torch.nn.Module, "train", counted_train)
    lean = run_two_steps(model_dir, tmp_path / "lean", LossPath.standard)
    lean_switches = len(switches)
    switches.clear()
    with monkeypatch.context() as stock_steps:
        for name in ("floating_point_ops", "_clip_grad_norm", "training_step"):
            stock_steps.setattr(LeanStepsMixin, name, getattr(Trainer, name))
        stock = run_two_steps(model_dir, tmp_path / "stock", LossPath.standard)
    assert lean._flop_params is not None and stock._flop_params is None  # the lean path ran
    # 2 steps x 2 micro-batches: the stock step switches the model on each of the 4, the lean
    # one on the first only, so 3 fewer (whatever else switches it, e.g. at train() start)
    assert len(switches) - lean_switches == 3
    assert lean.state.total_flos == stock.state.total_flos > 0

    def logged(trainer: Trainer, key: str) -> list[float]:
        return [r[key] for r in trainer.state.log_history if key in r]

    assert len(logged(lean, "grad_norm")) == 2
    for key in ("loss", "grad_norm"):
        assert logged(lean, key) == pytest.approx(logged(stock, key), rel=1e-6), key
    trained = dict(stock.model.named_parameters())
    for name, weight in lean.model.named_parameters():
        if weight.requires_grad:
            assert torch.allclose(weight, trained[name], rtol=1e-6, atol=1e-8), name


def test_inside_the_step_train_is_skipped_and_eval_still_switches() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a child out of step: only a real train() would reset it
    with train_switch_skipped(model):
        assert model.train() is model
        assert not model[1].training  # skipped
        model.eval()  # eval() still switches everything
        assert not model.training and not model[0].training
    assert "train" not in vars(model)  # the real method is back
    model.train()
    assert model[1].training


def test_every_module_trains_even_when_only_the_peft_wrapper_was_in_train_mode(
    model_dir: Path, tmp_path: Path
) -> None:
    """from_pretrained leaves the base model in eval(); PeftModel itself is created in train
    mode. The first step must still switch every module (gradient checkpointing and dropout
    look at each module's own flag)."""
    trainer = run_two_steps(model_dir, tmp_path / "lean", LossPath.standard)
    assert [name for name, m in trainer.model.named_modules() if not m.training] == []


class StepsAndEvaluation:
    """What Trainer does to the modes: training_step calls train() on the model it is given (a
    DDP wrapper in multi-process runs), evaluation_loop calls eval() on the unwrapped model."""

    model: torch.nn.Module

    def training_step(self, model: torch.nn.Module) -> list[bool]:
        model.train()
        return [m.training for m in model.modules()]

    def evaluation_loop(self) -> None:
        self.model.eval()


class LeanSteps(LeanStepsMixin, StepsAndEvaluation):
    pass


def test_a_step_after_an_evaluation_of_the_unwrapped_model_trains_every_module() -> None:
    inner = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    wrapped = torch.nn.Sequential(inner)  # stands for DistributedDataParallel(inner)
    trainer = LeanSteps()
    trainer.model = inner
    assert all(trainer.training_step(wrapped))
    trainer.evaluation_loop()
    assert wrapped.training and not inner[1].training  # the wrapper's own flag stays True
    assert all(trainer.training_step(wrapped))
    inner.eval()  # anything else that puts the unwrapped model in eval mode
    assert all(trainer.training_step(wrapped))
    inner[1].eval()  # a child alone: not tracked (nothing in the Trainer does this)
    assert not all(trainer.training_step(wrapped))
