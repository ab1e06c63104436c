"""The merged-model export Job (controller/export_job.py): its sizing, worked by hand from the
plan's parameter counts, and its shape (one CPU pod, the export entry point, the run's config and
credentials, the restricted pod security, validated against the Kubernetes schema)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import kubernetes_validate
import pytest
from fake_kube import FakeKube
from operator_harness import BUCKET, base_job, gpu_job
from test_manifests import K8S_VERSION, UID, context, env_of
from test_pod_security import TRAINER_JOBS, violations
from test_reconcile_units import JOBS, LJ, NS, PODS, World

from lora_contract.pod import EXIT_INVALID_CONFIG
from lora_contract.types import ExportDtype, ExportSpec, Phase, RunRecord
from lora_devkit.s3server import S3Server
from lora_operator.controller.export_job import (
    build_export_job,
    earlier_exported_runs,
    export_failure_message,
    export_job_name,
    merged_uri,
    prune_earlier_exports,
)
from lora_operator.controller.manifests import LABEL_RUN, RunContext, build_job
from lora_operator.memory.export_sizing import (
    export_disk_gib,
    export_memory_gib,
    export_memory_terms,
    shard_bytes,
)

EIGHT_B = 8_000_000_000
TOLERATION = {"key": "pool", "operator": "Equal", "value": "train", "effect": "NoSchedule"}
ADAPTER = 40_000_000


def test_sizing_by_hand() -> None:
    assert shard_bytes("2GB") == 2_000_000_000 and shard_bytes("500MB") == 500_000_000
    assert shard_bytes("100KB") == 100_000
    # bf16: 8e9 x 2 B + 2 x 40e6 x 4 B + a 2 GB shard = 18.32e9 B = 17.062 GiB; x 1.2 + 1 GiB
    # = 21.47 -> 22 GiB. Disk: 8e9 x (4 + 2) B = 44.70 GiB + 1 -> 46 GiB.
    bf16 = ExportSpec(merged=True)
    assert export_memory_gib(EIGHT_B, ADAPTER, bf16) == 22
    assert export_disk_gib(EIGHT_B, bf16) == 46
    # fp32 with 500 MB shards: 32.82e9 B = 30.566 GiB; x 1.2 + 1 = 37.68 -> 38 GiB.
    # Disk: 8e9 x 8 B = 59.60 GiB + 1 -> 61 GiB.
    fp32 = ExportSpec(merged=True, dtype=ExportDtype.float32, max_shard_size="500MB")
    assert export_memory_gib(EIGHT_B, ADAPTER, fp32) == 38
    assert export_disk_gib(EIGHT_B, fp32) == 61
    # an adapter as large as its base shows the adapter term: 1e9 x 2 B + 2 x 1e9 x 4 B + 100 KB
    # = 10.0001e9 B = 9.3133 GiB; x 1.2 + 1 = 12.18 -> 13 GiB
    small_shards = ExportSpec(max_shard_size="100KB")
    assert export_memory_gib(10**9, 10**9, small_shards) == 13
    # fp16 weighs what bf16 does
    assert export_memory_gib(EIGHT_B, ADAPTER, ExportSpec(dtype=ExportDtype.float16)) == 22
    # the terms `lorajob plan` lists: 16e9 B of base, 2 x 40e6 x 4 = 320e6 B of adapter, 2e9 shard
    assert export_memory_terms(EIGHT_B, ADAPTER, bf16) == {
        "base": 16_000_000_000,
        "adapter": 320_000_000,
        "shard": 2_000_000_000,
    }


def sized(ctx: RunContext) -> RunContext:
    plan = ctx.plan.model_copy(update={"total_params": EIGHT_B, "trainable_params": ADAPTER})
    return dataclasses.replace(ctx, plan=plan)


def test_the_export_job_is_one_cpu_pod_running_the_export_entry_point() -> None:
    ctx = sized(
        context(
            gpu_job(
                "big",
                8,
                **{
                    "export": {"merged": True},
                    "resources.nodeSelector": {"pool": "train"},
                    "resources.priorityClassName": "batch-high",
                    "resources.tolerations": [
                        {
                            "key": "pool",
                            "operator": "Equal",
                            "value": "train",
                            "effect": "NoSchedule",
                        }
                    ],
                },
            )
        )
    )
    job = build_export_job(ctx)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert job["metadata"]["name"] == export_job_name("big", "r1") == "big-r1-export"
    assert job["metadata"]["namespace"] == "ml"
    assert job["metadata"]["labels"][LABEL_RUN] == "r1"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "export"
    assert job["spec"]["template"]["metadata"]["labels"] == job["metadata"]["labels"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == UID
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (1, 1, 2)
    assert "completionMode" not in spec
    assert spec["podFailurePolicy"]["rules"] == [
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": "trainer",
                "operator": "In",
                "values": [EXIT_INVALID_CONFIG],
            },
        }
    ]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "lora_trainer.export"]
    assert container["image"] == "trainer:1"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "big-trainer"  # the trainer's token-less account
    assert pod["tolerations"] == [TOLERATION]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "22Gi", "ephemeral-storage": "46Gi"},
        "limits": {"memory": "22Gi"},
    }
    assert not any("gpu" in key for key in str(container["resources"]).split("'"))
    assert pod["nodeSelector"] == {"pool": "train"}  # the author's, not the GPU pool's
    assert pod["priorityClassName"] == "batch-high"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # the run's own config and credentials, by Secret reference; no rendezvous variables
    trainer = build_job(ctx)
    assert pod["volumes"] == trainer["spec"]["template"]["spec"]["volumes"]
    env = env_of(job)
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "accessKey"}}
    assert env["LORAJOB_CONFIG"] == env_of(trainer)["LORAJOB_CONFIG"]
    assert not {"MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "POD_IP"} & set(env)
    assert merged_uri(ctx.output_uri) == "s3://lora-test/runs/big/r1/merged"
    assert merged_uri("s3://b/runs/JOBX/") == "s3://b/runs/JOBX/merged"


def test_a_cpu_jobs_export_has_no_node_selector_by_default() -> None:
    job = build_export_job(context(base_job("small", export={"merged": True})))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert "nodeSelector" not in job["spec"]["template"]["spec"]


def export_pod(job: str, exit_code: int, message: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{job}-r1-export-x",
            "labels": {
                "finetune.lora-operator.io/job": job,
                "finetune.lora-operator.io/run": "r1",
                "app.kubernetes.io/component": "export",
            },
        },
        "status": {
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": exit_code, "message": message}}}
            ]
        },
    }


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def finished_run(world: World, name: str) -> dict[str, Any]:
    """The run trained and its Job completed: the reconcile that sees it creates the export."""
    world.add(base_job(name, **{"export.merged": True}))
    assert world.reconcile(name)["phase"] == "Running"
    world.job_status(f"{name}-r1", active=1)
    world.progress(name, "r1", state="succeeded", step=40, totalSteps=40)
    world.job_status(f"{name}-r1", succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    return world.reconcile(name)


def test_a_failed_export_sets_exported_false_and_the_run_stays_succeeded(s3: S3Server) -> None:
    world = World(s3)
    status = finished_run(world, "u-exp")
    assert status["phase"] == "Succeeded"
    export = world.kube.obj(JOBS, "u-exp-r1-export")
    assert export is not None
    container = export["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "lora_trainer.export"]
    exported = condition(status, "Exported")
    assert (exported["status"], exported["reason"]) == ("Unknown", "Exporting")
    assert world.reconciler.periodic[(NS, "u-exp")] == 0.0  # followed at every resync
    trainer_job = world.kube.obj(JOBS, "u-exp-r1")

    # the export pod fails (a trainer pod of the same run failed earlier, with its own message)
    world.kube.put(PODS, export_pod("u-exp", 75, "export: merged export to s3://x failed"))
    trainer_pod = export_pod("u-exp", 75, "a trainer attempt's error, retried")
    trainer_pod["metadata"]["name"] = "u-exp-r1-0-y"
    trainer_pod["metadata"]["labels"]["app.kubernetes.io/component"] = "trainer"
    world.kube.put(PODS, trainer_pod)  # listed after the export's: filtered by component
    world.job_status(
        "u-exp-r1-export",
        failed=3,
        conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
    )
    status = world.reconcile("u-exp")
    assert status["phase"] == "Succeeded"
    assert condition(status, "Succeeded")["status"] == "True"
    assert "Failed" not in {c["type"] for c in status["conditions"] if c["status"] == "True"}
    exported = condition(status, "Exported")
    assert (exported["status"], exported["reason"], exported["message"]) == (
        "False",
        "ExportFailed",
        "export: merged export to s3://x failed",
    )
    assert status["runs"][-1]["phase"] == "Succeeded" and "mergedURI" not in status["runs"][-1]
    assert status["adapterURI"].endswith("/u-exp/r1/final")
    assert world.reasons("u-exp").count("ExportFailed") == 1
    assert world.kube.obj(JOBS, "u-exp-r1") == trainer_job  # the training Job untouched
    assert (NS, "u-exp") not in world.reconciler.periodic  # nothing left to follow
    world.reconcile("u-exp")  # an idle resync: no second event, no new Job
    assert world.reasons("u-exp").count("ExportFailed") == 1
    assert sorted(world.kube.objects[JOBS]) == ["u-exp-r1", "u-exp-r1-export"]


def test_a_succeeded_export_records_the_merged_uri(s3: S3Server) -> None:
    world = World(s3)
    finished_run(world, "u-mrg")
    world.job_status(
        "u-mrg-r1-export", succeeded=1, conditions=[{"type": "Complete", "status": "True"}]
    )
    status = world.reconcile("u-mrg")
    uri = f"s3://{BUCKET}/runs/{NS}/u-mrg/r1/merged"
    assert status["runs"][-1]["mergedURI"] == uri
    exported = condition(status, "Exported")
    assert (exported["status"], exported["reason"]) == ("True", "Exported")
    assert exported["message"] == f"merged model at {uri}"
    assert world.reasons("u-mrg").count("Exported") == 1
    assert "Completed" not in world.reasons("u-mrg")  # the training's own reason, not the export's


def test_no_export_job_without_export_merged(s3: S3Server) -> None:
    world = World(s3)
    world.add(base_job("u-none"))
    world.reconcile("u-none")
    world.job_status("u-none-r1", succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    status = world.reconcile("u-none")
    assert status["phase"] == "Succeeded"
    assert sorted(world.kube.objects[JOBS]) == ["u-none-r1"]
    assert "Exported" not in {c["type"] for c in status["conditions"]}


@pytest.mark.parametrize("case", sorted(TRAINER_JOBS))
def test_export_pods_meet_the_restricted_profile(case: str) -> None:
    """The same checker as the trainer pods' (test_pod_security.py), on every trainer case."""
    job, config = TRAINER_JOBS[case]
    export = build_export_job(context(job, **config))
    assert violations(export["spec"]["template"]["spec"]) == []


