"""The shared server as KServe's LLMInferenceService, fast: which serving API discovery chooses
(serving_api.py), the pure builder (shared_llmisvc.py) pinned field by field from a hand-written
registry and serving plan, and ensure/leave_shared_serving in-process against `FakeKube` whose
discovery serves LLMInferenceService: one LLMInferenceService for two jobs and no
InferenceService or ServingRuntime, a deleted one put back, the last job out removing it.
Expected values are written out by hand, not computed by the code under test."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import base_job
from registry_fixture import registry_of

from lora_contract.adapter_registry import Entry
from lora_operator.api.loading import parse_lorajob
from lora_operator.api.operator_config import OperatorConfig, S3Defaults
from lora_operator.controller import serving_api
from lora_operator.controller.kube import KubeError
from lora_operator.controller.serving_api import (
    ServingApis,
    decide,
    fresh,
    is_discovery,
    resource_names,
    serving_apis,
)
from lora_operator.controller.shared_llmisvc import build_shared_llm_inference_service
from lora_operator.controller.shared_serving import ensure_shared_serving, leave_shared_serving

LLMISVCS = "/apis/serving.kserve.io/v1alpha1/namespaces/ns/llminferenceservices"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/ns/inferenceservices"
RUNTIMES = "/apis/serving.kserve.io/v1alpha1/namespaces/ns/servingruntimes"
LJS = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/ns/lorajobs"
CONTAINER_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
# What memory/serving_plan.py would record for a 2-GPU server, written by hand.
PLANNED_SHAPE = {
    "baseModel": "org/base",
    "source": "s3://models/base",
    "gpuResourceName": "nvidia.com/gpu",
    "gpus": 2,
    "replicas": 3,
    "vllmArgs": ["--max-model-len=8192", "--max-loras=4", "--tensor-parallel-size=2"],
    "requests": {"cpu": "6", "memory": "20Gi"},
    "limits": {"memory": "20Gi"},
    "nodeSelector": {"gpu": "h100"},
    "s3Endpoint": "http://minio.storage:9000",
}


ENTRIES = (
    ("u1", Entry("a", "ad-a", "s3://b/a", 8, "team-creds")),
    ("u2", Entry("b", "ad-b", "s3://b/b", 24)),  # rank 24: vLLM's 32
)


def test_the_llm_inference_service_is_pinned_field_by_field() -> None:
    registry = registry_of(PLANNED_SHAPE, *ENTRIES)
    obj = build_shared_llm_inference_service(registry, "platform/trainer:7", scheduler=False)
    assert (obj["apiVersion"], obj["kind"]) == ("serving.kserve.io/v1alpha1", "LLMInferenceService")
    assert obj["metadata"] == {
        "name": "lora-server-abc",
        "namespace": "ns",
        "labels": {"app.kubernetes.io/component": "lora-server"},
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
    }
    spec = obj["spec"]
    assert sorted(spec) == ["model", "replicas", "template"]  # no router without the extension
    assert spec["model"] == {"uri": "s3://models/base", "name": "org/base"}
    assert spec["replicas"] == 3
    template = spec["template"]
    assert template["serviceAccountName"] == "lora-server-abc"  # an entry names a Secret
    assert template["nodeSelector"] == {"gpu": "h100"}
    assert template["automountServiceAccountToken"] is False
    assert template["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    main, sync = template["containers"]
    assert main == {  # no image, command or args: KServe's template keeps them
        "name": "main",
        "env": [
            {"name": "HOME", "value": "/home/kserve"},
            {"name": "VLLM_PLUGINS", "value": "lora_filesystem_resolver"},
            {"name": "VLLM_LORA_RESOLVER_CACHE_DIR", "value": "/mnt/adapters"},
            {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "true"},
            {
                "name": "VLLM_ADDITIONAL_ARGS",
                "value": "--enable-lora --max-lora-rank=32 --max-model-len=8192 --max-loras=4 "
                "--tensor-parallel-size=2",
            },
        ],
        "resources": {
            "requests": {"cpu": "6", "memory": "20Gi", "nvidia.com/gpu": "2"},
            "limits": {"memory": "20Gi", "nvidia.com/gpu": "2"},
        },
        "securityContext": CONTAINER_CONTEXT,
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "home", "mountPath": "/home/kserve"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "adapters", "mountPath": "/mnt/adapters", "readOnly": True},
        ],
    }
    assert (sync["name"], sync["image"]) == ("adapter-sync", "platform/trainer:7")
    assert sync["env"] == [{"name": "S3_ENDPOINT", "value": "http://minio.storage:9000"}]
    assert sync["volumeMounts"] == [
        {"name": "registry", "mountPath": "/etc/lora-registry", "readOnly": True},
        {"name": "adapters", "mountPath": "/mnt/adapters"},
        {"name": "cred-0", "mountPath": "/etc/lora-credentials/team-creds", "readOnly": True},
    ]
    assert template["volumes"] == [
        {"name": "tmp", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "adapters", "emptyDir": {}},
        {"name": "registry", "configMap": {"name": "lora-server-abc"}},
        {"name": "cred-0", "secret": {"secretName": "team-creds"}},
    ]


def test_the_router_asks_for_the_scheduler_only_with_the_extension() -> None:
    registry = registry_of(PLANNED_SHAPE, *ENTRIES)
    scheduled = build_shared_llm_inference_service(registry, "t", scheduler=True)
    assert scheduled["spec"]["router"] == {"route": {}, "gateway": {}, "scheduler": {}}
    plain = build_shared_llm_inference_service(registry, "t", scheduler=False)
    assert "router" not in plain["spec"]
    assert {k: v for k, v in scheduled["spec"].items() if k != "router"} == plain["spec"]


def test_a_registry_without_server_json_names_no_model() -> None:
    """As the ServingRuntime path's storageUri: empty strings, never 'None'."""
    registry = registry_of({}, ("u1", Entry("a", "ad-a", "s3://b/a", 8)))
    registry["data"].pop("server.json")
    spec = build_shared_llm_inference_service(registry, "t", scheduler=False)["spec"]
    assert spec["model"] == {"uri": "", "name": ""} and spec["replicas"] == 1


