"""GPU usage kept per quota as jobs are admitted and finish, so an admission is O(1) amortized.

`quota.admit` states the rule by replaying the whole queue for every decision (O(jobs)); at
10,000 jobs that replay was the operator's largest cost. The ledger gives the same decisions
from kept state:

- `held`: GPUs of the admitted (Running) jobs per scope (namespace or cluster, all types or one);
- the oldest-first pass over the queued jobs that a quota limits: which of them fit now, in
  order, on top of `held` (`reserved`, what they would take is `reserved_usage`). A candidate is
  admitted when the pass, with it included, reserves it, exactly the replay's answer.

The pass is kept, not redone, when a change cannot alter its outcome (proofs at each rule):
a new queued job newer than every other, a reserved job becoming Running, usage added that fits
on top of every reservation, a queued job that did not fit going away. Freed GPUs (a job
finishing, deleted, re-planned, a reservation withdrawn) or changed quotas mark it stale: it is
redone once, at the next decision, over the queued jobs a quota limits. `walked` counts the
jobs every pass and lookup visit (a test holds it flat as jobs grow).

The ledger is keyed by (namespace, name) and fed the whole demand of a job each time (`set`),
never a delta, so a job is counted once and released once; `recount` rebuilds `held` from the
kept demands (at every resync) and says whether it had drifted.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable, Iterator

from ..api.operator_config import Quotas
from .quota import (
    Decision,
    Demand,
    admitted_message,
    limited,
    namespace_quota,
    order_key,
    violation,
)

Key = tuple[str, str]
Scope = tuple[str, str]  # (namespace, or CLUSTER; GPU type, or ALL_TYPES)
Usage = dict[Scope, int]
OrderKey = tuple[str, str, str]
CLUSTER = "*"  # not a namespace name (DNS labels have no "*")
ALL_TYPES = ""


def scopes(demand: Demand) -> tuple[Scope, Scope, Scope, Scope]:
    """The four counters a job's GPUs count in: its namespace's and the cluster's, in total and
    for its GPU type (a 2-node x 4-GPU job adds 8 to each)."""
    ns, gpu = demand.namespace, demand.gpu_type
    return (ns, ALL_TYPES), (ns, gpu), (CLUSTER, ALL_TYPES), (CLUSTER, gpu)


def add_usage(usage: Usage, demand: Demand, sign: int = 1) -> None:
    for scope in scopes(demand):
        left = usage.get(scope, 0) + sign * demand.gpus
        if left:
            usage[scope] = left
        else:
            usage.pop(scope, None)


def usage_of(demands: Iterable[Demand]) -> Usage:
    usage: Usage = {}
    for demand in demands:
        add_usage(usage, demand)
    return usage


def problem_with(quotas: Quotas, demand: Demand, used: Callable[[Scope], int]) -> str | None:
    """Why `demand` does not fit when each scope already uses `used(scope)`; None if it fits.
    The namespace's quota is checked before the cluster's (the message names the first)."""
    ns_total, ns_type, cluster_total, cluster_type = scopes(demand)
    return violation(
        namespace_quota(quotas, demand.namespace),
        used(ns_total),
        used(ns_type),
        demand,
        f"namespace {demand.namespace}",
    ) or violation(quotas.cluster, used(cluster_total), used(cluster_type), demand, "the cluster")


def summed(*usages: Usage) -> Callable[[Scope], int]:
    return lambda scope: sum(u.get(scope, 0) for u in usages)


def oldest_first(held: Usage, queued: Iterable[Demand], quotas: Quotas) -> Iterator[Demand]:
    """The queued jobs that fit, taken oldest first on top of `held` (an old job that does not
    fit does not block a newer, smaller one): the replay of `quota.admit`, done once."""
    taken: Usage = {}
    used = summed(held, taken)
    for demand in sorted(queued, key=order_key):
        if problem_with(quotas, demand, used) is None:
            add_usage(taken, demand)
            yield demand


def same_claim(a: Demand, b: Demand) -> bool:
    return (a.namespace, a.gpu_type, a.gpus) == (b.namespace, b.gpu_type, b.gpus)


@dataclasses.dataclass
class QuotaLedger:
    """Every job's current demand, and the usage and queue pass derived from them."""

    quotas: Quotas
    demands: dict[Key, Demand] = dataclasses.field(default_factory=dict)
    held: Usage = dataclasses.field(default_factory=dict)
    queued: dict[Key, Demand] = dataclasses.field(default_factory=dict)  # a quota limits them
    reserved: dict[Key, Demand] = dataclasses.field(default_factory=dict)
    reserved_usage: Usage = dataclasses.field(default_factory=dict)
    # per namespace, the order keys of every job waiting (queue positions)
    lines: dict[str, list[OrderKey]] = dataclasses.field(default_factory=dict)
    newest: OrderKey | None = None  # no queued job is newer than this
    stale: bool = False
    walked: int = 0  # jobs visited by passes and lookups (the test of O(1) counts them)
    passes: int = 0

    # ------------------------------------------------------------------ keeping it current

    def set(self, key: Key, demand: Demand | None) -> None:
        """Record a job's whole current demand (None: it holds and waits for nothing)."""
        old = self.demands.get(key)
        if old == demand:
            return
        if (
            old is not None
            and demand is not None
            and key in self.reserved
            and demand.holding
            and same_claim(old, demand)
        ):
            # A reserved job starts: its GPUs move from the pass to `held`, the sum stays. Older
            # reserved jobs fitted under that sum, unreserved ones saw less usage: all unchanged.
            self._leave_line(old)
            del self.queued[key], self.reserved[key]
            add_usage(self.reserved_usage, old, -1)
            self.demands[key] = demand
            add_usage(self.held, demand)
            return
        if old is not None:
            self._drop(key, old)
        if demand is None:
            self.demands.pop(key, None)
        else:
            self.demands[key] = demand
            self._add(key, demand)

    def _drop(self, key: Key, old: Demand) -> None:
        if old.holding:
            add_usage(self.held, old, -1)
            self.stale = self.stale or (old.gpus > 0 and bool(self.queued))  # GPUs freed
            return
        self._leave_line(old)
        if self.queued.pop(key, None) is not None and self.reserved.pop(key, None) is not None:
            add_usage(self.reserved_usage, old, -1)
            self.stale = True  # a reservation withdrawn: a newer job may fit now
        # An unreserved job leaving changes nothing: it took nothing in the pass.

    def _leave_line(self, old: Demand) -> None:
        line = self.lines.get(old.namespace, [])
        at = bisect.bisect_left(line, order_key(old))
        if at < len(line) and line[at] == order_key(old):
            del line[at]

    def _add(self, key: Key, demand: Demand) -> None:
        if demand.holding:
            if self.reserved and not self.stale and not self._fits(demand, self.reserved_usage):
                self.stale = True  # could push a reserved job out
            add_usage(self.held, demand)
            return
        bisect.insort(self.lines.setdefault(demand.namespace, []), order_key(demand))
        if not limited(demand, self.quotas):
            return
        self.queued[key] = demand
        self.newest = max(order_key(demand), self.newest or order_key(demand))
        if self.stale:
            return
        if order_key(demand) >= self.newest or not self.reserved:
            # Newest of all: older reservations are all of `reserved_usage`. Or none reserved:
            # nothing is ahead of it, and newer jobs that did not fit fit even less after it.
            if self._fits(demand, self.reserved_usage):
                self._reserve(key, demand)
        elif self._fits(demand, self._reserved_before(demand)):
            self.stale = True  # it would take GPUs a newer reserved job counted on

    def _reserve(self, key: Key, demand: Demand) -> None:
        self.reserved[key] = demand
        add_usage(self.reserved_usage, demand)

    def _fits(self, demand: Demand, ahead: Usage) -> bool:
        return problem_with(self.quotas, demand, summed(self.held, ahead)) is None

    def _reserved_before(self, demand: Demand) -> Usage:
        """What the reserved jobs older than `demand` take. Reserved jobs fit together within
        the quotas, each with >= 1 GPU, so there are at most as many as free GPUs: bounded by
        the quotas, not by the number of jobs."""
        mine = order_key(demand)
        ahead: Usage = {}
        for other in self.reserved.values():
            self.walked += 1
            if order_key(other) < mine:
                add_usage(ahead, other)
        return ahead

    def redo_pass(self) -> None:
        """The oldest-first pass from scratch over the queued jobs a quota limits."""
        self.passes += 1
        self.walked += len(self.queued)
        fitting = list(oldest_first(self.held, self.queued.values(), self.quotas))
        self.reserved = {d.key: d for d in fitting}
        self.reserved_usage = usage_of(fitting)
        self.newest = max((order_key(d) for d in self.queued.values()), default=None)
        self.stale = False

    def recount(self) -> bool:
        """Rebuild `held` from the kept demands; True if it had drifted (then the pass is redone
        at the next decision too)."""
        held = usage_of(d for d in self.demands.values() if d.holding)
        drifted = held != self.held
        if drifted:
            self.held = held
            self.stale = True
        return drifted

    def use_quotas(self, quotas: Quotas) -> None:
        """A reloaded config: which jobs a quota limits, and the pass, follow the new one."""
        if quotas is self.quotas or quotas == self.quotas:
            self.quotas = quotas
            return
        self.quotas = quotas
        self.walked += len(self.demands)
        self.queued = {
            key: d for key, d in self.demands.items() if not d.holding and limited(d, quotas)
        }
        self.stale = True

    # ------------------------------------------------------------------ deciding

    def admit(self, candidate: Demand) -> Decision:
        """The decision of `quota.admit(candidate, every other job)`, from kept state. The
        candidate is recorded as waiting; the caller records it as holding once it starts."""
        if not limited(candidate, self.quotas):
            return Decision(True, admitted_message(candidate))
        key = candidate.key
        self.set(key, dataclasses.replace(candidate, holding=False))
        if self.stale:
            self.redo_pass()
        if key in self.reserved:
            return Decision(True, admitted_message(candidate))
        problem = problem_with(
            self.quotas, candidate, summed(self.held, self._reserved_before(candidate))
        )
        if problem is None:  # cannot happen while the rules above hold; a fresh pass is exact
            self.stale = True
            return self.admit(candidate)
        return Decision(False, problem, queue_position=self.position(candidate))

    def position(self, demand: Demand) -> int:
        """1 + the jobs of its namespace waiting longer (any waiting job, as the replay counts)."""
        return bisect.bisect_left(self.lines.get(demand.namespace, []), order_key(demand)) + 1

    def admissible(self) -> list[Key]:
        """The queued jobs that would be admitted now, oldest first (worth re-evaluating after
        GPUs are freed; the others' decisions cannot have changed to admitted)."""
        if self.stale:
            self.redo_pass()
        return [d.key for d in sorted(self.reserved.values(), key=order_key)]
