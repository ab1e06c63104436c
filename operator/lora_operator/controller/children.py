"""One plug per kind of object a LoRAJob owns, applied level-based: at every resync of a running
(or serving) job each plug builds its object as declared, creates it when it is missing, and puts
back the fields the operator declares when they drifted, on objects this LoRAJob controls. An
object of that name it does not control is never touched (`NameConflict`, ownership.py).

Why: a child deleted or edited mid-run (the headless Service that gives rank 0 its DNS name, the
ConfigMap a retried pod reads at start) would otherwise stay broken, and the next retried pod
would not rendezvous. Only the declared fields are compared: what the API server or another
controller fills in (a Service's clusterIPs, KServe's defaults in an InferenceService, labels
others add) is neither compared nor removed. A Job's pod template is immutable: its plug restores
labels, annotations and `spec.suspend` (only when no Kueue queue owns that field); a deleted Job
is created again by the reconciler while its run is unfinished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .kube import Kube
from .manifests import (
    RunContext,
    build_config_map,
    build_job,
    build_service,
    build_trainer_account,
)
from .ownership import NameConflict, controlled_by, create_owned


class _Absent:
    """A declared field that has no value (neither in the object nor as a default)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class Declared:
    """One field the operator declares on a child. `exact`: the whole value is the operator's
    (keys someone added are removed: a selector, the ConfigMap's data); otherwise the declared
    keys must match and others are left (labels, server defaults). `default`: what the API
    server means when the field is absent (a Job's `suspend` is false)."""

    path: tuple[str, ...]
    exact: bool = False
    default: Any = ABSENT

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


LABELS = Declared(("metadata", "labels"))
ANNOTATIONS = Declared(("metadata", "annotations"))


@dataclass(frozen=True)
class Plug:
    """A kind of child: where it lives in the API and which of its fields are the operator's."""

    kind: str
    resource: str
    declared: tuple[Declared, ...]


TRAINER_ACCOUNT = Plug(
    "ServiceAccount",
    "v1/serviceaccounts",
    (LABELS, Declared(("automountServiceAccountToken",))),
)
CONFIG_MAP = Plug("ConfigMap", "v1/configmaps", (LABELS, ANNOTATIONS, Declared(("data",), True)))
SERVICE = Plug(
    "Service",
    "v1/services",
    (
        LABELS,
        ANNOTATIONS,
        Declared(("spec", "selector"), exact=True),
        Declared(("spec", "ports")),
        Declared(("spec", "publishNotReadyAddresses")),
    ),
)
# No queue: the operator runs the Job unsuspended and puts back a `suspend: true` set by hand.
JOB = Plug(
    "Job",
    "batch/v1/jobs",
    (LABELS, ANNOTATIONS, Declared(("spec", "suspend"), default=False)),
)
# Kueue un-suspends the Job on admission: that field is Kueue's, not the operator's.
QUEUED_JOB = Plug("Job", "batch/v1/jobs", (LABELS, ANNOTATIONS))
SERVING_ACCOUNT = Plug(
    "ServiceAccount", "v1/serviceaccounts", (LABELS, Declared(("secrets",), exact=True))
)
INFERENCE_SERVICE = Plug(
    "InferenceService",
    "serving.kserve.io/v1beta1/inferenceservices",
    (LABELS, Declared(("spec",))),
)
# A shared server's pods (vLLM and the adapter syncer), controlled by its registry.
SERVING_RUNTIME = Plug(
    "ServingRuntime",
    "serving.kserve.io/v1alpha1/servingruntimes",
    (LABELS, Declared(("spec",))),
)
# A shared server where the cluster serves KServe's LLMInferenceService (serving_api.py): vLLM and
# the adapter syncer in its pod template, controlled by the registry (shared_llmisvc.py).
LLM_INFERENCE_SERVICE = Plug(
    "LLMInferenceService",
    "serving.kserve.io/v1alpha1/llminferenceservices",
    (LABELS, Declared(("spec",))),
)


