"""dataset.watch's decisions (controller/data_watch.py) under a fake clock, and the S3 HEAD it
relies on (`S3Store.etag_and_version`) against the moto server with the real minio client."""

from __future__ import annotations

import hashlib

import pytest

from lora_contract.layout import S3Location
from lora_contract.types import DataWatchSpec
from lora_devkit.s3server import S3Server
from lora_operator.controller.data_watch import (
    DataVerdict,
    check_due,
    data_verdict,
    identity,
    watchable,
)


def test_identity_prefers_the_version_id() -> None:
    assert identity('"d41d8cd98f00b204e9800998ecf8427e"', None) == (
        "etag:d41d8cd98f00b204e9800998ecf8427e"
    )
    assert identity("abc", "3HL4kqtJlcpXroDTDmJ") == "version:3HL4kqtJlcpXroDTDmJ"
    assert identity('"abc"', "null") == "etag:abc"  # an unversioned bucket's version id
    assert identity('"X-1"', None) == "etag:X-1"  # only the quotes go
    assert identity('""', None) is None
    assert identity(None, None) is None
    assert identity(None, "") is None


def test_only_s3_objects_are_watchable() -> None:
    assert watchable("s3://bucket/train.jsonl")
    assert not watchable("pvc://data/train.jsonl")
    assert not watchable("/data/train.jsonl")
    assert not watchable("file:///data/train.jsonl")
    assert not watchable("S3://bucket/x")  # the DATA_URI_PATTERN spelling only


WATCH = DataWatchSpec(minIntervalSeconds=60)


@pytest.mark.parametrize(
    ("watch", "last", "now", "due"),
    [
        (None, None, 1000.0, False),
        (DataWatchSpec(enabled=False), None, 1000.0, False),
        (WATCH, None, 1000.0, True),  # never looked
        (WATCH, 1000.0, 1059.0, False),
        (WATCH, 1000.0, 1060.0, True),  # exactly the interval
        (WATCH, 1000.0, 1061.0, True),
        (DataWatchSpec(), 1000.0, 1299.0, False),  # default 300 s
        (DataWatchSpec(), 1000.0, 1300.0, True),
    ],
)
def test_check_due(watch: DataWatchSpec | None, last: float | None, now: float, due: bool) -> None:
    assert check_due(watch, last, now) is due


def test_watch_defaults_and_bounds() -> None:
    assert DataWatchSpec().enabled is True
    assert DataWatchSpec().min_interval_seconds == 300
    with pytest.raises(ValueError, match="minIntervalSeconds"):
        DataWatchSpec.model_validate({"minIntervalSeconds": 4})


@pytest.mark.parametrize(
    ("recorded", "seen", "verdict"),
    [
        ("etag:a", None, DataVerdict.UNKNOWN),
        (None, None, DataVerdict.UNKNOWN),
        (None, "etag:a", DataVerdict.BASELINE),
        ("etag:a", "etag:a", DataVerdict.UNCHANGED),
        ("etag:a", "etag:b", DataVerdict.CHANGED),
        ("etag:a", "version:a", DataVerdict.CHANGED),  # versioning turned on: a new identity
    ],
)
def test_data_verdict(recorded: str | None, seen: str | None, verdict: DataVerdict) -> None:
    assert data_verdict(recorded, seen) is verdict


def test_etag_and_version_of_a_replaced_object(s3: S3Server) -> None:
    """A single-part PUT's ETag is the MD5 of its bytes: computed here, not read back."""
    store = s3.store()
    loc = S3Location.parse("s3://watch-units/data/train.jsonl")
    store.ensure_bucket(loc.bucket)
    assert store.etag_and_version(loc) is None
    first = b'{"prompt": "a", "completion": "b"}\n'
    store.put_bytes(loc, first)
    etag, version = store.etag_and_version(loc) or (None, None)
    assert identity(etag, version) == f"etag:{hashlib.md5(first).hexdigest()}"
    second = first + b'{"prompt": "c", "completion": "d"}\n'
    store.put_bytes(loc, second)
    etag, version = store.etag_and_version(loc) or (None, None)
    assert identity(etag, version) == f"etag:{hashlib.md5(second).hexdigest()}"
