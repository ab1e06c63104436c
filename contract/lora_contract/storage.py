"""S3 access shared by the trainer (writes checkpoints, metrics, progress) and the operator (reads
progress.json): one wrapper over the real `minio` client so both sides agree on retries, errors
and the run layout.

Every failure surfaces as a `StorageError` naming the endpoint, bucket and key, with `transient`
telling the trainer whether to exit for a retry (EXIT_TRANSIENT) or fail the job (bad config).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from minio.helpers import DictType
from pydantic import ValidationError

from . import pod
from .bounded_parse import load_json
from .layout import MANIFEST, JobOwner, S3Location, checkpoint_step, owner_marker

T = TypeVar("T")

# S3 error codes that retrying cannot fix: wrong credentials, missing bucket, bad request.
PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "NoSuchBucket",
        "InvalidBucketName",
        "AllAccessDisabled",
        "InvalidArgument",
    }
)
MULTIPART_PART_SIZE = 16 * 1024 * 1024
LOCAL_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageError(RuntimeError):
    """An S3 operation failed; the message names endpoint, bucket and key, never a traceback."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """'http://host:9000' -> ('host:9000', False). A bare 'host:port' means https, like AWS."""
    text = endpoint.strip()
    if "://" not in text:
        text = f"https://{text}"
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise StorageError(
            f"S3 endpoint {endpoint!r} is not a URL like http://minio:9000", transient=False
        )
    if parsed.path.strip("/"):
        raise StorageError(
            f"S3 endpoint {endpoint!r} must not contain a path (got {parsed.path!r}); "
            "put the prefix in output.prefix",
            transient=False,
        )
    return parsed.netloc, parsed.scheme == "https"


def env_credentials() -> tuple[str, str] | None:
    """(access key, secret key) from this process's environment: AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY (what the trainer pod gets), else S3_ACCESS_KEY / S3_SECRET_KEY."""
    access = os.environ.get(pod.ENV_ACCESS_KEY) or os.environ.get("S3_ACCESS_KEY")
    secret = os.environ.get(pod.ENV_SECRET_KEY) or os.environ.get("S3_SECRET_KEY")
    return (access, secret) if access and secret else None


