"""A run's children are kept as declared (controller/children.py), through the real operator
process against the emulator (or a real cluster): a child deleted mid-run is back at the next
resync (a new object, controlled by the LoRAJob), an edited declared field is put back while
fields the operator does not declare stay as edited, an object of that name someone else owns
is left exactly as it is (NameConflict), and the run still finishes. The operator resyncs every
0.5 s here (operator_harness.start_operator); each wait allows many resyncs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from operator_harness import Harness, base_job

from lora_devkit.emulator import ApiError

LABEL_RUN = "finetune.lora-operator.io/run"
ISVC = "serving.kserve.io/v1beta1/inferenceservices"
# (resource, name suffix after the LoRAJob's name) of each child of run r1
CHILDREN = {
    "ServiceAccount": ("v1/serviceaccounts", "-trainer"),
    "ConfigMap": ("v1/configmaps", "-r1-config"),
    "Service": ("v1/services", "-r1"),
    "Job": ("batch/v1/jobs", "-r1"),
}


def running(harness: Harness, name: str, **overrides: Any) -> dict[str, Any]:
    """A LoRAJob whose run r1 has its pods running; returns the LoRAJob."""
    harness.apply(base_job(name, **overrides))
    harness.wait_phase(name, "Running")
    harness.wait(f"Job {name}-r1", lambda: harness.job(f"{name}-r1"))
    harness.driver.start(f"{name}-r1")
    return harness.get(name)


def child(harness: Harness, kind: str, name: str) -> dict[str, Any] | None:
    resource, suffix = CHILDREN[kind]
    return harness.client.get(resource, harness.namespace, name + suffix)


def finishes(harness: Harness, name: str) -> None:
    """The run still ends well: its (possibly new) Job succeeds, the LoRAJob follows."""
    job = f"{name}-r1"
    if not (harness.job(job) or {}).get("status", {}).get("active"):
        harness.driver.start(job)
    harness.driver.succeed(job)
    harness.wait_phase(name, "Succeeded")


def restored_events(harness: Harness, name: str) -> list[str]:
    return [e["message"] for e in harness.events(name) if e.get("reason") == "Restored"]


@pytest.mark.parametrize("kind", list(CHILDREN))
def test_a_deleted_child_is_recreated_and_owned_by_the_job(harness: Harness, kind: str) -> None:
    name = f"gone-{kind.lower()}"
    lorajob = running(harness, name)
    before = child(harness, kind, name)
    assert before is not None
    resource, suffix = CHILDREN[kind]
    assert harness.client.delete(resource, harness.namespace, name + suffix)

    def recreated() -> dict[str, Any] | None:
        now = child(harness, kind, name)
        return now if now and now["metadata"]["uid"] != before["metadata"]["uid"] else None

    now = harness.wait(f"{kind} {name}{suffix} recreated", recreated)
    owner = now["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "LoRAJob",
        name,
        lorajob["metadata"]["uid"],
        True,
    )
    for field in ("data", "spec", "automountServiceAccountToken"):
        if kind != "Job":  # a Job's spec carries server state (the emulator's is as sent)
            assert now.get(field) == before.get(field), field
    where = f"{kind} {harness.namespace}/{name}{suffix}"
    messages = harness.wait("the Restored Event", lambda: restored_events(harness, name))
    assert any(m.startswith(f"recreated {where} (it was missing)") for m in messages), messages
    assert harness.status(name)["phase"] == "Running"
    finishes(harness, name)


def _edits() -> list[Any]:
    """(kind, merge patch that edits a declared field, where that field is, its value as the
    operator declares it, worked out from manifests.py by hand)."""
    return [
        pytest.param(
            "ConfigMap",
            {"data": {"config.yaml": "edited: true\n", "extra.yaml": "x"}},
            ("data",),
            None,  # the whole TrainerConfig text as first created
            id="configmap-data",
        ),
        pytest.param(
            "Service",
            {"spec": {"selector": {LABEL_RUN: "r9", "extra": "narrows"}}},
            ("spec", "selector"),
            lambda name: {"finetune.lora-operator.io/job": name, LABEL_RUN: "r1"},
            id="service-selector",
        ),
        pytest.param(
            "Service",
            {"spec": {"ports": [{"name": "http", "port": 80}]}},
            ("spec", "ports"),
            lambda name: [
                {"name": "rendezvous", "port": 29500, "targetPort": 29500, "protocol": "TCP"}
            ],
            id="service-ports",
        ),
        pytest.param(
            "Service",
            {"spec": {"publishNotReadyAddresses": False}},
            ("spec", "publishNotReadyAddresses"),
            lambda name: True,
            id="service-publishNotReadyAddresses",
        ),
        pytest.param(
            "Job",
            {"metadata": {"labels": {LABEL_RUN: "r9"}}},
            ("metadata", "labels", LABEL_RUN),
            lambda name: "r1",
            id="job-label",
        ),
        pytest.param(
            "Job",
            {"spec": {"suspend": True}},
            ("spec", "suspend"),
            lambda name: False,
            id="job-suspend",
        ),
        pytest.param(
            "ServiceAccount",
            {"automountServiceAccountToken": True},
            ("automountServiceAccountToken",),
            lambda name: False,
            id="trainer-account-token",
        ),
    ]


def value(obj: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = (obj or {}).get(key)  # type: ignore[assignment]
    return obj


@pytest.mark.parametrize(("kind", "edit", "path", "declared"), _edits())
def test_an_edited_declared_field_is_put_back(
    harness: Harness,
    request: pytest.FixtureRequest,
    kind: str,
    edit: dict[str, Any],
    path: tuple[str, ...],
    declared: Callable[[str], Any] | None,
) -> None:
    name = f"edit-{request.node.callspec.id.lower()}"
    running(harness, name)
    resource, suffix = CHILDREN[kind]
    before = child(harness, kind, name)
    expected = declared(name) if declared else value(before, path)
    # as created (an absent `suspend` is false to the API server, which fills it in)
    assert value(before, path) == expected or (expected is False and value(before, path) is None)
    # someone's own label beside the edit: not declared by the operator, so it stays
    labels = {**edit.get("metadata", {}).get("labels", {}), "team": "kept"}
    edit = {**edit, "metadata": {**edit.get("metadata", {}), "labels": labels}}
    harness.client.patch(resource, harness.namespace, name + suffix, edit, status=False)
    # (not read back here: the next resync may already have put it back; the Restored Event
    # below says the operator saw the edit)

    now = harness.wait(
        f"{kind} {name}{suffix} {'.'.join(path)} put back",
        lambda: (obj := child(harness, kind, name)) and value(obj, path) == expected and obj,
    )
    assert now["metadata"]["uid"] == before["metadata"]["uid"]  # the same object, patched
    assert now["metadata"]["labels"]["team"] == "kept"
    where = f"{kind} {harness.namespace}/{name}{suffix}"
    messages = harness.wait("the Restored Event", lambda: restored_events(harness, name))
    field = ".".join(path[:2] if path[0] == "metadata" else path)  # a label: the labels
    assert messages == [f"restored {field} of {where}"]
    # put back once: nothing differs any more, so the object is not written again
    version = now["metadata"]["resourceVersion"]
    time.sleep(1.5)
    assert child(harness, kind, name)["metadata"]["resourceVersion"] == version  # type: ignore[index]
    finishes(harness, name)


def foreign(kind: str, name: str) -> dict[str, Any]:
    """Someone else's object of the name the operator derives (no controller owner)."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "labels": {"owner": "someone-else"}},
    }
    if kind == "Service":
        body["spec"] = {"selector": {"app": "theirs"}, "ports": [{"port": 80}]}
    elif kind == "ConfigMap":
        body["data"] = {"theirs.txt": "keep me"}
    return body


