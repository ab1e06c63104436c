"""The KServe stand-in against the emulated API server and moto's S3: a shared server's
InferenceService on its ServingRuntime (adapter-sync container + vLLM) becomes a syncer process
and a vLLM stand-in; `/v1/models` follows the registry ConfigMap as kubelet remounts it; the
InferenceService's status is written the way KServe writes it; a deleted one stops its processes.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lora_contract.adapter_registry import Entry
from lora_contract.layout import S3Location
from lora_contract.storage import S3Store
from lora_devkit.emulator import EmulatedCluster, RestClient
from lora_devkit.executor import wait_for
from lora_devkit.kserve_standin import (
    INFERENCE_SERVICES,
    SERVING_RUNTIMES,
    KServeStandIn,
    link_mount_parents,
)
from lora_devkit.s3server import S3Server
from lora_operator.controller.serving import readiness
from lora_operator.controller.shared_registry import ServerKey, build_registry, entry_key

NS = "team-a"
BUCKET = "standin"
BASE = "lora-operator/tiny-llama"
SHAPE = {"baseModel": BASE, "source": "pvc://m", "gpuResourceName": "nvidia.com/gpu", "gpus": 0}


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with S3Server(use_env=False) as server:
        yield server


def upload_adapter(store: S3Store, prefix: str) -> str:
    store.ensure_bucket(BUCKET)
    folder = S3Location(BUCKET, prefix)
    config = {"peft_type": "LORA", "base_model_name_or_path": "/pvc/models/tiny", "r": 8}
    store.put_json(folder.child("adapter_config.json"), config)
    store.put_bytes(folder.child("adapter_model.safetensors"), b"weights")
    return f"s3://{BUCKET}/{prefix}"


def shared_server(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ServingRuntime and its InferenceService, shaped as the operator builds a shared server
    (docs/serving.md): vLLM plus the adapter-sync sidecar over the registry ConfigMap."""
    runtime = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "supportedModelFormats": [{"name": "huggingface", "autoSelect": False}],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": "kserve/huggingfaceserver:latest",
                    "args": ["--backend=vllm", f"--model_name={BASE}", "--enable-lora"],
                    "env": [{"name": "VLLM_LORA_RESOLVER_CACHE_DIR", "value": "/mnt/adapters"}],
                    "volumeMounts": [{"name": "adapters", "mountPath": "/mnt/adapters"}],
                },
                {
                    "name": "adapter-sync",
                    "image": "lora-operator/trainer:local",
                    "command": [
                        "python",
                        "-m",
                        "lora_trainer.adapter_sync",
                        "--registry",
                        "/etc/lora-registry",
                        "--dir",
                        "/mnt/adapters",
                    ],
                    "volumeMounts": [
                        {"name": "registry", "mountPath": "/etc/lora-registry", "readOnly": True},
                        {"name": "adapters", "mountPath": "/mnt/adapters"},
                    ],
                },
            ],
            "volumes": [
                {"name": "registry", "configMap": {"name": name}},
                {"name": "adapters", "emptyDir": {}},
            ],
        },
    }
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "runtime": name}}},
    }
    return runtime, isvc


