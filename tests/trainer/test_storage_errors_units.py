"""Transient or permanent: how S3Store._call classifies each failure (minio's and urllib3's own
exception types, constructed as the client raises them), how often it tries and how long it
waits between tries, the message it gives, and the trainer's exit code for it
(`sources.storage_error`). The store is real; the operation it runs raises the failure."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import urllib3
from minio.error import S3Error

from lora_contract.layout import S3Location
from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_TRANSIENT
from lora_contract.storage import S3Store, StorageError, env_credentials
from lora_trainer.errors import InvalidConfigError, TransientError
from lora_trainer.sources import (
    fetch_s3_object,
    fetch_s3_prefix,
    hf_cache_path,
    local_path,
    storage_error,
)

from .conftest import BUCKET

ENDPOINT = "http://127.0.0.1:9"  # never contacted: the failing operation is local
LOC = S3Location("bkt", "runs/r1/progress.json")
WHERE = f"S3 get failed for s3://bkt/runs/r1/progress.json at {ENDPOINT}"


def s3_error(code: str, message: str = "the server says no") -> S3Error:
    return S3Error(None, code, message, "/bkt/runs", "req-1", "host-1")  # type: ignore[arg-type]


class Failing:
    """The operation: raises the given failures in turn, then returns 'done'."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    monkeypatch.setattr("lora_contract.storage.time.sleep", waited.append)
    return waited


def call(operation: Callable[[], str], retries: int = 3, backoff_s: float = 0.5) -> str:
    return S3Store(ENDPOINT, "k", "s", retries=retries, backoff_s=backoff_s)._call(
        "get", LOC, operation
    )


# What retrying cannot fix (wrong credentials, a missing or misnamed bucket, a bad request),
# written out here rather than read from PERMANENT_CODES.
PERMANENT = [
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "InvalidArgument",
    "InvalidBucketName",
    "NoSuchBucket",
    "SignatureDoesNotMatch",
]


@pytest.mark.parametrize("code", PERMANENT)
def test_permanent_s3_codes_fail_at_once(code: str, sleeps: list[float]) -> None:
    operation = Failing(s3_error(code, "no"))
    with pytest.raises(StorageError) as info:
        call(operation)
    assert operation.calls == 1 and sleeps == []
    assert not info.value.transient
    assert str(info.value) == f"{WHERE}: {code}: no"


@pytest.mark.parametrize("code", ["SlowDown", "InternalError", "ServiceUnavailable", "NoSuchKey"])
def test_other_s3_codes_are_retried_with_doubling_waits(code: str, sleeps: list[float]) -> None:
    operation = Failing(*(s3_error(code) for _ in range(3)))
    with pytest.raises(StorageError) as info:
        call(operation)
    assert operation.calls == 3
    assert sleeps == [0.5, 1.0]  # between tries only: 0.5 * 2**0, 0.5 * 2**1
    assert info.value.transient
    assert str(info.value) == f"{WHERE}: {code}: the server says no (after 3 attempts)"


def test_a_retry_that_succeeds_returns_the_result(sleeps: list[float]) -> None:
    operation = Failing(s3_error("SlowDown"), ConnectionResetError("reset"))
    assert call(operation, retries=4, backoff_s=0.25) == "done"
    assert operation.calls == 3 and sleeps == [0.25, 0.5]


@pytest.mark.parametrize(
    ("failure", "detail"),
    [
        (
            urllib3.exceptions.ProtocolError("connection aborted"),
            "ProtocolError: connection aborted",
        ),
        (
            urllib3.exceptions.ReadTimeoutError(None, "/x", "timed out"),  # type: ignore[arg-type]
            "ReadTimeoutError: ",
        ),
        (ConnectionRefusedError(111, "refused"), "ConnectionRefusedError: [Errno 111] refused"),
        (OSError("disk full"), "OSError: disk full"),
    ],
)
def test_network_and_io_failures_are_transient(
    failure: BaseException, detail: str, sleeps: list[float]
) -> None:
    operation = Failing(failure, failure)
    with pytest.raises(StorageError) as info:
        call(operation, retries=2, backoff_s=1.0)
    assert operation.calls == 2 and sleeps == [1.0]
    assert info.value.transient
    assert str(info.value).startswith(f"{WHERE}: {detail}")
    assert str(info.value).endswith(" (after 2 attempts)")


