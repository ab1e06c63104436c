"""The shared server's ServingRuntime, fast: the pure builders (shared_runtime.py) pinned field
by field from hand-written registries and a hand-written serving plan, and ensure_shared_serving
in-process against `FakeKube` for what only the IO shows (the sidecar runs the operator's image
whatever the job's trainerImage; a Secret of another namespace never reaches a runtime).
Expected values are written out by hand, not computed by the code under test."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fake_kube import FakeKube
from operator_harness import base_job
from registry_fixture import registry_of

from lora_contract.adapter_registry import Entry
from lora_contract.types import ResourceAmounts, SecretRef, ServingPlanStatus
from lora_operator.api.loading import parse_lorajob
from lora_operator.api.operator_config import OperatorConfig, S3Defaults
from lora_operator.controller.s3_target import S3Target
from lora_operator.controller.shared_registry import entries
from lora_operator.controller.shared_runtime import (
    build_shared_predictor_model,
    build_shared_runtime,
    server_shape,
    size_of,
)
from lora_operator.controller.shared_serving import ensure_shared_serving

RUNTIMES = "/apis/serving.kserve.io/v1alpha1/namespaces/{ns}/servingruntimes"
CMS = "/api/v1/namespaces/{ns}/configmaps"
LJS = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/{ns}/lorajobs"
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
    "replicas": 1,
    "vllmArgs": [
        "--max-model-len=8192",
        "--max-num-seqs=8",
        "--max-loras=4",
        "--max-cpu-loras=8",
        "--tensor-parallel-size=2",
        "--gpu-memory-utilization=0.90",
    ],
    "requests": {"cpu": "6", "memory": "20Gi"},
    "limits": {"memory": "20Gi"},
    "nodeSelector": {"gpu": "h100"},
    "s3Endpoint": "http://minio.storage:9000",
    "s3Region": "eu-1",
}


TWO_TEAMS = (
    ("u1", Entry("a", "ad-a", "s3://b/a", 8, "team-b-creds")),
    ("u2", Entry("b", "ad-b", "s3://b/b", 48, "team-a-creds")),
    ("u3", Entry("c", "ad-c", "s3://b/c", 8, "team-a-creds")),  # the same Secret: one volume
    ("u4", Entry("d", "ad-d", "s3://b/d", 8)),  # no Secret: no volume
)


def test_the_runtime_is_pinned_field_by_field() -> None:
    registry = registry_of(PLANNED_SHAPE, *TWO_TEAMS)
    runtime = build_shared_runtime(registry, "kserve/hf:1", "platform/trainer:7")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] == "ServingRuntime"
    assert runtime["metadata"] == {
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
    spec = runtime["spec"]
    assert spec["supportedModelFormats"] == [{"name": "huggingface", "autoSelect": False}]
    assert spec["multiModel"] is False
    assert spec["nodeSelector"] == {"gpu": "h100"}
    vllm, sync = spec["containers"]
    assert vllm == {
        "name": "kserve-container",
        "image": "kserve/hf:1",
        "args": [
            "--backend=vllm",
            "--model_name=org/base",
            "--model_dir=/mnt/models",
            "--enable-lora",
            "--max-lora-rank=64",  # rank 48 needs vLLM's next size up
            "--max-model-len=8192",
            "--max-num-seqs=8",
            "--max-loras=4",
            "--max-cpu-loras=8",
            "--tensor-parallel-size=2",
            "--gpu-memory-utilization=0.90",
        ],
        "env": [
            {"name": "HOME", "value": "/home/kserve"},
            {"name": "VLLM_PLUGINS", "value": "lora_filesystem_resolver"},
            {"name": "VLLM_LORA_RESOLVER_CACHE_DIR", "value": "/mnt/adapters"},
            {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "true"},
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
    assert sync == {
        "name": "adapter-sync",
        "image": "platform/trainer:7",
        "command": [
            "python",
            "-m",
            "lora_trainer.adapter_sync",
            "--registry",
            "/etc/lora-registry",
            "--dir",
            "/mnt/adapters",
            "--credentials",
            "/etc/lora-credentials",
        ],
        "env": [
            {"name": "S3_ENDPOINT", "value": "http://minio.storage:9000"},
            {"name": "AWS_REGION", "value": "eu-1"},
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": CONTAINER_CONTEXT,
        "volumeMounts": [
            {"name": "registry", "mountPath": "/etc/lora-registry", "readOnly": True},
            {"name": "adapters", "mountPath": "/mnt/adapters"},
            {"name": "cred-0", "mountPath": "/etc/lora-credentials/team-a-creds", "readOnly": True},
            {"name": "cred-1", "mountPath": "/etc/lora-credentials/team-b-creds", "readOnly": True},
        ],
    }
    assert spec["volumes"] == [
        {"name": "tmp", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        {"name": "adapters", "emptyDir": {}},
        {"name": "registry", "configMap": {"name": "lora-server-abc"}},
        {"name": "cred-0", "secret": {"secretName": "team-a-creds"}},
        {"name": "cred-1", "secret": {"secretName": "team-b-creds"}},
    ]


def test_the_inference_service_model_names_the_runtime_and_the_base_model() -> None:
    registry = registry_of(PLANNED_SHAPE, *TWO_TEAMS)
    assert build_shared_predictor_model(registry) == {
        "modelFormat": {"name": "huggingface"},
        "runtime": "lora-server-abc",
        "storageUri": "s3://models/base",
    }


def test_a_registry_without_a_plan_keeps_the_old_shape() -> None:
    """A registry written before plans were recorded (or by a job planned with serving off):
    its GPUs only, vLLM's own sizing, no node selector, no S3 env, no Secret volume."""
    old = {"baseModel": "m", "source": "pvc://m", "gpuResourceName": "amd.com/gpu", "gpus": 1}
    registry = registry_of(old, ("u1", Entry("a", "ad-a", "s3://b/a", 16)))
    spec = build_shared_runtime(registry, "img", "sync")["spec"]
    vllm, sync = spec["containers"]
    assert vllm["args"] == [
        "--backend=vllm",
        "--model_name=m",
        "--model_dir=/mnt/models",
        "--enable-lora",
        "--max-lora-rank=16",
    ]
    assert vllm["resources"] == {"requests": {"amd.com/gpu": "1"}, "limits": {"amd.com/gpu": "1"}}
    assert "nodeSelector" not in spec
    assert sync["env"] == []
    assert [m["name"] for m in sync["volumeMounts"]] == ["registry", "adapters"]
    assert [v["name"] for v in spec["volumes"]][-1] == "registry"
    empty = registry_of({}, ("u1", Entry("a", "ad-a", "s3://b/a", 8)))
    del empty["data"]["server.json"]
    cpu = build_shared_runtime(empty, "img", "sync")["spec"]["containers"][0]
    assert cpu["resources"] == {} and cpu["args"][1] == "--model_name="
    assert build_shared_predictor_model(empty)["storageUri"] == ""


