"""The real operator process against the emulator: objects that merely share a name the operator
derives (the InferenceService `<job>`, a run's ConfigMap) are someone else's. The operator must not
patch, adopt or delete them; it reports a NameConflict in status and as a Warning Event, and
carries on once they are gone. A Secret `<job>-s3` (the name of the credentials copy earlier
versions made) is not even read: serving lists the job's own Secret by name, and the operator
writes no Secret at all."""

from __future__ import annotations

import copy
from typing import Any

from operator_harness import SECRET, Harness, base_job

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


def secrets(harness: Harness) -> dict[str, str]:
    """Every Secret of the namespace: name -> resourceVersion (a write changes it)."""
    return {
        s["metadata"]["name"]: s["metadata"].get("resourceVersion", "")
        for s in harness.client.list("v1/secrets", harness.namespace)
    }


def test_a_users_s3_secret_is_never_touched_and_no_secret_is_created(harness: Harness) -> None:
    """Attack #4 (docs/security.md): a user's Secret `<job>-s3` with production keys, and an
    unrelated sklearn InferenceService `<job>`. The Secret stays byte-identical and no Secret
    appears or changes in the namespace through the job's whole life; the InferenceService is a
    NameConflict, never patched or deleted."""
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
            "secrets": secrets(harness),
        }
        assert before["secrets"][f"{name}-s3"]  # resourceVersions exist: a write would show
        harness.apply(base_job(name, **{"serving.enabled": True, "serving.mode": "dedicated"}))
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
        assert f"InferenceService {ns}/{name} already exists and is not owned" in serving["message"]
        assert "Secret" not in serving["message"]
        assert "inferenceService" not in status
        harness.wait("Warning Event", lambda: "ServingNameConflict" in warnings(harness, name))
        # byte-identical: same data and spec, and no write at all (same resourceVersion)
        assert stored(harness, "v1/secrets", f"{name}-s3") == before["secret"]
        assert stored(harness, ISVC, name) == before["isvc"]
        assert secrets(harness) == before["secrets"]  # none created, none changed
        account = stored(harness, "v1/serviceaccounts", f"{name}-serving")  # ours
        assert account["secrets"] == [{"name": SECRET}]  # the job's Secret, by name

        harness.patch_spec(name, {"serving": {"enabled": False}})
        status = harness.wait(
            "Serving=False/Disabled",
            lambda: (
                condition(s := harness.status(name), "Serving").get("reason") == "Disabled" and s
            ),
        )
        assert f"InferenceService {ns}/{name}" in condition(status, "Serving")["message"]
        assert stored(harness, "v1/secrets", f"{name}-s3") == before["secret"]
        assert stored(harness, ISVC, name) == before["isvc"]
        assert secrets(harness) == before["secrets"]
        assert harness.client.get("v1/serviceaccounts", ns, f"{name}-serving") is None
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
