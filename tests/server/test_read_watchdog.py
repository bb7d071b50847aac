"""streams.ReadWatchdog: one lazy timer bounds every read of a session."""

from __future__ import annotations

import asyncio

import pytest

from mailyard.server.streams import ReadWatchdog


def test_overdue_read_times_out_and_data_in_time_is_read() -> None:
    async def main() -> None:
        reader = asyncio.StreamReader()
        dog = ReadWatchdog()
        loop = asyncio.get_running_loop()
        reader.feed_data(b"hello")
        assert await dog.read(reader, 100, loop.time() + 0.2) == b"hello"
        # A later read with a later deadline: the timer fires early, re-arms, then fires.
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await dog.read(reader, 100, loop.time() + 0.3)
        assert loop.time() - t0 >= 0.29
        with pytest.raises(TimeoutError):  # already past: at once
            await dog.read(reader, 100, loop.time() - 1)
        loop.call_later(0.05, reader.feed_data, b"more")
        assert await dog.read(reader, 100, loop.time() + 1) == b"more"  # the session lives on
        dog.close()

    asyncio.run(main())


def test_cancellation_from_outside_stays_a_cancellation() -> None:
    async def session(reader: asyncio.StreamReader) -> bytes:
        dog = ReadWatchdog()
        try:
            return await dog.read(reader, 100, asyncio.get_running_loop().time() + 30)
        finally:
            dog.close()

    async def main() -> None:
        reader = asyncio.StreamReader()
        task = asyncio.ensure_future(session(reader))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
