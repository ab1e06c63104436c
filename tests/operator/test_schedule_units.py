"""spec.schedule's decisions (controller/schedule.py, api/cron.py) under a fake clock: every
instant is written out by hand (UTC epoch seconds from the calendar, offsets of Europe/Paris and
America/New_York from their DST rules), never taken from the code under test."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from lora_contract.types import ConcurrencyPolicy, RunRecord, ScheduleSpec
from lora_operator.api.cron import (
    CronError,
    expression,
    latest_tick,
    next_tick,
    schedule_problems,
    zone,
)
from lora_operator.controller.schedule import (
    MAX_WAKE_SECONDS,
    MIN_WAKE_SECONDS,
    TickAction,
    TickDecision,
    iso_at,
    next_run_id,
    pruned_runs,
    tick_decision,
    wake_seconds,
)


def utc(text: str) -> float:
    """'2026-03-29 01:00' read as UTC."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp()


def sched(cron: str, tz: str = "UTC", **fields: object) -> ScheduleSpec:
    return ScheduleSpec.model_validate({"cron": cron, "timeZone": tz, **fields})


# ------------------------------------------------------------------ ticks across DST

# Europe/Paris: CET (+1) until 2026-03-29 01:00 UTC, then CEST (+2) until 2026-10-25 01:00 UTC.
NEXT_TICKS = [
    # a weekly Monday 03:00 Paris: winter 02:00 UTC, summer 01:00 UTC
    ("0 3 * * 1", "Europe/Paris", "2026-03-21 12:00", "2026-03-23 02:00"),
    ("0 3 * * 1", "Europe/Paris", "2026-03-24 12:00", "2026-03-30 01:00"),
    ("0 3 * * 1", "Europe/Paris", "2026-10-24 12:00", "2026-10-26 02:00"),
    # 02:30 Paris does not exist on 2026-03-29: the tick is at the first minute after, 03:00
    # CEST = 01:00 UTC; the next day's is 02:30 CEST = 00:30 UTC
    ("30 2 * * *", "Europe/Paris", "2026-03-28 12:00", "2026-03-29 01:00"),
    ("30 2 * * *", "Europe/Paris", "2026-03-29 01:00", "2026-03-30 00:30"),
    # 02:30 Paris happens twice on 2026-10-25 (CEST, then CET): a daily job fires once, the
    # first (00:30 UTC); the next is 2026-10-26 02:30 CET = 01:30 UTC
    ("30 2 * * *", "Europe/Paris", "2026-10-24 12:00", "2026-10-25 00:30"),
    ("30 2 * * *", "Europe/Paris", "2026-10-25 00:30", "2026-10-26 01:30"),
    # New York: EST (-5) until 2026-03-08 07:00 UTC, then EDT (-4)
    ("0 9 * * *", "America/New_York", "2026-03-07 15:00", "2026-03-08 13:00"),
    ("0 9 * * *", "America/New_York", "2026-03-06 15:00", "2026-03-07 14:00"),
    ("0 3 * * 1", "UTC", "2026-03-23 03:00", "2026-03-30 03:00"),  # strictly after
    ("@daily", "UTC", "2026-01-01 00:00", "2026-01-02 00:00"),
    ("@hourly", "UTC", "2026-01-01 00:10", "2026-01-01 01:00"),
    ("@weekly", "UTC", "2026-01-01 00:00", "2026-01-04 00:00"),  # a Sunday
    ("@monthly", "UTC", "2026-01-15 00:00", "2026-02-01 00:00"),
    ("@yearly", "UTC", "2026-01-15 00:00", "2027-01-01 00:00"),
]


@pytest.mark.parametrize(("cron", "tz", "after", "expected"), NEXT_TICKS)
def test_next_tick(cron: str, tz: str, after: str, expected: str) -> None:
    assert next_tick(sched(cron, tz), utc(after)) == utc(expected)


LATEST_TICKS = [
    ("0 3 * * 1", "Europe/Paris", "2026-03-30 01:00", "2026-03-30 01:00"),  # at the tick
    ("0 3 * * 1", "Europe/Paris", "2026-03-30 00:59", "2026-03-23 02:00"),  # a minute before
    ("30 2 * * *", "Europe/Paris", "2026-03-29 12:00", "2026-03-29 01:00"),
    ("*/15 * * * *", "UTC", "2026-05-01 10:44", "2026-05-01 10:30"),
]


