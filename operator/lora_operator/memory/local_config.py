"""`lorajob plan`'s way to a config.json: on the user's own machine, where reading a local path or
fetching any URL is the user's business. The operator never comes here (it resolves configs in
`controller/model_config_source.py`: shipped, ConfigMap, allow-listed URL); both apply the same
size cap.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from lora_contract.types import BaseModelSpec

from ..api.operator_config import PlatformPolicy
from .architecture import Architecture, architecture_of
from .errors import PlanningError
from .model_config import ModelConfig, parse_config, shipped_config

_DEFAULTS = PlatformPolicy()
MAX_BYTES = _DEFAULTS.model_config_max_bytes
URL_TIMEOUT_SECONDS = _DEFAULTS.model_config_timeout_seconds
FIELD = "spec.baseModel.config"


def read_local_config(base_model: BaseModelSpec) -> ModelConfig:
    """The config.json for a spec's base model, read here (CLI, demo, tests)."""
    if base_model.config_map_ref is not None:
        raise PlanningError(
            "spec.baseModel.configMapRef: `lorajob plan` does not read the cluster; save the "
            "ConfigMap's config.json and pass it with `lorajob plan --model-config FILE`"
        )
    return read_config(base_model.name, base_model.config)


def read_config(name: str, config_ref: str | None) -> ModelConfig:
    """From `config_ref` (a URL or a file/folder path) if given, else the shipped set."""
    if not config_ref:
        return shipped_config(name)
    if config_ref.startswith(("http://", "https://")):
        return ModelConfig(config_ref, parse_config(_fetch(config_ref), f"{FIELD}: {config_ref!r}"))
    return _read_file(Path(config_ref).expanduser())


def load_architecture(name: str, config_ref: str | None) -> Architecture:
    """The architecture for a model name and optional config path/URL; cached (milliseconds)."""
    return architecture_of(read_config(name, config_ref))


def _read_file(path: Path) -> ModelConfig:
    if path.is_dir():
        path = path / "config.json"
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise PlanningError(f"{FIELD}: config file {str(path)!r} not found") from None
    except OSError as exc:
        raise PlanningError(f"{FIELD}: cannot read {str(path)!r}: {exc.strerror}") from None
    _check_size(raw, repr(str(path)))
    return ModelConfig(str(path.resolve()), parse_config(raw, f"{FIELD}: {str(path)!r}"))


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_SECONDS) as response:
            raw: bytes = response.read(MAX_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise PlanningError(
            f"{FIELD}: cannot fetch {url!r} ({reason}); offline? use a shipped model name or a "
            "local config.json path"
        ) from None
    _check_size(raw, repr(url))
    return raw


def _check_size(raw: bytes, what: str) -> None:
    if len(raw) > MAX_BYTES:
        raise PlanningError(
            f"{FIELD}: {what} is larger than {MAX_BYTES} bytes, the model config size cap"
        )
