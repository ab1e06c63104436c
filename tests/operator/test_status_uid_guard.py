"""A LoRAJob's status is written only onto that LoRAJob: when a newer LoRAJob has taken the name
(the old one deleted and recreated) between the reconcile's read and its status write, the old
one's conditions, runs and restarts must not land on the newer object, and no Event about the old
one is posted. Two ways in: the TTL delete refused with 409 by its uid precondition (the operator
then knows and writes nothing), and a replacement between the read and the status PATCH (the
PATCH carries metadata.uid, which the API server refuses to change: 422). The in-memory API below
plays the API server's part in both (swap the object at the right moment; refuse a uid change)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import SECRET, base_job

from lora_devkit.s3server import S3Server
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.events import post_event
from lora_operator.controller.kube import KubeError
from lora_operator.controller.reconcile import Reconciler, replaced_uid

NS = "default"
LJ = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/default/lorajobs"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
EVENTS = "/api/v1/namespaces/default/events"
SECRETS = "/api/v1/namespaces/default/secrets"


class UidKeepingKube(FakeKube):
    """FakeKube plus the API server's rule that metadata.uid never changes (422), and a hook run
    before a chosen request, where a test swaps in the newer LoRAJob."""

    def __init__(self) -> None:
        super().__init__()
        self.before: dict[tuple[str, str], Callable[[], None]] = {}

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        hook = self.before.pop((method, path), None)
        if hook is not None:
            hook()
        if method == "PATCH" and path.startswith(LJ + "/"):
            name = path[len(LJ) + 1 :].split("/")[0]
            stored = self.obj(LJ, name)
            uid = ((body or {}).get("metadata") or {}).get("uid")
            if stored is not None and uid and uid != stored["metadata"].get("uid"):
                raise KubeError(
                    422,
                    f'LoRAJob.finetune.lora-operator.io "{name}" is invalid: metadata.uid: '
                    f'Invalid value: "{uid}": field is immutable',
                )
        return await super().request(method, path, body, params, content_type)


class World:
    def __init__(self, s3: S3Server) -> None:
        self.kube = UidKeepingKube()
        raw = {"s3": {"endpoint": s3.endpoint, "credentialsSecret": {"name": SECRET}}}
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

    def add(self, job: dict[str, Any], uid: str) -> None:
        job = copy.deepcopy(job)
        job["metadata"].update(
            {"uid": uid, "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}
        )
        self.kube.put(LJ, job)

    def reconcile(self, name: str) -> None:
        asyncio.run(self.reconciler.reconcile(NS, name))

    def events(self) -> int:
        return len(self.kube.objects.get(EVENTS, {}))

    def newer(self, name: str) -> dict[str, Any]:
        """The LoRAJob that takes the name: another uid, its own (early) status."""
        job = base_job(name)
        job["metadata"].update(
            {"uid": "uid-newer", "generation": 1, "creationTimestamp": "2026-01-02T00:00:00Z"}
        )
        job["status"] = {"phase": "Pending", "message": "the newer job", "restarts": 0}
        return job

    def swap_in(self, job: dict[str, Any]) -> Callable[[], None]:
        return lambda: self.kube.put(LJ, copy.deepcopy(job))


@pytest.fixture
def world(s3: S3Server) -> World:
    return World(s3)


def test_a_ttl_delete_refused_for_a_newer_namesake_writes_nothing_onto_it(world: World) -> None:
    name = "race-ttl"
    world.add(base_job(name, ttlSecondsAfterFinished=0), uid="uid-old")
    world.reconcile(name)
    job = world.kube.obj(JOBS, f"{name}-r1")
    assert job is not None
    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    newer = world.newer(name)
    # deleted and recreated between the reconcile's read and its TTL delete
    world.kube.before[("DELETE", f"{LJ}/{name}")] = world.swap_in(newer)
    events = world.events()
    world.reconcile(name)
    assert "DELETE" not in {m for (m, _) in world.kube.before}, "the TTL delete never ran"
    assert world.kube.obj(LJ, name) == newer  # not deleted, and not one field written
    assert world.events() == events  # no Succeeded/Expired Event about the deleted job


def test_a_status_write_after_the_name_was_taken_is_refused_and_not_retried(world: World) -> None:
    name = "race-patch"
    world.add(base_job(name), uid="uid-old")
    world.reconcile(name)
    job = world.kube.obj(JOBS, f"{name}-r1")
    assert job is not None
    job["status"] = {"active": 1, "failed": 2}  # two restarts to record: a status write is due
    newer = world.newer(name)
    world.kube.before[("PATCH", f"{LJ}/{name}/status")] = world.swap_in(newer)
    events = world.events()
    world.reconcile(name)
    assert not world.kube.before, "the status PATCH never ran"
    assert world.kube.obj(LJ, name) == newer
    assert world.events() == events


def test_the_same_write_lands_when_the_name_was_not_taken(world: World) -> None:
    """The control: without a swap, the reconcile above writes its restarts and its Event, so the
    two tests above are not passing because nothing was written anyway."""
    name = "no-race"
    world.add(base_job(name), uid="uid-old")
    world.reconcile(name)
    job = world.kube.obj(JOBS, f"{name}-r1")
    assert job is not None
    job["status"] = {"active": 1, "failed": 2}
    events = world.events()
    world.reconcile(name)
    stored = world.kube.obj(LJ, name)
    assert stored is not None
    assert stored["metadata"]["uid"] == "uid-old"
    assert stored["status"]["restarts"] == 2
    assert world.events() > events


def test_replaced_uid_reads_only_the_api_servers_uid_refusal() -> None:
    immutable = 'LoRAJob "x" is invalid: metadata.uid: Invalid value: "a": field is immutable'
    assert replaced_uid(KubeError(422, immutable))
    assert not replaced_uid(KubeError(422, 'LoRAJob "x" is invalid: status.phase: Unsupported'))
    assert not replaced_uid(KubeError(500, immutable))
