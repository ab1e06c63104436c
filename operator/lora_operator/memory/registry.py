"""Model names (as users write them in spec.baseModel.name) to the config.json files we ship."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).with_name("configs")

# Canonical hub id -> shipped file stem. Instruct/chat variants share the base architecture.
MODELS: dict[str, str] = {
    "meta-llama/Llama-3.2-1B": "llama-3.2-1b",
    "meta-llama/Llama-3.2-3B": "llama-3.2-3b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3-8B": "llama-3-8b",
    "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Meta-Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Llama-3.3-70B": "llama-3.1-70b",
    "meta-llama/Meta-Llama-3-70B": "llama-3-70b",
    "meta-llama/Llama-3.1-405B": "llama-3.1-405b",
    "meta-llama/Meta-Llama-3.1-405B": "llama-3.1-405b",
    "mistralai/Mistral-7B-v0.1": "mistral-7b-v0.1",
    "mistralai/Mistral-7B-v0.3": "mistral-7b-v0.3",
    "mistralai/Mixtral-8x7B-v0.1": "mixtral-8x7b",
    "Qwen/Qwen2.5-0.5B": "qwen2.5-0.5b",
    "Qwen/Qwen2.5-1.5B": "qwen2.5-1.5b",
    "Qwen/Qwen2.5-7B": "qwen2.5-7b",
    "Qwen/Qwen2.5-14B": "qwen2.5-14b",
    "Qwen/Qwen2.5-32B": "qwen2.5-32b",
    "Qwen/Qwen2.5-72B": "qwen2.5-72b",
    "google/gemma-2-2b": "gemma-2-2b",
    "google/gemma-2-9b": "gemma-2-9b",
    "google/gemma-2-27b": "gemma-2-27b",
    "microsoft/Phi-3-mini-4k-instruct": "phi-3-mini-4k",
    "microsoft/Phi-3-medium-4k-instruct": "phi-3-medium-4k",
    # The 2-layer random-init model `make demo` and the tests train (local/tinymodel.py).
    "lora-operator/tiny-llama": "tiny-llama",
}

VARIANT_SUFFIXES = ("-Instruct", "-instruct", "-it", "-Chat", "-chat")


def _normalise(name: str) -> str:
    return name.strip().removeprefix("hf://").lower()


def _index() -> dict[str, str]:
    index: dict[str, str] = {}
    for model_id, stem in MODELS.items():
        index[_normalise(model_id)] = stem
        index[_normalise(model_id.split("/", 1)[1])] = stem  # without the org
        index[stem] = stem
    return index


_INDEX = _index()


def shipped_config_path(name: str) -> Path | None:
    """The shipped config.json for a model id (org optional, -Instruct/-it variants too)."""
    key = _normalise(name)
    candidates = [key] + [
        key[: -len(s)] for s in VARIANT_SUFFIXES if key.endswith(s.lower()) and len(key) > len(s)
    ]
    for candidate in candidates:
        stem = _INDEX.get(candidate)
        if stem:
            return CONFIG_DIR / f"{stem}.json"
    return None


def shipped_names() -> list[str]:
    return list(MODELS)
