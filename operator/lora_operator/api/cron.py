"""Cron expressions of `spec.schedule`, read in a named time zone.

The contract checks only their shape (the trainer image has neither a cron parser nor tzdata);
here `cronsim` (a maintained parser with Debian cron's DST rules: a time skipped by a spring-
forward fires at the first valid minute after it, a repeated hour fires once for a daily job)
parses them and `zoneinfo` looks the zone up, so `lorajob validate` and the operator refuse a
bad one naming the field. Ticks are epoch seconds; each has a whole minute.
"""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from lora_contract.types import ScheduleSpec

# The macros Kubernetes CronJobs accept; cronsim reads five fields only.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class CronError(ValueError):
    """A cron expression or time zone that cannot be used; the message names the field."""


def expression(cron: str) -> str:
    """The five-field form (macros expanded)."""
    return MACROS.get(cron.strip(), cron.strip())


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(
            f"spec.schedule.timeZone: unknown time zone {name!r} (an IANA name such as "
            "Europe/Paris or UTC)"
        ) from None


def _sim(schedule: ScheduleSpec, start: float, reverse: bool) -> CronSim:
    tz = zone(schedule.time_zone)
    try:
        return CronSim(expression(schedule.cron), datetime.fromtimestamp(start, tz), reverse)
    except CronSimError as exc:
        raise CronError(f"spec.schedule.cron: {exc} in {schedule.cron!r}") from None


def schedule_problems(schedule: ScheduleSpec | None) -> list[str]:
    """One line per unusable field of the schedule (none when it parses)."""
    if schedule is None:
        return []
    problems = []
    try:
        zone(schedule.time_zone)
    except CronError as exc:
        problems.append(str(exc))
    try:
        CronSim(expression(schedule.cron), datetime.fromtimestamp(0, ZoneInfo("UTC")))
    except CronSimError as exc:
        problems.append(f"spec.schedule.cron: {exc} in {schedule.cron!r}")
    return problems


def next_tick(schedule: ScheduleSpec, after: float) -> float:
    """The first tick strictly after `after`."""
    return next(_sim(schedule, after, reverse=False)).timestamp()


def latest_tick(schedule: ScheduleSpec, now: float) -> float:
    """The last tick at or before `now`."""
    return next(_sim(schedule, math.floor(now) + 1, reverse=True)).timestamp()
