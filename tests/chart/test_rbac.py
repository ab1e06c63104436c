"""RBAC grants exactly what the operator calls: nothing missing (it would fail at run time with
403), nothing extra (least privilege). The operator declares its own calls in
`lora_operator.controller.api_calls.API_CALLS`; kopf's framework calls are listed here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chart_helpers import SCENARIOS, find, only, render

from lora_operator.controller.api_calls import API_CALLS
from lora_operator.controller.leader import LEASE_CALLS

Call = tuple[str, str, str]  # (API group, resource, verb)

# What kopf itself does: CRD discovery, watching and patching the handled resource (finalizers,
# handler progress in annotations/status), and posting events.
KOPF_CALLS: set[Call] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("finetune.lora-operator.io", "lorajobs", "list"),
    ("finetune.lora-operator.io", "lorajobs", "watch"),
    ("finetune.lora-operator.io", "lorajobs", "patch"),
    ("finetune.lora-operator.io", "lorajobs/status", "patch"),
    ("", "events", "create"),
}
# kopf peering (opt-in pause switch): keep-alives are patches, peers are watched.
CLUSTER_PEERING_CALLS: set[Call] = {
    ("kopf.dev", "clusterkopfpeerings", v) for v in ("list", "watch", "patch")
}
NAMESPACED_PEERING_CALLS: set[Call] = {
    ("kopf.dev", "kopfpeerings", v) for v in ("list", "watch", "patch")
}
CLUSTER_SCOPED = {"customresourcedefinitions", "clusterkopfpeerings"}


def operator_calls() -> set[Call]:
    return {tuple(call) for call in API_CALLS}  # type: ignore[misc]


def granted(rules: list[dict[str, Any]]) -> set[Call]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_cluster_wide_rbac_matches_operator_calls(tmp_path: Path) -> None:
    expected = operator_calls() | KOPF_CALLS
    docs = render(tmp_path, SCENARIOS["default"])
    assert not find(docs, "Role")
    actual = granted(only(docs, "ClusterRole")["rules"])
    assert not expected - actual, f"missing from the ClusterRole: {sorted(expected - actual)}"
    assert not actual - expected, f"granted but never used: {sorted(actual - expected)}"


def test_peering_adds_only_peering_rights(tmp_path: Path) -> None:
    expected = operator_calls() | KOPF_CALLS | CLUSTER_PEERING_CALLS | NAMESPACED_PEERING_CALLS
    docs = render(tmp_path, SCENARIOS["peering"])
    assert granted(only(docs, "ClusterRole")["rules"]) == expected


def test_leader_election_adds_only_its_own_lease(tmp_path: Path) -> None:
    docs = render(tmp_path, SCENARIOS["replicas"])
    assert granted(only(docs, "ClusterRole")["rules"]) == operator_calls() | KOPF_CALLS
    role = only(docs, "Role")
    assert role["metadata"]["namespace"] == "lora-system"  # the operator's own namespace
    assert granted(role["rules"]) == set(LEASE_CALLS)
    named = [rule for rule in role["rules"] if "resourceNames" in rule]
    assert named and all(rule["resourceNames"] == ["lora-lora-operator"] for rule in named)
    # only `create` (which cannot be limited to a name) is granted without a name
    assert {v for rule in role["rules"] if "resourceNames" not in rule for v in rule["verbs"]} == {
        "create"
    }
    binding = only(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


@pytest.mark.parametrize("scenario", ["namespaced-peering", "namespaced-replicas"])
def test_namespaced_rbac_matches_operator_calls(tmp_path: Path, scenario: str) -> None:
    peering = NAMESPACED_PEERING_CALLS if scenario == "namespaced-peering" else set()
    calls = operator_calls() | KOPF_CALLS | peering
    docs = render(tmp_path, SCENARIOS[scenario])
    cluster = granted(only(docs, "ClusterRole")["rules"])
    assert cluster == {c for c in calls if c[1] in CLUSTER_SCOPED}
    roles = {r["metadata"]["namespace"]: r for r in find(docs, "Role")}
    assert granted(roles.pop("team-a")["rules"]) == {c for c in calls if c[1] not in CLUSTER_SCOPED}
    if scenario == "namespaced-replicas":
        assert granted(roles.pop("lora-system")["rules"]) == set(LEASE_CALLS)
    assert not roles


def test_trainer_service_account_has_no_api_access(tmp_path: Path) -> None:
    docs = render(tmp_path, SCENARIOS["namespaced"])
    trainer = {
        sa["metadata"]["name"]
        for sa in find(docs, "ServiceAccount")
        if "trainer" in sa["metadata"]["name"]
    }
    assert trainer
    bound = {
        s["name"]
        for b in find(docs, "RoleBinding") + find(docs, "ClusterRoleBinding")
        for s in b["subjects"]
    }
    assert not trainer & bound
