"""Claim the LoRAJob's output folder before writing to it, and refuse one another LoRAJob owns.

The job folder's OWNER.json (`lora_contract.layout`) names the LoRAJob (namespace, name, uid)
that first wrote there. A different uid means another object: the same name deleted and
recreated (its r1 is the old job's r1), or a job whose output reaches into someone else's
folder. Resuming from or overwriting that data would mix two jobs, so the trainer stops with a
bad-config exit (the Job fails without retries) and writes nothing there, not even its error.
"""

from __future__ import annotations

import os

from lora_contract import pod
from lora_contract.layout import JobOwner, S3Location
from lora_contract.storage import S3Store, StorageError
from lora_contract.types import TrainerConfig

from .errors import InvalidConfigError
from .sources import storage_error


class ForeignOutputError(InvalidConfigError):
    """The output folder belongs to another LoRAJob."""


def uid_from_env() -> str | None:
    """This pod's LoRAJob uid (env LORAJOB_UID, set by the operator); None for a trainer started
    by hand, which may use only folders nobody has claimed."""
    return os.environ.get(pod.ENV_JOB_UID) or None


def owner_from_env(config: TrainerConfig) -> JobOwner | None:
    uid = uid_from_env()
    return JobOwner(namespace=config.namespace, name=config.job_name, uid=uid) if uid else None


def claim_output(store: S3Store, run: S3Location, owner: JobOwner | None) -> None:
    """Raise ForeignOutputError unless the folder holding `run` is unclaimed or `owner`'s;
    claim an unclaimed one for `owner`. Rank 0 calls this before anything is written: the other
    ranks write only checkpoint files, after collectives rank 0 never reaches when it refuses."""
    try:
        current = store.claim_job(run, owner) if owner is not None else store.job_owner(run)
    except StorageError as exc:
        raise storage_error(exc, "output folder owner (OWNER.json)") from None
    if current is None or (owner is not None and current.uid == owner.uid):
        return
    me = owner.describe() if owner is not None else f"a trainer without {pod.ENV_JOB_UID}"
    raise ForeignOutputError(
        f"output {run.parent.uri} belongs to {current.describe()}, not to {me}; refusing to "
        "write there or resume from it: delete that folder, or set another spec.output.prefix "
        "or LoRAJob name"
    )


def may_record_failure(store: S3Store, run: S3Location) -> bool:
    """Whether a failure may go into `run`'s progress.json: not into another job's folder (nor
    when that cannot be told)."""
    try:
        current = store.job_owner(run)
    except StorageError:
        return False
    return current is None or current.uid == uid_from_env()
