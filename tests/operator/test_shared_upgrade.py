"""Upgrading to `serving.mode: shared` as the default: a job that served on a dedicated
InferenceService with no `mode` in its spec moves to its base model's shared server at its next
reconcile. It is registered there first; its dedicated server (only what it controls) is deleted
once the shared one reports Ready, so the adapter is never served by neither. The reconciler
in-process against `FakeKube` (no operator process, no training)."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import SECRET, base_job

from lora_devkit.s3server import S3Server
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.events import post_event
from lora_operator.controller.reconcile import Reconciler

LJ = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/default/lorajobs"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
CMS = "/api/v1/namespaces/default/configmaps"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"
ACCOUNTS = "/api/v1/namespaces/default/serviceaccounts"
SECRETS = "/api/v1/namespaces/default/secrets"
COMPLETE = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}


class World:
    def __init__(self, s3: S3Server) -> None:
        self.kube = FakeKube()
        source = ConfigSource()
        source._config = OperatorConfig.model_validate(
            {"s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}}}
        )
        self.reconciler = Reconciler(config=source, kube_factory=lambda: self.kube, emit=post_event)
        keys = {"accessKey": s3.access_key, "secretKey": s3.secret_key}
        self.kube.put(SECRETS, {"metadata": {"name": SECRET}, "stringData": keys})

    def served(self, name: str, **serving: Any) -> dict[str, Any]:
        """A job with serving on, its run r1 succeeded and served; returns its status."""
        job = base_job(name, **{"serving.enabled": True, **serving})
        job["metadata"].update({"namespace": "default", "uid": f"uid-{name}", "generation": 1})
        self.kube.put(LJ, job)
        self.reconcile(name)
        self.kube.obj(JOBS, f"{name}-r1")["status"] = copy.deepcopy(COMPLETE)  # type: ignore[index]
        return self.reconcile(name)

    def reconcile(self, name: str) -> dict[str, Any]:
        self.kube.calls.clear()
        asyncio.run(self.reconciler.reconcile("default", name))
        status: dict[str, Any] = self.kube.obj(LJ, name)["status"]  # type: ignore[index]
        return status

    def upgrade(self, name: str) -> None:
        """The operator's new default applies: the stored spec never named a mode."""
        del self.kube.obj(LJ, name)["spec"]["serving"]["mode"]  # type: ignore[index]

    def entries(self, server: str) -> dict[str, dict[str, Any]]:
        data = self.kube.obj(CMS, server)["data"]  # type: ignore[index]
        return {k: json.loads(v) for k, v in data.items() if k.startswith("adapter.")}

    def ready(self, server: str) -> None:
        """KServe's status on the shared InferenceService: its pods serve."""
        self.kube.obj(ISVCS, server)["status"] = {  # type: ignore[index]
            "url": f"http://{server}.default.example.com",
            "conditions": [{"type": "Ready", "status": "True"}],
        }


def serving_condition(status: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == "Serving")
    return found


def writes_to(world: World, resource: str) -> list[str]:
    """The verbs other than get/list the last reconcile sent for one resource."""
    return sorted(
        verb
        for _, what, verb in world.kube.calls
        if what == resource and verb not in ("get", "list")
    )


@pytest.fixture
def world(s3: S3Server) -> Iterator[World]:
    yield World(s3)


