"""Serving credentials without a copy, and one Secret read per resync: the reconciler in-process
against `FakeKube` (the operator's real `Kube` client over an in-memory API, recording every
call) and moto's S3. Counts are of `GET .../secrets/<name>` requests, hand-derived per path:
the policy's opt-in check (a job naming its own Secret) and the progress credentials share one
read; serving reads none and writes none."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import BUCKET, SECRET, base_job

from lora_contract.layout import S3Location
from lora_devkit.s3server import S3Server
from lora_operator.api.operator_config import CREDENTIALS_OPT_IN_LABEL, OperatorConfig
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.events import post_event
from lora_operator.controller.reconcile import Reconciler
from lora_operator.controller.secret_reads import SecretReads

NS = "default"
LJ = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/default/lorajobs"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
ISVC = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"
SECRETS = "/api/v1/namespaces/default/secrets"
ACCOUNTS = "/api/v1/namespaces/default/serviceaccounts"
TEAM = "team-creds"  # a tenant's own Secret, opted in, named by the job
COMPLETE = [{"type": "Complete", "status": "True"}]
SECRET_GET = ("", "secrets", "get")


class World:
    def __init__(self, s3: S3Server) -> None:
        self.kube = FakeKube()
        self.s3 = s3
        source = ConfigSource()
        source._config = OperatorConfig.model_validate(
            {"s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}}}
        )
        self.reconciler = Reconciler(config=source, kube_factory=lambda: self.kube, emit=post_event)
        keys = {"accessKey": s3.access_key, "secretKey": s3.secret_key}
        self.kube.put(SECRETS, {"metadata": {"name": SECRET, "namespace": NS}, "stringData": keys})
        team = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        self.kube.put(
            SECRETS,
            {
                "metadata": {
                    "name": TEAM,
                    "namespace": NS,
                    "labels": {CREDENTIALS_OPT_IN_LABEL: "true"},
                    "annotations": {"serving.kserve.io/s3-endpoint": "minio.storage.svc:9000"},
                },
                "stringData": team,
            },
        )

    def add(self, name: str, **overrides: Any) -> None:
        job = base_job(name, **{"serving.enabled": True, "serving.mode": "dedicated", **overrides})
        job["metadata"].update({"uid": f"uid-{name}", "generation": 1})
        self.kube.put(LJ, job)

    def reconcile(self, name: str) -> dict[str, Any]:
        """One reconcile; what it asked the API for is in self.kube.calls afterwards."""
        self.kube.calls.clear()
        asyncio.run(self.reconciler.reconcile(NS, name))
        status: dict[str, Any] = (self.kube.obj(LJ, name) or {}).get("status", {})
        return status

    def job_status(self, name: str, **status: Any) -> None:
        job = self.kube.obj(JOBS, name)
        assert job is not None, f"no Job {name}"
        job["status"] = status

    def progress(self, name: str, step: int) -> None:
        self.s3.store().put_json(
            S3Location(BUCKET, f"runs/{NS}/{name}/r1/progress.json"),
            {"state": "running", "step": step, "totalSteps": 40},
        )

    def secret_gets(self) -> int:
        return self.kube.calls.count(SECRET_GET)

    def secret_writes(self) -> list[tuple[str, str, str]]:
        return [c for c in self.kube.calls if c[1] == "secrets" and c[2] != "get"]


TEAM_REF = {
    "name": TEAM,
    "accessKeyKey": "AWS_ACCESS_KEY_ID",
    "secretKeyKey": "AWS_SECRET_ACCESS_KEY",
}


@pytest.fixture
def world(s3: S3Server) -> World:
    return World(s3)


def test_a_running_job_reads_its_own_secret_once_per_resync(world: World) -> None:
    """Policy opt-in check + progress credentials on the same Secret: one GET (it was two), and
    both really used it: the progress step arrives, and a removed label is refused."""
    world.add("c-run", **{"output.credentialsSecret": TEAM_REF})
    status = world.reconcile("c-run")
    assert status["phase"] == "Running"
    assert world.secret_gets() == 1  # the policy's check; no pod started, no progress read
    world.job_status("c-run-r1", active=1)
    world.progress("c-run", step=7)
    status = world.reconcile("c-run")
    assert status["progress"]["step"] == 7 and status["progressSummary"] == "7/40 (18%)"
    assert world.secret_gets() == 1
    world.progress("c-run", step=9)
    assert world.reconcile("c-run")["progress"]["step"] == 9
    assert world.secret_gets() == 1  # every resync: one read, not one per use

    team = world.kube.obj(SECRETS, TEAM)
    assert team is not None
    team["metadata"]["labels"] = {}
    status = world.reconcile("c-run")
    assert "policy.requireSecretOptIn" in status["message"] and world.secret_gets() == 1


def test_the_default_secret_is_read_once_by_progress_alone(world: World) -> None:
    """The operator's own s3.credentialsSecret is exempt from the opt-in check: the one GET of
    a running job's resync is the progress read; none before a pod has started."""
    world.add("c-default")
    world.reconcile("c-default")
    assert world.secret_gets() == 0
    world.job_status("c-default-r1", active=1)
    world.progress("c-default", step=3)
    assert world.reconcile("c-default")["progress"]["step"] == 3
    assert world.secret_gets() == 1


