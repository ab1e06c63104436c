"""How large the merged-export Job (spec.export.merged) must be: host memory, scratch disk and CPU
from the plan's parameter counts. One formula, used by the Job's builder
(`controller/export_job.py`) and shown by `lorajob plan`; no IO, no Kubernetes client, so the
plan command does not import the controller.

Memory: the base held in the export dtype, the adapter in fp32 twice (loaded, then the merge's
delta), one shard being written, times a margin for the allocator and Python, plus a floor for the
interpreter, torch and the tokenizer. Disk: the downloaded base (fp32 at worst) and the merged
copy, plus a floor.
"""

from __future__ import annotations

import math

from lora_contract.types import ExportDtype, ExportSpec

EXPORT_CPU = "2"
DTYPE_BYTES = {ExportDtype.bfloat16: 2, ExportDtype.float16: 2, ExportDtype.float32: 4}
ADAPTER_BYTES_PER_PARAM = 4  # PEFT loads the adapter in fp32
ADAPTER_COPIES = 2  # the loaded adapter and the merge's delta B @ A
SOURCE_BYTES_PER_PARAM = 4  # the base as downloaded: fp32 at worst
MEMORY_MARGIN = 1.2  # allocator and Python overhead over the counted bytes
MEMORY_FLOOR_GIB = 1.0  # interpreter, torch and tokenizer before any weight
DISK_FLOOR_GIB = 1.0
GIB = 2**30
SHARD_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}


def shard_bytes(max_shard_size: str) -> int:
    """'2GB' -> 2_000_000_000 (the spec's pattern admits only KB, MB and GB)."""
    return int(max_shard_size[:-2]) * SHARD_UNITS[max_shard_size[-2:]]


def export_memory_terms(
    total_params: int, trainable_params: int, export: ExportSpec
) -> dict[str, int]:
    """The counted bytes, by what holds them (before the margin and the floor)."""
    return {
        "base": total_params * DTYPE_BYTES[export.dtype],
        "adapter": ADAPTER_COPIES * trainable_params * ADAPTER_BYTES_PER_PARAM,
        "shard": shard_bytes(export.max_shard_size),
    }


def export_memory_gib(total_params: int, trainable_params: int, export: ExportSpec) -> int:
    """Host memory for the merge, whole GiB rounded up."""
    counted = sum(export_memory_terms(total_params, trainable_params, export).values())
    return math.ceil(counted * MEMORY_MARGIN / GIB + MEMORY_FLOOR_GIB)


def export_disk_gib(total_params: int, export: ExportSpec) -> int:
    """Scratch disk: the downloaded base plus the merged copy, whole GiB rounded up."""
    counted = total_params * (SOURCE_BYTES_PER_PARAM + DTYPE_BYTES[export.dtype])
    return math.ceil(counted / GIB + DISK_FLOOR_GIB)


def export_pod_resources(
    total_params: int, trainable_params: int, export: ExportSpec
) -> dict[str, dict[str, str]]:
    """The export container's requests and limits (memory limited to what is requested)."""
    memory = export_memory_gib(total_params, trainable_params, export)
    disk = export_disk_gib(total_params, export)
    requests = {"cpu": EXPORT_CPU, "memory": f"{memory}Gi", "ephemeral-storage": f"{disk}Gi"}
    return {"requests": requests, "limits": {"memory": f"{memory}Gi"}}
