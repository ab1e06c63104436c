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
from lora_operator.controller.kube import KubeError
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
from lora_operator.controller.shared_serving import (
    build_shared_account,
    build_shared_inference_service,
    ensure_shared_serving,
    leave_shared_serving,
    live_shared_uids,
    server_shape,
)

CMS = "/api/v1/namespaces/{ns}/configmaps"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices"
LJS = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/{ns}/lorajobs"
ACCOUNTS = "/api/v1/namespaces/{ns}/serviceaccounts"
RUNTIMES = "/apis/serving.kserve.io/v1alpha1/namespaces/{ns}/servingruntimes"
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
        assert isvc["spec"]["predictor"]["model"]["runtime"] == server
        runtime = kube.obj(RUNTIMES.format(ns=ns), server)
        assert runtime is not None
        assert runtime["metadata"]["ownerReferences"] == isvc["metadata"]["ownerReferences"]
        assert "--max-lora-rank=8" in runtime["spec"]["containers"][0]["args"]
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


# ------------------------------------------------------------ the server's shape, pinned by hand

GPU_SHAPE = {
    "baseModel": "org/base",
    "source": "s3://models/base",
    "gpuResourceName": "amd.com/gpu",
    "gpus": 1,
    "replicas": 2,
}


def test_the_shared_server_is_pinned_field_by_field() -> None:
    registry = registry_with(("a", "u1", "ad-a"), ("b", "u2", "ad-b"))
    registry["data"]["server.json"] = json.dumps(GPU_SHAPE)
    assert build_shared_inference_service(registry) == {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "lora-server-abc",
            "namespace": "ns",
            "labels": registry["metadata"]["labels"],
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "lora-server-abc",
                    "uid": "reg-uid",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "predictor": {
                "minReplicas": 2,
                "maxReplicas": 2,
                # the containers are the registry's own ServingRuntime's (shared_runtime.py)
                "model": {
                    "modelFormat": {"name": "huggingface"},
                    "runtime": "lora-server-abc",
                    "storageUri": "s3://models/base",
                },
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 1000,
                    "runAsGroup": 1000,
                    "fsGroup": 1000,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "automountServiceAccountToken": False,
            }
        },
    }


