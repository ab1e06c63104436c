"""method dpo on two processes over gloo, launched as the operator's pods launch them (two
`python -m lora_trainer.launch` nodes, NNODES=2, c10d rendezvous hosted by node 0; see
test_launch.py): both ranks finish, rank 0 alone writes metrics.jsonl, progress.json and the
final adapter, DPO's loss falls and the reward margin rises, and a second attempt resumes from
the run's own checkpoint to the same losses as the uninterrupted run.

One test holds both attempts: each costs two trainer processes on a loaded 2-core machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lora_contract.storage import S3Store
from lora_contract.types import Progress

from .test_dpo import dpo_spec, text_rows, write
from .test_launch import finish, launch_nodes


def logged(store: S3Store, run: Any) -> list[dict[str, Any]]:
    data = store.get_bytes(run.location.child("metrics.jsonl"))
    assert data is not None
    return [json.loads(line) for line in data.decode().splitlines() if '"loss"' in line]


@pytest.mark.slow
def test_dpo_over_two_processes_then_resumes(make_run: Any, store: S3Store, tmp_path: Path) -> None:
    data = write(tmp_path / "pref.jsonl", text_rows(48))
    spec = dpo_spec(data)
    spec["training"].update(
        maxSteps=8, checkpointInterval=4, logInterval=2, microBatchSize=4, learningRate=1e-2
    )
    run = make_run(spec=spec)
    results = finish(launch_nodes(run, 2))
    for code, out in results:
        assert code == 0, out[-4000:]
    rank0, rank1 = results[0][1], results[1][1]
    assert "world size 2" in rank0 and "loss trl-fused-logprobs" in rank0
    # rank 0 alone finishes the run (final upload, progress.json); rank 1 only trains
    assert rank0.count("done: 8/8 steps") == 1 and "done:" not in rank1

    whole = logged(store, run)
    # one record per logged step: rank 1 wrote none of its own
    assert [r["step"] for r in whole] == [2, 4, 6, 8]
    losses = [r["loss"] for r in whole]
    margins = [r["reward_margin"] for r in whole]
    assert losses[-1] < losses[0], losses  # ln 2 = 0.693 at step 0: B = 0, policy = reference
    assert margins[-1] > margins[0] and margins[-1] > 0, margins
    final = store.list(run.location.child("final"))
    assert final.count("adapter_model.safetensors") == 1 and "MANIFEST.json" in final
    names = store.list(run.location.child("checkpoint-8"))
    assert {"rng_state_0.pth", "rng_state_1.pth", "MANIFEST.json"} <= set(names)
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "succeeded" and progress.step == 8
    assert progress.reward_margin == margins[-1]

    # as if both pods died after checkpoint-4: the later checkpoint and the adapter are gone
    store.delete_prefix(run.location.child("checkpoint-8"))
    store.delete_prefix(run.location.child("final"))
    results = finish(launch_nodes(run, 2))
    for code, out in results:
        assert code == 0, out[-4000:]
        assert "resuming from checkpoint-4" in out
    resumed = logged(store, run)
    assert [r["step"] for r in resumed] == [2, 4, 6, 8]
    for before, after in zip(whole, resumed, strict=True):
        assert after["loss"] == pytest.approx(before["loss"], rel=1e-4), (whole, resumed)
        assert after["reward_margin"] == pytest.approx(before["reward_margin"], abs=1e-4)
    assert store.exists(run.location.child("final", "adapter_model.safetensors"))
