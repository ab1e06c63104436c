"""The reconciler's decisions (`controller/decisions.py`, `workload.JobObservation.state`,
`ownership`), each against values worked out by hand: quota sums of multi-node and mixed jobs,
the exact TTL instant under a fake clock, the Kueue queue choice, what a Job's status means, and
which objects a retrain, suspend or TTL may delete. Fast and in-process (the mutation target
`reconcile_decisions` runs them for every mutant)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from fake_kube import FakeKube
from operator_harness import SECRET, base_job

from lora_contract.types import Phase, PlanStatus, RunRecord, Strategy
from lora_operator.api.hashing import training_spec_hash
from lora_operator.api.loading import parse_lorajob
from lora_operator.api.operator_config import KueueConfig, OperatorConfig, Quota, Quotas
from lora_operator.controller import decisions
from lora_operator.controller.config import ConfigSource
from lora_operator.controller.decisions import (
    ServingAction,
    deletion_precondition,
    demand_from,
    kueue_queue,
    needs_new_run,
    plan_demand,
    planning_failed_before,
    quota_gpus,
    run_to_stop,
    serving_action,
    serving_run_id,
    ttl_deadline,
    ttl_expired,
)
from lora_operator.controller.events import post_event
from lora_operator.controller.ownership import (
    NameConflict,
    controlled_by,
    controller_reference,
    create_owned,
    delete_owned,
    owner_description,
)
from lora_operator.controller.quota import admit, usage_by_namespace
from lora_operator.controller.reconcile import Reconciler
from lora_operator.controller.workload import JobObservation, JobState, pod_failure_message

# 2026-01-01T00:00:00Z in epoch seconds, by hand: 56 years of 365 days plus the 14 leap days
# of 1972..2024 = 20454 days x 86400 s.
NEW_YEAR_2026 = 20454 * 86400
assert NEW_YEAR_2026 == 1_767_225_600


def plan(gpu_type: str, nodes: int, per_node: int) -> PlanStatus:
    """A plan as the planner stores it: totalGpus = nodes x gpusPerNode."""
    return PlanStatus(
        gpu_type=gpu_type,
        gpu_memory_gib=80.0,
        nodes=nodes,
        gpus_per_node=per_node,
        total_gpus=nodes * per_node,
        strategy=Strategy.ddp,
        per_gpu_peak_gib=10.0,
        headroom_gib=5.0,
    )


def lorajob(name: str, phase: str | None, plan_wire: Any, created: str) -> dict[str, Any]:
    status: dict[str, Any] = {"plan": plan_wire}
    if phase is not None:
        status["phase"] = phase
    meta = {"namespace": "team", "name": name, "creationTimestamp": created}
    return {"metadata": meta, "status": status}


def stored(gpu_type: str, nodes: int, per_node: int) -> dict[str, Any]:
    return plan(gpu_type, nodes, per_node).to_wire()


# ------------------------------------------------------------------ quota demand


def test_a_multi_node_plan_claims_the_gpus_of_every_node() -> None:
    demand = plan_demand(plan("A100-80GB", 2, 4), "team", "big", "2026-01-01T00:00:00Z")
    assert (demand.namespace, demand.name, demand.gpu_type) == ("team", "big", "A100-80GB")
    assert (demand.gpus, demand.created, demand.holding) == (8, "2026-01-01T00:00:00Z", False)


def test_a_cpu_plan_claims_no_gpus_whatever_its_process_count() -> None:
    demand = plan_demand(plan("cpu", 2, 3), "team", "small", "t")
    assert (demand.gpu_type, demand.gpus) == ("cpu", 0)
    assert quota_gpus("cpu", 6) == 0
    assert quota_gpus("L4", 6) == 6
    assert quota_gpus("CPU", 6) == 6  # the CPU type is exactly "cpu"


def test_stored_status_demands_running_hold_and_queued_wait() -> None:
    running = demand_from(lorajob("a", "Running", stored("A100-80GB", 3, 2), "t1"))
    assert running is not None
    assert (running.namespace, running.name, running.gpu_type) == ("team", "a", "A100-80GB")
    assert (running.gpus, running.created, running.holding) == (6, "t1", True)
    queued = demand_from(lorajob("b", "Queued", stored("H100-80GB", 2, 8), "t2"))
    assert queued is not None
    assert (queued.gpus, queued.holding, queued.gpu_type) == (16, False, "H100-80GB")
    cpu = demand_from(lorajob("c", "Running", stored("cpu", 2, 2), "t3"))
    assert cpu is not None and (cpu.gpus, cpu.holding) == (0, True)


@pytest.mark.parametrize("phase", [None, "Pending", "Succeeded", "Failed", "Suspended", "Unknown"])
def test_other_phases_neither_hold_nor_wait(phase: str | None) -> None:
    assert demand_from(lorajob("a", phase, stored("A100-80GB", 1, 1), "t")) is None


@pytest.mark.parametrize("bad_plan", [{}, None, "8 GPUs", []])
def test_a_missing_or_malformed_plan_counts_nothing(bad_plan: Any) -> None:
    assert demand_from(lorajob("a", "Running", bad_plan, "t")) is None


@pytest.mark.parametrize("total", ["eight", None, [8]])
def test_an_unreadable_gpu_count_counts_nothing(total: Any) -> None:
    wire = {**stored("A100-80GB", 1, 8), "totalGpus": total}
    assert demand_from(lorajob("a", "Running", wire, "t")) is None


def test_a_plan_without_type_or_count_and_metadata_defaults() -> None:
    demand = demand_from({"status": {"phase": "Queued", "plan": {"nodes": 1}}})
    assert demand is not None
    assert (demand.namespace, demand.name, demand.created) == ("", "", "")
    assert (demand.gpu_type, demand.gpus, demand.holding) == ("", 0, False)
    assert demand_from({"status": "Running", "metadata": []}) is None
    odd = demand_from({"metadata": "x", "status": {"phase": "Running", "plan": {"gpuType": "L4"}}})
    assert odd is not None and (odd.name, odd.gpus) == ("", 0)


def test_mixed_jobs_sum_per_type_and_admit_by_hand() -> None:
    """Team quota 16 GPUs, 10 A100. Held: 2x4 A100 (8) + 3x2 H100 (6) + a 2x3 CPU job (0) =
    14 GPUs, 8 of them A100. An older queued 1x1 A100 job is reserved first: 15 GPUs, 9 A100.
    A new 1x2 A100 job would make 11 A100 > 10: refused, second in the queue. A new 1x1 H100
    job makes 16 <= 16: admitted."""
    jobs = [
        lorajob("a", "Running", stored("A100-80GB", 2, 4), "2026-01-01T00:00:01Z"),
        lorajob("b", "Running", stored("H100-80GB", 3, 2), "2026-01-01T00:00:02Z"),
        lorajob("c", "Running", stored("cpu", 2, 3), "2026-01-01T00:00:03Z"),
        lorajob("d", "Queued", stored("A100-80GB", 1, 1), "2026-01-01T00:00:04Z"),
        lorajob("e", "Succeeded", stored("A100-80GB", 4, 8), "2026-01-01T00:00:05Z"),
    ]
    demands = [d for d in map(demand_from, jobs) if d is not None]
    assert [d.name for d in demands] == ["a", "b", "c", "d"]
    assert usage_by_namespace(demands) == {("team", "A100-80GB"): 8, ("team", "H100-80GB"): 6}
    quotas = Quotas(namespaces={"team": Quota(gpus=16, gpu_types={"A100-80GB": 10})})
    late = "2026-01-01T00:00:09Z"
    refused = admit(plan_demand(plan("A100-80GB", 1, 2), "team", "f", late), demands, quotas)
    assert not refused.admitted and refused.queue_position == 2
    assert refused.message == "needs 2 A100-80GB GPUs; namespace team uses 9 of 10 A100-80GB"
    fits = admit(plan_demand(plan("H100-80GB", 1, 1), "team", "g", late), demands, quotas)
    assert fits.admitted and fits.message == "admitted: 1 H100-80GB GPUs"
    # two nodes of one GPU each is 2 GPUs, not 1: 15 + 2 > 16
    over = admit(plan_demand(plan("H100-80GB", 2, 1), "team", "h", late), demands, quotas)
    assert over.message == "needs 2 H100-80GB GPUs; namespace team uses 15 of 16 GPUs"


def test_mapping_keeps_dicts_and_drops_anything_else() -> None:
    section = {"a": 1}
    assert decisions.mapping(section) is section
    assert decisions.mapping([("a", 1)]) == {} and decisions.mapping(None) == {}


# ------------------------------------------------------------------ Kueue queue


@pytest.mark.parametrize(
    ("spec_queue", "enabled", "default", "expected"),
    [
        ("team-q", False, None, "team-q"),  # the spec names one: Kueue labels it
        ("team-q", True, "shared", "team-q"),  # the spec wins over the default
        (None, True, "shared", "shared"),  # Kueue on, spec silent: the default
        ("", True, "shared", "shared"),  # an empty name is no name
        (None, True, None, None),  # no queue to use (validation refuses it before)
        (None, False, "shared", None),  # Kueue off: the default is not used
        (None, False, None, None),
    ],
)
def test_queue_choice(
    spec_queue: str | None, enabled: bool, default: str | None, expected: str | None
) -> None:
    kueue = KueueConfig(enabled=enabled, default_queue=default)
    assert kueue_queue(spec_queue, kueue) == expected


# ------------------------------------------------------------------ TTL


def test_ttl_deadline_is_completion_plus_ttl_to_the_second() -> None:
    assert ttl_deadline(3600, "2026-01-01T00:00:00Z") == NEW_YEAR_2026 + 3600
    assert ttl_deadline(0, "2026-01-01T01:00:00Z") == NEW_YEAR_2026 + 3600
    assert ttl_deadline(None, "2026-01-01T00:00:00Z") is None
    assert ttl_deadline(60, None) is None
    assert ttl_deadline(60, "yesterday") is None


@pytest.mark.parametrize(
    ("now", "expired"),
    [
        (NEW_YEAR_2026 + 3599, False),  # one second before: kept
        (NEW_YEAR_2026 + 3599.5, False),
        (NEW_YEAR_2026 + 3600, True),  # at the instant: deleted
        (NEW_YEAR_2026 + 3601, True),
    ],
)
def test_ttl_expires_at_the_instant(now: float, expired: bool) -> None:
    assert ttl_expired(3600, "2026-01-01T00:00:00Z", now) is expired


def test_no_ttl_or_no_completion_never_expires() -> None:
    far = NEW_YEAR_2026 * 2.0
    assert not ttl_expired(None, "2026-01-01T00:00:00Z", far)
    assert not ttl_expired(0, None, far)
    assert ttl_expired(0, "2026-01-01T00:00:00Z", NEW_YEAR_2026)


def test_deletion_precondition_is_the_jobs_uid() -> None:
    assert deletion_precondition("uid-1") == "uid-1"
    assert deletion_precondition("") is None


# ------------------------------------------------------------------ runs


def record(
    run_id: str, phase: Phase, adapter: str | None = None, spec_hash: str = "h1"
) -> RunRecord:
    return RunRecord(
        id=run_id, spec_hash=spec_hash, output_uri="s3://b/p", phase=phase, adapter_uri=adapter
    )


@pytest.mark.parametrize(
    ("phase", "stop"),
    [
        (Phase.Pending, True),
        (Phase.Queued, True),
        (Phase.Running, True),
        (Phase.Suspended, True),
        (Phase.Succeeded, False),
        (Phase.Failed, False),
    ],
)
def test_a_retrain_stops_only_an_unfinished_run(phase: Phase, stop: bool) -> None:
    assert run_to_stop(record("r1", phase)) is stop


def test_a_new_run_only_for_a_first_run_or_a_new_hash() -> None:
    assert needs_new_run(None, "h1")
    assert not needs_new_run(record("r1", Phase.Running, spec_hash="h1"), "h1")
    assert needs_new_run(record("r1", Phase.Succeeded, spec_hash="h1"), "h2")


def test_planning_is_not_retried_for_the_spec_it_failed_on() -> None:
    assert planning_failed_before("h1", Phase.Failed, "h1")
    assert not planning_failed_before("h1", Phase.Failed, "h2")  # the spec changed
    assert not planning_failed_before("h1", Phase.Succeeded, "h1")
    assert not planning_failed_before(None, Phase.Failed, "h1")


# ------------------------------------------------------------------ serving


@pytest.mark.parametrize(
    ("enabled", "succeeded", "adapter", "isvc", "reason", "expected"),
    [
        (True, True, "s3://b/r1/final", None, None, ServingAction.ENSURE),
        # a failed retrain still serves the last good adapter
        (True, False, "s3://b/r1/final", "j", "Ready", ServingAction.ENSURE),
        (True, False, None, None, None, ServingAction.NOTHING),
        (True, True, None, None, None, ServingAction.NOTHING),
        (False, True, "s3://b/r1/final", "j", "Ready", ServingAction.STOP),
        (False, True, "s3://b/r1/final", None, "NameConflict", ServingAction.STOP),
        (False, True, "s3://b/r1/final", None, "Disabled", ServingAction.NOTHING),
        (False, True, "s3://b/r1/final", None, None, ServingAction.NOTHING),
        (False, False, None, "j", "Ready", ServingAction.NOTHING),
        (False, True, None, "j", None, ServingAction.STOP),
    ],
)
def test_serving_action(
    enabled: bool,
    succeeded: bool,
    adapter: str | None,
    isvc: str | None,
    reason: str | None,
    expected: ServingAction,
) -> None:
    action = serving_action(
        enabled=enabled,
        succeeded=succeeded,
        adapter=adapter,
        inference_service=isvc,
        serving_reason=reason,
    )
    assert action is expected


def test_the_served_run_is_the_first_that_made_the_adapter() -> None:
    runs = [
        record("r1", Phase.Succeeded, "s3://b/r1/final"),
        record("r2", Phase.Succeeded, "s3://b/r2/final"),
        record("r3", Phase.Succeeded, "s3://b/r2/final"),
        record("r4", Phase.Failed),
    ]
    assert serving_run_id(runs, "s3://b/r2/final", "r4") == "r2"
    assert serving_run_id(runs, "s3://elsewhere/final", "r4") == "r4"
    assert serving_run_id([], "s3://b/r1/final", "r1") == "r1"


# ------------------------------------------------------------------ what a Job's status means


def job(spec: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j-r1"}, "spec": spec or {}, "status": status}


COMPLETE = {"type": "Complete", "status": "True"}
FAILED = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "m"}
T0 = "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("the_job", "state", "started", "failed_pods"),
    [
        (job(), JobState.STARTING, False, 0),
        # Kueue has not admitted it: waiting, whatever the status says
        (job({"suspend": True}), JobState.WAITING_FOR_KUEUE, False, 0),
        (job({"suspend": True}, active=1, startTime=T0), JobState.WAITING_FOR_KUEUE, True, 0),
        (job({"suspend": False}, active=2, startTime=T0), JobState.RUNNING, True, 0),
        # between retries: no pod active, one failed
        (job(failed=1, startTime=T0), JobState.STARTING, True, 1),
        (job(active=1, failed=2, startTime=T0), JobState.RUNNING, True, 2),
        # more failed pods than backoffLimitPerIndex, but no Failed condition: the Job controller
        # has not given up (a disruption the podFailurePolicy ignores, or retries of other
        # indexes): still retrying, not failed
        (job({"backoffLimitPerIndex": 3}, failed=4, active=1), JobState.RUNNING, True, 4),
        # a preempted pod (DisruptionTarget, ignored by the podFailurePolicy) is not counted
        (job(active=1, failed=0, startTime=T0), JobState.RUNNING, True, 0),
        (job(succeeded=2, conditions=[COMPLETE]), JobState.SUCCEEDED, True, 0),
        (job(conditions=[COMPLETE]), JobState.SUCCEEDED, True, 0),
        (job(failed=4, conditions=[FAILED]), JobState.FAILED, True, 4),
        # FailureTarget comes before Failed; the run fails on Failed only
        (
            job(active=1, conditions=[{"type": "FailureTarget", "status": "True"}]),
            JobState.RUNNING,
            True,
            0,
        ),
        (job(conditions=[{"type": "Failed", "status": "False"}]), JobState.STARTING, True, 0),
        (job(conditions=[{"type": "Complete", "status": "False"}]), JobState.STARTING, True, 0),
        (job(succeeded=1), JobState.STARTING, True, 0),
        (job(startTime=T0), JobState.STARTING, True, 0),
    ],
)
def test_job_observation_table(
    the_job: dict[str, Any], state: JobState, started: bool, failed_pods: int
) -> None:
    seen = JobObservation.of(the_job)
    assert (seen.name, seen.state, seen.started, seen.failed_pods) == (
        "j-r1",
        state,
        started,
        failed_pods,
    )


def test_complete_wins_over_failed_and_the_failure_is_the_condition() -> None:
    both = JobObservation.of(job(conditions=[FAILED, COMPLETE]))
    assert both.state is JobState.SUCCEEDED
    failed = JobObservation.of(job(conditions=[FAILED]))
    assert failed.failure == FAILED and not failed.complete


def test_null_status_fields_read_as_zero() -> None:
    seen = JobObservation.of({"metadata": {"name": "x"}, "spec": None, "status": None})
    assert (seen.suspended, seen.started, seen.active, seen.failed_pods) == (False, False, 0, 0)
    nulls = JobObservation.of(job(active=None, failed=None, conditions=None))
    assert (nulls.active, nulls.failed_pods, nulls.started, nulls.state) == (
        0,
        0,
        False,
        JobState.STARTING,
    )


@pytest.mark.parametrize(
    ("failed", "restarts", "new"),
    [(0, 0, False), (1, 0, True), (2, 2, False), (3, 2, True), (1, 2, False)],
)
def test_a_retry_is_reported_once_per_new_failed_pod(failed: int, restarts: int, new: bool) -> None:
    assert JobObservation.of(job(failed=failed)).new_failures(restarts) is new


# ------------------------------------------------------------------ which objects may be deleted

UID = "uid-mine"
CM = "/api/v1/namespaces/team/configmaps"


def owned(name: str, uid: str | None, controller: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "team", "uid": f"obj-{name}"}
    if uid is not None:
        meta["ownerReferences"] = [
            {"kind": "LoRAJob", "name": "j", "uid": "uid-other", "controller": False},
            {"kind": "LoRAJob", "name": "j", "uid": uid, "controller": controller},
        ]
    return {"kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


@pytest.mark.parametrize(
    ("obj", "mine"),
    [
        (owned("a", UID), True),
        (owned("a", "uid-other"), False),
        (owned("a", UID, controller=False), False),  # an owner, but not the controller
        (owned("a", None), False),  # no owner at all
        ({"metadata": None}, False),
        ({"metadata": {"ownerReferences": ["junk", {"uid": UID, "controller": True}]}}, True),
    ],
)
def test_controlled_by(obj: dict[str, Any], mine: bool) -> None:
    assert controlled_by(obj, UID) is mine
    assert not controlled_by(obj, "")  # no uid controls nothing


def test_the_controller_reference_and_its_description() -> None:
    reference = controller_reference(owned("a", UID))
    assert reference is not None and reference["uid"] == UID
    assert owner_description(owned("a", "uid-9")) == "it is controlled by LoRAJob j (uid uid-9)"
    assert owner_description(owned("a", None)) == "it has no controller owner"
    assert owner_description({"metadata": {"ownerReferences": [{"controller": True}]}}) == (
        "it is controlled by object ? (uid ?)"
    )


class RecordingKube(FakeKube):
    """FakeKube that keeps every request's method, path and body (delete preconditions)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, Any]] = []

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        self.requests.append((method, path, copy.deepcopy(body)))
        return await super().request(method, path, body, params, content_type)


