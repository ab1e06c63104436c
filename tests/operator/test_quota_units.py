"""Unit tests of GPU quota admission (pure), status conditions and the hot-reloaded config."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from lora_contract.types import Condition, ConditionType
from lora_operator.api.operator_config import Quotas
from lora_operator.controller.conditions import set_condition
from lora_operator.controller.config import ConfigError, ConfigSource
from lora_operator.controller.quota import Demand, admit, usage_by_namespace


def quotas(**raw: Any) -> Quotas:
    return Quotas.model_validate(raw)


def demand(
    name: str, gpus: int, created: str, *, ns: str = "a", gpu: str = "A100", holding: bool = False
) -> Demand:
    return Demand(ns, name, gpu, gpus, f"2026-01-01T00:00:{created}Z", holding)


def test_admits_within_namespace_quota_and_says_why_not_with_numbers() -> None:
    q = quotas(namespaces={"a": {"gpus": 8}})
    running = [demand("r", 6, "00", holding=True)]
    assert admit(demand("small", 2, "05"), running, q).admitted
    decision = admit(demand("big", 4, "05"), running, q)
    assert not decision.admitted
    assert decision.message == "needs 4 A100 GPUs; namespace a uses 6 of 8 GPUs"
    assert decision.queue_position == 1


def test_quota_is_per_namespace() -> None:
    q = quotas(namespaces={"a": {"gpus": 4}}, default={"gpus": 2})
    running = [demand("r", 4, "00", holding=True)]
    assert not admit(demand("x", 1, "01"), running, q).admitted
    assert admit(demand("y", 2, "01", ns="b"), running, q).admitted  # b: default quota 2
    assert not admit(demand("z", 3, "01", ns="b"), running, q).admitted


def test_quota_per_gpu_type() -> None:
    q = quotas(default={"gpuTypes": {"H100": 8}})
    running = [demand("r", 8, "00", gpu="H100", holding=True)]
    decision = admit(demand("h", 1, "01", gpu="H100"), running, q)
    assert not decision.admitted
    assert "uses 8 of 8 H100" in decision.message
    assert admit(demand("l4", 4, "01", gpu="L4"), running, q).admitted


def test_cluster_quota_spans_namespaces() -> None:
    q = quotas(cluster={"gpus": 4})
    running = [demand("r", 3, "00", ns="b", holding=True)]
    decision = admit(demand("x", 2, "01"), running, q)
    assert not decision.admitted and "the cluster uses 3 of 4" in decision.message


def test_fifo_older_queued_jobs_go_first() -> None:
    q = quotas(default={"gpus": 4})
    others = [demand("r", 2, "00", holding=True), demand("old", 2, "01")]
    decision = admit(demand("new", 2, "02"), others, q)
    assert not decision.admitted  # the older queued job gets the 2 free GPUs first
    assert decision.queue_position == 2
    assert admit(demand("old", 2, "01"), [*others, demand("new", 2, "02")], q).admitted


def test_queued_jobs_are_served_oldest_first_when_order_decides() -> None:
    """Two older queued jobs compete for 4 free GPUs: the oldest (3) fits first, so the next
    (2) does not, and neither does a 2-GPU newcomer. Newest-first would admit the newcomer."""
    q = quotas(default={"gpus": 4})
    others = [demand("oldest", 3, "01"), demand("older", 2, "02")]
    decision = admit(demand("new", 2, "03"), others, q)
    assert not decision.admitted, "the oldest queued job must be served first"
    assert decision.message == "needs 2 A100 GPUs; namespace a uses 3 of 4 GPUs"
    assert decision.queue_position == 3
    assert admit(demand("new", 1, "03"), others, q).admitted  # fits beside the oldest
    # The oldest job is not held back by newer queued ones, whatever order they are listed in.
    newer = [demand("n2", 2, "05"), demand("n1", 2, "04")]
    assert admit(demand("oldest", 3, "01"), newer, q).admitted


def test_newer_queued_jobs_do_not_reserve_ahead_of_an_older_one() -> None:
    q = quotas(default={"gpus": 4})
    newer = [demand("n1", 2, "05"), demand("n2", 2, "06")]
    decision = admit(demand("old", 4, "01"), newer, q)
    assert decision.admitted, decision.message
    assert decision.message == "admitted: 4 A100 GPUs"


def test_queue_position_counts_only_older_jobs_of_the_same_namespace() -> None:
    q = quotas(default={"gpus": 1})
    others = [
        demand("r", 1, "00", holding=True),
        demand("a1", 1, "01"),
        demand("b1", 1, "02", ns="b"),
        demand("a-newer", 1, "08"),
        demand("a-newest", 1, "09"),
    ]
    assert admit(demand("x", 1, "05"), others, q).queue_position == 2


def test_old_job_that_does_not_fit_does_not_block_a_small_one() -> None:
    q = quotas(default={"gpus": 4})
    others = [demand("r", 2, "00", holding=True), demand("huge", 4, "01")]
    assert admit(demand("small", 2, "02"), others, q).admitted


def test_cpu_jobs_and_unlimited_quotas_always_fit() -> None:
    assert admit(demand("cpu", 0, "00"), [], quotas(default={"gpus": 0})).admitted
    assert admit(demand("any", 64, "00"), [demand("r", 64, "00", holding=True)], quotas()).admitted


class Unwalkable:
    """`others` that must not be walked."""

    def __iter__(self) -> Any:
        raise AssertionError("walked every other job for a candidate no quota limits")


def test_a_candidate_no_quota_limits_is_admitted_without_walking_the_others() -> None:
    limited_elsewhere = quotas(namespaces={"b": {"gpus": 1}})
    assert admit(demand("any", 8, "00"), Unwalkable(), limited_elsewhere).admitted
    assert admit(demand("cpu", 0, "00"), Unwalkable(), quotas(cluster={"gpus": 0})).admitted
    with pytest.raises(AssertionError, match="walked"):
        admit(demand("any", 8, "00"), Unwalkable(), quotas(cluster={"gpus": 64}))
    with pytest.raises(AssertionError, match="walked"):
        admit(demand("any", 8, "00", ns="b"), Unwalkable(), limited_elsewhere)


def test_usage_by_namespace_counts_only_holders() -> None:
    usage = usage_by_namespace([demand("r", 2, "00", holding=True), demand("q", 4, "01")])
    assert usage == {("a", "A100"): 2}


def test_a_job_that_exactly_fills_a_quota_is_admitted() -> None:
    by_type = quotas(default={"gpuTypes": {"H100": 8}})
    running = [demand("r", 6, "00", gpu="H100", holding=True)]
    assert admit(demand("fill", 2, "01", gpu="H100"), running, by_type).admitted
    over = admit(demand("over", 3, "01", gpu="H100"), running, by_type)
    assert (
        over.admitted is False and over.message == "needs 3 H100 GPUs; namespace a uses 6 of 8 H100"
    )
    cluster = quotas(cluster={"gpus": 4})
    assert admit(demand("fill", 1, "01"), [demand("r", 3, "00", ns="b", holding=True)], cluster)


def test_the_candidates_own_entry_is_skipped_not_the_end_of_the_list() -> None:
    q = quotas(default={"gpus": 4})
    others = [demand("me", 2, "05"), demand("r1", 2, "00", holding=True)]
    others.append(demand("r2", 2, "01", holding=True))
    decision = admit(demand("me", 2, "05"), others, q)
    assert decision.admitted is False, "the holders listed after the candidate count"


def test_cpu_jobs_fit_even_when_usage_is_above_a_lowered_quota() -> None:
    q = quotas(default={"gpus": 2})
    running = [demand("r", 4, "00", holding=True)]  # the quota was lowered after it started
    assert admit(demand("cpu", 0, "01"), running, q).admitted


def test_usage_counts_every_holder_with_gpus_per_namespace_and_type() -> None:
    demands = [
        demand("one", 1, "00", holding=True),
        demand("two", 2, "01", holding=True, gpu="H100"),
        demand("cpu", 0, "02", holding=True),
        demand("more", 3, "03", holding=True, ns="b"),
    ]
    assert usage_by_namespace(demands) == {("a", "A100"): 1, ("a", "H100"): 2, ("b", "A100"): 3}


def test_set_condition_merges_by_type_and_moves_time_only_on_flip() -> None:
    ready, other = ConditionType.Running, ConditionType.Serving
    conditions: list[Condition] = []
    assert set_condition(conditions, ready, True, "Up", "fine", generation=3)
    assert conditions[0].observed_generation == 3 and conditions[0].status == "True"
    first = conditions[0].last_transition_time
    conditions[0] = conditions[0].model_copy(
        update={"last_transition_time": "2000-01-01T00:00:00Z"}
    )
    assert not set_condition(conditions, ready, True, "Up", "fine")  # nothing changed
    assert conditions[0].last_transition_time == "2000-01-01T00:00:00Z"
    assert conditions[0].observed_generation == 3  # kept when no generation is given
    assert set_condition(conditions, ready, True, "Up", "reworded")  # message: changed,
    assert conditions[0].last_transition_time == "2000-01-01T00:00:00Z"  # but no flip
    assert set_condition(conditions, other, "Unknown", "Wait") and len(conditions) == 2
    assert set_condition(conditions, ready, False, "Down", "broken", generation=4)
    assert conditions[0].last_transition_time is not None and first is not None
    assert conditions[0].last_transition_time >= first  # moved on the flip
    by_type = {c.type: c for c in conditions}
    assert (by_type["Running"].status, by_type["Running"].reason) == ("False", "Down")
    assert by_type["Running"].observed_generation == 4
    assert by_type["Serving"].status == "Unknown"


def write(path: Path, text: str, bump: float) -> None:
    path.write_text(text)
    stamp = time.time() + bump
    os.utime(path, (stamp, stamp))


def test_config_reloads_on_change_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    write(path, "quotas: {default: {gpus: 2}}\n", 0)
    source = ConfigSource.load(path)
    assert source.get().quotas.default.gpus == 2
    write(path, "quotas: {default: {gpus: 8}}\n", 2)
    assert source.get().quotas.default.gpus == 8
    write(path, "quotas: {default: {gpus: -1}}\n", 4)
    assert source.get().quotas.default.gpus == 8  # a broken edit keeps the last good config
    assert source.last_error is not None and "gpus" in source.last_error
    write(path, "progressIntervalSeconds: 5\n", 6)
    assert source.get().progress_interval_seconds == 5 and source.last_error is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("quotas: [", "malformed YAML"),
        ("- a\n", "must be a mapping"),
        ("trainerImage: x\nbogusField: 1\n", "bogusField"),
    ],
)
def test_bad_config_at_start_is_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        ConfigSource.load(path)
    with pytest.raises(ConfigError, match="not found"):
        ConfigSource.load(tmp_path / "missing.yaml")
