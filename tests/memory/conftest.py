"""Spec builders for the memory-model tests: small dicts merged over a valid default job."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lora_contract.types import LoRAJobSpec

BASE: dict[str, Any] = {
    "baseModel": {"name": "meta-llama/Llama-3.1-8B", "source": "hf://meta-llama/Llama-3.1-8B"},
    "dataset": {"source": "s3://data/train.jsonl", "format": "chat"},
    "output": {"bucket": "results"},
}

TINY_LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def make_spec(**sections: dict[str, Any]) -> LoRAJobSpec:
    """BASE with each given top-level section merged in (one level deep)."""
    data = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return LoRAJobSpec.model_validate(data)


@pytest.fixture
def spec() -> Callable[..., LoRAJobSpec]:
    return make_spec


@pytest.fixture
def tiny_llama() -> dict[str, Any]:
    return dict(TINY_LLAMA)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(TINY_LLAMA))
    return path


# The small Llama the hand-derived memory terms and placements are computed for
# (tests/memory/test_estimate_terms.py, test_placement_choices.py).
HAND_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


def save_random_llama(path: Path, config: dict[str, Any]) -> Path:
    """A random-init bf16 Llama from `config` saved at `path`, with the config as arch.json for
    the memory model (seeded: the same weights every time)."""
    import torch
    import transformers

    fields = {k: v for k, v in config.items() if k != "model_type"}
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields))
    model.to(torch.bfloat16).save_pretrained(path)
    (path / "arch.json").write_text(json.dumps(config))
    return path