def test_delete_owned_deletes_only_what_this_job_controls() -> None:
    kube = RecordingKube()
    for obj in (owned("mine", UID), owned("theirs", "uid-other"), owned("orphan", None)):
        kube.put(CM, obj)
    before = copy.deepcopy(kube.objects)

    async def go() -> None:
        assert await delete_owned(kube, "v1/configmaps", "team", "absent", UID) is False
        for name in ("theirs", "orphan"):
            with pytest.raises(NameConflict) as refused:
                await delete_owned(kube, "v1/configmaps", "team", name, UID)
            assert refused.value.name == name and refused.value.kind == "ConfigMap"
        assert await delete_owned(kube, "v1/configmaps", "team", "mine", UID) is True

    asyncio.run(go())
    assert kube.obj(CM, "mine") is None
    assert kube.obj(CM, "theirs") == before[CM]["theirs"]
    assert kube.obj(CM, "orphan") == before[CM]["orphan"]
    deletes = [(path, body) for method, path, body in kube.requests if method == "DELETE"]
    assert len(deletes) == 1
    path, body = deletes[0]
    assert path.endswith("/configmaps/mine")
    assert body["preconditions"] == {"uid": "obj-mine"}  # the object read, not a namesake


def test_delete_owned_of_an_object_replaced_meanwhile_deletes_nothing() -> None:
    kube = FakeKube()
    kube.put(CM, owned("mine", UID))
    replacement = owned("mine", UID)
    replacement["metadata"]["uid"] = "obj-new"

    class Swapping(FakeKube):
        async def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
            if method == "DELETE":  # replaced between the read and the delete
                self.put(CM, copy.deepcopy(replacement))
            return await super().request(method, path, *args, **kwargs)

    swapping = Swapping()
    swapping.put(CM, owned("mine", UID))
    assert asyncio.run(delete_owned(swapping, "v1/configmaps", "team", "mine", UID)) is False
    assert swapping.obj(CM, "mine") == replacement


