"""Spec hash (retrain decisions), S3 layout, loading and the validate command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from apidata import ROOT

from lora_operator.api import S3Location, run_location, training_spec_hash
from lora_operator.api.layout import checkpoint_name, checkpoint_step
from lora_operator.api.loading import SpecError, load_lorajobs, parse_lorajob


def _spec(obj: dict[str, Any]):  # type: ignore[no-untyped-def]
    return parse_lorajob(obj).spec


def test_hash_ignores_non_training_changes(minimal: dict[str, Any]) -> None:
    before = training_spec_hash(_spec(minimal))
    minimal["spec"]["serving"] = {"enabled": True, "replicas": 3}
    minimal["spec"]["suspend"] = True
    minimal["spec"]["queueName"] = "team-a"
    minimal["spec"]["resources"] = {"priorityClassName": "high", "nodeSelector": {"a": "b"}}
    assert training_spec_hash(_spec(minimal)) == before


@pytest.mark.parametrize(
    "section, change",
    [
        ("lora", {"r": 32}),
        ("training", {"learningRate": 1e-3}),
        ("dataset", {"maxSeqLength": 512}),
        ("quantization", {"mode": "nf4"}),
        ("resources", {"gpuType": "H100-80GB"}),
    ],
)
def test_hash_changes_with_training_changes(
    minimal: dict[str, Any], section: str, change: dict[str, Any]
) -> None:
    before = training_spec_hash(_spec(minimal))
    minimal["spec"].setdefault(section, {}).update(change)
    assert training_spec_hash(_spec(minimal)) != before


def test_hash_is_the_same_with_explicit_defaults(minimal: dict[str, Any]) -> None:
    before = training_spec_hash(_spec(minimal))
    minimal["spec"]["lora"] = {"r": 16, "alpha": 32}
    assert training_spec_hash(_spec(minimal)) == before


def test_s3_layout() -> None:
    loc = S3Location.parse("s3://bucket/a/b/")
    assert (loc.bucket, loc.key) == ("bucket", "a/b")
    assert loc.child("run-1", "final").uri == "s3://bucket/a/b/run-1/final"
    with pytest.raises(ValueError, match="not an s3"):
        S3Location.parse("http://x")
    assert checkpoint_step(checkpoint_name(120)) == 120
    assert checkpoint_step("s3://b/p/checkpoint-7/") == 7
    assert checkpoint_step("final") is None


def test_run_location(minimal: dict[str, Any]) -> None:
    spec = _spec(minimal)
    assert run_location(spec.output, "job", "r1").uri == "s3://adapters/lorajobs/job/r1"


def test_load_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(SpecError, match="malformed YAML at line"):
        load_lorajobs(bad)
    with pytest.raises(SpecError, match="file not found"):
        load_lorajobs(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(SpecError, match="no LoRAJob"):
        load_lorajobs(empty)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lora_operator.cli", *args], capture_output=True, text=True
    )


def test_validate_command(tmp_path: Path) -> None:
    good = _cli("validate", *map(str, sorted((ROOT / "examples").glob("*.yaml"))))
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: finetune.lora-operator.io/v1alpha1\nkind: LoRAJob\nmetadata: {name: b}\n"
        "spec:\n  baseModel: {name: m, source: 'ftp://x'}\n  lora: {r: 0}\n"
        "  dataset: {source: s3://b/k, format: chat}\n  output: {bucket: bkt}\n"
    )
    out = _cli("validate", str(bad))
    assert out.returncode == 2
    assert "spec.baseModel.source: must be hf://org/name" in out.stderr
    assert "spec.lora.r:" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_unknown_command() -> None:
    out = _cli("frobnicate")
    assert out.returncode == 2 and "unknown command" in out.stderr
    assert _cli("--help").returncode == 0