def test_a_registry_without_a_plan_or_secret_keeps_the_old_shape() -> None:
    old = {"baseModel": "m", "source": "pvc://m", "gpuResourceName": "amd.com/gpu", "gpus": 1}
    registry = registry_of(old, ("u1", Entry("a", "ad-a", "s3://b/a", 16)))
    spec = build_shared_llm_inference_service(registry, "t", scheduler=False)["spec"]
    assert spec["replicas"] == 1
    assert "serviceAccountName" not in spec["template"]
    assert "nodeSelector" not in spec["template"]
    main = spec["template"]["containers"][0]
    assert main["resources"] == {"requests": {"amd.com/gpu": "1"}, "limits": {"amd.com/gpu": "1"}}
    assert main["env"][-1] == {
        "name": "VLLM_ADDITIONAL_ARGS",
        "value": "--enable-lora --max-lora-rank=16",
    }


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        ({}, ServingApis(False, False)),
        ({"serving.kserve.io/v1alpha1": {"servingruntimes"}}, ServingApis(False, False)),
        (
            {"serving.kserve.io/v1alpha1": {"servingruntimes", "llminferenceservices"}},
            ServingApis(True, False),
        ),
        ({"inference.networking.k8s.io/v1": {"inferencepools"}}, ServingApis(False, True)),
        (
            {
                "serving.kserve.io/v1alpha1": {"llminferenceservices"},
                "inference.networking.x-k8s.io/v1alpha2": {"inferencepools", "inferencemodels"},
            },
            ServingApis(True, True),
        ),
        # the resource in another group/version does not count
        ({"serving.kserve.io/v1beta1": {"llminferenceservices"}}, ServingApis(False, False)),
        ({"inference.networking.k8s.io/v1": {"inferencemodels"}}, ServingApis(False, False)),
    ],
)
def test_discovery_decides_the_kind_and_the_scheduler(
    served: dict[str, set[str]], expected: ServingApis
) -> None:
    assert decide(served) == expected


