"""Preemption, operator side: the rendered Job ignores a handled SIGTERM (exit 76) and a disrupted
pod, and gives the pod the plan's grace period; the grace period's arithmetic by hand; and end to
end, the real operator + emulator + local executor + a really training tiny model: preempting the
running pod spends none of the Job's retry budget, and the job resumes and succeeds."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import base_job
from test_manifests import context

from lora_contract.layout import S3Location
from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_PREEMPTED, EXIT_TRANSIENT
from lora_contract.types import LoRAJob, PlanStatus
from lora_devkit.demo.workspace import (
    EXAMPLE,
    demo_manifest,
    operator_config,
    secret_manifest,
    write_model_and_data,
)
from lora_devkit.emulator import EmulatedCluster
from lora_devkit.executor import LocalExecutor, wait_for
from lora_devkit.job_policy import policy_action
from lora_devkit.operator_process import start_operator, stop_operator
from lora_devkit.s3server import S3Server
from lora_operator.api.loading import parse_lorajob
from lora_operator.controller.manifests import build_job
from lora_operator.memory import GpuCatalog, plan_job
from lora_operator.memory.grace import step_seconds, termination_grace

LORAJOBS = "finetune.lora-operator.io/v1alpha1/lorajobs"
DISRUPTED = ["DisruptionTarget"]


# ------------------------------------------------------------------------ grace period, by hand


def test_preemption_grace_adds_save_step_and_margin() -> None:
    # 40M trainable params x 12 B = 480 MB at 50 MB/s = 9.6 s; + 12 s step + 15 s = 36.6 -> 37
    grace = termination_grace(40_000_000, 12.0)
    assert grace.seconds == 37
    assert grace.basis == (
        "checkpoint 480.0 MB (40,000,000 trainable params x 12 B: fp32 adapter + 2 Adam "
        "moments) at 50 MB/s = 9.6 s + one step 12.0 s (forecast) + 15 s margin = 36.6 s"
    )


def test_preemption_grace_floor_and_cap() -> None:
    # 1M params: 12 MB = 0.24 s + 15 s = 15.24 s -> Kubernetes' default 30 s
    small = termination_grace(1_000_000, None)
    assert small.seconds == 30
    assert small.basis == (
        "checkpoint 12.0 MB (1,000,000 trainable params x 12 B: fp32 adapter + 2 Adam moments) "
        "at 50 MB/s = 0.2 s + one step (no forecast) + 15 s margin = 15.2 s, raised to "
        "Kubernetes' default 30 s"
    )
    # 10B params: 120,000.0 MB (the MB are 10^6 bytes) = 2400 s -> the cap
    assert termination_grace(10_000_000_000, None).basis.startswith("checkpoint 120000.0 MB (")
    # 62.5M params: 750 MB = 15 s + 15 s margin = exactly 30 s: no note
    exact = termination_grace(62_500_000, None)
    assert exact.seconds == 30 and exact.basis.endswith("= 30.0 s")
    # 30.5 s needs 31 (rounded up, never down): 0.5 s of step on top
    assert termination_grace(62_500_000, 0.5).seconds == 31
    # 2B params: 24 GB = 480 s + 300 s step + 15 s = 795 s -> capped at 600 s
    huge = termination_grace(2_000_000_000, 300.0)
    assert huge.seconds == 600 and huge.basis.endswith("= 795.0 s, capped at 600 s")
    # exactly the cap: 585 s of step + 15 s margin, no parameters: no note
    assert termination_grace(0, 585.0) == termination_grace(0, 585.0)
    assert termination_grace(0, 585.0).seconds == 600
    assert not termination_grace(0, 585.0).basis.endswith("capped at 600 s")


def test_preemption_step_seconds_from_the_forecast() -> None:
    # 1 h over maxSteps 100 = 36 s a step
    assert step_seconds(1.0, 999, 8, 100, 512) == 36.0
    # no maxSteps: 204,800 tokens / (8 rows x 512 tokens) = 50 steps at most -> 72 s each
    assert step_seconds(1.0, 204_800, 8, None, 512) == 72.0
    # fewer tokens than one full step: still one step (the whole hour)
    assert step_seconds(1.0, 1_000, 8, None, 512) == 3600.0


def test_preemption_grace_is_in_the_plan_and_shown_by_lorajob_plan() -> None:
    from lora_operator.memory.report import render_table

    job = parse_lorajob(base_job("graceful"), "test")
    result = plan_job(job.spec, GpuCatalog.default())
    status = result.to_status()
    assert status.termination_grace_seconds is not None
    assert status.termination_grace_seconds >= 30
    assert f"{status.trainable_params:,} trainable params" in status.termination_grace_basis
    wire = status.to_wire()
    assert wire["terminationGraceSeconds"] == status.termination_grace_seconds
    table = render_table(job, result)
    assert f"termination grace: {status.termination_grace_seconds} s after SIGTERM" in table


# --------------------------------------------------------------------------------- manifests


def test_preemption_manifest_grace_period_and_ignore_rule() -> None:
    ctx = context(base_job("graceful"))
    ctx = replace(ctx, plan=ctx.plan.model_copy(update={"termination_grace_seconds": 37}))
    job = build_job(ctx)
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 37
    policy = job["spec"]["podFailurePolicy"]
    assert {
        "action": "Ignore",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [76]},
    } in policy["rules"]
    assert EXIT_PREEMPTED == 76
    # what the Job controller does, from the rendered policy
    assert policy_action(policy, EXIT_PREEMPTED) == "Ignore"  # handled SIGTERM
    assert policy_action(policy, 143, DISRUPTED) == "Ignore"  # killed, but a disruption
    assert policy_action(policy, 143) == "Count"  # a SIGTERM nobody announced
    assert policy_action(policy, EXIT_TRANSIENT) == "Count"
    assert policy_action(policy, EXIT_INVALID_CONFIG, DISRUPTED) == "FailJob"  # first rule wins
    # an older plan without the field: Kubernetes' default applies (the key is left out)
    ctx = replace(ctx, plan=ctx.plan.model_copy(update={"termination_grace_seconds": None}))
    assert "terminationGracePeriodSeconds" not in build_job(ctx)["spec"]["template"]["spec"]


def test_preemption_policy_conditions_need_status_true() -> None:
    policy = {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailIndex", "onExitCodes": {"operator": "NotIn", "values": [5]}},
        ]
    }
    assert policy_action(policy, 1, DISRUPTED) == "Ignore"  # status defaults to True
    assert policy_action(policy, 1, ["Ready"]) == "FailIndex"
    assert policy_action(policy, 0, []) == "Count"  # NotIn never matches 0
    assert policy_action(policy, 5) == "Count"
    falsy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "X", "status": "False"}]}]}
    assert policy_action(falsy, 1, ["X"]) == "Count"


# ---------------------------------------------------------------------------------- end to end


def job_pods(client: Any, namespace: str, job: str) -> list[dict[str, Any]]:
    return [
        p
        for p in client.list("v1/pods", namespace)
        if p["metadata"].get("labels", {}).get("job-name") == job
    ]


def exit_code(pod: dict[str, Any]) -> int | None:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    terminated = statuses[0].get("state", {}).get("terminated")
    return None if terminated is None else int(terminated["exitCode"])


@pytest.mark.slow
def test_preemption_through_the_operator_spends_no_retry_and_the_job_succeeds(
    tmp_path: Path,
) -> None:
    manifest = demo_manifest(EXAMPLE, 10)
    manifest["metadata"]["name"] = "preempted"
    spec = manifest["spec"]
    spec["distributed"] = {"nodes": 1, "gpusPerNode": 1, "strategy": "ddp"}
    spec["serving"] = {"enabled": False}
    spec["training"].update(checkpointInterval=100, evalInterval=100, logInterval=1)
    job = LoRAJob.model_validate(manifest)
    namespace = "default"
    pvc_root = tmp_path / "pvc"
    write_model_and_data(job, pvc_root)
    with EmulatedCluster(tmp_path / "cluster") as cluster, S3Server(use_env=False) as s3:
        client = cluster.client()
        s3.ensure_bucket(job.spec.output.bucket)
        client.create("v1/secrets", namespace, secret_manifest(job, s3.access_key, s3.secret_key))
        config = tmp_path / "operator-config.yaml"
        config.write_text(yaml.safe_dump(operator_config(s3.endpoint, "demo-s3", 0.5)))
        operator = start_operator(
            cluster.kubeconfig, config, namespace, tmp_path / "operator.log", "--resync-seconds=1"
        )
        executor = LocalExecutor(
            client,
            tmp_path / "executor",
            pvc_root=pvc_root,
            namespace=namespace,
            extra_env={"OMP_NUM_THREADS": "1", "LORAJOB_STEP_DELAY_S": "0.4"},
        )
        try:
            with executor:
                client.create(LORAJOBS, namespace, manifest)
                check_preemption(client, s3, executor, namespace, tmp_path)
        finally:
            stop_operator(operator)


def check_preemption(
    client: Any, s3: S3Server, executor: LocalExecutor, namespace: str, tmp_path: Path
) -> None:
    store = s3.store()
    name, job_name = "preempted", "preempted-r1"
    status = wait_for(lambda: (client.get(LORAJOBS, namespace, name) or {}).get("status"), 60)
    job = wait_for(lambda: client.get("batch/v1/jobs", namespace, job_name), 60)
    plan = PlanStatus.model_validate(client.get(LORAJOBS, namespace, name)["status"]["plan"])
    # the tiny model's checkpoint takes well under a second, no forecast on CPU: the 30 s floor
    assert plan.termination_grace_seconds == 30
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    run = S3Location.parse(status["runs"][0]["outputURI"])

    def step() -> int:
        raw = store.get_json(run.child("progress.json"))
        return int(raw.get("step", 0)) if isinstance(raw, dict) else 0

    wait_for(lambda: step() >= 2, 120)
    first = job_pods(client, namespace, job_name)
    assert len(first) == 1
    assert executor.preempt_pod(namespace, job_name, 0)
    preempted = wait_for(
        lambda: (
            exit_code(client.get("v1/pods", namespace, first[0]["metadata"]["name"]) or {})
            is not None
            and client.get("v1/pods", namespace, first[0]["metadata"]["name"])
        ),
        30,  # inside the 30 s grace period: the trainer exited on its own
    )
    assert exit_code(preempted) == EXIT_PREEMPTED
    types = {c["type"]: c for c in preempted["status"]["conditions"]}
    assert types["DisruptionTarget"]["reason"] == "PreemptionByScheduler"
    assert (
        "preempted (SIGTERM) at step"
        in preempted["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    )
    stopped = json.loads(store.get_bytes(run.child("progress.json")) or b"{}")
    assert stopped["state"] == "stopped" and stopped["lastError"].startswith("preempted")
    saved = store.complete_checkpoints(run)
    assert saved == [stopped["step"]]

    final = wait_for(
        lambda: (
            (
                (s := (client.get(LORAJOBS, namespace, name) or {}).get("status", {})).get("phase")
                in ("Succeeded", "Failed")
            )
            and s
        ),
        150,
    )
    job = client.get("batch/v1/jobs", namespace, job_name)
    assert final["phase"] == "Succeeded", final
    assert job["status"]["failed"] == 0  # the preemption spent none of the retry budget
    assert job["status"]["succeeded"] == 1
    assert final.get("restarts", 0) == 0
    pods = job_pods(client, namespace, job_name)
    assert sorted(exit_code(p) for p in pods) == [0, EXIT_PREEMPTED]
    logs = sorted((tmp_path / "executor" / "logs").glob(f"{namespace}_{job_name}-*.log"))
    assert any(f"resuming from checkpoint-{saved[0]}" in p.read_text() for p in logs)
    records = (store.get_bytes(run.child("metrics.jsonl")) or b"").decode().splitlines()
    steps = [r["step"] for r in map(json.loads, records) if "loss" in r]
    assert steps == list(range(1, 11))  # every optimizer step once, none lost, none repeated


# ------------------------------------------------------------- the executor's kubelet stand-in

POD_SCRIPT = """
import os, pathlib, signal, sys, time
mark = pathlib.Path(os.environ["MARK"])
if mark.exists():
    sys.exit(0)  # the replacement pod
