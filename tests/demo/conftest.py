"""An emulated API server on loopback for the executor and demo tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_devkit.emulator import EmulatedCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmulatedCluster]:
    with EmulatedCluster(tmp_path / "cluster") as running:
        yield running