def test_create_owned_never_adopts_a_namesake() -> None:
    kube = FakeKube()
    kube.put(CM, owned("taken", "uid-other"))
    kube.put(CM, owned("ours", UID))
    before = copy.deepcopy(kube.objects)

    async def go() -> None:
        with pytest.raises(NameConflict) as refused:
            await create_owned(kube, "v1/configmaps", "team", owned("taken", UID), UID)
        assert refused.value.kind == "ConfigMap"  # the body's kind, not the resource's plural
        assert "not owned by this LoRAJob (it is controlled by LoRAJob j (uid uid-other))" in (
            refused.value.message()
        )
        obj, created = await create_owned(kube, "v1/configmaps", "team", owned("ours", UID), UID)
        assert created is False and obj["metadata"]["uid"] == "obj-ours"
        _, created = await create_owned(kube, "v1/configmaps", "team", owned("new", UID), UID)
        assert created is True

    asyncio.run(go())
    assert kube.obj(CM, "taken") == before[CM]["taken"]
    assert kube.obj(CM, "new") is not None


# ------------------------------------------------------------------ TTL through the reconciler

LJ = "/apis/finetune.lora-operator.io/v1alpha1/namespaces/default/lorajobs"
SECRETS = "/api/v1/namespaces/default/secrets"
JOBS = "/apis/batch/v1/namespaces/default/jobs"


