"""The operator's configuration file (the chart's ConfigMap), reloaded when its mtime changes so
quota and catalog edits apply without a restart; a broken edit keeps the last good config."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from lora_contract.errors import describe_validation_error

from ..api.operator_config import OperatorConfig

log = logging.getLogger("lora_operator.config")


class ConfigError(ValueError):
    """The config file is unreadable or invalid; the message names the file and the fields."""


def parse_config(path: Path) -> OperatorConfig:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: operator config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the operator config must be a mapping")
    try:
        return OperatorConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(describe_validation_error(exc))) from None


@dataclass
class ConfigSource:
    """`source.get()` returns the current config, re-reading the file if it changed."""

    path: Path | None = None
    _config: OperatorConfig = field(default_factory=OperatorConfig)
    _mtime: float | None = None
    last_error: str | None = None

    @classmethod
    def load(cls, path: str | Path | None) -> ConfigSource:
        """Fails (ConfigError) at start-up on a bad file; later bad edits only log."""
        source = cls(Path(path) if path else None)
        if source.path is not None:
            source._config = parse_config(source.path)
            source._mtime = source.path.stat().st_mtime
        return source

    def get(self) -> OperatorConfig:
        if self.path is None:
            return self._config
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return self._config
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._config = parse_config(self.path)
                self.last_error = None
                log.info("reloaded operator config from %s", self.path)
            except ConfigError as exc:
                self.last_error = str(exc)
                log.error("keeping the previous operator config: %s", exc)
        return self._config


CONFIG_ENV = "LORAJOB_OPERATOR_CONFIG"
