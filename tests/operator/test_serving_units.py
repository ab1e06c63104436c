"""Serving, in-process: what an InferenceService's status means (`readiness`), how the objects
are applied (create, or patch only what differs), what a cluster without KServe gives, and what
turning serving off deletes; credentials reach KServe by the job's own Secret's name, never as a
copy, and no Secret is read or written. Against `FakeKube` (the real client over an in-memory
API)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import base_job

from lora_contract.types import PlanStatus
from lora_operator.api.loading import load_lorajobs, parse_lorajob
from lora_operator.controller.kube import KubeError
from lora_operator.controller.ownership import NameConflict
from lora_operator.controller.serving import (
    ISVC,
    ServingState,
    ensure_serving,
    readiness,
    remove_serving,
    serving_account_name,
)
from lora_operator.memory import plan_job

NS = "default"
ISVCS = "/apis/serving.kserve.io/v1beta1/namespaces/default/inferenceservices"
SECRETS = "/api/v1/namespaces/default/secrets"
ACCOUNTS = "/api/v1/namespaces/default/serviceaccounts"
TEAM_SECRET = "team-creds"  # the job's own credentials Secret (spec.output.credentialsSecret)
ADAPTER = "s3://bucket/runs/svc/r1/final"


def isvc(conditions: list[dict[str, Any]] | None = None, url: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if conditions is not None:
        status["conditions"] = conditions
    if url is not None:
        status["url"] = url
    return {"metadata": {"name": "svc"}, "status": status}


def test_readiness_follows_the_ready_condition() -> None:
    assert readiness({"metadata": {}}) == ServingState(
        "Unknown", "Deploying", "InferenceService created, not ready yet"
    )
    other = [{"type": "PredictorReady", "status": "True"}]
    assert readiness(isvc(other)).reason == "Deploying"  # only Ready counts
    ready = [{"type": "Ready", "status": "True"}]
    assert readiness(isvc(ready, "http://svc.default.example.com")) == ServingState(
        "True",
        "Ready",
        "serving at http://svc.default.example.com",
        "http://svc.default.example.com",
    )
    assert readiness(isvc(ready)) == ServingState("True", "Ready", "ready", None)


def test_not_ready_keeps_kserve_reason_and_message_or_says_so() -> None:
    failing = [{"type": "Ready", "status": "False", "reason": "RevisionMissing", "message": "x"}]
    assert readiness(isvc(failing, "http://u")) == ServingState(
        "False", "RevisionMissing", "x", "http://u"
    )
    bare = [{"type": "Ready", "status": "Unknown"}]
    assert readiness(isvc(bare)) == ServingState(
        "False", "NotReady", "InferenceService is not ready", None
    )


def spec(**overrides: Any) -> Any:
    return parse_lorajob(base_job("svc", **{"serving.enabled": True, **overrides})).spec


def ensure(kube: FakeKube, secret: str | None = TEAM_SECRET) -> ServingState:
    return asyncio.run(ensure_serving(kube, "svc", NS, "uid-svc", spec(), ADAPTER, "r1", secret))


def patches(kube: FakeKube) -> list[tuple[str, str, str]]:
    return [call for call in kube.calls if call[2] == "patch"]


def secret_calls(kube: FakeKube) -> list[tuple[str, str, str]]:
    return [call for call in kube.calls if call[1] == "secrets"]


def test_ensure_lists_the_jobs_secret_by_name_and_patches_only_what_differs() -> None:
    kube = FakeKube()
    state = ensure(kube)
    assert state.reason == "Deploying"  # the InferenceService has no status yet
    account = kube.obj(ACCOUNTS, "svc-serving")
    service = kube.obj(ISVCS, "svc")
    assert account is not None and service is not None
    assert account["secrets"] == [{"name": "team-creds"}]  # the tenant's Secret, by name
    assert account["metadata"]["ownerReferences"][0]["uid"] == "uid-svc"
    assert account["metadata"]["namespace"] == service["metadata"]["namespace"] == NS
    assert service["spec"]["predictor"]["serviceAccountName"] == "svc-serving"
    assert service["metadata"]["labels"]["finetune.lora-operator.io/run"] == "r1"
    uris = service["spec"]["predictor"]["model"]["storageUris"]
    assert {"uri": ADAPTER, "mountPath": "/mnt/models/adapter"} in uris
    assert not kube.objects.get(SECRETS) and secret_calls(kube) == []  # no copy, no read

    kube.calls.clear()
    ensure(kube)
    assert patches(kube) == []  # nothing differs: nothing written

    service["spec"]["predictor"]["minReplicas"] = 5  # someone edited what we own
    account["metadata"]["labels"] = {}
    kube.calls.clear()
    ensure(kube)
    assert patches(kube) == [
        ("", "serviceaccounts", "patch"),  # its labels are declared too (children.py)
        ("serving.kserve.io", "inferenceservices", "patch"),
    ]
    assert kube.obj(ISVCS, "svc")["spec"]["predictor"]["minReplicas"] == 1  # type: ignore[index]
    labels = kube.obj(ACCOUNTS, "svc-serving")["metadata"]["labels"]  # type: ignore[index]
    assert labels["app.kubernetes.io/component"] == "serving"

    account["secrets"] = [{"name": "someone-elses"}]
    kube.calls.clear()
    ensure(kube)
    assert patches(kube) == [("", "serviceaccounts", "patch")]
    restored = kube.obj(ACCOUNTS, "svc-serving")
    assert restored is not None and restored["secrets"] == [{"name": "team-creds"}]
    assert restored["metadata"]["labels"]["app.kubernetes.io/component"] == "serving"
    assert secret_calls(kube) == []


def test_another_credentials_secret_is_followed_by_the_account() -> None:
    """The operator's default Secret changed (or the job names another): the account lists the
    new name at the next ensure, still without touching either Secret."""
    kube = FakeKube()
    ensure(kube, "platform-s3")
    assert kube.obj(ACCOUNTS, "svc-serving")["secrets"] == [{"name": "platform-s3"}]  # type: ignore[index]
    ensure(kube, "team-creds")
    assert kube.obj(ACCOUNTS, "svc-serving")["secrets"] == [{"name": "team-creds"}]  # type: ignore[index]
    assert secret_calls(kube) == []


def test_without_a_credentials_secret_no_account() -> None:
    """Credentials from the operator's own environment: nothing of the operator's reaches the
    tenant's namespace; KServe's own defaults (its config, IRSA) apply."""
    kube = FakeKube()
    ensure(kube, secret=None)
    assert not kube.objects.get(SECRETS) and not kube.objects.get(ACCOUNTS)
    service = kube.obj(ISVCS, "svc")
    assert service is not None and "serviceAccountName" not in service["spec"]["predictor"]
    assert secret_calls(kube) == []


def failing(kube: FakeKube, status: int) -> None:
    original = kube.request

    async def request(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if "serving.kserve.io" in path:
            raise KubeError(status, "boom")
        return await original(method, path, *args, **kwargs)

    kube.request = request  # type: ignore[method-assign]


def test_kserve_missing_or_failing_is_a_condition_not_an_exception() -> None:
    kube = FakeKube()
    failing(kube, 404)
    state = ensure(kube)
    assert (state.status, state.reason) == ("False", "KServeNotInstalled")
    assert state.message == (
        "the InferenceService resource (serving.kserve.io/v1beta1) is not installed; "
        "install KServe to serve the adapter"
    )
    kube = FakeKube()
    failing(kube, 500)
    state = ensure(kube)
    assert (state.status, state.reason) == ("False", "ServingError")
    assert state.message == "cannot create InferenceService: HTTP 500: boom"


def test_ready_inference_service_reports_its_url() -> None:
    kube = FakeKube()
    ensure(kube)
    service = kube.obj(ISVCS, "svc")
    assert service is not None
    service["status"] = {"url": "http://svc.x", "conditions": [{"type": "Ready", "status": "True"}]}
    assert ensure(kube) == ServingState("True", "Ready", "serving at http://svc.x", "http://svc.x")


def remove(kube: FakeKube, uid: str = "uid-svc") -> list[NameConflict]:
    return asyncio.run(remove_serving(kube, "svc", NS, uid))


def test_remove_serving_deletes_what_ensure_made() -> None:
    kube = FakeKube()
    ensure(kube)
    assert remove(kube) == []
    assert not kube.objects[ISVCS] and not kube.objects[ACCOUNTS]
    assert remove(kube) == []  # nothing left: fine


def test_remove_serving_without_kserve_still_removes_the_account() -> None:
    kube = FakeKube()
    ensure(kube)
    failing(kube, 404)
    assert remove(kube) == []
    assert not kube.objects[ACCOUNTS]
    kube = FakeKube()
    failing(kube, 500)
    with pytest.raises(KubeError):
        remove(kube)


# ------------------------------------------------------- ownership: not ours, not touched

PRODUCTION_SECRET: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "svc-s3", "namespace": NS, "uid": "uid-production"},
    "type": "Opaque",
    "data": {"AWS_ACCESS_KEY_ID": "cHJvZC1rZXk=", "AWS_SECRET_ACCESS_KEY": "cHJvZC1zZWNyZXQ="},
}
SKLEARN_ISVC: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "svc", "namespace": NS, "uid": "uid-sklearn"},
    "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://x"}}},
}
FOREIGN_ACCOUNT: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "ServiceAccount",
    "metadata": {"name": "svc-serving", "namespace": NS, "uid": "uid-ci"},
    "secrets": [{"name": "ci-registry"}],
}


def writes(kube: FakeKube) -> list[tuple[str, str, str]]:
    return [call for call in kube.calls if call[2] in ("patch", "delete", "update")]


def test_a_users_secret_named_like_the_old_copy_is_never_touched() -> None:
    """`<job>-s3` was the name of the copy earlier versions made: a user's Secret of that name is
    neither read, written nor in the way any more."""
    kube = FakeKube()
    kube.put(SECRETS, copy.deepcopy(PRODUCTION_SECRET))
    state = ensure(kube)
    assert state.reason == "Deploying"
    assert kube.obj(SECRETS, "svc-s3") == PRODUCTION_SECRET
    assert secret_calls(kube) == []
    assert remove(kube) == []
    assert kube.obj(SECRETS, "svc-s3") == PRODUCTION_SECRET
    assert secret_calls(kube) == [] and list(kube.objects[SECRETS]) == ["svc-s3"]


def test_the_old_copy_this_job_owns_is_left_to_the_garbage_collector() -> None:
    """Upgrade path: a `<job>-s3` an earlier version copied (controlled by this LoRAJob) is not
    deleted by the operator, which has no right to; it goes with the LoRAJob."""
    kube = FakeKube()
    legacy = copy.deepcopy(PRODUCTION_SECRET)
    legacy["metadata"]["ownerReferences"] = [
        {"kind": "LoRAJob", "name": "svc", "uid": "uid-svc", "controller": True}
    ]
    kube.put(SECRETS, copy.deepcopy(legacy))
    ensure(kube)
    assert remove(kube) == []
    assert kube.obj(SECRETS, "svc-s3") == legacy and secret_calls(kube) == []


def test_an_unowned_account_is_a_name_conflict_and_nothing_is_built_on_it() -> None:
    kube = FakeKube()
    kube.put(ACCOUNTS, copy.deepcopy(FOREIGN_ACCOUNT))
    state = ensure(kube)
    assert (state.status, state.reason) == ("False", "NameConflict")
    assert (
        "ServiceAccount default/svc-serving already exists and is not owned by this LoRAJob"
        in state.message
    )
    assert kube.obj(ACCOUNTS, "svc-serving") == FOREIGN_ACCOUNT
    assert writes(kube) == [] and not kube.objects.get(ISVCS)


def test_an_unowned_sklearn_inference_service_is_not_rewritten() -> None:
    kube = FakeKube()
    kube.put(ISVCS, copy.deepcopy(SKLEARN_ISVC))
    state = ensure(kube)
    assert (state.status, state.reason) == ("False", "NameConflict")
    assert "InferenceService default/svc" in state.message
    assert kube.obj(ISVCS, "svc") == SKLEARN_ISVC
    assert ("serving.kserve.io", "inferenceservices", "patch") not in kube.calls


def test_objects_of_an_earlier_lorajob_with_the_same_name_are_not_ours() -> None:
    """Deleted and recreated under the same name: the new LoRAJob has another uid, and what
    the old one left (the garbage collector may not have run yet) is not the new one's."""
    kube = FakeKube()
    ensure(kube)  # made by uid-svc
    before = copy.deepcopy(kube.objects)
    kube.calls.clear()
    state = asyncio.run(
        ensure_serving(kube, "svc", NS, "uid-new", spec(), ADAPTER, "r1", TEAM_SECRET)
    )
    assert state.reason == "NameConflict"
    assert "controlled by LoRAJob svc (uid uid-svc)" in state.message
    assert [(c.kind, c.name) for c in remove(kube, uid="uid-new")] == [
        ("InferenceService", "svc"),
        ("ServiceAccount", "svc-serving"),
    ]
    assert kube.objects == before and writes(kube) == []


