"""Checkpoint files in S3, against a real (moto) S3 server: MANIFEST.json is the commit point
(what it records is read back and checked by verify), pruning keeps exactly the newest K complete
checkpoints and never touches one newer than the newest complete checkpoint, verify catches a
missing file or a size mismatch, and a download replaces a stale local copy without the manifest.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lora_contract.layout import S3Location
from lora_contract.storage import S3Store
from lora_trainer.checkpoints import (
    download_checkpoint,
    latest_checkpoint,
    prune,
    upload_checkpoint,
    upload_files,
    verify,
    write_manifest,
)

from .conftest import BUCKET, fake_checkpoint


def new_run() -> S3Location:
    return S3Location(BUCKET, f"ckpt-files/{uuid.uuid4().hex[:8]}/r1")


def manifest_of(store: S3Store, folder: S3Location) -> dict[str, Any]:
    data = store.get_json(folder.child("MANIFEST.json"))
    assert isinstance(data, dict)
    return data


def delete_object(store: S3Store, loc: S3Location) -> None:
    store.client.remove_object(loc.bucket, loc.key)
    assert not store.exists(loc)


def upload_incomplete(store: S3Store, run: S3Location, step: int) -> S3Location:
    """A checkpoint whose pod died before the manifest."""
    folder = run.child(f"checkpoint-{step}")
    store.put_bytes(folder.child("adapter_model.safetensors"), b"partial")
    return folder


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """The pod's local time zone is 5:45 ahead of UTC (no tz database needed: a POSIX TZ)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "LOR-5:45"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


# --- the manifest ------------------------------------------------------------------------------


