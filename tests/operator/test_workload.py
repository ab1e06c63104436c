"""What a trainer Job's status means to the reconciler (`workload.JobObservation`)."""

from __future__ import annotations

from typing import Any

from lora_operator.controller.workload import JobObservation


def job(spec: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j-r1"}, "spec": spec or {}, "status": status}


def test_a_new_job_has_not_started() -> None:
    seen = JobObservation.of(job())
    assert (seen.name, seen.suspended, seen.started, seen.complete) == ("j-r1", False, False, False)
    assert seen.failure is None and seen.failed_pods == 0 and seen.active == 0


def test_kueue_suspended_job() -> None:
    assert JobObservation.of(job({"suspend": True})).suspended


def test_running_and_retried_pods() -> None:
    seen = JobObservation.of(job(active=2, failed=1, startTime="2026-01-01T00:00:00Z"))
    assert seen.started and seen.active == 2 and seen.failed_pods == 1
    assert not seen.complete and seen.failure is None


def test_finished_jobs() -> None:
    done = JobObservation.of(job(conditions=[{"type": "Complete", "status": "True"}]))
    assert done.complete and done.started  # a condition means pods ran: read progress
    failed = {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "x"}
    seen = JobObservation.of(job(failed=1, conditions=[failed]))
    assert seen.failure == failed and not seen.complete
    # a condition present but not True does not count
    pending = JobObservation.of(job(conditions=[{"type": "Failed", "status": "False"}]))
    assert pending.failure is None
