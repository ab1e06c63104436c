"""Downloads stay in their folder: an object key below a prefix that is not a plain relative path
(absolute, `..`, `.`, empty segments, backslashes) is refused before anything is written, on
every download path (`S3Store.download_prefix`, the trainer's s3:// model source, checkpoint
resume, a single s3:// object). The objects are put on the real moto server with boto3 (the
minio client itself refuses to send `.`/`..` segments; a hostile or buggy server still can list
them) and fetched with the real minio client, as the trainer does."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lora_contract.layout import S3Location
from lora_contract.pod import EXIT_INVALID_CONFIG
from lora_contract.storage import S3Store, StorageError
from lora_devkit.s3server import S3Server
from lora_trainer.checkpoints import download_checkpoint
from lora_trainer.errors import InvalidConfigError
from lora_trainer.sources import fetch_s3_object, fetch_s3_prefix

from .conftest import BUCKET


def put_raw(s3: S3Server, key: str, body: bytes = b"payload") -> None:
    """PUT `key` exactly as written (boto3 sends `.`/`..` segments, `//` and backslashes)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name="us-east-1",
    )
    client.put_object(Bucket=BUCKET, Key=key, Body=body)


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


@pytest.fixture
def base() -> str:
    return f"confine/{uuid.uuid4().hex[:8]}/m"


# (relative key, what the refusal says). "{outside}" is replaced by an absolute path below the
# test's tmp_path, so a download that escapes lands where the test can see it (the review's
# case: `<prefix>//tmp/x/f` was written to /tmp/x/f).
BAD_KEYS = [
    ("/{outside}/abs.bin", "it is an absolute path"),
    ("../escaped.bin", "it has '..' as a path segment"),
    ("sub/../../escaped.bin", "it has '..' as a path segment"),
    ("..", "it has '..' as a path segment"),
    ("./dot.bin", "it has '.' as a path segment"),
    ("sub/./dot.bin", "it has '.' as a path segment"),
    ("sub//double.bin", "it has an empty path segment"),
    ("sub\\win.bin", "it contains a backslash"),
    ("..\\escaped.bin", "it contains a backslash"),
]


@pytest.mark.parametrize(("relative", "reason"), BAD_KEYS)
def test_download_prefix_refuses_a_key_outside_the_folder(
    s3: S3Server, store: S3Store, base: str, tmp_path: Path, relative: str, reason: str
) -> None:
    outside = tmp_path / "outside"
    name = relative.replace("/{outside}", str(outside))
    put_raw(s3, f"{base}/config.json", b"{}")  # listed first: must not be written either
    put_raw(s3, f"{base}/{name}")
    if name.startswith("/"):  # its twin: a client that strips the slash finds this one
        put_raw(s3, f"{base}{name}")
    prefix = S3Location(BUCKET, base)
    if name not in store.list(prefix, recursive=True):
        pytest.skip(f"this S3 server does not store the key {name!r}")
    dest = tmp_path / "work" / "dest"
    with pytest.raises(StorageError) as info:
        store.download_prefix(prefix, dest)
    assert not info.value.transient
    assert str(info.value) == (
        f"refusing to download key {name!r} under prefix s3://{BUCKET}/{base}: {reason}; "
        "object keys below a prefix must be plain relative paths"
    )
    assert files_under(tmp_path) == []  # not the bad key, not the good one, not outside
    assert not outside.exists()


