"""The GPU catalog: card sizes and scheduling hints, shipped defaults plus operator overrides."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from lora_contract.errors import describe_validation_error
from lora_contract.types import CPU_GPU_TYPE

from ..api.operator_config import GpuType
from .errors import PlanningError

DEFAULT_CATALOG_PATH = Path(__file__).with_name("gpus.yaml")

# Short names users write in resources.gpuType, mapped to catalog entries.
ALIASES = {
    "t4": "T4-16GB",
    "l4": "L4-24GB",
    "a10g": "A10G-24GB",
    "a10": "A10G-24GB",
    "rtx4090": "RTX4090-24GB",
    "4090": "RTX4090-24GB",
    "l40s": "L40S-48GB",
    "a100": "A100-80GB",
    "a100-40g": "A100-40GB",
    "a100-80g": "A100-80GB",
    "h100": "H100-80GB",
    "h200": "H200-141GB",
}


@dataclass(frozen=True)
class GpuCatalog:
    """Immutable name -> GpuType map; `merged` returns a new catalog (operator config wins)."""

    entries: dict[str, GpuType] = field(default_factory=dict)

    @classmethod
    def default(cls) -> GpuCatalog:
        return _DEFAULT

    @classmethod
    def from_yaml(cls, path: Path) -> GpuCatalog:
        raw = yaml.safe_load(path.read_text()) or []
        if not isinstance(raw, list):
            raise PlanningError(f"{path}: the GPU catalog must be a YAML list of GPU types")
        entries: list[GpuType] = []
        for i, item in enumerate(raw):
            try:
                entries.append(GpuType.model_validate(item))
            except ValidationError as exc:
                problems = "; ".join(describe_validation_error(exc, f"gpuCatalog[{i}]"))
                raise PlanningError(f"{path}: {problems}") from None
        return cls().merged(entries)

    def merged(self, extra: Iterable[GpuType]) -> GpuCatalog:
        """An entry for a known name overrides only the fields it sets, so a platform can add
        `pricePerGpuHour` or a calibrated `efficiency` without restating the datasheet peak."""
        entries = dict(self.entries)
        for gpu in extra:
            known = entries.get(gpu.name)
            if known is None:
                entries[gpu.name] = gpu
            else:
                changes = {field: getattr(gpu, field) for field in gpu.model_fields_set}
                entries[gpu.name] = known.model_copy(update=changes)
        return GpuCatalog(entries)

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> GpuType:
        """The entry for resources.gpuType; case-insensitive, short aliases (L4, H100) accepted."""
        if name in self.entries:
            return self.entries[name]
        lowered = {key.lower(): gpu for key, gpu in self.entries.items()}
        key = name.strip().lower()
        found = lowered.get(key) or lowered.get(ALIASES.get(key, "").lower())
        if found is None:
            raise PlanningError(
                f"spec.resources.gpuType: unknown GPU type {name!r}; the catalog has "
                f"{', '.join(self.entries)} (operators add types in the operator config's "
                "gpuCatalog)"
            )
        return found

    @staticmethod
    def is_cpu(gpu: GpuType) -> bool:
        return gpu.name == CPU_GPU_TYPE or not gpu.resource_name


_DEFAULT = GpuCatalog.from_yaml(DEFAULT_CATALOG_PATH)
