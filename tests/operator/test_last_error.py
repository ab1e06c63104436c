"""A recovered run does not keep its old error: after a rank failure that torchrun (or a pod
retry) recovered from, the restarted trainer's progress.json has no lastError, and neither may
`status.progress` (a merge patch that only leaves the key out keeps the stored value).

First the real operator process against the emulator (kmock applies merge patches as the API
server does), then the reconciler in-process against the in-memory API (`FakeKube`, RFC 7386),
the progress in both from the real moto S3."""

from __future__ import annotations

from typing import Any

import pytest
from operator_harness import Harness, base_job
from test_reconcile_units import World

from lora_devkit.s3server import S3Server
from lora_operator.controller.status_patch import status_patch, with_removals

GLOO = (
    "unexpected RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] "
    "Connection closed by peer [10.0.0.7]:29500"
)


@pytest.fixture
def world(s3: S3Server) -> World:
    return World(s3)


def test_the_operator_clears_a_recovered_runs_error(harness: Harness) -> None:
    name = "gloo"
    harness.apply(base_job(name))
    harness.wait_phase(name, "Running")
    job = f"{name}-r1"
    harness.wait(f"Job {job}", lambda: harness.job(job))
    harness.driver.start(job)
    harness.write_progress(name, "r1", state="failed", step=8, lastError=GLOO)
    assert harness.driver.fail_pod(job, 0, exit_code=75, message=GLOO) == "Count"
    harness.wait(
        "the gloo error in the status",
        lambda: (harness.status(name).get("progress") or {}).get("lastError") == GLOO,
    )
    harness.driver.start(job)  # the retried pod resumes; its progress.json has no lastError
    harness.write_progress(name, "r1", state="succeeded", step=40, loss=0.9)
    harness.driver.succeed(job)
    status = harness.wait_phase(name, "Succeeded")
    status = harness.wait(
        "progress of the finished run",
        lambda: harness.status(name) if harness.status(name)["progress"]["step"] == 40 else None,
    )
    assert status["restarts"] == 1
    assert status["progress"] == {
        "state": "succeeded",
        "step": 40,
        "totalSteps": 40,
        "epoch": 0.0,
        "loss": 0.9,
    }


def test_a_recovered_run_clears_last_error_and_succeeds_without_it(world: World) -> None:
    world.add(base_job("u-gloo"))
    world.reconcile("u-gloo")
    world.job_status("u-gloo-r1", active=1)
    # rank 0 recorded the collective's failure before torchrun restarted the workers
    world.progress("u-gloo", "r1", state="failed", step=8, lastError=GLOO)
    status = world.reconcile("u-gloo")
    assert status["progress"]["lastError"] == GLOO
    # the restarted trainer wrote a fresh progress.json: a later step, no lastError
    world.progress("u-gloo", "r1", state="running", step=16, loss=1.5)
    status = world.reconcile("u-gloo")
    assert status["progress"]["step"] == 16
    assert "lastError" not in status["progress"]
    world.progress("u-gloo", "r1", state="succeeded", step=40, totalSteps=40, loss=0.9)
    world.job_status("u-gloo-r1", succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    status = world.reconcile("u-gloo")
    assert status["phase"] == "Succeeded"
    assert status["progress"] == {
        "state": "succeeded",
        "step": 40,
        "totalSteps": 40,
        "epoch": 0.0,
        "loss": 0.9,
    }


def test_an_error_still_present_stays(world: World) -> None:
    """The other way round: clearing is not a blanket wipe of lastError."""
    world.add(base_job("u-upload"))
    world.reconcile("u-upload")
    world.job_status("u-upload-r1", active=1)
    message = "checkpoint 8 upload failed: S3 put failed"
    world.progress("u-upload", "r1", step=8, lastError=message)
    assert world.reconcile("u-upload")["progress"]["lastError"] == message
    world.progress("u-upload", "r1", step=12, lastError=message)
    status = world.reconcile("u-upload")
    assert (status["progress"]["step"], status["progress"]["lastError"]) == (12, message)


def test_status_patch_nulls_what_a_nested_object_lost() -> None:
    original: dict[str, Any] = {
        "phase": "Running",
        "progress": {"step": 8, "lastError": "gloo", "eta": {"s": 1, "gone": 2}},
        "message": "old",
        "runs": [{"id": "r1", "phase": "Running", "x": 1}],
    }
    wire: dict[str, Any] = {
        "phase": "Running",
        "progress": {"step": 16, "eta": {"s": 1}},
        "runs": [{"id": "r1", "phase": "Running"}],
    }
    assert status_patch(original, wire) == {
        "progress": {"step": 16, "eta": {"s": 1, "gone": None}, "lastError": None},
        "message": None,
        "runs": [{"id": "r1", "phase": "Running"}],  # lists are replaced whole
    }
    assert status_patch(original, original) == {}  # an idle resync writes nothing
    assert with_removals(None, {"a": 1}) == {"a": 1}
    assert with_removals({"a": 1}, "text") == "text"
