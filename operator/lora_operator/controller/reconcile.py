"""The level-based reconciler: read the LoRAJob and what it owns, decide, act, write status.

Every kopf trigger (create, resume, spec update) and the periodic resync loop call
`Reconciler.reconcile(ns, name)`. It re-reads the object under a per-object lock, so a resync
and an update never interleave, and everything it needs is in the cluster (status, labels, names
derived from the run id): an operator restart loses nothing and never duplicates a Job
(creation is idempotent by name).

Flow: validate -> plan (new run when the training spec hash changes) -> admit (quota or Kueue) ->
create ConfigMap/Service/Job -> follow Job + progress.json -> Succeeded/Failed -> serve -> TTL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from lora_contract.layout import FINAL_DIR, S3Location, run_location
from lora_contract.storage import S3Store, StorageError
from lora_contract.timestamps import now_iso, parse_iso
from lora_contract.types import (
    API_VERSION,
    CPU_GPU_TYPE,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ConditionType,
    DataWatchSpec,
    LoRAJobSpec,
    LoRAJobStatus,
    Phase,
    PlanStatus,
    Progress,
    Reason,
    RunLineage,
    RunRecord,
    RunTrigger,
    ScheduleSpec,
    ScheduleWhen,
)

from ..api.cron import CronError
from ..api.hashing import training_spec_hash
from ..api.loading import SpecError, parse_lorajob
from ..api.operator_config import OperatorConfig, Quotas
from ..deepspeed_config import deepspeed_config
from ..memory import GpuCatalog, PlanningError, plan_job
from ..memory.forecast import completed_forecast, run_forecast
from . import metrics
from .base_adapter import BaseAdapterChoice, choose_base_adapter, owner_refusal
from .children import ensure_run_children
from .conditions import ConditionStatus, find, set_condition
from .config import ConfigSource
from .data_watch import DataVerdict, check_due, data_verdict, identity, watchable
from .decisions import (
    FINISHED,
    ServingAction,
    deletion_precondition,
    demand_from,
    kueue_queue,
    needs_new_run,
    plan_demand,
    planning_failed_before,
    run_to_stop,
    serving_action,
    serving_run_id,
    ttl_expired,
)
from .decisions import mapping as _mapping
from .export_job import (
    build_export_job,
    export_failure_message,
    export_job_name,
    merged_uri,
    prune_earlier_exports,
)
from .health import health
from .kube import Kube, KubeError
from .manifests import RunContext, run_name
from .model_config_source import Fetching, ModelConfigSource
from .ownership import NameConflict, controlled_by, create_owned, delete_owned
from .policy import policy_refusals
from .progress import (
    CredentialsError,
    S3Credentials,
    early_stop_note,
    read_progress,
    record_progress,
    resolve_credentials,
    store_for,
)
from .quota import Demand
from .quota_ledger import QuotaLedger
from .s3_target import s3_target
from .schedule import TickAction, iso_at, next_run_id, pruned_runs, tick_decision, wake_seconds
from .secret_reads import SecretReads
from .serving import ServingState, ensure_serving, remove_serving
from .serving_choice import ServingChoice, choose_served, run_lineage, unservable_spec
from .shared_registry import COMPONENT as SHARED_SERVER_COMPONENT
from .shared_serving import ensure_shared_serving, leave_shared_serving
from .status_patch import status_patch
from .workload import JobObservation, JobState, pod_failure_message

log = logging.getLogger("lora_operator.reconcile")

LORAJOBS = f"{GROUP}/{VERSION}/{PLURAL}"
JOBS = "batch/v1/jobs"
ACTIVE_PHASES = {Phase.Pending.value, Phase.Queued.value, Phase.Running.value}
EventFn = Callable[[Kube, dict[str, Any], str, str, str], Awaitable[None]]
Key = tuple[str, str]


def load_status(raw: dict[str, Any], where: str) -> LoRAJobStatus:
    """The stored status as a model. A field that does not parse (written by another operator
    version) is dropped with a warning rather than failing the job; the next write replaces it."""
    try:
        return LoRAJobStatus.model_validate(raw)
    except ValidationError:
        good: dict[str, Any] = {}
        for key, value in raw.items():
            try:
                LoRAJobStatus.model_validate({key: value})
            except ValidationError as exc:
                log.warning("%s: dropping unreadable status.%s: %s", where, key, exc.errors()[:1])
            else:
                good[key] = value
        return LoRAJobStatus.model_validate(good)


def plan_summary(plan: PlanStatus, on_cpu: bool) -> str:
    """The Planned condition's and Event's words: a CPU job runs processes in host memory, it
    has no GPUs to speak of."""
    if on_cpu:
        return (
            f"{plan.nodes}x{plan.gpus_per_node} processes on CPU, {plan.strategy.value}, "
            f"{plan.per_gpu_peak_gib:.1f} GiB peak host memory per process"
        )
    return (
        f"{plan.nodes}x{plan.gpus_per_node} {plan.gpu_type}, {plan.strategy.value}, "
        f"{plan.per_gpu_peak_gib:.1f} GiB peak per GPU"
    )


def reserved_message(plan: PlanStatus, on_cpu: bool) -> str:
    """The Admitted condition's words once the Job is created."""
    if on_cpu:
        return f"{plan.total_gpus} CPU process(es) on {plan.nodes} node(s); no GPUs reserved"
    return f"{plan.total_gpus} {plan.gpu_type} GPUs reserved"


# Counting a model not seen before takes seconds of CPU (transformers on the meta device; more for
# a config written to be slow): done off the event loop so no other job waits, one at a time.
PLANNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner")

# A finished job waiting for KServe to be installed: looked at now and then, not every resync.
SLOW_RESYNC_SECONDS = 300.0
# A served job: its InferenceService and ServiceAccount are kept as declared (children.py), a
# deleted or edited one is back within this long (two GETs a served job a minute).
SERVED_RESYNC_SECONDS = 60.0
# A job refused by the platform policy: looked at again this often, so that a policy change (the
# config is reloaded without a restart) or an opt-in label added to its Secret lets it start.
POLICY_RECHECK_SECONDS = 30.0
# A job queued by a GPU quota: the ledger says when it fits (a release kicks it, and every resync
# tick reconciles the queued jobs that fit now, e.g. after a quota change), so its own resync
# only refreshes its queue position and message. Every tick, 10,000 queued jobs cost ~3 API
# calls each.
QUOTA_QUEUE_RESYNC_SECONDS = 60.0
# A job without a phase has not been reconciled yet: the watch's event handler is about to, so
# the resync loop waits this long after first seeing it (it reconciled thousands of new jobs a
# second time while kopf worked through a backlog of creations).
UNHANDLED_GRACE_SECONDS = 30.0


