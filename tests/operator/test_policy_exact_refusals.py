"""Every kind of platform-policy refusal, through the real operator process against the emulator,
with exact outcomes: the Validated condition, the status message and the Warning Event carry the
sentence written out below (spec field AND policy field), and the namespace is left exactly as it
was: no Job, ConfigMap, Secret, ServiceAccount, Service or InferenceService created, and every
object that was there (the user's own Secrets among them) keeps its resourceVersion. A control
job that the policy allows shows that the same snapshot does see what the operator creates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from operator_harness import LORAJOBS, NAMESPACE, Harness, base_job

from lora_operator.controller.kube import KubeError

OPT_IN = "finetune.lora-operator.io/credentials"
# What the operator could create for a job, besides Events and the LoRAJob's own status.
WATCHED = (
    "batch/v1/jobs",
    "v1/configmaps",
    "v1/secrets",
    "v1/serviceaccounts",
    "v1/services",
    "serving.kserve.io/v1beta1/inferenceservices",
)
CONTROL_PLANE_RULE = (
    "any key but the control-plane node roles node-role.kubernetes.io/control-plane, "
    "node-role.kubernetes.io/master"
)


def user_secret(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels or {}},
        "stringData": {"password": "hunter2"},
    }


@pytest.fixture(scope="module")
def tenant(harness: Harness) -> Iterator[Harness]:
    """The module's harness with two of the tenant's own Secrets: a database password that never
    opted in, and S3 keys that did."""
    made = [user_secret("team-db"), user_secret("team-s3", {OPT_IN: "true"})]
    for secret in made:
        harness.client.create("v1/secrets", NAMESPACE, secret)
    yield harness
    for secret in made:
        harness.client.delete("v1/secrets", NAMESPACE, secret["metadata"]["name"])


def snapshot(harness: Harness) -> dict[tuple[str, str], str]:
    """(resource, name) -> resourceVersion of everything the operator could create or change."""
    return {
        (resource, obj["metadata"]["name"]): obj["metadata"]["resourceVersion"]
        for resource in WATCHED
        for obj in harness.client.list(resource, NAMESPACE)
    }


def validated(harness: Harness, name: str) -> dict[str, Any]:
    conditions = harness.status(name).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Validated"), {})


def warning(harness: Harness, name: str, reason: str) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        return [e for e in harness.events(name) if e.get("reason") == reason]

    events: list[dict[str, Any]] = harness.wait(f"a {reason} Event for {name}", found)
    (event,) = events
    return event


# (case, spec overrides, the exact refusal)
REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    (
        "image",
        {"trainerImage": "registry.corp/ml/trainer:2"},
        "spec.trainerImage: 'registry.corp/ml/trainer:2' is not allowed by the platform policy "
        "(policy.allowedTrainerImages: lora-trainer:test)",
    ),
    (
        "endpoint-metadata",
        {"output.endpoint": "http://[::ffff:169.254.169.254]"},
        "spec.output.endpoint: 'http://[::ffff:169.254.169.254]' is a link-local (cloud metadata) "
        "address, refused by the platform policy unless listed in policy.allowedS3Endpoints",
    ),
    (
        "endpoint-loopback",
        {"output.endpoint": "http://0x7f000001:9000"},
        "spec.output.endpoint: 'http://0x7f000001:9000' is a loopback address, refused by the "
        "platform policy unless listed in policy.allowedS3Endpoints",
    ),
    (
        "endpoint-outside",
        {"output.endpoint": "https://s3.attacker.example"},
        "spec.output.endpoint: 'https://s3.attacker.example' is not allowed by the platform "
        "policy (policy.allowedS3Endpoints: {s3})",
    ),
    (
        "priority",
        {"resources.priorityClassName": "system-cluster-critical"},
        "spec.resources.priorityClassName: 'system-cluster-critical' is not allowed by the "
        "platform policy (policy.allowedPriorityClasses is unset: any class but system-*)",
    ),
    (
        "node-selector",
        {"resources.nodeSelector": {"node-role.kubernetes.io/control-plane": ""}},
        "spec.resources.nodeSelector: key 'node-role.kubernetes.io/control-plane' is not allowed "
        f"by the platform policy (policy.allowedNodeSelectorKeys is unset: {CONTROL_PLANE_RULE})",
    ),
    (
        "toleration",
        {"resources.tolerations": [{"operator": "Exists"}]},
        "spec.resources.tolerations[0]: {'operator': 'Exists'} (no key: it matches every taint) "
        "is not allowed by the platform policy (policy.allowedTolerations is unset: any "
        "toleration with a key but the control-plane taints "
        "node-role.kubernetes.io/control-plane, node-role.kubernetes.io/master)",
    ),
    (
        "secret",
        {
            "output.credentialsSecret": {
                "name": "team-db",
                "accessKeyKey": "password",
                "secretKeyKey": "password",
            }
        },
        "spec.output.credentialsSecret: Secret 'team-db' is not usable as job credentials by "
        "the platform policy (policy.requireSecretOptIn: the Secret must carry the label "
        f"{OPT_IN}=true)",
    ),
]


@pytest.mark.parametrize(
    ("case", "overrides", "refusal"), REFUSALS, ids=[case for case, _, _ in REFUSALS]
)
def test_a_refusal_names_both_fields_and_changes_nothing(
    tenant: Harness, case: str, overrides: dict[str, Any], refusal: str
) -> None:
    name = f"exact-{case}"
    expected = refusal.replace("{s3}", tenant.s3.endpoint)
    before = snapshot(tenant)
    assert ("v1/secrets", "team-db") in before and ("v1/secrets", "team-s3") in before
    try:
        tenant.apply(base_job(name, **overrides))
        status = tenant.wait_phase(name, "Failed")
        condition = validated(tenant, name)
        assert (condition["status"], condition["reason"]) == ("False", "PolicyViolation")
        assert condition["message"] == status["message"] == expected
        event = warning(tenant, name, "PolicyViolation")
        assert (event["type"], event["message"]) == ("Warning", expected)
        assert snapshot(tenant) == before
        assert status.get("runs", []) == []
    finally:
        tenant.clean_up()


def test_a_malformed_endpoint_is_refused_naming_the_field(tenant: Harness) -> None:
    name = "exact-bad-port"
    before = snapshot(tenant)
    try:
        tenant.apply(base_job(name, **{"output.endpoint": "http://minio:99999"}))
        status = tenant.wait_phase(name, "Failed")
        assert status["message"] == (
            "spec.output.endpoint: S3 endpoint 'http://minio:99999' is not a URL like "
            "http://minio:9000 (port '99999' is not a number from 1 to 65535)"
        )
        assert validated(tenant, name)["reason"] == "PolicyViolation"
        assert snapshot(tenant) == before
    finally:
        tenant.clean_up()


def test_a_look_alike_priority_class_is_refused_at_apply(tenant: Harness) -> None:
    """The CRD's pattern (the emulator enforces it, like the API server): the object is never
    stored, so the operator never sees it and nothing is created."""
    before = snapshot(tenant)
    for spelling in ("System-Node-Critical", " system-node-critical", "system\u2011node-critical"):
        with pytest.raises(KubeError) as refused:
            tenant.apply(base_job("exact-lookalike", **{"resources.priorityClassName": spelling}))
        assert refused.value.status == 422
        assert "spec.resources.priorityClassName" in refused.value.message, refused.value.message
        assert tenant.client.get(LORAJOBS, NAMESPACE, "exact-lookalike") is None
    tenant.created.clear()
    assert snapshot(tenant) == before


def test_the_control_an_allowed_job_is_created_and_seen(tenant: Harness) -> None:
    """Ordinary placement choices and the opted-in Secret pass, and the snapshot shows the
    objects the operator then makes: the checks above are not blind."""
    name = "exact-allowed"
    before = snapshot(tenant)
    try:
        tenant.apply(
            base_job(
                name,
                **{
                    "resources.nodeSelector": {"node-role.kubernetes.io/worker": ""},
                    "resources.tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "resources.priorityClassName": "batch-low",
                },
            )
        )
        tenant.wait_phase(name, "Running")
        assert validated(tenant, name)["reason"] == "Valid"
        after = snapshot(tenant)
        created = set(after) - set(before)
        assert {("batch/v1/jobs", f"{name}-r1"), ("v1/configmaps", f"{name}-r1-config")} <= created
        assert after[("v1/secrets", "team-db")] == before[("v1/secrets", "team-db")]
        job = tenant.job(f"{name}-r1")
        assert job is not None
        pod = job["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"node-role.kubernetes.io/worker": ""}
        assert pod["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert pod["priorityClassName"] == "batch-low"
    finally:
        tenant.clean_up()
