"""Where a run's artifacts live in the bucket; shared by the trainer (writer) and operator (reader).

s3://<bucket>/<prefix>/<namespace>/<job>/
    OWNER.json              the LoRAJob (namespace, name, uid) these runs belong to
    <run>/
        checkpoint-<step>/  adapter + resume state; MANIFEST.json written last = complete
        final/              the final adapter (adapter_model.safetensors, adapter_config.json)
        metrics.jsonl       one JSON object per logged step
        progress.json       latest values (`Progress`), read by the operator
        loss.png            train/eval loss curve

The namespace is in the path so same-name jobs of two teams never share a folder. The owner
marker sits at the job level, not per run: a LoRAJob deleted and recreated under the same name
(a new uid) starts again at r1, and must not resume from or overwrite the old object's r1. The
trainer claims the marker before writing anything and refuses a job folder claimed by another
uid. The operator records each run's URI in its RunRecord when the run starts and reads that
back, so a later layout or spec change never moves a running job to another folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from .types import OutputSpec

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "MANIFEST.json"
FINAL_DIR = "final"
MERGED_DIR = "merged"  # spec.export.merged: base + adapter, sharded safetensors
METRICS_FILE = "metrics.jsonl"
PROGRESS_FILE = "progress.json"
LOSS_PLOT = "loss.png"
OWNER_FILE = "OWNER.json"


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
    def parent(self) -> S3Location:
        """The folder one level up (the bucket root stays the bucket root)."""
        return S3Location(self.bucket, self.key.rpartition("/")[0])

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


def job_location(output: OutputSpec, namespace: str, job: str) -> S3Location:
    """The LoRAJob's folder: its owner marker and all its runs."""
    return S3Location(output.bucket, output.prefix.strip("/")).child(namespace, job)


def run_location(output: OutputSpec, namespace: str, job: str, run_id: str) -> S3Location:
    """Where a new run writes. Only the operator calls this, once, when the run starts; everyone
    else reads the URI it recorded (RunRecord.output_uri, TrainerConfig.output_uri)."""
    return job_location(output, namespace, job).child(run_id)


def owner_marker(run: S3Location) -> S3Location:
    """The owner marker of the job folder that holds `run` (a run's parent is its job folder;
    runs recorded before the namespace was in the path get a marker at their old job folder)."""
    return run.parent.child(OWNER_FILE)


class JobOwner(BaseModel):
    """The LoRAJob a job folder belongs to, as written in its OWNER.json."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    name: str
    uid: str

    def describe(self) -> str:
        return f"LoRAJob {self.namespace}/{self.name} (uid {self.uid})"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def checkpoint_step(name: str) -> int | None:
    match = CHECKPOINT_DIR.match(name.strip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None
