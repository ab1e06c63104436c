from __future__ import annotations

import copy
from typing import Any

import pytest
from apidata import MINIMAL


@pytest.fixture
def minimal() -> dict[str, Any]:
    return copy.deepcopy(MINIMAL)
