"""With evaluation on, the adapter shipped in final/ is the best evaluated step's (lowest eval
loss), that checkpoint survives pruning, progress.json names the step, and a resumed attempt says
where it resumed before anything else, keeping an earlier attempt's best."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lora_contract.layout import S3Location
from lora_contract.storage import S3Store, StorageError
from lora_contract.types import Progress
from lora_trainer.callbacks import BestEvalTracker
from lora_trainer.checkpoints import prune, upload_checkpoint
from lora_trainer.completion import best_from_checkpoint, fetch_adapter

from .conftest import BUCKET, fake_checkpoint


def evals_by_step(store: S3Store, location: S3Location) -> dict[int, float]:
    data = store.get_bytes(location.child("metrics.jsonl"))
    assert data is not None
    records = [json.loads(line) for line in data.decode().splitlines()]
    return {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}


def evaluate(tracker: BestEvalTracker, step: int, loss: float) -> bool:
    control = SimpleNamespace(should_save=False)
    state = SimpleNamespace(global_step=step, is_world_process_zero=True)
    tracker.on_evaluate(None, state, control, metrics={"eval_loss": loss})
    return bool(control.should_save)


def test_tracker_keeps_the_lowest_eval_loss_and_checkpoints_each_new_best() -> None:
    tracker = BestEvalTracker()
    assert tracker.protected_steps() == set()
    assert evaluate(tracker, 4, 5.70) is True  # the first evaluation is the best so far
    assert evaluate(tracker, 8, 5.6168) is True
    assert evaluate(tracker, 12, 5.6168) is False  # a tie is not better: the earlier step stays
    assert evaluate(tracker, 16, 5.6405) is False
    assert (tracker.best_step, tracker.best_eval_loss) == (8, 5.6168)
    assert tracker.protected_steps() == {8}
    control = SimpleNamespace(should_save=False)
    tracker.on_evaluate(None, SimpleNamespace(global_step=20), control, metrics={})
    assert control.should_save is False and tracker.best_step == 8


def test_prune_spares_the_best_checkpoint(store: S3Store, tmp_path: Path) -> None:
    run = S3Location(BUCKET, f"best-test/{uuid.uuid4().hex[:8]}")
    for step in (2, 4, 6, 8):
        upload_checkpoint(store, run, fake_checkpoint(tmp_path, step), step)
    assert prune(store, run, keep=2, protected={2}) == [4]
    assert store.complete_checkpoints(run) == [2, 6, 8]
    assert prune(store, run, keep=2) == [2]  # no longer protected: the oldest goes

    final = tmp_path / "final"
    final.mkdir()
    (final / "adapter_model.safetensors").write_bytes(b"last")
    (final / "README.md").write_text("last step's card")
    assert fetch_adapter(store, run, 6, final) == ["adapter_model.safetensors"]
    assert (final / "adapter_model.safetensors").read_bytes() == b"w" * 6
    assert not (final / "README.md").exists()  # nothing of the last step's adapter is left


def test_best_is_read_back_from_the_file_a_checkpoint_carries(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint-36"
    checkpoint.mkdir()
    assert best_from_checkpoint(checkpoint) == (None, None)
    assert best_from_checkpoint(None) == (None, None)
    tracker = BestEvalTracker(None, 28, 5.6168)
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=36, is_world_process_zero=True)
    tracker.on_save(args, state, SimpleNamespace())
    assert best_from_checkpoint(checkpoint) == (28, 5.6168)


def test_early_stopped_run_ships_the_best_steps_adapter(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A huge learning rate: eval loss rises after an early low; patience 2 stops two
    # evaluations after the best, so the stop step is never the best one.
    run = make_run(
        spec={
            "training": {
                "maxSteps": 40,
                "learningRate": 0.5,
                "evalInterval": 2,
                "earlyStoppingPatience": 2,
                "checkpointInterval": 100,
                "keepCheckpoints": 1,
            }
        }
    )
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    evals = evals_by_step(store, run.location)
    best_step = min(evals, key=lambda step: (evals[step], step))
    assert progress.stopped_early is True
    assert progress.best_step == best_step and progress.best_eval_loss == evals[best_step]
    assert progress.step == best_step + 4  # two evaluations (every 2 steps) without a new low
    # keepCheckpoints 1 keeps the stop step; the best one is spared as well
    assert store.complete_checkpoints(run.location) == [best_step, progress.step]
    best = store.get_bytes(run.location.child(f"checkpoint-{best_step}/adapter_model.safetensors"))
    last = store.get_bytes(
        run.location.child(f"checkpoint-{progress.step}/adapter_model.safetensors")
    )
    final = store.get_bytes(run.location.child("final/adapter_model.safetensors"))
    assert best is not None and best != last
    assert final == best


def test_resumed_attempt_says_where_it_resumed_and_keeps_the_earlier_best(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"training": {"maxSteps": 8, "checkpointInterval": 4, "evalInterval": 4}}
    run = make_run(spec=spec)
    assert run.run_here(monkeypatch)[0] == 0
    # as if the pod died after checkpoint-4: the later outputs never happened
    store.delete_prefix(run.location.child("checkpoint-8"))
    store.delete_prefix(run.location.child("final"))
    written: list[Progress] = []
    put_json = S3Store.put_json

    def recording(self: S3Store, loc: S3Location, obj: Any) -> None:
        if loc.key.endswith("/progress.json"):
            written.append(Progress.model_validate(obj))
        put_json(self, loc, obj)

    monkeypatch.setattr(S3Store, "put_json", recording)
    assert run.run_here(monkeypatch)[0] == 0
    assert written[0].state == "starting"
    resumed = written[1]  # before the model loads
    assert (resumed.step, resumed.total_steps, resumed.resumed_from) == (4, 8, 4)
    assert resumed.latest_checkpoint == run.location.child("checkpoint-4").uri
    steps = [p.step for p in written[1:]]
    assert steps == sorted(steps) and steps[-1] == 8
    assert all(p.resumed_from == 4 for p in written[1:])
    evals = evals_by_step(store, run.location)
    assert sorted(evals) == [4, 8]  # step 4's from the first attempt, step 8's from this one
    best_step = min(evals, key=lambda step: (evals[step], step))
    assert (written[-1].best_step, written[-1].best_eval_loss) == (best_step, evals[best_step])


def test_fetching_from_a_checkpoint_without_an_adapter_is_transient(
    store: S3Store, tmp_path: Path
) -> None:
    run = S3Location(BUCKET, f"best-test/{uuid.uuid4().hex[:8]}")
    store.put_json(run.child("checkpoint-4", "trainer_state.json"), {"global_step": 4})
    with pytest.raises(StorageError) as caught:
        fetch_adapter(store, run, 4, tmp_path / "final")
    source = run.child("checkpoint-4").uri
    assert str(caught.value) == f"{source} has no adapter_model.safetensors"
    assert caught.value.transient is True
    assert not (tmp_path / "final").exists()  # nothing half-written
    upload_checkpoint(store, run, fake_checkpoint(tmp_path, 6), 6)
    nested = tmp_path / "scratch" / "final"  # its parent does not exist yet
    assert fetch_adapter(store, run, 6, nested) == ["adapter_model.safetensors"]
    assert (nested / "adapter_model.safetensors").read_bytes() == b"w" * 6


def test_a_best_file_without_values_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "best_eval.json").write_text('{"bestStep": null, "bestEvalLoss": null}')
    assert best_from_checkpoint(tmp_path) == (None, None)