def test_a_missing_local_file_is_permanent(sleeps: list[float]) -> None:
    operation = Failing(FileNotFoundError(2, "No such file or directory", "/scratch/ckpt/a.bin"))
    with pytest.raises(StorageError) as info:
        call(operation)
    assert operation.calls == 1 and sleeps == []
    assert not info.value.transient
    assert str(info.value) == f"{WHERE}: local file missing: /scratch/ckpt/a.bin"


def test_minios_argument_checks_are_permanent(sleeps: list[float]) -> None:
    operation = Failing(ValueError("Bucket name contains invalid characters"))
    with pytest.raises(StorageError) as info:
        call(operation)
    assert operation.calls == 1 and not info.value.transient
    assert str(info.value) == f"{WHERE}: Bucket name contains invalid characters"


def test_one_attempt_says_nothing_of_attempts(sleeps: list[float]) -> None:
    for retries in (1, 0, -3):  # at least one attempt, whatever is configured
        operation = Failing(s3_error("SlowDown"), s3_error("SlowDown"))
        with pytest.raises(StorageError) as info:
            call(operation, retries=retries)
        assert operation.calls == 1 and info.value.transient
        assert str(info.value) == f"{WHERE}: SlowDown: the server says no"
    assert sleeps == []


def test_a_long_error_text_is_cut_to_300_characters(sleeps: list[float]) -> None:
    with pytest.raises(StorageError) as info:
        call(Failing(OSError("x" * 400)), retries=1)
    assert str(info.value) == f"{WHERE}: OSError: {'x' * 297}..."
    with pytest.raises(StorageError) as exact:
        call(Failing(OSError("y" * 300)), retries=1)
    assert str(exact.value) == f"{WHERE}: OSError: {'y' * 300}"


def test_other_exceptions_are_not_storage_errors(sleeps: list[float]) -> None:
    operation = Failing(KeyError("a bug"))
    with pytest.raises(KeyError):
        call(operation)
    assert operation.calls == 1


def test_the_transient_flag_is_keyword_only() -> None:
    error = StorageError("m", transient=True)
    assert error.transient and str(error) == "m" and isinstance(error, RuntimeError)
    with pytest.raises(TypeError):
        StorageError("m", True)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("transient", "kind", "exit_code"),
    [(True, TransientError, EXIT_TRANSIENT), (False, InvalidConfigError, EXIT_INVALID_CONFIG)],
)
def test_the_trainer_exit_follows_the_flag(transient: bool, kind: type, exit_code: int) -> None:
    error = storage_error(StorageError("S3 get failed: X", transient=transient), "output bucket")
    assert type(error) is kind
    assert error.exit_code == exit_code  # type: ignore[attr-defined]
    assert error.message == "output bucket: S3 get failed: X"  # type: ignore[attr-defined]


def test_credentials_come_from_aws_names_before_s3_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert env_credentials() is None
    monkeypatch.setenv("S3_ACCESS_KEY", "s3-a")
    assert env_credentials() is None  # half a pair is none
    monkeypatch.setenv("S3_SECRET_KEY", "s3-s")
    assert env_credentials() == ("s3-a", "s3-s")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "aws-a")
    assert env_credentials() == ("aws-a", "s3-s")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-s")
    assert env_credentials() == ("aws-a", "aws-s")


def test_the_retry_count_from_env_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    monkeypatch.delenv("LORAJOB_S3_RETRIES", raising=False)
    assert S3Store.from_env("http://x:1").retries == 4
    monkeypatch.setenv("LORAJOB_S3_RETRIES", "2")
    assert S3Store.from_env("http://x:1").retries == 2
    monkeypatch.setenv("LORAJOB_S3_RETRIES", "two")
    with pytest.raises(StorageError) as info:
        S3Store.from_env("http://x:1")
    assert str(info.value) == "LORAJOB_S3_RETRIES must be an integer (got 'two')"
    assert not info.value.transient


