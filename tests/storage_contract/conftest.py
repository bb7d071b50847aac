"""Backend factories for the storage contract suite.

Every test here runs once per backend in ``BACKENDS``. Adding a backend is one
line: a function ``(data_dir, clock) -> Store`` (unopened). A factory called twice
with the same directory must reopen the same data (the durability tests rely on it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailyard.storage.interface import Store
from mailyard.storage.sqlite import SQLiteStore

Factory = Callable[..., Store]

BACKENDS: dict[str, Callable[[Path, Callable[[], float]], Store]] = {
    "sqlite": lambda path, clock: SQLiteStore(path, clock=clock),
}


@pytest.fixture(params=sorted(BACKENDS))
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    backend = BACKENDS[request.param]

    def make(*, clock: Callable[[], float] = time.time, name: str = "data") -> Store:
        return backend(tmp_path / name, clock)

    return make