def test_remove_serving_leaves_unowned_objects_alone() -> None:
    kube = FakeKube()
    kube.put(ACCOUNTS, copy.deepcopy(FOREIGN_ACCOUNT))
    kube.put(ISVCS, copy.deepcopy(SKLEARN_ISVC))
    left = remove(kube)
    assert [c.kind for c in left] == ["InferenceService", "ServiceAccount"]
    assert kube.obj(ACCOUNTS, "svc-serving") == FOREIGN_ACCOUNT
    assert kube.obj(ISVCS, "svc") == SKLEARN_ISVC
    assert writes(kube) == []


def test_a_patch_carries_the_resource_version_it_checked() -> None:
    """Optimistic concurrency: if the object is replaced between our read and our patch, the
    API server refuses the stale resourceVersion instead of letting us overwrite the new one."""
    kube = FakeKube()
    ensure(kube)
    service = kube.obj(ISVCS, "svc")
    assert service is not None
    service["metadata"]["resourceVersion"] = "41"
    service["spec"]["predictor"]["minReplicas"] = 9
    sent: list[Any] = []
    original = kube.request

    async def request(method: str, path: str, body: Any = None, *args: Any, **kw: Any) -> Any:
        if method == "PATCH":
            sent.append(body)
        return await original(method, path, body, *args, **kw)

    kube.request = request  # type: ignore[method-assign]
    ensure(kube)
    assert [b["metadata"]["resourceVersion"] for b in sent] == ["41"]


