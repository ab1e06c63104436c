"""A stable hash of the parts of a spec that change what gets trained.

Kubernetes bumps `metadata.generation` on any spec change (and the test emulator does not bump it
at all), so the operator decides "retrain?" from this hash: serving, suspend, TTL, queue and
scheduling knobs are excluded because changing them must not start a new run.
"""

from __future__ import annotations

import hashlib
import json

from .types import LoRAJobSpec

# Top-level spec fields that do not affect the trained adapter.
NON_TRAINING_FIELDS = frozenset(
    {"serving", "suspend", "ttlSecondsAfterFinished", "queueName", "trainerImage"}
)
# resources.* fields that only affect scheduling.
NON_TRAINING_RESOURCE_FIELDS = frozenset(
    {"nodeSelector", "tolerations", "priorityClassName", "requests", "limits", "gpuResourceName"}
)


def training_spec_hash(spec: LoRAJobSpec) -> str:
    """Hash of the normalised (defaults filled, camelCase) training-relevant spec; 12 hex chars."""
    wire = spec.model_dump(by_alias=True, mode="json")
    relevant = {k: v for k, v in wire.items() if k not in NON_TRAINING_FIELDS}
    relevant["resources"] = {
        k: v for k, v in wire["resources"].items() if k not in NON_TRAINING_RESOURCE_FIELDS
    }
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
