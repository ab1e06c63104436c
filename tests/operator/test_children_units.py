"""The child plugs (controller/children.py) in-process, fast: which fields each kind compares,
that server-filled fields and other people's keys are ignored, the merge patch that puts a
drifted field back, and create / restore / leave-alone against the in-memory API (`FakeKube`,
the real client above it). Expected patches are written out by hand."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import base_job

from lora_operator.api.loading import parse_lorajob
from lora_operator.api.operator_config import OperatorConfig
from lora_operator.controller.children import (
    ABSENT,
    CONFIG_MAP,
    INFERENCE_SERVICE,
    JOB,
    QUEUED_JOB,
    SERVICE,
    SERVING_ACCOUNT,
    TRAINER_ACCOUNT,
    Applied,
    Declared,
    Plug,
    apply,
    covers,
    drift_patch,
    ensure_run_children,
    restore,
    restored_fields,
    run_children,
    value_at,
)
from lora_operator.controller.manifests import RunContext
from lora_operator.controller.ownership import NameConflict
from lora_operator.memory import GpuCatalog, plan_job

NS = "ml"
UID = "uid-a"
OWNER = {"kind": "LoRAJob", "name": "a", "uid": UID, "controller": True}
OTHER = {"kind": "LoRAJob", "name": "a", "uid": "uid-old", "controller": True}
CMS = "/api/v1/namespaces/ml/configmaps"
SVCS = "/api/v1/namespaces/ml/services"
JOBS = "/apis/batch/v1/namespaces/ml/jobs"
SAS = "/api/v1/namespaces/ml/serviceaccounts"

# what an API server adds to every object; never compared
SERVER_META = {
    "uid": "server-uid",
    "resourceVersion": "77",
    "creationTimestamp": "2026-12-07T00:00:00Z",
    "generation": 3,
    "managedFields": [{"manager": "kubectl", "operation": "Update"}],
}


def meta(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": NS,
        "labels": labels if labels is not None else {"app": "lora", "run": "r1"},
        "annotations": {"hash": "abc"},
        "ownerReferences": [OWNER],
        **extra,
    }


def config_map() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta("a-r1-config"),
        "data": {"t.yaml": "x: 1\n"},
    }


def service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta("a-r1"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"job": "a", "run": "r1"},
            "ports": [{"name": "rdzv", "port": 29500, "targetPort": 29500, "protocol": "TCP"}],
        },
    }


def job() -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta("a-r1"),
        "spec": {"completions": 2, "template": {"spec": {"containers": [{"name": "trainer"}]}}},
    }


def served(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as an API server returns it: server metadata added."""
    copied = copy.deepcopy(obj)
    copied["metadata"].update(copy.deepcopy(SERVER_META))
    return copied


# ------------------------------------------------------------------------------ pure pieces


def test_value_at_walks_mappings_only() -> None:
    obj = {"a": {"b": {"c": 0}}, "l": [1]}
    assert value_at(obj, ("a", "b", "c")) == 0  # a falsy value is a value
    assert value_at(obj, ("a", "x")) is ABSENT
    assert value_at(obj, ("l", "0")) is ABSENT  # a list is not walked
    assert value_at(obj, ("a", "b", "c", "d")) is ABSENT  # 0 is not a mapping
    assert value_at(obj, ("a", "x"), False) is False
    assert value_at(obj, ()) == obj
    assert repr(ABSENT) == "ABSENT"


def test_covers_compares_declared_keys_and_lists_item_by_item() -> None:
    assert covers({"a": 1, "server": 2}, {"a": 1})  # an extra key is someone else's
    assert not covers({"a": 2}, {"a": 1})
    assert not covers({"b": 1}, {"a": 1})  # a declared key missing
    assert not covers({"a": None}, {"a": 1})
    assert not covers([{"a": 1}], {"a": 1})  # not a mapping at all
    assert covers({}, {})
    assert covers([{"port": 1, "nodePort": 9}], [{"port": 1}])
    assert not covers([{"port": 1}], [{"port": 1}, {"port": 2}])  # one item fewer
    assert not covers([{"port": 1}, {"port": 2}], [{"port": 1}])  # one item more
    assert not covers({"port": 1}, [{"port": 1}])
    assert not covers([{"port": 2}], [{"port": 1}])
    assert covers([], [])
    assert covers("x", "x") and not covers("x", "y") and not covers(None, False)
    assert not covers(True, 1.5)


