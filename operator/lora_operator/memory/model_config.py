"""A model's config.json as the memory model takes it: already loaded, from wherever it came.

The planner does no IO of its own: the operator resolves a job's config without blocking its
event loop (`controller/model_config_source.py`), `lorajob plan` reads it on the user's machine
(`local_config.py`). Both parse and check the text here, and both know the shipped set.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_contract.bounded_parse import TooDeepError, load_json

from .errors import PlanningError
from .registry import shipped_config_path, shipped_names


@dataclass(frozen=True)
class ModelConfig:
    """A parsed config.json and where it came from (named in messages, part of the cache key)."""

    source: str
    data: dict[str, Any]


def parse_config(raw: bytes | str, where: str) -> dict[str, Any]:
    """The JSON object of a transformers config.json; `where` starts each error message. Nesting
    is bounded (lora_contract.bounded_parse): a deep document is refused, never a RecursionError."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = load_json(text, where)
    except TooDeepError as exc:
        raise PlanningError(str(exc)) from None
    except UnicodeDecodeError:
        raise PlanningError(f"{where} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PlanningError(f"{where} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise PlanningError(f"{where} must hold a JSON object (a model config.json)")
    if "model_type" not in data:
        raise PlanningError(f"{where} has no 'model_type': not a transformers config.json")
    return data


def shipped_config(name: str) -> ModelConfig:
    """The config.json the operator ships for spec.baseModel.name."""
    path = shipped_config_path(name)
    if path is None:
        raise PlanningError(
            f"spec.baseModel.name: unknown model {name!r}; shipped: {', '.join(shipped_names())}"
            " (or give the model's config.json in spec.baseModel.configMapRef or "
            "spec.baseModel.config)"
        )
    return ModelConfig(f"shipped {path.name}", shipped_data(path))


@functools.lru_cache(maxsize=64)
def shipped_data(path: Path) -> dict[str, Any]:
    """A shipped config.json, parsed once (callers must not change it)."""
    return parse_config(path.read_text(), f"shipped config {path.name}")
