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
from lora_operator.api.operator_config import CREDENTIALS_OPT_IN_LABEL as OPT_IN
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller.api_calls import API_CALLS
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.events import post_event
from lora_operator.controller.reconcile import (
    POLICY_RECHECK_SECONDS,
    SLOW_RESYNC_SECONDS,
    Reconciler,
)

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
            S3Location(BUCKET, f"runs/{NS}/{name}/{run}/progress.json"),
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
    world.add(base_job("u-ok", **{"serving.enabled": True, "serving.mode": "dedicated"}))
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
    # built from the stored serving plan (memory/serving_plan.py): trained on CPU, served on CPU
    # with the plan's vLLM flags and 4 cores (the CPU serving rule), no GPU
    planned = status["plan"]["serving"]
    model = isvc["spec"]["predictor"]["model"]
    assert planned["gpus"] == 0 and planned["vllmArgs"][1:] == [
        "--max-num-seqs=8",
        "--max-loras=4",
        "--max-cpu-loras=8",
    ]
    assert model["args"][-4:] == planned["vllmArgs"]
    assert model["resources"]["requests"]["cpu"] == "4"
    assert not any("gpu" in key for key in model["resources"]["requests"])
    # someone edited what we own: the next reconcile puts it back (409 -> get -> patch)
    isvc["spec"]["predictor"]["minReplicas"] = 7
    world.kube.obj(ACCOUNTS, "u-ok-serving")["secrets"] = []  # type: ignore[index]
    world.reconcile("u-ok")
    assert world.kube.obj(ISVC, "u-ok")["spec"]["predictor"]["minReplicas"] == 1  # type: ignore[index]
    # the job's own credentials Secret, by name: no copy
    assert world.kube.obj(ACCOUNTS, "u-ok-serving")["secrets"] == [{"name": SECRET}]  # type: ignore[index]
    assert list(world.kube.objects[SECRETS]) == [SECRET]
    lj = world.kube.obj(LJ, "u-ok")
    assert lj is not None
    lj["spec"]["serving"]["enabled"] = False
    status = world.reconcile("u-ok")
    assert world.kube.obj(ISVC, "u-ok") is None and world.kube.obj(ACCOUNTS, "u-ok-serving") is None
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


def test_policy_refuses_an_unlabelled_secret_until_it_opts_in(world: World) -> None:
    """A database password named as S3 credentials: refused with the policy named, nothing
    created, one Warning Event; the Secret's owner adds the opt-in label and the next reconcile
    (the periodic re-check) starts the job."""
    world.kube.put(
        SECRETS,
        {
            "metadata": {"name": "db-password", "namespace": NS},
            "stringData": {"password": world.s3.secret_key, "user": world.s3.access_key},
        },
    )
    ref = {"name": "db-password", "accessKeyKey": "user", "secretKeyKey": "password"}
    world.add(base_job("u-policy", **{"output.credentialsSecret": ref}))
    for _ in range(2):
        status = world.reconcile("u-policy")
        assert status["phase"] == "Failed"
        validated = next(c for c in status["conditions"] if c["type"] == "Validated")
        assert validated["status"] == "False" and validated["reason"] == "PolicyViolation"
        assert "spec.output.credentialsSecret" in validated["message"]
        label = f"policy.requireSecretOptIn: the Secret must carry the label {OPT_IN}=true"
        assert label in status["message"]
    assert not world.kube.objects.get(JOBS) and world.kube.obj(SECRETS, "u-policy-s3") is None
    assert world.reasons("u-policy") == ["PolicyViolation"]  # once, not at every re-check
    assert world.reconciler.periodic[(NS, "u-policy")] == POLICY_RECHECK_SECONDS
    secret = world.kube.obj(SECRETS, "db-password")
    assert secret is not None
    secret["metadata"]["labels"] = {OPT_IN: "true"}
    status = world.reconcile("u-policy")
    assert status["phase"] == "Running" and world.kube.obj(JOBS, "u-policy-r1") is not None
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert validated["status"] == "True"