def _raw_condition(status: dict[str, Any], type_: ConditionType) -> dict[str, Any] | None:
    """A condition of a LoRAJob as the watch delivers it (untyped: any shape may come)."""
    conditions = status.get("conditions")
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, dict) and condition.get("type") == type_.value:
            return condition
    return None


def _raw_reason(status: dict[str, Any], type_: ConditionType) -> Any:
    """That condition's reason as stored (None without one)."""
    return (_raw_condition(status, type_) or {}).get("reason")


def replaced_uid(exc: KubeError) -> bool:
    """A status write the API server refused because the object of that name now has another
    uid (its metadata.uid is immutable: 422): a newer LoRAJob took the name."""
    return exc.status == 422 and "metadata.uid" in exc.message


def lacks_summary(obj: dict[str, Any]) -> bool:
    """A job reconciled by an operator older than the kstatus conditions (a phase, no Ready): one
    reconcile writes them, so `kubectl wait --for=condition=Ready` and Flux can read it too."""
    status = _mapping(obj.get("status"))
    return (
        not _mapping(obj.get("metadata")).get("deletionTimestamp")
        and bool(status.get("phase"))
        and _raw_condition(status, ConditionType.Ready) is None
    )


def needs_reconcile(obj: dict[str, Any]) -> bool:
    """Whether the reconciler has not yet seen this spec: a new job (no phase yet) or an edited
    one (metadata.generation ahead of status.observedGeneration, which every reconcile writes).
    A deleting object needs none."""
    meta = _mapping(obj.get("metadata"))
    if meta.get("deletionTimestamp"):
        return False
    status = _mapping(obj.get("status"))
    if not status.get("phase"):
        return True
    generation = meta.get("generation")
    return generation is not None and status.get("observedGeneration") != generation


def resync_interval(obj: dict[str, Any]) -> float | None:
    """How often this job needs periodic work (following a Job, progress, the queue, TTL, serving
    readiness): None = never, 0 = every resync, else at most every that many seconds.

    Finished jobs without TTL or pending serving, and suspended jobs, need none: a spec change
    reaches them through the watch. Keeps 1000 finished jobs from costing API calls."""
    status = _mapping(obj.get("status"))
    spec = _mapping(obj.get("spec"))
    phase = status.get("phase")
    if needs_reconcile(obj):
        return 0.0  # the watch's reconcile has not happened or failed: the resync retries it
    if (
        phase == Phase.Queued.value
        and _raw_reason(status, ConditionType.Admitted) == Reason.QuotaExceeded
    ):
        return QUOTA_QUEUE_RESYNC_SECONDS
    if phase is None or phase in ACTIVE_PHASES:
        return 0.0
    if _raw_reason(status, ConditionType.Validated) == Reason.PolicyViolation:
        return POLICY_RECHECK_SECONDS
    if phase == Phase.Suspended.value:
        return None
    wake = retrain_wake(spec, time.time())  # a schedule's next tick, a watched dataset
    if spec.get("ttlSecondsAfterFinished") is not None:
        return 0.0
    if phase == Phase.Succeeded.value and _mapping(spec.get("export")).get("merged"):
        exported = _raw_condition(status, ConditionType.Exported)  # its Job is followed
        if exported is None or exported.get("reason") in (Reason.Exporting, Reason.NewRun):
            return 0.0
    if phase == Phase.Succeeded.value and _mapping(spec.get("serving")).get("enabled"):
        serving = _raw_condition(status, ConditionType.Serving)
        if serving is None:
            return 0.0
        if serving.get("status") == "True":
            return min(SERVED_RESYNC_SECONDS, wake or math.inf)
        # Both wait for someone else (install KServe; remove the object holding the name).
        waiting = serving.get("reason") in (
            Reason.KServeNotInstalled,
            Reason.NameConflict,
            Reason.IncompatibleAdapter,  # waits for a spec change (its event reconciles)
            Reason.UnknownRun,
        )
        return min(SLOW_RESYNC_SECONDS, wake or math.inf) if waiting else 0.0
    return wake


def retrain_wake(spec: dict[str, Any], now: float) -> float | None:
    """Seconds until a finished job with a schedule (its next tick, schedule.py) or a dataset
    watch (its minimum interval) must be looked at again; None: it has neither (or they do not
    parse: the watch's reconcile reports that)."""
    waits: list[float] = []
    try:
        if spec.get("schedule") is not None:
            waits.append(wake_seconds(ScheduleSpec.model_validate(spec["schedule"]), now))
        watch = _mapping(spec.get("dataset")).get("watch")
        if watch is not None:
            parsed = DataWatchSpec.model_validate(watch)
            if parsed.enabled:
                waits.append(float(parsed.min_interval_seconds))
    except (ValidationError, CronError):
        pass
    return min(waits, default=None)