@pytest.mark.parametrize(("cron", "tz", "now", "expected"), LATEST_TICKS)
def test_latest_tick(cron: str, tz: str, now: str, expected: str) -> None:
    assert latest_tick(sched(cron, tz), utc(now)) == utc(expected)
    assert latest_tick(sched(cron, tz), utc(now) + 59.5) == utc(expected)


def test_macros_expand_to_five_fields() -> None:
    assert expression("@weekly") == "0 0 * * 0"
    assert expression(" @midnight ") == "0 0 * * *"
    assert expression("@annually") == "0 0 1 1 *"
    assert expression("5 4 * * *") == "5 4 * * *"


# ------------------------------------------------------------------ bad input names the field


def test_problems_name_the_field() -> None:
    assert schedule_problems(None) == []
    assert schedule_problems(sched("0 3 * * 1", "Europe/Paris")) == []
    assert schedule_problems(sched("61 3 * * 1", "Europe/Paris")) == [
        "spec.schedule.cron: Bad minute in '61 3 * * 1'"
    ]
    assert schedule_problems(sched("0 0 30 2 *", "Mars/Olympus_Mons")) == [
        "spec.schedule.timeZone: unknown time zone 'Mars/Olympus_Mons' (an IANA name such as "
        "Europe/Paris or UTC)",
        "spec.schedule.cron: Bad day-of-month in '0 0 30 2 *'",
    ]
    with pytest.raises(CronError, match=r"^spec\.schedule\.timeZone: unknown time zone 'Nowhere'"):
        zone("Nowhere")
    with pytest.raises(CronError, match=r"^spec\.schedule\.cron: Bad hour in '0 24 \* \* \*'$"):
        next_tick(sched("0 24 * * *"), 0)


# ------------------------------------------------------------------ should a tick fire?

WEEKLY = "0 3 * * 1"  # in Paris
CREATED = utc("2026-03-20 00:00")  # after the Monday 2026-03-16 tick
TICK_A = utc("2026-03-23 02:00")  # Monday 03:00 CET
TICK_B = utc("2026-03-30 01:00")  # Monday 03:00 CEST


def decide(
    now: float,
    last: float | None = None,
    *,
    active: bool = False,
    suspended: bool = False,
    **fields: object,
) -> TickDecision:
    return tick_decision(
        sched(WEEKLY, "Europe/Paris", **fields),
        last_tick=last,
        since=CREATED,
        now=now,
        active=active,
        suspended=suspended,
    )


DECISIONS = [
    # (now, last tick acted on, active, suspended, fields, expected)
    (TICK_A - 1, None, False, False, {}, TickDecision(TickAction.WAIT)),
    (TICK_A, None, False, False, {}, TickDecision(TickAction.START, TICK_A)),
    (TICK_A + 5, TICK_A, False, False, {}, TickDecision(TickAction.WAIT)),  # restart: no twice
    (TICK_B - 1, TICK_A, False, False, {}, TickDecision(TickAction.WAIT)),
    (TICK_B + 30, TICK_A, False, False, {}, TickDecision(TickAction.START, TICK_B)),
    # down for two ticks: only the latest fires, once
    (TICK_B + 60, None, False, False, {}, TickDecision(TickAction.START, TICK_B)),
    # a run is active
    (TICK_A, None, True, False, {}, TickDecision(TickAction.SKIP_ACTIVE, TICK_A)),
    (
        TICK_A,
        None,
        True,
        False,
        {"concurrencyPolicy": "Replace"},
        TickDecision(TickAction.REPLACE, TICK_A),
    ),
    # suspended: no tick at all (nothing recorded)
    (TICK_A + 5, None, False, True, {}, TickDecision(TickAction.WAIT)),
    (TICK_A + 5, None, True, True, {"concurrencyPolicy": "Replace"}, TickDecision(TickAction.WAIT)),
    # startingDeadlineSeconds 600: 600 s late still fires, 601 s is skipped
    (
        TICK_A + 600,
        None,
        False,
        False,
        {"startingDeadlineSeconds": 600},
        TickDecision(TickAction.START, TICK_A),
    ),
    (
        TICK_A + 601,
        None,
        False,
        False,
        {"startingDeadlineSeconds": 600},
        TickDecision(TickAction.SKIP_LATE, TICK_A),
    ),
    (
        TICK_A + 1,
        None,
        True,
        False,
        {"startingDeadlineSeconds": 0},
        TickDecision(TickAction.SKIP_LATE, TICK_A),
    ),
    (
        TICK_A,
        None,
        False,
        False,
        {"startingDeadlineSeconds": 0},
        TickDecision(TickAction.START, TICK_A),
    ),
]


