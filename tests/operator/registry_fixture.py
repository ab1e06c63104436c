"""A shared-server registry ConfigMap as the operator stores it, for the builders' unit tests."""

from __future__ import annotations

import json
from typing import Any

from lora_contract.adapter_registry import Entry


def registry_of(shape: dict[str, Any], *entries_: tuple[str, Entry]) -> dict[str, Any]:
    """`lora-server-abc` in `ns` (uid `reg-uid`) with `shape` as server.json and one entry per
    (LoRAJob uid, Entry)."""
    return {
        "metadata": {
            "name": "lora-server-abc",
            "namespace": "ns",
            "uid": "reg-uid",
            "labels": {"app.kubernetes.io/component": "lora-server"},
        },
        "data": {
            "server.json": json.dumps(shape),
            **{f"adapter.{uid}": entry.to_data() for uid, entry in entries_},
        },
    }