def test_the_client_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    store = S3Store("http://minio:9000", "k", "s")
    assert store.retries == 4 and store.backoff_s == 0.5
    assert store.client._base_url.region == "us-east-1"  # type: ignore[attr-defined]
    regional = S3Store("https://s3.example:443", "k", "s", "eu-west-1")
    assert regional.client._base_url.region == "eu-west-1"  # type: ignore[attr-defined]
    assert regional.client._base_url.is_https  # type: ignore[attr-defined]
    assert not store.client._base_url.is_https  # type: ignore[attr-defined]
    pool = store.client._http  # type: ignore[attr-defined]
    assert pool.connection_pool_kw["retries"].total is False  # our loop, not urllib3's, retries
    assert pool.connection_pool_kw["maxsize"] == 8
    timeout = pool.connection_pool_kw["timeout"]
    assert (timeout.connect_timeout, timeout.read_timeout) == (5.0, 120.0)


# ---------------------------------------------------------------- against the real S3 server


@pytest.fixture
def prefix() -> S3Location:
    return S3Location(BUCKET, f"errors/{uuid.uuid4().hex[:8]}")


def test_missing_objects_are_none_or_false_not_errors(store: S3Store, prefix: S3Location) -> None:
    assert store.get_bytes(prefix.child("none.bin")) is None
    assert store.get_json(prefix.child("none.json")) is None
    assert store.exists(prefix.child("none.bin")) is False
    assert store.list(prefix) == [] and store.list_sizes(prefix) == {}
    assert store.delete_prefix(prefix) == 0
    store.delete(prefix.child("none.bin"))  # idempotent


def test_objects_and_sizes(store: S3Store, prefix: S3Location, tmp_path: Path) -> None:
    store.put_bytes(prefix.child("a.bin"), b"12345")
    store.put_json(prefix.child("sub/b.json"), {"b": [1, 2]})
    assert store.get_bytes(prefix.child("a.bin")) == b"12345"
    stat = store.client.stat_object(BUCKET, prefix.child("sub/b.json").key)
    assert stat.content_type == "application/json"
    assert store.get_bytes(prefix.child("sub/b.json")) == b'{\n  "b": [\n    1,\n    2\n  ]\n}'
    assert store.list_sizes(prefix) == {"a.bin": 5, "sub/b.json": 29}
    assert store.list_sizes(prefix.child("sub")) == {"b.json": 29}
    local = tmp_path / "up.txt"
    local.write_text("abc")
    assert store.upload_file(prefix.child("up.txt"), local) == 3
    store.download_file(prefix.child("up.txt"), tmp_path / "deep" / "down.txt")
    assert (tmp_path / "deep" / "down.txt").read_text() == "abc"
    assert store.upload_dir(prefix.child("dir"), tmp_path / "deep") == {"down.txt": 3}
    store.delete(prefix.child("a.bin"))
    assert not store.exists(prefix.child("a.bin"))
    assert store.delete_prefix(prefix) == 3


def test_a_missing_local_file_to_upload_is_permanent(
    store: S3Store, prefix: S3Location, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):  # the size is read before any request
        store.upload_file(prefix.child("x"), tmp_path / "absent.bin")


def test_a_missing_bucket_is_permanent_for_every_operation(store: S3Store) -> None:
    gone = S3Location(f"gone-{uuid.uuid4().hex[:8]}", "k/v.json")
    for operation in (
        lambda: store.put_json(gone, {}),
        lambda: store.get_bytes(gone),
        lambda: store.list(gone),
    ):
        with pytest.raises(StorageError, match="NoSuchBucket") as info:
            operation()
        assert not info.value.transient


def test_ensure_bucket_creates_once_and_accepts_an_existing_one(store: S3Store) -> None:
    name = f"made-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(name)
    assert store.client.bucket_exists(name)
    store.ensure_bucket(name)
    with pytest.raises(StorageError) as info:
        store.ensure_bucket("Not_A_Bucket")
    assert not info.value.transient
    assert "s3://Not_A_Bucket" in str(info.value)


def test_a_corrupt_marker_or_json_is_permanent(store: S3Store, prefix: S3Location) -> None:
    store.put_bytes(prefix.child("bad.json"), b"{")
    with pytest.raises(StorageError) as info:
        store.get_json(prefix.child("bad.json"))
    assert not info.value.transient
    assert str(info.value).startswith(f"{prefix.child('bad.json').uri} at {store.endpoint} is ")