def finished_world(now: list[float], ttl: int) -> tuple[RecordingKube, Reconciler]:
    """A LoRAJob created 2025-12-31, whose run finished at 2026-01-01T01:00:00Z; its Succeeded
    condition moved at 00:30 (an earlier write), so only the completion time gives 01:00."""
    kube = RecordingKube()
    source = ConfigSource()
    source._config = OperatorConfig.model_validate(
        {"s3": {"endpoint": "http://127.0.0.1:9", "credentialsSecret": {"name": SECRET}}}
    )
    reconciler = Reconciler(
        config=source, kube_factory=lambda: kube, emit=post_event, clock=lambda: now[0]
    )
    secret = {"metadata": {"name": SECRET, "namespace": "default"}, "stringData": {}}
    kube.put(SECRETS, secret)
    obj = base_job("ttl", ttlSecondsAfterFinished=ttl)
    spec_hash = training_spec_hash(parse_lorajob(obj, "test").spec)
    obj["metadata"].update(
        {"uid": "uid-ttl", "generation": 1, "creationTimestamp": "2025-12-31T00:00:00Z"}
    )
    obj["status"] = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "currentRun": "r1",
        "specHash": spec_hash,
        "startTime": "2025-12-31T00:00:00Z",
        "completionTime": "2026-01-01T01:00:00Z",
        "adapterURI": "s3://lora-test/runs/default/ttl/r1/final",
        "conditions": [
            {
                "type": "Succeeded",
                "status": "True",
                "reason": "Completed",
                "lastTransitionTime": "2026-01-01T00:30:00Z",
            }
        ],
        "runs": [
            {
                "id": "r1",
                "specHash": spec_hash,
                "outputURI": "s3://lora-test/runs/default/ttl/r1",
                "phase": "Succeeded",
                "startTime": "2025-12-31T00:00:00Z",
                "completionTime": "2026-01-01T01:00:00Z",
                "adapterURI": "s3://lora-test/runs/default/ttl/r1/final",
            }
        ],
    }
    kube.put(LJ, obj)
    return kube, reconciler


