"""The hostile-input corpus of docs/security.md: every spec a careless or hostile tenant might
write, and the layer that refuses it. Each refusal must name the spec field. The counts in
docs/security.md are these tables' lengths (checked below), so the document cannot drift.

Layers: the API types (what `lorajob validate`, the CLI and the reconciler use) AND the CRD's
OpenAPI schema with its CEL rules (what the API server enforces at `kubectl apply`); the
platform policy (the reconciler, before anything is created). Attacks that need a running
operator (ownership, layout, slow config servers) are tested end to end in tests/operator/ and
listed in docs/security.md with their tests.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from apidata import MINIMAL

from lora_operator.api.loading import SpecError, parse_lorajob
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.api.schema_check import check_against_crd
from lora_operator.controller.policy import spec_refusals

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def _with(**fields: Any) -> dict[str, Any]:
    """MINIMAL with dotted spec paths set (`output__prefix` style keys are not used: paths are
    passed as a dict to keep wire names)."""
    obj = copy.deepcopy(MINIMAL)
    for path, value in fields.items():
        node = obj["spec"]
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return obj


# (what the tenant tries, spec path, value): refused by the types AND by the CRD schema/CEL.
SCHEMA_ATTACKS: list[tuple[str, str, Any]] = [
    ("climb out of the output prefix", "output.prefix", "../other-team"),
    ("climb out mid-prefix", "output.prefix", "runs/../../other-team"),
    ("absolute output prefix", "output.prefix", "/other-team/runs"),
    ("dataset path outside its volume", "dataset.source", "pvc://data/../secrets/token"),
    ("dataset bucket climb", "dataset.source", "s3://data/../other-team/train.jsonl"),
    ("model path outside its volume", "baseModel.source", "pvc://models/../../etc"),
    ("model bucket climb", "baseModel.source", "s3://models/../other-team/llama"),
    ("model from a local file URL", "baseModel.source", "file:///etc/shadow"),
    ("negative memory request", "resources.requests", {"memory": "-1Gi"}),
    ("negative CPU limit", "resources.limits", {"cpu": "-2"}),
    ("header injection in the GPU resource", "resources.gpuResourceName", "nvidia.com/gpu\nx: y"),
    ("bogus GPU resource name", "resources.gpuResourceName", "../../gpu"),
    ("Secret name that is not a name", "output.credentialsSecret", {"name": "../kube-system"}),
    ("bucket name with a path", "output.bucket", "adapters/../other"),
    ("absurd replica count", "serving.replicas", 100000),
    # look-alike spellings of system-* that the policy's prefix check would miss and the API
    # server would refuse for the pods (the job would hang): refused as not a PriorityClass name
    ("system class in capitals", "resources.priorityClassName", "System-Node-Critical"),
    ("system class after a space", "resources.priorityClassName", " system-node-critical"),
    ("system class, Unicode hyphen", "resources.priorityClassName", "system\u2011node-critical"),
    ("system class, minus sign", "resources.priorityClassName", "system\u2212node-critical"),
    ("system class, fullwidth", "resources.priorityClassName", "\uff53ystem-node-critical"),
]


@pytest.mark.parametrize(
    ("attack", "path", "value"), SCHEMA_ATTACKS, ids=[a[0] for a in SCHEMA_ATTACKS]
)
def test_the_types_and_the_crd_refuse(attack: str, path: str, value: Any) -> None:
    obj = _with(**{path: value})
    field = path.split(".")[0]
    with pytest.raises(SpecError) as refused:
        parse_lorajob(obj)
    assert field in str(refused.value), (attack, str(refused.value))
    crd_errors = check_against_crd(obj)
    assert crd_errors, f"{attack}: the API server would accept it"
    assert any(field in error for error in crd_errors), (attack, crd_errors)


PLATFORM = OperatorConfig.model_validate(
    {"trainerImage": "registry.example/lora/trainer:1.0", "s3": {"endpoint": "https://s3.corp"}}
)

# (what the tenant tries, spec path, value, policy field named): valid spec, refused by policy.
POLICY_ATTACKS: list[tuple[str, str, Any, str]] = [
    ("their own image receives the credentials", "trainerImage", "evil/img:1", "TrainerImages"),
    (
        "a look-alike registry path",
        "trainerImage",
        "registry.example/lora/trainer-x:1",
        "TrainerImages",
    ),
    ("cloud metadata (IPv4)", "output.endpoint", "http://169.254.169.254", "S3Endpoints"),
    ("cloud metadata (IPv6)", "output.endpoint", "http://[fd00:ec2::254]", "S3Endpoints"),
    ("cloud metadata (name)", "output.endpoint", "http://metadata.google.internal", "S3Endpoints"),
    ("the node's loopback", "output.endpoint", "http://127.0.0.1:9000", "S3Endpoints"),
    (
        "exfiltrate to an outside store",
        "output.endpoint",
        "https://s3.attacker.example",
        "S3Endpoints",
    ),
    (
        "preempt system pods",
        "resources.priorityClassName",
        "system-node-critical",
        "PriorityClasses",
    ),
    (
        "preempt cluster pods",
        "resources.priorityClassName",
        "system-cluster-critical",
        "PriorityClasses",
    ),
    ("loopback as one number", "output.endpoint", "http://2130706433:9000", "S3Endpoints"),
    ("loopback as IPv4-mapped IPv6", "output.endpoint", "http://[::ffff:127.0.0.1]", "S3Endpoints"),
    (
        "pods on the control plane",
        "resources.nodeSelector",
        {"node-role.kubernetes.io/control-plane": ""},
        "NodeSelectorKeys",
    ),
    (
        "pods on the old master role",
        "resources.nodeSelector",
        {"node-role.kubernetes.io/master": "true"},
        "NodeSelectorKeys",
    ),
    ("tolerate every taint", "resources.tolerations", [{"operator": "Exists"}], "Tolerations"),
    (
        "tolerate the control-plane taint",
        "resources.tolerations",
        [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
        "Tolerations",
    ),
]


@pytest.mark.parametrize(
    ("attack", "path", "value", "policy"), POLICY_ATTACKS, ids=[a[0] for a in POLICY_ATTACKS]
)
def test_the_platform_policy_refuses(attack: str, path: str, value: Any, policy: str) -> None:
    spec = parse_lorajob(_with(**{path: value})).spec  # a valid spec: only the policy says no
    refusals = spec_refusals(spec, PLATFORM)
    assert len(refusals) == 1, (attack, refusals)
    assert f"spec.{path}" in refusals[0] and f"policy.allowed{policy}" in refusals[0], refusals


def test_the_platform_defaults_let_ordinary_jobs_through() -> None:
    """The corpus is not passing by refusing everything."""
    spec = parse_lorajob(_with(**{"output.endpoint": "https://s3.corp"})).spec
    assert spec_refusals(spec, PLATFORM) == []
    placed = _with(
        **{
            "resources.priorityClassName": "batch-low",
            "resources.nodeSelector": {"node-role.kubernetes.io/worker": "", "gpu": "a100"},
            "resources.tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        }
    )
    assert spec_refusals(parse_lorajob(placed).spec, PLATFORM) == []
    assert check_against_crd(placed) == []


def test_security_md_counts_are_the_corpus() -> None:
    text = DOCS.read_text()
    counts = {
        name: int(n) for n, name in re.findall(r"\*\*(\d+)\*\* (schema|policy) attacks", text)
    }
    assert counts == {"schema": len(SCHEMA_ATTACKS), "policy": len(POLICY_ATTACKS)}
