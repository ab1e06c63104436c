"""The reconciler in-process against an in-memory API (`FakeKube`, the real client above it):
every reconcile path once. `test_api_calls_are_exactly_what_the_operator_uses` runs all of them
again itself (so it cannot pass vacuously under `-k`) and proves `api_calls.API_CALLS` lists exactly
the calls the operator makes (the chart's RBAC is compared with that set)."""

from __future__ import annotations

import asyncio
import copy
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import BUCKET, SECRET, base_job, gpu_job

from lora_contract.layout import S3Location
from lora_devkit.s3server import S3Server
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller.api_calls import API_CALLS
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.events import post_event
from lora_operator.controller.reconcile import SLOW_RESYNC_SECONDS, Reconciler

NS = "default"
LJ = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/default/lorajobs"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
PODS = "/api/v1/namespaces/default/pods"
ISVC = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"
SECRETS = "/api/v1/namespaces/default/secrets"
ACCOUNTS = "/api/v1/namespaces/default/serviceaccounts"
EVENTS = "/api/v1/namespaces/default/events"

WORLDS: list[World] = []  # every World built, so the coverage test can collect their calls


class World:
    def __init__(self, s3: S3Server, **config: Any) -> None:
        WORLDS.append(self)
        self.kube = FakeKube()
        self.s3 = s3
        raw = {"s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}}, **config}
        source = ConfigSource()
        source._config = OperatorConfig.model_validate(raw)
        self.reconciler = Reconciler(config=source, kube_factory=lambda: self.kube, emit=post_event)
        self.kube.put(
            SECRETS,
            {
                "metadata": {"name": SECRET, "namespace": NS},
                "stringData": {"accessKey": s3.access_key, "secretKey": s3.secret_key},
            },
        )

    def add(self, job: dict[str, Any]) -> None:
        job = copy.deepcopy(job)
        job["metadata"].update({"uid": f"uid-{job['metadata']['name']}", "generation": 1})
        job["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        self.kube.put(LJ, job)

    def reconcile(self, name: str) -> dict[str, Any]:
        asyncio.run(self.reconciler.reconcile(NS, name))
        obj = self.kube.obj(LJ, name) or {}
        status: dict[str, Any] = obj.get("status", {})
        return status

    def job_status(self, name: str, **status: Any) -> None:
        job = self.kube.obj(JOBS, name)
        assert job is not None, f"no Job {name}"
        job["status"] = status

    def progress(self, name: str, run: str, **fields: Any) -> None:
        self.s3.store().put_json(
            S3Location(BUCKET, f"runs/{name}/{run}/progress.json"),
            {"state": "running", "step": 1, "totalSteps": 40, **fields},
        )

    def reasons(self, name: str) -> list[str]:
        return [
            e["reason"]
            for e in self.kube.objects.get(EVENTS, {}).values()
            if e["involvedObject"]["name"] == name
        ]


@pytest.fixture
def world(s3: S3Server) -> Iterator[World]:
    yield World(s3)


def test_success_then_serving_then_serving_off(world: World) -> None:
    world.add(base_job("u-ok", **{"serving.enabled": True}))
    status = world.reconcile("u-ok")
    assert status["phase"] == "Running" and world.kube.obj(JOBS, "u-ok-r1")
    world.job_status("u-ok-r1", active=1)
    world.progress("u-ok", "r1", step=5, loss=2.0)
    status = world.reconcile("u-ok")
    assert status["progress"]["step"] == 5
    world.job_status("u-ok-r1", succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    status = world.reconcile("u-ok")
    assert status["phase"] == "Succeeded"
    isvc = world.kube.obj(ISVC, "u-ok")
    assert isvc is not None
    # someone edited what we own: the next reconcile puts it back (409 -> get -> patch)
    isvc["spec"]["predictor"]["minReplicas"] = 7
    world.kube.obj(SECRETS, "u-ok-s3")["stringData"] = {}  # type: ignore[index]
    world.kube.obj(ACCOUNTS, "u-ok-serving")["secrets"] = []  # type: ignore[index]
    world.reconcile("u-ok")
    assert world.kube.obj(ISVC, "u-ok")["spec"]["predictor"]["minReplicas"] == 1  # type: ignore[index]
    assert world.kube.obj(ACCOUNTS, "u-ok-serving")["secrets"]  # type: ignore[index]
    lj = world.kube.obj(LJ, "u-ok")
    assert lj is not None
    lj["spec"]["serving"]["enabled"] = False
    status = world.reconcile("u-ok")
    assert world.kube.obj(ISVC, "u-ok") is None and world.kube.obj(SECRETS, "u-ok-s3") is None
    assert "inferenceService" not in status
    assert {"Planned", "Created", "Succeeded"} <= set(world.reasons("u-ok"))


def test_kserve_absent_still_succeeds(world: World) -> None:
    world.add(base_job("u-nokserve", **{"serving.enabled": True}))
    world.reconcile("u-nokserve")
    world.job_status("u-nokserve-r1", conditions=[{"type": "Complete", "status": "True"}])

    original = world.kube.request

    async def no_kserve(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if "serving.kserve.io" in path:
            from lora_operator.controller.kube import KubeError

            raise KubeError(404, "the server could not find the requested resource")
        return await original(method, path, *args, **kwargs)

    world.kube.request = no_kserve  # type: ignore[method-assign]
    status = world.reconcile("u-nokserve")
    assert status["phase"] == "Succeeded"
    serving = next(c for c in status["conditions"] if c["type"] == "Serving")
    assert serving["reason"] == "KServeNotInstalled" and "install KServe" in serving["message"]
    # looked at again only every few minutes (KServe may be installed later)
    assert world.reconciler.periodic[(NS, "u-nokserve")] == SLOW_RESYNC_SECONDS


def test_failure_reports_the_trainers_message(world: World) -> None:
    world.add(base_job("u-fail"))
    world.reconcile("u-fail")
    world.kube.put(
        PODS,
        {
            "metadata": {
                "name": "u-fail-r1-0-x",
                "labels": {
                    "finetune.lora-operator.io/job": "u-fail",
                    "finetune.lora-operator.io/run": "r1",
                },
            },
            "status": {
                "containerStatuses": [
                    {"state": {"terminated": {"exitCode": 3, "message": "bad dataset column"}}}
                ]
            },
        },
    )
    world.job_status(
        "u-fail-r1",
        failed=1,
        conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}],
    )
    status = world.reconcile("u-fail")
    assert status["phase"] == "Failed" and status["message"] == "bad dataset column"
    assert status["runs"][0]["phase"] == "Failed"


def test_suspend_then_resume_reuses_config_and_service(world: World) -> None:
    world.add(base_job("u-susp"))
    world.reconcile("u-susp")
    lj = world.kube.obj(LJ, "u-susp")
    assert lj is not None
    lj["spec"]["suspend"] = True
    assert world.reconcile("u-susp")["phase"] == "Suspended"
    assert world.kube.obj(JOBS, "u-susp-r1") is None
    lj["spec"]["suspend"] = False
    assert world.reconcile("u-susp")["phase"] == "Running"  # ConfigMap/Service: 409 -> get
    assert world.kube.obj(JOBS, "u-susp-r1") is not None


def test_ttl_deletes_the_finished_job(world: World) -> None:
    world.add(base_job("u-ttl", ttlSecondsAfterFinished=0))
    world.reconcile("u-ttl")
    world.job_status("u-ttl-r1", conditions=[{"type": "Complete", "status": "True"}])
    world.reconcile("u-ttl")
    assert world.kube.obj(LJ, "u-ttl") is None


def test_invalid_spec_creates_nothing(world: World) -> None:
    world.add(base_job("u-bad", **{"lora.r": 0}))
    status = world.reconcile("u-bad")
    assert status["phase"] == "Failed"
    assert "lora.r" in status["message"]
    assert not world.kube.objects.get(JOBS)
    assert "InvalidSpec" in world.reasons("u-bad")


def test_queue_and_admission(s3: S3Server) -> None:
    world = World(s3, quotas={"default": {"gpus": 2}})
    world.add(gpu_job("u-q1", 2))
    world.add(gpu_job("u-q2", 2))
    assert world.reconcile("u-q1")["phase"] == "Running"
    status = world.reconcile("u-q2")
    assert status["phase"] == "Queued" and status["queuePosition"] == 1
    assert "uses 2 of 2 GPUs" in status["message"]
    world.job_status("u-q1-r1", conditions=[{"type": "Complete", "status": "True"}])
    world.reconcile("u-q1")
    assert world.reconcile("u-q2")["phase"] == "Running"


def test_retrain_only_when_the_training_spec_changes(world: World) -> None:
    """The retrain decision at unit level: scheduling/serving edits keep the run; a training
    edit starts r2 with its own output and keeps r1 in the history; an edit while r2 runs
    supersedes it (its Job is deleted) and starts r3."""
    world.add(base_job("u-git"))
    world.reconcile("u-git")
    world.progress("u-git", "r1", state="succeeded", step=40, loss=0.9)
    world.job_status("u-git-r1", succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    status = world.reconcile("u-git")
    assert status["phase"] == "Succeeded"
    first_hash = status["specHash"]
    lj = world.kube.obj(LJ, "u-git")
    assert lj is not None
    spec = lj["spec"]
    not_training = {
        "serving": {"enabled": False, "replicas": 2},
        "resources": {**spec["resources"], "priorityClassName": "low", "nodeSelector": {"a": "b"}},
    }
    for key, value in not_training.items():
        spec[key] = value
        status = world.reconcile("u-git")
        assert status["phase"] == "Succeeded", key
        assert [r["id"] for r in status["runs"]] == ["r1"], key
        assert status["specHash"] == first_hash, key
    assert world.kube.obj(JOBS, "u-git-r2") is None

    spec["training"] = {**spec["training"], "learningRate": 1e-4}
    status = world.reconcile("u-git")
    assert status["currentRun"] == "r2" and status["specHash"] != first_hash
    runs = {r["id"]: r for r in status["runs"]}
    assert runs["r1"]["phase"] == "Succeeded" and runs["r1"]["finalLoss"] == 0.9
    assert runs["r2"]["outputURI"] != runs["r1"]["outputURI"]
    assert world.kube.obj(JOBS, "u-git-r2") is not None

    spec["lora"] = {"r": 16, "alpha": 32}
    status = world.reconcile("u-git")
    assert [r["id"] for r in status["runs"]] == ["r1", "r2", "r3"]
    assert world.kube.obj(JOBS, "u-git-r2") is None  # superseded
    assert world.kube.obj(JOBS, "u-git-r3") is not None
    assert "Superseded" in world.reasons("u-git")


def test_a_malformed_object_does_not_hold_up_the_others(world: World) -> None:
    """Written under an older, looser CRD: spec and status are lists. The start-up warm-up lists
    every job; the good job is still launched at once and the bad one fails validation."""
    world.kube.put(
        LJ,
        {
            "apiVersion": "finetune.lora-operator.io/v1alpha1",
            "kind": "LoRAJob",
            "metadata": {"name": "u-malformed", "namespace": NS, "uid": "uid-m"},
            "spec": ["not", "a", "mapping"],
            "status": ["neither"],
        },
    )
    world.add(base_job("u-good"))
    assert world.reconcile("u-good")["phase"] == "Running"
    status = world.reconcile("u-malformed")
    assert status["phase"] == "Failed" and "spec" in status["message"]


def test_status_is_patched_only_when_it_changes(world: World) -> None:
    """A resync that finds nothing new writes nothing (1000 idle jobs cost no status writes)."""
    status_patch = ("finetune.lora-operator.io", "lorajobs/status", "patch")
    world.add(base_job("u-idle"))
    world.reconcile("u-idle")
    assert status_patch in world.kube.calls
    world.kube.calls.clear()
    world.reconcile("u-idle")
    assert status_patch not in world.kube.calls
    world.job_status("u-idle-r1", active=1)
    assert world.reconcile("u-idle")["conditions"]
    assert status_patch in world.kube.calls  # the Running condition flipped


SCENARIOS: list[Callable[..., None]] = [
    test_success_then_serving_then_serving_off,
    test_kserve_absent_still_succeeds,
    test_failure_reports_the_trainers_message,
    test_suspend_then_resume_reuses_config_and_service,
    test_ttl_deletes_the_finished_job,
    test_invalid_spec_creates_nothing,
    test_queue_and_admission,
    test_retrain_only_when_the_training_spec_changes,
    test_a_malformed_object_does_not_hold_up_the_others,
    test_status_is_patched_only_when_it_changes,
]


def test_every_reconcile_test_is_a_scenario() -> None:
    tests = {
        name
        for name, fn in globals().items()
        if name.startswith("test_") and callable(fn) and fn not in SCENARIOS
    }
    assert tests == {
        "test_api_calls_are_exactly_what_the_operator_uses",
        "test_every_reconcile_test_is_a_scenario",
    }, "add new reconcile tests to SCENARIOS so their API calls are checked"


def test_api_calls_are_exactly_what_the_operator_uses(s3: S3Server) -> None:
    """Runs every scenario above itself, then compares the calls made with `API_CALLS`."""
    WORLDS.clear()
    for scenario in SCENARIOS:
        if "world" in inspect.signature(scenario).parameters:
            scenario(World(s3))
        else:
            scenario(s3)
    seen = {call for world in WORLDS for call in world.kube.calls}
    assert set() == seen - API_CALLS, f"used but not declared: {sorted(seen - API_CALLS)}"
    assert set() == API_CALLS - seen, f"declared but never used: {sorted(API_CALLS - seen)}"
