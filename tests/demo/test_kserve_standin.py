"""The KServe stand-in against the emulated API server and moto's S3: a shared server's
InferenceService on its ServingRuntime, as the operator builds them (shared_runtime.py,
shared_serving.py: adapter-sync container + vLLM, one Secret volume per team), becomes a syncer
process and a vLLM stand-in; `/v1/models` follows the registry ConfigMap as kubelet remounts it; the
InferenceService's status is written the way KServe writes it; a deleted one stops its processes.
"""

from __future__ import annotations

import base64
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
from lora_operator.controller.shared_runtime import build_shared_runtime
from lora_operator.controller.shared_serving import build_shared_inference_service

NS = "team-a"
BUCKET = "standin"
BASE = "lora-operator/tiny-llama"
LORAJOBS = "finetune.lora-operator.io/v1alpha1/lorajobs"
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


def secret(name: str, access: str, secret_key: str) -> dict[str, Any]:
    data = {"accessKey": access, "secretKey": secret_key}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def owner_job(client: RestClient, name: str) -> str:
    """A LoRAJob to own the registry (the garbage collector removes a registry whose owners are
    all gone, as it does on a real cluster); its uid."""
    body = {
        "apiVersion": "finetune.lora-operator.io/v1alpha1",
        "kind": "LoRAJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "baseModel": {"name": BASE, "source": "pvc://m"},
            "lora": {"r": 8, "alpha": 16},
            "dataset": {"source": "pvc://data/train.jsonl", "format": "prompt-completion"},
            "resources": {"gpuType": "cpu"},
            "output": {"bucket": BUCKET, "prefix": "runs"},
        },
    }
    return str(client.create(LORAJOBS, NS, body)["metadata"]["uid"])


def shared_server(registry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ServingRuntime and InferenceService the operator builds for a registry."""
    runtime = build_shared_runtime(registry, "kserve/huggingfaceserver:v0", "trainer:local")
    return runtime, build_shared_inference_service(registry)


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


def test_a_shared_server_serves_its_registry_and_stops_when_deleted(
    cluster: EmulatedCluster, s3: S3Server, tmp_path: Path
) -> None:
    client: RestClient = cluster.client()
    store = s3.store()
    uri_a = upload_adapter(store, "runs/team-a/a/r1/final")
    uri_b = upload_adapter(store, "runs/team-a/b/r1/final")
    # each job's own credentials Secret (moto takes any keys; the syncer must read each)
    client.create("v1/secrets", NS, secret("s3-a", s3.access_key, s3.secret_key))
    client.create("v1/secrets", NS, secret("s3-b", s3.access_key, s3.secret_key))
    key = ServerKey(BASE, "", "pvc://m", "none")
    shape = {**SHAPE, "s3Endpoint": s3.endpoint}
    entry_a = Entry("a", "adapter-a", uri_a, 8, "s3-a")
    u1 = owner_job(client, "a")
    registry = build_registry(key, NS, "a", u1, entry_a, shape)
    registry["data"][entry_key("u2")] = Entry("b", "adapter-b", uri_b, 8, "s3-b").to_data()
    registry = client.create("v1/configmaps", NS, registry)
    runtime, isvc = shared_server(registry)
    client.create(SERVING_RUNTIMES, NS, runtime)
    client.create(INFERENCE_SERVICES, NS, isvc)

    kserve = KServeStandIn(client, tmp_path / "kserve", namespace=NS, sync_interval=0.2)
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
        assert mounted == [f"adapter.{u1}", "server.json"]
        # each Secret volume where the syncer's --credentials folder shows it
        keys = server.pod_dir / "rootfs" / "etc" / "lora-credentials" / "s3-b" / "secretKey"
        assert keys.read_text() == s3.secret_key

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
    client = cluster.client()
    key = ServerKey(BASE, "", "pvc://m", "none")
    u1 = owner_job(client, "a")
    registry = build_registry(key, NS, "a", u1, Entry("a", "adapter-a", "s3://b/a", 8), SHAPE)
    registry = client.create("v1/configmaps", NS, registry)
    _, isvc = shared_server(registry)  # its runtime never created
    created = client.create(INFERENCE_SERVICES, NS, isvc)
    kserve = KServeStandIn(client, tmp_path / "kserve", namespace=NS)
    kserve.reconcile_once()
    assert kserve.servers == {}
    stored = client.get(INFERENCE_SERVICES, NS, key.name)
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
