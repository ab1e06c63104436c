"""A ConfigMap whose config.json is 200 KB of `[[[...]]]` (spec.baseModel.configMapRef): it was
an uncaught RecursionError in the reconcile, so the job never got a phase or a condition and a
traceback was logged on every resync. Now the job fails planning with one message naming the
ConfigMap and its key, in-process and against the real operator process."""

from __future__ import annotations

import asyncio
import base64

from fake_kube import FakeKube
from operator_harness import NAMESPACE, Harness, base_job

from lora_contract.bounded_parse import MAX_DEPTH
from lora_contract.types import BaseModelSpec
from lora_devkit.config_server import ConfigServer
from lora_operator.api.operator_config import PlatformPolicy
from lora_operator.controller.model_config_source import Fetching, ModelConfigSource
from lora_operator.memory import PlanningError

DEPTH = 100_000
DEEP = "[" * DEPTH + "]" * DEPTH  # 200 000 bytes: under the default 1 MiB cap
REFUSAL = f"nested more than {MAX_DEPTH} levels deep ({DEPTH} levels); nothing real nests so deep"


async def _noop(_: tuple[str, str]) -> None:
    return None


def resolve(kube: FakeKube, name: str) -> PlanningError:
    model = BaseModelSpec.model_validate(
        {"name": "my-org/custom", "source": "pvc://m/x", "configMapRef": {"name": name}}
    )

    async def go() -> None:
        await ModelConfigSource(on_ready=_noop).resolve(
            kube, ("team-a", "job"), model, PlatformPolicy()
        )

    try:
        asyncio.run(go())
    except PlanningError as exc:
        return exc
    raise AssertionError("a deep config.json was accepted")


def test_a_deep_config_map_is_refused_naming_the_config_map_and_key() -> None:
    kube = FakeKube()
    configmaps = "/api/v1/namespaces/team-a/configmaps"
    kube.put(
        configmaps,
        {"metadata": {"name": "deep", "namespace": "team-a"}, "data": {"config.json": DEEP}},
    )
    binary = base64.b64encode(DEEP.encode()).decode()
    kube.put(
        configmaps,
        {
            "metadata": {"name": "deep-bin", "namespace": "team-a"},
            "binaryData": {"config.json": binary},
        },
    )
    for name in ("deep", "deep-bin"):
        assert str(resolve(kube, name)) == (
            f"spec.baseModel.configMapRef: ConfigMap {name!r} key 'config.json': {REFUSAL}"
        )


def test_a_deep_config_at_an_allowed_url_is_refused_naming_the_url() -> None:
    with ConfigServer({"/deep/config.json": DEEP.encode()}) as server:
        url = server.url("/deep/config.json")
        model = BaseModelSpec.model_validate(
            {"name": "my-org/custom", "source": "pvc://m/x", "config": url}
        )
        rules = PlatformPolicy(allowed_model_config_urls=[server.url("/deep/")])
        woken = asyncio.Event()

        async def wake(_: tuple[str, str]) -> None:
            woken.set()

        async def go() -> str:
            source = ModelConfigSource(on_ready=wake)
            job = ("team-a", "job")
            assert await source.resolve(FakeKube(), job, model, rules) == Fetching(url)
            await asyncio.wait_for(woken.wait(), 30)
            try:
                await source.resolve(FakeKube(), job, model, rules)
            except PlanningError as exc:
                return str(exc)
            raise AssertionError("a deep config.json was accepted")

        assert asyncio.run(go()) == f"spec.baseModel.config: {url!r}: {REFUSAL}"


def condition(status: dict[str, object], type_: str) -> dict[str, object]:
    conditions = status.get("conditions") or []
    assert isinstance(conditions, list)
    return next((c for c in conditions if c.get("type") == type_), {})


def test_the_operator_fails_the_job_with_the_reason_and_no_traceback(harness: Harness) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "deep-config", "namespace": NAMESPACE},
        "data": {"config.json": DEEP},
    }
    harness.client.create("v1/configmaps", NAMESPACE, body)
    harness.apply(
        base_job("deep-config-map", **{"baseModel.configMapRef": {"name": "deep-config"}})
    )
    failed = harness.wait_phase("deep-config-map", "Failed", timeout=60)
    assert failed["message"] == (
        "planning failed: spec.baseModel.configMapRef: ConfigMap 'deep-config' key "
        f"'config.json': {REFUSAL}"
    )
    planned = condition(failed, "Planned")
    assert (planned.get("status"), planned.get("reason")) == ("False", "PlanningFailed")
    assert harness.job("deep-config-map-r1") is None
    log = harness.log_tail(200_000)
    assert "RecursionError" not in log and "Traceback" not in log, log[-4000:]
    # a bystander on a shipped model is planned as usual: the operator is not stuck
    harness.apply(base_job("after-deep"))
    assert harness.wait("after-deep planned", lambda: harness.status("after-deep").get("plan"))