def test_ttl_counts_from_the_completion_time_to_the_exact_second() -> None:
    """Completion 01:00:00 + 600 s = 01:10:00 (NEW_YEAR_2026 + 4200). Counting from creation
    (2025-12-31) or from the condition's 00:30 would delete it at 01:09:59 already."""
    deadline = NEW_YEAR_2026 + 3600 + 600
    now = [float(deadline - 1)]
    kube, reconciler = finished_world(now, ttl=600)
    asyncio.run(reconciler.reconcile("default", "ttl"))
    kept = kube.obj(LJ, "ttl")
    assert kept is not None and kept["status"]["phase"] == "Succeeded"
    assert not [r for r in kube.requests if r[0] == "DELETE"]
    now[0] = float(deadline)
    asyncio.run(reconciler.reconcile("default", "ttl"))
    assert kube.obj(LJ, "ttl") is None
    deletes = [(path, body) for method, path, body in kube.requests if method == "DELETE"]
    assert deletes == [
        (
            f"{LJ}/ttl",
            {"propagationPolicy": "Background", "preconditions": {"uid": "uid-ttl"}},
        )
    ]


def test_ttl_never_deletes_a_namesake_created_meanwhile() -> None:
    """The uid precondition: the delete names the finished job's uid, and the server refuses
    it for a newer LoRAJob of the same name."""
    deadline = NEW_YEAR_2026 + 3600
    kube, reconciler = finished_world([float(deadline)], ttl=0)

    newer = copy.deepcopy(kube.obj(LJ, "ttl"))
    assert newer is not None
    original_request = kube.request

    async def swap_then_request(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method == "DELETE":
            newer["metadata"]["uid"] = "uid-newer"
            kube.put(LJ, newer)
        return await original_request(method, path, *args, **kwargs)

    kube.request = swap_then_request  # type: ignore[method-assign]
    asyncio.run(reconciler.reconcile("default", "ttl"))
    survivor = kube.obj(LJ, "ttl")
    assert survivor is not None and survivor["metadata"]["uid"] == "uid-newer"


# ------------------------------------------------------------------ why a run's pods failed

PODS = "/api/v1/namespaces/team/pods"


def pod(name: str, job_name: str, run: str, *states: dict[str, Any]) -> dict[str, Any]:
    labels = {"finetune.lora-operator.io/job": job_name, "finetune.lora-operator.io/run": run}
    return {
        "metadata": {"name": name, "namespace": "team", "labels": labels},
        "status": {"containerStatuses": [{"state": state} for state in states]},
    }


def terminated(code: int, message: str | None) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, **({"message": message} if message else {})}}