def test_a_configmap_compares_data_whole_labels_by_key_and_ignores_server_fields() -> None:
    desired = config_map()
    actual = served(desired)
    actual["metadata"]["labels"]["team"] = "added-by-someone"  # not ours: kept
    actual["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied"] = "{}"
    assert drift_patch(CONFIG_MAP, desired, actual) == {}

    actual["data"] = {"t.yaml": "x: 2\n", "extra.yaml": "y"}
    actual["metadata"]["labels"]["run"] = "r9"
    del actual["metadata"]["annotations"]["hash"]
    patch = drift_patch(CONFIG_MAP, desired, actual)
    assert patch == {
        "metadata": {"labels": {"app": "lora", "run": "r1"}, "annotations": {"hash": "abc"}},
        "data": {"extra.yaml": None, "t.yaml": "x: 1\n"},  # the added key removed
    }
    assert restored_fields(CONFIG_MAP, patch) == ("metadata.labels", "metadata.annotations", "data")


def test_a_configmap_whose_data_is_gone_gets_it_back() -> None:
    desired = config_map()
    actual = served(desired)
    del actual["data"]
    assert drift_patch(CONFIG_MAP, desired, actual) == {"data": {"t.yaml": "x: 1\n"}}


def test_a_service_restores_selector_exactly_ports_and_publishing_ignores_cluster_fields() -> None:
    desired = service()
    actual = served(desired)
    actual["spec"].update(
        {
            "clusterIPs": ["None"],
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        }
    )
    assert drift_patch(SERVICE, desired, actual) == {}

    actual["spec"]["selector"] = {"job": "a", "run": "r1", "extra": "narrows"}
    actual["spec"]["ports"][0]["port"] = 8080
    actual["spec"]["publishNotReadyAddresses"] = False
    assert drift_patch(SERVICE, desired, actual) == {
        "spec": {
            "selector": {"extra": None, "job": "a", "run": "r1"},
            "ports": [{"name": "rdzv", "port": 29500, "targetPort": 29500, "protocol": "TCP"}],
            "publishNotReadyAddresses": True,
        }
    }
    del actual["spec"]["publishNotReadyAddresses"]  # absent means false to the API server
    actual["spec"]["selector"] = {"job": "a", "run": "r1"}
    actual["spec"]["ports"][0]["port"] = 29500
    assert drift_patch(SERVICE, desired, actual) == {"spec": {"publishNotReadyAddresses": True}}


def test_a_job_restores_labels_annotations_and_suspend_never_its_template() -> None:
    desired = job()
    actual = served(desired)
    actual["spec"]["template"]["spec"]["containers"][0]["image"] = "edited"  # immutable: not ours
    actual["spec"]["completions"] = 5
    actual["status"] = {"active": 2}
    assert drift_patch(JOB, desired, actual) == {}
    actual["spec"]["suspend"] = False  # what a real API server fills in: same as absent
    assert drift_patch(JOB, desired, actual) == {}

    actual["spec"]["suspend"] = True
    actual["metadata"]["labels"] = {}
    assert drift_patch(JOB, desired, actual) == {
        "metadata": {"labels": {"app": "lora", "run": "r1"}},
        "spec": {"suspend": False},
    }
    # under Kueue the suspend field is Kueue's: only the labels come back
    assert drift_patch(QUEUED_JOB, desired, actual) == {
        "metadata": {"labels": {"app": "lora", "run": "r1"}}
    }


def test_accounts_compare_their_own_fields() -> None:
    trainer = {"metadata": meta("a-trainer"), "automountServiceAccountToken": False}
    actual = served(trainer)
    actual["secrets"] = [{"name": "a-trainer-token-x"}]  # an old token controller's: not declared
    assert drift_patch(TRAINER_ACCOUNT, trainer, actual) == {}
    actual["automountServiceAccountToken"] = True
    assert drift_patch(TRAINER_ACCOUNT, trainer, actual) == {"automountServiceAccountToken": False}

    serving = {"metadata": meta("a-serving"), "secrets": [{"name": "team-creds"}]}
    actual = served(serving)
    assert drift_patch(SERVING_ACCOUNT, serving, actual) == {}
    actual["secrets"] = [{"name": "team-creds"}, {"name": "someone-elses"}]
    assert drift_patch(SERVING_ACCOUNT, serving, actual) == {"secrets": [{"name": "team-creds"}]}


