"""The adapter syncer of a shared server against moto's S3 and the vLLM stand-in: the registry
the operator builds (`build_registry`, its data written as files the way kubelet mounts a
ConfigMap) becomes a resolver directory vLLM would accept; a removed entry disappears; a server
restarted with an empty directory gets every adapter back from the registry alone."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lora_contract.adapter_registry import Entry
from lora_contract.layout import S3Location
from lora_contract.storage import S3Store
from lora_devkit.s3server import free_port, wait_for_port
from lora_devkit.vllm_standin import VllmStandIn
from lora_operator.controller.shared_registry import ServerKey, build_registry, entry_key
from lora_trainer.adapter_sync import (
    ADAPTER_CONFIG,
    SOURCE_MARKER,
    credentials_stores,
    read_registry,
    sync_once,
)

BUCKET = "sync-test"
BASE = "meta-llama/Llama-3.2-1B"
SHAPE = {"baseModel": BASE, "source": "pvc://m", "gpuResourceName": "nvidia.com/gpu", "gpus": 0}


def upload_adapter(store: S3Store, prefix: str, peft_type: str = "LORA") -> str:
    store.ensure_bucket(BUCKET)
    folder = S3Location(BUCKET, prefix)
    config = {"peft_type": peft_type, "base_model_name_or_path": "/tmp/train/base", "r": 8}
    store.put_json(folder.child("adapter_config.json"), config)
    store.put_bytes(folder.child("adapter_model.safetensors"), b"weights")
    return f"s3://{BUCKET}/{prefix}"


def mount(registry: dict[str, Any], directory: Path) -> None:
    """What kubelet does with a ConfigMap volume: one file per data key (and `..data`)."""
    for old in directory.glob("*"):
        if old.is_file():
            old.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in registry["data"].items():
        (directory / key).write_text(value)
    (directory / "..data").mkdir(exist_ok=True)


def served(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
        body = json.loads(response.read())
    return [m["id"] for m in body["data"]]


def test_sync_serves_what_the_registry_lists_and_a_restart_gets_it_back(
    store: S3Store, tmp_path: Path
) -> None:
    uri_a = upload_adapter(store, "runs/ns/a/r1/final")
    uri_b = upload_adapter(store, "runs/ns/b/r1/final")
    key = ServerKey(BASE, "", "pvc://m", "none")
    registry = build_registry(key, "ns", "a", "u1", Entry("a", "team-a", uri_a, 8), SHAPE)
    registry["data"][entry_key("u2")] = Entry("b", "team-b", uri_b, 8).to_data()
    registry_dir, adapters = tmp_path / "registry", tmp_path / "adapters"
    mount(registry, registry_dir)
    assert read_registry(registry_dir).adapters == {"team-a": uri_a, "team-b": uri_b}

    result = sync_once(store, registry_dir, adapters)
    assert result.added == ["team-a", "team-b"] and result.failed == {}
    config = json.loads((adapters / "team-a" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE  # what the resolver requires
    assert (adapters / "team-a" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (adapters / "team-a" / SOURCE_MARKER).read_text() == uri_a
    with VllmStandIn(BASE, adapters) as server:
        assert served(server.url) == [BASE, "team-a", "team-b"]
        # an idle pass downloads nothing
        assert sync_once(store, registry_dir, adapters).added == []
        # b's job left: its entry is gone from the registry, its folder from the directory
        del registry["data"][entry_key("u2")]
        mount(registry, registry_dir)
        result = sync_once(store, registry_dir, adapters)
        assert result.removed == ["team-b"] and result.added == []
        assert served(server.url) == [BASE, "team-a"]

    # the server pod restarts: an empty emptyDir, rebuilt from the registry alone
    fresh = tmp_path / "restarted"
    with VllmStandIn(BASE, fresh) as server:
        assert served(server.url) == [BASE]
        assert sync_once(store, registry_dir, fresh).added == ["team-a"]
        assert served(server.url) == [BASE, "team-a"]


def test_an_adapter_vllm_cannot_load_is_reported_and_not_served(
    store: S3Store, tmp_path: Path
) -> None:
    uri = upload_adapter(store, "runs/ns/ia3/r1/final", peft_type="IA3")
    key = ServerKey(BASE, "", "pvc://m", "none")
    registry = build_registry(key, "ns", "x", "u1", Entry("x", "ia3", uri, 8), SHAPE)
    registry["data"][entry_key("u9")] = (
        '{"job": "y", "adapter": "../escape", "uri": "s3://b/x", "rank": 8}'
    )
    mount(registry, tmp_path / "registry")
    result = sync_once(store, tmp_path / "registry", tmp_path / "adapters")
    assert result.failed == {"ia3": "peft_type is 'IA3', vLLM loads only LORA"}
    assert result.added == []
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == []  # nothing half-made
    with VllmStandIn(BASE, tmp_path / "adapters") as server:
        assert served(server.url) == [BASE]


def test_each_entry_is_downloaded_with_the_keys_of_its_own_secret(
    store: S3Store, tmp_path: Path
) -> None:
    """--credentials: one folder per mounted Secret; an entry uses the key files its entry names
    (custom key names included), and one whose Secret is not mounted is refused by name, never
    downloaded with another team's keys."""
    uri_a = upload_adapter(store, "runs/team/a/r1/final")
    uri_b = upload_adapter(store, "runs/team/b/r1/final")
    uri_c = upload_adapter(store, "runs/team/c/r1/final")
    key = ServerKey(BASE, "", "pvc://m", "none")
    registry = build_registry(
        key, "ns", "a", "u1", Entry("a", "team-a", uri_a, 8, "a-creds"), SHAPE
    )
    custom = Entry("b", "team-b", uri_b, 8, "b-creds", access_key_key="id", secret_key_key="pw")
    registry["data"][entry_key("u2")] = custom.to_data()
    registry["data"][entry_key("u3")] = Entry("c", "team-c", uri_c, 8, "c-creds").to_data()
    registry["data"][entry_key("u4")] = Entry("d", "team-d", uri_c, 8).to_data()  # no Secret
    mount(registry, tmp_path / "registry")
    credentials = tmp_path / "credentials"
    for secret, files in (
        ("a-creds", {"accessKey": "ak-a", "secretKey": "sk-a"}),
        ("b-creds", {"id": "ak-b", "pw": "sk-b", "accessKey": "wrong", "secretKey": "wrong"}),
    ):  # c-creds is not mounted
        (credentials / secret).mkdir(parents=True)
        for name, value in files.items():
            (credentials / secret / name).write_text(value)

    used: list[tuple[str, str, str]] = []  # (access key, secret key, prefix downloaded)

    def recording(endpoint: str, access: str, secret: str, region: str | None) -> S3Store:
        class Recording(S3Store):
            def download_prefix(self, loc: S3Location, dest_dir: str | Path) -> list[Path]:
                used.append((access, secret, loc.key))
                return super().download_prefix(loc, dest_dir)

        return Recording(endpoint, access, secret, region)

    stores = credentials_stores(credentials, store.endpoint, None, make=recording)
    result = sync_once(stores, tmp_path / "registry", tmp_path / "adapters")
    assert result.added == ["team-a", "team-b"]
    assert used == [
        ("ak-a", "sk-a", "runs/team/a/r1/final"),
        ("ak-b", "sk-b", "runs/team/b/r1/final"),
    ]
    assert result.failed == {
        "team-c": f"credentials Secret c-creds is not mounted at {credentials / 'c-creds'}",
        "team-d": "its entry names no credentials Secret",
    }
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["team-a", "team-b"]
    (credentials / "a-creds" / "secretKey").unlink()  # a Secret without the key its job names
    fresh = credentials_stores(credentials, store.endpoint, None, make=recording)
    result = sync_once(fresh, tmp_path / "registry", tmp_path / "other")
    assert result.failed["team-a"] == "credentials Secret a-creds has no key secretKey"