def test_policy_refusal_mid_run_keeps_the_run(world: World) -> None:
    """A running job edited to a foreign trainer image: refused, its phase and Job kept (they
    were allowed when made); edited back, it is followed again."""
    world.add(base_job("u-polrun"))
    world.reconcile("u-polrun")
    world.job_status("u-polrun-r1", active=1)
    lj = world.kube.obj(LJ, "u-polrun")
    assert lj is not None
    lj["spec"]["trainerImage"] = "evil/img:1"
    status = world.reconcile("u-polrun")
    assert status["phase"] == "Running" and "spec.trainerImage: 'evil/img:1'" in status["message"]
    assert world.kube.obj(JOBS, "u-polrun-r1") is not None
    assert "PolicyViolation" in world.reasons("u-polrun")
    del lj["spec"]["trainerImage"]
    status = world.reconcile("u-polrun")
    assert status["phase"] == "Running" and status["message"] == "training"
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert validated["reason"] == "Valid"


# ------------------------------------------------------------- objects the operator does not own

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
SERVICES = "/api/v1/namespaces/default/services"
COMPLETE = [{"type": "Complete", "status": "True"}]


def condition_of(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == type_)
    return found


def warnings(world: World, name: str) -> list[str]:
    return [
        e["reason"]
        for e in world.kube.objects.get(EVENTS, {}).values()
        if e["involvedObject"]["name"] == name and e["type"] == "Warning"
    ]


def foreign(kind: str, name: str, **fields: Any) -> dict[str, Any]:
    """Someone else's object (no controller owner) holding a name the operator derives."""
    return {"kind": kind, "metadata": {"name": name, "namespace": NS, "uid": "uid-x"}, **fields}


def test_policy_refused_queued_job_gives_up_its_place(s3: S3Server) -> None:
    """A queued job edited to a system PriorityClass goes back to Pending and reserves no GPUs,
    so the next job in the queue starts when GPUs free up; fixed, it queues again."""
    world = World(s3, quotas={"default": {"gpus": 2}})
    for name in ("u-pq1", "u-pq2", "u-pq3"):
        world.add(gpu_job(name, 2))
        world.reconcile(name)
    lj = world.kube.obj(LJ, "u-pq2")
    assert lj is not None
    lj["spec"]["resources"]["priorityClassName"] = "system-node-critical"
    status = world.reconcile("u-pq2")
    assert status["phase"] == "Pending" and "queuePosition" not in status
    assert "policy.allowedPriorityClasses" in status["message"]
    world.job_status("u-pq1-r1", conditions=[{"type": "Complete", "status": "True"}])
    world.reconcile("u-pq1")
    assert world.reconcile("u-pq3")["phase"] == "Running"
    del lj["spec"]["resources"]["priorityClassName"]
    assert world.reconcile("u-pq2")["phase"] == "Queued"


