"""Plays the Job controller and kubelet for the operator tests: nothing runs Jobs or Pods in the
emulator, so `JobDriver` moves them through their states over HTTP (the same calls work against a
real cluster's API). Test-only, hence here and not in the devkit."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from lora_devkit.emulator import RestClient
from lora_devkit.job_policy import policy_action

# What a LoRAJob's children can be: the tests look for leftovers of a deleted LoRAJob in these.
OWNED_RESOURCES = [
    "batch/v1/jobs",
    "v1/services",
    "v1/configmaps",
    "v1/secrets",
    "v1/serviceaccounts",
    "v1/pods",
    "serving.kserve.io/v1beta1/inferenceservices",
]


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobDriver:
    """Plays the Job controller and kubelet: sets Job status and creates Pods with phases and
    termination messages, so the operator sees what a real cluster would report."""

    def __init__(self, client: RestClient, namespace: str = "default") -> None:
        self.client = client
        self.namespace = namespace

    def job(self, name: str) -> dict[str, Any]:
        job = self.client.get("batch/v1/jobs", self.namespace, name)
        if job is None:
            raise AssertionError(f"Job {self.namespace}/{name} does not exist")
        return job

    def _set_status(self, name: str, status: dict[str, Any]) -> None:
        self.client.patch("batch/v1/jobs", self.namespace, name, {"status": status}, status=True)

    def start(self, name: str) -> None:
        """All indexes running (one pod each)."""
        job = self.job(name)
        parallelism = int(job["spec"].get("parallelism", 1))
        for index in range(parallelism):
            self._pod(job, index, "Running")
        self._set_status(name, {"active": parallelism, "startTime": _now(), "ready": parallelism})

    def fail_pod(self, name: str, index: int, exit_code: int, message: str = "") -> str:
        """A pod failed; the Job's own podFailurePolicy decides, as the Job controller would:
        `FailJob` fails the Job (reason PodFailurePolicy), `Ignore` does not count the failure,
        anything else counts it and the index is retried (status.failed grows). Returns the
        action taken."""
        job = self.job(name)
        action = policy_action(job["spec"].get("podFailurePolicy"), exit_code)
        failed = int(job.get("status", {}).get("failed", 0)) + (action != "Ignore")
        self._pod(job, index, "Failed", exit_code=exit_code, message=message, attempt=failed)
        self._set_status(name, {"failed": failed})
        if action == "FailJob":
            pod = f"{name}-{index}"
            self.fail(name, "PodFailurePolicy", f"pod {pod} failed with exit code {exit_code}")
        return action

    def succeed(self, name: str) -> None:
        job = self.job(name)
        completions = int(job["spec"].get("completions", 1))
        for pod in self.pods(name):
            if pod.get("status", {}).get("phase") == "Running":
                self.client.patch(
                    "v1/pods",
                    self.namespace,
                    pod["metadata"]["name"],
                    {"status": {"phase": "Succeeded"}},
                    status=True,
                )
        condition = {"type": "Complete", "status": "True", "lastTransitionTime": _now()}
        self._set_status(
            name,
            {
                "active": 0,
                "ready": 0,
                "succeeded": completions,
                "completionTime": _now(),
                "conditions": [condition],
            },
        )

    def fail(self, name: str, reason: str = "PodFailurePolicy", message: str = "") -> None:
        condition = {
            "type": "Failed",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": _now(),
        }
        self._set_status(name, {"active": 0, "ready": 0, "conditions": [condition]})

    def pods(self, job_name: str) -> list[dict[str, Any]]:
        return self.client.list("v1/pods", self.namespace, f"job-name={job_name}")

    def _pod(
        self,
        job: dict[str, Any],
        index: int,
        phase: str,
        *,
        exit_code: int | None = None,
        message: str = "",
        attempt: int = 0,
    ) -> None:
        name = job["metadata"]["name"]
        template = job["spec"]["template"]
        labels = {**(template.get("metadata", {}).get("labels") or {}), "job-name": name}
        labels["batch.kubernetes.io/job-completion-index"] = str(index)
        state: dict[str, Any] = {"running": {"startedAt": _now()}}
        if exit_code is not None:
            state = {"terminated": {"exitCode": exit_code, "message": message, "reason": "Error"}}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{index}-{attempt}-{uuid.uuid4().hex[:5]}",
                "namespace": self.namespace,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": job["metadata"].get("uid", ""),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template.get("spec", {}),
            "status": {
                "phase": phase,
                "containerStatuses": [{"name": "trainer", "state": state}],
            },
        }
        self.client.create("v1/pods", self.namespace, pod)
