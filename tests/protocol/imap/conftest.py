"""Fixtures for the IMAP core tests: feed a parser three ways (STYLE.md habit 3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailyard.protocol.imap.commands import AppendChunk, NeedData
from mailyard.protocol.imap.parser import CommandParser


def drain(p: CommandParser) -> list[Any]:
    out: list[Any] = []
    for _ in range(100_000):
        ev = p.next()
        if isinstance(ev, NeedData):
            return out
        out.append(ev)
    raise AssertionError("parser did not stop")


def merge_chunks(events: list[Any]) -> list[Any]:
    """Join adjacent AppendChunk events so byte-at-a-time feeding compares equal."""
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, AppendChunk) and out and isinstance(out[-1], AppendChunk):
            out[-1] = AppendChunk(ev.tag, out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def feed_whole(data: bytes, **kw: Any) -> list[Any]:
    p = CommandParser(**kw)
    p.feed(data)
    return merge_chunks(drain(p))


def feed_bytewise(data: bytes, **kw: Any) -> list[Any]:
    p = CommandParser(**kw)
    out: list[Any] = []
    for i in range(len(data)):
        p.feed(data[i : i + 1])
        out += drain(p)
    return merge_chunks(out)


def feed_three_ways(data: bytes, **kw: Any) -> list[Any]:
    """Parse whole, byte at a time, and with trailing data; all must agree.

    Returns the events of the whole-input run.
    """
    whole = feed_whole(data, **kw)
    assert feed_bytewise(data, **kw) == whole
    trailing = feed_whole(data + b"z1 NOOP\r\nz2 NOO", **kw)
    assert trailing[: len(whole)] == whole
    assert [type(e).__name__ for e in trailing[len(whole) :]] == ["Noop"]
    return whole


@pytest.fixture
def feed3() -> Callable[..., list[Any]]:
    return feed_three_ways


@pytest.fixture
def drain_parser() -> Callable[[CommandParser], list[Any]]:
    return drain