mark.write_text("first")
if os.environ["MODE"] == "graceful":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(76))
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(60)
"""
EXIT_RULE = {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [EXIT_PREEMPTED]}}
DISRUPTION_RULE = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}


def one_pod_job(name: str, mode: str, mark: Path, rules: list[Any]) -> dict[str, Any]:
    """No retries at all (backoffLimitPerIndex 0): a counted failure fails the Job."""
    container = {
        "name": "trainer",
        "image": "trainer:test",
        "command": ["python", "-c", POD_SCRIPT],
        "env": [{"name": "MARK", "value": str(mark)}, {"name": "MODE", "value": mode}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {
            "completionMode": "Indexed",
            "completions": 1,
            "parallelism": 1,
            "backoffLimitPerIndex": 0,
            "maxFailedIndexes": 0,
            "podFailurePolicy": {"rules": rules},
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [container],
                }
            },
        },
    }


def preempt_once(
    client: Any, executor: LocalExecutor, tmp_path: Path, name: str, mode: str, rules: list[Any]
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """(the Job's final status, the preempted pod, seconds from SIGTERM to its exit)."""
    mark = tmp_path / f"{name}.mark"
    client.create("batch/v1/jobs", "team-a", one_pod_job(name, mode, mark, rules))
    wait_for(mark.exists, 20)
    time.sleep(0.3)  # the script's handler is installed right after the mark
    [pod] = job_pods(client, "team-a", name)
    started = time.monotonic()
    assert executor.preempt_pod("team-a", name, 0)
    gone = wait_for(
        lambda: (
            exit_code(p := client.get("v1/pods", "team-a", pod["metadata"]["name"]) or {})
            is not None
            and p
        ),
        20,
    )
    took = time.monotonic() - started

    def done() -> dict[str, Any] | None:
        status = (client.get("batch/v1/jobs", "team-a", name) or {}).get("status") or {}
        kinds = {c["type"] for c in status.get("conditions", [])}
        return status if kinds & {"Complete", "Failed"} else None

    return wait_for(done, 20), gone, took


def test_preemption_by_the_executor_follows_the_failure_policy(tmp_path: Path) -> None:
    with EmulatedCluster(tmp_path / "cluster") as cluster:
        client = cluster.client()
        with LocalExecutor(client, tmp_path / "exec", poll_seconds=0.1) as executor:
            assert not executor.preempt_pod("team-a", "nothing", 0)  # no such pod
            # handled SIGTERM: exit 76, ignored by its exit-code rule; the index runs again
            status, pod, took = preempt_once(
                client, executor, tmp_path, "graceful", "graceful", [EXIT_RULE]
            )
            assert exit_code(pod) == EXIT_PREEMPTED  # its own exit, not the SIGKILL (137)
            assert status["failed"] == 0 and status["succeeded"] == 1
            kinds = {c["type"]: c for c in pod["status"]["conditions"]}
            assert kinds["DisruptionTarget"]["reason"] == "PreemptionByScheduler"
            # SIGTERM ignored: SIGKILL after the pod's 1 s grace (128 + 9), and the pod's
            # DisruptionTarget condition keeps it out of the count
            status, pod, took = preempt_once(
                client, executor, tmp_path, "stubborn", "stubborn", [DISRUPTION_RULE]
            )
            assert exit_code(pod) == 137 and took >= 1.0
            assert status["failed"] == 0 and status["succeeded"] == 1
            # the same without a rule that ignores it: counted, and with no retries, fatal
            status, pod, _ = preempt_once(client, executor, tmp_path, "counted", "stubborn", [])
            assert exit_code(pod) == 137
            assert status["failed"] == 1 and status["succeeded"] == 0
            assert "Failed" in {c["type"] for c in status["conditions"]}
