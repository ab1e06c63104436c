"""The real operator process against the emulator (or a real cluster): a LoRAJob from creation to
Succeeded and served, progress on the way, pod failures, suspend/resume, retraining on spec
changes, deletion and an operator restart mid-run. One operator serves the whole module, so each
test uses its own LoRAJob name."""

from __future__ import annotations

import time

from job_driver import OWNED_RESOURCES
from operator_harness import (
    LORAJOBS,
    Harness,
    base_job,
    start_operator,
)

from lora_contract.types import VERSION
from lora_devkit.operator_process import stop_operator
from lora_operator.api.crd import CRD_NAME, build_crd

ISVC = "serving.kserve.io/v1beta1/inferenceservices"


def condition(status: dict[str, object], type_: str) -> dict[str, object]:
    conditions = status.get("conditions") or []
    assert isinstance(conditions, list)
    found = next((c for c in conditions if c.get("type") == type_), None)
    assert found is not None, f"no {type_} condition in {conditions}"
    return found  # type: ignore[no-any-return]


def reasons(harness: Harness, name: str) -> list[str]:
    return [e.get("reason", "") for e in harness.events(name)]


def running(harness: Harness, name: str, run: str = "r1") -> str:
    """Wait until the run's Job exists and mark its pods running; returns the Job's name."""
    harness.wait_phase(name, "Running")
    job = f"{name}-{run}"
    harness.wait(f"Job {job}", lambda: harness.job(job))
    harness.driver.start(job)
    return job


def test_happy_path_to_succeeded_and_served(harness: Harness) -> None:
    name = "happy"
    harness.apply(
        base_job(
            name,
            **{"serving.enabled": True, "serving.mode": "dedicated", "serving.adapterName": "tiny"},
        )
    )
    status = harness.wait_phase(name, "Running")
    assert status["currentRun"] == "r1"
    assert condition(status, "Validated")["status"] == "True"
    assert condition(status, "Planned")["status"] == "True"
    assert condition(status, "Admitted")["status"] == "True"
    assert status["plan"]["nodes"] >= 1
    job = harness.job(f"{name}-r1")
    assert job is not None
    assert job["metadata"]["ownerReferences"][0]["uid"] == harness.get(name)["metadata"]["uid"]
    for resource, obj_name in (
        ("v1/services", f"{name}-r1"),
        ("v1/configmaps", f"{name}-r1-config"),
    ):
        assert harness.client.get(resource, harness.namespace, obj_name) is not None, obj_name
    harness.driver.start(f"{name}-r1")
    checkpoint = f"{harness.run_uri(name, 'r1')}/checkpoint-20"
    harness.write_progress(name, "r1", step=20, loss=1.5, latestCheckpoint=checkpoint)
    status = harness.wait(
        "live progress in status",
        lambda: (s := harness.status(name)).get("progress", {}).get("step") == 20 and s,
    )
    assert status["progress"]["loss"] == 1.5
    assert status["progressSummary"] == "20/40 (50%)"
    assert status["latestCheckpoint"].endswith("checkpoint-20")
    assert condition(status, "Running")["status"] == "True"
    adapter = f"{harness.run_uri(name, 'r1')}/final"
    harness.write_progress(
        name, "r1", state="succeeded", step=40, loss=1.1, evalLoss=1.2, adapterUri=adapter
    )
    harness.driver.succeed(f"{name}-r1")
    status = harness.wait_phase(name, "Succeeded")
    assert status["adapterURI"] == adapter
    assert status["runs"][0]["adapterURI"] == adapter
    assert status["runs"][0]["finalLoss"] == 1.1
    assert status["runs"][0]["finalEvalLoss"] == 1.2
    assert condition(status, "Succeeded")["status"] == "True"
    isvc = harness.wait(
        "InferenceService", lambda: harness.client.get(ISVC, harness.namespace, name)
    )
    model = isvc["spec"]["predictor"]["model"]
    assert "--enable-lora" in model["args"]
    assert "tiny=/mnt/models/adapter" in model["args"]
    assert adapter in [s["uri"] for s in model["storageUris"]]
    assert isvc["metadata"]["ownerReferences"][0]["name"] == name
    status = harness.wait(
        "Serving condition",
        lambda: harness.status(name).get("inferenceService") and harness.status(name),
    )
    assert condition(status, "Serving")["reason"] in ("Deploying", "Ready")
    # KServe reports the predictor ready: the Serving condition follows
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    harness.client.patch(
        ISVC,
        harness.namespace,
        name,
        {"status": {"url": "http://happy.default.example.com", "conditions": [ready]}},
        status=True,
    )
    status = harness.wait(
        "Serving=True",
        lambda: condition(s := harness.status(name), "Serving")["status"] == "True" and s,
    )
    assert "http://happy.default.example.com" in str(condition(status, "Serving")["message"])
    assert {"Planned", "Created", "Succeeded"} <= set(reasons(harness, name))


CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"


def test_invalid_spec_fails_without_creating_anything(harness: Harness) -> None:
    """The API server refuses such a spec (tests/demo/test_emulator_fidelity.py); it reaches the
    operator when the installed CRD is older and looser than the operator, simulated here by
    relaxing the served schema while the job is created."""
    name = "invalid"
    loose = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    versions = build_crd()["spec"]["versions"]
    relaxed = [{**v, "schema": loose} for v in versions]
    harness.client.patch(CRDS, None, CRD_NAME, {"spec": {"versions": relaxed}}, status=False)
    try:
        harness.apply(base_job(name, **{"lora.r": 0, "training.learningRate": -1}))
    finally:
        harness.client.patch(CRDS, None, CRD_NAME, {"spec": {"versions": versions}}, status=False)
    status = harness.wait_phase(name, "Failed")
    validated = condition(status, "Validated")
    assert validated["status"] == "False"
    assert validated["reason"] == "InvalidSpec"
    assert "lora.r" in str(validated["message"])
    assert "Traceback" not in str(status.get("message"))
    harness.wait("InvalidSpec event", lambda: "InvalidSpec" in reasons(harness, name))
    assert harness.job(f"{name}-r1") is None
    assert not status.get("runs")


def test_pod_failure_is_retried_and_resumes(harness: Harness) -> None:
    name = "flaky"
    harness.apply(base_job(name))
    job = running(harness, name)
    harness.write_progress(name, "r1", step=10, latestCheckpoint="checkpoint-10")
    # The Job's own podFailurePolicy (as the operator rendered it) decides: a kill is retried.
    assert harness.driver.fail_pod(job, 0, exit_code=137, message="OOMKilled") == "Count"
    status = harness.wait("restart counted", lambda: harness.status(name).get("restarts") == 1)
    harness.wait("PodFailed event", lambda: "PodFailed" in reasons(harness, name))
    status = harness.status(name)
    assert status["phase"] == "Running"
    harness.driver.start(job)  # the Job controller re-created the pod; it resumes
    harness.write_progress(name, "r1", step=40, state="succeeded")
    harness.driver.succeed(job)
    status = harness.wait_phase(name, "Succeeded")
    assert status["restarts"] == 1


def test_bad_config_exit_fails_the_job(harness: Harness) -> None:
    name = "badconfig"
    harness.apply(base_job(name))
    job = running(harness, name)
    harness.write_progress(
        name, "r1", state="failed", lastError="dataset has no 'completion' column"
    )
    # No hand-set failure: the podFailurePolicy the operator rendered turns exit 3 into FailJob.
    action = harness.driver.fail_pod(job, 0, exit_code=3, message="no 'completion' column")
    assert action == "FailJob"
    status = harness.wait_phase(name, "Failed")
    assert "completion" in status["message"]
    assert condition(status, "Failed")["reason"] == "PodFailurePolicy"


def test_suspend_deletes_job_and_resume_creates_it_again(harness: Harness) -> None:
    name = "pausable"
    harness.apply(base_job(name))
    job = running(harness, name)
    harness.patch_spec(name, {"suspend": True})
    status = harness.wait_phase(name, "Suspended")
    harness.wait("Job deleted", lambda: harness.job(job) is None)
    assert status["currentRun"] == "r1"
    assert "Suspended" in reasons(harness, name)
    harness.patch_spec(name, {"suspend": False})
    status = harness.wait_phase(name, "Running")
    assert status["currentRun"] == "r1"  # same run: resumes from its checkpoints
    assert len(status["runs"]) == 1
    assert harness.job(job) is not None


