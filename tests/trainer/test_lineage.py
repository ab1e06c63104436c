"""Lineage and the adapter's config: a real tiny training run writes adapter_config.json naming
the spec's base model (not the pod path), no modules_to_save, a Hugging Face model card and
MANIFEST.json's `lineage` with the run's facts; model_card's pieces on hand-made inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from lora_contract.layout import MANIFEST
from lora_contract.pod import ENV_TRAINER_IMAGE
from lora_contract.storage import S3Store
from lora_contract.types import RunLineage, TrainerConfig
from lora_trainer.model_card import (
    fix_adapter_config,
    lineage,
    record_in_manifest,
    render_card,
    write_lineage,
)


def config(**spec: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "jobName": "job",
            "runId": "r3",
            "outputUri": "s3://bkt/runs/default/job/r3",
            "specHash": "h3",
            "spec": {
                "baseModel": {"name": "acme/base-1b", "source": "pvc://m", "revision": "v7"},
                "dataset": {"source": "s3://data/train.jsonl", "format": "prompt-completion"},
                "resources": {"gpuType": "cpu"},
                "output": {"bucket": "bkt"},
                **spec,
            },
        }
    )


def test_fix_adapter_config_puts_the_hub_name_and_revision(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/scratch/base", "r": 8, "revision": None})
    )
    fix_adapter_config(tmp_path, config().spec)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written == {"base_model_name_or_path": "acme/base-1b", "r": 8, "revision": "v7"}


def test_fix_adapter_config_without_a_config_writes_nothing(tmp_path: Path) -> None:
    assert fix_adapter_config(tmp_path, config().spec) == {}
    assert list(tmp_path.iterdir()) == []


def test_lineage_facts_from_hand_made_files(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"abc")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    # dataset identity: sha256 over the files' sha256 digests, in the order read
    expected_dataset = hashlib.sha256(hashlib.sha256(b"abc").digest()).hexdigest()
    facts = lineage(config(), tmp_path, [data], 0.5, 0.4, 0.0, 5400.0, 4)
    assert facts["datasetSha256"] == expected_dataset
    assert facts["adapterSha256"] == hashlib.sha256(b"weights").hexdigest()
    assert facts["gpuHours"] == 6.0  # 1.5 h x 4 GPUs
    assert facts["startTime"] == "1970-01-01T00:00:00Z"
    assert facts["endTime"] == "1970-01-01T01:30:00Z"
    assert (facts["baseModel"], facts["baseModelRevision"]) == ("acme/base-1b", "v7")
    assert facts["datasetURI"] == "s3://data/train.jsonl"
    assert (facts["finalEvalLoss"], facts["bestEvalLoss"]) == (0.5, 0.4)
    assert facts["hyperparameters"]["lora"]["r"] == 16
    assert facts["runId"] == "r3"
    assert facts["specHash"] == "h3"
    # the operator reads the same keys with RunLineage
    seen = RunLineage.model_validate(facts)
    assert (seen.dataset_sha256, seen.gpu_hours) == (expected_dataset, 6.0)
    assert seen.best_eval_loss == 0.4


def test_write_lineage_takes_the_last_and_lowest_eval_loss(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    records = [{"step": 4, "eval_loss": 2.0}, {"step": 8, "eval_loss": 1.5}, {"loss": 1.0}]
    records.append({"step": 12, "eval_loss": 1.75})
    facts = write_lineage(config(), tmp_path, [tmp_path / "absent"], records, 0.0, 0)
    assert (facts["finalEvalLoss"], facts["bestEvalLoss"]) == (1.75, 1.5)
    assert facts["datasetSha256"] is None and facts["gpuHours"] == 0.0
    card = (tmp_path / "README.md").read_text()
    assert card.startswith('---\nbase_model: "acme/base-1b"\nlibrary_name: peft\n')
    assert "| bestEvalLoss | 1.5 |" in card


def test_card_leaves_unknown_facts_out() -> None:
    card = render_card({"baseModel": "m", "trainerImage": None, "gpuHours": 0.5})
    assert "trainerImage" not in card and "| gpuHours | 0.5 |" in card


def test_record_in_manifest_keeps_the_files(store: S3Store, make_run: Any) -> None:
    dest = make_run().location.child("final")
    store.put_json(dest.child(MANIFEST), {"files": {"a": 1}, "step": None})
    record_in_manifest(store, dest, {"baseModel": "m"})
    assert store.get_json(dest.child(MANIFEST)) == {
        "files": {"a": 1},
        "step": None,
        "lineage": {"baseModel": "m"},
    }


def test_a_real_run_writes_config_card_and_manifest_lineage(
    make_run: Any, store: S3Store, datasets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(spec={"training": {"maxSteps": 8, "evalInterval": 4, "checkpointInterval": 8}})
    monkeypatch.setenv(ENV_TRAINER_IMAGE, "registry.example/trainer@sha256:" + "0" * 64)
    code, message = run.run_here(monkeypatch)
    assert code == 0, message
    final = run.location.child("final")
    adapter_config = json.loads(store.get_bytes(final.child("adapter_config.json")) or b"")
    assert adapter_config["base_model_name_or_path"] == "tiny-llama"  # not the pvc path
    assert adapter_config["revision"] is None
    assert not adapter_config.get("modules_to_save")
    # the checkpoint's config too (it may become the final adapter)
    checkpoint_config = store.get_json(run.location.child("checkpoint-8/adapter_config.json"))
    assert checkpoint_config is not None
    assert checkpoint_config["base_model_name_or_path"] == "tiny-llama"

    manifest = store.get_json(final.child(MANIFEST))
    assert manifest is not None
    facts = manifest["lineage"]
    weights = store.get_bytes(final.child("adapter_model.safetensors")) or b""
    data = datasets["prompt-completion"].read_bytes()
    assert facts["adapterSha256"] == hashlib.sha256(weights).hexdigest()
    assert facts["datasetSha256"] == hashlib.sha256(hashlib.sha256(data).digest()).hexdigest()
    assert facts["datasetURI"] == str(datasets["prompt-completion"])
    assert facts["baseModel"] == "tiny-llama"
    assert facts["trainerImage"].endswith("@sha256:" + "0" * 64)
    assert facts["gpuHours"] == 0.0  # CPU
    assert facts["hyperparameters"]["training"]["maxSteps"] == 8
    assert facts["hyperparameters"]["lora"]["targetModules"] == ["all-linear"]
    lines = (store.get_bytes(run.location.child("metrics.jsonl")) or b"").decode().splitlines()
    metrics = [json.loads(line) for line in lines]
    evals = [m["eval_loss"] for m in metrics if m.get("eval_loss") is not None]
    assert len(evals) == 2 and facts["finalEvalLoss"] == evals[-1]
    assert facts["bestEvalLoss"] == min(evals)
    assert facts["startTime"] <= facts["endTime"]

    card = (store.get_bytes(final.child("README.md")) or b"").decode()
    assert card.startswith('---\nbase_model: "tiny-llama"\nlibrary_name: peft\n')
    assert f"| adapterSha256 | {facts['adapterSha256']} |" in card
