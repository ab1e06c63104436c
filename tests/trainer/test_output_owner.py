"""The job folder's owner marker (OWNER.json) against the real S3 server (moto, minio client).

The reported attack: two LoRAJobs named alike shared one run folder, so one's progress showed in
the other's status and a trainer would have resumed from the other's checkpoint. The namespace in
the path separates namespaces; the marker catches what a path cannot tell apart (a LoRAJob
deleted and recreated under its old name gets a new uid, and starts at r1 again). Here: an
unclaimed folder is claimed, the owner's own trainer passes, any other is refused with exit 3
and a message naming the folder and its owner, and refused trainers leave the folder untouched.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from lora_contract import pod
from lora_contract.layout import PROGRESS_FILE, JobOwner, S3Location, owner_marker
from lora_contract.pod import EXIT_INVALID_CONFIG
from lora_contract.storage import S3Store
from lora_trainer.errors import InvalidConfigError
from lora_trainer.ownership import ForeignOutputError, claim_output

from .conftest import BUCKET

OLD = JobOwner(namespace="team-a", name="shared-name", uid="uid-old")
NEW = JobOwner(namespace="team-a", name="shared-name", uid="uid-new")


def fresh_run() -> S3Location:
    return S3Location(BUCKET, f"owners/{uuid.uuid4().hex[:8]}/team-a/shared-name/r1")


def test_an_unclaimed_folder_is_claimed_for_the_job(store: S3Store) -> None:
    run = fresh_run()
    claim_output(store, run, NEW)
    assert store.get_json(owner_marker(run)) == NEW.model_dump()
    # The job's later runs (a spec change: r2) share the marker and pass.
    claim_output(store, run.parent.child("r2"), NEW)


def test_the_owner_passes_and_the_marker_is_never_rewritten(store: S3Store) -> None:
    run = fresh_run()
    claim_output(store, run, NEW)
    renamed = JobOwner(namespace="team-a", name="renamed", uid=NEW.uid)
    claim_output(store, run, renamed)  # the uid decides; the marker keeps its first content
    assert store.job_owner(run) == NEW


def test_another_uid_is_refused_with_exit_3_naming_folder_and_owner(store: S3Store) -> None:
    run = fresh_run()
    claim_output(store, run, OLD)
    with pytest.raises(ForeignOutputError) as info:
        claim_output(store, run, NEW)
    assert info.value.exit_code == EXIT_INVALID_CONFIG
    message = info.value.message
    assert "\n" not in message
    assert message.startswith(f"output {run.parent.uri} belongs to LoRAJob team-a/shared-name")
    assert "uid-old" in message and "uid-new" in message and "spec.output.prefix" in message
    assert store.job_owner(run) == OLD


def test_a_trainer_without_a_uid_uses_only_unclaimed_folders(store: S3Store) -> None:
    """By hand (no operator, no LORAJOB_UID): nothing is claimed, a claimed folder is refused."""
    run = fresh_run()
    claim_output(store, run, None)
    assert store.job_owner(run) is None
    claim_output(store, run, OLD)
    with pytest.raises(ForeignOutputError, match=f"without {pod.ENV_JOB_UID}"):
        claim_output(store, run, None)


def test_a_malformed_marker_is_a_bad_config(store: S3Store) -> None:
    run = fresh_run()
    store.put_json(owner_marker(run), {"uid": 5})
    with pytest.raises(InvalidConfigError, match=r"OWNER\.json .*is not an owner marker"):
        claim_output(store, run, NEW)


def test_the_marker_is_created_only_where_none_exists(store: S3Store) -> None:
    """If-None-Match: * reaches the server through the minio client (moto honours it): the
    second writer gets False and the first one's content stays."""
    marker = owner_marker(fresh_run())
    assert store.create_json_if_absent(marker, OLD.model_dump())
    assert not store.create_json_if_absent(marker, NEW.model_dump())
    assert store.get_json(marker) == OLD.model_dump()


def test_the_trainer_refuses_a_recreated_jobs_old_folder(
    make_run: Any, store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the entry point: the old object's run r1 has progress and a checkpoint; the
    recreated job (new uid, same name) exits 3 before writing anything or resuming, and says
    why in its termination message; the old folder is exactly as it was."""
    run = make_run()
    location: S3Location = run.location
    old = JobOwner(namespace=run.config.namespace, name=run.config.job_name, uid="uid-old")
    store.create_json_if_absent(owner_marker(location), old.model_dump())
    store.put_json(location.child(PROGRESS_FILE), {"state": "succeeded", "step": 8})
    store.put_json(location.child("checkpoint-8", "MANIFEST.json"), {"step": 8, "files": {}})
    before = {
        name: store.get_bytes(location.parent.child(name))
        for name in store.list(location.parent, recursive=True)
    }
    monkeypatch.setenv(pod.ENV_JOB_UID, "uid-new")
    code, termination = run.run_here(monkeypatch)
    assert code == EXIT_INVALID_CONFIG
    assert termination.startswith(f"output {location.parent.uri} belongs to {old.describe()}")
    after = {
        name: store.get_bytes(location.parent.child(name))
        for name in store.list(location.parent, recursive=True)
    }
    assert after == before  # no progress.json "failed", no marker rewrite, nothing new
