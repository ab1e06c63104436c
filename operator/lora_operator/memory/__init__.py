"""The GPU memory model: per-GPU peak memory of a LoRA/QLoRA job from its config.json alone,
and a placement (GPU type, nodes, GPUs per node, strategy, pod resources) that fits it."""

from __future__ import annotations

from .architecture import Architecture, architecture_of
from .catalog import GpuCatalog
from .errors import PlanningError
from .estimate import TERM_HELP, Assumptions, MemoryEstimate, TrainingShape, estimate_memory
from .local_config import load_architecture
from .model_config import ModelConfig
from .placement import PlanResult, plan_job, shape_for

__all__ = [
    "TERM_HELP",
    "Architecture",
    "Assumptions",
    "GpuCatalog",
    "MemoryEstimate",
    "ModelConfig",
    "PlanResult",
    "PlanningError",
    "TrainingShape",
    "architecture_of",
    "estimate_memory",
    "load_architecture",
    "plan_job",
    "shape_for",
]
