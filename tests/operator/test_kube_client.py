"""The operator's Kubernetes client (`Kube`, on kubernetes_asyncio) against the emulated API server
over real HTTP: the idempotency rules the reconciler relies on and the error mapping."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kopf
import pytest

from lora_contract.types import GROUP, KIND, PLURAL, VERSION
from lora_devkit.emulator import EmulatedCluster
from lora_operator.controller.kube import Kube, KubeError, client_configuration

T = TypeVar("T")
NAMESPACE = "kube-client"
CONFIGMAPS = "v1/configmaps"


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmulatedCluster(tmp_path_factory.mktemp("k8s"), kserve=False) as emulated:
        yield emulated.url


def with_kube(url: str, scenario: Callable[[Kube], Awaitable[T]]) -> T:
    async def run() -> T:
        kube = Kube(kopf.ConnectionInfo(server=url))
        try:
            return await scenario(kube)
        finally:
            await kube.close()

    return asyncio.run(run())


def configmap(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels or {}},
        "data": data,
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_get_of_a_missing_object_is_none(api_url: str) -> None:
    assert with_kube(api_url, lambda kube: kube.get(CONFIGMAPS, NAMESPACE, "absent")) is None


def test_create_twice_returns_the_stored_object_without_a_second_create(api_url: str) -> None:
    name = unique("twice")

    async def scenario(kube: Kube) -> None:
        first, created = await kube.create(CONFIGMAPS, NAMESPACE, configmap(name, v="1"))
        again, created_again = await kube.create(CONFIGMAPS, NAMESPACE, configmap(name, v="2"))
        assert created and not created_again
        assert again["metadata"]["uid"] == first["metadata"]["uid"]
        assert again["data"] == {"v": "1"}

    with_kube(api_url, scenario)


def test_patch_is_a_merge_patch(api_url: str) -> None:
    name = unique("merge")

    async def scenario(kube: Kube) -> None:
        await kube.create(CONFIGMAPS, NAMESPACE, configmap(name, keep="k", drop="d"))
        patched = await kube.patch(
            CONFIGMAPS, NAMESPACE, name, {"data": {"drop": None, "new": "n"}}
        )
        assert patched["data"] == {"keep": "k", "new": "n"}

    with_kube(api_url, scenario)


def test_list_returns_only_objects_with_the_labels(api_url: str) -> None:
    team = unique("team")

    async def scenario(kube: Kube) -> None:
        await kube.create(CONFIGMAPS, NAMESPACE, configmap(unique("a"), {"team": team}))
        await kube.create(CONFIGMAPS, NAMESPACE, configmap(unique("b"), {"team": team}))
        await kube.create(CONFIGMAPS, NAMESPACE, configmap(unique("c"), {"team": "other"}))
        listed = await kube.list(CONFIGMAPS, NAMESPACE, {"team": team})
        assert len(listed) == 2
        assert {item["metadata"]["labels"]["team"] for item in listed} == {team}

    with_kube(api_url, scenario)


def test_delete_with_a_stale_uid_is_refused_with_409(api_url: str) -> None:
    name = unique("uid")

    async def scenario(kube: Kube) -> None:
        obj, _ = await kube.create(CONFIGMAPS, NAMESPACE, configmap(name))
        with pytest.raises(KubeError) as refused:
            await kube.delete(CONFIGMAPS, NAMESPACE, name, uid="not-" + obj["metadata"]["uid"])
        assert refused.value.status == 409
        assert "precondition" in refused.value.message.lower()
        assert await kube.get(CONFIGMAPS, NAMESPACE, name) is not None
        assert await kube.delete(CONFIGMAPS, NAMESPACE, name, uid=obj["metadata"]["uid"])
        assert await kube.get(CONFIGMAPS, NAMESPACE, name) is None

    with_kube(api_url, scenario)


def test_delete_of_a_missing_object_is_false(api_url: str) -> None:
    deleted = with_kube(api_url, lambda kube: kube.delete(CONFIGMAPS, NAMESPACE, "absent"))
    assert deleted is False


def test_an_api_error_carries_the_status_and_the_servers_message(api_url: str) -> None:
    async def scenario(kube: Kube) -> KubeError:
        job = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "metadata": {"name": "invalid", "namespace": NAMESPACE},
            "spec": {"training": {"maxSteps": -1}},
        }
        with pytest.raises(KubeError) as refused:
            await kube.create(f"{GROUP}/{VERSION}/{PLURAL}", NAMESPACE, job)
        return refused.value

    error = with_kube(api_url, scenario)
    assert error.status == 422
    assert error.message.startswith(f'{KIND}.{GROUP} "invalid" is invalid: ')


def test_the_login_becomes_the_clients_configuration(tmp_path: Path) -> None:
    """kubeconfig `*-data` fields (base64 PEM) become files the client's TLS context loads; a
    token gets its scheme; basic auth is sent as the client's kubeconfig loader sends it."""
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    info = kopf.ConnectionInfo(
        server="https://k8s.example:6443/",
        ca_data=base64.b64encode(pem).decode(),
        certificate_path="/var/run/tls.crt",
        private_key_data=pem,
        token="t0ken",
    )
    config = client_configuration(info, tmp_path / "tls")
    assert config.host == "https://k8s.example:6443"
    assert config.verify_ssl
    assert config.ssl_ca_cert and Path(config.ssl_ca_cert).read_bytes() == pem
    assert config.cert_file == "/var/run/tls.crt"
    assert config.key_file and Path(config.key_file).read_bytes() == pem
    assert config.api_key["BearerToken"] == "t0ken"
    assert config.api_key_prefix["BearerToken"] == "Bearer"

    basic = client_configuration(
        kopf.ConnectionInfo(server="https://k", username="u", password="p", insecure=True),
        tmp_path / "none",
    )
    assert not (tmp_path / "none").exists()  # nothing to write: nothing written
    assert not basic.verify_ssl
    assert basic.api_key["BearerToken"] == "Basic " + base64.b64encode(b"u:p").decode()


def test_proxies_and_netrc_come_from_the_environment_only_when_kopf_says_so(api_url: str) -> None:
    """Off by default, as in kopf; on, aiohttp looks both up in a thread on every request."""

    async def trusts(info: kopf.ConnectionInfo) -> bool:
        kube = Kube(info)
        try:
            assert await kube.get(CONFIGMAPS, NAMESPACE, "absent") is None  # still connected
            return bool(kube.api().rest_client.pool_manager.trust_env)
        finally:
            await kube.close()

    assert not asyncio.run(trusts(kopf.ConnectionInfo(server=api_url)))
    assert asyncio.run(trusts(kopf.ConnectionInfo(server=api_url, trust_env=True)))