def test_the_failure_message_is_the_last_failed_pod_of_this_run() -> None:
    kube = FakeKube()
    for obj in (
        pod("j-r1-0-a", "j", "r1", terminated(1, "first error")),
        pod("j-r1-0-b", "j", "r1", terminated(3, "  bad lora.r: 0\n")),
        pod("j-r1-0-c", "j", "r1", terminated(0, "done"), {"running": {}}),
        pod("j-r1-0-d", "j", "r1", terminated(137, None)),
        pod("j-r2-0-a", "j", "r2", terminated(1, "a later run's error")),
        pod("k-r1-0-a", "k", "r1", terminated(1, "another job's error")),
    ):
        kube.put(PODS, obj)
    assert asyncio.run(pod_failure_message(kube, "team", "j", "r1")) == "bad lora.r: 0"
    assert asyncio.run(pod_failure_message(kube, "team", "j", "r3")) is None


def test_no_failed_container_no_message() -> None:
    kube = FakeKube()
    kube.put(PODS, pod("j-r1-0-a", "j", "r1", terminated(0, "ok"), {"waiting": {}}, {}))
    kube.put(
        PODS, {"metadata": {"name": "bare", "labels": pod("x", "j", "r1")["metadata"]["labels"]}}
    )
    assert asyncio.run(pod_failure_message(kube, "team", "j", "r1")) is None