def test_a_symlink_in_the_folder_does_not_lead_out(
    s3: S3Server, store: S3Store, base: str, tmp_path: Path
) -> None:
    """A plain key through a link that an earlier download (or anyone) left in the folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    put_raw(s3, f"{base}/link/f.bin")
    with pytest.raises(StorageError, match="it resolves outside the destination folder"):
        store.download_prefix(S3Location(BUCKET, base), dest)
    assert list(outside.iterdir()) == []


def test_plain_keys_still_download_where_they_belong(
    s3: S3Server, store: S3Store, base: str, tmp_path: Path
) -> None:
    """The refusal is not a no-op switch: names with dots that are not segments still pass."""
    for name, body in [("a.json", b"1"), ("sub/..b/c.d", b"22"), ("x/.hidden", b"333")]:
        put_raw(s3, f"{base}/{name}", body)
    written = store.download_prefix(S3Location(BUCKET, base), tmp_path / "dest")
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in written) == [
        "a.json",
        "sub/..b/c.d",
        "x/.hidden",
    ]
    assert (tmp_path / "dest" / "sub" / "..b" / "c.d").read_bytes() == b"22"
    assert files_under(tmp_path) == ["dest/a.json", "dest/sub/..b/c.d", "dest/x/.hidden"]


def test_a_model_source_with_an_absolute_key_is_a_bad_config(
    s3: S3Server, store: S3Store, base: str, tmp_path: Path
) -> None:
    """baseModel.source s3://... (trainer's sources.py): exit 3, naming the key and prefix."""
    outside = tmp_path / "outside"
    put_raw(s3, f"{base}/config.json", b"{}")
    put_raw(s3, f"{base}/{outside}/model.safetensors")
    uri = f"s3://{BUCKET}/{base}"
    with pytest.raises(InvalidConfigError) as info:
        fetch_s3_prefix(store, uri, tmp_path / "models" / "m", "baseModel.source")
    assert info.value.exit_code == EXIT_INVALID_CONFIG
    assert info.value.message.startswith(f"cannot download baseModel.source {uri}: ")
    assert f"key '{outside}/model.safetensors' under prefix {uri}" in info.value.message
    assert "it is an absolute path" in info.value.message
    assert not outside.exists()
    assert not (tmp_path / "models" / "m" / ".lorajob-download-complete").exists()
    assert files_under(tmp_path / "models") == ["m.lock"]  # the node lock, nothing else


def test_a_checkpoint_with_a_dotdot_key_is_not_resumed_from(
    s3: S3Server, store: S3Store, base: str, tmp_path: Path
) -> None:
    run = S3Location(BUCKET, base)
    put_raw(s3, f"{base}/checkpoint-8/adapter_model.safetensors")
    put_raw(s3, f"{base}/checkpoint-8/../../escaped.bin")
    with pytest.raises(StorageError, match=r"key '\.\./\.\./escaped\.bin' under prefix") as info:
        download_checkpoint(store, run, 8, tmp_path / "scratch" / "ckpt")
    assert not info.value.transient
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        (f"s3://{BUCKET}/data//train.jsonl", "it has an empty path segment"),
        (f"s3://{BUCKET}/data/./train.jsonl", "it has '.' as a path segment"),
        (f"s3://{BUCKET}/data\\train.jsonl", "it contains a backslash"),
        ("s3://../train.jsonl", "it has '..' as a path segment"),
        (f"s3://{BUCKET}", "the key is empty"),
    ],
)
def test_a_single_object_source_must_be_a_plain_key(
    store: S3Store, tmp_path: Path, uri: str, reason: str
) -> None:
    with pytest.raises(InvalidConfigError) as info:
        fetch_s3_object(store, uri, tmp_path / "dl", "dataset.source")
    assert info.value.message == f"dataset.source {uri}: not an S3 object key ({reason})"
    assert files_under(tmp_path) == []


def test_the_key_rules_one_by_one() -> None:
    """The rules themselves, including the two no S3 server here stores (NUL, empty)."""
    from lora_contract.storage import unsafe_key_reason

    assert unsafe_key_reason("") == "the key is empty"
    assert unsafe_key_reason("a\x00b") == "it contains a NUL byte"
    assert unsafe_key_reason("/a") == "it is an absolute path"
    assert unsafe_key_reason("a/") == "it has an empty path segment"
    assert unsafe_key_reason("a/..") == "it has '..' as a path segment"
    assert unsafe_key_reason("a/b.c/...d/.e") is None
