"""Unit tests of the pure manifest builders: the Indexed Job, headless Service and ConfigMap a
run owns, and the serving objects; every built object is also validated against the Kubernetes
1.33 schemas offline (strict: unknown fields fail)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from operator_harness import base_job, gpu_job

from lora_contract.pod import EXIT_INVALID_CONFIG, EXIT_TRANSIENT
from lora_contract.types import LoRAJobSpec, PlanStatus
from lora_devkit.job_policy import policy_action
from lora_operator.api.loading import parse_lorajob
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller.manifests import (
    KUEUE_QUEUE_LABEL,
    LABEL_JOB,
    LABEL_RUN,
    RunContext,
    build_config_map,
    build_job,
    build_run_objects,
    build_service,
    run_name,
    short_name,
)
from lora_operator.controller.serving import (
    build_inference_service,
    build_serving_account,
    vllm_lora_rank,
)
from lora_operator.deepspeed_config import deepspeed_config
from lora_operator.memory import GpuCatalog, plan_job

K8S_VERSION = "1.33"
UID = "0b9c3f2e-1111-2222-3333-444455556666"
ACCOUNTS = "v1/serviceaccounts"


def spec_of(job: dict[str, Any]) -> LoRAJobSpec:
    return parse_lorajob(job, "test").spec


def context(job: dict[str, Any], **config: Any) -> RunContext:
    spec = spec_of(job)
    plan = plan_job(spec, GpuCatalog.default()).to_status()
    cfg = OperatorConfig.model_validate(
        {
            "trainerImage": "trainer:1",
            "s3": {"endpoint": "http://minio.s3:9000", "credentialsSecret": {"name": "s3"}},
            **config,
        }
    )
    return RunContext(
        name=job["metadata"]["name"],
        namespace="ml",
        uid=UID,
        run_id="r1",
        spec=spec,
        plan=plan,
        config=cfg,
        output_uri=f"s3://lora-test/runs/{job['metadata']['name']}/r1",
        spec_hash="abc123",
        gpu_node_selector={"gpu": "a100"},
        deepspeed=deepspeed_config(spec, plan.strategy),
        queue_name=spec.queue_name,
    )


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.fixture(scope="module")
def multinode() -> RunContext:
    return context(
        gpu_job(
            "mn",
            8,
            **{
                "distributed.nodes": 2,
                "resources.nodeSelector": {"pool": "train"},
                "resources.tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "resources.priorityClassName": "batch-high",
            },
        )
    )


def test_indexed_job_for_multi_node_rendezvous(multinode: RunContext) -> None:
    job = build_job(multinode)
    spec = job["spec"]
    assert job["metadata"]["name"] == "mn-r1"
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] == multinode.plan.nodes == 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == build_service(multinode)["metadata"]["name"] == "mn-r1"
    assert pod["restartPolicy"] == "Never"
    env = env_of(job)
    assert env["MASTER_ADDR"] == "mn-r1-0.mn-r1.ml.svc"
    assert env["MASTER_PORT"] == "29500"
    assert env["NNODES"] == "2"
    assert env["NPROC_PER_NODE"] == "8"
    field = env["NODE_RANK"]["fieldRef"]["fieldPath"]
    assert "batch.kubernetes.io/job-completion-index" in field
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}  # torchrun --local-addr


def test_gpus_shm_and_scheduling(multinode: RunContext) -> None:
    pod = build_job(multinode)["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == "8"
    assert resources["limits"]["nvidia.com/gpu"] == "8"
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory"}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "dshm")
    assert mount["mountPath"] == "/dev/shm"
    assert pod["nodeSelector"] == {"gpu": "a100", "pool": "train"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["priorityClassName"] == "batch-high"


def test_failure_policy_retries_lost_pods_not_bad_configs(multinode: RunContext) -> None:
    spec = build_job(multinode)["spec"]
    assert spec["backoffLimitPerIndex"] == 3
    rules = spec["podFailurePolicy"]["rules"]
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert fail["onExitCodes"]["values"] == [EXIT_INVALID_CONFIG] == [3]
    assert fail["onExitCodes"]["containerName"] == "trainer"
    # What the Job controller does with each exit code, decided from the rendered policy.
    policy = spec["podFailurePolicy"]
    assert policy_action(policy, EXIT_INVALID_CONFIG) == "FailJob"  # bad config: no retries
    for retried in (1, EXIT_TRANSIENT, 137, 139):  # crash, transient, OOM kill, segfault
        assert policy_action(policy, retried) == "Count", retried
    disruption = next(r for r in rules if r["action"] == "Ignore")  # evictions don't count
    assert disruption["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


def test_owner_references_and_labels_on_everything(multinode: RunContext) -> None:
    for resource, obj in build_run_objects(multinode):
        meta = obj["metadata"]
        owner = meta["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("LoRAJob", "mn", UID), resource
        assert owner["controller"] is True
        assert meta["labels"][LABEL_JOB] == "mn"
        # the trainer ServiceAccount is the LoRAJob's, shared by its runs
        assert meta["labels"].get(LABEL_RUN) == (None if resource == ACCOUNTS else "r1")
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "lora-operator"
        assert meta["namespace"] == "ml"
    assert [r for r, _ in build_run_objects(multinode)][-1] == "batch/v1/jobs"  # Job last


def test_credentials_only_by_secret_reference(multinode: RunContext) -> None:
    job = build_job(multinode)
    env = env_of(job)
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3", "key": "accessKey"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3", "key": "secretKey"}}
    assert env["S3_ENDPOINT"] == "http://minio.s3:9000"
    text = yaml.safe_dump([obj for _, obj in build_run_objects(multinode)])
    assert "minioadmin" not in text and "stringData" not in text


def test_service_is_headless_and_publishes_not_ready(multinode: RunContext) -> None:
    service = build_service(multinode)["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True
    assert service["selector"] == {LABEL_JOB: "mn", LABEL_RUN: "r1"}


def test_config_map_holds_full_config_and_deepspeed() -> None:
    ctx = context(gpu_job("ds", 8, **{"distributed.strategy": "deepspeed-zero3"}))
    config = yaml.safe_load(build_config_map(ctx)["data"]["config.yaml"])
    assert config["runId"] == "r1"
    assert config["outputUri"] == ctx.output_uri
    assert config["spec"]["lora"]["r"] == 8
    assert config["plan"]["nodes"] == ctx.plan.nodes
    assert config["deepspeed"]["zero_optimization"]["stage"] == 3
    ddp = yaml.safe_load(build_config_map(context(gpu_job("ddp", 2)))["data"]["config.yaml"])
    assert not ddp.get("deepspeed")


def test_kueue_job_is_suspended_with_queue_label() -> None:
    job = build_job(context(gpu_job("kq", 2, queueName="team-a")))
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a"
    plain = build_job(context(gpu_job("plain", 2)))
    assert "suspend" not in plain["spec"]
    assert KUEUE_QUEUE_LABEL not in plain["metadata"]["labels"]


def test_cpu_job_requests_no_gpus() -> None:
    job = build_job(context(base_job("cpu")))
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert not any("gpu" in k for k in {**resources["requests"], **resources["limits"]})


def test_pvc_sources_are_mounted_read_only() -> None:
    pod = build_job(context(base_job("pvc")))["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": True, "data": True}


def test_long_names_stay_within_kubernetes_limits() -> None:
    name = "a" * 63
    job = run_name(name, "r12")
    assert len(job) <= 52 and job != run_name("a" * 62 + "b", "r12")
    assert short_name("x", "y") == "x-y"


def test_inference_service_serves_adapter_with_vllm() -> None:
    spec = spec_of(
        gpu_job("srv", 1, **{"lora.r": 24, "serving.enabled": True, "serving.adapterName": "bot"})
    )
    isvc = build_inference_service(
        "srv", "ml", UID, spec, "s3://b/runs/srv/r1/final", "r1", with_service_account=True
    )
    model = isvc["spec"]["predictor"]["model"]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert model["modelFormat"]["name"] == "huggingface"
    assert "--backend=vllm" in model["args"]
    assert "--enable-lora" in model["args"]
    assert "--max-lora-rank=32" in model["args"]
    index = model["args"].index("--lora-modules")
    assert model["args"][index + 1] == "bot=/mnt/models/adapter"
    uris = {s["mountPath"]: s["uri"] for s in model["storageUris"]}
    assert uris["/mnt/models/adapter"] == "s3://b/runs/srv/r1/final"
    assert uris["/mnt/models/base"] == spec.base_model.source
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "srv-serving"
    assert isvc["metadata"]["ownerReferences"][0]["uid"] == UID


def test_serving_account_lists_the_jobs_own_secret_by_name() -> None:
    """KServe's storage initializer reads the Secrets its ServiceAccount lists: the job's own
    credentials Secret is named there, no copy is made."""
    account = build_serving_account("srv", "ml", UID, "team-s3-creds")
    assert account["secrets"] == [{"name": "team-s3-creds"}]
    assert account["metadata"]["name"] == "srv-serving"


def test_vllm_lora_rank_rounds_up() -> None:
    ranks = [vllm_lora_rank(r) for r in (4, 8, 16, 17, 64, 256, 257, 300, 320, 321, 512)]
    assert ranks == [8, 8, 16, 32, 64, 256, 320, 320, 320, 512, 512]
    with pytest.raises(ValueError, match="above vLLM's largest LoRA rank 512"):
        vllm_lora_rank(513)


@pytest.mark.parametrize(
    "job",
    [
        base_job("cpu"),
        gpu_job("mn", 8, **{"distributed.nodes": 2, "distributed.strategy": "deepspeed-zero3"}),
        gpu_job("kq", 2, queueName="team-a"),
    ],
    ids=["cpu", "multinode-zero3", "kueue"],
)
def test_objects_validate_against_kubernetes_schemas(job: dict[str, Any]) -> None:
    ctx = context(job)
    objects = [obj for _, obj in build_run_objects(ctx)]
    objects += [
        build_serving_account("x", "ml", UID, "x-creds"),
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_plan_status_round_trips(multinode: RunContext) -> None:
    assert PlanStatus.model_validate(multinode.plan.to_wire()) == multinode.plan