def test_an_inference_service_keeps_kserve_defaults_and_restores_its_spec() -> None:
    desired = {
        "metadata": meta("a"),
        "spec": {"predictor": {"minReplicas": 1, "model": {"args": ["--backend=vllm"]}}},
    }
    actual = served(desired)
    actual["spec"]["predictor"]["model"]["runtime"] = "kserve-huggingfaceserver"  # defaulted
    actual["spec"]["predictor"]["model"]["protocolVersion"] = "v2"
    assert drift_patch(INFERENCE_SERVICE, desired, actual) == {}
    actual["spec"]["predictor"]["minReplicas"] = 0
    assert drift_patch(INFERENCE_SERVICE, desired, actual) == {"spec": desired["spec"]}


def test_a_field_the_desired_object_lacks_is_not_compared() -> None:
    plug = Plug("Thing", "v1/things", (Declared(("spec", "x")), Declared(("spec", "y"), True)))
    assert drift_patch(plug, {"metadata": {}}, {"spec": {"x": 1, "y": 2}}) == {}
    # one field absent from the desired object does not stop the next from being compared
    assert drift_patch(plug, {"spec": {"y": 3}}, {"spec": {"x": 1, "y": 2}}) == {"spec": {"y": 3}}
    assert Declared(("a", "b")).dotted == "a.b"


# ------------------------------------------------------------------------------ against the API


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def writes(kube: FakeKube) -> list[tuple[str, str, str]]:
    return [call for call in kube.calls if call[2] != "get"]


def test_apply_creates_a_missing_child() -> None:
    kube = FakeKube()
    applied = run(apply(kube, CONFIG_MAP, NS, config_map(), UID))
    assert applied.created and applied.restored == () and applied.changed
    assert kube.calls == [("", "configmaps", "get"), ("", "configmaps", "create")]
    stored = kube.obj(CMS, "a-r1-config")
    assert stored is not None and stored["data"] == {"t.yaml": "x: 1\n"}
    assert applied.obj["metadata"]["uid"] == stored["metadata"]["uid"]
    assert applied.describe() == "recreated ConfigMap ml/a-r1-config (it was missing)"


def test_apply_leaves_an_undrifted_child_with_one_read() -> None:
    kube = FakeKube()
    kube.put(CMS, served(config_map()))
    applied = run(apply(kube, CONFIG_MAP, NS, config_map(), UID))
    assert not applied.changed and applied.obj == served(config_map())
    assert kube.calls == [("", "configmaps", "get")]


def test_apply_patches_back_a_drifted_child_with_the_version_it_compared() -> None:
    kube = FakeKube()
    edited = served(service())
    edited["spec"]["selector"] = {"job": "b"}
    kube.put(SVCS, edited)
    sent: list[Any] = []
    original = kube.request

    async def request(method: str, path: str, body: Any = None, *args: Any, **kw: Any) -> Any:
        if method == "PATCH":
            sent.append(copy.deepcopy(body))
        return await original(method, path, body, *args, **kw)

    kube.request = request  # type: ignore[method-assign]
    applied = run(apply(kube, SERVICE, NS, service(), UID))
    assert sent == [
        {
            "spec": {"selector": {"job": "a", "run": "r1"}},
            "metadata": {"resourceVersion": "77"},
        }
    ]
    assert applied.restored == ("spec.selector",) and not applied.created
    assert applied.obj["spec"]["selector"] == {"job": "a", "run": "r1"}
    assert applied.obj["metadata"]["uid"] == "server-uid"  # the same object, patched
    assert applied.describe() == "restored spec.selector of Service ml/a-r1"


def test_a_patch_without_a_resource_version_sends_none() -> None:
    kube = FakeKube()
    edited = copy.deepcopy(config_map())
    edited["data"] = {}
    kube.put(CMS, edited)
    sent: list[Any] = []
    original = kube.request

    async def request(method: str, path: str, body: Any = None, *args: Any, **kw: Any) -> Any:
        if method == "PATCH":
            sent.append(copy.deepcopy(body))
        return await original(method, path, body, *args, **kw)

    kube.request = request  # type: ignore[method-assign]
    run(apply(kube, CONFIG_MAP, NS, config_map(), UID))
    assert sent == [{"data": {"t.yaml": "x: 1\n"}}]