def test_manifest_records_step_files_sizes_and_total(
    store: S3Store, tmp_path: Path, far_from_utc: None
) -> None:
    run = new_run()
    local = fake_checkpoint(tmp_path, 12)
    (local / "global_step12").mkdir()
    (local / "global_step12" / "zero_pp_rank_0_states.pt").write_bytes(b"z" * 100)
    dest = upload_checkpoint(store, run, local, 12)

    assert dest == run.child("checkpoint-12")
    manifest = manifest_of(store, dest)
    assert set(manifest) == {"step", "files", "totalBytes", "createdAt"}
    assert manifest["step"] == 12
    assert manifest["files"] == {
        "adapter_model.safetensors": 12,
        "trainer_state.json": len('{"global_step": 12}'),
        "global_step12/zero_pp_rank_0_states.pt": 100,
    }
    assert manifest["totalBytes"] == 12 + len('{"global_step": 12}') + 100
    # createdAt is UTC whatever the pod's time zone, in the one format the manifest uses.
    created = datetime.strptime(manifest["createdAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=2)
    assert verify(store, dest) is None


def test_rewritten_manifest_lists_what_is_in_s3_but_never_itself(
    store: S3Store, tmp_path: Path
) -> None:
    """The multi-node path: every node uploads its files, then rank 0 writes the manifest from a
    listing of S3 (not from its own disk). Writing it again does not list the manifest."""
    dest = new_run().child("checkpoint-8")
    upload_files(store, dest, fake_checkpoint(tmp_path / "node0", 8))
    store.put_bytes(dest.child("rng_state_1.pth"), b"r" * 33)  # node 1's file
    first = write_manifest(store, dest, 8)
    second = write_manifest(store, dest, 8)
    assert "MANIFEST.json" not in second["files"]
    assert second["files"] == first["files"]
    assert second["files"]["rng_state_1.pth"] == 33
    assert manifest_of(store, dest)["files"] == second["files"]
    assert second["totalBytes"] == sum(second["files"].values())


def test_final_adapter_manifest_has_no_step(store: S3Store, tmp_path: Path) -> None:
    dest = new_run().child("final")
    upload_files(store, dest, fake_checkpoint(tmp_path, 3))
    write_manifest(store, dest, None)
    manifest = manifest_of(store, dest)
    assert manifest["step"] is None and manifest["totalBytes"] == 3 + len('{"global_step": 3}')


# --- verify ------------------------------------------------------------------------------------


def test_verify_catches_a_missing_file(store: S3Store, tmp_path: Path) -> None:
    run = new_run()
    dest = upload_checkpoint(store, run, fake_checkpoint(tmp_path, 4), 4)
    delete_object(store, dest.child("trainer_state.json"))
    size = len('{"global_step": 4}')
    assert verify(store, dest) == f"trainer_state.json: expected {size} bytes, found None"


def test_verify_ignores_files_the_manifest_does_not_list(store: S3Store, tmp_path: Path) -> None:
    dest = upload_checkpoint(store, new_run(), fake_checkpoint(tmp_path, 4), 4)
    store.put_bytes(dest.child("stray.tmp"), b"?")
    assert verify(store, dest) is None


@pytest.mark.parametrize(
    "manifest",
    [None, ["adapter_model.safetensors"], {"step": 4}, {"files": ["adapter_model.safetensors"]}],
    ids=["missing", "a-list", "no-files", "files-not-a-mapping"],
)
def test_verify_rejects_a_missing_or_malformed_manifest(
    store: S3Store, tmp_path: Path, manifest: Any
) -> None:
    dest = new_run().child("checkpoint-4")
    upload_files(store, dest, fake_checkpoint(tmp_path, 4))
    if manifest is not None:
        store.put_json(dest.child("MANIFEST.json"), manifest)
    assert verify(store, dest) == "manifest missing or malformed"


def test_latest_skips_a_corrupt_checkpoint_and_says_why(
    store: S3Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = new_run()
    for step in (3, 5):
        upload_checkpoint(store, run, fake_checkpoint(tmp_path, step), step)
    delete_object(store, run.child("checkpoint-5", "adapter_model.safetensors"))
    assert latest_checkpoint(store, run) == 3
    out = capsys.readouterr().out
    assert (
        "[lora-trainer] skipping checkpoint-5: adapter_model.safetensors: expected 5 bytes, "
        "found None\n"
    ) in out


def test_latest_is_none_when_every_checkpoint_is_corrupt(store: S3Store, tmp_path: Path) -> None:
    run = new_run()
    dest = upload_checkpoint(store, run, fake_checkpoint(tmp_path, 2), 2)
    store.put_bytes(dest.child("adapter_model.safetensors"), b"")
    upload_incomplete(store, run, 9)
    assert latest_checkpoint(store, run) is None


# --- prune -------------------------------------------------------------------------------------


def steps_in_s3(store: S3Store, run: S3Location) -> list[str]:
    return store.list(run)


def test_prune_keeps_exactly_the_newest_k_complete(store: S3Store, tmp_path: Path) -> None:
    run = new_run()
    for step in (2, 4, 6, 8):
        upload_checkpoint(store, run, fake_checkpoint(tmp_path, step), step)
    upload_incomplete(store, run, 7)  # older than the newest complete one: a dead pod's leftover
    upload_incomplete(store, run, 10)  # newer: may be uploading right now
    store.put_json(run.child("progress.json"), {"state": "running"})
    store.put_bytes(run.child("final", "adapter_model.safetensors"), b"f")

    assert prune(store, run, keep=2) == [2, 4, 7]
    assert store.complete_checkpoints(run) == [6, 8]
    assert steps_in_s3(store, run) == [
        "checkpoint-10/",
        "checkpoint-6/",
        "checkpoint-8/",
        "final/",
        "progress.json",
    ]
    assert store.list(run.child("checkpoint-10")) == ["adapter_model.safetensors"]
    assert verify(store, run.child("checkpoint-6")) is None
    assert verify(store, run.child("checkpoint-8")) is None


def test_prune_deletes_the_manifest_before_the_files(
    store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module's promise: a half-deleted checkpoint is never mistaken for a complete one
    (found by this test: the manifest used to go in the same batch as the files)."""
    run = new_run()
    for step in (1, 2):
        upload_checkpoint(store, run, fake_checkpoint(tmp_path, step), step)
    folder = run.child("checkpoint-1")
    after_each_delete: list[tuple[bool, list[str]]] = []  # (manifest still there, files left)

    def recording(real: Any) -> Any:
        def call(loc: S3Location) -> Any:
            result = real(loc)
            files = sorted(store.list_sizes(folder))
            after_each_delete.append(("MANIFEST.json" in files, files))
            return result

        return call

    monkeypatch.setattr(store, "delete_prefix", recording(store.delete_prefix))
    monkeypatch.setattr(store, "delete", recording(store.delete))
    assert prune(store, run, keep=1) == [1]
    # First the manifest alone goes (the checkpoint is now incomplete), then the files.
    assert after_each_delete[0] == (False, ["adapter_model.safetensors", "trainer_state.json"])
    assert after_each_delete[-1] == (False, [])


def test_prune_keep_1_and_nothing_more_to_delete(store: S3Store, tmp_path: Path) -> None:
    run = new_run()
    for step in (1, 3):
        upload_checkpoint(store, run, fake_checkpoint(tmp_path, step), step)
    upload_incomplete(store, run, 2)
    assert prune(store, run, keep=1) == [1, 2]
    assert store.complete_checkpoints(run) == [3]
    assert prune(store, run, keep=1) == []
    assert steps_in_s3(store, run) == ["checkpoint-3/"]


def test_prune_keeps_everything_while_fewer_than_k(store: S3Store, tmp_path: Path) -> None:
    run = new_run()
    for step in (5, 10):
        upload_checkpoint(store, run, fake_checkpoint(tmp_path, step), step)
    assert prune(store, run, keep=3) == []
    assert store.complete_checkpoints(run) == [5, 10]


def test_prune_without_a_complete_checkpoint_deletes_nothing(
    store: S3Store, tmp_path: Path
) -> None:
    """Before the first manifest every checkpoint may still be uploading."""
    run = new_run()
    for step in (4, 8):
        upload_incomplete(store, run, step)
    assert prune(store, run, keep=1) == []
    assert steps_in_s3(store, run) == ["checkpoint-4/", "checkpoint-8/"]


# --- download ----------------------------------------------------------------------------------


def test_download_replaces_a_stale_local_copy(store: S3Store, tmp_path: Path) -> None:
    run = new_run()
    upload_checkpoint(store, run, fake_checkpoint(tmp_path / "src", 6), 6)
    stale = tmp_path / "resume" / "checkpoint-6"
    stale.mkdir(parents=True)
    (stale / "adapter_model.safetensors").write_bytes(b"old")
    (stale / "optimizer.pt").write_bytes(b"from an earlier attempt")
    (stale / "MANIFEST.json").write_text("{}")

    local = download_checkpoint(store, run, 6, tmp_path / "resume")
    assert local == stale
    assert sorted(p.name for p in local.iterdir()) == [
        "adapter_model.safetensors",
        "trainer_state.json",
    ]
    assert (local / "adapter_model.safetensors").read_bytes() == b"w" * 6


def test_download_of_a_checkpoint_without_manifest(store: S3Store, tmp_path: Path) -> None:
    """The manifest is S3's commit marker, not part of the checkpoint: a folder without one
    (a race with pruning, a hand-made copy) downloads all the same."""
    run = new_run()
    upload_files(store, run.child("checkpoint-5"), fake_checkpoint(tmp_path / "src", 5))
    local = download_checkpoint(store, run, 5, tmp_path / "resume")
    assert local == tmp_path / "resume" / "checkpoint-5"
    assert sorted(p.name for p in local.iterdir()) == [
        "adapter_model.safetensors",
        "trainer_state.json",
    ]
