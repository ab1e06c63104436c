"""The shipped `lora-operator/tiny-llama` config is exactly the model the demo builds and trains."""

from __future__ import annotations

import json

from lora_devkit.tinymodel import build_tokenizer, tiny_llama_config
from lora_operator.memory.registry import shipped_config_path


def test_shipped_tiny_config_matches_the_built_model() -> None:
    path = shipped_config_path("lora-operator/tiny-llama")
    assert path is not None
    shipped = json.loads(path.read_text())
    built = tiny_llama_config(len(build_tokenizer())).to_dict()
    for key, value in shipped.items():
        if key != "architectures":
            assert built[key] == value, key
