"""Markers come from the test folder: tests/unit -> unit, tests/integration -> integration, ..."""

from __future__ import annotations

from pathlib import Path

import pytest

LANES = ("unit", "integration", "hil", "mpy", "arm")
TESTS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            lane = Path(str(item.path)).relative_to(TESTS_DIR).parts[0]
        except ValueError:
            continue
        if lane in LANES:
            item.add_marker(getattr(pytest.mark, lane))
