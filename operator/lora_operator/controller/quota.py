"""GPU quota admission: pure functions over the jobs that hold or wait for GPUs.

A job is admitted when its GPUs fit every quota that applies to it (its namespace's, or the
default, and the cluster's; total and per GPU type) after counting the running jobs and the older
queued jobs that fit first (oldest first by creationTimestamp, like Kueue's BestEffortFIFO: an
old job that does not fit does not block a small newer one that does).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..api.operator_config import Quota, Quotas


@dataclass(frozen=True)
class Demand:
    """One job's claim on GPUs; `holding` = admitted and not finished (counts as usage)."""

    namespace: str
    name: str
    gpu_type: str
    gpus: int
    created: str  # creationTimestamp, ISO 8601 (sorts chronologically)
    holding: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


@dataclass(frozen=True)
class Decision:
    admitted: bool
    message: str
    queue_position: int | None = None


def namespace_quota(quotas: Quotas, namespace: str) -> Quota:
    return quotas.namespaces.get(namespace, quotas.default)


@dataclass
class _Usage:
    total: int = 0
    by_type: dict[str, int] | None = None

    def add(self, demand: Demand) -> None:
        self.total += demand.gpus
        self.by_type = self.by_type or {}
        self.by_type[demand.gpu_type] = self.by_type.get(demand.gpu_type, 0) + demand.gpus

    def of(self, gpu_type: str) -> int:
        return (self.by_type or {}).get(gpu_type, 0)


def violation(quota: Quota, total: int, of_type: int, demand: Demand, scope: str) -> str | None:
    """The first limit of `quota` that `demand` would exceed when `scope` already uses `total`
    GPUs (`of_type` of the demand's type), as a sentence with the numbers; None if it fits."""
    limit_type = quota.gpu_types.get(demand.gpu_type)
    if limit_type is not None and of_type + demand.gpus > limit_type:
        return (
            f"needs {demand.gpus} {demand.gpu_type} GPUs; {scope} uses "
            f"{of_type} of {limit_type} {demand.gpu_type}"
        )
    if quota.gpus is not None and total + demand.gpus > quota.gpus:
        return (
            f"needs {demand.gpus} {demand.gpu_type} GPUs; {scope} uses {total} of {quota.gpus} GPUs"
        )
    return None


def _violation(quota: Quota, usage: _Usage, demand: Demand, scope: str) -> str | None:
    return violation(quota, usage.total, usage.of(demand.gpu_type), demand, scope)


class Ledger:
    """Usage per namespace and cluster-wide while walking jobs in admission order."""

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas
        self.namespaces: dict[str, _Usage] = {}
        self.cluster = _Usage()

    def check(self, demand: Demand) -> str | None:
        if demand.gpus <= 0:
            return None
        ns_usage = self.namespaces.setdefault(demand.namespace, _Usage())
        problem = _violation(
            namespace_quota(self.quotas, demand.namespace),
            ns_usage,
            demand,
            f"namespace {demand.namespace}",
        )
        return problem or _violation(self.quotas.cluster, self.cluster, demand, "the cluster")

    def add(self, demand: Demand) -> None:
        self.namespaces.setdefault(demand.namespace, _Usage()).add(demand)
        self.cluster.add(demand)


def order_key(demand: Demand) -> tuple[str, str, str]:
    return demand.created, demand.namespace, demand.name


def unlimited(quota: Quota) -> bool:
    return quota.gpus is None and not quota.gpu_types


def limited(demand: Demand, quotas: Quotas) -> bool:
    """Whether any quota can refuse `demand` (no GPUs, or no namespace or cluster limit: never)."""
    return demand.gpus > 0 and not (
        unlimited(namespace_quota(quotas, demand.namespace)) and unlimited(quotas.cluster)
    )


def admitted_message(demand: Demand) -> str:
    """A CPU job (no GPUs) is never limited by a GPU quota: say so rather than "0 cpu GPUs"."""
    if demand.gpus <= 0:
        return f"admitted: no GPUs ({demand.gpu_type or 'cpu'} job; GPU quotas do not apply)"
    return f"admitted: {demand.gpus} {demand.gpu_type} GPUs"


def admit(candidate: Demand, others: Iterable[Demand], quotas: Quotas) -> Decision:
    """Admit `candidate` or say why not and where it stands in its namespace's queue. Without a
    limit on the candidate (no namespace or cluster quota, or no GPUs) nothing else is walked:
    each admission is then O(1), not O(jobs) (1000 new jobs were O(jobs²))."""
    if not limited(candidate, quotas):
        return Decision(True, admitted_message(candidate))
    ledger = Ledger(quotas)
    waiting: list[Demand] = []
    for demand in others:
        if demand.key == candidate.key:
            continue
        if demand.holding:
            ledger.add(demand)
        elif order_key(demand) < order_key(candidate):
            waiting.append(demand)
    # Older queued jobs go first: reserve what they would get.
    for demand in sorted(waiting, key=order_key):
        if ledger.check(demand) is None:
            ledger.add(demand)
    problem = ledger.check(candidate)
    if problem is None:
        return Decision(True, admitted_message(candidate))
    ahead = sum(1 for d in waiting if d.namespace == candidate.namespace)
    return Decision(False, problem, queue_position=ahead + 1)


def usage_by_namespace(demands: Iterable[Demand]) -> dict[tuple[str, str], int]:
    """(namespace, gpu type) -> GPUs held, for the metrics."""
    result: dict[tuple[str, str], int] = {}
    for demand in demands:
        if demand.holding and demand.gpus > 0:
            key = (demand.namespace, demand.gpu_type)
            result[key] = result.get(key, 0) + demand.gpus
    return result