def test_a_recorded_size_reads_back_as_written() -> None:
    """server.json read back: GPUs without a resource name are nvidia.com/gpu; requests or
    limits alone still declare both maps (a plan declares them, as the dedicated server)."""
    assert size_of({"gpus": 2}).resources() == {
        "requests": {"nvidia.com/gpu": "2"},
        "limits": {"nvidia.com/gpu": "2"},
    }
    assert size_of({"limits": {"memory": "8Gi"}}).resources() == {
        "requests": {},
        "limits": {"memory": "8Gi"},
    }
    assert size_of({"requests": {"cpu": "2"}}).resources() == {
        "requests": {"cpu": "2"},
        "limits": {},
    }
    assert size_of({}).resources() == {}


def spec_of(name: str, **overrides: Any) -> Any:
    job = base_job(name, **{"serving.enabled": True, "serving.mode": "shared", **overrides})
    return parse_lorajob(job).spec


def test_the_shape_records_a_hand_written_plan() -> None:
    spec = spec_of(
        "a",
        **{
            "resources.gpuType": "H100-80GB",
            "resources.nodeSelector": {"zone": "z1", "gpu": "mine"},
            "serving.replicas": 2,
        },
    )
    plan = ServingPlanStatus(
        gpu_type="H100-80GB",
        gpus=4,
        tensor_parallel_size=4,
        node_selector={"gpu": "h100", "pool": "serving"},
        vllm_args=["--max-model-len=4096", "--tensor-parallel-size=4"],
        requests=ResourceAmounts(cpu="10", memory="30Gi"),
        limits=ResourceAmounts(memory="30Gi"),
    )
    target = S3Target("http://s3.local:9000", "eu-1", None)
    shape = server_shape(spec, plan, target)
    assert shape == {
        "baseModel": "meta-llama/Llama-3.2-1B",
        "source": "pvc://models/llama-1b",
        "gpuResourceName": "nvidia.com/gpu",
        "gpus": 4,
        "replicas": 2,
        "vllmArgs": ["--max-model-len=4096", "--tensor-parallel-size=4"],
        "requests": {"cpu": "10", "memory": "30Gi"},
        "limits": {"memory": "30Gi"},
        "nodeSelector": {"gpu": "mine", "pool": "serving", "zone": "z1"},  # the spec's win
        "s3Endpoint": "http://s3.local:9000",
        "s3Region": "eu-1",
    }
    size = size_of(json.loads(json.dumps(shape)))  # as read back from server.json
    assert size.resources() == {
        "requests": {"cpu": "10", "memory": "30Gi", "nvidia.com/gpu": "4"},
        "limits": {"memory": "30Gi", "nvidia.com/gpu": "4"},
    }
    # without a plan: the creating job's GPU type, one GPU, no flags (the shape before plans)
    assert server_shape(spec_of("b", **{"resources.gpuType": "H100-80GB"})) == {
        "baseModel": "meta-llama/Llama-3.2-1B",
        "source": "pvc://models/llama-1b",
        "gpuResourceName": "nvidia.com/gpu",
        "gpus": 1,
        "replicas": 1,
    }
    own = spec_of("c", **{"resources.gpuType": "H100-80GB", "resources.nodeSelector": {"z": "1"}})
    assert server_shape(own)["nodeSelector"] == {"z": "1"}  # as a dedicated server's


