"""Every LORAJOB_* knob the trainer reads from its environment, in one model: the variable's
name, default, limits and the one-line message a bad value gets (a bad knob is a bad config:
exit 3, naming the variable). The pod contract's own variables (LORAJOB_CONFIG, MASTER_ADDR...)
are in `lora_contract.pod`; LORAJOB_S3_RETRIES is read by `lora_contract.storage` itself, and
the two paths the failure path needs (ENV_EXIT_CODE_DIR, ENV_TERMINATION_LOG) are names only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidConfigError

DEFAULT_DDP_TIMEOUT_S = 900
DEFAULT_MAX_RESTARTS = 3
DEFAULT_RENDEZVOUS_TIMEOUT_S = 600.0
# Read directly by main.py's failure path (a bad knob must not stop the failure being
# recorded), so not part of the validated model: where the launcher wants the exit code, and
# where the termination message goes (default: Kubernetes' terminationMessagePath).
ENV_EXIT_CODE_DIR = "LORAJOB_EXIT_CODE_DIR"
ENV_TERMINATION_LOG = "LORAJOB_TERMINATION_LOG"


class TrainerSettings(BaseModel):
    """Field aliases are the variable names; descriptions are what a valid value is."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    rendezvous: Literal["c10d", "static"] = Field(
        default="c10d", alias="LORAJOB_RENDEZVOUS", description="one of c10d, static"
    )
    rendezvous_id: str = Field(
        default="", alias="LORAJOB_RDZV_ID", description="an id shared by the run's nodes"
    )
    rendezvous_timeout_s: float = Field(
        default=DEFAULT_RENDEZVOUS_TIMEOUT_S,
        gt=0,
        alias="LORAJOB_RENDEZVOUS_TIMEOUT",
        description="a positive number of seconds",
    )
    max_restarts: int = Field(
        default=DEFAULT_MAX_RESTARTS,
        ge=0,
        alias="LORAJOB_MAX_RESTARTS",
        description="an integer >= 0",
    )
    ddp_timeout_s: int = Field(
        default=DEFAULT_DDP_TIMEOUT_S,
        gt=0,
        alias="LORAJOB_DDP_TIMEOUT_S",
        description="a positive integer of seconds",
    )
    step_delay_s: float = Field(
        default=0.0, ge=0, alias="LORAJOB_STEP_DELAY_S", description="seconds >= 0"
    )
    work_dir: str = Field(default="", alias="LORAJOB_WORK_DIR", description="a directory")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainerSettings:
        """Read the knobs (unset or empty = default); InvalidConfigError names a bad one."""
        source = os.environ if env is None else env
        names = [field.alias for field in cls.model_fields.values() if field.alias]
        raw = {name: source[name] for name in names if source.get(name, "") != ""}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            name = str(exc.errors()[0]["loc"][0])
            field = next(f for f in cls.model_fields.values() if f.alias == name)
            raise InvalidConfigError(
                f"env {name} must be {field.description} (got {raw.get(name)!r})"
            ) from None
