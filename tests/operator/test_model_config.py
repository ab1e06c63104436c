"""Where the operator gets a job's config.json (controller/model_config_source.py): the shipped
set, a ConfigMap in the job's namespace, or an allow-listed URL fetched from a real local HTTP
server (devkit ConfigServer) with a deadline, a size cap and checked redirects; never a file."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_kube import FakeKube

from lora_contract.types import BaseModelSpec
from lora_devkit.config_server import ConfigServer
from lora_operator.api.operator_config import PlatformPolicy
from lora_operator.controller.model_config_source import (
    Fetching,
    Key,
    ModelConfigSource,
)
from lora_operator.memory import ModelConfig, PlanningError

NS = "team-a"
JOB: Key = (NS, "job")
CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2}
BODY = json.dumps(CONFIG).encode()
CONFIGMAPS = "/api/v1/namespaces/team-a/configmaps"


@pytest.fixture(scope="module")
def server() -> Iterator[ConfigServer]:
    files = {"/models/llama/config.json": BODY, "/models/big/config.json": b" " * 4096 + BODY}
    with ConfigServer(files, trickle_seconds=0.5) as running:
        yield running


def base_model(**fields: Any) -> BaseModelSpec:
    return BaseModelSpec.model_validate({"name": "my-org/custom", "source": "pvc://m/x", **fields})


def policy(*allowed: str, **fields: Any) -> PlatformPolicy:
    return PlatformPolicy(allowed_model_config_urls=list(allowed), **fields)


class Woken:
    """The resolver's `on_ready`: records which jobs it asked to reconcile again."""

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.event = asyncio.Event()

    async def __call__(self, key: Key) -> None:
        self.keys.append(key)
        self.event.set()


def resolve_now(model: BaseModelSpec, rules: PlatformPolicy, kube: FakeKube | None = None) -> Any:
    async def go() -> ModelConfig | Fetching:
        source = ModelConfigSource(on_ready=Woken())
        return await source.resolve(kube or FakeKube(), JOB, model, rules)

    return asyncio.run(go())


def resolve_fetched(url: str, rules: PlatformPolicy) -> ModelConfig:
    """Resolve, wait for the fetch to end, resolve again (as the woken reconcile does)."""

    async def go() -> ModelConfig:
        woken = Woken()
        source = ModelConfigSource(on_ready=woken)
        first = await source.resolve(FakeKube(), JOB, base_model(config=url), rules)
        assert first == Fetching(url)
        await asyncio.wait_for(woken.event.wait(), 30)
        assert woken.keys == [JOB]
        again = await source.resolve(FakeKube(), JOB, base_model(config=url), rules)
        assert isinstance(again, ModelConfig)
        return again

    return asyncio.run(go())


# ------------------------------------------------------------------ refusals before any IO


@pytest.mark.parametrize(
    "url",
    [
        "https://hub.example.evil.net/models/llama/config.json",  # a longer host
        "https://hub.example@evil.net/models/llama/config.json",  # userinfo trick
        "http://hub.example/models/llama/config.json",  # another scheme
        "https://hub.example:8443/models/llama/config.json",  # another port
        "https://hub.example/modelsX/config.json",  # not a whole path segment
        "https://hub.example/models/../admin/config.json",  # climbs out of the prefix
        "http://10.0.0.1/latest/meta-data",  # cluster-internal
    ],
)
def test_a_url_outside_the_allow_list_is_refused_naming_field_and_policy(url: str) -> None:
    with pytest.raises(PlanningError) as exc:
        resolve_now(base_model(config=url), policy("https://hub.example/models"))
    message = str(exc.value)
    assert message.startswith("spec.baseModel.config:")
    assert "policy.allowedModelConfigUrls" in message


def test_without_an_allow_list_no_url_is_fetched() -> None:
    with pytest.raises(PlanningError, match=r"fetches no model config URLs .*is empty"):
        resolve_now(base_model(config="https://hub.example/config.json"), policy())


def test_a_local_path_is_refused_without_saying_whether_it_exists(tmp_path: Path) -> None:
    present = tmp_path / "config.json"
    present.write_bytes(BODY)
    messages = []
    for path in (str(present), str(tmp_path / "absent.json"), "/etc/passwd", "file:///etc/hosts"):
        with pytest.raises(PlanningError) as exc:
            resolve_now(base_model(config=path), policy("https://hub.example/"))
        messages.append(str(exc.value))
    assert len(set(messages)) == 1, messages
    assert messages[0].startswith("spec.baseModel.config: the operator does not read files")
    assert str(tmp_path) not in messages[0] and "passwd" not in messages[0]


def test_a_shipped_model_resolves_without_io() -> None:
    resolved = resolve_now(base_model(name="meta-llama/Llama-3.2-1B"), policy())
    assert isinstance(resolved, ModelConfig)
    assert resolved.data["model_type"] == "llama"


# ------------------------------------------------------------------ ConfigMap


def config_map(name: str, **sections: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, **sections}


def test_a_config_map_in_the_jobs_namespace_is_read() -> None:
    kube = FakeKube()
    kube.put(CONFIGMAPS, config_map("llama", data={"config.json": BODY.decode()}))
    kube.put(CONFIGMAPS, config_map("other", data={"model.json": BODY.decode()}))
    encoded = base64.b64encode(BODY).decode()
    kube.put(CONFIGMAPS, config_map("binary", binaryData={"config.json": encoded}))
    rules = policy()
    resolved = resolve_now(base_model(configMapRef={"name": "llama"}), rules, kube)
    assert resolved.data == CONFIG and resolved.source == "ConfigMap team-a/llama key config.json"
    keyed = resolve_now(
        base_model(configMapRef={"name": "other", "key": "model.json"}), rules, kube
    )
    assert keyed.data == CONFIG
    assert resolve_now(base_model(configMapRef={"name": "binary"}), rules, kube).data == CONFIG
    assert kube.calls == [("", "configmaps", "get")] * 3