def served(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
        body = json.loads(response.read())
    return [m["id"] for m in body["data"]]


def settle(kserve: KServeStandIn, url: str, expected: list[str]) -> None:
    """Passes until the syncer (a separate process, every 0.2 s) has the directory right."""

    def done() -> bool:
        kserve.reconcile_once()
        return served(url) == expected

    try:
        wait_for(done, 30, 0.2)
    except TimeoutError:
        logs = "\n".join(p.read_text() for p in kserve.log_dir.glob("*.log"))
        raise AssertionError(f"served {served(url)}, expected {expected}\n{logs}") from None


def declare_runtimes(cluster: EmulatedCluster) -> None:
    emulator = cluster.emulator
    assert emulator is not None
    if SERVING_RUNTIMES not in emulator.resources:
        emulator.declare(SERVING_RUNTIMES, "ServingRuntime", True)


def test_a_shared_server_serves_its_registry_and_stops_when_deleted(
    cluster: EmulatedCluster, s3: S3Server, tmp_path: Path
) -> None:
    declare_runtimes(cluster)
    client: RestClient = cluster.client()
    store = s3.store()
    uri_a = upload_adapter(store, "runs/team-a/a/r1/final")
    uri_b = upload_adapter(store, "runs/team-a/b/r1/final")
    key = ServerKey(BASE, "", "pvc://m", "none")
    registry = build_registry(key, NS, "a", "u1", Entry("a", "adapter-a", uri_a, 8), SHAPE)
    registry["data"][entry_key("u2")] = Entry("b", "adapter-b", uri_b, 8).to_data()
    client.create("v1/configmaps", NS, registry)
    runtime, isvc = shared_server(key.name)
    client.create(SERVING_RUNTIMES, NS, runtime)
    client.create(INFERENCE_SERVICES, NS, isvc)
    s3_env = {"S3_ENDPOINT": s3.endpoint, "S3_ACCESS_KEY": s3.access_key}
    s3_env["S3_SECRET_KEY"] = s3.secret_key

    kserve = KServeStandIn(client, tmp_path / "kserve", namespace=NS, sync_interval=0.2)
    kserve.translator.extra_env.update(s3_env)
    try:
        kserve.reconcile_once()
        url = kserve.url(NS, key.name)
        assert url is not None and url.startswith("http://127.0.0.1:")
        settle(kserve, url, [BASE, "adapter-a", "adapter-b"])

        # KServe's status: the operator's own readiness reads it as Ready, at that URL
        stored = client.get(INFERENCE_SERVICES, NS, key.name)
        assert stored is not None
        status = stored["status"]
        assert status["url"] == status["address"]["url"] == url
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions["PredictorReady"] == conditions["Ready"] == "True"
        state = readiness(stored)
        assert (state.status, state.url) == ("True", url)
        version = stored["metadata"]["resourceVersion"]
        kserve.reconcile_once()  # nothing changed: nothing written
        again = client.get(INFERENCE_SERVICES, NS, key.name)
        assert again is not None and again["metadata"]["resourceVersion"] == version

        # b's entry leaves the ConfigMap: the mounted file goes, the syncer removes the folder
        client.patch("v1/configmaps", NS, key.name, {"data": {entry_key("u2"): None}}, False)
        settle(kserve, url, [BASE, "adapter-a"])
        (server,) = kserve.servers.values()
        mounted = sorted(p.name for p in (server.pod_dir / "volumes" / "registry").iterdir())
        assert mounted == ["adapter.u1", "server.json"]

        # the InferenceService is deleted: the syncer process and the server are gone
        process = server.process
        assert process is not None and process.poll() is None
        client.delete(INFERENCE_SERVICES, NS, key.name)
        kserve.reconcile_once()
        assert kserve.servers == {} and kserve.url(NS, key.name) is None
        assert process.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.kill(process.pid, 0)
        with pytest.raises(urllib.error.URLError):
            served(url)
    finally:
        kserve.stop()


def test_an_inference_service_without_its_runtime_is_left_alone(
    cluster: EmulatedCluster, tmp_path: Path
) -> None:
    declare_runtimes(cluster)
    client = cluster.client()
    _, isvc = shared_server("lora-server-missing")
    created = client.create(INFERENCE_SERVICES, NS, isvc)
    kserve = KServeStandIn(client, tmp_path / "kserve", namespace=NS)
    kserve.reconcile_once()
    assert kserve.servers == {}
    stored = client.get(INFERENCE_SERVICES, NS, "lora-server-missing")
    assert stored is not None and "status" not in stored
    assert stored["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_a_folder_above_mounts_becomes_a_folder_of_links(tmp_path: Path) -> None:
    team_a, team_b = tmp_path / "volumes" / "a", tmp_path / "volumes" / "b"
    team_a.mkdir(parents=True)
    team_b.mkdir(parents=True)
    (team_a / "accessKey").write_text("ak")
    mounts = {"/etc/lora-credentials/s3-a": team_a, "/etc/lora-credentials/s3-b": team_b}
    root = tmp_path / "rootfs"
    argv = link_mount_parents(
        ["python", "--credentials", "/etc/lora-credentials", "--other=/etc/lora-credentials/"],
        mounts,
        root,
    )
    local = root / "etc" / "lora-credentials"
    assert argv == ["python", "--credentials", str(local), f"--other={local}"]
    assert (local / "s3-a" / "accessKey").read_text() == "ak"
    assert sorted(p.name for p in local.iterdir()) == ["s3-a", "s3-b"]
    # an argument under no mount, or not a path, is kept as it is
    assert link_mount_parents(["/etc/other", "--dir"], mounts, root) == ["/etc/other", "--dir"]