def put_job(kube: FakeKube, ns: str, name: str) -> None:
    job = base_job(name, **{"serving.enabled": True, "serving.mode": "shared"})
    job["metadata"].update({"namespace": ns, "uid": f"uid-{ns}-{name}"})
    kube.put(LJS.format(ns=ns), job)


def ensure(
    kube: FakeKube,
    ns: str,
    name: str,
    secret: SecretRef | str | None,
    plan: ServingPlanStatus | None = None,
    **overrides: Any,
) -> str:
    spec = spec_of(name, **overrides)
    config = OperatorConfig(
        trainer_image="platform/trainer:7",
        serving_image="kserve/hf:1",
        s3=S3Defaults(endpoint="http://minio.storage:9000"),
    )
    uri = f"s3://bucket/runs/{ns}/{name}/r1/final"
    state, server = asyncio.run(
        ensure_shared_serving(
            kube, name, ns, f"uid-{ns}-{name}", spec, uri, secret, "r1", plan=plan, config=config
        )
    )
    assert state.reason == "Deploying", state
    return server


def test_the_sidecar_runs_the_operators_image_and_each_namespace_lists_its_own_secrets() -> None:
    kube = FakeKube()
    for ns, name in (("team-a", "one"), ("team-a", "two"), ("team-b", "one")):
        put_job(kube, ns, name)
    custom = SecretRef(name="a-creds", access_key_key="id", secret_key_key="key")
    plan = ServingPlanStatus(gpu_type="cpu", gpus=0, vllm_args=["--max-loras=2"])
    server = ensure(kube, "team-a", "one", custom, plan, trainerImage="team-a/own-trainer:1")
    ensure(kube, "team-a", "two", "a2-creds")
    ensure(kube, "team-b", "one", "b-creds", trainerImage="team-b/own-trainer:1")
    for ns, secrets in (("team-a", ["a-creds", "a2-creds"]), ("team-b", ["b-creds"])):
        runtime = kube.obj(RUNTIMES.format(ns=ns), server)
        assert runtime is not None
        vllm, sync = runtime["spec"]["containers"]
        assert (vllm["image"], sync["image"]) == ("kserve/hf:1", "platform/trainer:7")
        volumes = [v["secret"]["secretName"] for v in runtime["spec"]["volumes"] if "secret" in v]
        assert volumes == secrets  # nothing of the other namespace
        assert sync["env"] == [{"name": "S3_ENDPOINT", "value": "http://minio.storage:9000"}]
    registry = kube.obj(CMS.format(ns="team-a"), server)
    assert registry is not None
    listed = entries(registry)
    # the custom key names travel with the entry, for the syncer to read the right files
    assert (listed["uid-team-a-one"].access_key_key, listed["uid-team-a-one"].secret_key_key) == (
        "id",
        "key",
    )
    assert json.loads(registry["data"]["adapter.uid-team-a-two"]) == {
        "adapter": "two",
        "job": "two",
        "rank": 8,
        "secret": "a2-creds",
        "run": "r1",
        "uri": "s3://bucket/runs/team-a/two/r1/final",
    }  # default key names are not written: an older entry reads back equal
    # the creating job's plan sized team-a's server; team-b's was created without one
    runtimes = {ns: kube.obj(RUNTIMES.format(ns=ns), server) for ns in ("team-a", "team-b")}
    assert runtimes["team-a"]["spec"]["containers"][0]["args"][-1] == "--max-loras=2"  # type: ignore[index]
    assert runtimes["team-b"]["spec"]["containers"][0]["args"][-1] == "--max-lora-rank=8"  # type: ignore[index]


def test_an_entry_naming_a_path_as_secret_or_key_never_parses() -> None:
    good = {"job": "a", "adapter": "ad", "uri": "s3://b/a", "rank": 8, "secret": "creds"}
    assert Entry.from_data(json.dumps(good)) == Entry("a", "ad", "s3://b/a", 8, "creds")
    for bad in (
        {"secret": "../other-team"},
        {"secret": "a/b"},
        {"accessKeyKey": ".."},
        {"secretKeyKey": "../../etc/passwd"},
    ):
        assert Entry.from_data(json.dumps({**good, **bad})) is None, bad
    assert Entry.from_data("[]") is None
