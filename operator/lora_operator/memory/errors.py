"""The one error the memory model raises: bad input or a job that fits on no placement."""

from __future__ import annotations


class PlanningError(ValueError):
    """One clear sentence naming the spec field at fault (never a traceback for users)."""
