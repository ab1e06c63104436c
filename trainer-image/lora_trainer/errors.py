"""Trainer failures carry their exit code, so the Job's podFailurePolicy can tell a bad config
(fail at once) from a transient problem (retry from the latest checkpoint)."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from lora_contract.pod import (
    ENV_EPHEMERAL_STORAGE,
    ENV_WORK_DIR,
    EXIT_INVALID_CONFIG,
    EXIT_TRANSIENT,
)


class TrainerError(Exception):
    """A failure with a clear, one-line message for the user and the pod's termination log."""

    exit_code = EXIT_TRANSIENT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidConfigError(TrainerError):
    """Bad config or bad data: retrying cannot help."""

    exit_code = EXIT_INVALID_CONFIG


class TransientError(TrainerError):
    """S3 unreachable, upload failed, ...: the pod is retried and resumes from a checkpoint."""

    exit_code = EXIT_TRANSIENT


# ------------------------------------------------------------------ local disk faults
# What a full or unwritable scratch disk looks like when it reaches main(): an OSError with
# errno ENOSPC/EDQUOT (json, shutil, safetensors' "os error 28"), or torch.save's C++ writer,
# which says only "[enforce fail at inline_container.cc:...] . unexpected pos 64 vs 0" or
# "PytorchStreamWriter failed writing file ...: file write failed".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Refused outright, or (the second set) a work dir that is missing or not a folder; the second
# set counts only while the work dir really is unusable (a file gone mid-run is not this).
REFUSED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EEXIST})
DISK_FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded")
TORCH_WRITER_TEXTS = ("unexpected pos", "file write failed")


def work_root() -> Path:
    """The scratch root the trainer writes to (`LORAJOB_WORK_DIR`, else $TMPDIR/lorajob)."""
    return Path(os.environ.get(ENV_WORK_DIR) or Path(tempfile.gettempdir()) / "lorajob")


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it (HF and torch re-raise with `from`)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc).lower()
    if any(t in text for t in DISK_FULL_TEXTS):
        return True
    return "inline_container" in text and any(t in text for t in TORCH_WRITER_TEXTS)


def _usable(root: Path) -> bool:
    return root.is_dir() and os.access(root, os.W_OK | os.X_OK)


def _within(path: Path, root: Path) -> bool:
    """`path` is the work root, below it, or one of the folders the root is created in."""
    path, root = path.absolute(), root.absolute()
    return path == root or root in path.parents or path in root.parents


def disk_full_message(path: str | os.PathLike[str] | None) -> str:
    """Names the path, the pod's ephemeral-storage request and what to change."""
    where = f"writing {os.fspath(path)}" if path else "in the work dir"
    request = os.environ.get(ENV_EPHEMERAL_STORAGE)
    given = (
        f"the pod's ephemeral-storage request is {request} ({ENV_EPHEMERAL_STORAGE})"
        if request
        else f"no ephemeral-storage request is known ({ENV_EPHEMERAL_STORAGE} is not set)"
    )
    return (
        f"disk full: no space left {where} ({ENV_WORK_DIR}={work_root()}); {given}. Raise "
        "spec.resources.requests.ephemeralStorage (and limits.ephemeralStorage): a retry on "
        "the same request fills the disk again"
    )


def local_disk_fault(exc: BaseException) -> InvalidConfigError | None:
    """A bad-config error (exit 3) for a full disk anywhere, or an unwritable or missing work
    dir (the path below `LORAJOB_WORK_DIR`); None for anything else."""
    for link in _chain(exc):
        if _is_disk_full(link):
            path = link.filename if isinstance(link, OSError) else None
            return InvalidConfigError(disk_full_message(path))
    for link in _chain(exc):
        if not isinstance(link, OSError) or link.filename is None:
            continue
        root = work_root()
        if not _within(Path(os.fsdecode(link.filename)), root):
            continue
        if link.errno in REFUSED_ERRNOS or (link.errno in MISSING_ERRNOS and not _usable(root)):
            reason = link.strerror or type(link).__name__
            return InvalidConfigError(
                f"work dir not writable: {reason}: {os.fsdecode(link.filename)} (set by "
                f"{ENV_WORK_DIR}={work_root()}); point {ENV_WORK_DIR} at a writable folder "
                "(in a pod: the /tmp emptyDir)"
            )
    return None
