"""The details of the built manifests a cluster (Kubernetes, KServe, vLLM, the trainer) depends
on: names and their length limits, labels and owners, the pod's env/volumes/resources, the
serving Secret's KServe annotations and the InferenceService's vLLM arguments. Every Job built
here is also validated against the Kubernetes schemas (strict)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from operator_harness import base_job, gpu_job
from test_manifests import K8S_VERSION, UID, context, env_of, spec_of

from lora_contract import pod
from lora_contract.types import API_VERSION, KIND, TrainerConfig
from lora_operator.controller.manifests import (
    ANNOTATION_SPEC_HASH,
    LABEL_JOB,
    LABEL_RUN,
    MAX_NAME,
    RunContext,
    build_config_map,
    build_job,
    build_run_objects,
    build_service,
    config_map_name,
    run_name,
    short_name,
)
from lora_operator.controller.serving import (
    build_inference_service,
    build_serving_account,
    serving_account_name,
)

# Kubernetes' IANA_SVC_NAME, what container and Service port names must match.
PORT_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
HF_MODEL = "hf://meta-llama/Llama-3.2-1B"


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def container(job: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = pod_spec(job)["containers"][0]
    return result


def valid_job(ctx: RunContext) -> dict[str, Any]:
    """The Job, after checking it against the Kubernetes schemas."""
    job = build_job(ctx)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    return job


def serving_spec(name: str, **overrides: Any) -> Any:
    return spec_of(gpu_job(name, 1, **{"serving.enabled": True, **overrides}))


def isvc_of(spec: Any, name: str = "srv", with_service_account: bool = True) -> dict[str, Any]:
    return build_inference_service(
        name, "ml", UID, spec, "s3://b/runs/srv/r1/final", "r1", with_service_account
    )


# ------------------------------------------------------------------------------------- names


def test_names_that_fit_are_kept_verbatim_up_to_the_limit() -> None:
    exact = "a" * MAX_NAME
    assert short_name(exact) == exact  # == limit still fits
    assert short_name("a" * 20, "", "b") == "a" * 20 + "-b"  # empty parts are skipped
    assert len(run_name("j" * 40, "r" * 12)) == MAX_NAME == 52  # hostnames <job>-<i> fit 63


def test_shortened_names_keep_a_readable_prefix_and_a_hash_of_the_full_name() -> None:
    """Stable across operator versions (a running Job is found again by name) and unique."""
    parts = ("x" * 30, "y" * 30)
    full = "-".join(parts)
    name = short_name(*parts)
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    assert name == f"{full[: MAX_NAME - 9]}-{digest}"
    assert len(name) == MAX_NAME
    # The cut lands on a '-': the prefix loses it instead of leaving '--' before the hash.
    cut_on_dash = short_name("a" * 42, "b" * 20)
    assert (
        cut_on_dash
        == "a" * 42 + "-" + hashlib.sha256(("a" * 42 + "-" + "b" * 20).encode()).hexdigest()[:8]
    )
    assert "--" not in cut_on_dash and DNS_LABEL.match(cut_on_dash)
    assert short_name(*parts) == name  # deterministic
    assert short_name("x" * 30, "y" * 29 + "z") != name  # differs only past the cut


def test_config_map_name_extends_the_run_name_within_63() -> None:
    assert config_map_name("job", "r1") == "job-r1-config"
    longest = run_name("j" * 63, "r1")
    assert len(longest) == MAX_NAME
    # The run name is at most 52, so '-config' always fits in 63 without a second hash.
    assert config_map_name("j" * 63, "r1") == f"{longest}-config"


def test_serving_account_name_fits_63_and_stays_readable_when_it_can() -> None:
    job = "s" * 55
    assert serving_account_name(job) == f"{job}-serving"  # 63 characters
    assert serving_account_name("srv") == "srv-serving"
    account = serving_account_name("s" * 61)
    assert len(account) <= 63 and account.startswith("s" * 40)


# ------------------------------------------------------------------- labels, owners, metadata


def test_run_objects_are_labelled_as_trainer_components_and_owned() -> None:
    ctx = context(gpu_job("lab", 2))
    for resource, obj in build_run_objects(ctx):
        meta = obj["metadata"]
        per_run = resource != "v1/serviceaccounts"  # the trainer account is shared by runs
        assert meta["labels"] == {
            "app.kubernetes.io/name": "lora-operator",
            "app.kubernetes.io/instance": "lab",
            "app.kubernetes.io/component": "trainer",
            "app.kubernetes.io/managed-by": "lora-operator",
            LABEL_JOB: "lab",
            **({LABEL_RUN: "r1"} if per_run else {}),
        }, resource
        if per_run:
            assert meta["annotations"] == {ANNOTATION_SPEC_HASH: "abc123"}, resource
        assert meta["ownerReferences"] == [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": "lab",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,  # foreground deletion waits for them
            }
        ], resource
        # The resource path the client uses is the object's own apiVersion and kind.
        assert resource == f"{obj['apiVersion']}/{obj['kind'].lower()}s"


def test_no_spec_hash_no_annotation() -> None:
    ctx = dataclasses.replace(context(gpu_job("nohash", 2)), spec_hash="")
    job = build_job(ctx)
    assert ANNOTATION_SPEC_HASH not in job["metadata"]["annotations"]
    assert ANNOTATION_SPEC_HASH not in job["spec"]["template"]["metadata"]["annotations"]
    assert build_config_map(ctx)["metadata"]["annotations"] == {}


def test_serving_objects_are_labelled_owned_and_without_run_label() -> None:
    account = build_serving_account("srv", "ml", UID, "srv-creds")
    isvc = isvc_of(serving_spec("srv"))
    expected = {
        "app.kubernetes.io/name": "lora-operator",
        "app.kubernetes.io/instance": "srv",
        "app.kubernetes.io/component": "serving",
        "app.kubernetes.io/managed-by": "lora-operator",
        LABEL_JOB: "srv",
    }
    # the ServiceAccount outlives runs; the InferenceService serves one run's adapter.
    assert account["metadata"]["labels"] == expected
    assert isvc["metadata"]["labels"] == {**expected, LABEL_RUN: "r1"}
    for obj in (account, isvc):
        assert obj["metadata"]["namespace"] == "ml"
        owner = obj["metadata"]["ownerReferences"]
        assert [(o["kind"], o["name"], o["uid"], o["controller"]) for o in owner] == [
            (KIND, "srv", UID, True)
        ]
    kubernetes_validate.validate(account, K8S_VERSION, strict=True)


# ----------------------------------------------------------------------------- ConfigMap/Service


def test_config_map_is_what_the_pod_mounts_and_the_trainer_reads() -> None:
    ctx = context(gpu_job("cm", 2))
    config_map = build_config_map(ctx)
    assert config_map["metadata"]["name"] == "cm-r1-config"
    job = valid_job(ctx)
    volume = next(v for v in pod_spec(job)["volumes"] if "configMap" in v)
    assert volume["configMap"] == {"name": config_map["metadata"]["name"]}
    mount = next(m for m in container(job)["volumeMounts"] if m["name"] == volume["name"])
    assert mount == {"name": volume["name"], "mountPath": pod.CONFIG_DIR, "readOnly": True}
    assert env_of(job)[pod.ENV_CONFIG] == f"{mount['mountPath']}/{pod.CONFIG_FILE}"
    loaded = TrainerConfig.model_validate(yaml.safe_load(config_map["data"][pod.CONFIG_FILE]))
    assert loaded == TrainerConfig(
        job_name="cm",
        namespace="ml",
        run_id="r1",
        output_uri=ctx.output_uri,
        spec=ctx.spec,
        plan=ctx.plan,
        deepspeed=ctx.deepspeed,
        spec_hash="abc123",  # the run's, for the trainer's lineage
    )
    # the image the pod runs, for the lineage too
    assert env_of(job)[pod.ENV_TRAINER_IMAGE] == container(job)["image"] != ""


def test_rendezvous_port_is_named_validly_and_reached_through_the_service() -> None:
    ctx = context(gpu_job("port", 2, **{"distributed.nodes": 2}), rendezvousPort=23456)
    service = build_service(ctx)
    kubernetes_validate.validate(service, K8S_VERSION, strict=True)
    [port] = service["spec"]["ports"]
    assert port["protocol"] == "TCP"  # Kubernetes' enum is upper case
    assert PORT_NAME.match(port["name"]), port["name"]
    assert port["port"] == port["targetPort"] == 23456
    job = valid_job(ctx)
    [container_port] = container(job)["ports"]
    assert PORT_NAME.match(container_port["name"]), container_port["name"]
    assert container_port["containerPort"] == 23456
    assert env_of(job)[pod.ENV_MASTER_PORT] == "23456"


# ------------------------------------------------------------------------------------ the Job


def test_job_fails_when_any_index_fails_for_good() -> None:
    """A torch gang cannot go on without a rank: no index may fail permanently."""
    spec = valid_job(context(gpu_job("gang", 2, **{"distributed.nodes": 2})))["spec"]
    assert spec["maxFailedIndexes"] == 0
    fail = spec["podFailurePolicy"]["rules"][0]
    assert fail["onExitCodes"]["operator"] == "In"  # Kubernetes' enum: In / NotIn


def test_trainer_container_runs_the_trainer_module() -> None:
    job = valid_job(context(gpu_job("cmd", 2)))
    main = container(job)
    assert main["name"] == pod.TRAINER_CONTAINER
    assert main["command"][:2] == ["python", "-m"]
    module = main["command"][2]
    assert main["command"] == ["python", "-m", module]
    assert importlib.util.find_spec(module) is not None, module
    # The failure message comes from the log tail when the trainer wrote no termination log.
    assert main["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_trainer_image_from_spec_else_operator_config() -> None:
    default = container(valid_job(context(gpu_job("img", 2))))
    assert default["image"] == "trainer:1"
    assert default["imagePullPolicy"] == "IfNotPresent"
    own = container(valid_job(context(gpu_job("img", 2, trainerImage="mine:2"))))
    assert own["image"] == "mine:2"


def test_trainer_service_account_from_the_config_else_one_per_lorajob() -> None:
    configured = context(gpu_job("sa", 2), trainerServiceAccount="trainer-sa")
    assert pod_spec(valid_job(configured))["serviceAccountName"] == "trainer-sa"
    assert "v1/serviceaccounts" not in [r for r, _ in build_run_objects(configured)]
    ctx = context(gpu_job("sa", 2))
    assert pod_spec(valid_job(ctx))["serviceAccountName"] == "sa-trainer"
    resource, account = build_run_objects(ctx)[0]  # before the Job whose pods use it
    assert resource == "v1/serviceaccounts" and account["metadata"]["name"] == "sa-trainer"
    assert account["automountServiceAccountToken"] is False
    for spec in (pod_spec(valid_job(configured)), pod_spec(valid_job(ctx))):
        assert spec["automountServiceAccountToken"] is False


def test_env_names_are_the_pod_contract() -> None:
    ctx = context(base_job("env", **{"baseModel.source": HF_MODEL}))
    env = env_of(valid_job(ctx))
    contract = {getattr(pod, n) for n in dir(pod) if n.startswith("ENV_")}
    assert set(env) - contract - set(pod.SCRATCH_ENV) == {"PYTHONUNBUFFERED"}
    assert env["PYTHONUNBUFFERED"] == "1"  # logs reach `kubectl logs` as they are written
    assert env[pod.ENV_RUN_ID] == "r1"
    assert env[pod.ENV_JOB_UID] == ctx.uid  # the trainer claims the output folder for it
    assert env[pod.ENV_PVC_ROOT] == pod.PVC_ROOT
    assert env[pod.ENV_HF_HOME] == pod.HF_HOME


def test_s3_region_and_credentials_from_the_spec_else_the_config() -> None:
    from_config = env_of(
        valid_job(
            context(
                gpu_job("s3", 2),
                s3={
                    "endpoint": "https://s3.eu-west-1.amazonaws.com",
                    "region": "eu-west-1",
                    "credentialsSecret": {"name": "cfg-secret"},
                },
            )
        )
    )
    assert from_config[pod.ENV_S3_ENDPOINT] == "https://s3.eu-west-1.amazonaws.com"
    assert from_config[pod.ENV_AWS_REGION] == "eu-west-1"
    assert from_config[pod.ENV_ACCESS_KEY] == {
        "secretKeyRef": {"name": "cfg-secret", "key": "accessKey"}
    }
    own = gpu_job(
        "s3",
        2,
        **{
            "output.region": "us-west-2",
            "output.credentialsSecret": {
                "name": "mine",
                "accessKeyKey": "id",
                "secretKeyKey": "key",
            },
        },
    )
    from_spec = env_of(valid_job(context(own)))
    assert from_spec[pod.ENV_AWS_REGION] == "us-west-2"
    assert from_spec[pod.ENV_ACCESS_KEY] == {"secretKeyRef": {"name": "mine", "key": "id"}}
    assert from_spec[pod.ENV_SECRET_KEY] == {"secretKeyRef": {"name": "mine", "key": "key"}}
    no_region = env_of(valid_job(context(gpu_job("s3", 2))))
    assert pod.ENV_AWS_REGION not in no_region


def test_pvc_claims_one_read_only_volume_each_mounted_under_the_pvc_root() -> None:
    job = gpu_job(
        "pvc",
        2,
        **{
            "baseModel.source": "pvc://models/llama/1b",
            "dataset.source": "pvc://models/data/sets/train.jsonl",  # same claim as the model
            "dataset.evalSource": "pvc://evals/sets/eval.jsonl",
        },
    )
    built = valid_job(context(job))
    volumes = {v["name"]: v for v in pod_spec(built)["volumes"]}
    mounts = {m["name"]: m for m in container(built)["volumeMounts"]}
    claims = {
        v["persistentVolumeClaim"]["claimName"]: name
        for name, v in volumes.items()
        if "persistentVolumeClaim" in v
    }
    assert set(claims) == {"models", "evals"}  # the claim is the first path segment
    for claim, name in claims.items():
        assert volumes[name]["persistentVolumeClaim"]["readOnly"] is True
        assert mounts[name] == {
            "name": name,
            "mountPath": f"{pod.PVC_ROOT}/{claim}",
            "readOnly": True,
        }
    assert "hf-cache" not in volumes and pod.ENV_HF_HOME not in env_of(built)


def test_every_mount_names_a_volume_and_mount_paths_are_unique() -> None:
    ctx = context(base_job("vol", **{"baseModel.source": HF_MODEL}), modelCacheClaim="hf")
    built = valid_job(ctx)
    volumes = {v["name"] for v in pod_spec(built)["volumes"]}
    mounts = container(built)["volumeMounts"]
    assert {m["name"] for m in mounts} == volumes
    assert len({m["mountPath"] for m in mounts}) == len(mounts)


@pytest.mark.parametrize(
    ("cache_claim", "expected"),
    [
        ("hf-models", {"persistentVolumeClaim": {"claimName": "hf-models"}}),
        (None, {"emptyDir": {}}),
    ],
    ids=["claim", "emptyDir"],
)
def test_hf_models_get_the_cache_at_hf_home(
    cache_claim: str | None, expected: dict[str, Any]
) -> None:
    config = {"modelCacheClaim": cache_claim} if cache_claim else {}
    job = base_job("hf", **{"baseModel.source": HF_MODEL, "dataset.source": "s3://d/t.jsonl"})
    built = valid_job(context(job, **config))
    env = env_of(built)
    scratch = ("config", "dshm", "tmp", "home")
    cache = [v for v in pod_spec(built)["volumes"] if v["name"] not in scratch]
    assert len(cache) == 1
    [volume] = cache
    assert {k: v for k, v in volume.items() if k != "name"} == expected
    mount = next(m for m in container(built)["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == env[pod.ENV_HF_HOME] == pod.HF_HOME


# ------------------------------------------------------------------------------------ resources


def test_resource_overrides_win_per_key_including_ephemeral_storage() -> None:
    """spec.resources.requests/limits keep the run (no new plan): the stored plan predates an
    override added later, and the pod must still get the override."""
    planned = context(gpu_job("res", 2))
    overrides = {
        "resources.requests": {"memory": "99Gi", "ephemeralStorage": "50Gi"},
        "resources.limits": {"cpu": "12", "ephemeralStorage": "60Gi"},
    }
    ctx = dataclasses.replace(planned, spec=spec_of(gpu_job("res", 2, **overrides)))
    resources = container(valid_job(ctx))["resources"]
    planned_requests, planned_limits = ctx.plan.requests, ctx.plan.limits
    assert planned_requests.memory != "99Gi" and planned_limits.ephemeral_storage != "60Gi"
    assert planned_requests.cpu and planned_limits.memory  # what is not overridden stays
    assert resources["requests"] == {
        "cpu": planned_requests.cpu,
        "memory": "99Gi",
        "ephemeral-storage": "50Gi",
        "nvidia.com/gpu": "2",
    }
    assert resources["limits"] == {
        "cpu": "12",
        "memory": planned_limits.memory,
        "ephemeral-storage": "60Gi",
        "nvidia.com/gpu": "2",
    }


def test_planned_ephemeral_storage_is_requested() -> None:
    ctx = context(gpu_job("eph", 2))
    assert ctx.plan.requests.ephemeral_storage and ctx.plan.limits.ephemeral_storage
    resources = container(valid_job(ctx))["resources"]
    assert resources["requests"]["ephemeral-storage"] == ctx.plan.requests.ephemeral_storage
    assert resources["limits"]["ephemeral-storage"] == ctx.plan.limits.ephemeral_storage
    assert "cpu" not in resources["limits"]  # no planned CPU limit: none is set


def test_one_gpu_job_requests_its_gpu_as_the_configured_resource() -> None:
    ctx = context(gpu_job("one", 1, **{"resources.gpuResourceName": "amd.com/gpu"}))
    resources = container(valid_job(ctx))["resources"]
    assert resources["requests"]["amd.com/gpu"] == resources["limits"]["amd.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in resources["requests"]


# ------------------------------------------------------------------------------------ serving


def test_inference_service_without_gpus_on_cpu() -> None:
    spec = spec_of(base_job("cpu-srv", **{"serving.enabled": True}))
    model = isvc_of(spec, "cpu-srv")["spec"]["predictor"]["model"]
    assert model["resources"] == {}


def test_inference_service_gpu_requests_equal_limits() -> None:
    spec = serving_spec("gpu-srv", **{"resources.gpuResourceName": "amd.com/gpu"})
    resources = isvc_of(spec, "gpu-srv")["spec"]["predictor"]["model"]["resources"]
    assert resources == {"requests": {"amd.com/gpu": "1"}, "limits": {"amd.com/gpu": "1"}}


def test_inference_service_object_and_vllm_arguments() -> None:
    spec = serving_spec("srv", **{"lora.r": 64})
    isvc = isvc_of(spec)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert (isvc["metadata"]["name"], isvc["metadata"]["namespace"]) == ("srv", "ml")
    model = isvc["spec"]["predictor"]["model"]
    args = model["args"]
    assert f"--model_name={spec.base_model.name}" in args
    assert "--max-lora-rank=64" in args
    # The adapter is served under the job's name when serving.adapterName is not set.
    assert args[args.index("--lora-modules") + 1] == "srv=/mnt/models/adapter"
    model_dir = next(a for a in args if a.startswith("--model_dir="))
    mounts = {s["mountPath"]: s["uri"] for s in model["storageUris"]}
    assert mounts[model_dir.partition("=")[2]] == spec.base_model.source
    predictor = isvc["spec"]["predictor"]
    assert "nodeSelector" not in predictor and "tolerations" not in predictor


@pytest.mark.parametrize(("replicas", "minimum", "maximum"), [(0, 0, 1), (1, 1, 1), (3, 3, 3)])
def test_inference_service_replicas(replicas: int, minimum: int, maximum: int) -> None:
    """serving.replicas is a fixed size; 0 scales to zero, with room for one when called."""
    predictor = isvc_of(serving_spec("rep", **{"serving.replicas": replicas}))["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (minimum, maximum)


def test_inference_service_scheduling_and_service_account() -> None:
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    spec = serving_spec(
        "sched",
        **{"resources.nodeSelector": {"pool": "serve"}, "resources.tolerations": [toleration]},
    )
    predictor = isvc_of(spec, "sched")["spec"]["predictor"]
    assert predictor["nodeSelector"] == {"pool": "serve"}
    assert predictor["tolerations"] == [toleration]
    assert predictor["serviceAccountName"] == serving_account_name("sched")
    without = isvc_of(spec, "sched", with_service_account=False)["spec"]["predictor"]
    assert "serviceAccountName" not in without


@pytest.mark.parametrize("r", [300, 512])
def test_served_max_lora_rank_is_never_below_the_adapter_rank(r: int) -> None:
    args = isvc_of(serving_spec("big", **{"lora.r": r}), "big")["spec"]["predictor"]["model"][
        "args"
    ]
    rank = int(next(a for a in args if a.startswith("--max-lora-rank=")).partition("=")[2])
    assert rank >= r