def take_over(harness: Harness, kind: str, name: str) -> dict[str, Any]:
    """Delete the operator's child and put someone else's in its place (the operator may make
    its own again in between: then try again)."""
    resource, suffix = CHILDREN[kind]
    for _ in range(20):
        harness.client.delete(resource, harness.namespace, name + suffix)
        try:
            harness.client.create(resource, harness.namespace, foreign(kind, name + suffix))
        except ApiError as exc:
            if exc.status != 409:
                raise
            continue
        obj = child(harness, kind, name)
        assert obj is not None
        return obj
    raise AssertionError(f"could not put a foreign {kind} in place")


@pytest.mark.parametrize("kind", ["ServiceAccount", "ConfigMap", "Service"])
def test_a_same_named_object_it_does_not_own_is_left_alone(harness: Harness, kind: str) -> None:
    name = f"taken-{kind.lower()}"
    running(harness, name)
    theirs = take_over(harness, kind, name)
    resource, suffix = CHILDREN[kind]
    where = f"{kind} {harness.namespace}/{name}{suffix}"

    def conflict_said() -> list[str]:
        return [
            e["message"]
            for e in harness.events(name)
            if e.get("reason") == "NameConflict" and where in e["message"]
        ]

    said = harness.wait("the NameConflict Event", conflict_said)
    assert said[0].startswith(f"{where} already exists and is not owned by this LoRAJob")
    assert "it has no controller owner" in said[0]
    status = harness.status(name)
    assert status["phase"] == "Running" and status["message"] == said[0]
    time.sleep(1.5)  # three resyncs: theirs is not written, the Event not repeated
    assert child(harness, kind, name) == theirs
    assert len(conflict_said()) == 1
    finishes(harness, name)
    assert child(harness, kind, name) == theirs
    harness.client.delete(resource, harness.namespace, name + suffix)


def test_serving_objects_are_kept_while_serving(harness: Harness) -> None:
    """The InferenceService and the serving ServiceAccount: deleted -> made again, an edited
    spec -> put back (KServe has not reported Ready here, so the job resyncs every tick)."""
    name = "kept-serving"
    running(harness, name, **{"serving.enabled": True, "serving.mode": "dedicated"})
    finishes(harness, name)
    isvc = harness.wait(
        "InferenceService", lambda: harness.client.get(ISVC, harness.namespace, name)
    )
    account = harness.client.get("v1/serviceaccounts", harness.namespace, f"{name}-serving")
    assert account is not None
    uid = harness.get(name)["metadata"]["uid"]

    harness.client.delete(ISVC, harness.namespace, name)
    harness.client.delete("v1/serviceaccounts", harness.namespace, f"{name}-serving")
    again = harness.wait(
        "InferenceService recreated",
        lambda: (
            (o := harness.client.get(ISVC, harness.namespace, name))
            and o["metadata"]["uid"] != isvc["metadata"]["uid"]
            and o
        ),
    )
    assert again["metadata"]["ownerReferences"][0]["uid"] == uid
    assert again["spec"] == isvc["spec"]
    account_again = harness.wait(
        "serving ServiceAccount recreated",
        lambda: harness.client.get("v1/serviceaccounts", harness.namespace, f"{name}-serving"),
    )
    assert account_again["secrets"] == account["secrets"] == [{"name": "s3-creds"}]

    harness.client.patch(
        ISVC, harness.namespace, name, {"spec": {"predictor": {"minReplicas": 7}}}, status=False
    )
    harness.wait(
        "minReplicas put back",
        lambda: (
            (o := harness.client.get(ISVC, harness.namespace, name))
            and o["spec"]["predictor"]["minReplicas"] == 1
        ),
    )
    assert harness.status(name)["phase"] == "Succeeded"
