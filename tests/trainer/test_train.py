"""Real training of the tiny Llama on CPU, outputs checked in the real (moto) S3 server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lora_contract.layout import S3Location
from lora_contract.storage import S3Store
from lora_contract.types import Progress
from lora_trainer.sources import DONE_MARKER

from .conftest import BUCKET


def metrics(store: S3Store, run: Any) -> list[dict[str, Any]]:
    data = store.get_bytes(run.location.child("metrics.jsonl"))
    assert data is not None, "metrics.jsonl missing"
    return [json.loads(line) for line in data.decode().splitlines()]


def test_trains_uploads_and_adapter_changes_outputs(
    make_run: Any, store: S3Store, model_dir: Path, tmp_path: Path
) -> None:
    run = make_run()
    result = run.run()
    assert result.returncode == 0, result.stderr[-3000:]

    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded"
    assert progress.step == progress.total_steps == 24
    assert progress.adapter_uri == run.location.child("final").uri
    assert progress.latest_checkpoint == run.location.child("checkpoint-24").uri
    assert progress.tokens_per_second and progress.tokens_per_second > 0

    records = metrics(store, run)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.5, losses
    assert any("eval_loss" in r for r in records)
    assert {"step", "epoch", "learning_rate", "tokens_per_second"} <= set(records[0])
    # training.chunkedLoss defaults on: the loss path is recorded with every loss
    assert {r.get("loss_path") for r in records if "loss" in r} == {"chunked"}
    assert {r.get("activation_offload") for r in records if "loss" in r} == {"off"}

    # keepCheckpoints 2 of 8, 16, 24: the oldest was pruned; all left are complete.
    assert store.complete_checkpoints(run.location) == [16, 24]
    names = store.list(run.location.child("checkpoint-24"))
    for required in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
        assert required in names
    png = store.get_bytes(run.location.child("loss.png"))
    assert png is not None and png.startswith(b"\x89PNG")

    adapter = tmp_path / "adapter"
    store.download_prefix(run.location.child("final"), adapter)
    assert (adapter / "MANIFEST.json").exists()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, adapter)
        after = tuned(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


@pytest.mark.parametrize("fmt", ["chat", "instruction"])
def test_other_formats_train(
    make_run: Any, store: S3Store, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(fmt, spec={"training": {"maxSteps": 8, "checkpointInterval": 8}})
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    losses = [r["loss"] for r in metrics(store, run) if "loss" in r]
    assert losses[-1] < losses[0], losses
    assert store.exists(run.location.child("final", "adapter_model.safetensors"))


def test_early_stopping_on_eval_loss(
    make_run: Any,
    store: S3Store,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A huge learning rate makes eval loss rise quickly; patience 1 stops at the 2nd evaluation.
    run = make_run(
        spec={
            "training": {
                "maxSteps": 40,
                "learningRate": 0.5,
                "evalInterval": 2,
                "earlyStoppingPatience": 1,
                "checkpointInterval": 100,
            }
        }
    )
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.stopped_early is True
    assert progress.step < 40
    assert "early stopping" in capfd.readouterr().err
    # The stop step was checkpointed, and so was the best evaluated step (one evaluation
    # earlier with patience 1), whose adapter is the final one (test_best_adapter.py).
    assert progress.best_step == progress.step - 2
    assert store.complete_checkpoints(run.location) == [progress.best_step, progress.step]


def test_model_and_data_from_s3(
    make_run: Any,
    store: S3Store,
    model_dir: Path,
    datasets: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Model (an S3 prefix) and train/eval data (S3 objects, here with the same file name) are
    downloaded once per node, each to its own path, then used."""
    models = S3Location(BUCKET, "models/tiny-from-s3")
    store.upload_dir(models, model_dir)
    rows = datasets["prompt-completion"].read_bytes().splitlines(keepends=True)
    train, held = S3Location(BUCKET, "train/data.jsonl"), S3Location(BUCKET, "eval/data.jsonl")
    store.put_bytes(train, b"".join(rows[:60]))
    store.put_bytes(held, b"".join(rows[60:72]))
    run = make_run(
        spec={
            "baseModel": {"source": models.uri},
            "dataset": {"source": train.uri, "evalSource": held.uri},
            "training": {"maxSteps": 2, "checkpointInterval": 2, "evalInterval": 2},
        }
    )
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    scratch = run.work_dir / run.config.job_name / run.config.run_id
    assert (scratch / "base-model" / DONE_MARKER).exists()
    assert (scratch / "base-model" / "config.json").exists()
    assert (scratch / "data" / BUCKET / "train" / "data.jsonl").read_bytes() == b"".join(rows[:60])
    assert (scratch / "data" / BUCKET / "eval" / "data.jsonl").read_bytes() == b"".join(rows[60:72])
    assert "60 train / 12 eval sequences" in capfd.readouterr().err
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 2
    assert progress.eval_loss is not None
