"""Makes `chart_helpers` importable (other test folders have their own conftest module) and skips
the folder when helm is not installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

HELM = HERE.parents[1] / ".tools" / "bin" / "helm"


@pytest.fixture(scope="session", autouse=True)
def _helm_available() -> None:
    if not HELM.exists():  # `make test` installs it: missing is a broken setup, not a skip
        pytest.fail("helm binary missing: run `make setup`")