@dataclass
class Reconciler:
    """Shared state of one operator process: config, client, locks, the admission view."""

    config: ConfigSource
    kube_factory: Callable[[], Kube]
    emit: EventFn
    namespaces: list[str] = field(default_factory=list)  # empty: cluster-wide
    ledger: QuotaLedger = field(default_factory=lambda: QuotaLedger(Quotas()))
    phases: dict[Key, str] = field(default_factory=dict)
    periodic: dict[Key, float] = field(default_factory=dict)  # key -> resync_interval
    _last_resync: dict[Key, float] = field(default_factory=dict)
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    _admission: asyncio.Lock = field(default_factory=asyncio.Lock)
    _warm: bool = False
    _catalog_key: int = 0
    _catalog: GpuCatalog | None = None
    clock: Callable[[], float] = time.time  # wall clock (epoch seconds) for TTLs; tests fake it
    # a job waiting for its config URL is reconciled again when the fetch ends
    model_configs: ModelConfigSource = field(init=False)

    def __post_init__(self) -> None:
        self.model_configs = ModelConfigSource(on_ready=self._safe)

    # ------------------------------------------------------------------ admission view

    def observe(self, obj: dict[str, Any], deleted: bool = False) -> None:
        """Track a LoRAJob's phase and GPU demand (from watch events and our own writes)."""
        meta = obj.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if deleted:
            self.ledger.set(key, None)
            self.phases.pop(key, None)
            self.periodic.pop(key, None)
            self._last_resync.pop(key, None)
            self._locks.pop(key, None)
            return
        phase = _mapping(obj.get("status")).get("phase")
        if isinstance(phase, str) and phase:
            self.phases[key] = phase
        interval = resync_interval(obj)
        if interval is None:
            self.periodic.pop(key, None)
            self._last_resync.pop(key, None)
        else:
            self.periodic[key] = interval
            if key not in self.phases:
                self._last_resync.setdefault(key, time.monotonic())
        self.ledger.set(key, demand_from(obj))

    async def _warm_up(self, kube: Kube) -> None:
        """Before the first admission after start-up, learn every job's usage from the API."""
        if self._warm:
            return
        scopes: list[str | None] = list(self.namespaces) or [None]
        for namespace in scopes:
            for obj in await kube.list(LORAJOBS, namespace):
                self.observe(obj)
        self._warm = True

    def periodic_keys(self, now: float | None = None) -> list[Key]:
        """The jobs due for a resync now (finished, idle jobs are left alone; slow ones wait
        their interval)."""
        now = time.monotonic() if now is None else now
        due = [
            key
            for key, interval in self.periodic.items()
            if now - self._last_resync.get(key, -math.inf)
            >= (interval if key in self.phases else max(interval, UNHANDLED_GRACE_SECONDS))
        ]
        for key in due:
            self._last_resync[key] = now
        return sorted(set(due) | set(self.admissible()))

    def admissible(self) -> list[Key]:
        """The quota-queued jobs that fit now (after a release or a quota change)."""
        self.ledger.use_quotas(self.config.get().quotas)
        return self.ledger.admissible()

    def catalog(self, config: OperatorConfig) -> GpuCatalog:
        key = hash(tuple(g.model_dump_json() for g in config.gpu_catalog))
        if self._catalog is None or key != self._catalog_key:
            self._catalog = GpuCatalog.default().merged(config.gpu_catalog)
            self._catalog_key = key
        return self._catalog

    @property
    def demands(self) -> dict[Key, Demand]:
        return self.ledger.demands

    def publish_metrics(self) -> None:
        """At every resync: the gauges, and the ledger's usage checked against its demands."""
        if self.ledger.recount():
            log.warning("quota usage had drifted from the jobs' demands; recounted")
        metrics.publish(self.phases, self.demands.values(), self.config.get().quotas)

    # ------------------------------------------------------------------ entry point

    async def reconcile(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        started = time.perf_counter()
        async with lock:
            kube = self.kube_factory()
            obj = await kube.get(LORAJOBS, namespace, name)
            if obj is None or obj.get("metadata", {}).get("deletionTimestamp"):
                self.observe({"metadata": {"namespace": namespace, "name": name}}, deleted=True)
                return
            run = _Run(self, kube, obj, self.config.get())
            try:
                await run.reconcile()
            finally:
                await run.flush()
            if run.released:
                self._kick_queue(exclude=key)
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def _kick_queue(self, exclude: Key) -> None:
        """A job released GPUs: start the queued jobs that now fit at once, oldest first, instead
        of at their next resync (the others' positions and messages follow at the resync)."""
        for key in self.admissible():
            if key != exclude:
                asyncio.get_running_loop().create_task(self._safe(key))

    async def _safe(self, key: Key) -> None:
        try:
            await self.reconcile(*key)
        except Exception:  # the next resync retries; never crash the loop
            log.exception("re-evaluating queued job %s/%s failed", *key)


class _Run:
    """One reconciliation of one object: a typed working copy of its status plus queued Events.
    Status is patched once, at the end, and only with the top-level fields that changed."""

    def __init__(
        self, owner: Reconciler, kube: Kube, obj: dict[str, Any], config: OperatorConfig
    ) -> None:
        self.owner = owner
        self.kube = kube
        self.obj = obj
        self.config = config
        meta = obj["metadata"]
        self.name: str = meta["name"]
        self.namespace: str = meta.get("namespace", "default")
        self.uid: str = meta.get("uid", "")
        self.generation: int | None = meta.get("generation")
        self.original: dict[str, Any] = copy.deepcopy(_mapping(obj.get("status")))
        self.status: LoRAJobStatus = load_status(self.original, f"{self.namespace}/{self.name}")
        self.events: list[tuple[str, str, str]] = []
        self.released = False
        self.replaced = False  # a newer LoRAJob took the name (the TTL delete was refused)
        self.spec: LoRAJobSpec | None = None
        # the policy's opt-in check and the progress credentials share one Secret GET
        self.read_secret = SecretReads(kube, self.namespace)

    # ------------------------------------------------------------------ helpers

    def event(self, type_: str, reason: Reason | str, message: str) -> None:
        self.events.append((type_, str(reason), message))

    def condition(
        self,
        type_: ConditionType,
        status: bool | ConditionStatus,
        reason: Reason | str,
        message: str = "",
    ) -> bool:
        return set_condition(
            self.status.conditions, type_, status, reason, message, self.generation
        )

    def set_phase(self, phase: Phase, message: str) -> bool:
        changed = self.status.phase != phase
        self.status.phase = phase
        self.status.message = message
        run = self.current_run()
        if run is not None and run.phase not in FINISHED:
            run.phase = phase
        return changed

    def name_conflict(self, conflict: NameConflict) -> None:
        """Another object holds a name this run needs: touch it not, say so once, and try again
        at the next resync (a Pending job is resynced), when its owner may have removed it."""
        message = conflict.message()
        if self.condition(ConditionType.Running, False, Reason.NameConflict, message):
            self.event("Warning", Reason.NameConflict, message)
        self.set_phase(Phase.Pending, message)
        self.status.queue_position = None

    def current_run(self) -> RunRecord | None:
        current = self.status.current_run
        return next((r for r in self.status.runs if r.id == current), None)

    def plan(self) -> PlanStatus:
        assert self.status.plan is not None, "a run always has a plan"
        return self.status.plan

    def summarise(self) -> None:
        """Ready / Reconciling / Stalled from the phase and the other conditions (health.py)."""
        serving = self.spec is not None and self.spec.serving.enabled
        summary = health(self.status, serving)
        for type_, true in summary.statuses().items():
            self.condition(type_, true, summary.reason, summary.message)

    async def flush(self) -> None:
        if self.replaced:
            return  # the name belongs to a newer LoRAJob: nothing of this one is written to it
        if self.generation is not None:
            self.status.observed_generation = self.generation
        self.summarise()
        wire = self.status.to_wire()
        patch = status_patch(self.original, wire)  # nulls too: progress.lastError cleared
        if patch:
            # metadata.uid: the API server refuses the write (uid is immutable) when a newer
            # LoRAJob has taken the name since this one was read.
            body = (
                {"metadata": {"uid": self.uid}, "status": patch} if self.uid else {"status": patch}
            )
            try:
                await self.kube.patch(LORAJOBS, self.namespace, self.name, body, "status")
            except KubeError as exc:
                if not (exc.status in (404, 409) or replaced_uid(exc)):
                    raise
                return
        self.owner.observe({**self.obj, "status": wire})
        for type_, reason, message in self.events:
            await self.owner.emit(self.kube, self.obj, type_, reason, message)

    # ------------------------------------------------------------------ the state machine

    async def reconcile(self) -> None:
        spec = await self.validate()
        if spec is None:
            return
        self.spec = spec
        spec_hash = training_spec_hash(spec)
        run = self.current_run()
        if needs_new_run(run, spec_hash):
            if not await self.start_new_run(spec, spec_hash):
                return
            run = self.current_run()
        elif run is not None and (trigger := await self.retrain_trigger(spec, run)) is not None:
            if not await self.start_new_run(spec, spec_hash, *trigger):
                return
            run = self.current_run()
        assert run is not None
        if run.phase in FINISHED:
            await self.after_completion(spec, run)
            return
        if spec.suspend:
            await self.suspend(run)
            return
        job = await self.kube.get(JOBS, self.namespace, run_name(self.name, run.id))
        if job is not None and not controlled_by(job, self.uid):
            self.name_conflict(NameConflict.of(job, "Job"))
        elif job is None and self.status.phase == Phase.Running:
            # admitted and running, and its Job is gone (deleted by hand or by a cleanup): made
            # again without a new admission; the trainer resumes from the latest checkpoint
            await self.create_workload(spec, run, self.plan(), self.queue_name(spec), True)
        elif job is None:
            if await self.base_adapter_ready(spec, run):
                await self.launch(spec, run)
        else:
            job, conflict = await self.keep_children(spec, run, job)
            await self.follow(spec, run, job)
            if conflict is not None and run.phase not in FINISHED:
                self.child_conflict(conflict)

    async def validate(self) -> LoRAJobSpec | None:
        wire = {
            "apiVersion": self.obj.get("apiVersion", API_VERSION),
            "kind": self.obj.get("kind", KIND),
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": self.obj.get("spec"),
        }
        try:
            spec = parse_lorajob(wire, f"LoRAJob {self.namespace}/{self.name}").spec
        except SpecError as exc:
            message = "invalid spec: " + "; ".join(exc.problems)
            changed = self.condition(ConditionType.Validated, False, Reason.InvalidSpec, message)
            self.set_phase(Phase.Failed, message)
            if changed:
                self.event("Warning", Reason.InvalidSpec, message)
            return None
        problem = self.static_problem(spec)
        if problem:
            changed = self.condition(
                ConditionType.Validated, False, Reason.MissingConfiguration, problem
            )
            self.set_phase(Phase.Failed, problem)
            if changed:
                self.event("Warning", Reason.MissingConfiguration, problem)
            return None
        refusals = await policy_refusals(
            self.kube, self.namespace, spec, self.config, self.read_secret
        )
        if refusals:
            self.refuse(refusals)
            return None
        self.condition(ConditionType.Validated, True, Reason.Valid, "spec is valid")
        return spec

    def refuse(self, refusals: list[str]) -> None:
        """Refused by the platform policy: create, follow and change nothing. A job that never
        started fails like an invalid spec; a queued one goes back to Pending (it must not hold
        its place in the GPU queue); a running or finished one keeps its phase (its pods, if
        any, run on: they were allowed when made). Re-checked every POLICY_RECHECK_SECONDS."""
        message = "; ".join(refusals)
        changed = self.condition(ConditionType.Validated, False, Reason.PolicyViolation, message)
        if self.current_run() is None:
            self.set_phase(Phase.Failed, message)
        elif self.status.phase == Phase.Queued:
            self.set_phase(Phase.Pending, message)
            self.status.queue_position = None
        else:
            self.status.message = message
        if changed:
            self.event("Warning", Reason.PolicyViolation, message)

    def static_problem(self, spec: LoRAJobSpec) -> str | None:
        """Things pydantic cannot know: they depend on the operator's configuration."""
        problem = s3_target(spec, self.config).problem()
        if problem:
            return problem
        if self.config.kueue.enabled and not (spec.queue_name or self.config.kueue.default_queue):
            return "Kueue is enabled: set spec.queueName (the operator config has no defaultQueue)"
        return None

    async def start_new_run(
        self,
        spec: LoRAJobSpec,
        spec_hash: str,
        trigger: RunTrigger = RunTrigger.Spec,
        data: str | None = None,
    ) -> bool:
        """A new run: on a new spec hash (trigger Spec), or with the same hash on a cron tick or
        a replaced dataset (`data`: the dataset's identity already read by the trigger)."""
        previous = self.current_run()
        by_spec = trigger is RunTrigger.Spec
        if by_spec and planning_failed_before(self.status.spec_hash, self.status.phase, spec_hash):
            return False  # planning already failed for this exact spec; wait for a change
        try:
            model_config = await self.owner.model_configs.resolve(
                self.kube, (self.namespace, self.name), spec.base_model, self.config.policy
            )
            if isinstance(model_config, Fetching):
                self.wait_for_model_config(model_config)
                return False
            catalog = self.owner.catalog(self.config)
            loop = asyncio.get_running_loop()
            plan = await loop.run_in_executor(PLANNER, plan_job, spec, catalog, model_config)
        except PlanningError as exc:
            message = f"planning failed: {exc}"
            self.status.spec_hash = spec_hash
            if self.condition(ConditionType.Planned, False, Reason.PlanningFailed, message):
                self.event("Warning", Reason.PlanningFailed, message)
            self.set_phase(Phase.Failed, message)
            return False
        if by_spec and self.watches_data(spec):
            data = await self.data_identity(spec)
        if previous is not None:
            await self.supersede(previous, "spec changed" if by_spec else f"{trigger} retrain")
        run_id = next_run_id(self.status.runs)
        output = run_location(spec.output, self.namespace, self.name, run_id)
        self.status.runs.append(
            RunRecord(
                id=run_id,
                spec_hash=spec_hash,
                generation=self.generation,
                output_uri=output.uri,
                phase=Phase.Pending,
                trigger=trigger.value,
                data_identity=data,
            )
        )
        if spec.schedule is not None:
            served = self.status.adapter_uri  # its run stays listed (serving_run_id)
            keep = [run_id, *(r.id for r in self.status.runs if served and r.adapter_uri == served)]
            self.status.runs = pruned_runs(self.status.runs, spec.schedule.run_history_limit, keep)
        plan_status = plan.to_status()
        self.status.runs[-1].forecast = run_forecast(plan_status)
        self.status.current_run = run_id
        self.status.spec_hash = spec_hash
        self.status.plan = plan_status
        self.status.restarts = 0
        for stale in ("progress", "progress_summary", "latest_checkpoint", "queue_position"):
            setattr(self.status, stale, None)
        self.status.completion_time = None
        message = plan_summary(plan_status, self.on_cpu(plan_status))
        if plan_status.forecast is not None:
            message += f", ~{plan_status.forecast.hours:.3g} h to train (forecast)"
        self.condition(ConditionType.Planned, True, Reason.Planned, message)
        for type_ in (
            ConditionType.Succeeded,
            ConditionType.Failed,
            ConditionType.CheckpointSaved,
            ConditionType.Running,
            ConditionType.Exported,
        ):
            if find(self.status.conditions, type_) is not None:
                self.condition(type_, False, Reason.NewRun, f"run {run_id} started")
        self.set_phase(Phase.Pending, f"run {run_id} planned: {message}")
        self.event("Normal", Reason.Planned, f"run {run_id}: {message}")
        return True

    def wait_for_model_config(self, fetching: Fetching) -> None:
        """Planned=Unknown until the fetch ends; a previous run keeps its phase meanwhile."""
        message = f"fetching spec.baseModel.config {fetching.url}"
        self.condition(ConditionType.Planned, "Unknown", Reason.FetchingModelConfig, message)
        if self.current_run() is None:
            self.set_phase(Phase.Pending, message)

    async def supersede(self, previous: RunRecord, why: str = "spec changed") -> None:
        if not run_to_stop(previous):
            return
        job = run_name(self.name, previous.id)
        # NameConflict: not the previous run's Job, so nothing of ours to stop or delete.
        with contextlib.suppress(NameConflict):
            await delete_owned(self.kube, JOBS, self.namespace, job, self.uid)
        previous.phase = Phase.Failed
        previous.completion_time = now_iso()
        self.released = True
        self.event("Normal", Reason.Superseded, f"{why}: run {previous.id} stopped")

    # ------------------------------------------------------------------ retrain triggers

    def watches_data(self, spec: LoRAJobSpec) -> bool:
        """Whether runs record the dataset's identity: a watch, or a schedule that compares it."""
        watch = spec.dataset.watch is not None and spec.dataset.watch.enabled
        compares = spec.schedule is not None and spec.schedule.when is ScheduleWhen.DataChanged
        return watch or compares

    async def data_identity(self, spec: LoRAJobSpec) -> str | None:
        """The dataset object's identity (data_watch.py), read with the credentials Secret in
        the job's own namespace, never with the operator's own keys (they may reach another
        tenant's bucket); None when it cannot be read."""
        if not watchable(spec.dataset.source) or s3_target(spec, self.config).secret is None:
            return None
        creds = await self.credentials(spec)
        if creds is None:
            return None
        try:
            loc = S3Location.parse(spec.dataset.source)
            found = await asyncio.to_thread(store_for(creds).etag_and_version, loc)
        except (ValueError, StorageError) as exc:
            log.warning("%s/%s: cannot look at the dataset: %s", self.namespace, self.name, exc)
            return None
        return None if found is None else identity(*found)

    async def retrain_trigger(
        self, spec: LoRAJobSpec, run: RunRecord
    ) -> tuple[RunTrigger, str | None] | None:
        """A due cron tick (schedule.py) or a replaced dataset (data_watch.py): a new run with
        the same spec hash, or None. Records the tick and the check in status either way."""
        now = self.owner.clock()
        if spec.schedule is not None:
            fired = await self.schedule_tick(spec, spec.schedule, run, now)
            if fired is not None:
                return fired
        watch = spec.dataset.watch
        if run.phase not in FINISHED or spec.suspend:
            return None
        if not check_due(watch, parse_iso(self.status.data_checked_time), now):
            return None
        self.status.data_checked_time = iso_at(now)
        seen = await self.data_identity(spec)
        verdict = data_verdict(run.data_identity, seen)
        if verdict is DataVerdict.BASELINE:
            run.data_identity = seen  # a run from before the watch: compare with this one
        if verdict is not DataVerdict.CHANGED:
            return None
        message = (
            f"{spec.dataset.source} changed since run {run.id} ({run.data_identity} -> {seen})"
        )
        self.event("Normal", Reason.DataChanged, f"{message}: a new run")
        return RunTrigger.DataChanged, seen

    async def schedule_tick(
        self, spec: LoRAJobSpec, schedule: ScheduleSpec, run: RunRecord, now: float
    ) -> tuple[RunTrigger, str | None] | None:
        created = parse_iso(self.obj["metadata"].get("creationTimestamp"))
        decision = tick_decision(
            schedule,
            last_tick=parse_iso(self.status.last_schedule_time),
            since=now if created is None else created,
            now=now,
            active=run.phase not in FINISHED,
            suspended=spec.suspend,
        )
        if decision.tick is None:
            return None
        at = iso_at(decision.tick)
        self.status.last_schedule_time = at  # acted on: never again, even after a restart
        if decision.action is TickAction.SKIP_LATE:
            late = f"{now - decision.tick:.0f} s late"
            limit = schedule.starting_deadline_seconds
            message = f"tick {at} skipped: noticed {late}, after startingDeadlineSeconds {limit}"
            self.event("Warning", Reason.ScheduleSkipped, message)
            return None
        if decision.action is TickAction.SKIP_ACTIVE:
            message = f"tick {at} skipped: run {run.id} is active (concurrencyPolicy Forbid)"
            self.event("Normal", Reason.ScheduleSkipped, message)
            return None
        seen = await self.data_identity(spec)
        if schedule.when is ScheduleWhen.DataChanged:
            verdict = data_verdict(run.data_identity, seen)
            if verdict is DataVerdict.BASELINE:
                run.data_identity = seen
            if verdict is DataVerdict.UNKNOWN:
                message = f"tick {at} skipped: cannot look at {spec.dataset.source}"
                if not watchable(spec.dataset.source):
                    message += " (only s3:// objects have an identity: set schedule.when Always)"
                self.event("Warning", Reason.DataUnreadable, message)
                return None
            if verdict is not DataVerdict.CHANGED:
                message = f"tick {at} skipped: {spec.dataset.source} unchanged since run {run.id}"
                self.event("Normal", Reason.ScheduleSkipped, message)
                return None
        self.event("Normal", Reason.Scheduled, f"tick {at} ({schedule.cron}, {schedule.time_zone})")
        return RunTrigger.Schedule, seen

    # ------------------------------------------------------------------ launch & admission

    def on_cpu(self, plan: PlanStatus) -> bool:
        """A CPU "GPU type" (GpuCatalog.is_cpu): words about processes and host memory."""
        try:
            return GpuCatalog.is_cpu(self.owner.catalog(self.config).get(plan.gpu_type))
        except PlanningError:
            return plan.gpu_type == CPU_GPU_TYPE

    def demand(self, plan: PlanStatus) -> Demand:
        created = self.obj["metadata"].get("creationTimestamp", "")
        return plan_demand(plan, self.namespace, self.name, created)

    def queue_name(self, spec: LoRAJobSpec) -> str | None:
        return kueue_queue(spec.queue_name, self.config.kueue)

    async def launch(self, spec: LoRAJobSpec, run: RunRecord) -> None:
        plan = self.plan()
        queue = self.queue_name(spec)
        if queue is None:
            async with self.owner._admission:
                await self.owner._warm_up(self.kube)
                demand = self.demand(plan)
                ledger = self.owner.ledger
                ledger.use_quotas(self.config.quotas)
                decision = ledger.admit(demand)
                if decision.admitted:
                    ledger.set(demand.key, dataclasses.replace(demand, holding=True))
                else:
                    self.status.queue_position = decision.queue_position
                    changed = self.condition(
                        ConditionType.Admitted, False, Reason.QuotaExceeded, decision.message
                    )
                    self.set_phase(
                        Phase.Queued,
                        f"queued (position {decision.queue_position}): {decision.message}",
                    )
                    if changed:
                        self.event("Normal", Reason.Queued, decision.message)
                    return
        await self.create_workload(spec, run, plan, queue)

    def context(self, spec: LoRAJobSpec, run: RunRecord, plan: PlanStatus) -> RunContext:
        try:
            selector = dict(self.owner.catalog(self.config).get(plan.gpu_type).node_selector)
        except PlanningError:
            selector = {}
        return RunContext(
            name=self.name,
            namespace=self.namespace,
            uid=self.uid,
            run_id=run.id,
            spec=spec,
            plan=plan,
            config=self.config,
            output_uri=run.output_uri,
            spec_hash=run.spec_hash,
            gpu_node_selector=selector,
            deepspeed=deepspeed_config(plan.applied_to(spec), plan.strategy),
            queue_name=self.queue_name(spec),
            base_adapter_uri=run.base_adapter.uri if run.base_adapter else None,
        )

    async def base_adapter_ready(self, spec: LoRAJobSpec, run: RunRecord) -> bool:
        """spec.baseAdapter, resolved once, when the run is about to start (base_adapter.py)
        and recorded in the run: False while it waits (Pending, looked at again every resync)
        or when refused (the run fails to start: no Job, no quota held)."""
        if spec.base_adapter is None or run.base_adapter is not None:
            return True
        base = await self.kube.get(LORAJOBS, self.namespace, spec.base_adapter.job)
        choice = choose_base_adapter(spec, self.name, self.namespace, base)
        if choice.record is not None:
            choice = await self.base_adapter_owned(spec, choice)
        if choice.refusal is not None:
            run.phase = Phase.Failed
            run.completion_time = self.status.completion_time = now_iso()
            self.condition(ConditionType.Failed, True, Reason.BaseAdapterRefused, choice.refusal)
            self.set_phase(Phase.Failed, choice.refusal)
            self.event("Warning", Reason.BaseAdapterRefused, choice.refusal)
            return False
        if choice.wait is not None:
            if self.condition(
                ConditionType.Running, False, Reason.WaitingForBaseAdapter, choice.wait
            ):
                self.event("Normal", Reason.WaitingForBaseAdapter, choice.wait)
            self.set_phase(Phase.Pending, choice.wait)
            return False
        run.base_adapter = choice.record
        return True

    async def base_adapter_owned(
        self, spec: LoRAJobSpec, choice: BaseAdapterChoice
    ) -> BaseAdapterChoice:
        """The chosen folder's OWNER.json, read with this job's own credentials (never the
        operator's): the named job's uid, or refused; unreadable for now, a wait."""
        creds = await self.credentials(spec)
        if creds is None:
            return BaseAdapterChoice(wait=f"waiting for spec.baseAdapter: {self.status.message}")
        try:
            loc = S3Location.parse(choice.output_uri)
            owner = await asyncio.to_thread(store_for(creds).job_owner, loc)
        except StorageError as exc:
            if exc.transient:
                return BaseAdapterChoice(wait=f"waiting for spec.baseAdapter: {exc}")
            return BaseAdapterChoice(refusal=f"spec.baseAdapter.job: {exc}")
        refusal = owner_refusal(choice, self.namespace, owner)
        return choice if refusal is None else BaseAdapterChoice(refusal=refusal)

    async def keep_children(
        self, spec: LoRAJobSpec, run: RunRecord, job: dict[str, Any]
    ) -> tuple[dict[str, Any], NameConflict | None]:
        """Every resync of a running run: its ServiceAccount, ConfigMap and Service made again
        when missing, and their declared fields (and the Job's mutable ones) put back when
        edited (controller/children.py). Returns the Job as it now is, and the first child
        that someone else's object replaced."""
        kept = await ensure_run_children(self.kube, self.context(spec, run, self.plan()), job)
        for applied in kept.applied:
            if applied.changed:
                self.event("Normal", Reason.Restored, applied.describe())
        return kept.job or job, next(iter(kept.conflicts), None)

    def child_conflict(self, conflict: NameConflict) -> None:
        """A child of a running run was replaced by someone else's object: it is left alone and
        the run followed on (its pods may still run); said in the message, and once as an Event
        (the message stays, so the next resync sees it already said)."""
        message = conflict.message()
        if self.original.get("message") != message:
            self.event("Warning", Reason.NameConflict, message)
        self.status.message = message

    async def create_workload(
        self,
        spec: LoRAJobSpec,
        run: RunRecord,
        plan: PlanStatus,
        queue: str | None,
        recreated: bool = False,
    ) -> None:
        made = await ensure_run_children(self.kube, self.context(spec, run, plan))
        if made.conflicts:
            self.name_conflict(made.conflicts[0])
            return
        job = run_name(self.name, run.id)
        self.status.queue_position = None
        if queue:
            self.condition(
                ConditionType.Admitted,
                False,
                Reason.WaitingForKueue,
                f"Job {job} queued in {queue}",
            )
            self.set_phase(Phase.Queued, f"waiting for Kueue LocalQueue {queue} to admit {job}")
        else:
            self.condition(
                ConditionType.Admitted,
                True,
                Reason.Admitted,
                reserved_message(plan, self.on_cpu(plan)),
            )
            self.set_phase(Phase.Running, f"Job {job} created")
        if run.start_time is None:
            run.start_time = now_iso()
        if self.status.start_time is None:
            self.status.start_time = run.start_time
        self.condition(
            ConditionType.Running,
            False,
            Reason.Starting,
            f"waiting for {plan.nodes} pod(s) of {job}",
        )
        if recreated:
            restored = "; ".join(a.describe() for a in made.applied if a.changed)
            self.event(
                "Normal", Reason.Restored, f"{restored}; resuming from the latest checkpoint"
            )
        else:
            self.event("Normal", Reason.Created, f"created Job {job} ({plan.nodes} node(s))")
            unservable = unservable_spec(spec)  # serving_choice.py: the spec alone
            if unservable is not None:
                self.event("Warning", Reason.IncompatibleAdapter, unservable)

    # ------------------------------------------------------------------ following a run

    async def credentials(self, spec: LoRAJobSpec) -> S3Credentials | None:
        try:
            return await resolve_credentials(self.read_secret, self.namespace, spec, self.config)
        except CredentialsError as exc:
            self.status.message = f"cannot read progress: {exc}"
            return None

    async def lineage(self, spec: LoRAJobSpec, run: RunRecord) -> RunLineage | None:
        creds = await self.credentials(spec)
        return await run_lineage(store_for(creds) if creds else None, run, self.uid)

    async def progress(self, spec: LoRAJobSpec, run: RunRecord) -> Progress | None:
        creds = await self.credentials(spec)
        if creds is None:
            return None
        progress = await read_progress(store_for(creds), run.output_uri, self.uid)
        if progress is None:
            return None
        record_progress(self.status, progress)
        checkpoint = progress.latest_checkpoint
        if checkpoint and self.condition(
            ConditionType.CheckpointSaved, True, Reason.Saved, checkpoint
        ):
            self.event("Normal", Reason.CheckpointSaved, checkpoint)
        return progress

    async def follow(self, spec: LoRAJobSpec, run: RunRecord, job: dict[str, Any]) -> None:
        seen = JobObservation.of(job)
        job_name = seen.name
        plan = self.plan()
        state = seen.state
        if state is JobState.WAITING_FOR_KUEUE:
            queue = self.queue_name(spec)
            self.condition(
                ConditionType.Admitted,
                False,
                Reason.WaitingForKueue,
                f"Job {job_name} in {queue}",
            )
            self.set_phase(Phase.Queued, f"waiting for Kueue LocalQueue {queue}")
            return
        if self.status.phase == Phase.Queued:
            self.condition(
                ConditionType.Admitted, True, Reason.Admitted, f"Kueue admitted Job {job_name}"
            )
            self.set_phase(Phase.Running, f"Job {job_name} admitted")
        # No pod has started yet: there is no progress to read (saves a Secret read and an S3
        # request per pending job and resync, which is most of them in a large queue).
        progress = await self.progress(spec, run) if seen.started else None
        failed = seen.failed_pods
        if seen.new_failures(self.status.restarts):
            self.status.restarts = failed
            self.event(
                "Warning",
                Reason.PodFailed,
                f"a pod of {job_name} failed ({failed} so far); retrying from the latest "
                "checkpoint",
            )
        if state is JobState.SUCCEEDED:
            await self.succeed(spec, run, progress)
        elif state is JobState.FAILED and seen.failure is not None:
            await self.fail(run, job_name, seen.failure, progress)
        elif state is JobState.RUNNING:
            active = seen.active
            summary = self.status.progress_summary
            detail = f", step {summary}" if summary else ""
            if self.condition(
                ConditionType.Running,
                True,
                Reason.PodsRunning,
                f"{active}/{plan.nodes} pod(s) active",
            ):
                self.event("Normal", Reason.Running, f"{active} pod(s) of {job_name} running")
            self.set_phase(Phase.Running, f"training{detail}")

    async def succeed(self, spec: LoRAJobSpec, run: RunRecord, progress: Progress | None) -> None:
        adapter = (progress.adapter_uri if progress else None) or f"{run.output_uri}/{FINAL_DIR}"
        finished = now_iso()
        run.phase = Phase.Succeeded
        run.adapter_uri = adapter
        run.completion_time = finished
        run.forecast = completed_forecast(run, progress)
        run.lineage = await self.lineage(spec, run)  # the trainer's final MANIFEST.json
        if progress is not None:
            if progress.loss is not None:
                run.final_loss = progress.loss
            if progress.eval_loss is not None:
                run.final_eval_loss = progress.eval_loss
            if progress.best_eval_loss is not None:  # final/ holds the best step's adapter
                run.final_eval_loss = progress.best_eval_loss
        self.status.adapter_uri = adapter
        self.status.completion_time = finished
        stopped = early_stop_note(progress)
        self.condition(ConditionType.Running, False, Reason.Completed, "training finished")
        self.condition(ConditionType.Succeeded, True, Reason.Completed, f"adapter at {adapter}")
        self.set_phase(
            Phase.Succeeded, f"adapter at {adapter}" + (f"; {stopped}" if stopped else "")
        )
        self.released = True
        self.event("Normal", Reason.Succeeded, f"run {run.id} finished; adapter at {adapter}")
        if stopped:
            self.event("Normal", Reason.StoppedEarly, f"run {run.id} {stopped}")
        await self.after_completion(spec, run)

    async def fail(
        self,
        run: RunRecord,
        job_name: str,
        job_condition: dict[str, Any],
        progress: Progress | None,
    ) -> None:
        message = (progress.last_error if progress else None) or await pod_failure_message(
            self.kube, self.namespace, self.name, run.id
        )
        message = message or job_condition.get("message") or "the trainer Job failed"
        reason = job_condition.get("reason") or Reason.JobFailed  # the Job's own, if any
        finished = now_iso()
        run.phase = Phase.Failed
        run.completion_time = finished
        self.status.completion_time = finished
        self.condition(ConditionType.Running, False, Reason.Failed, message)
        self.condition(ConditionType.Failed, True, reason, message)
        self.set_phase(Phase.Failed, message)
        self.released = True
        self.event("Warning", Reason.Failed, f"Job {job_name} failed: {message}")

    async def suspend(self, run: RunRecord) -> None:
        job = run_name(self.name, run.id)
        try:
            deleted = await delete_owned(self.kube, JOBS, self.namespace, job, self.uid)
        except NameConflict:
            deleted = False  # someone else's Job of that name: not ours to stop
        if self.set_phase(Phase.Suspended, "suspended; checkpoints kept") or deleted:
            self.condition(ConditionType.Running, False, Reason.Suspended, "spec.suspend is true")
            self.event("Normal", Reason.Suspended, f"deleted Job {job}; checkpoints kept")
            self.released = True
        self.status.queue_position = None

    # ------------------------------------------------------------------ after completion

    async def export(self, spec: LoRAJobSpec, run: RunRecord) -> None:
        """spec.export.merged: create the run's export Job once it succeeded, then follow it into
        the Exported condition and runs[].mergedURI. A failed export leaves the run Succeeded;
        deleting the failed Job retries."""
        if not spec.export.merged or run.phase != Phase.Succeeded or run.merged_uri:
            return
        name = export_job_name(self.name, run.id)
        job = await self.kube.get(JOBS, self.namespace, name)
        if job is None:
            body = build_export_job(self.context(spec, run, self.plan()))
            try:
                await create_owned(self.kube, JOBS, self.namespace, body, self.uid)
            except NameConflict as exc:
                self.condition(ConditionType.Exported, False, Reason.NameConflict, str(exc))
                return
            message = f"Job {name} merges run {run.id}'s adapter into the base model"
            if self.condition(ConditionType.Exported, "Unknown", Reason.Exporting, message):
                self.event("Normal", Reason.Exporting, message)
            return
        if not controlled_by(job, self.uid):
            conflict = NameConflict.of(job, "Job")
            self.condition(ConditionType.Exported, False, Reason.NameConflict, str(conflict))
            return
        seen = JobObservation.of(job)
        if seen.state is JobState.SUCCEEDED:
            run.merged_uri = merged_uri(run.output_uri)
            message = f"merged model at {run.merged_uri}"
            if self.condition(ConditionType.Exported, True, Reason.Exported, message):
                self.event("Normal", Reason.Exported, f"run {run.id}: {message}")
                await self.prune_exports()
        elif seen.state is JobState.FAILED:
            found = await export_failure_message(self.kube, self.namespace, self.name, run.id)
            why = found or str((seen.failure or {}).get("message") or f"Job {name} failed")
            if self.condition(ConditionType.Exported, False, Reason.ExportFailed, why):
                self.event("Warning", Reason.ExportFailed, f"run {run.id}: {why}")
                await self.prune_exports()

    async def prune_exports(self) -> None:
        """The latest run's export finished: the earlier runs' finished export Jobs go, their
        mergedURIs stay in status.runs (docs/training.md, "Export")."""
        runs = self.status.runs
        await prune_earlier_exports(self.kube, self.namespace, self.name, self.uid, runs)

    async def after_completion(self, spec: LoRAJobSpec, run: RunRecord) -> None:
        await self.export(spec, run)
        now = self.owner.clock()
        if ttl_expired(spec.ttl_seconds_after_finished, self.status.completion_time, now):
            # The uid precondition: never delete a newer LoRAJob that took this name meanwhile
            # (the server refuses with 409; that one is not finished, so nothing to do).
            uid = deletion_precondition(self.uid)
            try:
                await self.kube.delete(LORAJOBS, self.namespace, self.name, uid=uid)
            except KubeError as exc:
                if exc.status != 409:
                    raise
                self.replaced = True
                return
            self.event("Normal", Reason.Expired, "ttlSecondsAfterFinished reached; deleting")
            return
        adapter = self.status.adapter_uri
        serving = find(self.status.conditions, ConditionType.Serving)
        action = serving_action(
            enabled=spec.serving.enabled,
            succeeded=run.phase == Phase.Succeeded,
            adapter=adapter,
            inference_service=self.status.inference_service,
            serving_reason=serving.reason if serving is not None else None,
        )
        if action is ServingAction.ENSURE and adapter:
            # one choice for both modes: serving.promote, and whether vLLM can load it
            choice = await self.serving_choice(spec)
            if choice.refusal is not None:
                self.refuse_serving(choice.refusal)  # nothing served or registered changes
                return
            adapter = choice.promotion.adapter_uri or adapter
            serving_run = choice.promotion.run_id or serving_run_id(
                self.status.runs, adapter, run.id
            )
            if spec.serving.mode == "shared":
                await self.serve_shared(spec, adapter, serving_run)
                return
            await self.leave_shared_server(None)  # switched from shared to dedicated
            # listed by name in the serving ServiceAccount, never read or copied for serving
            ref = s3_target(spec, self.config).secret
            state = await ensure_serving(
                self.kube,
                self.name,
                self.namespace,
                self.uid,
                spec,
                adapter,
                serving_run,
                ref.name if ref is not None else None,
                self.status.plan.serving if self.status.plan is not None else None,
            )
            if self.condition(ConditionType.Serving, state.status, state.reason, state.message):
                kind = "Normal" if state.status != "False" else "Warning"
                self.event(kind, f"Serving{state.reason}", state.message)
            if state.reason not in (Reason.KServeNotInstalled, Reason.NameConflict):
                self.status.inference_service = self.name
                self.promoted(serving_run)
        elif action is ServingAction.STOP:
            await self.stop_serving()

    async def serve_shared(self, spec: LoRAJobSpec, adapter: str, serving_run: str) -> None:
        """serving.mode shared: the promoted run's adapter on its base model's server
        (shared_serving.py; the entry names the run); another shared server it was on before
        is left, and its own dedicated server only once the shared one is Ready (an upgrade from
        the dedicated default never leaves the adapter unserved)."""
        ref = s3_target(spec, self.config).secret  # listed by name, never read or copied
        state, server = await ensure_shared_serving(
            self.kube,
            self.name,
            self.namespace,
            self.uid,
            spec,
            adapter,
            ref,
            run_id=serving_run,
            plan=self.status.plan.serving if self.status.plan is not None else None,
            config=self.config,
        )
        if self.status.inference_service == self.name:  # it served dedicated until now
            if state.status != "True":  # its dedicated server serves until the shared one does
                until = f"the dedicated InferenceService {self.name} serves until {server} is ready"
                message = f"{state.message}; {until}"
                if self.condition(ConditionType.Serving, state.status, state.reason, message):
                    kind = "Normal" if state.status != "False" else "Warning"
                    self.event(kind, f"Serving{state.reason}", message)
                return
            await remove_serving(self.kube, self.name, self.namespace, self.uid)  # only its own
        await self.leave_shared_server(server)
        if self.condition(ConditionType.Serving, state.status, state.reason, state.message):
            kind = "Normal" if state.status != "False" else "Warning"
            self.event(kind, f"Serving{state.reason}", state.message)
        if state.reason not in (Reason.KServeNotInstalled, Reason.NameConflict):
            self.status.inference_service = server
            if state.reason != Reason.ServingError:  # the entry names serving_run now
                self.promoted(serving_run)

    async def leave_shared_server(self, keep: str | None) -> None:
        """Take this job off the shared server it served on, unless that is `keep`."""
        server = self.status.inference_service
        shared = bool(server) and str(server).startswith(f"{SHARED_SERVER_COMPONENT}-")
        if server and shared and server != self.name and server != keep:
            await leave_shared_serving(self.kube, self.namespace, server, self.uid)
            self.status.inference_service = None

    async def serving_choice(self, spec: LoRAJobSpec) -> ServingChoice:
        async def open_store() -> S3Store | None:
            creds = await self.credentials(spec)
            return store_for(creds) if creds is not None else None

        return await choose_served(spec, self.status, open_store, self.uid)

    def refuse_serving(self, refusal: ServingState) -> None:
        """Serving=False naming the field; whatever serves now is left as it is."""
        if self.condition(ConditionType.Serving, refusal.status, refusal.reason, refusal.message):
            self.event("Warning", f"Serving{refusal.reason}", refusal.message)

    def promoted(self, run_id: str) -> None:
        previous = self.status.serving_run
        self.status.serving_run = run_id
        if previous is not None and previous != run_id:
            self.event("Normal", Reason.Promoted, f"run {run_id} serves (was {previous})")

    async def stop_serving(self) -> None:
        """Delete the serving objects this LoRAJob controls; name the others, left alone."""
        await self.leave_shared_server(None)
        left_alone = await remove_serving(self.kube, self.name, self.namespace, self.uid)
        self.status.inference_service = None
        message = "serving.enabled is false"
        if left_alone:
            names = ", ".join(f"{c.kind} {c.namespace}/{c.name}" for c in left_alone)
            message += f"; left alone (not owned by this LoRAJob): {names}"
        self.condition(ConditionType.Serving, False, Reason.Disabled, message)