def test_removal_deletes_with_the_uid_it_checked() -> None:
    """A uid precondition on each delete: an object replaced between our read and our delete
    (same name, new uid) is refused by the API server instead of deleted."""
    kube = FakeKube()
    ensure(kube)
    stored = [kube.obj(ISVCS, "svc"), kube.obj(ACCOUNTS, "svc-serving")]
    uids = {obj["metadata"]["uid"] for obj in stored if obj is not None}
    sent: list[Any] = []
    original = kube.request

    async def request(method: str, path: str, body: Any = None, *args: Any, **kw: Any) -> Any:
        if method == "DELETE":
            sent.append(body)
        return await original(method, path, body, *args, **kw)

    kube.request = request  # type: ignore[method-assign]
    assert remove(kube) == []
    assert len(uids) == 2 and {b["preconditions"]["uid"] for b in sent} == uids


def test_names() -> None:
    assert ISVC == "serving.kserve.io/v1beta1/inferenceservices"
    assert serving_account_name("svc") == "svc-serving"
    job = "j" * 55  # 55 + len("-serving") = 63: kept whole
    assert serving_account_name(job) == f"{job}-serving"
    longer = serving_account_name("j" * 56)  # 64: cut to 54 + "-" + 8 hex digits
    assert len(longer) == 63 and longer.startswith("j" * 54 + "-")


