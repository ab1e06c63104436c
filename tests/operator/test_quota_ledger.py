"""The kept quota usage (`quota_ledger.QuotaLedger`): sums worked out by hand, release and
re-admission, a changed plan, a rebuild from the jobs, the replay of `quota.admit` as the oracle
for random histories, and a count of the jobs visited per admission as the jobs grow."""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any

import pytest

from lora_operator.api.operator_config import Quotas
from lora_operator.controller.quota import Demand, admit, limited
from lora_operator.controller.quota_ledger import CLUSTER, QuotaLedger
from lora_operator.controller.reconcile import demand_from


def quotas(**raw: Any) -> Quotas:
    return Quotas.model_validate(raw)


def job(
    name: str, ns: str, gpu: str, nodes: int, per_node: int, second: int, phase: str
) -> dict[str, Any]:
    """A LoRAJob as the watch shows it, with the plan's own nodes x gpusPerNode total."""
    return {
        "metadata": {
            "namespace": ns,
            "name": name,
            "creationTimestamp": f"2026-01-01T00:{second // 60:02d}:{second % 60:02d}Z",
        },
        "status": {
            "phase": phase,
            "plan": {
                "gpuType": gpu,
                "nodes": nodes,
                "gpusPerNode": per_node,
                "totalGpus": nodes * per_node,
            },
        },
    }


