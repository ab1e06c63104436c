"""Read a run's progress.json from S3 and turn it into status fields (`kubectl get lj` columns).

The operator reads the same Secret the trainer pods get (spec.output.credentialsSecret or the
operator's default), through the reconcile's SecretReader: one read per resync.
`LORAJOB_OPERATOR_S3_ENDPOINT` overrides the endpoint for an operator that runs outside the
cluster (the in-cluster MinIO name does not resolve there).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lora_contract.layout import PROGRESS_FILE, S3Location, owner_marker
from lora_contract.storage import S3Store, StorageError, env_credentials
from lora_contract.types import LoRAJobSpec, LoRAJobStatus, Progress

from ..api.operator_config import OperatorConfig
from .s3_target import s3_target
from .secret_reads import SecretReader

log = logging.getLogger("lora_operator.progress")
ENDPOINT_OVERRIDE_ENV = "LORAJOB_OPERATOR_S3_ENDPOINT"


@dataclass(frozen=True)
class S3Credentials:
    endpoint: str
    access_key: str
    secret_key: str
    region: str | None = None


class CredentialsError(ValueError):
    """No usable S3 endpoint or credentials; the message says which field or Secret to fix."""


def _decode(secret: dict[str, Any], key: str) -> str | None:
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    value = (secret.get("data") or {}).get(key)
    return base64.b64decode(value).decode() if value else None


async def resolve_credentials(
    read_secret: SecretReader, namespace: str, spec: LoRAJobSpec, config: OperatorConfig
) -> S3Credentials:
    """Endpoint, region and keys for reading the job's outputs; `read_secret` reads in
    `namespace` (the job's), which the messages name."""
    target = s3_target(spec, config)
    endpoint = os.environ.get(ENDPOINT_OVERRIDE_ENV) or target.endpoint
    if not endpoint:
        raise CredentialsError(
            "no S3 endpoint: set spec.output.endpoint or s3.endpoint in the operator config"
        )
    region, ref = target.region, target.secret
    if ref is None:
        from_env = env_credentials()
        if from_env is not None:
            return S3Credentials(endpoint, *from_env, region)
        raise CredentialsError(
            "no S3 credentials: set spec.output.credentialsSecret or "
            "s3.credentialsSecret in the operator config"
        )
    secret = await read_secret(ref.name)
    if secret is None:
        raise CredentialsError(
            f"Secret {namespace}/{ref.name} (spec.output.credentialsSecret) does not exist"
        )
    access = _decode(secret, ref.access_key_key)
    secret_key = _decode(secret, ref.secret_key_key)
    if not access or not secret_key:
        raise CredentialsError(
            f"Secret {namespace}/{ref.name} lacks key {ref.access_key_key!r} or "
            f"{ref.secret_key_key!r}"
        )
    return S3Credentials(endpoint, access, secret_key, region)


_STORES: dict[S3Credentials, S3Store] = {}


def store_for(creds: S3Credentials) -> S3Store:
    """One client per endpoint+credentials (connection pools are reused across jobs)."""
    if creds not in _STORES:
        _STORES[creds] = S3Store(
            creds.endpoint, creds.access_key, creds.secret_key, creds.region, retries=1
        )
    return _STORES[creds]


# (endpoint, marker URI, uid) seen to match: a marker is written once and never changes, so a
# job's own folder costs one extra read, not one per resync.
_OWNED: set[tuple[str, str, str]] = set()
# The same, seen NOT to match: warned about once per operator process, not on every resync.
_WARNED_FOREIGN: set[tuple[str, str]] = set()


def _foreign_owner(store: S3Store, run: S3Location, uid: str) -> str | None:
    """Who owns `run`'s job folder when it is not the LoRAJob `uid`; None when it is, or when
    nobody has claimed it yet (the trainer claims it before its first write)."""
    key = (store.endpoint, owner_marker(run).uri, uid)
    if key in _OWNED:
        return None
    owner = store.job_owner(run)
    if owner is None:
        return None
    if owner.uid != uid:
        return owner.describe()
    _OWNED.add(key)
    return None


async def read_progress(store: S3Store, output_uri: str, uid: str) -> Progress | None:
    """The progress.json of the run recorded at `output_uri` (RunRecord.output_uri, fixed when
    the run started), if the LoRAJob `uid` owns that folder. None when the trainer has not
    written progress yet (or S3 is briefly unreachable)."""
    try:
        run = S3Location.parse(output_uri)
    except ValueError as exc:
        log.warning("run outputURI is not readable: %s", exc)
        return None
    loc = run.child(PROGRESS_FILE)
    try:
        foreign = await asyncio.to_thread(_foreign_owner, store, run, uid)
        if foreign is not None:
            if (loc.uri, uid) not in _WARNED_FOREIGN:
                _WARNED_FOREIGN.add((loc.uri, uid))
                log.warning("ignoring %s: its folder belongs to %s", loc.uri, foreign)
            return None
        raw = await asyncio.to_thread(store.get_json, loc)
    except StorageError as exc:
        log.warning("cannot read %s: %s", loc.uri, exc)
        return None
    if raw is None:
        return None
    try:
        return Progress.model_validate(raw)
    except ValidationError as exc:
        log.warning("ignoring malformed %s: %s", loc.uri, exc.errors(include_url=False)[:1])
        return None


def summary(progress: Progress) -> str:
    """'120/400 (30%)' for the Progress column; ', resumed from step 100' after a restart."""
    if not progress.total_steps:
        text = f"{progress.step}/?"
    else:
        text = f"{progress.step}/{progress.total_steps} ({progress.percent:.0f}%)"
    if progress.resumed_from is not None and progress.state in ("starting", "running"):
        text += f", resumed from step {progress.resumed_from}"
    return text


def never_backwards(previous: Progress | None, progress: Progress) -> Progress:
    """`progress` with the run's furthest step and known total kept: a restarted pod writes
    "starting" (step 0, no total) and then the checkpoint's step, which may be behind what the
    status showed. Same run only: a new run clears status.progress (reconcile.start_run)."""
    if previous is None:
        return progress
    kept: dict[str, object] = {}
    if previous.step > progress.step:
        kept["step"] = previous.step
    if not progress.total_steps and previous.total_steps:
        kept["total_steps"] = previous.total_steps
    if progress.latest_checkpoint is None and previous.latest_checkpoint is not None:
        kept["latest_checkpoint"] = previous.latest_checkpoint
    if progress.best_step is None and previous.best_step is not None:
        kept.update(best_step=previous.best_step, best_eval_loss=previous.best_eval_loss)
    return progress.model_copy(update=kept) if kept else progress


def early_stop_note(progress: Progress | None) -> str | None:
    """'stopped early at step 36; best step 28 (eval loss 5.6168)' for a run that stopped on
    eval loss, else None."""
    if progress is None or not progress.stopped_early:
        return None
    note = f"stopped early at step {progress.step}"
    if progress.best_step is not None and progress.best_eval_loss is not None:
        note += f"; best step {progress.best_step} (eval loss {progress.best_eval_loss:.4f})"
    return note


def record_progress(status: LoRAJobStatus, progress: Progress) -> None:
    """Copy progress.json into the status (losses to 4 decimals: `kubectl get` prints the Loss
    column verbatim), never moving the step backwards within the run."""
    progress = never_backwards(status.progress, progress)
    rounded = {
        key: round(value, 4)
        for key, value in (
            ("loss", progress.loss),
            ("eval_loss", progress.eval_loss),
            ("best_eval_loss", progress.best_eval_loss),
        )
        if value is not None
    }
    status.progress = progress.model_copy(update=rounded)
    status.progress_summary = summary(status.progress)
    if status.progress.latest_checkpoint:
        status.latest_checkpoint = status.progress.latest_checkpoint
