"""S3Store against the real moto S3 server (or MinIO when S3_ENDPOINT is set)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lora_contract.layout import S3Location
from lora_contract.storage import S3Store, StorageError, parse_endpoint
from lora_devkit.s3server import S3Server, free_port

from .conftest import BUCKET


@pytest.fixture
def prefix() -> S3Location:
    return S3Location(BUCKET, f"storage-test/{uuid.uuid4().hex[:8]}")


def test_round_trips(store: S3Store, prefix: S3Location, tmp_path: Path) -> None:
    store.put_json(prefix.child("a.json"), {"x": 1})
    assert store.get_json(prefix.child("a.json")) == {"x": 1}
    assert store.get_json(prefix.child("missing.json")) is None
    assert store.get_bytes(prefix.child("missing.bin")) is None
    store.put_bytes(prefix.child("dir/b.bin"), b"\x00\x01")
    big = tmp_path / "big.bin"
    big.write_bytes(b"z" * (17 * 1024 * 1024))  # above the 16 MiB part size: multipart
    assert store.upload_file(prefix.child("dir/sub/big.bin"), big) == big.stat().st_size
    assert store.exists(prefix.child("dir/b.bin"))
    assert not store.exists(prefix.child("dir/nope"))
    assert store.list(prefix) == ["a.json", "dir/"]
    assert store.list(prefix, recursive=True) == ["a.json", "dir/b.bin", "dir/sub/big.bin"]
    assert store.list_sizes(prefix.child("dir"))["sub/big.bin"] == big.stat().st_size

    files = store.download_prefix(prefix.child("dir"), tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == [
        "b.bin",
        "sub/big.bin",
    ]
    assert (tmp_path / "out" / "sub" / "big.bin").stat().st_size == big.stat().st_size
    assert store.delete_prefix(prefix.child("dir")) == 2
    assert store.list(prefix, recursive=True) == ["a.json"]


def test_corrupt_json_is_a_clear_error(store: S3Store, prefix: S3Location) -> None:
    store.put_bytes(prefix.child("bad.json"), b"{not json")
    with pytest.raises(StorageError, match="is not valid JSON"):
        store.get_json(prefix.child("bad.json"))


def test_deeply_nested_json_is_a_permanent_error_not_a_recursion(
    store: S3Store, prefix: S3Location
) -> None:
    """A tenant can write progress.json: 200 KB of `[` was a RecursionError in the operator."""
    store.put_bytes(prefix.child("deep.json"), b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(StorageError, match="nested more than 64 levels deep") as caught:
        store.get_json(prefix.child("deep.json"))
    assert caught.value.transient is False


def test_missing_bucket_is_permanent(store: S3Store) -> None:
    with pytest.raises(StorageError, match="NoSuchBucket") as info:
        store.get_json(S3Location("no-such-bucket-here", "x.json"))
    assert not info.value.transient
    assert "s3://no-such-bucket-here/x.json" in str(info.value)


def test_exists_in_a_missing_bucket_is_an_error_naming_the_bucket(store: S3Store) -> None:
    """A HEAD on a key says 404 whether the key or the whole bucket is missing: `exists` must
    not answer False for a bucket that is not there (a mistyped output.bucket read as "no
    checkpoint yet")."""
    with pytest.raises(StorageError) as info:
        store.exists(S3Location("no-such-bucket-here", "run/final/MANIFEST.json"))
    assert str(info.value) == (
        f"S3 stat failed for s3://no-such-bucket-here/run/final/MANIFEST.json at {store.endpoint}: "
        "NoSuchBucket: bucket no-such-bucket-here does not exist"
    )
    assert info.value.transient is False
    assert store.exists(S3Location(BUCKET, "no/such/key.json")) is False  # the bucket is there


def test_unreachable_endpoint_is_transient() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    store = S3Store(endpoint, "k", "s", retries=2, backoff_s=0.01)
    with pytest.raises(StorageError) as info:
        store.put_json(S3Location("bucket", "run/progress.json"), {})
    assert info.value.transient
    assert endpoint in str(info.value) and "s3://bucket/run/progress.json" in str(info.value)
    assert "after 2 attempts" in str(info.value)


def test_endpoint_parsing() -> None:
    assert parse_endpoint("http://minio:9000") == ("minio:9000", False)
    assert parse_endpoint("https://s3.amazonaws.com") == ("s3.amazonaws.com", True)
    assert parse_endpoint("minio.ns.svc:9000") == ("minio.ns.svc:9000", True)
    with pytest.raises(StorageError, match="must not contain a path"):
        parse_endpoint("http://minio:9000/bucket")
    with pytest.raises(StorageError, match="not a URL"):
        parse_endpoint("ftp://x")


def test_from_env_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    monkeypatch.setenv("S3_ENDPOINT", "http://from-env:9000")
    assert S3Store.from_env("http://from-spec:9000").endpoint == "http://from-env:9000"
    monkeypatch.delenv("S3_ENDPOINT")
    assert S3Store.from_env("http://from-spec:9000").endpoint == "http://from-spec:9000"
    with pytest.raises(StorageError, match="no S3 endpoint"):
        S3Store.from_env(None)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("S3_ACCESS_KEY", raising=False)
    with pytest.raises(StorageError, match="no S3 credentials"):
        S3Store.from_env("http://x:1")


def test_s3server_env_and_bucket() -> None:
    with S3Server(use_env=False) as server:
        assert server.endpoint.startswith("http://127.0.0.1:")
        server.ensure_bucket("fresh-bucket")
        server.store().put_json(S3Location("fresh-bucket", "k.json"), [1])
        assert server.store().get_json(S3Location("fresh-bucket", "k.json")) == [1]
        assert server.env()["S3_ENDPOINT"] == server.endpoint