def feed(ledger: QuotaLedger, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    ledger.set((meta["namespace"], meta["name"]), demand_from(obj))


def start(ledger: QuotaLedger, demand: Demand) -> bool:
    """What the reconciler does: decide, and record the job as holding when admitted."""
    decision = ledger.admit(demand)
    if decision.admitted:
        ledger.set(demand.key, dataclasses.replace(demand, holding=True))
    return decision.admitted


def d(name: str, gpus: int, second: int, *, ns: str = "a", gpu: str = "A100") -> Demand:
    return Demand(
        ns,
        name,
        gpu,
        gpus,
        f"2026-01-01T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z",
    )


def test_multi_node_jobs_count_nodes_times_gpus_per_node_per_type_and_scope() -> None:
    ledger = QuotaLedger(quotas())
    feed(ledger, job("big", "a", "H100", 2, 4, 0, "Running"))  # 8 H100
    feed(ledger, job("mid", "a", "A100", 3, 2, 1, "Running"))  # 6 A100
    feed(ledger, job("other", "b", "H100", 1, 1, 2, "Running"))  # 1 H100
    feed(ledger, job("waits", "b", "A100", 4, 8, 3, "Queued"))  # queued: holds nothing
    feed(ledger, job("cpu", "b", "cpu", 2, 3, 4, "Running"))  # CPU: no GPUs
    assert ledger.held == {
        ("a", ""): 14,
        ("a", "H100"): 8,
        ("a", "A100"): 6,
        ("b", ""): 1,
        ("b", "H100"): 1,
        (CLUSTER, ""): 15,
        (CLUSTER, "H100"): 9,
        (CLUSTER, "A100"): 6,
    }


def test_mixed_types_are_limited_per_type_and_in_total() -> None:
    # namespace a: 10 GPUs in all, at most 4 H100; cluster: 12 GPUs
    ledger = QuotaLedger(
        quotas(namespaces={"a": {"gpus": 10, "gpuTypes": {"H100": 4}}}, cluster={"gpus": 12})
    )
    assert start(ledger, d("h1", 4, 0, gpu="H100"))  # a: 4 (4 H100)
    decision = ledger.admit(d("h2", 1, 1, gpu="H100"))
    assert not decision.admitted
    assert decision.message == "needs 1 H100 GPUs; namespace a uses 4 of 4 H100"
    assert start(ledger, d("a1", 6, 2))  # a: 10 of 10
    decision = ledger.admit(d("a2", 1, 3))
    assert decision.message == "needs 1 A100 GPUs; namespace a uses 10 of 10 GPUs"
    assert start(ledger, d("b1", 2, 4, ns="b"))  # cluster: 12 of 12
    decision = ledger.admit(d("b2", 1, 5, ns="b"))
    assert decision.message == "needs 1 A100 GPUs; the cluster uses 12 of 12 GPUs"
    assert decision.queue_position == 1
    # queued: h2, a2 in a (positions 1, 2), b2 in b
    assert ledger.admit(d("a2", 1, 3)).queue_position == 2


def test_admission_release_and_admission_again() -> None:
    ledger = QuotaLedger(quotas(default={"gpus": 4}))
    assert start(ledger, d("first", 4, 0))
    assert not start(ledger, d("second", 3, 1))
    assert ledger.held[("a", "")] == 4
    ledger.set(("a", "first"), None)  # finished (or deleted): released once
    ledger.set(("a", "first"), None)  # the watch says it again: nothing more is released
    assert ("a", "") not in ledger.held
    assert ledger.admissible() == [("a", "second")]
    assert start(ledger, d("second", 3, 1))
    assert ledger.held[("a", "")] == 3
    assert not ledger.admit(d("third", 2, 2)).admitted  # 3 + 2 > 4
    assert start(ledger, d("fourth", 1, 3))  # a smaller newer one fits (not blocked)
    assert ledger.held[("a", "")] == 4


def test_a_changed_plan_replaces_the_old_claim() -> None:
    ledger = QuotaLedger(quotas(default={"gpus": 8}))
    feed(ledger, job("x", "a", "A100", 1, 2, 0, "Running"))
    feed(ledger, job("x", "a", "H100", 2, 2, 0, "Running"))  # re-planned while running
    assert ledger.held == {("a", ""): 4, ("a", "H100"): 4, (CLUSTER, ""): 4, (CLUSTER, "H100"): 4}
    feed(ledger, job("x", "a", "H100", 2, 4, 0, "Queued"))  # new run waits: holds nothing
    assert ledger.held == {}
    assert ledger.admit(d("y", 8, 1)).queue_position == 2  # x (8, older) is ahead of it
    assert not ledger.admit(d("y", 8, 1)).admitted


def test_rebuilt_from_the_jobs_gives_the_same_usage_and_decisions() -> None:
    """After a restart or a leader change the ledger is refilled from a list of the jobs, in
    whatever order the list has: same usage, same decisions."""
    q = quotas(default={"gpus": 6}, cluster={"gpus": 10})
    before = QuotaLedger(q)
    for i, (ns, gpus) in enumerate([("a", 4), ("b", 3), ("a", 2), ("b", 3), ("a", 1), ("c", 5)]):
        start(before, d(f"j{i}", gpus, i, ns=ns))
    after = QuotaLedger(q)
    for key, demand in reversed(list(before.demands.items())):
        after.set(key, demand)
    assert after.held == before.held
    probe = d("probe", 1, 99, ns="c")
    assert after.admit(probe) == before.admit(probe)
    assert after.admissible() == before.admissible()


def test_recount_finds_and_repairs_drift() -> None:
    ledger = QuotaLedger(quotas(default={"gpus": 4}))
    start(ledger, d("x", 3, 0))
    assert not ledger.recount()
    ledger.held[("a", "")] = 0  # a bookkeeping bug
    assert ledger.recount()
    assert ledger.held[("a", "")] == 3
    assert not ledger.admit(d("y", 2, 1)).admitted


def test_quota_change_redoes_the_queue() -> None:
    ledger = QuotaLedger(quotas(default={"gpus": 0}))
    assert not start(ledger, d("starved", 1, 0))
    ledger.use_quotas(quotas(default={"gpus": 8}))
    assert ledger.admissible() == [("a", "starved")]


@pytest.mark.parametrize("seed", range(int(os.environ.get("SEEDS", "40"))))
def test_every_decision_equals_the_replay_of_admit(seed: int) -> None:
    """Random histories (new jobs, finishes, deletions, re-plans, re-evaluation of queued jobs,
    equal timestamps, several namespaces and types): each ledger decision is the decision of
    `quota.admit` over all other jobs, message and queue position included."""
    rng = random.Random(seed)
    q = quotas(
        namespaces={"a": {"gpus": 6, "gpuTypes": {"H100": 3}}, "b": {"gpus": 5}},
        default={"gpuTypes": {"A100": 4}},
        cluster={"gpus": rng.choice([None, 9, 12])},
    )
    ledger = QuotaLedger(q)
    created = 0
    for _ in range(150):
        action = rng.random()
        keys = list(ledger.demands)
        if action < 0.45 or not keys:
            created += rng.choice([0, 1, 1, 2])  # equal timestamps happen
            candidate = Demand(
                rng.choice("abc"),
                f"j{rng.randrange(60)}",
                rng.choice(["A100", "H100", "cpu"]),
                rng.choice([1, 1, 2, 3, 4]),
                f"2026-01-01T00:{created // 60:02d}:{created % 60:02d}Z",
            )
            if candidate.gpu_type == "cpu":
                candidate = dataclasses.replace(candidate, gpus=0)
            if action < 0.15:  # seen in a list or watch event (start-up, another leader's work)
                older = rng.randrange(created + 1)  # often older than queued jobs
                seen = dataclasses.replace(
                    candidate,
                    holding=action < 0.05,
                    created=f"2026-01-01T00:{older // 60:02d}:{older % 60:02d}Z",
                )
                ledger.set(candidate.key, seen)
                assert_pass_is_the_replay(ledger, q)
                continue
        else:
            key = rng.choice(keys)
            current = ledger.demands[key]
            if action < 0.6:
                ledger.set(key, None)  # finished or deleted
                continue
            candidate = current
            if action < 0.7:  # re-planned: another size
                candidate = dataclasses.replace(current, gpus=rng.choice([1, 2, 3]))
            elif current.holding:
                continue
        others = [x for x in ledger.demands.values() if x.key != candidate.key]
        expected = admit(candidate, others, q)
        assert start(ledger, candidate) == expected.admitted
        if not expected.admitted:
            assert ledger.admit(candidate) == expected
        assert_pass_is_the_replay(ledger, q)
        if rng.random() < 0.05:
            assert not ledger.recount()


def assert_pass_is_the_replay(ledger: QuotaLedger, q: Quotas) -> None:
    """Unless marked stale, the kept pass reserves exactly the queued jobs that `quota.admit`
    would admit now (a reserved job is admitted without a second look)."""
    if ledger.stale:
        return
    demands = list(ledger.demands.values())
    would = {
        x.key
        for x in demands
        if not x.holding and x.gpus > 0 and admit(x, [y for y in demands if y != x], q).admitted
    }
    assert set(ledger.reserved) == {key for key in would if limited(ledger.demands[key], q)}


@pytest.mark.parametrize("jobs", [500, 5000])
def test_jobs_visited_per_admission_do_not_grow_with_the_jobs(jobs: int) -> None:
    """`jobs` jobs in 50 namespaces under namespace and cluster quotas, most queued; then 100
    more admissions: the jobs the ledger visits for them stay a small constant (the replay
    visited every job each time)."""
    q = quotas(default={"gpus": 8}, cluster={"gpus": 200})
    ledger = QuotaLedger(q)
    for i in range(jobs):
        start(ledger, d(f"j{i}", 1 + i % 3, i, ns=f"ns{i % 50}"))
    ledger.admissible()  # any pending pass done
    walked, passes = ledger.walked, ledger.passes
    queued = list(ledger.queued.values())
    assert len(queued) > jobs // 2
    for i in range(jobs, jobs + 100):
        start(ledger, d(f"j{i}", 1 + i % 3, i, ns=f"ns{i % 50}"))
        assert not ledger.admit(rng_pick(queued, i)).admitted  # a queued job's resync
    assert ledger.walked - walked <= 200 * 2  # reserved jobs only (none here): flat
    assert ledger.passes == passes


def rng_pick(demands: list[Demand], i: int) -> Demand:
    return demands[(i * 7919) % len(demands)]
