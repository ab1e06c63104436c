"""Shared test data for the API tests (importable: tests/api is on pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "apiVersion": "finetune.lora-operator.io/v1alpha1",
    "kind": "LoRAJob",
    "metadata": {"name": "minimal"},
    "spec": {
        "baseModel": {"name": "meta-llama/Llama-3.1-8B", "source": "hf://meta-llama/Llama-3.1-8B"},
        "dataset": {"source": "s3://data/train.jsonl", "format": "chat"},
        "output": {"bucket": "adapters"},
    },
}
