from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.journey.world import World, build_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """a.test and b.test running, Knot serving both zones."""
    w = build_world(tmp_path)
    try:
        w.a.server.start()
        w.b.server.start()
        yield w
    finally:
        w.stop()
