"""Shared serving, fast: the pure decisions (which server a job goes to, what a registration or a
sweep changes in the registry) and the IO around them in-process against `FakeKube` (the real
client over an in-memory API): two jobs share one registry and one InferenceService, a second
namespace gets its own, leaving removes only the leaver's entry, a look-alike registry is never
patched. Expected values are written out by hand."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from fake_kube import FakeKube
from operator_harness import base_job

from lora_contract.adapter_registry import Entry
from lora_contract.types import API_VERSION, KIND
from lora_operator.api.loading import parse_lorajob
from lora_operator.controller.shared_registry import (
    ServerKey,
    adapter_holder,
    build_registry,
    entries,
    is_operator_registry,
    max_rank,
    patched,
    registration_patch,
    server_key,
    sweep_patch,
)
from lora_operator.controller.shared_serving import ensure_shared_serving, leave_shared_serving

CMS = "/api/v1/namespaces/{ns}/configmaps"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices"
LJS = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/{ns}/lorajobs"
SHAPE = {"baseModel": "m", "source": "pvc://m", "gpuResourceName": "nvidia.com/gpu", "gpus": 0}


def spec_of(name: str, **overrides: Any) -> Any:
    job = base_job(name, **{"serving.enabled": True, "serving.mode": "shared", **overrides})
    return parse_lorajob(job).spec


def ref(name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid}


def registry_with(*jobs: tuple[str, str, str], digest: str = "abc") -> dict[str, Any]:
    """A registry listing (job, uid, adapter) entries and owners, by hand."""
    return {
        "metadata": {
            "name": f"lora-server-{digest}",
            "namespace": "ns",
            "uid": "reg-uid",
            "labels": {
                "app.kubernetes.io/component": "lora-server",
                "app.kubernetes.io/managed-by": "lora-operator",
                "lora-operator.io/server-key": digest,
            },
            "ownerReferences": [ref(job, uid) for job, uid, _ in jobs],
        },
        "data": {
            f"adapter.{uid}": json.dumps(
                {"job": job, "adapter": adapter, "uri": f"s3://b/{job}", "rank": 8}
            )
            for job, uid, adapter in jobs
        },
    }


# ----------------------------------------------------------------------------- pure decisions


def test_server_key_is_the_base_weights_only() -> None:
    a = server_key(spec_of("a"))
    assert a == ServerKey("meta-llama/Llama-3.2-1B", "", "pvc://models/llama-1b", "none")
    # adapter-side fields do not split servers
    assert server_key(spec_of("b", **{"lora.r": 16, "serving.adapterName": "x"})) == a
    for change in (
        {"baseModel.revision": "v2"},
        {"baseModel.source": "pvc://models/other"},
        {"baseModel.name": "meta-llama/Llama-3.1-8B"},
    ):
        other = server_key(spec_of("c", **change))
        assert other != a and other.name != a.name, change
    assert a.name.startswith("lora-server-") and len(a.name) == len("lora-server-") + 12


def test_registration_adds_entry_and_owner_once() -> None:
    registry = registry_with(("a", "u1", "ad-a"))
    entry = Entry("b", "ad-b", "s3://b/b", 16)
    patch = registration_patch(registry, "b", "u2", entry)
    assert patch == {
        "data": {"adapter.u2": '{"adapter": "ad-b", "job": "b", "rank": 16, "uri": "s3://b/b"}'},
        "metadata": {"ownerReferences": [ref("a", "u1"), ref("b", "u2")]},
    }
    after = patched(registry, patch)
    assert registration_patch(after, "b", "u2", entry) is None  # idle: nothing to write
    assert max_rank(after) == 16
    moved = Entry("b", "ad-b", "s3://b/b-r2", 16)  # a retrain's new adapter: data only
    assert registration_patch(after, "b", "u2", moved) == {"data": {"adapter.u2": moved.to_data()}}


def test_sweep_drops_only_entries_and_owners_of_jobs_gone() -> None:
    registry = registry_with(("a", "u1", "ad-a"), ("b", "u2", "ad-b"), ("c", "u3", "ad-c"))
    registry["data"]["adapter.u9"] = "not json"  # edited by hand: swept
    registry["data"]["adapter.u8"] = (  # a name that is no directory name: swept
        '{"job": "z", "adapter": "../z", "uri": "s3://b/z", "rank": 8}'
    )
    patch = sweep_patch(registry, {"u1", "u3", "u8", "u9"})
    assert patch == {
        "data": {"adapter.u2": None, "adapter.u8": None, "adapter.u9": None},
        "metadata": {"ownerReferences": [ref("a", "u1"), ref("c", "u3")]},
    }
    assert sorted(entries(patched(registry, patch))) == ["u1", "u3"]
    assert sweep_patch(registry_with(("a", "u1", "ad-a")), {"u1"}) is None
    assert "server.json" not in (sweep_patch({"data": {"server.json": "{}"}}, set()) or {})


def test_adapter_name_taken_by_another_job() -> None:
    registry = registry_with(("a", "u1", "same"))
    assert adapter_holder(registry, "u2", "same") == "a"
    assert adapter_holder(registry, "u1", "same") is None  # its own entry
    assert adapter_holder(registry, "u2", "other") is None


def test_only_the_operators_registry_for_that_key_is_ours() -> None:
    assert is_operator_registry(registry_with(("a", "u1", "x")), "abc")
    assert not is_operator_registry(registry_with(("a", "u1", "x")), "abd")
    unlabelled = registry_with(("a", "u1", "x"))
    del unlabelled["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    assert not is_operator_registry(unlabelled, "abc")
    controlled = registry_with(("a", "u1", "x"))
    controlled["metadata"]["ownerReferences"][0]["controller"] = True
    assert not is_operator_registry(controlled, "abc")
    foreign_owner = registry_with(("a", "u1", "x"))
    foreign_owner["metadata"]["ownerReferences"][0]["kind"] = "Deployment"
    assert not is_operator_registry(foreign_owner, "abc")


def test_a_new_registry_holds_one_entry_one_owner_and_the_shape() -> None:
    key = ServerKey("m", "", "pvc://m", "none")
    body = build_registry(key, "ns", "a", "u1", Entry("a", "ad", "s3://x", 8), SHAPE)
    assert body["metadata"]["ownerReferences"] == [ref("a", "u1")]  # not a controller
    assert sorted(body["data"]) == ["adapter.u1", "server.json"]
    assert json.loads(body["data"]["server.json"]) == SHAPE


# ------------------------------------------------------------------- in-process, FakeKube


def put_job(kube: FakeKube, ns: str, name: str, shared: bool = True) -> None:
    job = base_job(
        name, **{"serving.enabled": True, "serving.mode": "shared" if shared else "dedicated"}
    )
    job["metadata"].update({"namespace": ns, "uid": f"uid-{ns}-{name}"})
    kube.put(LJS.format(ns=ns), job)


def ensure(kube: FakeKube, ns: str, name: str, **overrides: Any) -> tuple[Any, str]:
    spec = spec_of(name, **overrides)
    uri = f"s3://bucket/runs/{ns}/{name}/r1/final"
    return asyncio.run(ensure_shared_serving(kube, name, ns, f"uid-{ns}-{name}", spec, uri))


def test_two_jobs_share_one_server_and_another_namespace_gets_its_own() -> None:
    kube = FakeKube()
    for ns, name in (("team-a", "one"), ("team-a", "two"), ("team-b", "one")):
        put_job(kube, ns, name)
    state, server = ensure(kube, "team-a", "one")
    assert state.reason == "Deploying"
    assert ensure(kube, "team-a", "two")[1] == server
    assert ensure(kube, "team-b", "one")[1] == server  # same name, another namespace's object
    for ns, uids in (
        ("team-a", ["uid-team-a-one", "uid-team-a-two"]),
        ("team-b", ["uid-team-b-one"]),
    ):
        registry = kube.obj(CMS.format(ns=ns), server)
        assert registry is not None
        assert sorted(entries(registry)) == uids
        owners = [r["uid"] for r in registry["metadata"]["ownerReferences"]]
        assert owners == uids
        assert list(kube.objects[ISVCS.format(ns=ns)]) == [server]  # one server each
        isvc = kube.obj(ISVCS.format(ns=ns), server)
        assert isvc is not None
        assert isvc["metadata"]["ownerReferences"][0]["uid"] == registry["metadata"]["uid"]
        assert "--max-lora-rank=8" in isvc["spec"]["predictor"]["model"]["args"]
    # an idle repeat writes nothing
    kube.calls.clear()
    ensure(kube, "team-a", "two")
    assert [c for c in kube.calls if c[2] in ("create", "patch", "delete")] == []


def test_leaving_removes_only_the_leaver_and_the_last_one_out_stops_the_server() -> None:
    kube = FakeKube()
    put_job(kube, "ns", "one")
    put_job(kube, "ns", "two")
    _, server = ensure(kube, "ns", "one")
    ensure(kube, "ns", "two")
    assert asyncio.run(leave_shared_serving(kube, "ns", server, "uid-ns-one"))
    registry = kube.obj(CMS.format(ns="ns"), server)
    assert registry is not None and sorted(entries(registry)) == ["uid-ns-two"]
    assert [r["uid"] for r in registry["metadata"]["ownerReferences"]] == ["uid-ns-two"]
    assert kube.obj(ISVCS.format(ns="ns"), server) is not None
    assert asyncio.run(leave_shared_serving(kube, "ns", server, "uid-ns-two"))
    assert kube.obj(ISVCS.format(ns="ns"), server) is None  # the server is gone
    registry = kube.obj(CMS.format(ns="ns"), server)
    assert registry is not None and entries(registry) == {}
    # the last owner stays, so the garbage collector removes the empty registry with it
    assert [r["uid"] for r in registry["metadata"]["ownerReferences"]] == ["uid-ns-two"]
    assert not asyncio.run(leave_shared_serving(kube, "ns", server, "uid-ns-two"))  # no-op


def test_a_deleted_jobs_entry_is_swept_by_the_next_registration() -> None:
    kube = FakeKube()
    put_job(kube, "ns", "one")
    put_job(kube, "ns", "two")
    _, server = ensure(kube, "ns", "one")
    ensure(kube, "ns", "two")
    del kube.objects[LJS.format(ns="ns")]["one"]  # deleted (the GC keeps the registry: two owns it)
    ensure(kube, "ns", "two")
    registry = kube.obj(CMS.format(ns="ns"), server)
    assert registry is not None and sorted(entries(registry)) == ["uid-ns-two"]
    assert [r["uid"] for r in registry["metadata"]["ownerReferences"]] == ["uid-ns-two"]


def test_a_look_alike_registry_is_a_name_conflict_and_untouched() -> None:
    kube = FakeKube()
    put_job(kube, "ns", "one")
    name = server_key(spec_of("one")).name
    fake = {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": "tenant",
            "labels": {"app.kubernetes.io/component": "lora-server"},  # not managed-by, no key
        },
        "data": {"adapter.x": "{}"},
    }
    kube.put(CMS.format(ns="ns"), copy.deepcopy(fake))
    state, _ = ensure(kube, "ns", "one")
    assert state.reason == "NameConflict" and f"ConfigMap ns/{name}" in state.message
    assert kube.obj(CMS.format(ns="ns"), name) == fake
    assert not kube.objects.get(ISVCS.format(ns="ns"))
    assert [c for c in kube.calls if c[2] in ("create", "patch", "delete")] == []
    assert not asyncio.run(leave_shared_serving(kube, "ns", name, "uid-ns-one"))
    assert kube.obj(CMS.format(ns="ns"), name) == fake


def test_two_jobs_cannot_serve_one_adapter_name() -> None:
    kube = FakeKube()
    put_job(kube, "ns", "one")
    put_job(kube, "ns", "two")
    ensure(kube, "ns", "one", **{"serving.adapterName": "same"})
    state, server = ensure(kube, "ns", "two", **{"serving.adapterName": "same"})
    assert state.reason == "NameConflict"
    assert "adapter name same is already served" in state.message and "LoRAJob one" in state.message
    registry = kube.obj(CMS.format(ns="ns"), server)
    assert registry is not None and sorted(entries(registry)) == ["uid-ns-one"]
