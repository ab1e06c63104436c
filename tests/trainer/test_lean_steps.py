"""The trainer's per-step bookkeeping done once (lora_trainer.lean_steps) gives the Trainer's own
results: the same losses, gradient norms, FLOP count and weights as the stock bookkeeping, and
`model.train()` still switches a model that evaluation left in eval mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Trainer

from lora_trainer.lean_steps import LeanStepsMixin, train_mode_kept
from lora_trainer.loss import LossPath

from .test_chunked_loss import run_two_steps


def test_the_same_steps_logs_and_flops_as_the_stock_bookkeeping(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean = run_two_steps(model_dir, tmp_path / "lean", LossPath.standard)
    with monkeypatch.context() as stock_steps:
        for name in ("floating_point_ops", "_clip_grad_norm", "training_step"):
            stock_steps.setattr(LeanStepsMixin, name, getattr(Trainer, name))
        stock = run_two_steps(model_dir, tmp_path / "stock", LossPath.standard)
    assert lean._flop_params is not None and stock._flop_params is None  # the lean path ran
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


def test_train_is_skipped_only_while_the_model_is_training() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a child out of step: only a real train() would reset it
    with train_mode_kept(model):
        assert model.train() is model
        assert not model[1].training  # skipped: the model was already training
        model.eval()  # eval() still switches everything
        assert not model.training and not model[0].training
    assert "train" not in vars(model)  # the real method is back
    with train_mode_kept(model):  # evaluated: the next train() is the real one
        model.train()
    assert model.training and model[0].training and model[1].training
