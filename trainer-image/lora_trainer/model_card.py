"""What travels with the final adapter: an adapter_config.json that names the hub base model (not
the pod-local path it was loaded from, which vLLM and PEFT users cannot resolve), and the run's
lineage, as a Hugging Face model card (README.md) and in the final folder's MANIFEST.json,
where the operator copies it into status.runs[].lineage.

Lineage keys are RunLineage's wire names (lora_contract.types), so the operator reads the
manifest with the same type.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from lora_contract.layout import MANIFEST, S3Location
from lora_contract.pod import ENV_TRAINER_IMAGE
from lora_contract.storage import S3Store
from lora_contract.types import LoRAJobSpec, TrainerConfig

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CARD = "README.md"
TRAINER_IMAGE_ENV = ENV_TRAINER_IMAGE  # the pod's image reference (a digest when given as one)


def fix_adapter_config(folder: Path, spec: LoRAJobSpec) -> dict[str, Any]:
    """base_model_name_or_path and revision from the spec; returns the config written."""
    path = folder / ADAPTER_CONFIG
    if not path.is_file():  # nothing to fix; the operator's check then reads the spec
        return {}
    config: dict[str, Any] = json.loads(path.read_text())
    config["base_model_name_or_path"] = spec.base_model.name
    config["revision"] = spec.base_model.revision
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def lineage(
    config: TrainerConfig,
    folder: Path,
    dataset_files: list[Path],
    final_eval_loss: float | None,
    best_eval_loss: float | None,
    started: float,
    finished: float,
    gpus: int,
) -> dict[str, Any]:
    """The run's lineage (RunLineage's wire keys plus the run's identity and times)."""
    spec = config.spec
    dataset = hashlib.sha256()
    for path in dataset_files:  # the bytes the trainer read, train then eval
        dataset.update(bytes.fromhex(file_sha256(path)))
    weights = folder / ADAPTER_WEIGHTS
    return {
        "runId": config.run_id,
        "specHash": config.spec_hash,
        "baseModel": spec.base_model.name,
        "baseModelRevision": spec.base_model.revision,
        "datasetURI": spec.dataset.source,
        "datasetRevision": spec.dataset.revision,
        "datasetSha256": dataset.hexdigest() if dataset_files else None,
        "trainerImage": os.environ.get(TRAINER_IMAGE_ENV) or None,
        "hyperparameters": {"lora": spec.lora.to_wire(), "training": spec.training.to_wire()},
        "finalEvalLoss": final_eval_loss,
        "bestEvalLoss": best_eval_loss,
        "adapterSha256": file_sha256(weights) if weights.is_file() else None,
        "startTime": iso(started),
        "endTime": iso(finished),
        "gpuHours": round((finished - started) / 3600 * gpus, 6),
        "baseAdapterURI": config.base_adapter_uri,  # spec.baseAdapter: the run it continued
    }


def render_card(facts: dict[str, Any]) -> str:
    """A Hugging Face model card: YAML front matter the Hub reads, then the lineage table."""
    rows = "\n".join(
        f"| {key} | {json.dumps(value) if isinstance(value, dict) else value} |"
        for key, value in facts.items()
        if value is not None
    )
    return (
        "---\n"
        f"base_model: {json.dumps(facts['baseModel'])}\n"
        "library_name: peft\n"
        "tags:\n- lora\n- lora-operator\n"
        "---\n\n"
        f"# LoRA adapter for {facts['baseModel']}\n\n"
        "Trained by lora-operator. Lineage (the same as MANIFEST.json's `lineage`):\n\n"
        "| field | value |\n|---|---|\n"
        f"{rows}\n"
    )


def write_card(folder: Path, facts: dict[str, Any]) -> None:
    (folder / CARD).write_text(render_card(facts))


def record_in_manifest(store: S3Store, dest: S3Location, facts: dict[str, Any]) -> None:
    """Add `lineage` to the folder's MANIFEST.json (written by write_manifest, files listed)."""
    manifest = store.get_json(dest.child(MANIFEST))
    if not isinstance(manifest, dict):
        manifest = {}
    manifest["lineage"] = facts
    store.put_json(dest.child(MANIFEST), manifest)


def write_lineage(
    config: TrainerConfig,
    folder: Path,
    dataset_files: list[Path],
    records: list[dict[str, Any]],
    started: float,
    gpus: int,
) -> dict[str, Any]:
    """Rank 0, before the final upload: fix adapter_config.json, write README.md; returns the
    lineage for MANIFEST.json (`record_in_manifest` after the upload). `records`: the run's
    metric records (its eval losses); `gpus`: 0 on CPU."""
    fix_adapter_config(folder, config.spec)
    evals = [float(r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    facts = lineage(
        config,
        folder,
        [p for p in dataset_files if p.is_file()],
        evals[-1] if evals else None,
        min(evals) if evals else None,
        started,
        time.time(),
        gpus,
    )
    write_card(folder, facts)
    return facts