def test_complete_checkpoints_are_the_ones_with_a_manifest(
    store: S3Store, prefix: S3Location
) -> None:
    for step, manifest in ((2, True), (10, True), (4, False), (12, False)):
        store.put_bytes(prefix.child(f"checkpoint-{step}", "adapter.bin"), b"w")
        if manifest:
            store.put_json(prefix.child(f"checkpoint-{step}", "MANIFEST.json"), {"step": step})
    store.put_json(prefix.child("progress.json"), {})
    assert store.complete_checkpoints(prefix) == [2, 10]  # numeric order, not 10 < 2


# ------------------------------------------------------------------------ trainer sources


def test_local_sources_and_hf_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORAJOB_PVC_ROOT", str(tmp_path))
    assert local_path("pvc://models/tiny") == tmp_path / "models" / "tiny"
    assert local_path("pvc:///models/tiny") == tmp_path / "models" / "tiny"
    assert local_path("file:///data/x.jsonl") == Path("/data/x.jsonl")
    assert local_path("/data/x.jsonl") == Path("/data/x.jsonl")
    assert local_path("s3://b/k") is None and local_path("hf://org/name") is None
    monkeypatch.delenv("HF_HOME", raising=False)
    with pytest.raises(InvalidConfigError) as info:
        hf_cache_path("hf://org/name")
    assert info.value.message == (
        "baseModel.source hf://org/name: hf:// models load from a mounted Hugging Face cache, "
        "but HF_HOME is not set"
    )
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert hf_cache_path("hf://org/name/") == "org/name"


def test_an_s3_prefix_downloads_once_per_node(
    store: S3Store, prefix: S3Location, tmp_path: Path
) -> None:
    store.put_bytes(prefix.child("config.json"), b"{}")
    dest = tmp_path / "model"
    assert fetch_s3_prefix(store, prefix.uri, dest, "baseModel.source") == dest
    assert (dest / "config.json").read_bytes() == b"{}"
    assert (dest / ".lorajob-download-complete").read_text() == "ok\n"
    store.put_bytes(prefix.child("config.json"), b"changed")
    fetch_s3_prefix(store, prefix.uri, dest, "baseModel.source")
    assert (dest / "config.json").read_bytes() == b"{}"  # the node's copy is reused


def test_an_empty_prefix_or_missing_object_is_a_bad_config(
    store: S3Store, prefix: S3Location, tmp_path: Path
) -> None:
    with pytest.raises(InvalidConfigError) as empty:
        fetch_s3_prefix(store, prefix.uri, tmp_path / "m", "baseModel.source")
    assert empty.value.message == f"baseModel.source {prefix.uri}: no objects under this S3 prefix"
    assert not (tmp_path / "m" / ".lorajob-download-complete").exists()
    missing = prefix.child("train.jsonl").uri
    with pytest.raises(InvalidConfigError) as info:
        fetch_s3_object(store, missing, tmp_path / "dl", "dataset.source")
    assert info.value.message == f"dataset.source {missing} does not exist"


def test_an_s3_object_downloads_to_its_bucket_and_key(
    store: S3Store, prefix: S3Location, tmp_path: Path
) -> None:
    store.put_bytes(prefix.child("train.jsonl"), b'{"a": 1}\n')
    got = fetch_s3_object(store, prefix.child("train.jsonl").uri, tmp_path, "dataset.source")
    assert got == tmp_path / BUCKET / prefix.key / "train.jsonl"
    assert got.read_bytes() == b'{"a": 1}\n'
    assert not got.with_suffix(".jsonl.partial").exists()
    store.put_bytes(prefix.child("train.jsonl"), b"new")
    assert fetch_s3_object(store, prefix.child("train.jsonl").uri, tmp_path, "x").read_bytes() == (
        b'{"a": 1}\n'  # kept: one download per node
    )


