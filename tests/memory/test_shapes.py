"""The precomputed architectures of the shipped configs (memory/shapes.json): equal to a fresh
meta-device count, and the reason planning a shipped model never imports torch."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lora_operator.memory import ModelConfig, architecture_of
from lora_operator.memory.architecture import Architecture, count_architecture
from lora_operator.memory.model_config import shipped_config
from lora_operator.memory.registry import MODELS
from lora_operator.memory.shapes import (
    SHAPES_FILE,
    count_shipped,
    document,
    encode,
    precomputed_architecture,
    render,
)

ROOT = Path(__file__).parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
STEMS = sorted(set(MODELS.values()))


@pytest.fixture(scope="module")
def fresh() -> dict[str, tuple[dict[str, Any], Architecture]]:
    """Every shipped config counted on the meta device now (torch + transformers)."""
    return count_shipped()


def test_the_shapes_file_has_not_drifted_from_a_fresh_count(
    fresh: dict[str, tuple[dict[str, Any], Architecture]],
) -> None:
    assert SHAPES_FILE.read_text() == render(document(fresh)), (
        f"{SHAPES_FILE.name} is out of date: run `make shapes`"
    )


@pytest.mark.parametrize("stem", STEMS)
def test_each_precomputed_architecture_equals_the_meta_device_count(
    stem: str, fresh: dict[str, tuple[dict[str, Any], Architecture]]
) -> None:
    config = shipped_config(stem)
    counted = dataclasses.replace(fresh[stem][1], source=config.source)
    assert precomputed_architecture(config) == counted
    assert architecture_of(config) == counted


def test_a_local_copy_of_a_shipped_config_is_answered_from_the_file(tmp_path: Path) -> None:
    data = shipped_config("meta-llama/Llama-3.1-8B").data
    reordered = dict(reversed(list(data.items())))  # key order does not change the content
    copy = ModelConfig(str(tmp_path / "config.json"), json.loads(json.dumps(reordered)))
    arch = precomputed_architecture(copy)
    assert arch is not None
    assert arch.total_params == 8_030_261_248
    assert arch.source == copy.source  # messages name where the config came from


def test_a_custom_config_is_counted_on_the_meta_device(tiny_llama: dict[str, Any]) -> None:
    config = ModelConfig("custom tiny", tiny_llama)
    assert precomputed_architecture(config) is None
    assert architecture_of(config) == count_architecture("custom tiny", tiny_llama)


def test_an_edited_shipped_config_is_not_taken_for_the_shipped_one() -> None:
    data = {**shipped_config("meta-llama/Llama-3.1-8B").data, "num_hidden_layers": 2}
    assert precomputed_architecture(ModelConfig("edited", data)) is None


def test_encoding_keeps_expert_weights_and_the_head(
    fresh: dict[str, tuple[dict[str, Any], Architecture]],
) -> None:
    mixtral = encode(fresh["mixtral-8x7b"][1])
    assert any(row[3] == 8 for row in mixtral["linears"])  # fused experts keep their copies
    assert mixtral["head"][0] == "lm_head"
    assert "source" not in mixtral


# Plans every example (all name shipped models) as `lorajob plan` does and lists the heavy
# imports; then imports the operator's reconciler and plans as its plan step does (a resolved
# shipped config), which may load minio (S3 progress) but not torch or transformers.
NO_TORCH_SCRIPT = """
import contextlib, io, sys
from lora_operator.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    codes = [main(["plan", path]) for path in sys.argv[1:]]
print(codes, sorted(m for m in ("torch", "transformers", "minio") if m in sys.modules))
from lora_contract.types import LoRAJobSpec
from lora_operator.controller import reconcile
from lora_operator.memory.model_config import shipped_config
spec = LoRAJobSpec.model_validate({
    "baseModel": {"name": "meta-llama/Llama-3.1-8B", "source": "hf://meta-llama/Llama-3.1-8B"},
    "dataset": {"source": "s3://data/train.jsonl", "format": "chat"},
    "output": {"bucket": "results"},
})
reconcile.plan_job(spec, None, shipped_config(spec.base_model.name))
print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""


def test_planning_shipped_models_imports_neither_torch_nor_transformers() -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, *map(str, EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{[0] * len(EXAMPLES)} []", "[]"]