def test_the_failure_message_is_the_export_pods_own() -> None:
    kube = FakeKube()
    pods = "/api/v1/namespaces/ml/pods"
    assert asyncio.run(export_failure_message(kube, "ml", "j", "r1")) is None  # type: ignore[arg-type]
    pending = export_pod("j", 0, "")
    pending["metadata"]["name"] = "j-r1-export-p"
    pending["status"] = {}  # not started: no containerStatuses yet
    kube.put(pods, pending)
    succeeded = export_pod("j", 0, "ignored: exit code 0")
    succeeded["metadata"]["name"] = "j-r1-export-a"
    kube.put(pods, succeeded)
    other_run = export_pod("j", 75, "run r0's export")
    other_run["metadata"].update(name="j-r0-export-b")
    other_run["metadata"]["labels"]["finetune.lora-operator.io/run"] = "r0"
    kube.put(pods, other_run)
    assert asyncio.run(export_failure_message(kube, "ml", "j", "r1")) is None  # type: ignore[arg-type]
    kube.put(pods, export_pod("j", 75, "  export: no finished adapter at s3://b/f  \n"))
    trainer = export_pod("j", 3, "the trainer's own error")
    trainer["metadata"].update(name="j-r1-0-c")
    trainer["metadata"]["labels"]["app.kubernetes.io/component"] = "trainer"
    kube.put(pods, trainer)
    message = asyncio.run(export_failure_message(kube, "ml", "j", "r1"))  # type: ignore[arg-type]
    assert message == "export: no finished adapter at s3://b/f"


