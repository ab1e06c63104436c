"""Where a run's artifacts live in the bucket; shared by the trainer (writer) and operator (reader).

s3://<bucket>/<prefix>/<job>/<run>/
    checkpoint-<step>/      adapter + resume state; MANIFEST.json written last = complete
    final/                  the final adapter (adapter_model.safetensors, adapter_config.json)
    metrics.jsonl           one JSON object per logged step
    progress.json           latest values (`Progress`), read by the operator
    loss.png                train/eval loss curve
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .types import OutputSpec

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "MANIFEST.json"
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"
PROGRESS_FILE = "progress.json"
LOSS_PLOT = "loss.png"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # no leading or trailing slash

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"s3 URI has no bucket: {uri!r}")
        return cls(bucket, key.strip("/"))

    def child(self, *parts: str) -> S3Location:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Location(self.bucket, key)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


def run_location(output: OutputSpec, job: str, run_id: str) -> S3Location:
    return S3Location(output.bucket, output.prefix.strip("/")).child(job, run_id)


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def checkpoint_step(name: str) -> int | None:
    match = CHECKPOINT_DIR.match(name.strip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None
