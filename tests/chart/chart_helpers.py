"""Render the chart with the real `helm` binary; every chart test reads manifests through these."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lora-operator"
HELM = REPO / ".tools" / "bin" / "helm"

# Every documented values combination; each must lint, render and validate.
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "minio": {"minio": {"enabled": True}},
    "minio-existing-secret": {
        "minio": {
            "enabled": True,
            "auth": {"existingSecret": "my-s3"},
            "persistence": {"enabled": False},
            "buckets": ["adapters", "datasets"],
        }
    },
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"r": "p"}}}},
    "no-metrics": {"metrics": {"enabled": False}},
    "quotas": {
        "config": {
            "quotas": {
                "namespaces": {"team-a": {"gpus": 16, "gpuTypes": {"H100-80GB": 8}}},
                "default": {"gpus": 4},
                "cluster": {"gpus": 64},
            },
            "gpuCatalog": [{"name": "L40S-48GB", "memoryGib": 48, "nodeSelector": {"gpu": "l40s"}}],
        }
    },
    "kueue": {"config": {"kueue": {"enabled": True, "defaultQueue": "team-queue"}}},
    "policy": {
        "minio": {"enabled": True},
        "config": {
            "policy": {
                "allowedTrainerImages": ["registry.corp/ml/", "ghcr.io/lora-operator/trainer@"],
                "allowedS3Endpoints": ["https://s3.corp.example", "http://minio.data:9000"],
                "allowedPriorityClasses": ["batch-low"],
                "requireSecretOptIn": False,
                "secretOptInLabel": "corp.example/ml-credentials",
            }
        },
    },
    "replicas": {"replicaCount": 3, "leaderElection": {"leaseDurationSeconds": 30}},
    "election-one-replica": {"leaderElection": {"enabled": True}},
    "peering": {"peering": {"enabled": True}},
    "namespaced": {"watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}},
    "namespaced-replicas": {
        "replicaCount": 2,
        "watch": {"allNamespaces": False, "namespaces": ["team-a"]},
    },
    "namespaced-peering": {
        "peering": {"enabled": True},
        "watch": {"allNamespaces": False, "namespaces": ["team-a"]},
    },
    "s3-defaults": {
        "config": {
            "s3": {
                "endpoint": "https://s3.example.com",
                "region": "eu-west-1",
                "credentialsSecret": "s3-creds",
            },
            "modelCacheClaim": "hf-cache",
        },
        "trainer": {"serviceAccount": {"namespaces": ["ml"]}},
    },
    "everything": {
        "replicaCount": 2,
        "peering": {"enabled": True},
        "minio": {"enabled": True},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "config": {"kueue": {"enabled": True}, "quotas": {"cluster": {"gpus": 8}}},
        "logLevel": "debug",
    },
}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=60, check=check
    )


def write_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    """`helm template` the chart (with its CRDs) and return the non-empty documents."""
    result = helm(
        "template",
        "lora",
        str(CHART),
        "--namespace",
        "lora-system",
        "--include-crds",
        "-f",
        str(write_values(tmp_path, values)),
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]
