"""The server's storage housekeeping task (server/app.py run_maintenance)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from mailyard.server.app import run_maintenance


class _Store:
    def __init__(self) -> None:
        self.calls = 0

    async def maintain(self) -> None:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("disk trouble")


def test_housekeeping_runs_again_and_again_and_survives_a_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> int:
        store = _Store()
        task = asyncio.create_task(run_maintenance(store, first=0.0, every=0.01))  # type: ignore[arg-type]
        for _ in range(500):
            if store.calls >= 4:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return store.calls

    with caplog.at_level(logging.ERROR, logger="mailyard"):
        assert asyncio.run(main()) >= 4
    assert "storage housekeeping failed" in caplog.text
