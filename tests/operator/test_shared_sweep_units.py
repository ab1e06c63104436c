"""Shared serving kept level-based, fast: the registry entry's `run` (entries written before it
still parse), one patch for a resync's sweep and registration, the sweep of a namespace's
registries when a job is deleted (shared_sweep.py) and a registration that loses a race (409)
deciding again. Pure functions and the IO around them in-process against `FakeKube` (the
operator's real client over an in-memory API). Expected values are written out by hand."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fake_kube import FakeKube
from operator_harness import base_job

from lora_contract.adapter_registry import Entry
from lora_contract.types import API_VERSION, KIND
from lora_operator.api.loading import parse_lorajob
from lora_operator.controller.kube import KubeError
from lora_operator.controller.shared_registry import entries, sweep_and_registration
from lora_operator.controller.shared_serving import ensure_shared_serving
from lora_operator.controller.shared_sweep import (
    operator_registries,
    served_shared,
    stale_uids,
    sweep_registries,
)

CMS = "/api/v1/namespaces/{ns}/configmaps"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices"
LJS = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/{ns}/lorajobs"
LABELS = {
    "app.kubernetes.io/component": "lora-server",
    "app.kubernetes.io/managed-by": "lora-operator",
}


def ref(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid}


def registry_with(*jobs: tuple[str, str], ns: str = "ns", digest: str = "abc") -> dict[str, Any]:
    """A registry listing (job, uid) entries (adapter = job name) and owners, by hand."""
    return {
        "metadata": {
            "name": f"lora-server-{digest}",
            "namespace": ns,
            "uid": f"reg-{ns}",
            "labels": {**LABELS, "lora-operator.io/server-key": digest},
            "ownerReferences": [ref(job, uid) for job, uid in jobs],
        },
        "data": {
            f"adapter.{uid}": json.dumps(
                {"job": job, "adapter": job, "uri": f"s3://b/{job}/r1/final", "rank": 8}
            )
            for job, uid in jobs
        },
    }


# ----------------------------------------------------------------------------- the entry


def test_an_entry_names_its_run_and_one_written_before_runs_still_parses() -> None:
    old = '{"adapter": "ad", "job": "a", "rank": 8, "uri": "s3://b/a/r1/final"}'
    parsed = Entry.from_data(old)
    assert parsed == Entry("a", "ad", "s3://b/a/r1/final", 8)
    assert parsed is not None and parsed.run is None
    assert parsed.to_data() == old  # re-written unchanged: no `run` key invented
    with_run = Entry("a", "ad", "s3://b/a/r2/final", 8, run="r2")
    assert json.loads(with_run.to_data()) == {
        "adapter": "ad",
        "job": "a",
        "rank": 8,
        "uri": "s3://b/a/r2/final",
        "run": "r2",
    }
    assert Entry.from_data(with_run.to_data()) == with_run
    assert Entry.from_data(with_run.to_data()) != Entry("a", "ad", "s3://b/a/r2/final", 8)


# ----------------------------------------------------------------------------- one patch


def test_one_patch_sweeps_the_gone_and_registers_the_caller() -> None:
    registry = registry_with(("a", "u1"), ("b", "u2"))
    entry = Entry("c", "c", "s3://b/c/r1/final", 16, run="r1")
    patch = sweep_and_registration(registry, {"u1", "u3"}, "c", "u3", entry)
    assert patch == {
        "data": {"adapter.u2": None, "adapter.u3": entry.to_data()},
        "metadata": {"ownerReferences": [ref("a", "u1"), ref("c", "u3")]},
    }
    # only a sweep: b gone, a re-registering unchanged
    same = Entry("a", "a", "s3://b/a/r1/final", 8)
    assert sweep_and_registration(registry, {"u1"}, "a", "u1", same) == {
        "data": {"adapter.u2": None},
        "metadata": {"ownerReferences": [ref("a", "u1")]},
    }
    # only a registration of a new run's adapter: data, no owner change
    moved = Entry("a", "a", "s3://b/a/r2/final", 8, run="r2")
    assert sweep_and_registration(registry, {"u1", "u2"}, "a", "u1", moved) == {
        "data": {"adapter.u1": moved.to_data()}
    }
    assert sweep_and_registration(registry, {"u1", "u2"}, "a", "u1", same) is None  # idle


# ----------------------------------------------------------------------------- the sweep


def put_job(kube: FakeKube, ns: str, name: str, **serving: Any) -> None:
    job = base_job(name, **{"serving.enabled": True, "serving.mode": "shared"})
    job["spec"]["serving"].update(serving)
    job["metadata"].update({"namespace": ns, "uid": f"uid-{name}"})
    kube.put(LJS.format(ns=ns), job)


def test_which_deleted_jobs_call_for_a_sweep() -> None:
    shared = base_job("a", **{"serving.enabled": True, "serving.mode": "shared"})
    assert served_shared(shared)
    dedicated = base_job("a", **{"serving.enabled": True})
    assert not served_shared(dedicated)
    assert not served_shared(base_job("a"))
    # switched to dedicated moments before the delete: its status still names the server
    dedicated["status"] = {"inferenceService": "lora-server-abc"}
    assert served_shared(dedicated)
    dedicated["status"] = {"inferenceService": "a"}
    assert not served_shared(dedicated)


def test_stale_uids_are_listed_uids_not_live() -> None:
    registry = registry_with(("a", "u1"), ("b", "u2"))
    registry["metadata"]["ownerReferences"].append(ref("c", "u3"))  # owner without entry
    registry["data"]["adapter.u4"] = Entry("d", "d", "s3://d", 8).to_data()  # entry, no owner
    assert stale_uids(registry, {"u1"}) == ["u2", "u3", "u4"]
    assert stale_uids(registry, {"u1", "u2", "u3", "u4"}) == []
    registry["metadata"]["ownerReferences"].append({"kind": KIND, "name": "no-uid"})
    assert stale_uids(registry, {"u1", "u2", "u3", "u4"}) == []  # nothing to name: skipped
    # an emptied registry keeps its last owner for the garbage collector: nothing to sweep
    empty = registry_with()
    empty["metadata"]["ownerReferences"] = [ref("z", "u9")]
    assert stale_uids(empty, set()) == []


def test_only_the_operators_registries_are_swept_by_namespace() -> None:
    ours = registry_with(("a", "u1"), ns="ns")
    theirs = registry_with(("b", "u2"), ns="other", digest="def")
    look_alike = registry_with(("c", "u3"), ns="ns", digest="fff")
    look_alike["metadata"]["labels"]["lora-operator.io/server-key"] = "abc"  # not its name
    controlled = registry_with(("d", "u4"), ns="ns", digest="ddd")
    controlled["metadata"]["ownerReferences"][0]["controller"] = True
    nowhere = registry_with(("e", "u5"), digest="eee")
    del nowhere["metadata"]["namespace"]  # no namespace to sweep it in
    found = operator_registries([ours, theirs, look_alike, controlled, nowhere, {"metadata": {}}])
    assert found == {"ns": [ours], "other": [theirs]}


def test_a_deleted_jobs_entry_is_swept_at_once_and_the_others_untouched() -> None:
    kube = FakeKube()
    put_job(kube, "ns", "a")
    put_job(kube, "other", "b")  # its uid live in another namespace counts for nothing here
    reg = registry_with(("a", "uid-a"), ("b", "uid-b"), ("c", "uid-c"))
    kube.put(CMS.format(ns="ns"), reg)
    other = registry_with(("b", "uid-b"), ("x", "uid-x"), ns="other")
    kube.put(CMS.format(ns="other"), other)
    before_other = json.dumps(other, sort_keys=True)
    swept = asyncio.run(sweep_registries(kube, "ns"))
    assert swept == [("ns", "lora-server-abc", "uid-b"), ("ns", "lora-server-abc", "uid-c")]
    after = kube.obj(CMS.format(ns="ns"), "lora-server-abc")
    assert after is not None and sorted(entries(after)) == ["uid-a"]
    assert after["metadata"]["ownerReferences"] == [ref("a", "uid-a")]
    assert json.dumps(other, sort_keys=True) == before_other  # another namespace: untouched
    kube.calls.clear()
    assert asyncio.run(sweep_registries(kube, "ns")) == []  # level-based: a repeat writes nothing
    assert [c for c in kube.calls if c[2] != "list"] == []


def test_the_last_adapter_out_stops_the_server_and_leaves_the_registry_to_the_gc() -> None:
    kube = FakeKube()
    kube.put(CMS.format(ns="ns"), registry_with(("a", "uid-a")))
    isvc = {
        "metadata": {
            "name": "lora-server-abc",
            "namespace": "ns",
            "uid": "isvc-uid",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "lora-server-abc",
                    "uid": "reg-ns",
                    "controller": True,
                }
            ],
        }
    }
    kube.put(ISVCS.format(ns="ns"), isvc)
    assert asyncio.run(sweep_registries(kube, "ns")) == [("ns", "lora-server-abc", "uid-a")]
    assert kube.obj(ISVCS.format(ns="ns"), "lora-server-abc") is None
    registry = kube.obj(CMS.format(ns="ns"), "lora-server-abc")
    assert registry is not None and entries(registry) == {}
    assert registry["metadata"]["ownerReferences"] == [ref("a", "uid-a")]  # for the GC


class RacingKube(FakeKube):
    """The first `races` registry patches lose to another job's registration written just
    before them (the API server's 409 on the stale resourceVersion)."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.patches = 0

    async def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        if method == "PATCH" and "/configmaps/" in path:
            self.patches += 1
            if self.races > 0:
                self.races -= 1
                stored = self.obj(CMS.format(ns="ns"), path.rsplit("/", 1)[1])
                assert stored is not None
                uid = f"uid-rival{self.races}"
                stored["data"][f"adapter.{uid}"] = Entry(
                    f"rival{self.races}", f"rival{self.races}", "s3://r", 8
                ).to_data()
                stored["metadata"]["ownerReferences"].append(ref(f"rival{self.races}", uid))
                raise KubeError(409, "the object has been modified")
        return await super().request(method, path, body, **kwargs)


def ensure(kube: FakeKube, name: str) -> Any:
    job = base_job(name, **{"serving.enabled": True, "serving.mode": "shared"})
    spec = parse_lorajob(job).spec
    uri = f"s3://b/{name}/r1/final"
    return asyncio.run(ensure_shared_serving(kube, name, "ns", f"uid-{name}", spec, uri))


def test_a_registration_that_loses_a_race_decides_again_and_keeps_the_winner() -> None:
    kube = RacingKube(races=2)
    for name in ("a", "b", "rival0", "rival1"):
        put_job(kube, "ns", name)
    state, server = ensure(kube, "a")  # creates the registry: no patch
    kube.races = 2
    state, server = ensure(kube, "b")
    assert state.reason != "ServingError" and kube.patches == 3  # two lost, the third wins
    registry = kube.obj(CMS.format(ns="ns"), server)
    assert registry is not None
    assert sorted(entries(registry)) == ["uid-a", "uid-b", "uid-rival0", "uid-rival1"]
    owners = sorted(r["uid"] for r in registry["metadata"]["ownerReferences"])
    assert owners == ["uid-a", "uid-b", "uid-rival0", "uid-rival1"]


def test_a_registration_that_keeps_losing_gives_up_after_three_tries() -> None:
    kube = RacingKube(races=0)
    for name in ("a", "b", "rival0", "rival1", "rival2"):
        put_job(kube, "ns", name)
    ensure(kube, "a")
    kube.races, kube.patches = 3, 0
    state, server = ensure(kube, "b")
    assert state.reason == "ServingError" and "409" in state.message
    assert kube.patches == 3
    registry = kube.obj(CMS.format(ns="ns"), server)
    assert registry is not None and "uid-b" not in entries(registry)  # the next resync's


class FailingKube(FakeKube):
    """Registry patches fail with `status` the first `failures` times (409: a registration won
    the race; the registry itself is left as it was); list requests are recorded."""

    def __init__(self, status: int, failures: int) -> None:
        super().__init__()
        self.status, self.failures, self.patches = status, failures, 0
        self.selectors: list[str | None] = []

    async def request(
        self, method: str, path: str, body: Any = None, params: Any = None, **kwargs: Any
    ) -> Any:
        if method == "GET" and path.endswith("/configmaps"):
            self.selectors.append((params or {}).get("labelSelector"))
        if method == "PATCH" and "/configmaps/" in path:
            self.patches += 1
            if self.failures > 0:
                self.failures -= 1
                raise KubeError(self.status, "the object has been modified")
        return await super().request(method, path, body, params, **kwargs)


def racing_world(status: int, failures: int) -> FailingKube:
    kube = FailingKube(status, failures)
    put_job(kube, "ns", "a")
    kube.put(CMS.format(ns="ns"), registry_with(("a", "uid-a"), ("b", "uid-b")))
    return kube


def test_the_sweep_lists_registries_by_label_and_retries_a_lost_race() -> None:
    kube = racing_world(409, failures=2)
    assert asyncio.run(sweep_registries(kube, "ns")) == [("ns", "lora-server-abc", "uid-b")]
    selector = "app.kubernetes.io/component=lora-server,app.kubernetes.io/managed-by=lora-operator"
    assert kube.selectors == [selector]
    assert kube.patches == 3  # two lost, the third written
    registry = kube.obj(CMS.format(ns="ns"), "lora-server-abc")
    assert registry is not None and sorted(entries(registry)) == ["uid-a"]


def test_a_sweep_that_keeps_failing_is_logged_and_left_for_the_next_pass(caplog: Any) -> None:
    for status, tries in ((409, 3), (500, 1)):  # a lost race is tried 3 times, an error once
        kube = racing_world(status, failures=3)
        caplog.clear()
        assert asyncio.run(sweep_registries(kube, "ns")) == []
        assert kube.patches == tries
        registry = kube.obj(CMS.format(ns="ns"), "lora-server-abc")
        assert registry is not None and sorted(entries(registry)) == ["uid-a", "uid-b"]
        assert [r.getMessage() for r in caplog.records] == [
            f"sweeping ns/lora-server-abc (uid uid-b) failed: HTTP {status}: "
            "the object has been modified"
        ]
