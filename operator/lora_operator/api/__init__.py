"""LoRAJob API types, the run layout in the bucket, and helpers shared by operator and trainer."""

from .errors import describe_validation_error
from .hashing import training_spec_hash
from .layout import S3Location, run_location
from .types import (
    API_VERSION,
    EXIT_INVALID_CONFIG,
    EXIT_OK,
    EXIT_TRANSIENT,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Condition,
    ConditionType,
    LoRAJob,
    LoRAJobSpec,
    LoRAJobStatus,
    Phase,
    PlanStatus,
    Progress,
    RunRecord,
    TrainerConfig,
)

__all__ = [
    "API_VERSION",
    "EXIT_INVALID_CONFIG",
    "EXIT_OK",
    "EXIT_TRANSIENT",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Condition",
    "ConditionType",
    "LoRAJob",
    "LoRAJobSpec",
    "LoRAJobStatus",
    "Phase",
    "PlanStatus",
    "Progress",
    "RunRecord",
    "S3Location",
    "TrainerConfig",
    "describe_validation_error",
    "run_location",
    "training_spec_hash",
]
