"""Checkpoint atomicity, retention and upload-failure handling against real S3."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace

from lora_contract.layout import S3Location
from lora_contract.storage import S3Store
from lora_devkit.s3server import free_port
from lora_trainer.callbacks import S3CheckpointCallback
from lora_trainer.checkpoints import (
    download_checkpoint,
    latest_checkpoint,
    prune,
    upload_checkpoint,
    verify,
)
from lora_trainer.metrics import ProgressReporter

from .conftest import BUCKET, fake_checkpoint


def new_run() -> S3Location:
    return S3Location(BUCKET, f"ckpt-test/{uuid.uuid4().hex[:8]}")


def test_upload_prune_and_resume_choice(store: S3Store, tmp_path: Path) -> None:
    run = new_run()
    for step in (2, 4, 6):
        upload_checkpoint(store, run, fake_checkpoint(tmp_path, step), step)
    # A newer checkpoint whose upload died before the manifest: incomplete, ignored.
    store.put_bytes(run.child("checkpoint-8", "adapter_model.safetensors"), b"partial")
    assert store.complete_checkpoints(run) == [2, 4, 6]
    assert latest_checkpoint(store, run) == 6
    assert prune(store, run, keep=2) == [2]
    assert store.complete_checkpoints(run) == [4, 6]
    assert store.exists(run.child("checkpoint-8", "adapter_model.safetensors"))  # newer: kept

    local = download_checkpoint(store, run, 6, tmp_path / "resume")
    assert (local / "adapter_model.safetensors").read_bytes() == b"w" * 6
    assert not (local / "MANIFEST.json").exists()


def test_latest_is_chosen_by_step_number_not_by_name(store: S3Store, tmp_path: Path) -> None:
    """`checkpoint-8` sorts after `checkpoint-24` and `checkpoint-100` as text: the newest
    checkpoint is the highest step, and pruning keeps the highest steps."""
    run = new_run()
    for step in (8, 24, 100, 9):
        upload_checkpoint(store, run, fake_checkpoint(tmp_path, step), step)
    assert store.complete_checkpoints(run) == [8, 9, 24, 100]
    assert latest_checkpoint(store, run) == 100
    assert prune(store, run, keep=2) == [8, 9]
    assert store.complete_checkpoints(run) == [24, 100]
    local = download_checkpoint(store, run, latest_checkpoint(store, run) or 0, tmp_path / "r")
    assert (local / "adapter_model.safetensors").read_bytes() == b"w" * 100


def test_corrupt_checkpoint_falls_back_to_older(store: S3Store, tmp_path: Path) -> None:
    run = new_run()
    for step in (3, 5):
        upload_checkpoint(store, run, fake_checkpoint(tmp_path, step), step)
    store.put_bytes(run.child("checkpoint-5", "adapter_model.safetensors"), b"cut")
    assert verify(store, run.child("checkpoint-3")) is None
    problem = verify(store, run.child("checkpoint-5"))
    assert problem == "adapter_model.safetensors: expected 5 bytes, found 3"
    assert latest_checkpoint(store, run) == 3


def test_failed_upload_is_reported_and_training_continues(store: S3Store, tmp_path: Path) -> None:
    run = new_run()
    upload_checkpoint(store, run, fake_checkpoint(tmp_path, 4), 4)
    reporter = ProgressReporter(store, run)
    dead = S3Store(f"http://127.0.0.1:{free_port()}", "k", "s", retries=1)
    callback = S3CheckpointCallback(dead, run, keep=2, reporter=reporter)
    fake_checkpoint(tmp_path, 8)
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(global_step=8, is_local_process_zero=True, is_world_process_zero=True)
    callback.on_save(args, state, SimpleNamespace())  # must not raise

    assert callback.last_error is not None and "checkpoint 8 upload failed" in callback.last_error
    progress = store.get_json(run.child("progress.json"))
    assert "checkpoint 8 upload failed" in progress["lastError"]
    assert store.complete_checkpoints(run) == [4]  # the previous checkpoint is intact
    assert latest_checkpoint(store, run) == 4
    assert (callback.uploads, callback.failed_uploads) == (0, 1)  # a failure is not an upload
    assert callback.upload_seconds == 0.0

    callback.store = store  # S3 is back: the next checkpoint uploads and counts
    fake_checkpoint(tmp_path, 12)
    callback.on_save(args, SimpleNamespace(**{**vars(state), "global_step": 12}), None)
    assert (callback.uploads, callback.failed_uploads) == (1, 1)
    assert callback.last_error is None and callback.upload_seconds > 0.0
    assert store.complete_checkpoints(run) == [4, 12]