def test_the_predictor_pod_is_pinned_field_by_field() -> None:
    """KServe's huggingfaceserver runs as uid 1000 with HOME /home/kserve; with a read-only root,
    vLLM's caches and temp files need these three emptyDirs, /dev/shm in memory."""
    kube = FakeKube()
    ensure(kube)
    service = kube.obj(ISVCS, "svc")
    assert service is not None
    predictor = service["spec"]["predictor"]
    assert predictor["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert predictor["automountServiceAccountToken"] is False
    assert predictor["volumes"] == [
        {"name": "tmp", "emptyDir": {}},
        {"name": "home", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    model = predictor["model"]
    assert model["env"] == [{"name": "HOME", "value": "/home/kserve"}]
    assert model["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "home", "mountPath": "/home/kserve"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]


def example_plan(file: str) -> tuple[Any, Any]:
    """An example's spec and its serving plan, as the reconciler stores it in status.plan."""
    job = load_lorajobs(str(Path(__file__).resolve().parents[2] / "examples" / file))[0]
    plan = PlanStatus.model_validate(plan_job(job.spec).to_status().to_wire())  # via the wire
    return job.spec, plan.serving


@pytest.mark.parametrize(
    ("file", "gpus", "cpu", "memory", "selector", "tp"),
    [
        # 25.2 GiB per GPU on one A100 (tests/memory/test_serving_plan.py works the terms out)
        (
            "lora-llama3-8b-a100.yaml",
            "1",
            "4",
            "12Gi",
            {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
            "1",
        ),
        # 131 GiB of 16-bit weights: tensor parallel over 4 H100, the spec's label kept beside
        (
            "lora-llama3-70b-zero3.yaml",
            "4",
            "10",
            "30Gi",
            {
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "node.kubernetes.io/instance-type": "p5.48xlarge",
            },
            "4",
        ),
    ],
)
def test_the_inference_service_follows_the_serving_plan(
    file: str, gpus: str, cpu: str, memory: str, selector: dict[str, str], tp: str
) -> None:
    job_spec, serving = example_plan(file)
    kube = FakeKube()
    state = asyncio.run(
        ensure_serving(kube, "svc", NS, "uid-svc", job_spec, ADAPTER, "r1", TEAM_SECRET, serving)
    )
    assert state.reason == "Deploying"
    predictor = kube.obj(ISVCS, "svc")["spec"]["predictor"]
    model = predictor["model"]
    assert model["resources"] == {
        "requests": {"cpu": cpu, "memory": memory, "nvidia.com/gpu": gpus},
        "limits": {"memory": memory, "nvidia.com/gpu": gpus},
    }
    assert predictor["nodeSelector"] == selector
    args = model["args"]
    assert args[args.index("--lora-modules") + 2 :] == [
        "--max-model-len=8192",
        "--max-num-seqs=8",
        "--max-loras=4",
        "--max-cpu-loras=8",
        f"--tensor-parallel-size={tp}",
        "--gpu-memory-utilization=0.90",
    ]


def test_without_a_serving_plan_one_gpu_and_vllms_defaults() -> None:
    """A status planned with serving off (or by an older operator): the old shape, unchanged."""
    kube = FakeKube()
    ensure(kube)
    model = kube.obj(ISVCS, "svc")["spec"]["predictor"]["model"]
    assert not [a for a in model["args"] if a.startswith(("--max-model-len", "--tensor"))]
    assert "cpu" not in model["resources"].get("requests", {})
