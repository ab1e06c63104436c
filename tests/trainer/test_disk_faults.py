"""A full scratch disk and an unusable work dir are bad-config errors (exit 3) that name the path
and what to change, not retries (exit 75) with `unexpected RuntimeError: [enforce fail at
inline_container.cc:672] . unexpected pos 64 vs 0` or `unexpected FileNotFoundError`.

No tiny tmpfs can be mounted here, so the full disk is the kernel's own: the file the trainer
writes is a symlink to /dev/full, where every write fails with ENOSPC (torch.save's C++ writer
then says "unexpected pos", exactly as on a full emptyDir). The trainer runs through `main()`
against the real moto S3; the unusable work dirs are real paths."""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from lora_contract.layout import S3Location
from lora_contract.pod import ENV_EPHEMERAL_STORAGE, EXIT_INVALID_CONFIG
from lora_contract.storage import S3Store
from lora_contract.types import Progress
from lora_trainer.errors import local_disk_fault

from .conftest import BUCKET

DEV_FULL = Path("/dev/full")
pytestmark = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux)")
ADVICE = (
    "Raise spec.resources.requests.ephemeralStorage (and limits.ephemeralStorage): a retry on "
    "the same request fills the disk again"
)


def full_disk_at(path: Path) -> None:
    """Make `path` a file on a full disk: writing it fails with the kernel's ENOSPC."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(DEV_FULL)


def recorded_error(store: S3Store, run: Any) -> str | None:
    progress = Progress.model_validate(store.get_json(run.location.child("progress.json")))
    assert progress.state == "failed"
    return progress.last_error


def test_a_full_disk_while_fetching_the_dataset_is_exit_3(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch, datasets: dict[str, Path]
) -> None:
    key = f"disk/{uuid.uuid4().hex[:8]}/train.jsonl"
    store.upload_file(S3Location(BUCKET, key), datasets["prompt-completion"])
    run = make_run(spec={"dataset": {"source": f"s3://{BUCKET}/{key}"}})
    scratch = run.work_dir / run.config.job_name / "r1"
    full_disk_at(scratch / "data" / BUCKET / f"{key}.partial")  # sources.fetch_s3_object
    monkeypatch.setenv(ENV_EPHEMERAL_STORAGE, "20Gi")
    code, termination = run.run_here(monkeypatch)
    expected = (
        f"disk full: no space left in the work dir (LORAJOB_WORK_DIR={run.work_dir}); the pod's "
        f"ephemeral-storage request is 20Gi (LORAJOB_EPHEMERAL_STORAGE_REQUEST). {ADVICE}"
    )
    assert (code, termination) == (EXIT_INVALID_CONFIG, expected)
    assert recorded_error(store, run) == expected


def test_a_full_disk_while_downloading_the_model_is_not_retried(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch, model_dir: Path
) -> None:
    """Through the minio client's own file (S3Store used to call a local ENOSPC a transient S3
    error and retry it four times, then exit 75)."""
    prefix = f"disk/{uuid.uuid4().hex[:8]}/model"
    body = (model_dir / "config.json").read_bytes()
    store.put_bytes(S3Location(BUCKET, f"{prefix}/config.json"), body)
    run = make_run(spec={"baseModel": {"source": f"s3://{BUCKET}/{prefix}"}})
    target = run.work_dir / run.config.job_name / "r1" / "base-model" / "config.json"
    etag = hashlib.md5(body).hexdigest()  # moto's ETag of a single-part upload
    full_disk_at(target.with_name(f"config.json.{etag}.part.minio"))
    monkeypatch.delenv(ENV_EPHEMERAL_STORAGE, raising=False)
    code, termination = run.run_here(monkeypatch)
    expected = (
        f"disk full: no space left in the work dir (LORAJOB_WORK_DIR={run.work_dir}); no "
        "ephemeral-storage request is known (LORAJOB_EPHEMERAL_STORAGE_REQUEST is not set). "
        f"{ADVICE}"
    )
    assert (code, termination) == (EXIT_INVALID_CONFIG, expected)
    assert recorded_error(store, run) == expected
    assert not target.exists()


def test_torch_save_on_a_full_disk_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's error, produced by the real torch.save (a checkpoint's optimizer.pt)."""
    import torch

    monkeypatch.setenv("LORAJOB_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv(ENV_EPHEMERAL_STORAGE, "8Gi")
    path = tmp_path / "work" / "job" / "r1" / "output" / "checkpoint-8" / "optimizer.pt"
    full_disk_at(path)
    with pytest.raises(RuntimeError, match="unexpected pos") as info:
        torch.save({"exp_avg": torch.zeros(1000)}, str(path))
    fault = local_disk_fault(info.value)
    assert fault is not None and fault.exit_code == EXIT_INVALID_CONFIG
    assert fault.message == (
        f"disk full: no space left in the work dir (LORAJOB_WORK_DIR={tmp_path / 'work'}); the "
        f"pod's ephemeral-storage request is 8Gi (LORAJOB_EPHEMERAL_STORAGE_REQUEST). {ADVICE}"
    )


def test_an_enospc_that_names_its_file_says_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAJOB_WORK_DIR", str(tmp_path))
    monkeypatch.setenv(ENV_EPHEMERAL_STORAGE, "1Gi")
    cause = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a.bin"))
    try:
        raise RuntimeError("saving failed") from cause
    except RuntimeError as wrapped:
        fault = local_disk_fault(wrapped)
    assert fault is not None
    assert fault.message.startswith(
        f"disk full: no space left writing {tmp_path / 'a.bin'} (LORAJOB_WORK_DIR={tmp_path}); "
    )
    assert local_disk_fault(RuntimeError("inline_container.cc: something else")) is None
    assert local_disk_fault(OSError(errno.EIO, "I/O error", str(tmp_path))) is None


@pytest.mark.parametrize("kind", ["missing", "under-a-file"])
def test_an_unusable_work_dir_names_the_path_and_the_variable(
    make_run: Any,
    store: S3Store,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    kind: str,
) -> None:
    """`missing`: a folder that cannot be created (/proc refuses new entries: the review's
    FileNotFoundError); `under-a-file`: LORAJOB_WORK_DIR below a regular file."""
    run = make_run()
    if kind == "missing":
        root = Path(f"/proc/lorajob-{uuid.uuid4().hex[:8]}")
        failing, reason = root, "No such file or directory"
    else:
        (tmp_path / "a-file").write_text("x")
        root = tmp_path / "a-file" / "work"
        # mkdir(parents=True) names the deepest folder it was asked for
        failing, reason = root / run.config.job_name / "r1", "Not a directory"
    monkeypatch.setitem(run.env, "LORAJOB_WORK_DIR", str(root))
    code, termination = run.run_here(monkeypatch)
    expected = (
        f"work dir not writable: {reason}: {failing} (set by LORAJOB_WORK_DIR={root}); point "
        "LORAJOB_WORK_DIR at a writable folder (in a pod: the /tmp emptyDir)"
    )
    assert (code, termination) == (EXIT_INVALID_CONFIG, expected)
    assert recorded_error(store, run) == expected


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_a_read_only_work_dir_names_the_path(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "ro"
    root.mkdir(mode=0o500)
    run = make_run()
    monkeypatch.setitem(run.env, "LORAJOB_WORK_DIR", str(root))
    code, termination = run.run_here(monkeypatch)
    assert code == EXIT_INVALID_CONFIG
    assert termination.startswith(f"work dir not writable: Permission denied: {root}/")
    assert f"(set by LORAJOB_WORK_DIR={root})" in termination


def test_a_file_gone_from_a_usable_work_dir_is_not_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The work dir is fine: a missing file in it is something else (left transient)."""
    monkeypatch.setenv("LORAJOB_WORK_DIR", str(tmp_path))
    gone = OSError(errno.ENOENT, "No such file or directory", str(tmp_path / "x" / "f"))
    assert local_disk_fault(gone) is None
    refused = OSError(errno.EACCES, "Permission denied", str(tmp_path / "x" / "f"))
    fault = local_disk_fault(refused)
    assert fault is not None and fault.message.startswith(
        f"work dir not writable: Permission denied: {tmp_path / 'x' / 'f'} "
    )
    elsewhere = OSError(errno.EACCES, "Permission denied", "/etc/shadow")
    assert local_disk_fault(elsewhere) is None


def test_the_default_work_root_is_the_one_the_trainer_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tempfile

    from lora_trainer.errors import work_root

    monkeypatch.delenv("LORAJOB_WORK_DIR", raising=False)
    assert work_root() == Path(tempfile.gettempdir()) / "lorajob"  # config.work_dir's default
    monkeypatch.setenv("LORAJOB_WORK_DIR", "/scratch/w")
    assert work_root() == Path("/scratch/w")


def test_safetensors_words_a_full_disk_its_own_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors (the adapter) raises with the OS text, no errno: still a full disk."""
    monkeypatch.setenv("LORAJOB_WORK_DIR", "/w")
    monkeypatch.delenv(ENV_EPHEMERAL_STORAGE, raising=False)
    fault = local_disk_fault(RuntimeError("IoError: No space left on device (os error 28)"))
    assert fault is not None and fault.message.startswith(
        "disk full: no space left in the work dir (LORAJOB_WORK_DIR=/w); no ephemeral-storage"
    )


def test_the_unwritable_cause_is_found_behind_other_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAJOB_WORK_DIR", str(tmp_path))
    inside = OSError(errno.EACCES, "Permission denied", str(tmp_path / "f"))
    outside = OSError(errno.EACCES, "Permission denied", "/etc/x")
    for top in (RuntimeError("while saving"), outside):
        try:
            raise top from inside
        except (RuntimeError, OSError) as wrapped:
            fault = local_disk_fault(wrapped)
        assert fault is not None, top
        assert fault.message.startswith(f"work dir not writable: Permission denied: {tmp_path}/f ")
    bare = PermissionError()  # no strerror: the type names the reason
    bare.errno, bare.filename = errno.EACCES, str(tmp_path / "g")
    fault = local_disk_fault(bare)
    assert fault is not None
    assert fault.message.startswith(f"work dir not writable: PermissionError: {tmp_path}/g ")


def test_a_work_root_that_is_a_file_or_read_only_is_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOENT/ENOTDIR count only while the root is not a writable folder: an executable file
    (accessible, not a folder) and /proc/1 (a folder, not writable) both are not."""
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("LORAJOB_WORK_DIR", str(script))
    below = OSError(errno.ENOTDIR, "Not a directory", str(script / "job"))
    assert local_disk_fault(below) is not None
    proc = Path("/proc/1")
    if proc.is_dir() and not os.access(proc, os.W_OK):
        monkeypatch.setenv("LORAJOB_WORK_DIR", str(proc))
        missing = OSError(errno.ENOENT, "No such file or directory", str(proc / "job"))
        assert local_disk_fault(missing) is not None
