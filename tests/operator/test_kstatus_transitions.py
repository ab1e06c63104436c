"""What a GitOps pipeline reads from a LoRAJob, through every phase transition, with the real
operator process against the emulator: the Ready / Reconciling / Stalled conditions (status,
reason), `observedGeneration`, and what two independent readers conclude from them:

- kstatus (Flux's `wait` and health checks), implemented below from its published rules, not from
  the operator's code: observedGeneration != generation -> InProgress; Reconciling True ->
  InProgress; Stalled True -> Failed; else Current;
- Argo CD, by running the chart's Lua health script on the very object the operator wrote.

Each scenario is a row of steps; a step acts (apply, start pods, write progress, finish the Job,
patch the spec or the InferenceService) and waits until the summary conditions say what the row
expects, then checks the rest. `kubectl wait --for=condition=Ready` with the real kubectl is the
last test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from operator_harness import LORAJOBS, Harness, base_job, gpu_job
from test_kubectl import KUBECTL, run_kubectl

from lora_operator.api.crd import CRD_NAME, build_crd
from lora_operator.controller.reconcile import lacks_summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))
from argocd_health import argo_health

ISVC = "serving.kserve.io/v1beta1/inferenceservices"
CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
SUMMARY = ("Ready", "Reconciling", "Stalled")
# LORAJOB_CAPTURE_STATUS=<file>: write every checked object there (the chart test's samples).
CAPTURE = os.environ.get("LORAJOB_CAPTURE_STATUS")
CAPTURED: list[dict[str, Any]] = []


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus' status of a custom resource (sigs.k8s.io/cli-utils/pkg/kstatus/status, the
    generic rules for kinds it has no special case for)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if observed is not None and observed != meta.get("generation"):
        return "InProgress"
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if conditions.get("Reconciling") == "True":
        return "InProgress"
    if conditions.get("Stalled") == "True":
        return "Failed"
    return "Current"


@pytest.mark.parametrize(
    ("status", "generation", "expected"),
    [
        ({"observedGeneration": 1, "conditions": []}, 2, "InProgress"),
        (
            {"observedGeneration": 2, "conditions": [{"type": "Reconciling", "status": "True"}]},
            2,
            "InProgress",
        ),
        (
            {"observedGeneration": 2, "conditions": [{"type": "Stalled", "status": "True"}]},
            2,
            "Failed",
        ),
        (
            {"observedGeneration": 2, "conditions": [{"type": "Stalled", "status": "False"}]},
            2,
            "Current",
        ),
        ({"conditions": [{"type": "Ready", "status": "False"}]}, 3, "Current"),
    ],
)
def test_the_kstatus_oracle_follows_the_published_rules(
    status: dict[str, Any], generation: int, expected: str
) -> None:
    assert kstatus({"metadata": {"generation": generation}, "status": status}) == expected


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Step:
    name: str
    act: Callable[[Harness, str], None]
    phase: str
    summary: tuple[str, str, str]  # Ready, Reconciling, Stalled statuses
    reason: str  # shared by the three
    kstatus: str
    argo: str
    says: str = ""  # a part of the shared message


def apply(**overrides: Any) -> Callable[[Harness, str], None]:
    return lambda h, name: h.apply(base_job(name, **overrides)) and None


def apply_gpu(gpus: int) -> Callable[[Harness, str], None]:
    return lambda h, name: h.apply(gpu_job(name, gpus)) and None


def start_with_progress(h: Harness, name: str) -> None:
    h.wait(f"Job {name}-r1", lambda: h.job(f"{name}-r1"))
    h.driver.start(f"{name}-r1")
    h.write_progress(name, "r1", step=20, loss=1.5)


def succeed(h: Harness, name: str) -> None:
    h.write_progress(name, "r1", state="succeeded", step=40, loss=1.1)
    h.driver.succeed(f"{name}-r1")


def fail_bad_config(h: Harness, name: str) -> None:
    h.wait(f"Job {name}-r1", lambda: h.job(f"{name}-r1"))
    h.driver.start(f"{name}-r1")
    h.write_progress(name, "r1", state="failed", lastError="dataset has no 'completion' column")
    h.driver.fail_pod(f"{name}-r1", 0, exit_code=3, message="no 'completion' column")


def isvc_ready(h: Harness, name: str) -> None:
    h.wait("InferenceService", lambda: h.client.get(ISVC, h.namespace, name))
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    body = {"status": {"url": f"http://{name}.example.com", "conditions": [ready]}}
    h.client.patch(ISVC, h.namespace, name, body, status=True)


def spec(change: dict[str, Any]) -> Callable[[Harness, str], None]:
    return lambda h, name: h.patch_spec(name, change)


def apply_invalid(h: Harness, name: str) -> None:
    """The API server refuses such a spec; it reaches the operator under an older, looser CRD
    (as in test_lifecycle): the served schema is relaxed while the job is created."""
    loose = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    versions = build_crd()["spec"]["versions"]
    relaxed = [{**v, "schema": loose} for v in versions]
    h.client.patch(CRDS, None, CRD_NAME, {"spec": {"versions": relaxed}}, status=False)
    try:
        h.apply(base_job(name, **{"lora.r": 0}))
    finally:
        h.client.patch(CRDS, None, CRD_NAME, {"spec": {"versions": versions}}, status=False)


def quota(gpus: int) -> Callable[[Harness, str], None]:
    return lambda h, name: h.set_config(quotas={"default": {"gpus": gpus}})


def queued_gpu_job(h: Harness, name: str) -> None:
    quota(0)(h, name)
    h.apply(gpu_job(name, 1))


RUN = ("False", "True", "False")
READY = ("True", "False", "False")
STALLED = ("False", "False", "True")
NONE = ("False", "False", "False")

# fmt: off
SCENARIOS: dict[str, list[Step]] = {  # step, action, phase, summary, reason, kstatus, Argo CD, says
    "served": [
        Step("created", apply(**{"serving.enabled": True, "serving.mode": "dedicated"}), "Running", RUN, "Training", "InProgress", "Progressing"),  # noqa: E501
        Step("training", start_with_progress, "Running", RUN, "Training", "InProgress", "Progressing", "20/40 (50%)"),  # noqa: E501
        Step("serving rolls out", succeed, "Succeeded", RUN, "ServingRollout", "InProgress", "Progressing"),  # noqa: E501
        Step("served", isvc_ready, "Succeeded", READY, "Serving", "Current", "Healthy", "serving at http://"),
    ],
    "no-serving": [
        Step("created", apply(), "Running", RUN, "Training", "InProgress", "Progressing"),
        Step("training", start_with_progress, "Running", RUN, "Training", "InProgress", "Progressing", "20/40"),  # noqa: E501
        Step("succeeded", succeed, "Succeeded", READY, "Succeeded", "Current", "Healthy", "adapter at s3://"),  # noqa: E501
        # a retraining change: a new run, which kstatus waits for again
        Step("retrained", spec({"lora": {"r": 16, "alpha": 32}}), "Running", RUN, "Training", "InProgress", "Progressing"),  # noqa: E501
    ],
    "failed": [
        Step("created", apply(), "Running", RUN, "Training", "InProgress", "Progressing"),
        Step("bad config", fail_bad_config, "Failed", STALLED, "Failed", "Failed", "Degraded", "completion"),  # noqa: E501
    ],
    "suspended": [
        Step("created", apply(), "Running", RUN, "Training", "InProgress", "Progressing"),
        Step("suspended", spec({"suspend": True}), "Suspended", NONE, "Suspended", "Current", "Suspended"),  # noqa: E501
        Step("resumed", spec({"suspend": False}), "Running", RUN, "Training", "InProgress", "Progressing"),  # noqa: E501
    ],
    "invalid": [
        Step("invalid spec", apply_invalid, "Failed", STALLED, "InvalidSpec", "Failed", "Degraded", "lora.r"),  # noqa: E501
    ],
    "queued": [
        Step("queued", queued_gpu_job, "Queued", RUN, "Queued", "InProgress", "Progressing", "queued (position"),  # noqa: E501
        Step("admitted", quota(8), "Running", RUN, "Training", "InProgress", "Progressing"),
    ],
}
# fmt: on


def summary(status: dict[str, Any]) -> tuple[tuple[str, ...], set[str]]:
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    found = tuple(str((conditions.get(t) or {}).get("status")) for t in SUMMARY)
    return found, {str((conditions.get(t) or {}).get("reason")) for t in SUMMARY}


def ready_message(status: dict[str, Any]) -> str:
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return str(ready[0].get("message")) if ready else ""


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_transition_reads_right_to_kstatus_and_argocd(
    harness: Harness, scenario: str
) -> None:
    name = f"ks-{scenario}"
    try:
        for step in SCENARIOS[scenario]:
            step.act(harness, name)

            def reached(step: Step = step) -> dict[str, Any] | None:
                obj = harness.get(name)
                status = obj.get("status") or {}
                statuses, reasons = summary(status)
                ok = (
                    status.get("phase") == step.phase
                    and statuses == step.summary
                    and reasons == {step.reason}
                    and status.get("observedGeneration") == obj["metadata"]["generation"]
                    and step.says in ready_message(status)
                )
                return obj if ok else None

            obj = harness.wait(f"{scenario}/{step.name}: {step.summary} {step.reason}", reached)
            where = f"{scenario}/{step.name}"
            status = obj["status"]
            generation = obj["metadata"]["generation"]
            summary_conditions = [c for c in status["conditions"] if c["type"] in SUMMARY]
            assert len(summary_conditions) == 3, where
            assert {c["observedGeneration"] for c in summary_conditions} == {generation}, where
            assert len({c["message"] for c in summary_conditions}) == 1, where
            assert step.says in summary_conditions[0]["message"], where
            assert kstatus(obj) == step.kstatus, where
            argo, message = argo_health(obj)
            assert argo == step.argo, f"{where}: {message}"
            assert message, where
            if CAPTURE:
                CAPTURED.append({"step": where, "argo": step.argo, "object": obj})
    finally:
        if scenario == "queued":
            harness.set_config()  # the module's other tests run without quotas
        if CAPTURE:
            Path(CAPTURE).write_text(json.dumps(CAPTURED, indent=1, sort_keys=True))


def test_kubectl_wait_for_ready_returns_when_the_run_succeeds(harness: Harness) -> None:
    """The real kubectl: `kubectl wait --for=condition=Ready lj/NAME` is what a pipeline runs.
    Started while the job trains, so it must follow the object (a watch), not find it done."""
    name = "ks-wait"
    harness.apply(base_job(name))
    harness.wait_phase(name, "Running")
    not_yet = run_kubectl(harness, "wait", "--for=condition=Ready", f"lj/{name}", "--timeout=1s")
    assert not_yet.returncode != 0, not_yet.stdout  # running: not Ready, the wait times out
    binary = str(KUBECTL) if KUBECTL.exists() else shutil.which("kubectl")
    assert binary is not None, "kubectl not installed: run `make setup`"
    args = ["--kubeconfig", str(harness.kubeconfig), "-n", harness.namespace]
    waiting = subprocess.Popen(
        [binary, *args, "wait", "--for=condition=Ready", f"lj/{name}", "--timeout=60s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)  # kubectl has read the object (not Ready) and follows it
        assert waiting.poll() is None, waiting.communicate()
        start_with_progress(harness, name)
        succeed(harness, name)
        out, err = waiting.communicate(timeout=70)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 0, err
    assert f"lorajob.finetune.lora-operator.io/{name} condition met" in out
    assert harness.status(name)["phase"] == "Succeeded"


def test_a_job_finished_under_an_older_operator_gets_the_conditions(harness: Harness) -> None:
    """After an upgrade, a finished job (no resync due) gets Ready/Reconciling/Stalled from the
    watch event that shows it without them: `kubectl wait` and Flux can read it too."""
    name = "ks-upgraded"
    harness.apply(base_job(name))
    harness.wait_phase(name, "Running")
    start_with_progress(harness, name)
    succeed(harness, name)
    harness.wait("Ready", lambda: summary(harness.status(name))[0] == READY)
    # what an operator before the kstatus conditions left: the same status without the three
    status = harness.status(name)
    older = [c for c in status["conditions"] if c["type"] not in SUMMARY]
    assert len(older) == len(status["conditions"]) - 3
    harness.client.patch(
        LORAJOBS, harness.namespace, name, {"status": {"conditions": older}}, status=True
    )
    obj = harness.wait(
        "the conditions written again",
        lambda: summary(harness.status(name))[0] == READY and harness.get(name),
    )
    assert kstatus(obj) == "Current"
    assert argo_health(obj)[0] == "Healthy"
    assert lacks_summary({"status": {"phase": "Succeeded", "conditions": older}})
    assert not lacks_summary(obj)
    assert not lacks_summary({"status": {}})  # never reconciled: needs_reconcile's case
