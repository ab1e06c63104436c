"""The demo's files: the LoRAJob manifest it applies, the tiny model and data on a local "PVC",
the operator config and the S3 credentials Secret, and the real `kubectl` that applies them.

Why a separate module: everything here is plain file and process plumbing that must fail with a
clear message (missing kubectl, a workdir that is not the demo's), never a traceback.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lora_contract.types import KIND, DatasetFormat, LoRAJob
from lora_operator.api.loading import SpecError, load_documents, parse_lorajob
from lora_operator.api.operator_config import CREDENTIALS_OPT_IN_LABEL
from lora_operator.api.validate_cmd import validate_file

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "tiny-cpu.yaml"
CRD = REPO / "crds" / "finetune.lora-operator.io_lorajobs.yaml"
MARKER = ".lorajob-demo"


class DemoError(RuntimeError):
    """A problem the user can fix; printed as one clear message (exit code 1)."""


def find_kubectl() -> Path:
    """The real kubectl: `.tools/bin` of this checkout first (what `make setup` installs)."""
    local = REPO / ".tools" / "bin" / "kubectl"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("kubectl")
    if found:
        return Path(found)
    raise DemoError("kubectl not found (.tools/bin/kubectl or on PATH): run `make setup` first")


def prepare_workdir(workdir: Path) -> None:
    """Start from an empty folder; refuse to wipe a folder the demo did not create."""
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise DemoError(
            f"{workdir} is not empty and was not created by `lorajob-demo`; "
            "choose another --workdir"
        )
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("created by lorajob-demo; removed by the next run\n")


def demo_manifest(example: Path, steps: int | None) -> dict[str, Any]:
    """The example LoRAJob, with `--steps` applied (intervals scaled so a checkpoint happens
    before the end, which `--kill-a-pod` needs)."""
    try:
        docs = [d for d in load_documents(example) if isinstance(d, dict) and d.get("kind") == KIND]
    except SpecError as exc:
        raise DemoError(str(exc)) from None
    if not docs:
        raise DemoError(f"{example}: no LoRAJob found in the file")
    manifest: dict[str, Any] = docs[0]
    if steps is not None:
        training = manifest["spec"].setdefault("training", {})
        training["maxSteps"] = steps
        for key, default in (("checkpointInterval", 10), ("evalInterval", 10)):
            training[key] = max(1, min(int(training.get(key, default)), steps // 2))
        training["logInterval"] = max(1, min(int(training.get("logInterval", 2)), steps // 4))
    return manifest


def write_manifest(manifest: dict[str, Any], path: Path) -> LoRAJob:
    """Write and validate (API types + the CRD's schema and CEL rules): the emulator has no
    admission, so this is the check a real API server would do."""
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    problems = validate_file(str(path))
    if problems:
        raise DemoError("the demo LoRAJob is invalid:\n  " + "\n  ".join(problems))
    return parse_lorajob(manifest, str(path))


def pvc_path(pvc_root: Path, uri: str) -> Path:
    """`pvc://claim/path` -> <pvc_root>/claim/path (the executor mounts claims from there)."""
    if not uri.startswith("pvc://"):
        raise DemoError(f"the demo needs pvc:// sources for model and data (got {uri!r})")
    return pvc_root / uri[len("pvc://") :]


def write_model_and_data(job: LoRAJob, pvc_root: Path) -> None:
    """The tiny random-init Llama + tokenizer and a learnable dataset, where the job reads them."""
    from ..tinymodel import build_tiny_model, rows_for_format, write_jsonl

    spec = job.spec
    build_tiny_model(pvc_path(pvc_root, spec.base_model.source))
    rows = rows_for_format(DatasetFormat(spec.dataset.format), spec.dataset.num_examples or 400)
    write_jsonl(pvc_path(pvc_root, spec.dataset.source), rows)


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def secret_manifest(job: LoRAJob, access_key: str, secret_key: str) -> dict[str, Any]:
    ref = job.spec.output.credentials_secret
    if ref is None:
        raise DemoError("the demo LoRAJob must name spec.output.credentialsSecret")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": ref.name,
            "namespace": job.metadata.namespace or "default",
            # the platform policy's opt-in: usable as a LoRAJob's credentialsSecret
            "labels": {CREDENTIALS_OPT_IN_LABEL: "true"},
        },
        "type": "Opaque",
        "data": {ref.access_key_key: _b64(access_key), ref.secret_key_key: _b64(secret_key)},
    }


def operator_config(endpoint: str, secret: str, progress_seconds: float) -> dict[str, Any]:
    return {
        "trainerImage": "lora-operator/trainer:local",
        "s3": {"endpoint": endpoint, "credentialsSecret": {"name": secret}},
        "progressIntervalSeconds": progress_seconds,
        "backoffLimitPerIndex": 4,
    }


@dataclass
class Kubectl:
    """The real kubectl binary against the emulator's kubeconfig.

    `--validate=false`: the emulator serves no OpenAPI document (the demo validated the
    manifest against the CRD itself); the discovery cache stays inside the workdir.
    """

    binary: Path
    kubeconfig: Path
    cache_dir: Path

    def run(self, *args: str, stdin: str | None = None) -> str:
        command = [str(self.binary), f"--kubeconfig={self.kubeconfig}"]
        command += [f"--cache-dir={self.cache_dir}", *args]
        try:
            result = subprocess.run(
                command, input=stdin, capture_output=True, text=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DemoError(f"kubectl {' '.join(args)}: {exc}") from None
        if result.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def apply_file(self, path: Path) -> str:
        return self.run("apply", "--validate=false", "-f", str(path))

    def apply_object(self, obj: dict[str, Any]) -> str:
        return self.run("apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(obj))