# ------------------------------------------------------------------ earlier runs' export Jobs

COMPLETE = [{"type": "Complete", "status": "True"}]
FAILED = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]


def test_a_later_runs_export_end_prunes_the_earlier_runs_export_job(s3: S3Server) -> None:
    """r1 exported; a training edit starts r2: while r2's export runs, r1's Job stays; when it
    ends (here: fails), r1's Job goes, r1's mergedURI stays, r2's failed Job stays (deleting it
    is how an author retries) and the trainer Jobs are untouched."""
    world = World(s3)
    finished_run(world, "u-prn")
    world.job_status("u-prn-r1-export", succeeded=1, conditions=COMPLETE)
    r1_uri = world.reconcile("u-prn")["runs"][-1]["mergedURI"]
    lj = world.kube.obj(LJ, "u-prn")
    assert lj is not None
    lj["spec"]["training"] = {**lj["spec"]["training"], "learningRate": 1e-4}
    assert world.reconcile("u-prn")["currentRun"] == "r2"
    world.job_status("u-prn-r2", active=1)
    world.progress("u-prn", "r2", state="succeeded", step=40, totalSteps=40)
    world.job_status("u-prn-r2", succeeded=1, conditions=COMPLETE)
    world.reconcile("u-prn")  # creates r2's export
    jobs = ["u-prn-r1", "u-prn-r1-export", "u-prn-r2", "u-prn-r2-export"]
    assert sorted(world.kube.objects[JOBS]) == jobs  # r1's kept while r2's runs
    world.reconcile("u-prn")  # an idle resync while r2's export runs deletes nothing
    assert sorted(world.kube.objects[JOBS]) == jobs
    trainers = {n: world.kube.obj(JOBS, n) for n in ("u-prn-r1", "u-prn-r2")}

    world.job_status("u-prn-r2-export", failed=3, conditions=FAILED)
    status = world.reconcile("u-prn")
    assert sorted(world.kube.objects[JOBS]) == ["u-prn-r1", "u-prn-r2", "u-prn-r2-export"]
    runs = {r["id"]: r for r in status["runs"]}
    assert runs["r1"]["mergedURI"] == r1_uri == f"s3://{BUCKET}/runs/{NS}/u-prn/r1/merged"
    assert "mergedURI" not in runs["r2"]
    assert condition(status, "Exported")["reason"] == "ExportFailed"
    assert {n: world.kube.obj(JOBS, n) for n in trainers} == trainers


