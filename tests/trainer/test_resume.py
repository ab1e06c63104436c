"""Kill the trainer (SIGKILL) after its second complete checkpoint, restart it, and check it
resumed from the newest one (by step number: `checkpoint-16` is newer than `checkpoint-8`
although it sorts before it as text): same step, same data order, same total number of steps."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from lora_contract.storage import S3Store
from lora_contract.types import Progress


def losses_by_step(store: S3Store, run: Any) -> dict[int, float]:
    data = store.get_bytes(run.location.child("metrics.jsonl"))
    assert data is not None
    records = [json.loads(line) for line in data.decode().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def wait_for_checkpoints(
    store: S3Store, run: Any, proc: Any, count: int, timeout: float = 120
) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = store.complete_checkpoints(run.location)
        if len(steps) >= count:
            return steps
        assert proc.poll() is None, f"trainer exited before {count} checkpoints: {steps}"
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} complete checkpoints appeared")


def test_killed_run_resumes_from_latest_checkpoint(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"training": {"maxSteps": 24, "checkpointInterval": 8, "logInterval": 2}}
    reference = make_run(spec=spec)
    assert reference.run_here(monkeypatch)[0] == 0  # unbroken, in this process (one thread)

    run = make_run(spec=spec)
    slow = {"LORAJOB_STEP_DELAY_S": "0.25"}
    proc = run.popen(slow)
    try:
        wait_for_checkpoints(store, run, proc, count=2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    at_kill = store.complete_checkpoints(run.location)
    assert len(at_kill) >= 2 and at_kill[-1] >= 16, at_kill
    killed_at = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert killed_at.state == "running" and killed_at.step < 24

    result = run.run()
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = [line for line in result.stderr.splitlines() if "resuming from checkpoint-" in line]
    assert resumed, result.stderr[-2000:]
    step = int(resumed[0].split("checkpoint-")[1].split()[0])
    assert step == max(at_kill), (step, at_kill)

    done = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert done.state == "succeeded" and done.step == done.total_steps == 24
    # Same data order and restored optimizer/RNG: the resumed losses match an unbroken run.
    expected, got = losses_by_step(store, reference), losses_by_step(store, run)
    assert sorted(got) == sorted(expected)
    for s in expected:
        assert abs(got[s] - expected[s]) < 1e-3, (s, got[s], expected[s])


def test_incomplete_checkpoint_is_ignored(
    make_run: Any,
    store: S3Store,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A checkpoint without MANIFEST.json (pod died mid-upload) is never resumed from."""
    run = make_run(spec={"training": {"maxSteps": 8, "checkpointInterval": 4}})
    store.put_bytes(run.location.child("checkpoint-6", "adapter_model.safetensors"), b"partial")
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    assert "resuming" not in capfd.readouterr().err
    # The stale incomplete checkpoint is cleaned up by pruning once newer ones complete.
    assert store.complete_checkpoints(run.location) == [4, 8]
    assert not store.exists(run.location.child("checkpoint-6", "adapter_model.safetensors"))


def test_restart_after_the_last_checkpoint_trains_no_further(make_run: Any, store: S3Store) -> None:
    # the run finishes (checkpoint-4 is the last step), then its final adapter is lost, as when
    # a pod dies between the last checkpoint and the upload; the restart must not take a fifth
    # optimizer step (HF Trainer would) but ship checkpoint-4's adapter as it is
    spec = {"training": {"maxSteps": 4, "checkpointInterval": 2, "logInterval": 1}}
    run = make_run(spec=spec)
    first = run.run()
    assert first.returncode == 0, first.stderr[-3000:]
    assert store.complete_checkpoints(run.location)[-1] == 4
    checkpoint = store.get_bytes(run.location.child("checkpoint-4/adapter_model.safetensors"))
    assert checkpoint is not None
    store.delete_prefix(run.location.child("final"))
    before = losses_by_step(store, run)

    again = run.run()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint-4" in again.stderr
    assert "checkpoint-4 holds the last step: no further training" in again.stderr
    done = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert done.state == "succeeded" and done.step == done.total_steps == 4
    assert losses_by_step(store, run) == before  # no step 5, no loss logged twice
    final = store.get_bytes(run.location.child("final/adapter_model.safetensors"))
    assert final == checkpoint
    assert store.get_bytes(run.location.child("final/adapter_config.json")) is not None
