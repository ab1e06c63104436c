"""Checkpoints in S3: upload atomically (MANIFEST.json last), keep the last K, find and fetch the
latest complete one on restart.

A checkpoint without its manifest is incomplete (the pod died mid-upload) and is ignored; pruning
deletes the manifest first, so a half-deleted checkpoint is never mistaken for a complete one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from lora_contract.layout import MANIFEST, S3Location, checkpoint_name, checkpoint_step
from lora_contract.storage import S3Store


def upload_files(store: S3Store, dest: S3Location, local_dir: Path) -> dict[str, int]:
    """Every file of `local_dir` under `dest` (not the manifest). Each node's first process
    uploads what its ranks wrote (DeepSpeed shards, RNG states)."""
    return store.upload_dir(dest, local_dir)


def write_manifest(store: S3Store, dest: S3Location, step: int | None) -> dict[str, Any]:
    """List what is really in S3 under `dest` and write MANIFEST.json: the commit point."""
    files = {k: v for k, v in store.list_sizes(dest).items() if k != MANIFEST}
    manifest = {
        "step": step,
        "files": files,
        "totalBytes": sum(files.values()),
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.put_json(dest.child(MANIFEST), manifest)
    return manifest


def upload_checkpoint(store: S3Store, run: S3Location, local_dir: Path, step: int) -> S3Location:
    """Single-node path: files, then manifest."""
    dest = run.child(checkpoint_name(step))
    upload_files(store, dest, local_dir)
    write_manifest(store, dest, step)
    return dest


def prune(store: S3Store, run: S3Location, keep: int, protected: Collection[int] = ()) -> list[int]:
    """Delete all but the newest `keep` complete checkpoints and the `protected` ones (the best
    evaluated step's), and incomplete checkpoints older than the newest complete one (left by
    killed pods). Returns the deleted steps."""
    complete = store.complete_checkpoints(run)
    if not complete:
        return []
    keep_steps = set(complete[-keep:]) | set(protected)
    newest = complete[-1]
    deleted = []
    for name in store.list(run):
        step = checkpoint_step(name)
        if step is None or step in keep_steps or step > newest:
            continue
        folder = run.child(name)
        store.delete(folder.child(MANIFEST))  # first: a half-deleted one is never "complete"
        store.delete_prefix(folder)
        deleted.append(step)
    return sorted(deleted)


def verify(store: S3Store, folder: S3Location) -> str | None:
    """None if every file the manifest lists is present with its size, else what is wrong."""
    manifest = store.get_json(folder.child(MANIFEST))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "manifest missing or malformed"
    present = store.list_sizes(folder)
    for name, size in manifest["files"].items():
        if present.get(name) != size:
            return f"{name}: expected {size} bytes, found {present.get(name)}"
    return None


def latest_checkpoint(store: S3Store, run: S3Location) -> int | None:
    """Newest checkpoint step whose manifest checks out (a corrupt one falls back to older)."""
    for step in reversed(store.complete_checkpoints(run)):
        problem = verify(store, run.child(checkpoint_name(step)))
        if problem is None:
            return step
        print(f"[lora-trainer] skipping {checkpoint_name(step)}: {problem}", flush=True)
    return None


def download_checkpoint(store: S3Store, run: S3Location, step: int, dest_root: Path) -> Path:
    """Fetch checkpoint-<step> into dest_root/checkpoint-<step> (replacing a stale local copy)."""
    local = dest_root / checkpoint_name(step)
    if local.exists():
        shutil.rmtree(local)
    store.download_prefix(run.child(checkpoint_name(step)), local)
    (local / MANIFEST).unlink(missing_ok=True)
    return local