def test_an_unreachable_source_is_transient(tmp_path: Path, sleeps: list[float]) -> None:
    dead = S3Store(ENDPOINT, "k", "s", retries=2, backoff_s=0.0)
    with pytest.raises(TransientError) as info:
        fetch_s3_object(dead, "s3://bkt/data/train.jsonl", tmp_path, "dataset.source")
    assert info.value.message.startswith(
        "cannot download dataset.source s3://bkt/data/train.jsonl:"
    )
    with pytest.raises(TransientError) as prefix_info:
        fetch_s3_prefix(dead, "s3://bkt/model", tmp_path / "m", "baseModel.source")
    assert prefix_info.value.message.startswith("cannot download baseModel.source s3://bkt/model: ")


# ------------------------------------------------------ each operation names itself when it fails


def test_every_operation_names_itself_and_its_object_when_it_fails(tmp_path: Path) -> None:
    """S3 unreachable, one attempt: the message says which operation, on which object."""
    dead = S3Store(ENDPOINT, "k", "s", retries=1)
    loc = S3Location("bkt", "runs/r1/x.json")
    local = tmp_path / "up.bin"
    local.write_bytes(b"1")
    for operation, what in (
        (lambda: dead.put_bytes(loc, b"1"), "put"),
        (lambda: dead.put_json(loc, {}), "put"),
        (lambda: dead.get_bytes(loc), "get"),
        (lambda: dead.get_json(loc), "get"),
        (lambda: dead.create_json_if_absent(loc, {}), "create"),
        (lambda: dead.exists(loc), "stat"),
        (lambda: dead.list(loc), "list"),
        (lambda: dead.list_sizes(loc), "list"),
        (lambda: dead.delete(loc), "delete"),
        (lambda: dead.delete_prefix(loc), "list"),  # it lists what to delete first
        (lambda: dead.upload_file(loc, local), "upload"),
        (lambda: dead.download_file(loc, tmp_path / "down.bin"), "download"),
        (lambda: dead.download_prefix(loc, tmp_path / "d"), "list"),
    ):
        with pytest.raises(StorageError) as info:
            operation()
        assert str(info.value).startswith(
            f"S3 {what} failed for s3://bkt/runs/r1/x.json at {ENDPOINT}: "
        ), what
        assert info.value.transient is True
    with pytest.raises(StorageError) as each_file:
        dead.upload_dir(loc, tmp_path)  # each file under its own key
    assert str(each_file.value).startswith(
        f"S3 upload failed for s3://bkt/runs/r1/x.json/up.bin at {ENDPOINT}: "
    )
    with pytest.raises(StorageError) as bucket:
        dead.ensure_bucket("bkt")
    assert str(bucket.value).startswith(f"S3 create bucket failed for s3://bkt/ at {ENDPOINT}: ")


def test_a_permanent_failure_is_false_not_merely_falsy(sleeps: list[float]) -> None:
    for failure in (FileNotFoundError(2, "gone", "/x"), ValueError("bad name")):
        with pytest.raises(StorageError) as info:
            call(Failing(failure))
        assert info.value.transient is False


def test_301_characters_are_cut_too(sleeps: list[float]) -> None:
    with pytest.raises(StorageError) as info:
        call(Failing(OSError("z" * 301)), retries=1)
    assert str(info.value) == f"{WHERE}: OSError: {'z' * 297}..."


