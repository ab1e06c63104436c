"""`lorajob-demo`: the whole flow locally (emulated cluster + S3, real operator, real training)."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
