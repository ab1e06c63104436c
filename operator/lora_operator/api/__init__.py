"""LoRAJob API types, the run layout in the bucket, and helpers shared by operator and trainer."""

from lora_contract.errors import describe_validation_error
from lora_contract.layout import S3Location, run_location
from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_OK, EXIT_TRANSIENT
from lora_contract.types import (
    API_VERSION,
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

from .hashing import training_spec_hash

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
