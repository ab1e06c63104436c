"""GPU quota admission and Kueue hand-off with the real operator: a job over quota waits in
Queued (numbers in the Admitted message, an Event) and starts by itself when GPUs free up; a job
with queueName is created suspended with Kueue's label. Quotas come from the operator's config
file, changed while the operator runs (hot reload)."""

from __future__ import annotations

from operator_harness import Harness, gpu_job


def condition(status: dict[str, object], type_: str) -> dict[str, object]:
    conditions = status.get("conditions") or []
    assert isinstance(conditions, list)
    found = next((c for c in conditions if c.get("type") == type_), None)
    assert found is not None, f"no {type_} condition in {conditions}"
    return found  # type: ignore[no-any-return]


def test_over_quota_is_queued_then_admitted_when_gpus_free_up(harness: Harness) -> None:
    harness.set_config(quotas={"namespaces": {harness.namespace: {"gpuTypes": {"A100-80GB": 4}}}})
    harness.apply(gpu_job("big", 4))
    harness.wait_phase("big", "Running")
    harness.apply(gpu_job("waits", 2))
    status = harness.wait_phase("waits", "Queued")
    admitted = condition(status, "Admitted")
    assert admitted["status"] == "False"
    assert admitted["reason"] == "QuotaExceeded"
    assert "needs 2 A100-80GB" in str(admitted["message"])
    assert "4 of 4" in str(admitted["message"])
    assert status["queuePosition"] == 1
    assert harness.job("waits-r1") is None
    harness.wait(
        "Queued event",
        lambda: "Queued" in [e.get("reason") for e in harness.events("waits")],
    )
    harness.driver.start("big-r1")
    harness.driver.succeed("big-r1")
    harness.wait_phase("big", "Succeeded")
    status = harness.wait_phase("waits", "Running")
    assert condition(status, "Admitted")["status"] == "True"
    assert "queuePosition" not in status
    assert harness.job("waits-r1") is not None


def test_queue_is_first_in_first_out(harness: Harness) -> None:
    harness.set_config(quotas={"default": {"gpus": 2}, "namespaces": {}})
    harness.apply(gpu_job("holder", 2))
    harness.wait_phase("holder", "Running")
    harness.apply(gpu_job("first", 2))
    harness.wait_phase("first", "Queued")
    harness.apply(gpu_job("second", 2))
    status = harness.wait_phase("second", "Queued")
    assert status["queuePosition"] == 2
    harness.driver.start("holder-r1")
    harness.driver.succeed("holder-r1")
    harness.wait_phase("first", "Running")
    assert harness.status("second")["phase"] == "Queued"


def test_raising_the_quota_admits_without_restart(harness: Harness) -> None:
    harness.set_config(quotas={"default": {"gpus": 0}})
    harness.apply(gpu_job("starved", 1))
    harness.wait_phase("starved", "Queued")
    harness.set_config(quotas={"default": {"gpus": 8}})
    harness.wait_phase("starved", "Running")


def test_queue_name_defers_to_kueue(harness: Harness) -> None:
    harness.set_config(quotas={"default": {"gpus": 0}})  # Kueue decides, not our quota
    harness.apply(gpu_job("kueued", 2, queueName="team-a"))
    status = harness.wait_phase("kueued", "Queued")
    assert condition(status, "Admitted")["reason"] == "WaitingForKueue"
    job = harness.wait("Job", lambda: harness.job("kueued-r1"))
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    # Kueue admits: un-suspends the Job
    harness.client.patch(
        "batch/v1/jobs", harness.namespace, "kueued-r1", {"spec": {"suspend": False}}, status=False
    )
    status = harness.wait_phase("kueued", "Running")
    assert condition(status, "Admitted")["status"] == "True"
