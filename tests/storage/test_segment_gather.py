"""Segment writes: a batch's small blobs are gathered into one ``pwritev``.

Short writes are resumed, large blobs stream beside gathered ones, and a failed
gathered write fails its blobs, is cut back, and leaves the pipeline working.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from mailyard.storage.interface import InsufficientStorage
from mailyard.storage.models import DeliveryTarget
from mailyard.storage.sqlite import segments
from mailyard.storage.sqlite.segments import GATHER_MAX
from tests.storage.support import body, opened, segment_sizes
from tests.storage.support import deliver_staged as deliver


def test_gathered_write_survives_short_writes_and_mixes_with_large_blobs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwritev

    def short(fd: int, buffers: list[Any], offset: int) -> int:
        first = bytes(buffers[0])[:700]  # never more than 700 bytes per call
        return real(fd, [first], offset)

    async def main() -> None:
        s = await opened(tmp_path)
        try:
            a = await s.add_account("a@example.com", "h")
            big = body(7, GATHER_MAX + 50_000)
            datas = [body(i) for i in range(6)] + [big] + [body(i) for i in range(10, 14)]
            results = await asyncio.gather(*(deliver(s, d, [DeliveryTarget(a.id)]) for d in datas))
            for d, (blob_id, _) in zip(datas, results, strict=True):
                assert await s.blobs.read(blob_id) == d
        finally:
            await s.close()
        return None

    monkeypatch.setattr(segments.os, "pwritev", short)
    asyncio.run(main())
    monkeypatch.setattr(segments.os, "pwritev", real)
    total = sum(len(body(i)) for i in [*range(6), *range(10, 14)]) + len(body(7, GATHER_MAX + 50_000))
    assert sum(segment_sizes(tmp_path).values()) == total

    async def reopen() -> None:  # and all of it is there after a restart
        s = await opened(tmp_path)
        try:
            acc = await s.get_account("a@example.com")
            assert acc is not None
            inbox = await s.get_mailbox(acc.id, "INBOX")
            assert inbox is not None
            for m in await s.list_messages(inbox.id):
                data = await s.blobs.read(m.blob_id)
                assert hashlib.sha256(data).hexdigest() == m.blob_id
        finally:
            await s.close()

    asyncio.run(reopen())


def test_a_failed_gathered_write_fails_its_blobs_and_cuts_the_tail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwritev
    calls: list[int] = []

    def failing(fd: int, buffers: list[Any], offset: int) -> int:
        calls.append(offset)
        if len(calls) == 1:
            real(fd, [bytes(buffers[0])[:100]], offset)  # a little got written, then the disk filled
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, buffers, offset)

    async def main() -> None:
        s = await opened(tmp_path)
        try:
            a = await s.add_account("a@example.com", "h")
            monkeypatch.setattr(segments.os, "pwritev", failing)
            with pytest.raises(InsufficientStorage):
                await deliver(s, body(1), [DeliveryTarget(a.id)])
            inbox = await s.get_mailbox(a.id, "INBOX")
            assert inbox is not None and await s.list_messages(inbox.id) == []
            assert inbox.uidnext == 1
            assert sum(segment_sizes(tmp_path).values()) == 0  # the partial write was cut back
            blob_id, _ = await deliver(s, body(1), [DeliveryTarget(a.id)])  # and it goes on
            assert await s.blobs.read(blob_id) == body(1)
        finally:
            await s.close()

    asyncio.run(main())
    assert sum(segment_sizes(tmp_path).values()) == len(body(1))
