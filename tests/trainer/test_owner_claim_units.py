"""The owner claim's races and read-back (lora_trainer.ownership, S3Store.claim_job,
lora_contract.layout's marker), against the real S3 server (moto, minio client).

Each race is produced for real: a rival's marker is written into S3 in the window between our
read (nobody owns the folder) and our create (If-None-Match: *), or our marker is deleted
between our create and our read-back. The store below only opens that window; every read and
write goes to the server.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from lora_contract import pod
from lora_contract.layout import JobOwner, S3Location, owner_marker
from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_TRANSIENT
from lora_contract.storage import S3Store, StorageError
from lora_trainer.errors import InvalidConfigError, TransientError
from lora_trainer.ownership import (
    ForeignOutputError,
    claim_output,
    may_record_failure,
    owner_from_env,
    uid_from_env,
)

from .conftest import BUCKET

OURS = JobOwner(namespace="team-a", name="tune", uid="uid-ours")
RIVAL = JobOwner(namespace="team-a", name="tune", uid="uid-rival")


def fresh_run() -> S3Location:
    return S3Location(BUCKET, f"claims/{uuid.uuid4().hex[:8]}/team-a/tune/r1")


class WindowStore(S3Store):
    """The same server and client; `between` runs inside create_json_if_absent, before or
    after the real conditional write (where a concurrent writer or deleter would act)."""

    def __init__(self, store: S3Store, before: Any = None, after: Any = None) -> None:
        self.__dict__.update(store.__dict__)
        self.before, self.after = before, after
        self.created: list[bool] = []

    def create_json_if_absent(self, loc: S3Location, obj: Any) -> bool:
        if self.before:
            self.before(loc)
        created = super().create_json_if_absent(loc, obj)
        self.created.append(created)
        if self.after:
            self.after(loc)
        return created


def test_the_marker_sits_in_the_job_folder_beside_the_runs() -> None:
    run = S3Location("b", "lorajobs/team-a/tune/r3")
    assert owner_marker(run) == S3Location("b", "lorajobs/team-a/tune/OWNER.json")
    assert OURS.describe() == "LoRAJob team-a/tune (uid uid-ours)"
    with pytest.raises(ValueError):
        OURS.uid = "other"  # type: ignore[misc]  # frozen: a marker's owner never changes


def test_the_first_claim_writes_the_marker(store: S3Store) -> None:
    run = fresh_run()
    window = WindowStore(store)
    claim_output(window, run, OURS)
    assert window.created == [True]
    assert store.get_json(owner_marker(run)) == {
        "namespace": "team-a",
        "name": "tune",
        "uid": "uid-ours",
    }


def test_the_same_uid_passes_without_writing(store: S3Store) -> None:
    run = fresh_run()
    claim_output(store, run, OURS)
    before = store.client.stat_object(BUCKET, owner_marker(run).key).etag
    window = WindowStore(store)
    claim_output(window, run.parent.child("r2"), OURS)
    assert window.created == []  # read, found ours, no write attempted
    assert store.client.stat_object(BUCKET, owner_marker(run).key).etag == before


def test_a_lost_race_reads_back_the_winner_and_is_refused(store: S3Store) -> None:
    run = fresh_run()

    def rival_writes_first(loc: S3Location) -> None:
        store.put_json(loc, RIVAL.model_dump())

    window = WindowStore(store, before=rival_writes_first)
    with pytest.raises(ForeignOutputError) as info:
        claim_output(window, run, OURS)
    assert window.created == [False]  # our If-None-Match write lost
    assert info.value.exit_code == EXIT_INVALID_CONFIG
    assert info.value.message == (
        f"output {run.parent.uri} belongs to LoRAJob team-a/tune (uid uid-rival), "
        "not to LoRAJob team-a/tune (uid uid-ours); refusing to write there or resume from it: "
        "delete that folder, or set another spec.output.prefix or LoRAJob name"
    )
    assert store.job_owner(run) == RIVAL


def test_a_race_lost_to_our_own_uid_passes(store: S3Store) -> None:
    """Another pod of the same LoRAJob wrote first: the read-back names us."""
    run = fresh_run()
    window = WindowStore(store, before=lambda loc: store.put_json(loc, OURS.model_dump()))
    claim_output(window, run, OURS)
    assert window.created == [False]
    assert store.job_owner(run) == OURS


def test_a_marker_gone_before_the_read_back_is_a_transient_error(store: S3Store) -> None:
    run = fresh_run()
    window = WindowStore(store, after=store.delete)
    with pytest.raises(StorageError, match="vanished after it was written") as raw:
        window.claim_job(run, OURS)
    assert raw.value.transient
    assert str(raw.value) == f"{owner_marker(run).uri} vanished after it was written"
    with pytest.raises(TransientError) as info:
        claim_output(WindowStore(store, after=store.delete), run, OURS)
    assert info.value.exit_code == EXIT_TRANSIENT
    assert info.value.message == (
        f"output folder owner (OWNER.json): {owner_marker(run).uri} vanished after it was written"
    )


def test_a_malformed_marker_is_permanent_not_foreign(store: S3Store) -> None:
    run = fresh_run()
    store.put_json(owner_marker(run), {"namespace": "team-a", "name": "tune"})  # no uid
    with pytest.raises(InvalidConfigError) as info:
        claim_output(store, run, OURS)
    assert not isinstance(info.value, ForeignOutputError)
    assert info.value.message.startswith("output folder owner (OWNER.json): ")
    assert "is not an owner marker (expected namespace, name and uid)" in info.value.message
    with pytest.raises(InvalidConfigError):
        claim_output(store, run, None)  # read only, the same verdict


def test_uid_and_owner_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    class Config:
        namespace = "team-a"
        job_name = "tune"

    config: Any = Config()
    monkeypatch.delenv(pod.ENV_JOB_UID, raising=False)
    assert uid_from_env() is None and owner_from_env(config) is None
    monkeypatch.setenv(pod.ENV_JOB_UID, "")
    assert uid_from_env() is None and owner_from_env(config) is None
    monkeypatch.setenv(pod.ENV_JOB_UID, "uid-ours")
    assert uid_from_env() == "uid-ours"
    assert owner_from_env(config) == OURS


def test_a_failure_is_recorded_only_in_an_unclaimed_or_own_folder(
    store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(pod.ENV_JOB_UID, "uid-ours")
    unclaimed = fresh_run()
    assert may_record_failure(store, unclaimed)
    own = fresh_run()
    claim_output(store, own, OURS)
    assert may_record_failure(store, own)
    foreign = fresh_run()
    claim_output(store, foreign, RIVAL)
    assert not may_record_failure(store, foreign)
    malformed = fresh_run()
    store.put_json(owner_marker(malformed), ["not", "a", "marker"])
    assert not may_record_failure(store, malformed)  # cannot tell: not there
    monkeypatch.delenv(pod.ENV_JOB_UID)
    assert not may_record_failure(store, own)  # a trainer without a uid owns nothing
    assert may_record_failure(store, unclaimed)
