"""The real operator process against the emulator: objects that merely share a name the operator
derives (`<job>-s3`, the InferenceService `<job>`, a run's ConfigMap) are someone else's. The
operator must not patch, adopt or delete them; it reports a NameConflict in status and as a
Warning Event, and carries on once they are gone."""

from __future__ import annotations

import copy
from typing import Any

from operator_harness import Harness, base_job

ISVC = "serving.kserve.io/v1beta1/inferenceservices"


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == type_), {}
    )
    return found


def warnings(harness: Harness, name: str) -> list[str]:
    return [e.get("reason", "") for e in harness.events(name) if e.get("type") == "Warning"]


def stored(harness: Harness, resource: str, name: str) -> dict[str, Any]:
    obj = harness.client.get(resource, harness.namespace, name)
    assert obj is not None, f"{resource} {name} is gone"
    return obj


def test_unowned_secret_and_inference_service_are_never_touched(harness: Harness) -> None:
    name = "attacked"
    ns = harness.namespace
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-s3", "namespace": ns},
        "type": "Opaque",
        "data": {"AWS_ACCESS_KEY_ID": "cHJvZC1rZXk=", "AWS_SECRET_ACCESS_KEY": "cHJvZC1zZWNyZXQ="},
    }
    sklearn = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "predictor": {
                "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://models/iris"}
            }
        },
    }
    harness.client.create("v1/secrets", ns, copy.deepcopy(secret))
    harness.client.create(ISVC, ns, copy.deepcopy(sklearn))
    try:
        before = {
            "secret": stored(harness, "v1/secrets", f"{name}-s3"),
            "isvc": stored(harness, ISVC, name),
        }
        harness.apply(base_job(name, **{"serving.enabled": True}))
        # the first reconcile of a module plans on the meta device (slow on a busy machine)
        harness.wait_phase(name, "Running", timeout=120)
        job = f"{name}-r1"
        harness.wait(f"Job {job}", lambda: harness.job(job))
        harness.driver.start(job)
        harness.driver.succeed(job)
        harness.wait_phase(name, "Succeeded")
        status = harness.wait(
            "Serving=False/NameConflict",
            lambda: (
                condition(s := harness.status(name), "Serving").get("reason") == "NameConflict"
                and s
            ),
        )
        serving = condition(status, "Serving")
        assert serving["status"] == "False"
        assert f"Secret {ns}/{name}-s3 already exists and is not owned" in serving["message"]
        assert "inferenceService" not in status
        harness.wait("Warning Event", lambda: "ServingNameConflict" in warnings(harness, name))
        # byte-identical: same data and spec, and no write at all (same resourceVersion)
        assert stored(harness, "v1/secrets", f"{name}-s3") == before["secret"]
        assert stored(harness, ISVC, name) == before["isvc"]
        assert harness.client.get("v1/serviceaccounts", ns, f"{name}-serving") is None

        harness.patch_spec(name, {"serving": {"enabled": False}})
        status = harness.wait(
            "Serving=False/Disabled",
            lambda: (
                condition(s := harness.status(name), "Serving").get("reason") == "Disabled" and s
            ),
        )
        assert stored(harness, "v1/secrets", f"{name}-s3") == before["secret"]
        assert stored(harness, ISVC, name) == before["isvc"]
    finally:
        harness.client.delete("v1/secrets", ns, f"{name}-s3")
        harness.client.delete(ISVC, ns, name)


def test_a_squatting_config_map_holds_the_run_until_it_is_removed(harness: Harness) -> None:
    """Someone else's ConfigMap with the run's name: no Job is created next to it (its pods would
    read that ConfigMap as their training config); once it is deleted, the next resync starts."""
    name = "squatted"
    ns = harness.namespace
    config_map = f"{name}-r1-config"
    squatter = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map, "namespace": ns},
        "data": {"trainer.json": '{"not": "ours"}'},
    }
    harness.client.create("v1/configmaps", ns, copy.deepcopy(squatter))
    try:
        before = stored(harness, "v1/configmaps", config_map)
        harness.apply(base_job(name))
        status = harness.wait(
            "Running=False/NameConflict",
            lambda: (
                condition(s := harness.status(name), "Running").get("reason") == "NameConflict"
                and s
            ),
            timeout=120,
        )
        assert status["phase"] == "Pending"
        assert f"ConfigMap {ns}/{config_map} already exists" in status["message"]
        harness.wait("Warning Event", lambda: "NameConflict" in warnings(harness, name))
        assert harness.job(f"{name}-r1") is None
        assert stored(harness, "v1/configmaps", config_map) == before
    finally:
        harness.client.delete("v1/configmaps", ns, config_map)
    harness.wait_phase(name, "Running")
    assert harness.job(f"{name}-r1") is not None
    assert stored(harness, "v1/configmaps", config_map)["metadata"]["ownerReferences"]