def test_success_and_serving_list_the_jobs_secret_and_write_no_secret(world: World) -> None:
    """Success with serving: progress is read once (it was read again for the serving copy);
    the serving account lists the tenant's Secret by name; no Secret is ever written, and
    nothing but the two Secrets that were there exists afterwards."""
    world.add("c-serve", **{"output.credentialsSecret": TEAM_REF})
    world.reconcile("c-serve")
    before = copy.deepcopy(world.kube.objects[SECRETS])
    world.job_status("c-serve-r1", succeeded=1, conditions=COMPLETE)
    world.progress("c-serve", step=40)
    status = world.reconcile("c-serve")
    assert status["phase"] == "Succeeded"
    assert world.secret_gets() == 1 and world.secret_writes() == []
    account = world.kube.obj(ACCOUNTS, "c-serve-serving")
    isvc = world.kube.obj(ISVC, "c-serve")
    assert account is not None and isvc is not None
    assert account["secrets"] == [{"name": TEAM}]
    assert account["metadata"]["ownerReferences"][0]["uid"] == "uid-c-serve"
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "c-serve-serving"
    assert world.kube.objects[SECRETS] == before  # byte-identical, no `<job>-s3` beside them

    world.reconcile("c-serve")  # serving readiness resync: only the policy's check reads
    assert world.secret_gets() == 1 and world.secret_writes() == []


def test_serving_from_the_default_secret_reads_no_secret_at_all(world: World) -> None:
    world.add("c-plat")
    world.reconcile("c-plat")
    world.job_status("c-plat-r1", succeeded=1, conditions=COMPLETE)
    world.reconcile("c-plat")
    account = world.kube.obj(ACCOUNTS, "c-plat-serving")
    assert account is not None and account["secrets"] == [{"name": SECRET}]
    world.reconcile("c-plat")  # the readiness resync of a finished job: 0 reads (it was 1)
    assert world.secret_gets() == 0 and world.secret_writes() == []
    assert world.kube.obj(SECRETS, "c-plat-s3") is None


def test_turning_serving_off_touches_no_secret(world: World) -> None:
    world.add("c-off")
    world.reconcile("c-off")
    world.job_status("c-off-r1", succeeded=1, conditions=COMPLETE)
    world.reconcile("c-off")
    lj = world.kube.obj(LJ, "c-off")
    assert lj is not None
    lj["spec"]["serving"]["enabled"] = False
    status = world.reconcile("c-off")
    assert next(c for c in status["conditions"] if c["type"] == "Serving")["reason"] == "Disabled"
    assert (
        world.kube.obj(ACCOUNTS, "c-off-serving") is None and world.kube.obj(ISVC, "c-off") is None
    )
    assert [c for c in world.kube.calls if c[1] == "secrets"] == []


def test_secret_reads_read_each_name_once_and_only_in_their_namespace() -> None:
    kube = FakeKube()
    kube.put(SECRETS, {"metadata": {"name": "a", "namespace": NS}, "data": {}})
    kube.put("/api/v1/namespaces/other/secrets", {"metadata": {"name": "b", "namespace": "other"}})
    read = SecretReads(kube, NS)

    async def reads() -> list[Any]:
        return [await read("a"), await read("a"), await read("b"), await read("b")]

    first, again, missing, missing_again = asyncio.run(reads())
    assert first == again == {"metadata": {"name": "a", "namespace": NS}, "data": {}}
    assert missing is None and missing_again is None  # another namespace's "b" is not seen
    assert kube.calls == [SECRET_GET, SECRET_GET]  # "a" once, "b" once (its 404 remembered)