def test_the_kind_and_the_scheduler_of_each_answer() -> None:
    assert ServingApis(False, False).kind == "InferenceService"
    assert ServingApis(False, True).kind == "InferenceService"
    assert ServingApis(True, False).kind == "LLMInferenceService"
    assert [
        ServingApis(a, b).scheduler
        for a, b in ((False, False), (False, True), (True, False), (True, True))
    ] == [
        False,
        False,
        False,
        True,
    ]


def test_discovery_bodies_and_paths() -> None:
    body = {
        "resources": [{"name": "llminferenceservices"}, {"name": "llminferenceservices/status"}]
    }
    assert resource_names(body) == {"llminferenceservices"}
    assert resource_names({"resources": [{"name": ""}, "x"]}) == set()
    assert resource_names(None) == set() and resource_names({}) == set()
    assert resource_names({"resources": [{"kind": "LLMInferenceService"}]}) == set()  # no name
    assert is_discovery("/apis/serving.kserve.io/v1alpha1")
    assert is_discovery("/apis/inference.networking.x-k8s.io/v1alpha2/?timeout=5s")
    assert not is_discovery("/apis/serving.kserve.io/v1alpha1/namespaces/ns/servingruntimes")
    assert not is_discovery("/apis/serving.kserve.io/v1beta1")
    assert is_discovery("/apis/serving.kserve.io/v1alpha1?a=?b")  # the query cut at its first ?
    assert not is_discovery("/apis/serving.kserve.io/v1alpha1X")  # only the exact paths


def test_an_answer_stands_for_one_resync_period() -> None:
    assert fresh(100.0, 100.0) and fresh(100.0, 159.9)
    assert not fresh(100.0, 160.0) and not fresh(None, 0.0)
    assert not fresh(100.0, 99.0)  # a clock that went back: read again
    assert fresh(0.0, 4.0, period=5.0) and not fresh(0.0, 5.0, period=5.0)


class CountingKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.discoveries = 0

    async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if is_discovery(path):
            assert method == "GET", method
            self.discoveries += 1
        return await super().request(method, path, *args, **kwargs)


def test_discovery_is_cached_per_client_and_read_again_after_the_period() -> None:
    kube, now = CountingKube(), [1000.0]
    assert asyncio.run(serving_apis(kube, lambda: now[0])) == ServingApis(False, False)
    assert kube.discoveries == 3  # the LLM API's group/version and both pool ones
    kube.discovery["serving.kserve.io/v1alpha1"] = ["llminferenceservices"]  # installed later
    now[0] += 59.0
    assert asyncio.run(serving_apis(kube, lambda: now[0])) == ServingApis(False, False)
    assert kube.discoveries == 3  # cached
    now[0] += 1.0
    assert asyncio.run(serving_apis(kube, lambda: now[0])) == ServingApis(True, False)
    assert kube.discoveries == 6
    other = CountingKube()  # another client (process) reads its own
    assert asyncio.run(serving_apis(other, lambda: now[0])) == ServingApis(False, False)


def test_a_discovery_error_other_than_404_is_raised() -> None:
    class Failing(FakeKube):
        async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            if is_discovery(path):
                raise KubeError(503, "unavailable")
            return await super().request(method, path, *args, **kwargs)

    with pytest.raises(KubeError):
        asyncio.run(serving_apis(Failing()))


def ensure(kube: FakeKube, name: str) -> str:
    job = base_job(name, **{"serving.enabled": True, "serving.mode": "shared"})
    job["metadata"].update({"namespace": "ns", "uid": f"uid-{name}"})
    kube.put(LJS, job)
    spec = parse_lorajob(job).spec
    config = OperatorConfig(
        trainer_image="platform/trainer:7",
        serving_image="kserve/hf:1",
        s3=S3Defaults(endpoint="http://minio.storage:9000"),
    )
    uri = f"s3://bucket/runs/ns/{name}/r1/final"
    state, server = asyncio.run(
        ensure_shared_serving(
            kube, name, "ns", f"uid-{name}", spec, uri, "creds", "r1", config=config
        )
    )
    assert state.reason == "Deploying", state
    return server


