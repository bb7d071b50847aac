"""Segment blob storage of the SQLite backend: batching, recovery, deletion, reads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from mailyard.storage.interface import InsufficientStorage, NotFound, StorageError
from mailyard.storage.models import DeliveryTarget, QueueEntry, QueueRecipient
from mailyard.storage.sqlite import SQLiteStore
from mailyard.storage.sqlite.segments import INLINE_READ_MAX, LOCATE_BATCH, StagedBlob
from tests.storage.support import body, opened, segment_sizes, staged_deliver


def locs(data_dir: Path) -> dict[str, tuple[int, int, int]]:
    db = sqlite3.connect(data_dir / "mailyard.sqlite3")
    try:
        return {r[0]: (r[1], r[2], r[3]) for r in
                db.execute("SELECT blob_id, segment, start, length FROM blob_locs")}
    finally:
        db.close()


def test_staged_delivery_is_one_batch_and_shares_fsyncs(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path)
        try:
            acc = await s.add_account("a@example.com", "h")
            b0 = s.engine.batches
            blob_id, _uid = await staged_deliver(s, acc.id, body(1), prefix=b"Received: x\r\n")
            assert s.engine.batches - b0 == 1  # bytes + index in ONE transaction
            assert await s.blobs.read(blob_id) == b"Received: x\r\n" + body(1)
            assert hashlib.sha256(await s.blobs.read(blob_id)).hexdigest() == blob_id
            b0 = s.engine.batches
            got = await asyncio.gather(*(staged_deliver(s, acc.id, body(i)) for i in range(2, 102)))
            assert s.engine.batches - b0 < 50  # concurrent deliveries shared batches
            for i, (bid, _) in zip(range(2, 102), got, strict=True):
                assert await s.blobs.read(bid) == body(i)
            assert len({u for _, u in got}) == 100
        finally:
            await s.close()

    asyncio.run(main())
    assert len(locs(tmp_path)) == 101


def test_identical_content_staged_concurrently_is_stored_once(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path)
        try:
            acc = await s.add_account("a@example.com", "h")
            got = await asyncio.gather(*(staged_deliver(s, acc.id, body(7)) for _ in range(20)))
            assert len({b for b, _ in got}) == 1
            inbox = await s.get_mailbox(acc.id, "INBOX")
            assert inbox is not None and len(await s.list_messages(inbox.id)) == 20
        finally:
            await s.close()

    asyncio.run(main())
    assert len(locs(tmp_path)) == 1
    assert sum(segment_sizes(tmp_path).values()) == len(body(7))


def test_staged_queue_copy_and_local_copy_in_one_transaction(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path)
        try:
            acc = await s.add_account("a@example.com", "h")
            spool = s.blobs.new_spool()
            spool.write(body(1))
            # one spool, two blobs (as delivery.py does: Return-Path only on the local copy)
            local = await s._segs.stage(spool, prefix=b"Return-Path: <x@y>\r\n")
            remote = await s._segs.stage(spool, prefix=b"")
            entry = QueueEntry(id="q1", sender="x@y", blob=remote,
                               recipients=(QueueRecipient("r@remote.example"),),
                               created=1.0, next_attempt=1.0)
            b0 = s.engine.batches
            await s.deliver(local, [DeliveryTarget(acc.id)], queue=entry)
            spool.abort()
            assert s.engine.batches - b0 == 1
            assert await s.blobs.read(local.blob_id) == b"Return-Path: <x@y>\r\n" + body(1)
            assert await s.blobs.read(remote.blob_id) == body(1)
            got = await s.queue_get("q1")
            assert got is not None and got.blob.blob_id == remote.blob_id
            assert type(got.blob) is not StagedBlob
        finally:
            await s.close()

    asyncio.run(main())


def test_a_bad_blob_fails_alone(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path)
        try:
            acc = await s.add_account("a@example.com", "h")
            spool = s.blobs.new_spool()
            spool.write(body(1))
            bad = await s._segs.stage(spool)
            spool.write(b"written after staging")  # the content no longer matches the id

            async def bad_delivery() -> None:
                await s.deliver(bad, [DeliveryTarget(acc.id)])

            results = await asyncio.gather(
                *(staged_deliver(s, acc.id, body(i)) for i in range(2, 6)),
                bad_delivery(),
                *(staged_deliver(s, acc.id, body(i)) for i in range(6, 10)),
                return_exceptions=True)
            assert isinstance(results[4], StorageError)
            good = [r for i, r in enumerate(results) if i != 4]
            for i, (bid, _) in zip([*range(2, 6), *range(6, 10)], good, strict=True):  # type: ignore[misc]
                assert await s.blobs.read(bid) == body(i)
            with pytest.raises(NotFound):
                await s.blobs.read(bad.blob_id)
            inbox = await s.get_mailbox(acc.id, "INBOX")
            assert inbox is not None and len(await s.list_messages(inbox.id)) == 8
        finally:
            await s.close()

    asyncio.run(main())
    # the failed write was cut back: the segment holds exactly the 8 good bodies
    assert sum(segment_sizes(tmp_path).values()) == sum(len(body(i)) for i in range(2, 10))


def test_a_failed_segment_sync_fails_its_batch_and_commits_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path)
        try:
            acc = await s.add_account("a@example.com", "h")
            real = s._segs.files._sync
            calls = []

            def failing_sync(fd: int) -> None:
                calls.append(fd)
                if len(calls) == 1:
                    raise OSError(5, "Input/output error")
                real(fd)

            s._segs.files._sync = failing_sync  # type: ignore[method-assign]
            with pytest.raises(StorageError):
                await staged_deliver(s, acc.id, body(1))
            inbox = await s.get_mailbox(acc.id, "INBOX")
            assert inbox is not None and await s.list_messages(inbox.id) == []
            assert not s._segs.exists(hashlib.sha256(body(1)).hexdigest())
            # the pipeline goes on, and the same content can be stored afterwards
            blob_id, _ = await staged_deliver(s, acc.id, body(1))
            assert await s.blobs.read(blob_id) == body(1)
            assert len(await s.list_messages(inbox.id)) == 1
        finally:
            await s.close()

    asyncio.run(main())
    assert sum(segment_sizes(tmp_path).values()) == len(body(1))  # the failed tail was cut


def test_unacknowledged_tail_is_truncated_at_open(tmp_path: Path) -> None:
    async def first() -> tuple[str, int]:
        s = await opened(tmp_path)
        try:
            acc = await s.add_account("a@example.com", "h")
            return await staged_deliver(s, acc.id, body(1))
        finally:
            await s.close()

    blob_id, _uid = asyncio.run(first())
    (seg,) = segment_sizes(tmp_path)
    path = tmp_path / "blobs" / "segments" / f"{seg:08d}.seg"
    with open(path, "ab") as f:  # appended and fdatasynced, but its transaction never committed
        f.write(b"half a message that was never acknowledged")
    (tmp_path / "blobs" / "tmp" / "spool-leftover").write_bytes(b"partial")

    async def second() -> None:
        s = await opened(tmp_path)
        try:
            assert segment_sizes(tmp_path) == {seg: len(body(1))}
            assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
            assert await s.blobs.read(blob_id) == body(1)
            acc = await s.get_account("a@example.com")
            assert acc is not None
            b2, _ = await staged_deliver(s, acc.id, body(2))  # appended right after body 1
            assert locs(tmp_path)[b2] == (seg, len(body(1)), len(body(2)))
            assert await s.blobs.read(b2) == body(2)
        finally:
            await s.close()

    asyncio.run(second())


def test_rotation_deletion_and_segment_removal(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path, segment_size=10_000)
        try:
            acc = await s.add_account("a@example.com", "h")
            ids = [(await staged_deliver(s, acc.id, body(i)))[0] for i in range(20)]
            sizes = segment_sizes(tmp_path)
            assert len(sizes) >= 5 and max(sizes.values()) < 10_000 + len(body(0))
            for i, bid in enumerate(ids):
                assert await s.blobs.read(bid) == body(i)
            inbox = await s.get_mailbox(acc.id, "INBOX")
            assert inbox is not None
            first_seg = locs(tmp_path)[ids[0]][0]
            in_first = [m.uid for m in await s.list_messages(inbox.id)
                        if locs(tmp_path)[m.blob_id][0] == first_seg]
            await s.store_flags(inbox.id, in_first, ["\\Deleted"], "add")
            await s.expunge(inbox.id)
            assert first_seg not in segment_sizes(tmp_path)  # its last blob went: unlinked
            with pytest.raises(NotFound):
                await s.blobs.read(ids[0])
            for i, bid in enumerate(ids[len(in_first):], start=len(in_first)):
                assert await s.blobs.read(bid) == body(i)
        finally:
            await s.close()

    asyncio.run(main())


def test_half_dead_segments_are_compacted_at_open(tmp_path: Path) -> None:
    async def first() -> dict[str, bytes]:
        s = await opened(tmp_path, segment_size=20_000)
        try:
            acc = await s.add_account("a@example.com", "h")
            kept: dict[str, bytes] = {}
            for i in range(24):
                bid, _uid = await staged_deliver(s, acc.id, body(i))
                if i % 4 == 0:
                    kept[bid] = body(i)
            inbox = await s.get_mailbox(acc.id, "INBOX")
            assert inbox is not None
            gone = [m.uid for m in await s.list_messages(inbox.id) if m.blob_id not in kept]
            await s.store_flags(inbox.id, gone, ["\\Deleted"], "add")
            await s.expunge(inbox.id)
            return kept
        finally:
            await s.close()

    kept = asyncio.run(first())
    before = segment_sizes(tmp_path)

    async def second() -> None:
        s = await opened(tmp_path, segment_size=20_000)
        try:
            for bid, data in kept.items():
                assert await s.blobs.read(bid) == data
        finally:
            await s.close()

    asyncio.run(second())
    after = segment_sizes(tmp_path)
    assert sum(after.values()) < sum(before.values())
    assert sum(after.values()) == sum(len(d) for d in kept.values())  # only live bytes left
    assert set(locs(tmp_path)) == set(kept)


def test_per_file_blobs_are_imported(tmp_path: Path) -> None:
    async def first() -> str:
        s = await opened(tmp_path)
        try:
            acc = await s.add_account("a@example.com", "h")
            bid, _ = await staged_deliver(s, acc.id, body(1))
            return bid
        finally:
            await s.close()

    bid = asyncio.run(first())
    # rewrite the data directory into the previous per-file layout
    legacy = tmp_path / "blobs" / bid[:2] / bid[2:4] / bid
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(body(1))
    orphan = tmp_path / "blobs" / "00" / "00" / ("0" * 64)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"referenced by nothing")
    for p in (tmp_path / "blobs" / "segments").iterdir():
        p.unlink()
    db = sqlite3.connect(tmp_path / "mailyard.sqlite3")
    db.execute("DELETE FROM blob_locs")
    db.commit()
    db.close()

    async def second() -> None:
        s = await opened(tmp_path)
        try:
            assert await s.blobs.read(bid) == body(1)
        finally:
            await s.close()

    asyncio.run(second())
    assert not legacy.exists() and not orphan.exists()
    assert set(locs(tmp_path)) == {bid}


def test_reads_inline_threaded_and_across_a_dropped_segment(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path, segment_size=1000)
        try:
            acc = await s.add_account("a@example.com", "h")
            big = os.urandom(INLINE_READ_MAX * 2 + 123)
            bid, uid = await staged_deliver(s, acc.id, big)
            small, _ = await staged_deliver(s, acc.id, body(1))
            assert await s.blobs.read(bid) == big
            assert await s.blobs.read(bid, 10, 100) == big[10:110]
            assert await s.blobs.read(bid, len(big) + 5) == b""
            assert await s.blobs.read(small, 3) == body(1)[3:]
            # a stream that started keeps reading after the segment is deleted
            it = s.blobs.stream(bid, chunk=65536)
            first = await anext(it)  # type: ignore[call-overload]
            inbox = await s.get_mailbox(acc.id, "INBOX")
            assert inbox is not None
            await s.store_flags(inbox.id, [uid], ["\\Deleted"], "add")
            seg = locs(tmp_path)[bid][0]
            await s.expunge(inbox.id)
            assert bid not in locs(tmp_path) and seg not in segment_sizes(tmp_path)
            rest = [c async for c in it]
            assert first + b"".join(rest) == big
            assert max(len(c) for c in [first, *rest]) <= 65536
            with pytest.raises(NotFound):
                await s.blobs.read(bid)
            with pytest.raises(NotFound):
                [c async for c in s.blobs.stream(bid)]
        finally:
            await s.close()

    asyncio.run(main())


def test_set_reader_locates_in_batches_and_survives_a_dropped_segment(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path, segment_size=1000)  # one blob per segment
        try:
            acc = await s.add_account("a@example.com", "h")
            ids = [(await staged_deliver(s, acc.id, body(i)))[0] for i in range(LOCATE_BATCH + 5)]
            big = os.urandom(INLINE_READ_MAX + 10)
            big_id, _ = await staged_deliver(s, acc.id, big)
            ids.append(big_id)
            queries = 0
            real = s._segs.locate_many

            def counting(blob_ids: list[str]) -> dict[str, tuple[int, int, int]]:
                nonlocal queries
                queries += 1
                return real(blob_ids)

            s._segs.locate_many = counting  # type: ignore[method-assign]
            reader = s.blobs.reader(ids)
            for i in range(LOCATE_BATCH + 5):
                assert await reader.read(ids[i]) == body(i)
            assert queries == 2  # LOCATE_BATCH at a time
            assert await reader.read(big_id) == big  # past INLINE_READ_MAX: in a thread
            assert await reader.read(ids[3]) == body(3) and queries == 2  # kept

            # Message 1 expunged: its blob row goes and its segment is unlinked.
            inbox = await s.get_mailbox(acc.id, "INBOX")
            assert inbox is not None
            await s.store_flags(inbox.id, [2], ["\\Deleted"], "add")
            seg = locs(tmp_path)[ids[1]][0]
            await s.expunge(inbox.id)
            assert ids[1] not in locs(tmp_path) and seg not in segment_sizes(tmp_path)
            with pytest.raises(NotFound):
                await reader.read(ids[1])
            # Stored again (a new delivery of the same content): found where it is now.
            again, _ = await staged_deliver(s, acc.id, body(1))
            assert again == ids[1] and locs(tmp_path)[again][0] != seg
            assert await reader.read(ids[1]) == body(1)
            # A blob outside the set is read like BlobStore.read.
            other, _ = await staged_deliver(s, acc.id, body(9999))
            assert await reader.read(other) == body(9999)
            with pytest.raises(NotFound):
                await reader.read("0" * 64)
        finally:
            await s.close()

    asyncio.run(main())


def test_pipeline_races_between_deletion_reuse_and_rotation(tmp_path: Path) -> None:
    """Identical content staged while its twin is expunged, segments rotating and
    emptying under concurrent deliveries: every body left is intact, after reopen too."""

    async def main() -> None:
        s = await opened(tmp_path, segment_size=8_000)
        try:
            acc = await s.add_account("a@example.com", "h")
            inbox = await s.get_mailbox(acc.id, "INBOX")
            assert inbox is not None
            for r in range(15):
                await staged_deliver(s, acc.id, body(0))
                await s.store_flags(inbox.id, [m.uid for m in await s.list_messages(inbox.id)],
                                    ["\\Deleted"], "add")

                async def commit_then_deliver(n: int) -> None:
                    ref = await s.blobs.put(body(n))
                    await s.deliver(ref, [DeliveryTarget(acc.id)])

                await asyncio.gather(
                    s.expunge(inbox.id), staged_deliver(s, acc.id, body(0)),
                    staged_deliver(s, acc.id, body(0)), commit_then_deliver(0),
                    *(staged_deliver(s, acc.id, body(100 + r * 10 + i)) for i in range(5)))
                for m in await s.list_messages(inbox.id):
                    data = await s.blobs.read(m.blob_id)
                    assert hashlib.sha256(data).hexdigest() == m.blob_id
        finally:
            await s.close()

    asyncio.run(main())

    async def reopen() -> None:
        s = await opened(tmp_path, segment_size=8_000)
        try:
            acc = await s.get_account("a@example.com")
            assert acc is not None
            inbox = await s.get_mailbox(acc.id, "INBOX")
            assert inbox is not None
            msgs = await s.list_messages(inbox.id)
            assert len(msgs) == 3 + 5
            for m in msgs:
                data = await s.blobs.read(m.blob_id)
                assert hashlib.sha256(data).hexdigest() == m.blob_id
        finally:
            await s.close()

    asyncio.run(reopen())
    db = sqlite3.connect(tmp_path / "mailyard.sqlite3")
    try:
        referenced = {r[0] for r in db.execute("SELECT blob_id FROM blobs")}
    finally:
        db.close()
    assert set(locs(tmp_path)) == referenced  # nothing lost, nothing orphaned
    ends: dict[int, int] = {}
    for seg, start, length in locs(tmp_path).values():
        ends[seg] = max(ends.get(seg, 0), start + length)
    assert segment_sizes(tmp_path) == ends


async def _half_dead(s: SQLiteStore, n: int = 24) -> dict[str, bytes]:
    """``n`` messages of ~3 KB in 20 KB segments, three in four expunged: (kept id -> bytes)."""
    acc = await s.add_account("a@example.com", "h")
    kept: dict[str, bytes] = {}
    for i in range(n):
        bid, _uid = await staged_deliver(s, acc.id, body(i))
        if i % 4 == 0:
            kept[bid] = body(i)
    inbox = await s.get_mailbox(acc.id, "INBOX")
    assert inbox is not None
    gone = [m.uid for m in await s.list_messages(inbox.id) if m.blob_id not in kept]
    await s.store_flags(inbox.id, gone, ["\\Deleted"], "add")
    await s.expunge(inbox.id)
    return kept


def test_half_dead_segments_are_compacted_while_serving(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path, segment_size=20_000)
        try:
            kept = await _half_dead(s)
            before = segment_sizes(tmp_path)
            sparse = [seg for seg, size in before.items() if seg != s._segs.files.current
                      and sum(n for sg, _, n in locs(tmp_path).values() if sg == seg) * 2 < size]
            assert sparse  # the setting up left segments to compact
            acc = await s.get_account("a@example.com")
            assert acc is not None
            # Deliveries go on while the segments are compacted.
            _, *more = await asyncio.gather(
                s.maintain(), *(staged_deliver(s, acc.id, body(100 + i)) for i in range(10)))
            for i, (bid, _uid) in enumerate(more):
                kept[bid] = body(100 + i)
            after = segment_sizes(tmp_path)
            assert not set(sparse) & set(after)  # unlinked
            assert sum(after.values()) < sum(before.values()) + sum(len(d) for d in kept.values())
            for bid, data in kept.items():
                assert await s.blobs.read(bid) == data
            assert set(locs(tmp_path)) == set(kept)
            await s.maintain()  # nothing left to do: nothing changes
            assert segment_sizes(tmp_path) == after
        finally:
            await s.close()

    asyncio.run(main())

    async def reopened() -> None:  # the moves were durable: a restart finds every blob
        s = await opened(tmp_path, segment_size=20_000)
        try:
            for bid, (seg, start, n) in locs(tmp_path).items():
                assert hashlib.sha256(await s.blobs.read(bid)).hexdigest() == bid
                assert n > 0 and seg in segment_sizes(tmp_path) and start >= 0
        finally:
            await s.close()

    asyncio.run(reopened())


def test_readers_follow_blobs_that_compaction_moved(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path, segment_size=20_000)
        try:
            kept = await _half_dead(s)
            old = locs(tmp_path)
            first = min(kept, key=lambda b: old[b])  # in the oldest segment
            data = kept[first]
            # A stream that opened the old segment before it went keeps reading it.
            stream = s.blobs.stream(first, chunk=1000)
            head = await anext(stream)
            # A set reader that looked the locations up before the move.
            reader = s.blobs.reader(list(kept))
            assert await reader.read(first) == data
            await s.maintain()
            assert old[first][0] not in segment_sizes(tmp_path)
            rest = b"".join([b async for b in stream])
            assert head + rest == data
            for bid, want in kept.items():
                assert await reader.read(bid) == want
            # A lookup that raced the move (found the old place, then the file was gone).
            real = s._segs.locate
            calls: list[str] = []

            def stale_once(blob_id: str) -> tuple[int, int, int]:
                calls.append(blob_id)
                return old[blob_id] if len(calls) == 1 else real(blob_id)

            s._segs.locate = stale_once  # type: ignore[method-assign]
            assert await s.blobs.read(first) == data
            assert len(calls) == 2
            s._segs.locate = real  # type: ignore[method-assign]
            # The indexer's reads take the same way.
            assert s._read_blob_sync(first, 1 << 20) == data
        finally:
            await s.close()

    asyncio.run(main())


def test_a_compaction_step_that_fails_moves_nothing(tmp_path: Path) -> None:
    async def main() -> dict[str, bytes]:
        s = await opened(tmp_path, segment_size=20_000)
        try:
            kept = await _half_dead(s)
            before = locs(tmp_path)
            files = s._segs.files
            real_append = files.append

            def append_then_fail(blobs: list[StagedBlob]) -> tuple[list, dict]:
                rows, failed = real_append(blobs)  # all but the last copy reach the disk
                assert rows and not failed
                return rows[:-1], {rows[-1][0]: InsufficientStorage("disk full")}

            files.append = append_then_fail  # type: ignore[method-assign]
            with pytest.raises(StorageError):
                await s.maintain()
            files.append = real_append  # type: ignore[method-assign]
            assert locs(tmp_path) == before  # no row moved, no segment dropped
            assert set(before[b][0] for b in kept) <= set(segment_sizes(tmp_path))
            for bid, data in kept.items():
                assert await s.blobs.read(bid) == data
            return kept
        finally:
            await s.close()

    kept = asyncio.run(main())

    async def reopened() -> None:
        s = await opened(tmp_path, segment_size=20_000)
        try:
            for bid, data in kept.items():
                assert await s.blobs.read(bid) == data
        finally:
            await s.close()

    asyncio.run(reopened())