@contextlib.contextmanager
def moto_in_its_own_process() -> Iterator[S3Store]:
    """A second S3 endpoint with its own objects: moto's servers in one process share one
    backend, so this one runs as a child process (its buckets are not the session server's)."""
    port = free_port()
    code = "from moto.server import main; main()"
    args = [sys.executable, "-c", code, "-H", "127.0.0.1", "-p", str(port)]
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        yield S3Store(f"http://127.0.0.1:{port}", "testing", "testing", retries=1)
    finally:
        child.terminate()
        child.wait(timeout=10)


def test_each_entry_is_downloaded_from_its_own_jobs_endpoint(
    store: S3Store, tmp_path: Path
) -> None:
    """Two S3 endpoints: the server's (env S3_ENDPOINT) and team b's, recorded in b's entry with
    its region. Each adapter exists on one endpoint only, so a download from the wrong store
    fails; one store is made per (endpoint, region, Secret) within a pass."""
    with moto_in_its_own_process() as store_b:
        uri_a = upload_adapter(store, "runs/two/a/r1/final")
        uri_b = upload_adapter(store_b, "runs/two/b/r1/final")
        uri_b2 = upload_adapter(store_b, "runs/two/b2/r1/final")
        assert not store.exists(S3Location.parse(uri_b).child(ADAPTER_CONFIG))  # b's store only
        key = ServerKey(BASE, "", "pvc://m", "none")
        shape = {**SHAPE, "s3Endpoint": store.endpoint}
        registry = build_registry(key, "ns", "a", "u1", Entry("a", "a", uri_a, 8, "a-cr"), shape)
        for uid, job, uri in (("u2", "b", uri_b), ("u3", "b2", uri_b2)):
            entry = Entry(job, job, uri, 8, "b-cr", endpoint=store_b.endpoint, region="eu-1")
            registry["data"][entry_key(uid)] = entry.to_data()
        mount(registry, tmp_path / "registry")
        credentials = tmp_path / "credentials"
        for secret in ("a-cr", "b-cr"):
            (credentials / secret).mkdir(parents=True)
            (credentials / secret / "accessKey").write_text("testing")
            (credentials / secret / "secretKey").write_text("testing")
        made: list[tuple[str, str | None]] = []

        def recording(endpoint: str, access: str, secret: str, region: str | None) -> S3Store:
            made.append((endpoint, region))
            return S3Store(endpoint, access, secret, region, retries=1)

        stores = credentials_stores(credentials, store.endpoint, "us-east-1", make=recording)
        result = sync_once(stores, tmp_path / "registry", tmp_path / "adapters")
        assert (result.added, result.failed) == (["a", "b", "b2"], {})
        assert made == [(store.endpoint, "us-east-1"), (store_b.endpoint, "eu-1")]
        for name, uri in (("a", uri_a), ("b", uri_b), ("b2", uri_b2)):
            assert (tmp_path / "adapters" / name / SOURCE_MARKER).read_text() == uri
            assert (tmp_path / "adapters" / name / "adapter_model.safetensors").read_bytes() == (
                b"weights"
            )
        # without an env endpoint, an entry naming none is refused by name; b's still syncs
        bare = credentials_stores(credentials, None, None, make=recording)
        result = sync_once(bare, tmp_path / "registry", tmp_path / "fresh")
        assert result.added == ["b", "b2"]
        assert result.failed == {
            "a": "its entry names no S3 endpoint and env S3_ENDPOINT is not set"
        }
