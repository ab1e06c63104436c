"""RFC 3339 timestamps as Kubernetes writes them (second precision, UTC, `Z`), one format for the
operator's status, the trainer's progress.json and the devkit's stand-ins."""

from __future__ import annotations

import datetime


def now_iso() -> str:
    """Now, e.g. 2026-11-30T22:15:42Z."""
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 timestamp; None for a missing or malformed one."""
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