def test_a_registry_without_a_shape_gives_one_replica() -> None:
    registry = registry_with(("a", "u1", "ad-a"))
    predictor = build_shared_inference_service(registry)["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 1)
    assert predictor["model"]["storageUri"] == ""
    registry["data"]["server.json"] = json.dumps({"gpus": 2, "replicas": 0})
    predictor = build_shared_inference_service(registry)["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (0, 1)
    assert max_rank({"data": {}}) == 1


def test_the_shape_comes_from_the_creating_job() -> None:
    assert server_shape(spec_of("a")) == {
        "baseModel": "meta-llama/Llama-3.2-1B",
        "source": "pvc://models/llama-1b",
        "gpuResourceName": "nvidia.com/gpu",
        "gpus": 0,
        "replicas": 1,
    }
    gpu = spec_of("g", **{"resources.gpuType": "A100-80GB", "serving.replicas": 3})
    assert (server_shape(gpu)["gpus"], server_shape(gpu)["replicas"]) == (1, 3)


def test_the_new_registry_is_labelled_and_annotated_as_the_operators() -> None:
    key = ServerKey("m", "v1", "pvc://m", "nf4")
    body = build_registry(key, "ns", "a", "u1", Entry("a", "ad", "s3://x", 8), SHAPE)
    assert body["apiVersion"] == "v1" and body["kind"] == "ConfigMap"
    assert body["metadata"]["name"] == key.name and body["metadata"]["namespace"] == "ns"
    assert body["metadata"]["labels"] == {
        "app.kubernetes.io/name": "lora-operator",
        "app.kubernetes.io/component": "lora-server",
        "app.kubernetes.io/managed-by": "lora-operator",
        "lora-operator.io/server-key": key.digest,
    }
    assert body["metadata"]["annotations"] == {
        "lora-operator.io/base-model": "m",
        "lora-operator.io/revision": "v1",
        "lora-operator.io/quantization": "nf4",
    }
    assert body["data"]["adapter.u1"] == Entry("a", "ad", "s3://x", 8).to_data()


def test_only_live_shared_jobs_count_for_the_sweep() -> None:
    kube = FakeKube()
    put_job(kube, "ns", "shared")
    put_job(kube, "ns", "dedicated", shared=False)
    put_job(kube, "ns", "going")
    kube.objects[LJS.format(ns="ns")]["going"]["metadata"]["deletionTimestamp"] = (
        "2026-01-01T00:00:00Z"
    )
    put_job(kube, "ns", "off")
    kube.objects[LJS.format(ns="ns")]["off"]["spec"]["serving"]["enabled"] = False
    put_job(kube, "elsewhere", "shared")
    assert asyncio.run(live_shared_uids(kube, "ns")) == {"uid-ns-shared"}


class RecordingKube(FakeKube):
    """FakeKube that keeps the bodies of PATCH requests, or fails requests to one resource."""

    def __init__(self, fail: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.patches: list[Any] = []
        self.fail = fail

    async def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        if self.fail is not None and self.fail[0] in path:
            raise KubeError(self.fail[1], "boom")
        if method == "PATCH":
            self.patches.append(copy.deepcopy(body))
        return await super().request(method, path, body, **kwargs)


def test_registry_patches_carry_the_resource_version_read() -> None:
    kube = RecordingKube()
    put_job(kube, "ns", "one")
    put_job(kube, "ns", "two")
    _, server = ensure(kube, "ns", "one")
    kube.objects[CMS.format(ns="ns")][server]["metadata"]["resourceVersion"] = "41"
    ensure(kube, "ns", "two")
    assert kube.patches[0]["metadata"]["resourceVersion"] == "41"
    assert [r["uid"] for r in kube.patches[0]["metadata"]["ownerReferences"]] == [
        "uid-ns-one",
        "uid-ns-two",
    ]
    assert sorted(kube.patches[0]["data"]) == ["adapter.uid-ns-two"]


def test_kserve_missing_or_failing_is_a_condition() -> None:
    missing = RecordingKube(fail=("inferenceservices", 404))
    put_job(missing, "ns", "one")
    state, _ = ensure(missing, "ns", "one")
    assert (state.status, state.reason) == ("False", "KServeNotInstalled")
    assert state.message == (
        "the InferenceService resource (serving.kserve.io/v1beta1) is not installed; "
        "install KServe to serve the adapter"
    )
    failing = RecordingKube(fail=("inferenceservices", 500))
    put_job(failing, "ns", "one")
    state, server = ensure(failing, "ns", "one")
    assert (state.status, state.reason) == ("False", "ServingError")
    assert state.message.startswith(f"cannot serve on {server}: ") and "boom" in state.message


def test_leaving_keeps_other_owners_and_entries_even_when_not_paired() -> None:
    kube = FakeKube()
    registry = registry_with(("a", "u1", "ad-a"), ("b", "u2", "ad-b"))
    registry["metadata"]["ownerReferences"].append(ref("c", "u3"))  # an owner without an entry
    registry["data"]["adapter.u4"] = Entry("d", "ad-d", "s3://d", 8).to_data()  # entry, no owner
    kube.put(CMS.format(ns="ns"), registry)
    assert asyncio.run(leave_shared_serving(kube, "ns", "lora-server-abc", "u1"))
    left = kube.obj(CMS.format(ns="ns"), "lora-server-abc")
    assert left is not None
    assert sorted(entries(left)) == ["u2", "u4"]
    assert [r["uid"] for r in left["metadata"]["ownerReferences"]] == ["u2", "u3"]


def test_leaving_what_lists_nothing_of_this_job_writes_nothing() -> None:
    kube = RecordingKube()
    kube.put(CMS.format(ns="ns"), registry_with(("a", "u1", "ad-a")))
    assert not asyncio.run(leave_shared_serving(kube, "ns", "lora-server-abc", "u-other"))
    assert kube.patches == []


def test_the_last_entry_without_an_owner_reference_and_a_foreign_server() -> None:
    kube = FakeKube()
    registry = registry_with(("a", "u1", "ad-a"))
    registry["metadata"]["ownerReferences"] = [ref("b", "u2")]  # a's reference already dropped
    kube.put(CMS.format(ns="ns"), registry)
    foreign = {"metadata": {"name": "lora-server-abc", "namespace": "ns", "uid": "someone"}}
    kube.put(ISVCS.format(ns="ns"), copy.deepcopy(foreign))
    kube.put(ACCOUNTS.format(ns="ns"), copy.deepcopy(foreign))
    assert asyncio.run(leave_shared_serving(kube, "ns", "lora-server-abc", "u1"))
    left = kube.obj(CMS.format(ns="ns"), "lora-server-abc")
    assert left is not None and entries(left) == {}
    assert left["metadata"]["ownerReferences"] == [ref("b", "u2")]
    assert kube.obj(ISVCS.format(ns="ns"), "lora-server-abc") == foreign  # not the registry's
    assert kube.obj(ACCOUNTS.format(ns="ns"), "lora-server-abc") == foreign


def test_conflicts_are_false_and_a_kept_server_is_still_ours() -> None:
    kube = FakeKube()
    put_job(kube, "ns", "one")
    put_job(kube, "ns", "two")
    ensure(kube, "ns", "one", **{"serving.adapterName": "same"})
    state, server = ensure(kube, "ns", "two", **{"serving.adapterName": "same"})
    assert (state.status, state.reason) == ("False", "NameConflict")
    # the second pass restores the InferenceService the registry controls (not a conflict)
    state, _ = ensure(kube, "ns", "one", **{"serving.adapterName": "same"})
    assert (state.status, state.reason) == ("Unknown", "Deploying")
    registry = kube.obj(CMS.format(ns="ns"), server)
    assert registry is not None
    assert [r["name"] for r in registry["metadata"]["ownerReferences"]] == ["one"]
    put_job(kube, "ns", "three")
    ensure(kube, "ns", "three")
    assert [r["name"] for r in registry_of_fake(kube, server)["metadata"]["ownerReferences"]] == [
        "one",
        "three",
    ]
    wrong = registry_with(("a", "u1", "x"))
    wrong["metadata"]["labels"]["app.kubernetes.io/component"] = "serving"
    assert not is_operator_registry(wrong, "abc")
    lookalike = {"metadata": {"name": server, "namespace": "other", "uid": "t"}, "data": {}}
    kube.put(CMS.format(ns="other"), lookalike)
    put_job(kube, "other", "one")
    state, _ = ensure(kube, "other", "one")
    assert (state.status, state.reason) == ("False", "NameConflict")


def registry_of_fake(kube: FakeKube, server: str) -> dict[str, Any]:
    registry = kube.obj(CMS.format(ns="ns"), server)
    assert registry is not None
    return registry


def ensure_with(kube: FakeKube, ns: str, name: str, secret: str) -> tuple[Any, str]:
    spec = spec_of(name)
    uri = f"s3://bucket/runs/{ns}/{name}/r1/final"
    uid = f"uid-{ns}-{name}"
    return asyncio.run(ensure_shared_serving(kube, name, ns, uid, spec, uri, secret))


def test_the_servers_account_lists_the_jobs_secrets_by_name_and_goes_with_the_last() -> None:
    kube = FakeKube()
    put_job(kube, "ns", "one")
    put_job(kube, "ns", "two")
    _, server = ensure_with(kube, "ns", "one", "team-creds")
    ensure_with(kube, "ns", "two", "other-creds")
    ensure_with(kube, "ns", "one", "team-creds")  # the account follows the registry
    account = kube.obj(ACCOUNTS.format(ns="ns"), server)
    registry = kube.obj(CMS.format(ns="ns"), server)
    assert account is not None and registry is not None
    assert account["secrets"] == [{"name": "other-creds"}, {"name": "team-creds"}]
    assert (account["apiVersion"], account["kind"]) == ("v1", "ServiceAccount")
    assert (account["metadata"]["name"], account["metadata"]["namespace"]) == (server, "ns")
    assert account["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": server,
            "uid": registry["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert account["metadata"]["labels"] == registry["metadata"]["labels"]
    isvc = kube.obj(ISVCS.format(ns="ns"), server)
    assert isvc is not None and isvc["spec"]["predictor"]["serviceAccountName"] == server
    assert not kube.objects.get("/api/v1/namespaces/ns/secrets")  # nothing read or copied
    assert [c for c in kube.calls if c[1] == "secrets"] == []

    asyncio.run(leave_shared_serving(kube, "ns", server, "uid-ns-two"))
    ensure_with(kube, "ns", "one", "team-creds")
    account = kube.obj(ACCOUNTS.format(ns="ns"), server)
    assert account is not None and account["secrets"] == [{"name": "team-creds"}]
    asyncio.run(leave_shared_serving(kube, "ns", server, "uid-ns-one"))
    assert kube.obj(ACCOUNTS.format(ns="ns"), server) is None
    assert kube.obj(ISVCS.format(ns="ns"), server) is None
    assert kube.obj(RUNTIMES.format(ns="ns"), server) is None  # the last one out


def test_an_entry_keeps_its_secret_and_one_without_lists_none() -> None:
    entry = Entry("a", "ad", "s3://x", 8, "creds")
    assert json.loads(entry.to_data()) == {
        "job": "a",
        "adapter": "ad",
        "uri": "s3://x",
        "rank": 8,
        "secret": "creds",
    }
    assert Entry.from_data(entry.to_data()) == entry
    registry = registry_with(("a", "u1", "ad-a"))
    assert build_shared_account(registry) is None
    assert "serviceAccountName" not in build_shared_inference_service(registry)["spec"]["predictor"]


# ------------------------------------------- each entry's own S3 store (issue 21, endpoints)


def test_an_entry_records_its_store_only_when_it_is_not_the_servers() -> None:
    old = '{"adapter": "ad", "job": "a", "rank": 8, "secret": "creds", "uri": "s3://x"}'
    parsed = Entry.from_data(old)  # written before entries had a store: reads back unchanged
    assert parsed == Entry("a", "ad", "s3://x", 8, "creds")
    assert parsed is not None and (parsed.endpoint, parsed.region) == (None, None)
    assert parsed.to_data() == old  # same text: an upgrade rewrites no ConfigMap
    own = Entry("a", "ad", "s3://x", 8, "creds", endpoint="https://s3.b:443", region="eu-1")
    # the server's own store: dropped; another endpoint, or another region: kept whole
    assert own.on_server("https://s3.b:443", "eu-1") == parsed
    assert own.on_server("http://minio:9000", "eu-1") == own
    assert own.on_server("https://s3.b:443", None) == own
    assert json.loads(own.to_data()) == {
        **json.loads(old),
        "endpoint": "https://s3.b:443",
        "region": "eu-1",
    }
    assert Entry.from_data(own.to_data()) == own
    no_region = Entry("a", "ad", "s3://x", 8, endpoint="http://10.0.0.7:9000")
    assert json.loads(no_region.to_data())["endpoint"] == "http://10.0.0.7:9000"
    assert "region" not in json.loads(no_region.to_data())
    assert Entry.from_data(no_region.to_data()) == no_region


def test_an_endpoint_that_is_not_an_http_url_never_parses() -> None:
    """A hand-edited registry cannot point the syncer at a file, another scheme or a host
    hidden behind user info; nor give a region without the endpoint it belongs to."""
    base = {"job": "a", "adapter": "ad", "uri": "s3://x", "rank": 8, "secret": "creds"}
    for endpoint in (
        "file:///etc/lora-credentials",
        "/etc/passwd",
        "minio:9000",
        "ftp://minio:9000",
        "http://",
        "http://minio:9000/bucket",
        "http://minio:9000?x=1",
        "http://minio:9000#x",
        "http://user:pw@evil:9000",
        "http://minio:port",
        "http://minio :9000",
        "",
        7,
    ):
        assert Entry.from_data(json.dumps({**base, "endpoint": endpoint})) is None, endpoint
    assert Entry.from_data(json.dumps({**base, "region": "eu-1"})) is None  # no endpoint
    assert Entry.from_data(json.dumps({**base, "endpoint": "http://m:9", "region": ""})) is None
    for endpoint in ("http://minio:9000", "https://s3.example.com/", "http://[::1]:9000"):
        entry = Entry.from_data(json.dumps({**base, "endpoint": endpoint}))
        assert entry is not None and entry.endpoint == endpoint


def test_the_operator_writes_a_jobs_endpoint_only_when_it_differs_from_the_servers() -> None:
    """The creating job's store is server.json's (the syncer's env): its entry and that of a
    second job on the same store name none; a third job writing to another allowed store gets
    its endpoint and region in its entry; repeats write nothing; the registry's shape stays."""
    kube = FakeKube()
    for name in ("one", "two", "three"):
        put_job(kube, "ns", name)
    first = {"output.endpoint": "http://minio-a:9000", "output.region": "us-east-1"}
    other = {"output.endpoint": "https://s3.team-b:443", "output.region": "eu-west-1"}
    _, server = ensure(kube, "ns", "one", **first)
    ensure(kube, "ns", "two", **first)
    ensure(kube, "ns", "three", **other)
    registry = registry_of_fake(kube, server)
    data = registry["data"]
    shape = json.loads(data["server.json"])
    assert (shape["s3Endpoint"], shape["s3Region"]) == ("http://minio-a:9000", "us-east-1")
    for name in ("one", "two"):
        assert json.loads(data[f"adapter.uid-ns-{name}"]) == {
            "job": name,
            "adapter": name,
            "uri": f"s3://bucket/runs/ns/{name}/r1/final",
            "rank": 8,
        }
    assert json.loads(data["adapter.uid-ns-three"]) == {
        "job": "three",
        "adapter": "three",
        "uri": "s3://bucket/runs/ns/three/r1/final",
        "rank": 8,
        "endpoint": "https://s3.team-b:443",
        "region": "eu-west-1",
    }
    before = copy.deepcopy(registry)
    kube.calls.clear()
    for name, overrides in (("one", first), ("two", first), ("three", other)):
        ensure(kube, "ns", name, **overrides)
    assert [c for c in kube.calls if c[2] in ("create", "patch", "delete")] == []
    assert registry_of_fake(kube, server) == before
    # job two moves to team b's store (a retrain elsewhere): its entry follows, nothing else
    ensure(kube, "ns", "two", **other)
    patches = [c for c in kube.calls if c[2] in ("create", "patch", "delete")]
    assert [(c[1], c[2]) for c in patches] == [("configmaps", "patch")]
    after = registry_of_fake(kube, server)["data"]
    assert json.loads(after["adapter.uid-ns-two"])["endpoint"] == "https://s3.team-b:443"
    assert {k: v for k, v in after.items() if k != "adapter.uid-ns-two"} == {
        k: v for k, v in before["data"].items() if k != "adapter.uid-ns-two"
    }


def test_an_endpoint_the_syncer_cannot_use_is_refused_by_name_and_writes_nothing() -> None:
    kube = FakeKube()
    put_job(kube, "ns", "one")
    state, server = ensure(kube, "ns", "one", **{"output.endpoint": "http://minio:9000/team"})
    assert (state.status, state.reason) == ("False", "ServingError")
    assert state.message == (
        "S3 endpoint 'http://minio:9000/team' (spec.output.endpoint, else the operator's "
        "s3.endpoint) is not an http(s) URL of a host alone (no user, path or query): the "
        f"adapter syncer of {server} cannot download from it"
    )
    assert [c for c in kube.calls if c[2] in ("create", "patch", "delete")] == []
    assert kube.obj(CMS.format(ns="ns"), server) is None


def test_an_entrys_own_key_names_round_trip_and_a_path_as_a_key_never_parses() -> None:
    base = {"job": "a", "adapter": "ad", "uri": "s3://x", "rank": 8, "secret": "creds"}
    custom = Entry("a", "ad", "s3://x", 8, "creds", access_key_key="id", secret_key_key="pw")
    assert json.loads(custom.to_data()) == {**base, "accessKeyKey": "id", "secretKeyKey": "pw"}
    assert Entry.from_data(custom.to_data()) == custom
    for field in ("accessKeyKey", "secretKeyKey"):
        for key in (".", "..", "a/b", "../creds"):
            assert Entry.from_data(json.dumps({**base, field: key})) is None, (field, key)
