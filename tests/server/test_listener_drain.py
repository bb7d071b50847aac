"""Listener.drain: connections still busy after the grace period are cancelled quietly."""

from __future__ import annotations

import asyncio
from typing import Any

from mailyard.server.listeners import ConnectionLimits, Listener


def test_drain_cancels_what_outlives_the_grace_without_logging_an_error() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        started = asyncio.Event()

        async def stuck(_reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
            started.set()
            await asyncio.sleep(3600)

        lst = Listener(name="t", host="127.0.0.1", port=0, handler=stuck,
                       limits=ConnectionLimits())
        await lst.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        await asyncio.wait_for(started.wait(), 5)
        lst.stop_accepting()
        await lst.drain(0.05)
        assert not lst.tasks and not lst.per_ip and lst.group.active == 0
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the connection was closed
        writer.close()
        await asyncio.sleep(0.05)  # let any callback of the cancelled task run
        assert errors == []

    asyncio.run(main())