@pytest.mark.parametrize("owner", [OTHER, None])
def test_a_child_someone_else_controls_is_never_written(owner: dict[str, Any] | None) -> None:
    kube = FakeKube()
    foreign = served(service())
    foreign["metadata"]["ownerReferences"] = [owner] if owner else []
    foreign["spec"]["selector"] = {"app": "theirs"}
    kube.put(SVCS, copy.deepcopy(foreign))
    with pytest.raises(NameConflict) as raised:
        run(apply(kube, SERVICE, NS, service(), UID))
    assert raised.value.kind == "Service" and raised.value.name == "a-r1"
    assert raised.value.namespace == NS
    assert kube.obj(SVCS, "a-r1") == foreign
    assert writes(kube) == []


def test_a_child_created_by_someone_between_read_and_create_is_compared() -> None:
    """GET says missing, the POST meets an object of that name (409): ours is restored,
    someone else's raises NameConflict, neither is created twice."""
    kube = FakeKube()
    original = kube.request
    raced = served(config_map())
    raced["data"] = {"t.yaml": "stale"}

    async def request(method: str, path: str, body: Any = None, *args: Any, **kw: Any) -> Any:
        if method == "POST" and "configmaps" in path and kube.obj(CMS, "a-r1-config") is None:
            kube.put(CMS, copy.deepcopy(raced))
        return await original(method, path, body, *args, **kw)

    kube.request = request  # type: ignore[method-assign]
    applied = run(apply(kube, CONFIG_MAP, NS, config_map(), UID))
    assert not applied.created and applied.restored == ("data",)
    assert kube.obj(CMS, "a-r1-config")["data"] == {"t.yaml": "x: 1\n"}  # type: ignore[index]


def test_restore_checks_the_controller_of_the_object_given() -> None:
    kube = FakeKube()
    theirs = served(job())
    theirs["metadata"]["ownerReferences"] = [OTHER]
    with pytest.raises(NameConflict):
        run(restore(kube, JOB, NS, job(), theirs, UID))
    assert kube.calls == []


# ------------------------------------------------------------------------------ a run's plugs


def context(**config: Any) -> RunContext:
    spec = parse_lorajob(base_job("a"), "test").spec
    plan = plan_job(spec, GpuCatalog.default()).to_status()
    cfg = OperatorConfig.model_validate(
        {
            "trainerImage": "trainer:1",
            "s3": {"endpoint": "http://minio.s3:9000", "credentialsSecret": {"name": "s3"}},
            **config,
        }
    )
    return RunContext(
        name="a",
        namespace=NS,
        uid=UID,
        run_id="r1",
        spec=spec,
        plan=plan,
        config=cfg,
        output_uri="s3://lora-test/runs/ml/a/r1",
    )


CTX = context()


def test_a_runs_plugs_in_creation_order() -> None:
    plugs = [(plug, body["metadata"]["name"]) for plug, body in run_children(CTX)]
    assert plugs == [
        (TRAINER_ACCOUNT, "a-trainer"),
        (CONFIG_MAP, "a-r1-config"),
        (SERVICE, "a-r1"),
        (JOB, "a-r1"),
    ]
    named = context(trainerServiceAccount="shared")  # no account of the job's own
    assert [plug for plug, _ in run_children(named)] == [CONFIG_MAP, SERVICE, JOB]
    queued = RunContext(**{**CTX.__dict__, "queue_name": "team-q"})
    assert [plug for plug, _ in run_children(queued)][-1] is QUEUED_JOB


def test_ensure_creates_every_child_then_only_reads_them() -> None:
    kube = FakeKube()
    made = run(ensure_run_children(kube, CTX))
    assert [(a.plug, a.created) for a in made.applied] == [
        (TRAINER_ACCOUNT, True),
        (CONFIG_MAP, True),
        (SERVICE, True),
        (JOB, True),
    ]
    assert made.conflicts == [] and made.job == kube.obj(JOBS, "a-r1")
    job_obj = kube.obj(JOBS, "a-r1")
    assert job_obj is not None
    kube.calls.clear()
    kept = run(ensure_run_children(kube, CTX, copy.deepcopy(job_obj)))
    assert [a.changed for a in kept.applied] == [False, False, False, False]
    assert kept.job == job_obj
    # the Job, given as just read, is not read again
    assert kube.calls == [
        ("", "serviceaccounts", "get"),
        ("", "configmaps", "get"),
        ("", "services", "get"),
    ]


