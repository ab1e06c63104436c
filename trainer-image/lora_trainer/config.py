"""Read the rendered TrainerConfig (the operator's own pydantic type, no second schema) and the
process's place in the distributed run from the environment the operator sets."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from lora_contract import pod
from lora_contract.errors import describe_validation_error
from lora_contract.types import TrainerConfig

from .errors import InvalidConfigError
from .settings import TrainerSettings

CONFIG_ENV = pod.ENV_CONFIG
DEFAULT_CONFIG_PATH = pod.CONFIG_PATH


def config_path(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_trainer_config(path: str | Path) -> TrainerConfig:
    """Parse and validate; every problem becomes one line of an InvalidConfigError."""
    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text())
    except FileNotFoundError:
        raise InvalidConfigError(
            f"trainer config {source} not found (set {CONFIG_ENV} or mount the ConfigMap)"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidConfigError(f"trainer config {source} cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidConfigError(f"trainer config {source}: expected a mapping")
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(describe_validation_error(exc))
        raise InvalidConfigError(f"trainer config {source}: {problems}") from None


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidConfigError(f"env {name} must be an integer (got {value!r})") from None


@dataclass(frozen=True)
class ProcessPlace:
    """Where this process sits: torchrun sets RANK/LOCAL_RANK/WORLD_SIZE for each worker."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @classmethod
    def from_env(cls) -> ProcessPlace:
        return cls(
            rank=_int_env("RANK", 0),
            local_rank=_int_env("LOCAL_RANK", 0),
            world_size=_int_env("WORLD_SIZE", 1),
        )


def pvc_root() -> Path:
    return Path(os.environ.get(pod.ENV_PVC_ROOT, pod.PVC_ROOT))


def work_dir(config: TrainerConfig) -> Path:
    """Node-local scratch space for checkpoints and downloads (`LORAJOB_WORK_DIR`, else
    $TMPDIR/lorajob: /tmp in a container, a per-pod folder under the local executor)."""
    root = Path(TrainerSettings.from_env().work_dir or Path(tempfile.gettempdir()) / "lorajob")
    return root / config.job_name / config.run_id
