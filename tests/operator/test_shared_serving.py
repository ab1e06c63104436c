"""Shared serving end to end: the real operator process (watching two namespaces) against the
emulator with KServe's CRD. Two succeeded jobs on one base model in one namespace share one
InferenceService whose registry lists both; the same base model in another namespace gets its
own; an operator restart changes nothing; deleting one job removes only its entry; deleting the
last removes the server (the garbage collector: registry owned by the jobs, server by the
registry). Jobs succeed through the Job stand-in and a written progress.json (no training).
Switching modes and turning serving off: the reconciler in-process against `FakeKube`."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_kube import FakeKube
from job_driver import JobDriver
from operator_harness import LORAJOBS, SECRET, Harness, base_job, prepare_harness, start_operator

from lora_devkit.emulator import RestClient
from lora_devkit.operator_process import secret_manifest, stop_operator
from lora_devkit.s3server import S3Server
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.events import post_event
from lora_operator.controller.reconcile import Reconciler

TEAM = "team-shared"
CMS = "v1/configmaps"
ISVCS = "serving.kserve.io/v1beta1/inferenceservices"
RUNTIMES = "serving.kserve.io/v1alpha1/servingruntimes"


@pytest.fixture(scope="module")
def two_teams(
    cluster: tuple[RestClient, Path], s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    client, kubeconfig = cluster
    workdir = tmp_path_factory.mktemp("shared")
    harness = prepare_harness(client, s3, kubeconfig, workdir)
    if client.get("v1/secrets", TEAM, SECRET) is None:
        client.create(
            "v1/secrets", TEAM, secret_manifest(SECRET, TEAM, s3.access_key, s3.secret_key)
        )
    harness.log_path = workdir / "operator.log"
    harness.operator = start_operator(
        kubeconfig, harness.config_path, harness.log_path, "--namespace", TEAM
    )
    yield harness
    stop_operator(harness.operator)


def shared_job(name: str) -> dict[str, Any]:
    return base_job(name, **{"serving.enabled": True, "serving.mode": "shared"})


def succeed(harness: Harness, namespace: str, name: str) -> dict[str, Any]:
    """Apply a shared-serving job and drive its run to Succeeded; returns the LoRAJob."""
    body = copy.deepcopy(shared_job(name))
    body["metadata"]["namespace"] = namespace
    harness.client.create(LORAJOBS, namespace, body)
    driver = JobDriver(harness.client, namespace)
    job = f"{name}-r1"
    harness.wait(
        f"Job {namespace}/{job}", lambda: harness.client.get("batch/v1/jobs", namespace, job)
    )
    driver.start(job)
    adapter = f"{harness.run_uri(name, 'r1', namespace)}/final"
    harness.write_progress(
        name, "r1", namespace=namespace, state="succeeded", step=40, adapterUri=adapter
    )
    driver.succeed(job)
    obj: dict[str, Any] = harness.wait(
        f"{namespace}/{name} served",
        lambda: (
            (o := harness.client.get(LORAJOBS, namespace, name))
            and (o.get("status") or {}).get("inferenceService", "").startswith("lora-server-")
            and o
        ),
    )
    return obj


def registry_of(harness: Harness, namespace: str, server: str) -> dict[str, dict[str, Any]]:
    """The registry's entries by job name (from its data), and its owners' names."""
    registry = harness.client.get(CMS, namespace, server)
    assert registry is not None, f"no registry {namespace}/{server}"
    entries = {
        json.loads(v)["job"]: json.loads(v)
        for k, v in (registry.get("data") or {}).items()
        if k.startswith("adapter.")
    }
    owners = sorted(r["name"] for r in registry["metadata"].get("ownerReferences") or [])
    return {"entries": entries, "owners": {"names": owners}, "meta": registry["metadata"]}


def servers(harness: Harness, namespace: str) -> list[str]:
    return sorted(i["metadata"]["name"] for i in harness.client.list(ISVCS, namespace))


def test_one_server_per_base_model_and_namespace(two_teams: Harness) -> None:
    h, home = two_teams, two_teams.namespace
    one = succeed(h, home, "alpha")
    two = succeed(h, home, "beta")
    other = succeed(h, TEAM, "alpha")
    server = one["status"]["inferenceService"]
    assert two["status"]["inferenceService"] == server
    assert other["status"]["inferenceService"] == server  # same name, the other team's object
    assert servers(h, home) == [server] and servers(h, TEAM) == [server]
    reg = registry_of(h, home, server)
    assert sorted(reg["entries"]) == ["alpha", "beta"]
    assert reg["owners"]["names"] == ["alpha", "beta"]
    assert reg["entries"]["beta"]["adapter"] == "beta"
    assert reg["entries"]["beta"]["uri"] == f"{h.run_uri('beta', 'r1', home)}/final"
    team = registry_of(h, TEAM, server)
    assert sorted(team["entries"]) == ["alpha"]
    assert team["entries"]["alpha"]["uri"].startswith(h.run_uri("alpha", "r1", TEAM))
    isvc = h.client.get(ISVCS, home, server)
    assert isvc is not None
    assert isvc["metadata"]["ownerReferences"][0]["uid"] == reg["meta"]["uid"]
    account = h.client.get("v1/serviceaccounts", home, server)  # the jobs' Secret, by name
    assert account is not None and account["secrets"] == [{"name": SECRET}]
    assert isvc["spec"]["predictor"]["serviceAccountName"] == server
    # no dedicated server was made for either job
    assert h.client.get(ISVCS, home, "alpha") is None and h.client.get(ISVCS, home, "beta") is None
    # the server's pods: the registry's own ServingRuntime, vLLM sized by alpha's serving plan
    # (a CPU plan: maxLoras 4 by default, twice that on CPU) and the syncer on the platform image
    assert isvc["spec"]["predictor"]["model"]["runtime"] == server
    runtime = h.client.get(RUNTIMES, home, server)
    assert runtime is not None
    assert runtime["metadata"]["ownerReferences"] == isvc["metadata"]["ownerReferences"]
    vllm, sync = runtime["spec"]["containers"]
    assert "--max-loras=4" in vllm["args"] and "--max-cpu-loras=8" in vllm["args"]
    assert (sync["name"], sync["image"]) == ("adapter-sync", "lora-trainer:test")
    assert [v["secret"]["secretName"] for v in runtime["spec"]["volumes"] if "secret" in v] == [
        SECRET
    ]
    h.client.delete(RUNTIMES, home, server)  # put back at the next reconcile (below)

    # an operator restart loses no registration and writes nothing to the registry
    version = reg["meta"]["resourceVersion"]
    assert h.operator is not None and h.log_path is not None
    stop_operator(h.operator)
    h.operator = start_operator(h.kubeconfig, h.config_path, h.log_path, "--namespace", TEAM)
    h.client.patch(LORAJOBS, home, "beta", {"spec": {"serving": {"replicas": 2}}}, status=False)
    h.wait(
        "beta reconciled after the restart",
        lambda: (
            (s := h.status("beta")).get("observedGeneration")
            == h.get("beta")["metadata"]["generation"]
            and s
        ),
    )
    assert registry_of(h, home, server)["meta"]["resourceVersion"] == version
    restored = h.wait("runtime restored", lambda: h.client.get(RUNTIMES, home, server))
    assert restored["spec"] == runtime["spec"]

    # deleting one job removes only its adapter: beta's next reconcile sweeps alpha's entry
    h.client.delete(LORAJOBS, home, "alpha")
    h.wait("alpha gone", lambda: h.client.get(LORAJOBS, home, "alpha") is None)
    h.client.patch(LORAJOBS, home, "beta", {"spec": {"serving": {"replicas": 1}}}, status=False)
    h.wait(
        "alpha's entry swept", lambda: sorted(registry_of(h, home, server)["entries"]) == ["beta"]
    )
    assert registry_of(h, home, server)["owners"]["names"] == ["beta"]
    assert servers(h, home) == [server]
    assert sorted(registry_of(h, TEAM, server)["entries"]) == ["alpha"]  # the other team untouched

    # deleting the last job removes the registry and, with it, the server. First beta's
    # reconcile finishes (its status written last): one still applying the server's objects
    # after the delete would create them with a gone owner, which only a real cluster's
    # garbage collector (not the emulator's, run on deletes) would then remove.
    h.wait(
        "beta's reconcile done",
        lambda: (
            h.status("beta").get("observedGeneration") == h.get("beta")["metadata"]["generation"]
        ),
    )
    h.client.delete(LORAJOBS, home, "beta")
    h.wait("server gone", lambda: servers(h, home) == [] and not h.client.get(CMS, home, server))
    assert h.client.get("v1/serviceaccounts", home, server) is None
    h.wait("runtime gone", lambda: h.client.get(RUNTIMES, home, server) is None)
    assert h.client.get(RUNTIMES, TEAM, server) is not None  # the other team's
    assert servers(h, TEAM) == [server]
    h.client.delete(LORAJOBS, TEAM, "alpha")
    h.wait("team server gone", lambda: servers(h, TEAM) == [])


FAKE_LJ = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/default/lorajobs"
FAKE_JOBS = "/apis/batch/v1/namespaces/default/jobs"
FAKE_CMS = "/api/v1/namespaces/default/configmaps"
FAKE_ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"


def test_switching_modes_and_turning_serving_off_leave_nothing_behind(s3: S3Server) -> None:
    kube = FakeKube()
    source = ConfigSource()
    source._config = OperatorConfig.model_validate(
        {"s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}}}
    )
    reconciler = Reconciler(config=source, kube_factory=lambda: kube, emit=post_event)
    keys = {"accessKey": s3.access_key, "secretKey": s3.secret_key}
    kube.put(
        "/api/v1/namespaces/default/secrets", {"metadata": {"name": SECRET}, "stringData": keys}
    )
    job = shared_job("sw")
    job["metadata"].update({"namespace": "default", "uid": "uid-sw", "generation": 1})
    kube.put(FAKE_LJ, job)

    def reconcile(**serving: Any) -> dict[str, Any]:
        lj = kube.obj(FAKE_LJ, "sw")
        assert lj is not None
        lj["spec"]["serving"].update(serving)
        asyncio.run(reconciler.reconcile("default", "sw"))
        status: dict[str, Any] = lj.get("status") or {}
        return status

    reconcile()
    kube.obj(FAKE_JOBS, "sw-r1")["status"] = {  # type: ignore[index]
        "succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True"}],
    }
    server = reconcile()["inferenceService"]
    assert server.startswith("lora-server-")
    assert sorted(kube.objects[FAKE_ISVCS]) == [server]
    assert sorted(
        json.loads(v)["job"]
        for k, v in kube.objects[FAKE_CMS][server]["data"].items()
        if k.startswith("adapter.")
    ) == ["sw"]

    # shared -> dedicated: its own server, the shared one (it was the last adapter) deleted
    assert reconcile(mode="dedicated")["inferenceService"] == "sw"
    assert sorted(kube.objects[FAKE_ISVCS]) == ["sw"]
    registry = kube.objects[FAKE_CMS][server]
    assert [k for k in registry["data"] if k.startswith("adapter.")] == []

    # dedicated -> shared: registered on the shared server first, the dedicated one serving
    # until the shared one is Ready (test_shared_upgrade.py), then deleted
    assert reconcile(mode="shared")["inferenceService"] == "sw"
    assert sorted(kube.objects[FAKE_ISVCS]) == sorted([server, "sw"])
    ready = {"conditions": [{"type": "Ready", "status": "True"}]}
    kube.obj(FAKE_ISVCS, server)["status"] = ready  # type: ignore[index]
    assert reconcile()["inferenceService"] == server
    assert sorted(kube.objects[FAKE_ISVCS]) == [server]
    assert kube.obj(FAKE_CMS, server)["data"]["adapter.uid-sw"]  # type: ignore[index]

    # serving off: Disabled, no server, no entry
    status = reconcile(enabled=False)
    serving = next(c for c in status["conditions"] if c["type"] == "Serving")
    assert serving["reason"] == "Disabled" and status.get("inferenceService") is None
    assert kube.objects[FAKE_ISVCS] == {}
    assert kube.obj("/api/v1/namespaces/default/serviceaccounts", server) is None
    assert [k for k in kube.objects[FAKE_CMS][server]["data"] if k.startswith("adapter.")] == []
