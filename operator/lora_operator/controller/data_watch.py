"""Whether the data behind `dataset.source` changed since a run started, as pure functions.

A dataset object is identified by its S3 version id when the bucket is versioned (a new PUT is
a new version even with the same bytes), else by its ETag (the content's MD5 for a single-part
PUT, a hash of the parts for a multipart one). `reconcile._Run` does the HEAD, with the job's own
credentials Secret, and records the identity on the run (`RunRecord.dataIdentity`).
"""

from __future__ import annotations

import enum

from lora_contract.types import DataWatchSpec

S3_SCHEME = "s3://"


def identity(etag: str | None, version_id: str | None) -> str | None:
    """version:<id>, else etag:<etag> (quotes dropped), else None (nothing to compare)."""
    if version_id and version_id != "null":
        return f"version:{version_id}"
    bare = (etag or "").strip('"')
    return f"etag:{bare}" if bare else None


def watchable(source: str) -> bool:
    """Only an S3 object has an identity the operator can read (pvc:// and paths do not)."""
    return source.startswith(S3_SCHEME)


def check_due(watch: DataWatchSpec | None, last_checked: float | None, now: float) -> bool:
    """A watch is enabled and its minimum interval has passed since the last look."""
    if watch is None or not watch.enabled:
        return False
    return last_checked is None or now - last_checked >= watch.min_interval_seconds


class DataVerdict(enum.Enum):
    UNKNOWN = "unknown"  # the object could not be looked at: decide nothing
    BASELINE = "baseline"  # the run has no identity yet: record this one, do not retrain
    UNCHANGED = "unchanged"
    CHANGED = "changed"


def data_verdict(run_identity: str | None, seen: str | None) -> DataVerdict:
    """The run's recorded identity against the one seen now."""
    if seen is None:
        return DataVerdict.UNKNOWN
    if run_identity is None:
        return DataVerdict.BASELINE
    return DataVerdict.UNCHANGED if seen == run_identity else DataVerdict.CHANGED