def test_serving_never_takes_over_objects_it_does_not_own(world: World) -> None:
    """An unowned ServiceAccount `<job>-serving` and an unrelated sklearn InferenceService
    `<job>`: neither is patched, both are reported, neither is deleted when serving is turned
    off. A user's Secret `<job>-s3` (the old copy's name) is not even looked at."""
    secret = foreign("Secret", "u-own-s3", data={"AWS_ACCESS_KEY_ID": "cHJvZA=="})
    account = foreign("ServiceAccount", "u-own-serving", secrets=[{"name": "ci-registry"}])
    sklearn = foreign(
        "InferenceService",
        "u-own",
        spec={"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
    )
    world.kube.put(SECRETS, copy.deepcopy(secret))
    world.kube.put(ACCOUNTS, copy.deepcopy(account))
    world.kube.put(ISVC, copy.deepcopy(sklearn))
    world.add(base_job("u-own", **{"serving.enabled": True, "serving.mode": "dedicated"}))
    world.reconcile("u-own")
    world.job_status("u-own-r1", succeeded=1, conditions=COMPLETE)
    status = world.reconcile("u-own")
    assert status["phase"] == "Succeeded" and "inferenceService" not in status
    serving = condition_of(status, "Serving")
    assert (serving["status"], serving["reason"]) == ("False", "NameConflict")
    assert (
        "ServiceAccount default/u-own-serving already exists and is not owned" in serving["message"]
    )
    assert warnings(world, "u-own") == ["ServingNameConflict"]
    assert world.kube.obj(ACCOUNTS, "u-own-serving") == account
    assert world.kube.obj(ISVC, "u-own") == sklearn
    # waits for a person: looked at again only now and then
    assert world.reconciler.periodic[(NS, "u-own")] == SLOW_RESYNC_SECONDS
    # the account's owner moves it away: the operator makes its own; the sklearn one still blocks
    del world.kube.objects[ACCOUNTS]["u-own-serving"]
    status = world.reconcile("u-own")
    assert "InferenceService default/u-own" in condition_of(status, "Serving")["message"]
    assert world.kube.obj(ISVC, "u-own") == sklearn
    assert world.kube.obj(ACCOUNTS, "u-own-serving") is not None  # ours now
    lj = world.kube.obj(LJ, "u-own")
    assert lj is not None
    lj["spec"]["serving"]["enabled"] = False
    status = world.reconcile("u-own")
    serving = condition_of(status, "Serving")
    assert serving["reason"] == "Disabled"
    left_alone = "left alone (not owned by this LoRAJob): InferenceService default/u-own"
    assert left_alone in serving["message"]
    assert world.kube.obj(ISVC, "u-own") == sklearn
    assert world.kube.obj(ACCOUNTS, "u-own-serving") is None  # ours: deleted
    assert world.kube.obj(SECRETS, "u-own-s3") == secret  # never ours, never touched


def test_a_recreated_lorajob_does_not_adopt_what_its_namesake_left(world: World) -> None:
    """Deleted and recreated under the same name before the garbage collector ran: the old
    uid's Job, ConfigMap and serving objects are not the new LoRAJob's. It neither follows the
    old Job (which would report the old run's result) nor creates its own beside them, and says
    why until they are gone."""
    world.add(base_job("u-again", **{"serving.enabled": True, "serving.mode": "dedicated"}))
    world.reconcile("u-again")
    world.job_status("u-again-r1", succeeded=1, conditions=COMPLETE)
    assert world.reconcile("u-again")["phase"] == "Succeeded"
    world.kube.objects[LJ].pop("u-again")
    world.add(base_job("u-again", **{"serving.enabled": True, "serving.mode": "dedicated"}))
    world.kube.obj(LJ, "u-again")["metadata"]["uid"] = "uid-u-again-2"  # type: ignore[index]
    left = copy.deepcopy({k: v for k, v in world.kube.objects.items() if k not in (LJ, EVENTS)})

    status = world.reconcile("u-again")
    assert status["phase"] == "Pending"
    running = condition_of(status, "Running")
    assert (running["status"], running["reason"]) == ("False", "NameConflict")
    assert "Job default/u-again-r1" in running["message"]
    assert "controlled by LoRAJob u-again (uid uid-u-again)" in running["message"]
    world.reconcile("u-again")  # still there: said once, not at every resync
    assert warnings(world, "u-again") == ["NameConflict"]
    assert world.reconciler.periodic[(NS, "u-again")] == 0.0  # retried at every resync
    assert {k: v for k, v in world.kube.objects.items() if k not in (LJ, EVENTS)} == left

    del world.kube.objects[JOBS]["u-again-r1"]  # the old Job goes; its ConfigMap etc. block
    status = world.reconcile("u-again")
    assert "already exists and is not owned by this LoRAJob" in status["message"]
    assert world.kube.obj(JOBS, "u-again-r1") is None  # no Job beside someone else's objects

    for path in (CONFIGMAPS, SERVICES, ACCOUNTS):  # the rest of the old run's objects go
        for stale in [n for n in world.kube.objects.get(path, {}) if n != "u-again-serving"]:
            del world.kube.objects[path][stale]
    assert world.reconcile("u-again")["phase"] == "Running"
    job = world.kube.obj(JOBS, "u-again-r1")
    assert job is not None and job["metadata"]["ownerReferences"][0]["uid"] == "uid-u-again-2"
    world.job_status("u-again-r1", succeeded=1, conditions=COMPLETE)
    status = world.reconcile("u-again")
    assert condition_of(status, "Serving")["reason"] == "NameConflict"
    assert world.kube.obj(ACCOUNTS, "u-again-serving") == left[ACCOUNTS]["u-again-serving"]


def test_retrain_and_suspend_delete_only_their_own_jobs(world: World) -> None:
    world.add(base_job("u-rt"))
    world.reconcile("u-rt")
    squatter = foreign("Job", "u-rt-r1", spec={"template": {}})
    world.kube.put(JOBS, copy.deepcopy(squatter))  # ours replaced by someone else's
    assert condition_of(world.reconcile("u-rt"), "Running")["reason"] == "NameConflict"
    lj = world.kube.obj(LJ, "u-rt")
    assert lj is not None
    lj["spec"]["training"] = {**lj["spec"]["training"], "learningRate": 1e-4}
    status = world.reconcile("u-rt")  # r2 supersedes r1: r1's name is not ours to delete
    assert status["currentRun"] == "r2" and status["phase"] == "Running"
    assert world.kube.obj(JOBS, "u-rt-r1") == squatter
    lj["spec"]["suspend"] = True
    assert world.reconcile("u-rt")["phase"] == "Suspended"
    assert world.kube.obj(JOBS, "u-rt-r2") is None  # ours: deleted
    world.kube.put(JOBS, foreign("Job", "u-rt-r2", spec={"template": {}}))
    world.reconcile("u-rt")  # suspended again: someone else's Job of that name stays
    assert world.kube.obj(JOBS, "u-rt-r2") is not None


def test_a_finished_run_records_its_forecast_beside_the_actual(world: World) -> None:
    world.add(base_job("u-fc"))
    status = world.reconcile("u-fc")
    forecast = status["plan"]["forecast"]
    assert forecast["tokens"] == 40 * 8 * 256  # maxSteps x global batch x maxSeqLength
    frozen = status["runs"][0]["forecast"]
    assert frozen["hours"] == forecast["hours"] and "actualHours" not in frozen
    world.progress("u-fc", "r1", step=40, totalSteps=40)
    world.job_status("u-fc-r1", succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    done = world.reconcile("u-fc")["runs"][0]["forecast"]
    assert done["actualHours"] >= 0 and done["forecastRatio"] >= 0
    assert done["actualGpuHours"] == pytest.approx(done["actualHours"] * done["gpus"])


def test_a_running_runs_children_are_kept_as_declared(world: World) -> None:
    """Mid-run, edited children get their declared fields back and a deleted Job is made again
    without a new admission (children.py); each with a Restored Event, nothing else changes."""
    world.add(base_job("u-kept"))
    assert world.reconcile("u-kept")["phase"] == "Running"
    config = world.kube.obj(CONFIGMAPS, "u-kept-r1-config")
    service = world.kube.obj(SERVICES, "u-kept-r1")
    job = world.kube.obj(JOBS, "u-kept-r1")
    assert config is not None and service is not None and job is not None
    text = dict(config["data"])
    config["data"] = {"trainer.yaml": "edited"}
    service["spec"]["selector"]["finetune.lora-operator.io/run"] = "r9"
    job["metadata"]["labels"]["finetune.lora-operator.io/run"] = "r9"
    world.job_status("u-kept-r1", active=1, startTime="2026-01-01T00:00:00Z")
    status = world.reconcile("u-kept")
    assert status["phase"] == "Running"
    assert list(text) == ["config.yaml"] and config["data"] == text  # the added key removed
    assert service["spec"]["selector"]["finetune.lora-operator.io/run"] == "r1"
    assert job["metadata"]["labels"]["finetune.lora-operator.io/run"] == "r1"
    assert world.reasons("u-kept").count("Restored") == 3
    del world.kube.objects[JOBS]["u-kept-r1"]
    status = world.reconcile("u-kept")
    assert status["phase"] == "Running" and world.reasons("u-kept").count("Restored") == 4
    recreated = world.kube.obj(JOBS, "u-kept-r1")
    assert recreated is not None and recreated["metadata"]["uid"] != job["metadata"]["uid"]


RUNTIMES = "/apis/serving.kserve.io/v1alpha1/namespaces/default/servingruntimes"


def test_a_shared_servers_runtime_is_kept_and_goes_with_the_last_job(world: World) -> None:
    """serving.mode shared: the registry's ServingRuntime sized by the job's serving plan (a CPU
    plan: the flags and 4 cores, as the dedicated server above), put back when edited, deleted
    when the last job on it turns serving off (shared_runtime.py, children.SERVING_RUNTIME)."""
    world.add(base_job("u-sh", **{"serving.enabled": True, "serving.mode": "shared"}))
    world.reconcile("u-sh")
    world.job_status("u-sh-r1", succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    server = world.reconcile("u-sh")["inferenceService"]
    runtime = world.kube.obj(RUNTIMES, server)
    assert runtime is not None
    vllm, sync = runtime["spec"]["containers"]
    assert vllm["args"][-3:] == ["--max-num-seqs=8", "--max-loras=4", "--max-cpu-loras=8"]
    assert vllm["resources"]["requests"]["cpu"] == "4"
    assert sync["image"] == "ghcr.io/lora-operator/trainer:0.1.0"  # the operator config's
    sync["image"] = "someone/else:1"
    world.reconcile("u-sh")
    kept = world.kube.obj(RUNTIMES, server)
    assert kept is not None
    assert kept["spec"]["containers"][1]["image"] == "ghcr.io/lora-operator/trainer:0.1.0"
    lj = world.kube.obj(LJ, "u-sh")
    assert lj is not None
    lj["spec"]["serving"]["enabled"] = False
    world.reconcile("u-sh")
    assert world.kube.obj(RUNTIMES, server) is None and world.kube.obj(ISVC, server) is None


LLMISVCS = "/apis/serving.kserve.io/v1alpha1/namespaces/default/llminferenceservices"


def test_a_shared_llm_inference_service_where_the_cluster_serves_one(world: World) -> None:
    """Discovery lists KServe's LLMInferenceService (serving_api.py): the shared server is one
    (no InferenceService, no ServingRuntime), put back when edited, deleted when the last job
    on it turns serving off (shared_llmisvc.py, children.LLM_INFERENCE_SERVICE)."""
    world.kube.discovery = {"serving.kserve.io/v1alpha1": ["llminferenceservices"]}
    world.add(base_job("u-llm", **{"serving.enabled": True, "serving.mode": "shared"}))
    world.reconcile("u-llm")
    world.job_status("u-llm-r1", succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    server = world.reconcile("u-llm")["inferenceService"]
    llmisvc = world.kube.obj(LLMISVCS, server)
    assert llmisvc is not None and "router" not in llmisvc["spec"]
    assert world.kube.obj(ISVC, server) is None and world.kube.obj(RUNTIMES, server) is None
    llmisvc["spec"]["replicas"] = 5
    world.reconcile("u-llm")
    assert world.kube.obj(LLMISVCS, server)["spec"]["replicas"] == 1  # type: ignore[index]
    lj = world.kube.obj(LJ, "u-llm")
    assert lj is not None
    lj["spec"]["serving"]["enabled"] = False
    world.reconcile("u-llm")
    assert world.kube.obj(LLMISVCS, server) is None


def test_a_deleted_shared_jobs_entry_is_swept_without_the_others_reconcile(world: World) -> None:
    """What the watch's DELETED event and the resync loop run (shared_sweep.py): the registries
    of the namespace, listed by label, lose the entry of a job that is gone."""
    from lora_operator.controller.shared_sweep import sweep_registries

    for name in ("u-sw1", "u-sw2"):
        world.add(base_job(name, **{"serving.enabled": True, "serving.mode": "shared"}))
        world.reconcile(name)
        complete = [{"type": "Complete", "status": "True"}]
        world.job_status(f"{name}-r1", succeeded=1, conditions=complete)
        server = world.reconcile(name)["inferenceService"]
    del world.kube.objects[LJ]["u-sw1"]
    swept = asyncio.run(sweep_registries(world.kube, NS))
    assert swept == [(NS, server, "uid-u-sw1")]
    registry = world.kube.obj("/api/v1/namespaces/default/configmaps", server)
    assert registry is not None
    assert [k for k in registry["data"] if k.startswith("adapter.")] == ["adapter.uid-u-sw2"]


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
    test_policy_refuses_an_unlabelled_secret_until_it_opts_in,
    test_policy_refusal_mid_run_keeps_the_run,
    test_policy_refused_queued_job_gives_up_its_place,
    test_serving_never_takes_over_objects_it_does_not_own,
    test_a_recreated_lorajob_does_not_adopt_what_its_namesake_left,
    test_retrain_and_suspend_delete_only_their_own_jobs,
    test_a_finished_run_records_its_forecast_beside_the_actual,
    test_a_running_runs_children_are_kept_as_declared,
    test_a_deleted_shared_jobs_entry_is_swept_without_the_others_reconcile,
    test_a_shared_servers_runtime_is_kept_and_goes_with_the_last_job,
    test_a_shared_llm_inference_service_where_the_cluster_serves_one,
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