def test_two_jobs_share_one_llm_inference_service_kept_and_removed_with_the_last() -> None:
    kube = FakeKube()
    kube.discovery = {
        "serving.kserve.io/v1alpha1": ["servingruntimes", "llminferenceservices"],
        "inference.networking.k8s.io/v1": ["inferencepools"],
    }
    server = ensure(kube, "one")
    assert ensure(kube, "two") == server
    assert sorted(kube.objects[LLMISVCS]) == [server]
    assert not kube.objects.get(ISVCS) and not kube.objects.get(RUNTIMES)
    obj = kube.obj(LLMISVCS, server)
    assert obj is not None
    registry_uid = kube.obj("/api/v1/namespaces/ns/configmaps", server)["metadata"]["uid"]  # type: ignore[index]
    assert obj["metadata"]["ownerReferences"][0]["uid"] == registry_uid
    assert obj["spec"]["router"] == {"route": {}, "gateway": {}, "scheduler": {}}
    assert obj["spec"]["template"]["containers"][1]["image"] == "platform/trainer:7"

    # deleted (or its spec edited) -> put back at the next ensure
    kube.objects[LLMISVCS].pop(server)
    ensure(kube, "two")
    assert kube.obj(LLMISVCS, server)["spec"] == obj["spec"]  # type: ignore[index]
    kube.obj(LLMISVCS, server)["spec"]["replicas"] = 9  # type: ignore[index]
    ensure(kube, "two")
    assert kube.obj(LLMISVCS, server)["spec"]["replicas"] == 1  # type: ignore[index]

    # the first out leaves it; the last out deletes it (and nothing of the other kind exists)
    assert asyncio.run(leave_shared_serving(kube, "ns", server, "uid-one"))
    assert sorted(kube.objects[LLMISVCS]) == [server]
    assert asyncio.run(leave_shared_serving(kube, "ns", server, "uid-two"))
    assert kube.objects[LLMISVCS] == {}
    assert kube.obj("/api/v1/namespaces/ns/serviceaccounts", server) is None


def test_a_server_made_as_an_inference_service_keeps_its_kind_when_the_llm_api_arrives() -> None:
    """KServe's LLM API installed after a shared server was created: the registry keeps its
    InferenceService (no second server on the same GPUs) until its last job leaves, which
    deletes it; a server created from then on is an LLMInferenceService."""
    kube = FakeKube()
    server = ensure(kube, "one")
    assert sorted(kube.objects[ISVCS]) == [server] and sorted(kube.objects[RUNTIMES]) == [server]
    kube.discovery = {"serving.kserve.io/v1alpha1": ["servingruntimes", "llminferenceservices"]}
    serving_api._CACHE.pop(kube)  # the next resync period
    ensure(kube, "two")
    assert sorted(kube.objects[ISVCS]) == [server] and not kube.objects.get(LLMISVCS)
    assert asyncio.run(leave_shared_serving(kube, "ns", server, "uid-one"))
    assert asyncio.run(leave_shared_serving(kube, "ns", server, "uid-two"))
    assert kube.objects[ISVCS] == {} and kube.objects[RUNTIMES] == {}
    assert ensure(kube, "three") == server  # the registry again: now the LLM API's kind
    assert sorted(kube.objects[LLMISVCS]) == [server] and kube.objects[ISVCS] == {}


def test_leaving_looks_for_an_llm_inference_service_only_where_one_is_served() -> None:
    kube = FakeKube()
    server = ensure(kube, "one")
    assert asyncio.run(leave_shared_serving(kube, "ns", server, "uid-one"))
    assert kube.objects[ISVCS] == {}
    assert [c for c in kube.calls if c[1] == "llminferenceservices"] == []


def test_an_owner_without_an_entry_still_takes_the_llm_inference_service_with_it() -> None:
    """A restart between the registry's patch and the delete: the registry lists no entry, only
    this job as owner. Leaving deletes the server and says it did (True)."""
    kube = FakeKube()
    kube.discovery = {"serving.kserve.io/v1alpha1": ["llminferenceservices"]}
    server = ensure(kube, "one")
    registry = kube.obj("/api/v1/namespaces/ns/configmaps", server)
    assert registry is not None
    registry["data"] = {k: v for k, v in registry["data"].items() if not k.startswith("adapter.")}
    assert asyncio.run(leave_shared_serving(kube, "ns", server, "uid-one")) is True
    assert kube.objects[LLMISVCS] == {}