def test_training_change_starts_new_run_and_keeps_history(harness: Harness) -> None:
    name = "gitops"
    harness.apply(base_job(name))
    job = running(harness, name)
    harness.write_progress(name, "r1", state="succeeded", step=40, loss=0.9)
    harness.driver.succeed(job)
    harness.wait_phase(name, "Succeeded")
    # not training-relevant: serving replicas and labels
    harness.patch_spec(name, {"serving": {"replicas": 2}})
    harness.client.patch(
        LORAJOBS, harness.namespace, name, {"metadata": {"labels": {"team": "a"}}}, status=False
    )
    time.sleep(2.0)
    status = harness.status(name)
    assert status["phase"] == "Succeeded"
    assert len(status["runs"]) == 1
    # training-relevant: the learning rate
    harness.patch_spec(name, {"training": {"maxSteps": 40, "learningRate": 1e-4}})
    status = harness.wait("run r2", lambda: harness.status(name).get("currentRun") == "r2")
    status = harness.wait_phase(name, "Running")
    runs = {r["id"]: r for r in status["runs"]}
    assert runs["r1"]["phase"] == "Succeeded"
    assert runs["r1"]["finalLoss"] == 0.9
    assert runs["r1"]["outputURI"] != runs["r2"]["outputURI"]
    assert harness.job(f"{name}-r2") is not None
    if "generation" in harness.get(name)["metadata"]:
        assert status["observedGeneration"] == harness.get(name)["metadata"]["generation"]


def test_spec_change_mid_run_supersedes_the_running_job(harness: Harness) -> None:
    name = "superseded"
    harness.apply(base_job(name))
    job = running(harness, name)
    harness.patch_spec(name, {"lora": {"r": 16, "alpha": 32}})
    harness.wait("run r2", lambda: harness.status(name).get("currentRun") == "r2")
    harness.wait("r1's Job deleted", lambda: harness.job(job) is None)
    status = harness.wait_phase(name, "Running")
    assert [r["id"] for r in status["runs"]] == ["r1", "r2"]
    assert "Superseded" in reasons(harness, name)


def test_delete_removes_everything_it_created(harness: Harness) -> None:
    name = "deleted"
    harness.apply(base_job(name))
    running(harness, name)
    harness.client.delete(LORAJOBS, harness.namespace, name)  # nobody collects garbage by hand

    def leftovers() -> list[str]:
        return [
            f"{resource} {item['metadata']['name']}"
            for resource in OWNED_RESOURCES
            for item in harness.client.list(resource, harness.namespace)
            if item["metadata"].get("labels", {}).get("finetune.lora-operator.io/job") == name
        ]

    harness.wait("owned objects gone", lambda: not leftovers(), timeout=60)
    assert harness.client.get(LORAJOBS, harness.namespace, name) is None


def test_operator_restart_mid_run_loses_nothing(harness: Harness) -> None:
    assert harness.operator is not None and harness.log_path is not None  # the fixture starts it
    name = "restarted"
    harness.apply(base_job(name))
    job = running(harness, name)
    harness.write_progress(name, "r1", step=12)
    harness.wait("progress", lambda: harness.status(name).get("progress", {}).get("step") == 12)
    before = harness.get(name)
    stop_operator(harness.operator)
    harness.write_progress(name, "r1", step=30)
    harness.operator = start_operator(harness.kubeconfig, harness.config_path, harness.log_path)
    harness.wait(
        "progress after restart", lambda: harness.status(name).get("progress", {}).get("step") == 30
    )
    after = harness.status(name)
    assert after["currentRun"] == "r1"
    assert len(after["runs"]) == 1
    assert after["runs"][0]["startTime"] == before["status"]["runs"][0]["startTime"]
    jobs = [
        j
        for j in harness.client.list("batch/v1/jobs", harness.namespace)
        if j["metadata"].get("labels", {}).get("finetune.lora-operator.io/job") == name
    ]
    assert [j["metadata"]["name"] for j in jobs] == [job]
    assert jobs[0]["metadata"]["uid"] == harness.job(job)["metadata"]["uid"]  # type: ignore[index]
    harness.driver.succeed(job)
    harness.wait_phase(name, "Succeeded")


def test_the_cluster_serves_the_shipped_crd(harness: Harness) -> None:
    """The API server these tests ran against (the emulator, or a real cluster with KUBECONFIG and
    LORAJOB_TEST_REAL=1) serves the LoRAJob CRD exactly as generated from the types: otherwise the
    module would have tested some other schema."""
    served = harness.client.get("apiextensions.k8s.io/v1/customresourcedefinitions", None, CRD_NAME)
    assert served is not None, f"{CRD_NAME} is not installed: kubectl apply -f crds/"
    shipped = build_crd()["spec"]
    assert [v["name"] for v in served["spec"]["versions"]] == [VERSION]
    version = served["spec"]["versions"][0]
    assert version["schema"] == shipped["versions"][0]["schema"], "the installed CRD is stale"
    assert served["spec"]["names"]["kind"] == shipped["names"]["kind"]