@pytest.mark.parametrize(
    "status",
    [{"active": 1}, {"failed": 1}, {"succeeded": 1}, {"startTime": T0}, {"conditions": [COMPLETE]}],
)
def test_any_one_sign_of_a_pod_means_started(status: dict[str, Any]) -> None:
    assert JobObservation.of(job(**status)).started


def test_a_name_conflict_names_kind_namespace_name_and_owner() -> None:
    conflict = NameConflict.of(owned("cm", "uid-9"), "ConfigMap")
    assert (conflict.kind, conflict.namespace, conflict.name) == ("ConfigMap", "team", "cm")
    assert conflict.owner == "it is controlled by LoRAJob j (uid uid-9)"
    expected = (
        "ConfigMap team/cm already exists and is not owned by this LoRAJob (it is controlled "
        "by LoRAJob j (uid uid-9)); the operator leaves it untouched. Delete or rename that "
        "ConfigMap, or give the LoRAJob another name"
    )
    assert str(conflict) == conflict.message() == expected
    bare = NameConflict.of({"metadata": {}}, "Job")
    assert (bare.namespace, bare.name, bare.owner) == ("", "", "it has no controller owner")


def test_a_conflict_without_a_kind_is_named_by_its_resource() -> None:
    kube = FakeKube()
    jobs = "/apis/batch/v1/namespaces/team/jobs"
    theirs = owned("j-r1", "uid-other")
    del theirs["kind"]
    kube.put(jobs, theirs)

    async def go() -> tuple[NameConflict, NameConflict]:
        body = owned("j-r1", UID)
        del body["kind"]
        with pytest.raises(NameConflict) as on_create:
            await create_owned(kube, "batch/v1/jobs", "team", body, UID)
        with pytest.raises(NameConflict) as on_delete:
            await delete_owned(kube, "batch/v1/jobs", "team", "j-r1", UID)
        return on_create.value, on_delete.value

    on_create, on_delete = asyncio.run(go())
    assert (on_create.kind, on_delete.kind) == ("jobs", "jobs")
    assert on_create.message().startswith("jobs team/j-r1 already exists")
    expected = owned("j-r1", "uid-other")
    del expected["kind"]
    assert kube.obj(jobs, "j-r1") == expected  # left exactly as it was
