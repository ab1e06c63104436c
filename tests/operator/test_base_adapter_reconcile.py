"""spec.baseAdapter in the reconciler, in-process against the in-memory API (`FakeKube`) and a
real S3 (moto): a refused base adapter fails the run before anything is made (no Job, ConfigMap,
Service or ServiceAccount; the named job untouched), the OWNER.json of the named job's folder is
checked with this job's credentials, and an accepted one is recorded and reaches the ConfigMap."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
import yaml
from fake_kube import FakeKube
from operator_harness import BUCKET, SECRET, base_job

from lora_contract.layout import JobOwner, S3Location, owner_marker
from lora_devkit.s3server import S3Server
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.events import post_event
from lora_operator.controller.reconcile import Reconciler

NS = "default"
LJ = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/default/lorajobs"
SECRETS = "/api/v1/namespaces/default/secrets"
EVENTS = "/api/v1/namespaces/default/events"
MADE = [
    "/apis/batch/v1/namespaces/default/jobs",
    "/api/v1/namespaces/default/configmaps",
    "/api/v1/namespaces/default/services",
    "/api/v1/namespaces/default/serviceaccounts",
]


class Cluster:
    def __init__(self, s3: S3Server) -> None:
        self.kube = FakeKube()
        self.s3 = s3
        raw = {"s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}}}
        source = ConfigSource()
        source._config = OperatorConfig.model_validate(raw)
        self.reconciler = Reconciler(config=source, kube_factory=lambda: self.kube, emit=post_event)
        secret = {"name": SECRET, "namespace": NS}
        keys = {"accessKey": s3.access_key, "secretKey": s3.secret_key}
        self.kube.put(SECRETS, {"metadata": secret, "stringData": keys})

    def add(self, job: dict[str, Any], status: dict[str, Any] | None = None) -> None:
        job = copy.deepcopy(job)
        name = job["metadata"]["name"]
        job["metadata"].update({"uid": f"uid-{name}", "generation": 1})
        job["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
        if status is not None:
            job["status"] = status
        self.kube.put(LJ, job)

    def reconcile(self, name: str) -> dict[str, Any]:
        asyncio.run(self.reconciler.reconcile(NS, name))
        return dict((self.kube.obj(LJ, name) or {}).get("status", {}))

    def made(self) -> dict[str, list[str]]:
        return {path: sorted(self.kube.objects.get(path, {})) for path in MADE}

    def events(self, name: str) -> list[tuple[str, str]]:
        return [
            (e["reason"], e["message"])
            for e in self.kube.objects.get(EVENTS, {}).values()
            if e["involvedObject"]["name"] == name
        ]


def folder(job: str, run: str) -> str:
    return f"s3://{BUCKET}/runs/{NS}/{job}/{run}"


def succeeded_sft(name: str, **overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    run = {
        "id": "r1",
        "specHash": "h",
        "outputURI": folder(name, "r1"),
        "phase": "Succeeded",
        "adapterURI": f"{folder(name, 'r1')}/final",
    }
    return base_job(name, **overrides), {"phase": "Succeeded", "runs": [run]}


def claim(s3: S3Server, job: str, uid: str) -> None:
    owner = JobOwner(namespace=NS, name=job, uid=uid)
    marker = owner_marker(S3Location.parse(folder(job, "r1")))
    s3.store().put_json(marker, owner.model_dump())


def dpo(name: str, base: str) -> dict[str, Any]:
    return base_job(name, method="dpo", baseAdapter={"job": base})


@pytest.fixture
def cluster(s3: S3Server) -> Cluster:
    return Cluster(s3)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_another_base_model_fails_the_run_and_makes_nothing(cluster: Cluster) -> None:
    cluster.add(*succeeded_sft("rf-sft", **{"baseModel.name": "Qwen/Qwen2.5-0.5B"}))
    sft_before = copy.deepcopy(cluster.kube.obj(LJ, "rf-sft"))
    cluster.add(dpo("rf-dpo", "rf-sft"))
    status = cluster.reconcile("rf-dpo")
    message = (
        "spec.baseAdapter.job rf-sft trained its adapter on Qwen/Qwen2.5-0.5B, but "
        "spec.baseModel is meta-llama/Llama-3.2-1B: an adapter continues only on its own "
        "base model"
    )
    assert status["phase"] == "Failed" and status["message"] == message
    failed = condition(status, "Failed")
    assert (failed["status"], failed["reason"], failed["message"]) == (
        "True",
        "BaseAdapterRefused",
        message,
    )
    assert status["runs"][0]["phase"] == "Failed" and "baseAdapter" not in status["runs"][0]
    assert cluster.made() == {path: [] for path in MADE}
    assert cluster.kube.obj(LJ, "rf-sft") == sft_before  # the named job is only read
    assert ("BaseAdapterRefused", message) in cluster.events("rf-dpo")
    again = cluster.reconcile("rf-dpo")  # level-based: refused once, nothing made later
    assert again["phase"] == "Failed" and cluster.made() == {path: [] for path in MADE}
    assert [r for r, _ in cluster.events("rf-dpo")].count("BaseAdapterRefused") == 1


def test_a_folder_claimed_by_another_uid_is_refused(cluster: Cluster, s3: S3Server) -> None:
    cluster.add(*succeeded_sft("own-sft"))
    claim(s3, "own-sft", "uid-of-a-deleted-job")
    cluster.add(dpo("own-dpo", "own-sft"))
    status = cluster.reconcile("own-dpo")
    assert status["phase"] == "Failed"
    assert status["message"] == (
        f"spec.baseAdapter.job own-sft: s3://{BUCKET}/runs/{NS}/own-sft holds the folder of "
        f"LoRAJob {NS}/own-sft (uid uid-of-a-deleted-job), not LoRAJob {NS}/own-sft "
        "(uid uid-own-sft): its adapter is not read"
    )
    assert cluster.made() == {path: [] for path in MADE}


def test_the_named_jobs_own_folder_is_used_and_recorded(cluster: Cluster, s3: S3Server) -> None:
    cluster.add(*succeeded_sft("ok-sft"))
    claim(s3, "ok-sft", "uid-ok-sft")
    cluster.add(dpo("ok-dpo", "ok-sft"))
    status = cluster.reconcile("ok-dpo")
    adapter = f"{folder('ok-sft', 'r1')}/final"
    assert status["phase"] == "Running"
    assert status["runs"][0]["baseAdapter"] == {"job": "ok-sft", "run": "r1", "uri": adapter}
    config_map = cluster.kube.obj("/api/v1/namespaces/default/configmaps", "ok-dpo-r1-config")
    assert config_map is not None
    assert yaml.safe_load(config_map["data"]["config.yaml"])["baseAdapterURI"] == adapter


def test_a_job_without_base_adapter_renders_no_uri(cluster: Cluster) -> None:
    cluster.add(base_job("plain"))
    assert cluster.reconcile("plain")["phase"] == "Running"
    config_map = cluster.kube.obj("/api/v1/namespaces/default/configmaps", "plain-r1-config")
    assert config_map is not None
    assert "baseAdapterURI" not in yaml.safe_load(config_map["data"]["config.yaml"])
