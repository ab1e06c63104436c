"""Run layout in the bucket: keys never gain a leading, trailing or doubled slash however the
prefix, URI or parts are written, names are kept whole (whatever letters they start or end
with), and only `checkpoint-<digits>` folders count as checkpoints."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from lora_contract.errors import describe_validation_error
from lora_contract.layout import (
    OWNER_FILE,
    S3Location,
    checkpoint_name,
    checkpoint_step,
    job_location,
    owner_marker,
    run_location,
)
from lora_contract.types import OutputSpec


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://adapters", "adapters", ""),
        ("s3://adapters/", "adapters", ""),
        ("s3://adapters/runs/job/r1", "adapters", "runs/job/r1"),
        ("s3://adapters/runs/job/r1/", "adapters", "runs/job/r1"),
        ("s3://adapters//runs/INDEX//", "adapters", "runs/INDEX"),
        ("s3://adapters/X/run-X", "adapters", "X/run-X"),
    ],
)
def test_parse(uri: str, bucket: str, key: str) -> None:
    loc = S3Location.parse(uri)
    assert (loc.bucket, loc.key) == (bucket, key)
    assert loc.uri == (f"s3://{bucket}/{key}" if key else f"s3://{bucket}")


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("s3:///runs/job", "s3 URI has no bucket: 's3:///runs/job'"),
        ("s3://", "s3 URI has no bucket: 's3://'"),
        ("https://minio/adapters/runs", "not an s3:// URI: 'https://minio/adapters/runs'"),
    ],
)
def test_parse_names_what_is_wrong(uri: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        S3Location.parse(uri)
    assert str(info.value) == problem


@pytest.mark.parametrize(
    ("key", "parts", "expected"),
    [
        ("runs", ("job", "r1"), "runs/job/r1"),
        ("runs", ("/job/", "r1/"), "runs/job/r1"),
        ("runs", ("job/r1/", "/checkpoint-8"), "runs/job/r1/checkpoint-8"),
        ("", ("/runs/",), "runs"),
        ("runs", ("", "/", "//", "r1"), "runs/r1"),
        ("runs", ("X", "INDEX"), "runs/X/INDEX"),
        ("runs", (), "runs"),
    ],
)
def test_child(key: str, parts: tuple[str, ...], expected: str) -> None:
    child = S3Location("adapters", key).child(*parts)
    assert child == S3Location("adapters", expected)
    assert not child.key.startswith("/") and not child.key.endswith("/")
    assert "//" not in child.key


@pytest.mark.parametrize(
    ("prefix", "key"),
    [
        ("lorajobs", "lorajobs/ns/job/r1"),
        ("/lorajobs/", "lorajobs/ns/job/r1"),
        ("team/X", "team/X/ns/job/r1"),
        ("X-team/lorajobs/", "X-team/lorajobs/ns/job/r1"),
        ("", "ns/job/r1"),
        ("/", "ns/job/r1"),
    ],
)
def test_run_location(prefix: str, key: str) -> None:
    """The layout normalises slashes itself, whatever the types let through (a leading slash is
    refused by OutputSpec's pattern, so those cases are built without validation)."""
    output = OutputSpec.model_construct(bucket="adapters", prefix=prefix)
    assert run_location(output, "ns", "job", "r1") == S3Location("adapters", key)


JOBS = [("default", "shared-name"), ("team-b", "shared-name"), ("team-b", "other"), ("x", "y")]


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(JOBS, 2)))
def test_jobs_of_one_prefix_never_share_or_nest_folders(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    """The reported attack: default/shared-name and team-b/shared-name both got runs/shared-name/r1.
    With the namespace in the path, two LoRAJobs' folders (and so their runs, progress and
    owner markers) are distinct and neither lies inside the other."""
    output = OutputSpec(bucket="adapters", prefix="runs")
    a, b = job_location(output, *first), job_location(output, *second)
    assert a != b
    assert not a.key.startswith(b.key + "/") and not b.key.startswith(a.key + "/")
    assert run_location(output, *first, "r1") != run_location(output, *second, "r1")
    assert owner_marker(run_location(output, *first, "r1")) != owner_marker(
        run_location(output, *second, "r1")
    )


def test_owner_marker_is_per_job_not_per_run() -> None:
    """Every run of a LoRAJob shares one marker at its job folder: a recreated job of the same
    name starts at r1 again and must meet the old object's marker there."""
    output = OutputSpec(bucket="adapters", prefix="runs")
    marker = job_location(output, "team-b", "shared-name").child(OWNER_FILE)
    assert marker == S3Location("adapters", "runs/team-b/shared-name/OWNER.json")
    for run_id in ("r1", "r2"):
        assert owner_marker(run_location(output, "team-b", "shared-name", run_id)) == marker
    # A run recorded before the namespace was in the path keeps its URI; its marker is at its
    # own (old) job folder.
    old = S3Location.parse("s3://adapters/runs/shared-name/r1")
    assert owner_marker(old) == S3Location("adapters", "runs/shared-name/OWNER.json")


@pytest.mark.parametrize(("key", "parent"), [("a/b/c", "a/b"), ("a", ""), ("", "")])
def test_parent(key: str, parent: str) -> None:
    assert S3Location("adapters", key).parent == S3Location("adapters", parent)


@pytest.mark.parametrize("prefix", ["../other-team", "a/../b", "/abs", "a/..", ".."])
def test_prefix_cannot_leave_the_bucket_area(prefix: str) -> None:
    with pytest.raises(ValidationError) as info:
        OutputSpec.model_validate({"bucket": "adapters", "prefix": prefix})
    (problem,) = describe_validation_error(info.value)
    assert problem.startswith("prefix: must be a relative key prefix") and "'..'" in problem


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("checkpoint-8", 8),
        ("checkpoint-8/", 8),
        ("/checkpoint-8/", 8),
        ("runs/job/r1/checkpoint-120/", 120),
        ("s3://adapters/a/b/c/checkpoint-0", 0),
        (checkpoint_name(24), 24),
        ("checkpoint-8X", None),
        ("Xcheckpoint-8", None),
        ("checkpoint-8/X", None),
        ("checkpoint-", None),
        ("checkpoint-8.tmp", None),
        ("final/", None),
        ("", None),
    ],
)
def test_checkpoint_step(name: str, step: int | None) -> None:
    assert checkpoint_step(name) == step
