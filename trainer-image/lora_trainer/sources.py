"""Turn the spec's source URIs (s3://, pvc://, file://, /path, hf://) into local paths.

S3 objects are downloaded once per node: only one process (the first to take a file lock) fetches,
the others wait and reuse the copy, so eight GPUs on a node do not download a model eight times.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

from lora_contract.layout import S3Location
from lora_contract.storage import S3Store, StorageError, unsafe_key_reason

from .config import pvc_root
from .errors import InvalidConfigError, TransientError

DONE_MARKER = ".lorajob-download-complete"


def storage_error(exc: StorageError, what: str) -> Exception:
    """Map a storage failure to the trainer's error (and so its exit code)."""
    cls = TransientError if exc.transient else InvalidConfigError
    return cls(f"{what}: {exc}")


def local_path(uri: str) -> Path | None:
    """pvc://claim/path, file:///path and /path as a local path; None for s3:// and hf://."""
    if uri.startswith("pvc://"):
        return pvc_root() / uri[len("pvc://") :].lstrip("/")
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if uri.startswith("/"):
        return Path(uri)
    return None


def fetch_s3_prefix(store: S3Store, uri: str, dest: Path, what: str) -> Path:
    """Download `uri` (a prefix) into `dest` once per node, guarded by a lock file."""
    dest.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if (dest / DONE_MARKER).exists():
            return dest
        try:
            files = store.download_prefix(S3Location.parse(uri), dest)
        except StorageError as exc:
            raise storage_error(exc, f"cannot download {what} {uri}") from None
        if not files:
            raise InvalidConfigError(f"{what} {uri}: no objects under this S3 prefix")
        (dest / DONE_MARKER).write_text("ok\n")
    return dest


def fetch_s3_object(store: S3Store, uri: str, dest: Path, what: str) -> Path:
    """Download one object once per node; a missing object is a config error. The local path
    keeps bucket and key, so two sources with the same file name never share a copy."""
    loc = S3Location.parse(uri)
    reason = unsafe_key_reason(loc.bucket) or unsafe_key_reason(loc.key)
    if reason is not None:
        raise InvalidConfigError(f"{what} {uri}: not an S3 object key ({reason})")
    target = dest / loc.bucket / loc.key
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            return target
        try:
            data = store.get_bytes(loc)
        except StorageError as exc:
            raise storage_error(exc, f"cannot download {what} {uri}") from None
        if data is None:
            raise InvalidConfigError(f"{what} {uri} does not exist")
        partial = target.with_suffix(target.suffix + ".partial")
        partial.write_bytes(data)
        partial.rename(target)
    return target


def hf_cache_path(uri: str) -> str:
    """hf://org/name -> 'org/name', loaded from HF_HOME with local_files_only (never downloaded)."""
    name = uri[len("hf://") :].strip("/")
    if not os.environ.get("HF_HOME"):
        raise InvalidConfigError(
            f"baseModel.source {uri}: hf:// models load from a mounted Hugging Face cache, "
            "but HF_HOME is not set"
        )
    return name