def test_endpoint_and_environment_errors_are_permanent_and_say_what_to_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lora_contract.storage import parse_endpoint

    with pytest.raises(StorageError) as scheme:
        parse_endpoint("ftp://x")
    assert str(scheme.value) == "S3 endpoint 'ftp://x' is not a URL like http://minio:9000"
    assert scheme.value.transient is False
    with pytest.raises(StorageError) as path:
        parse_endpoint("http://minio:9000/bucket")
    assert str(path.value) == (
        "S3 endpoint 'http://minio:9000/bucket' must not contain a path (got '/bucket'); "
        "put the prefix in output.prefix"
    )
    assert path.value.transient is False
    assert parse_endpoint("http://minio:9000/") == ("minio:9000", False)  # a bare slash is fine
    assert parse_endpoint(" http://minio:9000 ") == ("minio:9000", False)
    for name in ("S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StorageError) as no_endpoint:
        S3Store.from_env(None)
    assert str(no_endpoint.value) == "no S3 endpoint: set env S3_ENDPOINT or spec.output.endpoint"
    assert no_endpoint.value.transient is False
    with pytest.raises(StorageError) as no_credentials:
        S3Store.from_env("http://x:1")
    assert str(no_credentials.value) == (
        "no S3 credentials for http://x:1: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(from spec.output.credentialsSecret)"
    )
    assert no_credentials.value.transient is False
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    monkeypatch.setenv("LORAJOB_S3_RETRIES", "x")
    with pytest.raises(StorageError) as retries:
        S3Store.from_env("http://x:1")
    assert retries.value.transient is False


def test_from_env_passes_credentials_and_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    monkeypatch.delenv("LORAJOB_S3_RETRIES", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-b")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    store = S3Store.from_env("http://x:1")
    credentials = store.client._provider.retrieve()  # type: ignore[attr-defined]
    assert (credentials.access_key, credentials.secret_key) == ("key-a", "secret-b")
    assert store.client._base_url.region == "eu-central-1"  # type: ignore[attr-defined]


def test_the_owner_marker_is_created_as_sorted_indented_json(
    store: S3Store, prefix: S3Location
) -> None:
    marker = prefix.child("OWNER.json")
    assert store.create_json_if_absent(marker, {"uid": "u", "name": "n", "namespace": "ns"})
    raw = store.get_bytes(marker)
    assert raw == b'{\n  "name": "n",\n  "namespace": "ns",\n  "uid": "u"\n}'
    stat = store.client.stat_object(BUCKET, marker.key)
    assert stat.content_type == "application/json"


def test_a_bucket_root_lists_whole_keys_and_empty_objects_have_size_zero(store: S3Store) -> None:
    bucket = f"root-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(bucket)
    root = S3Location(bucket, "")
    store.put_bytes(root.child("a/empty.bin"), b"")
    store.put_bytes(root.child("top.bin"), b"12")
    assert store.list(root) == ["a/", "top.bin"]
    assert store.list(root, recursive=True) == ["a/empty.bin", "top.bin"]
    assert store.list_sizes(root) == {"a/empty.bin": 0, "top.bin": 2}


def test_an_invalid_bucket_name_is_refused_naming_the_bucket(store: S3Store) -> None:
    with pytest.raises(StorageError) as info:
        store.ensure_bucket("Not_A_Bucket")
    assert str(info.value).startswith(
        f"S3 create bucket failed for s3://Not_A_Bucket/ at {store.endpoint}: "
    )


def test_one_object_download_is_guarded_by_a_lock_beside_it(
    store: S3Store, prefix: S3Location, tmp_path: Path
) -> None:
    store.put_bytes(prefix.child("train.jsonl"), b"{}\n")
    got = fetch_s3_object(store, prefix.child("train.jsonl").uri, tmp_path, "dataset.source")
    assert sorted(p.name for p in got.parent.iterdir()) == ["train.jsonl", "train.jsonl.lock"]


class StatClient:
    """A minio client whose HEAD answers one S3 error code, and whose bucket is there or not."""

    def __init__(self, code: str, bucket_there: bool) -> None:
        self.code, self.bucket_there = code, bucket_there

    def stat_object(self, bucket: str, key: str) -> None:
        raise s3_error(self.code)

    def bucket_exists(self, bucket: str) -> bool:
        return self.bucket_there


@pytest.mark.parametrize("code", ["NoSuchKey", "NoSuchObject", "ResourceNotFound"])
def test_each_not_found_code_is_false_or_names_the_missing_bucket(code: str) -> None:
    store = S3Store(ENDPOINT, "k", "s", retries=1)
    store.client = StatClient(code, bucket_there=True)  # type: ignore[assignment]
    assert store.exists(LOC) is False
    store.client = StatClient(code, bucket_there=False)  # type: ignore[assignment]
    with pytest.raises(StorageError) as info:
        store.exists(LOC)
    assert str(info.value) == (
        f"S3 stat failed for s3://bkt/runs/r1/progress.json at {ENDPOINT}: "
        "NoSuchBucket: bucket bkt does not exist"
    )
    assert info.value.transient is False
    store.client = StatClient("AccessDenied", bucket_there=True)  # type: ignore[assignment]
    with pytest.raises(StorageError, match="AccessDenied: the server says no"):
        store.exists(LOC)  # any other code is _call's, not "missing"