def job_named(name: str, uid: str, conditions: list[dict[str, str]] | None) -> dict[str, Any]:
    owner = {"apiVersion": "v1", "kind": "LoRAJob", "name": "j", "uid": uid, "controller": True}
    status: dict[str, Any] = {"conditions": conditions} if conditions else {"active": 1}
    return {
        "metadata": {"name": name, "uid": f"job-{name}", "ownerReferences": [owner]},
        "status": status,
    }


def run_record(run_id: str, phase: Phase, merged: str | None = None) -> RunRecord:
    return RunRecord.model_validate(
        {
            "id": run_id,
            "specHash": "h",
            "outputURI": f"s3://b/j/{run_id}",
            "phase": phase,
            "mergedURI": merged,
        }
    )


def test_pruning_deletes_only_finished_export_jobs_this_lorajob_controls() -> None:
    """Seven runs, r6 the latest: r0's export failed (deleted, no mergedURI), r1's export
    succeeded (deleted), r2 failed in training (no export Job looked up), r3's export still runs
    (kept), r4's Job of that name is another owner's (kept, untouched), r5's export succeeded
    after r6 started and was never followed (its mergedURI recorded, then deleted), r6's own Job
    is not looked at."""
    kube = FakeKube()
    path = "/apis/batch/v1/namespaces/ml/jobs"
    ours, theirs = "uid-j", "uid-other"
    kube.put(path, job_named("j-r0-export", ours, FAILED))
    kube.put(path, job_named("j-r1-export", ours, COMPLETE))
    kube.put(path, job_named("j-r2-export", ours, COMPLETE))  # a stray: r2 never succeeded
    kube.put(path, job_named("j-r3-export", ours, None))
    kube.put(path, job_named("j-r4-export", theirs, FAILED))
    kube.put(path, job_named("j-r5-export", ours, COMPLETE))
    kube.put(path, job_named("j-r6-export", ours, COMPLETE))
    foreign_before = dict(kube.obj(path, "j-r4-export") or {})
    runs = [
        run_record("r0", Phase.Succeeded),
        run_record("r1", Phase.Succeeded, "s3://b/j/r1/merged"),
        run_record("r2", Phase.Failed),
        run_record("r3", Phase.Succeeded),
        run_record("r4", Phase.Succeeded),
        run_record("r5", Phase.Succeeded),
        run_record("r6", Phase.Succeeded),
    ]
    assert [r.id for r in earlier_exported_runs(runs)] == ["r0", "r1", "r3", "r4", "r5"]
    pruned = asyncio.run(prune_earlier_exports(kube, "ml", "j", ours, runs))  # type: ignore[arg-type]
    assert pruned == ["j-r0-export", "j-r1-export", "j-r5-export"]
    assert sorted(kube.objects[path]) == [
        "j-r2-export",
        "j-r3-export",
        "j-r4-export",
        "j-r6-export",
    ]
    assert kube.obj(path, "j-r4-export") == foreign_before
    gets = [c for c in kube.calls if c == ("batch", "jobs", "get")]
    assert len(gets) == 5 + 3  # one per earlier succeeded run, one more per delete_owned
    assert [r.merged_uri for r in runs] == [
        None,  # a failed export leaves none
        "s3://b/j/r1/merged",
        None,
        None,
        None,
        "s3://b/j/r5/merged",
        None,
    ]
    # nothing left to prune: a second call deletes nothing
    assert asyncio.run(prune_earlier_exports(kube, "ml", "j", ours, runs)) == []  # type: ignore[arg-type]
    assert earlier_exported_runs(runs[:1]) == []  # a single run has no earlier ones
