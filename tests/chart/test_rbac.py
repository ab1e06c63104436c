"""RBAC grants exactly what the operator calls: nothing missing (it would fail at run time with
403), nothing extra (least privilege). The operator declares its own calls in
`lora_operator.controller.api_calls.API_CALLS`; kopf's framework calls are listed here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, SCENARIOS, find, helm, only, render, write_values

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
    # Not a call: the OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift)
    # lets only a client that may update the owner's finalizers set blockOwnerDeletion.
    ("finetune.lora-operator.io", "lorajobs/finalizers", "update"),
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


# ---------------------------------------------------------------- how far the rights reach

SENSITIVE = {"secrets", "serviceaccounts"}
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
OPERATING = Path(__file__).resolve().parents[2] / "docs" / "operating.md"


def cluster_wide_grants(docs: list[dict[str, Any]]) -> set[Call]:
    """What the operator's ServiceAccount may do in every namespace: ClusterRoles bound by a
    ClusterRoleBinding."""
    bound = {b["roleRef"]["name"] for b in find(docs, "ClusterRoleBinding")}
    return {
        call
        for role in find(docs, "ClusterRole")
        if role["metadata"]["name"] in bound
        for call in granted(role["rules"])
    }


def namespaces_with_rights(docs: list[dict[str, Any]]) -> set[str]:
    return {d["metadata"]["namespace"] for d in find(docs, "Role") + find(docs, "RoleBinding")}


@pytest.mark.parametrize("scenario", ["namespaced", "namespaced-replicas", "namespaced-peering"])
def test_namespaced_mode_grants_no_secret_or_account_rights_cluster_wide(
    tmp_path: Path, scenario: str
) -> None:
    docs = render(tmp_path, SCENARIOS[scenario])
    cluster = cluster_wide_grants(docs)
    assert cluster == {c for c in KOPF_CALLS if c[1] in CLUSTER_SCOPED}  # CRD discovery only
    assert not {c for c in cluster if c[1] in SENSITIVE}
    watched = set(SCENARIOS[scenario]["watch"]["namespaces"])
    for role in find(docs, "Role"):
        if {c[1] for c in granted(role["rules"])} & SENSITIVE:
            assert role["metadata"]["namespace"] in watched, role["metadata"]
    assert not namespaces_with_rights(docs) & set(SYSTEM_NAMESPACES)


def test_cluster_wide_mode_grants_nothing_beyond_the_operators_calls(tmp_path: Path) -> None:
    """The one mode where Secrets/ServiceAccounts rights reach every namespace: no verb more
    than the code uses (no list/watch on Secrets, no update anywhere)."""
    docs = render(tmp_path, SCENARIOS["default"])
    cluster = cluster_wide_grants(docs)
    assert cluster == operator_calls() | KOPF_CALLS
    sensitive = {(c[1], c[2]) for c in cluster if c[1] in SENSITIVE}
    assert not {verb for _, verb in sensitive} & {"list", "watch", "update", "deletecollection"}
    assert not namespaces_with_rights(docs) & set(SYSTEM_NAMESPACES)


SECRET_WRITES = {"create", "patch", "update", "delete", "deletecollection", "*"}


def secret_writes(rules: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(resource, verb) of every rule that would let the holder write a Secret: the core group
    or a wildcard group, `secrets` or a wildcard resource, a writing or wildcard verb."""
    return {
        (resource, verb)
        for rule in rules
        if {"", "*"} & set(rule["apiGroups"])
        for resource in rule["resources"]
        if resource in ("secrets", "*")
        for verb in rule["verbs"]
        if verb in SECRET_WRITES
    }


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_role_grants_any_secret_write(tmp_path: Path, scenario: str) -> None:
    """Serving lists the job's own Secret by name in its ServiceAccount instead of copying it,
    so no mode of the chart (the default cluster-wide one included) may write a Secret."""
    docs = render(tmp_path, SCENARIOS[scenario])
    roles = find(docs, "ClusterRole") + find(docs, "Role")
    assert roles  # every scenario renders RBAC: the check below is not vacuous
    for role in roles:
        assert secret_writes(role["rules"]) == set(), role["metadata"]["name"]
    if scenario == "default":
        secrets = {c[2] for c in granted(only(docs, "ClusterRole")["rules"]) if c[1] == "secrets"}
        assert secrets == {"get"}


def test_secret_writes_are_recognised_in_any_spelling() -> None:
    """The check above would see a write however a rule spells it."""
    assert secret_writes([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]) == set()
    assert (
        secret_writes([{"apiGroups": ["apps"], "resources": ["secrets"], "verbs": ["*"]}]) == set()
    )
    for group, resource, verb in (("", "secrets", "patch"), ("*", "*", "*"), ("", "*", "delete")):
        rule = {"apiGroups": [group], "resources": [resource], "verbs": ["get", verb]}
        assert secret_writes([rule]) == {(resource, verb)}


@pytest.mark.parametrize("namespace", SYSTEM_NAMESPACES)
def test_system_namespaces_cannot_be_watched(tmp_path: Path, namespace: str) -> None:
    values = {"watch": {"allNamespaces": False, "namespaces": ["team-a", namespace]}}
    for rbac in (True, False):
        result = helm(
            "template",
            "lora",
            str(CHART),
            "-f",
            str(write_values(tmp_path, {**values, "rbac": {"create": rbac}})),
            check=False,
        )
        assert result.returncode != 0
        assert f"watch.namespaces: {namespace} is a system namespace" in result.stderr


def documented_rules() -> set[Call]:
    """The (group, resource, verb) rows of docs/operating.md's RBAC table."""
    text = OPERATING.read_text()
    section = text.split("\n## RBAC\n", 1)[1].split("\n## ", 1)[0]
    rows: set[Call] = set()
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("group", "---"):
            continue
        group = "" if cells[0] == '""' else cells[0]
        rows |= {(group, cells[1], verb.strip()) for verb in cells[2].split(",")}
    return rows


def test_every_granted_right_is_documented_with_its_reason() -> None:
    assert documented_rules() == operator_calls() | KOPF_CALLS


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("default", None),  # the operator makes <job>-trainer per LoRAJob
        ("s3-defaults", None),  # accounts in listed namespaces only: never named for all
        ("namespaced", "lora-lora-operator-trainer"),  # exists in every watched namespace
    ],
)
def test_the_config_names_the_trainer_account_only_where_it_exists(
    tmp_path: Path, scenario: str, expected: str | None
) -> None:
    docs = render(tmp_path, SCENARIOS[scenario])
    config = yaml.safe_load(
        only(docs, "ConfigMap", "lora-lora-operator-config")["data"]["config.yaml"]
    )
    assert config.get("trainerServiceAccount") == expected