def test_a_dedicated_job_without_mode_moves_to_the_shared_server_registered_first(
    world: World,
) -> None:
    status = world.served("up", **{"serving.mode": "dedicated"})
    assert status["inferenceService"] == "up" and status["servingRun"] == "r1"
    dedicated = copy.deepcopy(world.kube.obj(ISVCS, "up"))
    account = copy.deepcopy(world.kube.obj(ACCOUNTS, "up-serving"))
    assert dedicated["metadata"]["ownerReferences"][0]["uid"] == "uid-up"  # type: ignore[index]
    assert account is not None and not any(
        n.startswith("lora-server-") for n in world.kube.objects[CMS]
    )

    world.upgrade("up")
    status = world.reconcile("up")
    # registered on the shared server first ...
    (server,) = (n for n in world.kube.objects[ISVCS] if n != "up")
    assert server.startswith("lora-server-")
    (entry,) = world.entries(server).values()
    assert (entry["job"], entry["adapter"], entry["run"]) == ("up", "up", "r1")
    assert entry["uri"] == status["adapterURI"]
    # ... while the dedicated server keeps serving, untouched, until the shared one is Ready
    assert world.kube.obj(ISVCS, "up") == dedicated
    assert world.kube.obj(ACCOUNTS, "up-serving") == account
    assert writes_to(world, "inferenceservices") == ["create"]  # the shared one, nothing else
    assert status["inferenceService"] == "up"
    serving = serving_condition(status)
    assert (serving["status"], serving["reason"]) == ("Unknown", "Deploying")
    assert serving["message"] == (
        "InferenceService created, not ready yet; the dedicated InferenceService up serves "
        f"until {server} is ready"
    )
    # a resync before KServe is done changes nothing on either server
    shared = copy.deepcopy(world.kube.obj(ISVCS, server))
    world.reconcile("up")
    assert world.kube.obj(ISVCS, "up") == dedicated and world.kube.obj(ISVCS, server) == shared
    assert writes_to(world, "inferenceservices") == []

    world.ready(server)
    status = world.reconcile("up")
    # the shared server serves: the dedicated one and its ServiceAccount go
    assert sorted(world.kube.objects[ISVCS]) == [server]
    assert world.kube.obj(ACCOUNTS, "up-serving") is None
    assert writes_to(world, "inferenceservices") == ["delete"]
    assert status["inferenceService"] == server and status["servingRun"] == "r1"
    serving = serving_condition(status)
    assert (serving["status"], serving["reason"]) == ("True", "Ready")
    assert list(world.entries(server)) == ["adapter.uid-up"]
    # and stays so: the next reconcile writes nothing
    world.reconcile("up")
    assert writes_to(world, "inferenceservices") == [] and writes_to(world, "configmaps") == []


def test_a_dedicated_server_it_does_not_control_is_left_alone(world: World) -> None:
    world.served("mine", **{"serving.mode": "dedicated"})
    # someone else's object took the dedicated server's name meanwhile
    foreign = {"metadata": {"name": "mine", "namespace": "default", "uid": "someone"}}
    world.kube.put(ISVCS, copy.deepcopy(foreign))
    world.upgrade("mine")
    world.reconcile("mine")
    (server,) = (n for n in world.kube.objects[ISVCS] if n != "mine")
    world.ready(server)
    status = world.reconcile("mine")
    assert world.kube.obj(ISVCS, "mine") == foreign  # not its own: not deleted
    assert world.kube.obj(ACCOUNTS, "mine-serving") is None  # its own: deleted
    assert status["inferenceService"] == server


def test_a_refused_registration_keeps_the_dedicated_server_serving(world: World) -> None:
    """Two jobs that served dedicated under one adapter name: the one that moves first takes
    the name on the shared server; the other keeps its dedicated server, saying why."""
    world.served("first", **{"serving.mode": "dedicated", "serving.adapterName": "chat"})
    world.served("second", **{"serving.mode": "dedicated", "serving.adapterName": "chat"})
    world.upgrade("first")
    world.reconcile("first")
    (server,) = (n for n in world.kube.objects[ISVCS] if n not in ("first", "second"))
    world.ready(server)
    assert world.reconcile("first")["inferenceService"] == server
    dedicated = copy.deepcopy(world.kube.obj(ISVCS, "second"))

    world.upgrade("second")
    status = world.reconcile("second")
    assert world.kube.obj(ISVCS, "second") == dedicated
    assert world.kube.obj(ACCOUNTS, "second-serving") is not None
    assert status["inferenceService"] == "second"
    assert [e["job"] for e in world.entries(server).values()] == ["first"]
    serving = serving_condition(status)
    assert (serving["status"], serving["reason"]) == ("False", "NameConflict")
    assert serving["message"] == (
        f"adapter name chat is already served on {server} by LoRAJob first; set "
        "serving.adapterName to another name; the dedicated InferenceService second serves "
        f"until {server} is ready"
    )
    # the user keeps dedicated: nothing changes, the shared server still holds only `first`
    world.kube.obj(LJ, "second")["spec"]["serving"]["mode"] = "dedicated"  # type: ignore[index]
    assert world.reconcile("second")["inferenceService"] == "second"
    assert [e["job"] for e in world.entries(server).values()] == ["first"]
