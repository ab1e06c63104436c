"""Spec hash (retrain decisions), S3 layout, loading and the validate command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from apidata import ROOT

from lora_contract.layout import checkpoint_name, checkpoint_step
from lora_contract.types import LoRAJobSpec
from lora_operator.api import S3Location, run_location, training_spec_hash
from lora_operator.api.hashing import (
    UnclassifiedFieldError,
    retrain_classification,
    wire_spec_hash,
)
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


# Pinned: these hashes are stored in every run's status. If the hashing changes them, every
# existing LoRAJob retrains after the operator is upgraded, so a change here needs a migration.
EXAMPLE_HASHES = {
    "lora-llama3-70b-zero3.yaml": "32bd94fe6057",
    "lora-llama3-8b-a100.yaml": "2c9294b99ee1",
    "qlora-llama3-8b-24gb.yaml": "9d14f74e3f54",
    "tiny-cpu.yaml": "bb91a84c8b8f",
}
KEEPS_RUN_FIELDS = {
    "queueName",
    "serving",
    "export",  # a merged-model export never retrains
    "suspend",
    "trainerImage",
    "ttlSecondsAfterFinished",
    "resources.gpuResourceName",
    "resources.limits",
    "resources.nodeSelector",
    "resources.priorityClassName",
    "resources.requests",
    "resources.tolerations",
    "training.chunkedLoss",  # the same loss to float rounding: memory, not maths
    "training.activationOffloading",  # where saved tensors live, not what they are
    "dataset.watch",  # a replaced object starts a run by itself (trigger DataChanged)
    "schedule",  # a tick starts a run by itself (trigger Schedule)
}


@pytest.mark.parametrize(("example", "expected"), sorted(EXAMPLE_HASHES.items()))
def test_spec_hash_is_stable_across_releases(example: str, expected: str) -> None:
    (job,) = load_lorajobs(ROOT / "examples" / example)
    assert training_spec_hash(job.spec) == expected


def test_every_spec_field_is_classified_and_the_list_is_deliberate() -> None:
    classification = retrain_classification()
    assert {path for path, retrains in classification.items() if not retrains} == KEEPS_RUN_FIELDS
    for section in ("baseModel", "quantization", "lora", "distributed", "output"):
        assert classification[section] is True
    assert classification["dataset.source"] and classification["dataset.revision"]
    assert classification["training.learningRate"] and classification["resources.gpuType"]


def test_a_field_without_classification_is_an_error() -> None:
    class Sloppy(LoRAJobSpec):
        new_knob: int = 0

    with pytest.raises(UnclassifiedFieldError, match=r"Sloppy\.new_knob"):
        retrain_classification(Sloppy)


@pytest.mark.parametrize("path", sorted(retrain_classification()))
def test_hash_changes_exactly_for_retraining_fields(minimal: dict[str, Any], path: str) -> None:
    """Each classified field, changed on its own in the wire form: the hash moves iff it is a
    retraining field."""
    wire = _spec(minimal).model_dump(by_alias=True, mode="json")
    before = wire_spec_hash(wire)
    *parents, leaf = path.split(".")
    node = wire
    for key in parents:
        node = node[key]
    node[leaf] = {"changed": [node.get(leaf)]}
    assert (wire_spec_hash(wire) != before) is retrain_classification()[path]


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
    assert run_location(spec.output, "ns", "job", "r1").uri == "s3://adapters/lorajobs/ns/job/r1"


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