class S3Store:
    """Thin, retried S3 client. `retries` attempts with exponential backoff for transient errors."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        region: str | None = None,
        *,
        retries: int = 4,
        backoff_s: float = 0.5,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 120.0,
    ) -> None:
        self.endpoint = endpoint
        self.retries = max(1, retries)
        self.backoff_s = backoff_s
        host, secure = parse_endpoint(endpoint)
        # Our own retry loop (with clear errors) replaces urllib3's silent internal retries.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            retries=False,
            maxsize=8,
        )
        self.client = Minio(
            host,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region or "us-east-1",
            http_client=http,
        )

    @classmethod
    def from_env(cls, endpoint: str | None = None) -> S3Store:
        """Env `S3_ENDPOINT` wins over `endpoint` (the spec's output.endpoint). Credentials from
        AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or S3_ACCESS_KEY/S3_SECRET_KEY); AWS_REGION.
        `LORAJOB_S3_RETRIES` overrides the retry count (tests of an unreachable endpoint)."""
        chosen = os.environ.get(pod.ENV_S3_ENDPOINT) or endpoint
        if not chosen:
            raise StorageError(
                "no S3 endpoint: set env S3_ENDPOINT or spec.output.endpoint", transient=False
            )
        credentials = env_credentials()
        if credentials is None:
            raise StorageError(
                f"no S3 credentials for {chosen}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(from spec.output.credentialsSecret)",
                transient=False,
            )
        retries_env = os.environ.get("LORAJOB_S3_RETRIES", "4")
        try:
            retries = int(retries_env)
        except ValueError:
            raise StorageError(
                f"LORAJOB_S3_RETRIES must be an integer (got {retries_env!r})", transient=False
            ) from None
        access, secret = credentials
        return cls(chosen, access, secret, os.environ.get(pod.ENV_AWS_REGION), retries=retries)

    # ----------------------------------------------------------------------------- internals

    def _call(self, what: str, loc: S3Location, fn: Callable[[], T]) -> T:
        """Run `fn` with retries on transient errors; wrap every failure in a StorageError."""
        last: StorageError | None = None
        for attempt in range(self.retries):
            try:
                return fn()
            except S3Error as exc:
                transient = exc.code not in PERMANENT_CODES
                detail = f"{exc.code}: {exc.message}"
            except FileNotFoundError as exc:
                transient = False
                detail = f"local file missing: {exc.filename}"
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno in LOCAL_DISK_FULL:
                    raise  # this machine's disk, not S3: the trainer names the request to raise
                transient = True
                detail = f"{type(exc).__name__}: {_short(exc)}"
            except ValueError as exc:  # minio's own argument checks (bucket name, ...)
                transient = False
                detail = str(exc)
            last = StorageError(
                f"S3 {what} failed for s3://{loc.bucket}/{loc.key} at {self.endpoint}: {detail}",
                transient=transient,
            )
            if not transient:
                break
            if attempt + 1 < self.retries:
                time.sleep(self.backoff_s * (2**attempt))
        assert last is not None
        if last.transient and self.retries > 1:
            last = StorageError(f"{last} (after {self.retries} attempts)", transient=True)
        raise last

    # ---------------------------------------------------------------------------- objects

    def put_bytes(
        self, loc: S3Location, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self._call(
            "put",
            loc,
            lambda: self.client.put_object(
                loc.bucket, loc.key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def get_bytes(self, loc: S3Location) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

        def fetch() -> bytes | None:
            try:
                response = self.client.get_object(loc.bucket, loc.key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    return None
                raise
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return self._call("get", loc, fetch)

    def put_json(self, loc: S3Location, obj: Any) -> None:
        data = json.dumps(obj, indent=2, sort_keys=True).encode()
        self.put_bytes(loc, data, content_type="application/json")

    def get_json(self, loc: S3Location) -> Any | None:
        """Parsed JSON, or None if the object is missing; a corrupt object is a StorageError."""
        data = self.get_bytes(loc)
        if data is None:
            return None
        where = f"s3://{loc.bucket}/{loc.key}"
        try:  # tenants write these objects: a [[[...]]] one must not raise RecursionError
            return load_json(data.decode("utf-8"), where)
        except ValueError as exc:
            raise StorageError(
                f"s3://{loc.bucket}/{loc.key} at {self.endpoint} is not valid JSON: {exc}",
                transient=False,
            ) from None

    def create_json_if_absent(self, loc: S3Location, obj: Any) -> bool:
        """Write `obj` only where no object exists yet; False when one does (nothing written).

        Sends `If-None-Match: *`, which AWS S3 (since 2024), current MinIO and moto honour
        atomically (412 when the key exists). minio-py's public put_object would turn that
        header into user metadata, so this uses the single-part upload it calls itself. A
        server that ignores the header overwrites instead: callers read the object back to see
        who won (the race is left open only on such servers, between two writers starting
        within the same moment)."""
        data = json.dumps(obj, indent=2, sort_keys=True).encode()
        headers: DictType = {"Content-Type": "application/json", "If-None-Match": "*"}

        def create() -> bool:
            try:
                self.client._put_object(loc.bucket, loc.key, data, headers)
            except S3Error as exc:
                if exc.code == "PreconditionFailed":
                    return False
                raise
            return True

        return self._call("create", loc, create)

    def upload_file(self, loc: S3Location, path: str | Path) -> int:
        """Upload one file (multipart above 16 MiB), retried; returns its size in bytes."""
        size = Path(path).stat().st_size
        self._call(
            "upload",
            loc,
            lambda: self.client.fput_object(
                loc.bucket, loc.key, str(path), part_size=MULTIPART_PART_SIZE
            ),
        )
        return size

    def download_file(self, loc: S3Location, path: str | Path) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._call(
            "download", loc, lambda: self.client.fget_object(loc.bucket, loc.key, str(target))
        )

    def exists(self, loc: S3Location) -> bool:
        """Whether the object is there. A HEAD answers a bare 404 for a missing key and a
        missing bucket alike (minio reads both as NoSuchKey): a missing bucket is a permanent
        StorageError naming it, never False ("no checkpoint yet")."""

        def stat() -> bool:
            try:
                self.client.stat_object(loc.bucket, loc.key)
            except S3Error as exc:
                if exc.code not in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    raise
                if self.client.bucket_exists(loc.bucket):
                    return False
                raise StorageError(
                    f"S3 stat failed for s3://{loc.bucket}/{loc.key} at {self.endpoint}: "
                    f"NoSuchBucket: bucket {loc.bucket} does not exist",
                    transient=False,
                ) from None
            return True

        return self._call("stat", loc, stat)

    def etag_and_version(self, loc: S3Location) -> tuple[str | None, str | None] | None:
        """The object's ETag and version id (a HEAD, no body): what tells a replaced dataset
        from the one a run trained on. None when it does not exist."""

        def stat() -> tuple[str | None, str | None] | None:
            try:
                found = self.client.stat_object(loc.bucket, loc.key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    return None
                raise
            return found.etag, found.version_id

        return self._call("stat", loc, stat)

    def list(self, loc: S3Location, recursive: bool = False) -> list[str]:
        """Names under the prefix `loc`, relative to it, sorted. Without `recursive`, "folders"
        come back with a trailing slash (e.g. 'checkpoint-10/'); with it, full relative keys."""
        prefix = f"{loc.key}/" if loc.key else ""

        def names() -> list[str]:
            objects = self.client.list_objects(loc.bucket, prefix=prefix, recursive=recursive)
            return sorted(str(o.object_name)[len(prefix) :] for o in objects if o.object_name)

        return self._call("list", loc, names)

    def list_sizes(self, loc: S3Location) -> dict[str, int]:
        """{relative key: size in bytes} of every object under the prefix `loc`."""
        prefix = f"{loc.key}/" if loc.key else ""

        def sizes() -> dict[str, int]:
            objects = self.client.list_objects(loc.bucket, prefix=prefix, recursive=True)
            return {
                str(o.object_name)[len(prefix) :]: int(o.size or 0)
                for o in objects
                if o.object_name
            }

        return self._call("list", loc, sizes)

    def download_prefix(self, loc: S3Location, dest_dir: str | Path) -> builtins.list[Path]:
        """Copy every object under `loc` into `dest_dir`, keeping relative paths. Every key is
        checked before anything is written: one that is not a plain relative path (it could
        land outside `dest_dir`) refuses the whole prefix, with nothing downloaded."""
        dest = Path(dest_dir)
        names = [n for n in self.list(loc, recursive=True) if n and not n.endswith("/")]
        targets = [confined_path(dest, name, loc) for name in names]
        for name, target in zip(names, targets, strict=True):
            self.download_file(loc.child(name), target)
        return targets

    def upload_dir(self, loc: S3Location, src_dir: str | Path) -> dict[str, int]:
        """Upload every file below `src_dir` under `loc`; returns {relative path: size}."""
        src = Path(src_dir)
        sizes = {}
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = path.relative_to(src).as_posix()
            sizes[rel] = self.upload_file(loc.child(rel), path)
        return sizes

    def delete_prefix(self, loc: S3Location) -> int:
        """Delete every object under `loc`; returns how many were deleted."""
        keys = [loc.child(name).key for name in self.list(loc, recursive=True) if name]

        def delete() -> int:
            errors = list(self.client.remove_objects(loc.bucket, (DeleteObject(k) for k in keys)))
            if errors:
                first = errors[0]
                raise StorageError(
                    f"S3 delete failed for s3://{loc.bucket}/{first.name} at {self.endpoint}: "
                    f"{first.code}: {first.message}",
                    transient=True,
                )
            return len(keys)

        return self._call("delete", loc, delete) if keys else 0

    def delete(self, loc: S3Location) -> None:
        """Delete the one object at `loc` (missing is fine: S3 deletes are idempotent)."""
        self._call("delete", loc, lambda: self.client.remove_object(loc.bucket, loc.key))

    def ensure_bucket(self, name: str) -> None:
        loc = S3Location(name, "")

        def make() -> None:
            if not self.client.bucket_exists(name):
                try:
                    self.client.make_bucket(name)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        self._call("create bucket", loc, make)

    # ------------------------------------------------------------------------- run layout

    def complete_checkpoints(self, run: S3Location) -> builtins.list[int]:
        """Steps of the run's checkpoints whose MANIFEST.json exists (= fully uploaded), sorted."""
        steps = []
        for name in self.list(run):
            step = checkpoint_step(name)
            if step is not None and self.exists(run.child(name, MANIFEST)):
                steps.append(step)
        return sorted(steps)

    def job_owner(self, run: S3Location) -> JobOwner | None:
        """Who claimed the job folder holding `run` (its OWNER.json), None when nobody has."""
        marker = owner_marker(run)
        raw = self.get_json(marker)
        if raw is None:
            return None
        try:
            return JobOwner.model_validate(raw)
        except ValidationError:
            raise StorageError(
                f"{marker.uri} at {self.endpoint} is not an owner marker "
                "(expected namespace, name and uid)",
                transient=False,
            ) from None

    def claim_job(self, run: S3Location, owner: JobOwner) -> JobOwner:
        """Claim the job folder holding `run` for `owner` unless someone has; returns whoever
        owns it now (the caller compares). Written once and never rewritten."""
        current = self.job_owner(run)
        if current is None:
            self.create_json_if_absent(owner_marker(run), owner.model_dump())
            current = self.job_owner(run)  # read back: on a server without If-None-Match
        if current is None:  # the marker was deleted between our write and our read
            raise StorageError(
                f"{owner_marker(run).uri} vanished after it was written", transient=True
            )
        return current