def value_at(obj: Any, path: tuple[str, ...], default: Any = ABSENT) -> Any:
    """The value at `path`, or `default` where a step is missing or not a mapping."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj


def covers(actual: Any, desired: Any) -> bool:
    """Whether `actual` holds everything `desired` declares: mappings key by key (extra keys in
    `actual` are someone else's), lists item by item at the same length, values equal."""
    if isinstance(desired, dict):
        return isinstance(actual, dict) and all(
            key in actual and covers(actual[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(covers(a, d) for a, d in zip(actual, desired, strict=True))
        )
    return bool(actual == desired)


def restoring_value(field_: Declared, desired: Any, actual: Any) -> Any:
    """What the merge patch sends to put `desired` back: an exact mapping also removes the keys
    someone added (null deletes in a merge patch)."""
    if field_.exact and isinstance(desired, dict) and isinstance(actual, dict):
        return {**{key: None for key in actual if key not in desired}, **desired}
    return desired


def drifted(field_: Declared, desired: Any, actual: Any) -> bool:
    if field_.exact:
        return bool(actual != desired)
    return not covers(actual, desired)


def drift_patch(plug: Plug, desired: dict[str, Any], actual: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that restores the declared fields of `actual` that differ from
    `desired` (empty when none does). A field `desired` does not have is not compared."""
    patch: dict[str, Any] = {}
    for field_ in plug.declared:
        want = value_at(desired, field_.path, field_.default)
        if want is ABSENT:
            continue
        have = value_at(actual, field_.path, field_.default)
        if not drifted(field_, want, have):
            continue
        node = patch
        for key in field_.path[:-1]:
            node = node.setdefault(key, {})
        node[field_.path[-1]] = restoring_value(field_, want, have)
    return patch


def restored_fields(plug: Plug, patch: dict[str, Any]) -> tuple[str, ...]:
    """The declared fields a drift patch puts back, by their dotted names."""
    return tuple(f.dotted for f in plug.declared if value_at(patch, f.path) is not ABSENT)


@dataclass(frozen=True)
class Applied:
    """What applying one plug did: `obj` is the object as the API server now has it."""

    plug: Plug
    obj: dict[str, Any]
    created: bool = False
    restored: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.created or bool(self.restored)

    def describe(self) -> str:
        meta = self.obj.get("metadata") or {}
        where = f"{self.plug.kind} {meta.get('namespace', '')}/{meta.get('name', '')}"
        if self.created:
            return f"recreated {where} (it was missing)"
        return f"restored {', '.join(self.restored)} of {where}"


async def restore(
    kube: Kube,
    plug: Plug,
    namespace: str,
    desired: dict[str, Any],
    actual: dict[str, Any],
    uid: str,
) -> Applied:
    """Put back the drifted declared fields of `actual`, which must be controlled by `uid`
    (else NameConflict, nothing written). The patch carries the resourceVersion that was
    compared, so an object replaced in between is refused (409) rather than overwritten."""
    if not controlled_by(actual, uid):
        raise NameConflict.of(actual, plug.kind)
    patch = drift_patch(plug, desired, actual)
    if not patch:
        return Applied(plug, actual)
    fields = restored_fields(plug, patch)
    version = (actual.get("metadata") or {}).get("resourceVersion")
    if version:
        patch.setdefault("metadata", {})["resourceVersion"] = version
    name = desired["metadata"]["name"]
    obj = await kube.patch(plug.resource, namespace, name, patch)
    return Applied(plug, obj, restored=fields)


async def apply(
    kube: Kube, plug: Plug, namespace: str, desired: dict[str, Any], uid: str
) -> Applied:
    """Create the child if it is missing, else `restore` it."""
    actual = await kube.get(plug.resource, namespace, desired["metadata"]["name"])
    if actual is None:
        actual, created = await create_owned(kube, plug.resource, namespace, desired, uid)
        if created:
            return Applied(plug, actual, created=True)
    return await restore(kube, plug, namespace, desired, actual, uid)


# ------------------------------------------------------------------------------ a run's children


def run_children(ctx: RunContext) -> list[tuple[Plug, dict[str, Any]]]:
    """(plug, desired object) of a run in creation order: the Job last, so its pods find their
    ServiceAccount, config and DNS name."""
    account = build_trainer_account(ctx)
    return [
        *([(TRAINER_ACCOUNT, account)] if account is not None else []),
        (CONFIG_MAP, build_config_map(ctx)),
        (SERVICE, build_service(ctx)),
        (QUEUED_JOB if ctx.queue_name else JOB, build_job(ctx)),
    ]


@dataclass
class RunChildren:
    """What applying a run's plugs did. `job` is the run's Job as it now is (None when it was
    missing and not created because an object before it is someone else's)."""

    applied: list[Applied] = field(default_factory=list)
    conflicts: list[NameConflict] = field(default_factory=list)
    job: dict[str, Any] | None = None


async def ensure_run_children(
    kube: Kube, ctx: RunContext, job: dict[str, Any] | None = None
) -> RunChildren:
    """Apply every plug of the run. `job`: the run's Job as just read and found to be ours
    (not read again); None: it is created, unless an object before it is someone else's (its
    pods would mount or resolve that object). Conflicts are collected, not raised, so one
    foreign object does not stop the others being kept."""
    result = RunChildren()
    for plug, desired in run_children(ctx):
        try:
            if plug.kind != JOB.kind:
                result.applied.append(await apply(kube, plug, ctx.namespace, desired, ctx.uid))
            elif job is not None:
                applied = await restore(kube, plug, ctx.namespace, desired, job, ctx.uid)
                result.applied.append(applied)
                result.job = applied.obj
            elif not result.conflicts:
                applied = await apply(kube, plug, ctx.namespace, desired, ctx.uid)
                result.applied.append(applied)
                result.job = applied.obj
        except NameConflict as conflict:
            result.conflicts.append(conflict)
    return result