def test_ensure_recreates_a_deleted_service_and_puts_back_an_edited_job() -> None:
    kube = FakeKube()
    run(ensure_run_children(kube, CTX))
    old_uid = kube.obj(SVCS, "a-r1")["metadata"]["uid"]  # type: ignore[index]
    del kube.objects[SVCS]["a-r1"]
    job_obj = kube.obj(JOBS, "a-r1")
    assert job_obj is not None
    job_obj["spec"]["suspend"] = True
    kept = run(ensure_run_children(kube, CTX, copy.deepcopy(job_obj)))
    changed = {a.plug.kind: (a.created, a.restored) for a in kept.applied if a.changed}
    assert changed == {"Service": (True, ()), "Job": (False, ("spec.suspend",))}
    service_obj = kube.obj(SVCS, "a-r1")
    assert service_obj is not None and service_obj["metadata"]["uid"] != old_uid
    assert service_obj["metadata"]["ownerReferences"][0]["uid"] == UID
    assert kept.job is not None and kept.job["spec"]["suspend"] is False


def test_a_foreign_config_map_keeps_a_missing_job_from_being_created() -> None:
    """Its pods would mount someone else's config: no Job; the other children are still kept,
    and a Job that exists is still kept too (a conflict does not stop the others)."""
    kube = FakeKube()
    theirs = served(config_map())
    theirs["metadata"]["name"] = "a-r1-config"
    theirs["metadata"]["ownerReferences"] = []
    kube.put(CMS, copy.deepcopy(theirs))
    made = run(ensure_run_children(kube, CTX))
    assert [c.kind for c in made.conflicts] == ["ConfigMap"]
    assert made.job is None and kube.obj(JOBS, "a-r1") is None
    assert ("batch", "jobs", "create") not in kube.calls
    assert [a.plug for a in made.applied] == [TRAINER_ACCOUNT, SERVICE]
    assert kube.obj(CMS, "a-r1-config") == theirs

    existing = {**job(), "metadata": {**meta("a-r1"), "labels": {}}}
    kube.put(JOBS, copy.deepcopy(existing))
    kept = run(ensure_run_children(kube, CTX, existing))
    assert [c.kind for c in kept.conflicts] == ["ConfigMap"]
    assert [a.plug for a in kept.applied] == [TRAINER_ACCOUNT, SERVICE, JOB]


def test_a_job_made_by_someone_between_read_and_create_is_ours_when_it_is() -> None:
    """The Job is missing when read, then exists at the create (another replica of the
    operator made it): ours, so it is compared and kept, not reported as a conflict."""
    kube = FakeKube()
    original = kube.request
    made = next(obj for plug, obj in run_children(CTX) if plug is JOB)

    async def request(method: str, path: str, body: Any = None, *args: Any, **kw: Any) -> Any:
        if method == "POST" and path == JOBS and kube.obj(JOBS, "a-r1") is None:
            kube.put(JOBS, served(made))
        return await original(method, path, body, *args, **kw)

    kube.request = request  # type: ignore[method-assign]
    result = run(ensure_run_children(kube, CTX))
    assert result.conflicts == []
    assert result.job == served(made) and not result.applied[-1].changed


def test_a_foreign_job_given_is_a_conflict_and_no_job_is_returned() -> None:
    kube = FakeKube()
    theirs = served(job())
    theirs["metadata"]["ownerReferences"] = [OTHER]
    result = run(ensure_run_children(kube, CTX, theirs))
    assert [c.kind for c in result.conflicts] == ["Job"] and result.job is None
    assert ("batch", "jobs", "patch") not in kube.calls


def test_applied_says_what_it_did() -> None:
    bare = Applied(JOB, {"metadata": {}})
    assert bare.describe() == "restored  of Job /"
    assert Applied(JOB, {}, created=True).describe() == "recreated Job / (it was missing)"
    obj = {"metadata": {"name": "x", "namespace": NS}}
    assert not Applied(JOB, obj).changed
    assert Applied(JOB, obj, restored=("a", "b")).describe() == "restored a, b of Job ml/x"
    assert Applied(JOB, obj, created=True).describe() == "recreated Job ml/x (it was missing)"
