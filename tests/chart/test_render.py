"""The chart lints, renders and produces valid Kubernetes objects for every documented setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_helpers import CHART, SCENARIOS, find, helm, only, render, write_values
from kubernetes_validate.utils import SchemaNotFoundError

from lora_contract.types import GROUP, PLURAL
from lora_operator.api.operator_config import OperatorConfig, PlatformPolicy

K8S_VERSION = "1.33"
CRD_FILE = CHART / "crds" / f"{GROUP}_{PLURAL}.yaml"
# Kinds from CRDs kubernetes_validate has no schema for; checked structurally below instead.
CUSTOM_KINDS = {"ServiceMonitor", "ClusterKopfPeering", "KopfPeering"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint(scenario: str, tmp_path: Path) -> None:
    values = write_values(tmp_path, SCENARIOS[scenario])
    result = helm("lint", "--strict", str(CHART), "-f", str(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_manifests_validate_against_kubernetes_schemas(scenario: str, tmp_path: Path) -> None:
    docs = render(tmp_path, SCENARIOS[scenario])
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"].count("/") == 1 and doc["metadata"]["name"]
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except SchemaNotFoundError:  # pragma: no cover - a kind we did not expect
            pytest.fail(f"no Kubernetes schema for {doc['apiVersion']} {doc['kind']}")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_config_parses_as_operator_config(scenario: str, tmp_path: Path) -> None:
    docs = render(tmp_path, SCENARIOS[scenario])
    config_map = only(docs, "ConfigMap", "lora-lora-operator-config")
    config = OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    values: dict[str, Any] = SCENARIOS[scenario]
    if values.get("minio", {}).get("enabled"):
        assert config.s3.endpoint == "http://lora-lora-operator-minio.lora-system.svc:9000"
        assert config.s3.credentials_secret is not None
        expected = values["minio"].get("auth", {}).get("existingSecret", "lora-lora-operator-minio")
        assert config.s3.credentials_secret.name == expected
    quotas = values.get("config", {}).get("quotas", {})
    if "cluster" in quotas:
        assert config.quotas.cluster.gpus == quotas["cluster"]["gpus"]
    kueue = values.get("config", {}).get("kueue", {})
    assert config.kueue.enabled == kueue.get("enabled", False)
    assert config.kueue.default_queue == kueue.get("defaultQueue")
    # the chart's policy defaults are the operator's, and what is set arrives as set
    policy = values.get("config", {}).get("policy", {})
    assert config.policy == PlatformPolicy.model_validate(policy)


def test_generated_crd_is_a_valid_custom_resource_definition() -> None:
    assert CRD_FILE.exists(), f"{CRD_FILE} missing: run `make crds`"
    crd = yaml.safe_load(CRD_FILE.read_text())
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    assert crd["spec"]["group"] == GROUP and crd["spec"]["names"]["plural"] == PLURAL


def test_default_deployment_is_hardened_and_wired(tmp_path: Path) -> None:
    docs = render(tmp_path, {})
    deployment = only(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/lora-operator/operator:0.1.0"
    context = container["securityContext"]
    assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["command"] == ["lorajob", "run"]
    args = container["args"]
    assert "--all-namespaces" in args and "--standalone" in args
    assert "--config=/etc/lora-operator/config.yaml" in args
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    assert "--log-format=json" in args
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert not find(docs, "CustomResourceDefinition", "clusterkopfpeerings.kopf.dev")
    trainer_accounts = [
        d for d in find(docs, "ServiceAccount") if "trainer" in d["metadata"]["name"]
    ]
    assert all(sa["automountServiceAccountToken"] is False for sa in trainer_accounts)


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][
        0
    ]
    return container


def test_one_replica_is_replaced_not_overlapped(tmp_path: Path) -> None:
    docs = render(tmp_path, SCENARIOS["default"])
    assert only(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(a.startswith("--leader-elect") for a in operator_container(docs)["args"])
    assert not find(docs, "Role")


@pytest.mark.parametrize("scenario", ["replicas", "election-one-replica"])
def test_leader_election_for_replicas(tmp_path: Path, scenario: str) -> None:
    docs = render(tmp_path, SCENARIOS[scenario])
    deployment = only(docs, "Deployment")
    assert "strategy" not in deployment["spec"]  # rolling: the new pod stands by
    container = operator_container(docs)
    args = container["args"]
    seconds = SCENARIOS[scenario].get("leaderElection", {}).get("leaseDurationSeconds", 15)
    assert "--leader-elect" in args
    assert "--leader-elect-name=lora-lora-operator" in args
    assert f"--leader-elect-lease-seconds={seconds}" in args
    # the Lease's namespace and the identity come from the downward API
    env = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        for e in container["env"]
    }
    assert env["POD_NAMESPACE"] == "metadata.namespace" and env["POD_NAME"] == "metadata.name"
    # kopf peering is not leader election (same-priority peers all pause): off unless asked
    assert "--standalone" in args and not any(a.startswith("--peering") for a in args)
    assert not find(docs, "CustomResourceDefinition", "clusterkopfpeerings.kopf.dev")
    role = only(docs, "Role", "lora-lora-operator-leader-election")
    assert role["metadata"]["namespace"] == "lora-system"


def test_peering_is_opt_in(tmp_path: Path) -> None:
    docs = render(tmp_path, SCENARIOS["peering"])
    args = operator_container(docs)["args"]
    assert "--peering=lora-operator" in args and "--standalone" not in args
    assert only(docs, "CustomResourceDefinition", "clusterkopfpeerings.kopf.dev")
    assert only(docs, "CustomResourceDefinition", "kopfpeerings.kopf.dev")
    peering = only(docs, "ClusterKopfPeering", "lora-operator")
    assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]


def test_namespaced_mode_uses_roles_only(tmp_path: Path) -> None:
    docs = render(tmp_path, SCENARIOS["namespaced"])
    args = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args
    assert sorted(r["metadata"]["namespace"] for r in find(docs, "Role")) == ["team-a", "team-b"]
    cluster_rules = only(docs, "ClusterRole")["rules"]
    assert [r["resources"] for r in cluster_rules] == [["customresourcedefinitions"]]
    trainer_sas = [d for d in find(docs, "ServiceAccount") if "trainer" in d["metadata"]["name"]]
    assert sorted(sa["metadata"]["namespace"] for sa in trainer_sas) == ["team-a", "team-b"]


def test_minio_secret_is_generated_not_hard_coded(tmp_path: Path) -> None:
    first = only(render(tmp_path, SCENARIOS["minio"]), "Secret")
    second = only(render(tmp_path, SCENARIOS["minio"]), "Secret")
    assert first["data"]["secretKey"] != second["data"]["secretKey"]  # random on a fresh install
    docs = render(tmp_path, SCENARIOS["minio"])
    job = only(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "mc mb --ignore-existing local/lora-adapters" in script
    images = [
        c["image"]
        for d in find(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert all(not image.endswith(":latest") and ":" in image for image in images)


@pytest.mark.parametrize("scenario", ["minio", "policy"])
def test_minio_secret_opts_in_as_job_credentials(scenario: str, tmp_path: Path) -> None:
    """Named in a job's spec.output.credentialsSecret, it passes the platform policy's check."""
    docs = render(tmp_path, SCENARIOS[scenario])
    config = OperatorConfig.model_validate(
        yaml.safe_load(only(docs, "ConfigMap", "lora-lora-operator-config")["data"]["config.yaml"])
    )
    labels = only(docs, "Secret")["metadata"]["labels"]
    assert labels[config.policy.secret_opt_in_label] == "true"


def test_existing_minio_secret_is_used_not_created(tmp_path: Path) -> None:
    docs = render(tmp_path, SCENARIOS["minio-existing-secret"])
    assert not find(docs, "Secret") and not find(docs, "PersistentVolumeClaim")
    script = only(docs, "Job")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "local/adapters" in script and "local/datasets" in script


def test_service_monitor_selects_metrics_service(tmp_path: Path) -> None:
    docs = render(tmp_path, SCENARIOS["service-monitor"])
    monitor = only(docs, "ServiceMonitor")
    service = only(docs, "Service")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["r"] == "p"


def test_notes_tell_the_user_what_to_do_next() -> None:
    result = helm("install", "lora", str(CHART), "--dry-run=client", "--namespace", "x")
    assert "kubectl get lj -w" in result.stdout and "lorajob plan" in result.stdout


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_operator_args_are_accepted_by_lorajob_run(scenario: str, tmp_path: Path) -> None:
    """Every flag the chart passes exists in `lorajob run` (a typo would crash-loop the pod)."""
    from lora_operator.controller.main import build_parser

    docs = render(tmp_path, SCENARIOS[scenario])
    (operator,) = [d for d in find(docs, "Deployment") if "minio" not in d["metadata"]["name"]]
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["lorajob", "run"]
    parsed = build_parser().parse_args(container["args"])
    assert parsed.config == "/etc/lora-operator/config.yaml"
