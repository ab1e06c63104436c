"""A CPU job (resources.gpuType cpu) is described in CPU terms: processes and host memory, no
"cpu GPUs", in the Planned and Admitted conditions, the Events and the quota's admission message;
a GPU job keeps its GPU words."""

from __future__ import annotations

from typing import Any

from operator_harness import base_job, gpu_job
from test_reconcile_units import World

from lora_devkit.s3server import S3Server
from lora_operator.api.operator_config import Quotas
from lora_operator.controller.quota import Demand, admit


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found = next(c for c in status["conditions"] if c["type"] == type_)
    assert isinstance(found, dict)
    return found


def events(world: World, name: str) -> list[str]:
    return [
        e["message"]
        for e in world.kube.objects.get("/api/v1/namespaces/default/events", {}).values()
        if e["involvedObject"]["name"] == name
    ]


def test_a_cpu_job_is_planned_and_admitted_in_processes_and_host_memory(s3: S3Server) -> None:
    world = World(s3, quotas={"default": {"gpus": 2}})
    world.add(base_job("u-cpu", **{"distributed.nodes": 1, "distributed.gpusPerNode": 2}))
    status = world.reconcile("u-cpu")
    plan = status["plan"]
    assert status["phase"] == "Running"
    planned = condition(status, "Planned")["message"]
    assert planned.startswith(f"1x2 processes on CPU, {plan['strategy']}, ")
    assert "GiB peak host memory per process" in planned
    admitted = condition(status, "Admitted")["message"]
    assert admitted == "2 CPU process(es) on 1 node(s); no GPUs reserved"
    said_in_events = events(world, "u-cpu")
    assert any("processes on CPU" in e for e in said_in_events)
    said = " ".join([planned, admitted, status["message"], *said_in_events])
    assert "GPU" not in said.replace("no GPUs reserved", "")


def test_a_gpu_job_keeps_gpu_words(s3: S3Server) -> None:
    world = World(s3)
    world.add(gpu_job("u-gpu", 2))
    status = world.reconcile("u-gpu")
    assert "A100-80GB" in condition(status, "Planned")["message"]
    assert "GiB peak per GPU" in condition(status, "Planned")["message"]
    assert condition(status, "Admitted")["message"] == "2 A100-80GB GPUs reserved"


def test_quota_admission_message_of_a_cpu_job_names_no_gpus() -> None:
    cpu = Demand("a", "c", "cpu", 0, "2026-01-01T00:00:00Z")
    decision = admit(cpu, [], Quotas.model_validate({"default": {"gpus": 0}}))
    assert decision.admitted
    assert decision.message == "admitted: no GPUs (cpu job; GPU quotas do not apply)"
