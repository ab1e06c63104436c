"""What a cron tick of `spec.schedule` does, as pure functions of the recorded last tick and a
passed-in `now` (epoch seconds): fire, skip it (and why), or wait. `reconcile._Run` does the IO
(the dataset check of `when: DataChanged`, starting or replacing the run, the Event) and records
the tick in `status.lastScheduleTime`, so an operator restart never fires the same tick twice.
Also the run ids and the run history limit, since scheduled jobs are the ones whose history grows.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from lora_contract.types import ConcurrencyPolicy, RunRecord, ScheduleSpec

from ..api.cron import latest_tick, next_tick

# A scheduled job is looked at no later than this before (or after) its next tick, so a tick
# is noticed within a resync of its time even when the clock and the resync drift apart.
MAX_WAKE_SECONDS = 30.0
MIN_WAKE_SECONDS = 1.0


class TickAction(enum.Enum):
    WAIT = "wait"  # no tick due since the last one acted on
    START = "start"  # fire: a new run (no run active)
    REPLACE = "replace"  # fire: stop the active run, start a new one (concurrencyPolicy Replace)
    SKIP_ACTIVE = "skip-active"  # a run is active and concurrencyPolicy is Forbid
    SKIP_LATE = "skip-late"  # noticed more than startingDeadlineSeconds after its time


@dataclass(frozen=True)
class TickDecision:
    action: TickAction
    tick: float | None = None  # the tick acted on (recorded, fired or skipped); None with WAIT

    @property
    def fires(self) -> bool:
        return self.action in (TickAction.START, TickAction.REPLACE)


def tick_decision(
    schedule: ScheduleSpec,
    *,
    last_tick: float | None,
    since: float,
    now: float,
    active: bool,
    suspended: bool,
) -> TickDecision:
    """The latest tick at or before `now`, if it is after the last one acted on (`last_tick`;
    before any, `since`: the job's creation, so a new job does not fire for past ticks). Only
    the latest counts: ticks missed while the operator was down fire once, not once each.
    A suspended job does not tick (its missed tick may fire on resume, deadline permitting)."""
    if suspended:
        return TickDecision(TickAction.WAIT)
    tick = latest_tick(schedule, now)
    base = since if last_tick is None else last_tick
    if tick <= base:
        return TickDecision(TickAction.WAIT)
    deadline = schedule.starting_deadline_seconds
    if deadline is not None and now - tick > deadline:
        return TickDecision(TickAction.SKIP_LATE, tick)
    if active:
        forbid = schedule.concurrency_policy is ConcurrencyPolicy.Forbid
        return TickDecision(TickAction.SKIP_ACTIVE if forbid else TickAction.REPLACE, tick)
    return TickDecision(TickAction.START, tick)


def wake_seconds(schedule: ScheduleSpec, now: float) -> float:
    """How long a scheduled job may sleep before it must be looked at again: until its next
    tick, at most MAX_WAKE_SECONDS, at least MIN_WAKE_SECONDS."""
    until = next_tick(schedule, now) - now
    return min(MAX_WAKE_SECONDS, max(MIN_WAKE_SECONDS, until))


def next_run_id(runs: Sequence[RunRecord]) -> str:
    """`r<N+1>` over the highest number used: ids stay unique after old records are pruned."""
    numbers = [int(r.id[1:]) for r in runs if r.id[:1] == "r" and r.id[1:].isdigit()]
    return f"r{max(numbers, default=0) + 1}"


def pruned_runs(
    runs: Sequence[RunRecord], limit: int | None, keep: Sequence[str]
) -> list[RunRecord]:
    """The newest `limit` run records (all with no limit), plus those in `keep` (the current
    run, the one whose adapter is served), in their order. Only records go: S3 data stays."""
    if limit is None or len(runs) <= limit:
        return list(runs)
    newest = {r.id for r in runs[-limit:]}
    return [r for r in runs if r.id in newest or r.id in keep]


def iso_at(epoch: float) -> str:
    """An instant as status writes it (RFC 3339, second precision, UTC)."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