@pytest.mark.parametrize(
    "ref, expected",
    [
        ({"name": "missing"}, r"ConfigMap 'missing' not found in namespace 'team-a'"),
        ({"name": "other"}, r"has no key 'config.json' \(keys: model.json\)"),
        ({"name": "big"}, r"larger than 1024 bytes \(policy.modelConfigMaxBytes\)"),
        ({"name": "junk"}, r"is not valid JSON"),
    ],
)
def test_config_map_problems_name_the_field(ref: dict[str, str], expected: str) -> None:
    kube = FakeKube()
    kube.put(CONFIGMAPS, config_map("other", data={"model.json": BODY.decode()}))
    kube.put(CONFIGMAPS, config_map("big", data={"config.json": " " * 2048 + BODY.decode()}))
    kube.put(CONFIGMAPS, config_map("junk", data={"config.json": "{nope"}))
    with pytest.raises(PlanningError, match=expected) as exc:
        resolve_now(base_model(configMapRef=ref), policy(model_config_max_bytes=1024), kube)
    assert str(exc.value).startswith("spec.baseModel.configMapRef:")


# ------------------------------------------------------------------ URL fetches


def test_an_allowed_url_is_fetched_and_parsed(server: ConfigServer) -> None:
    url = server.url("/models/llama/config.json")
    resolved = resolve_fetched(url, policy(server.url("/models/")))
    assert resolved == ModelConfig(url, CONFIG)


def test_jobs_naming_one_url_share_one_fetch_and_are_each_woken(server: ConfigServer) -> None:
    url = server.url("/models/llama/config.json?shared")
    rules = policy(server.url("/models/"))
    model = base_model(config=url)
    jobs: list[Key] = [(NS, "a"), (NS, "b"), (NS, "a")]

    async def go() -> list[Key]:
        woken = Woken()
        source = ModelConfigSource(on_ready=woken)
        for job in jobs:
            assert await source.resolve(FakeKube(), job, model, rules) == Fetching(url)
        while len(woken.keys) < 2:
            await asyncio.wait_for(woken.event.wait(), 30)
            woken.event.clear()
        for job in jobs:
            assert await source.resolve(FakeKube(), job, model, rules) == ModelConfig(url, CONFIG)
        return woken.keys

    assert asyncio.run(go()) == [(NS, "a"), (NS, "b")]
    assert server.requests.count("/models/llama/config.json?shared") == 1


@pytest.mark.parametrize("path", ["/models/big/config.json", "/chunked/models/big/config.json"])
def test_a_body_over_the_size_cap_is_refused(server: ConfigServer, path: str) -> None:
    """Announced (Content-Length) or not (chunked): the cap holds either way."""
    capped = policy(server.url("/"), model_config_max_bytes=1024)
    with pytest.raises(PlanningError, match=r"larger than 1024 bytes \(policy.modelConfigMaxBytes"):
        resolve_fetched(server.url(path), capped)
    small = server.url("/chunked/models/llama/config.json")
    assert resolve_fetched(small, capped).data == CONFIG


def test_a_trickling_server_fails_at_the_deadline(server: ConfigServer) -> None:
    url = server.url("/trickle/config.json")
    with pytest.raises(PlanningError) as exc:
        resolve_fetched(url, policy(server.url("/"), model_config_timeout_seconds=1))
    assert str(exc.value) == (
        f"spec.baseModel.config: fetching {url!r} did not finish within 1 s "
        "(policy.modelConfigTimeoutSeconds)"
    )


def test_a_redirect_is_followed_only_within_the_allow_list(server: ConfigServer) -> None:
    inside = server.url("/redirect?to=/models/llama/config.json")
    assert resolve_fetched(inside, policy(server.url("/"))).data == CONFIG
    elsewhere = f"http://localhost:{server.port}/models/llama/config.json"
    outside = server.url(f"/redirect?to={elsewhere}")
    with pytest.raises(PlanningError) as exc:
        resolve_fetched(outside, policy(server.url("/")))
    assert str(exc.value) == (
        f"spec.baseModel.config: {outside!r} redirects to {elsewhere!r}, which "
        "policy.allowedModelConfigUrls does not allow"
    )


def test_an_error_status_names_the_url(server: ConfigServer) -> None:
    url = server.url("/models/none/config.json")
    with pytest.raises(PlanningError, match=r"answered HTTP 404"):
        resolve_fetched(url, policy(server.url("/models/")))


def test_a_narrowed_allow_list_applies_to_a_fetched_config_at_once(server: ConfigServer) -> None:
    url = server.url("/models/llama/config.json?narrowed")

    async def go() -> None:
        woken = Woken()
        source = ModelConfigSource(on_ready=woken)
        model = base_model(config=url)
        await source.resolve(FakeKube(), JOB, model, policy(server.url("/")))
        await asyncio.wait_for(woken.event.wait(), 30)
        with pytest.raises(PlanningError, match=r"policy\.allowedModelConfigUrls"):
            await source.resolve(FakeKube(), JOB, model, policy("https://hub.example/"))

    asyncio.run(go())
