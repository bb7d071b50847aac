"""The server's log handler: on the event loop, a turn's records leave in one write at
the end of the turn; elsewhere at once; in order; nothing left behind at shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from mailyard.server.logsink import TurnFlushHandler


class _CountingStream:
    """A text stream that records each flush's text (one flush is one write)."""

    def __init__(self) -> None:
        self.buffer: list[str] = []
        self.writes: list[str] = []
        self.closed = False

    def write(self, s: str) -> int:
        self.buffer.append(s)
        return len(s)

    def flush(self) -> None:
        if self.buffer:
            self.writes.append("".join(self.buffer))
            self.buffer.clear()


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"test.logsink.{id(handler)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return log


def test_one_write_per_loop_turn() -> None:
    stream = _CountingStream()
    log = _logger(TurnFlushHandler(stream))  # type: ignore[arg-type]

    async def main() -> None:
        for i in range(5):
            log.info("line %d", i)
        assert stream.writes == []  # not yet: the turn has not ended
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert stream.writes == ["".join(f"line {i}\n" for i in range(5))]
        log.info("next turn")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert stream.writes[1:] == ["next turn\n"]

    asyncio.run(main())


def test_other_threads_write_at_once_and_keep_the_order() -> None:
    stream = _CountingStream()
    log = _logger(TurnFlushHandler(stream))  # type: ignore[arg-type]

    async def main() -> None:
        log.info("from the loop")
        t = threading.Thread(target=log.info, args=("from a thread",))
        t.start()
        t.join()
        # The thread's record went out at once, after the loop's buffered one.
        assert "".join(stream.writes) == "from the loop\nfrom a thread\n"

    asyncio.run(main())


def test_nothing_left_behind_when_the_loop_ends() -> None:
    stream = _CountingStream()
    handler = TurnFlushHandler(stream)  # type: ignore[arg-type]
    log = _logger(handler)

    async def main() -> None:
        log.info("last words")  # the loop stops before its turn ends

    asyncio.run(main())
    handler.flush()  # what logging.shutdown() does at exit
    assert "".join(stream.writes) == "last words\n"
    # A new loop later flushes its own turn again.

    async def again() -> None:
        log.info("second loop")
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(again())
    assert "".join(stream.writes).endswith("second loop\n")


def test_default_stream_is_stderr_descriptor(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    try:
        handler = TurnFlushHandler()
        log = _logger(handler)
        log.info("to stderr")
        handler.flush()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"to stderr\n"


def test_time_format_is_the_default_one() -> None:
    import re

    from mailyard.server.logsink import _Formatter

    fmt = _Formatter("%(asctime)s %(message)s")
    for created in (1795548225.0071, 1795548225.9, 1795548226.25):
        rec = logging.LogRecord("n", logging.INFO, "", 0, "m", None, None)
        rec.created, rec.msecs = created, (created - int(created)) * 1000
        assert fmt.format(rec) == logging.Formatter("%(asctime)s %(message)s").format(rec)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} m", fmt.format(rec))