@pytest.mark.parametrize(("now", "last", "active", "suspended", "fields", "expected"), DECISIONS)
def test_tick_decision(
    now: float,
    last: float | None,
    active: bool,
    suspended: bool,
    fields: dict[str, object],
    expected: TickDecision,
) -> None:
    assert decide(now, last, active=active, suspended=suspended, **fields) == expected


def test_a_tick_before_the_job_existed_does_not_fire() -> None:
    created_after_tick = TICK_A + 10
    decision = tick_decision(
        sched(WEEKLY, "Europe/Paris"),
        last_tick=None,
        since=created_after_tick,
        now=TICK_A + 20,
        active=False,
        suspended=False,
    )
    assert decision == TickDecision(TickAction.WAIT)
    assert not decision.fires
    assert TickDecision(TickAction.START, 1.0).fires and TickDecision(TickAction.REPLACE, 1.0).fires
    assert not TickDecision(TickAction.SKIP_ACTIVE, 1.0).fires
    assert not TickDecision(TickAction.SKIP_LATE, 1.0).fires


def test_policy_enum_values() -> None:
    assert [p.value for p in ConcurrencyPolicy] == ["Forbid", "Replace"]
    assert sched(WEEKLY).concurrency_policy is ConcurrencyPolicy.Forbid


# ------------------------------------------------------------------ waking up


def test_wake_seconds_until_the_next_tick_bounded() -> None:
    every_minute = sched("* * * * *")
    assert wake_seconds(every_minute, utc("2026-01-01 00:00") + 45) == 15.0
    assert MAX_WAKE_SECONDS == 30.0 and MIN_WAKE_SECONDS == 1.0
    assert wake_seconds(every_minute, utc("2026-01-01 00:00") + 10) == 30.0  # 50 s, capped
    assert wake_seconds(every_minute, utc("2026-01-01 00:00") + 59.5) == 1.0  # 0.5 s, floored
    assert wake_seconds(every_minute, utc("2026-01-01 00:00") + 29) == 30.0  # 31 s, capped
    assert wake_seconds(every_minute, utc("2026-01-01 00:00") + 31) == 29.0


# ------------------------------------------------------------------ run ids and history


def run(run_id: str, adapter: str | None = None) -> RunRecord:
    return RunRecord(id=run_id, spec_hash="h", output_uri=f"s3://b/{run_id}", adapter_uri=adapter)


def test_next_run_id_counts_past_pruned_records() -> None:
    assert next_run_id([]) == "r1"
    assert next_run_id([run("r1"), run("r2")]) == "r3"
    assert next_run_id([run("r7"), run("r9")]) == "r10"  # r1..r6 and r8 pruned
    assert next_run_id([run("r10"), run("r9")]) == "r11"  # numbers, not text order
    assert next_run_id([run("x5"), run("r"), run("r2b")]) == "r1"  # no r<number>: none used


def test_pruned_runs_keeps_the_newest_and_the_pinned() -> None:
    runs = [run("r1", "s3://b/r1/final"), run("r2"), run("r3"), run("r4"), run("r5")]
    ids = lambda kept: [r.id for r in kept]  # noqa: E731
    assert ids(pruned_runs(runs, None, [])) == ["r1", "r2", "r3", "r4", "r5"]
    assert ids(pruned_runs(runs, 5, [])) == ["r1", "r2", "r3", "r4", "r5"]
    assert ids(pruned_runs(runs, 2, ["r5"])) == ["r4", "r5"]
    assert ids(pruned_runs(runs, 2, ["r5", "r1"])) == ["r1", "r4", "r5"]  # r1 is served
    assert ids(pruned_runs(runs, 1, ["r5"])) == ["r5"]
    assert ids(pruned_runs(runs[:2], 1, [])) == ["r2"]


def test_iso_at_is_utc_whatever_the_host_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # an operator image with a local zone set
    time.tzset()
    try:
        assert iso_at(utc("2026-03-30 01:00")) == "2026-03-30T01:00:00Z"
        assert iso_at(0.9) == "1970-01-01T00:00:00Z"
    finally:
        monkeypatch.undo()
        time.tzset()