def unsafe_key_reason(name: str) -> str | None:
    """Why the object key `name` (relative to a prefix) cannot be a path below a local folder,
    or None when it can. The same key means the same file on every platform: no absolute
    paths, no `..`, `.` or empty segments (`a//b` would merge with `a/b`), no backslashes (a
    separator on Windows, and never in keys this project writes), no NUL bytes."""
    if not name:
        return "the key is empty"
    if "\\" in name:
        return "it contains a backslash"
    if "\x00" in name:
        return "it contains a NUL byte"
    if name.startswith("/"):
        return "it is an absolute path"
    for segment in name.split("/"):
        if segment == "":
            return "it has an empty path segment"
        if segment in (".", ".."):
            return f"it has {segment!r} as a path segment"
    return None


def confined_path(dest: Path, name: str, loc: S3Location) -> Path:
    """`dest / name` for an object `name` found under the prefix `loc`, refused (a permanent
    StorageError naming the key and the prefix) when the key could write outside `dest`."""
    reason = unsafe_key_reason(name)
    if reason is None:
        target = dest / name
        if dest.resolve() in target.resolve().parents:  # a symlink inside dest pointing out
            return target
        reason = "it resolves outside the destination folder"
    raise StorageError(
        f"refusing to download key {name!r} under prefix {loc.uri}: {reason}; object keys "
        "below a prefix must be plain relative paths",
        transient=False,
    )


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:297] + "..."
