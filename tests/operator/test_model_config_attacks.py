"""spec.baseModel.config against the real operator process: a slow (trickling) allow-listed
server holds up only its own job, which then fails naming the field; a path on the operator's
disk is refused without a hint of whether it exists; a ConfigMap in the job's namespace works."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from operator_harness import NAMESPACE, Harness, base_job

from lora_devkit.config_server import ConfigServer

DEADLINE_SECONDS = 8  # long enough for another job to be planned while the fetch still hangs
TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}


@pytest.fixture(scope="module")
def trickling() -> Iterator[ConfigServer]:
    with ConfigServer(trickle_seconds=0.5) as server:
        yield server


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


def fetching(status: dict[str, Any]) -> bool:
    planned = condition(status, "Planned") or {}
    return planned.get("status") == "Unknown" and planned.get("reason") == "FetchingModelConfig"


def test_a_trickling_config_server_holds_up_only_its_own_job(
    harness: Harness, trickling: ConfigServer
) -> None:
    harness.set_config(
        policy={
            "allowedModelConfigUrls": [trickling.url("/")],
            "modelConfigTimeoutSeconds": DEADLINE_SECONDS,
        }
    )
    harness.apply(base_job("warm-up"))  # the shipped model's architecture, counted once
    harness.wait("warm-up planned", lambda: harness.status("warm-up").get("plan"), timeout=60)
    url = trickling.url("/trickle/config.json")
    harness.apply(base_job("slow-config", **{"baseModel.config": url}))
    slow = harness.wait("slow-config fetching", lambda: fetching(harness.status("slow-config")))
    assert slow
    assert harness.status("slow-config")["phase"] == "Pending"

    harness.apply(base_job("bystander"))
    planned = harness.wait("bystander planned", lambda: harness.status("bystander").get("plan"))
    assert planned["gpuType"] == "cpu"
    assert fetching(harness.status("slow-config")), "the bystander waited for the slow fetch"

    failed = harness.wait_phase("slow-config", "Failed", timeout=DEADLINE_SECONDS + 30)
    assert failed["message"] == (
        f"planning failed: spec.baseModel.config: fetching {url!r} did not finish within "
        f"{DEADLINE_SECONDS} s (policy.modelConfigTimeoutSeconds)"
    )
    assert (condition(failed, "Planned") or {}).get("reason") == "PlanningFailed"
    assert harness.job("slow-config-r1") is None


def test_a_path_on_the_operators_disk_is_refused_alike_whether_or_not_it_exists(
    harness: Harness,
) -> None:
    messages = []
    for name, path in (("existing-path", "/etc/hostname"), ("missing-path", "/no/such/file")):
        harness.apply(base_job(name, **{"baseModel.config": path}))
        messages.append(harness.wait_phase(name, "Failed")["message"])
    assert messages[0] == messages[1]
    assert messages[0].startswith(
        "planning failed: spec.baseModel.config: the operator does not read files"
    )


def test_a_config_map_in_the_jobs_namespace_plans_the_job(harness: Harness) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "tiny-llama-config", "namespace": NAMESPACE},
        "data": {"config.json": json.dumps(TINY_LLAMA)},
    }
    harness.client.create("v1/configmaps", NAMESPACE, body)
    job = base_job("from-config-map", **{"baseModel.configMapRef": {"name": "tiny-llama-config"}})
    harness.apply(job)
    planned = harness.wait(
        "from-config-map planned", lambda: harness.status("from-config-map").get("plan")
    )
    vocab, hidden = TINY_LLAMA["vocab_size"], TINY_LLAMA["hidden_size"]
    assert planned["totalParams"] > 2 * vocab * hidden
