"""The trainer workload of one run, as the reconciler sees it: what its Job's status means
(suspended by Kueue, started, pods failed, complete, failed) and why its pods failed. Building
the Job, Service and ConfigMap is `manifests.py`, keeping them as declared `children.py`;
reading the Job's status is here, so the reconciler only moves between states."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .kube import Kube
from .manifests import LABEL_JOB, LABEL_RUN


class JobState(enum.Enum):
    """Where the run's Job is, in the order the reconciler asks."""

    WAITING_FOR_KUEUE = "WaitingForKueue"  # created suspended; Kueue has not admitted it
    SUCCEEDED = "Succeeded"  # Complete=True
    FAILED = "Failed"  # Failed=True: the Job controller gave up (backoff, FailJob rule)
    RUNNING = "Running"  # pods active
    STARTING = "Starting"  # admitted, no pod active (scheduling, or between retries)


@dataclass(frozen=True)
class JobObservation:
    """What a batch/v1 Job's spec and status say about the run."""

    name: str
    suspended: bool  # created suspended for Kueue and not admitted yet
    started: bool  # a pod has started (or finished): progress.json may exist
    failed_pods: int  # pods that failed so far (each one a retry)
    active: int
    complete: bool
    failure: dict[str, Any] | None  # the Job's Failed condition, when it has failed

    @classmethod
    def of(cls, job: dict[str, Any]) -> JobObservation:
        status = job.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        failed = conditions.get("Failed")
        started = any(status.get(k) for k in ("startTime", "active", "failed", "succeeded"))
        return cls(
            name=job["metadata"]["name"],
            suspended=bool((job.get("spec") or {}).get("suspend")),
            started=started or bool(conditions),
            failed_pods=int(status.get("failed", 0) or 0),
            active=int(status.get("active", 0) or 0),
            complete=(conditions.get("Complete") or {}).get("status") == "True",
            failure=failed if (failed or {}).get("status") == "True" else None,
        )

    @property
    def state(self) -> JobState:
        """Suspension first (a suspended Job runs nothing), then the Job controller's verdict
        (Complete before Failed), then whether pods are active. Failed pod counts never decide
        failure: only the Job's Failed condition does (its backoff limits and podFailurePolicy,
        which keeps disrupted pods out of the count, are the Job controller's)."""
        if self.suspended:
            return JobState.WAITING_FOR_KUEUE
        if self.complete:
            return JobState.SUCCEEDED
        if self.failure is not None:
            return JobState.FAILED
        return JobState.RUNNING if self.active else JobState.STARTING

    def new_failures(self, restarts_seen: int) -> bool:
        """More pods failed than the status has counted as restarts: a retry to report."""
        return self.failed_pods > restarts_seen


async def pod_failure_message(kube: Kube, namespace: str, job: str, run_id: str) -> str | None:
    """The trainer's termination message from the last failed pod of this run (the trainer
    writes its one-line error there; Kubernetes shows it in the pod status)."""
    pods = await kube.list("v1/pods", namespace, {LABEL_JOB: job, LABEL_RUN: run_id})
    for pod in reversed(pods):
        for status in (pod.get("status") or {}).get("containerStatuses", []):
            terminated = (status.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") and terminated.get("message"):
                return str(terminated["message"]).strip()
    return None
