"""Contract: change feed, blob store, reference counting, group-commit durability."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mailyard.storage.interface import NotFound, Store
from mailyard.storage.models import DeliveryTarget

from .helpers import account, blob, deliver, mailbox, message, run


def test_change_feed(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        b = await account(s, "b@example.com")
        sub = s.subscribe(a.id)
        other = s.subscribe(b.id)
        inbox = await mailbox(s, a)
        d = await deliver(s, a, 1)
        c = await asyncio.wait_for(sub.get(), 5)
        assert (c.kind, c.mailbox_id, c.uids, c.account_id) == ("append", inbox.id, (d.uid,), a.id)
        assert c.modseq == (await s.mailbox_status(inbox.id)).highestmodseq

        up, _ = await s.store_flags(inbox.id, [d.uid], ["\\Deleted"], "add")
        c = await asyncio.wait_for(sub.get(), 5)
        assert (c.kind, c.uids, c.modseq) == ("flags", (d.uid,), up[0].modseq)
        await s.expunge(inbox.id)
        c = await asyncio.wait_for(sub.get(), 5)
        assert (c.kind, c.uids) == ("expunge", (d.uid,))
        assert c.modseq == (await s.mailbox_status(inbox.id)).highestmodseq

        mb = await s.create_mailbox(a.id, "New")
        c = await asyncio.wait_for(sub.get(), 5)
        assert (c.kind, c.mailbox_id) == ("mailbox", mb.id)
        assert sub.get_nowait() is None
        assert other.get_nowait() is None  # nothing of account a leaks to b
        sub.close()
        await deliver(s, a, 2)
        assert sub.get_nowait() is None
        other.close()

    run(make_store, body)


def test_change_is_published_by_the_time_the_write_returns(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        sub = s.subscribe(a.id)
        d = await deliver(s, a, 1)
        c = sub.get_nowait()
        assert c is not None and c.uids == (d.uid,)
        sub.close()

    run(make_store, body)


def test_blob_store_roundtrip(make_store):
    async def body(s: Store) -> None:
        spool = s.blobs.new_spool()
        data = os.urandom(300_000) + b"\r\n"  # past the in-memory limit
        for i in range(0, len(data), 7000):
            spool.write(data[i : i + 7000])
        assert spool.size == len(data)
        assert spool.read_all() == data
        assert b"".join(spool.chunks(1000)) == data
        ref = await s.blobs.commit(spool, prefix=b"Received: x\r\n")
        full = b"Received: x\r\n" + data
        assert ref.size == len(full)
        assert await s.blobs.read(ref.blob_id) == full
        assert await s.blobs.read(ref.blob_id, 5, 10) == full[5:15]
        assert await s.blobs.read(ref.blob_id, len(full) - 3) == full[-3:]
        parts = [c async for c in s.blobs.stream(ref.blob_id, offset=10, length=200_000,
                                                  chunk=65536)]
        assert b"".join(parts) == full[10:200_010] and max(map(len, parts)) <= 65536
        path = s.blobs.path(ref.blob_id)
        if path is not None:
            assert await asyncio.to_thread(Path(path).read_bytes) == full
        # identical content, identical id
        again = await s.blobs.put(full)
        assert again == ref
        spool2 = s.blobs.new_spool()
        spool2.write(b"gone")
        spool2.abort()
        spool2.abort()
        with pytest.raises(NotFound):
            await s.blobs.read("0" * 64)
        with pytest.raises(NotFound):
            await s.blobs.read("../../etc/passwd")

    run(make_store, body)


def test_blob_set_reader(make_store):
    async def body(s: Store) -> None:
        refs = [await blob(s, message(i, size=500 + i)) for i in range(30)]
        ids = [r.blob_id for r in refs]
        reader = s.blobs.reader([*ids, ids[0]])  # a maildrop may hold one content twice
        for i in [*range(29, -1, -1), 0, 5]:
            assert await reader.read(ids[i]) == message(i, size=500 + i)
        outside = await blob(s, message(99))
        assert await reader.read(outside.blob_id) == message(99)
        assert await s.blobs.reader([]).read(ids[2]) == message(2, size=502)
        with pytest.raises(NotFound):
            await reader.read("0" * 64)
        with pytest.raises(NotFound):
            await s.blobs.reader(["0" * 64]).read("0" * 64)

    run(make_store, body)


def test_refcount_deletes_blob_after_last_reference(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        inbox = await mailbox(s, a)
        arch = await mailbox(s, a, "Archive")
        ref = await blob(s, message(1))
        await s.deliver(ref, [DeliveryTarget(a.id), DeliveryTarget(a.id, "Archive")])
        await s.copy(inbox.id, [1], arch.id)
        for box in (inbox, arch):
            await s.store_flags(box.id, [1], ["\\Deleted"], "add")
        await s.expunge(inbox.id)
        assert await s.blobs.read(ref.blob_id) == message(1)
        await s.expunge(arch.id)
        assert await s.blobs.read(ref.blob_id) == message(1)  # the copy (uid 2) remains
        await s.store_flags(arch.id, [2], ["\\Deleted"], "add")
        await s.expunge(arch.id)
        with pytest.raises(NotFound):
            await s.blobs.read(ref.blob_id)
        # the same content can be stored and delivered again afterwards
        again = await blob(s, message(1))
        await s.deliver(again, [DeliveryTarget(a.id)])
        assert await s.blobs.read(again.blob_id) == message(1)

    run(make_store, body)


def test_same_content_delivered_while_expunged(make_store):
    """An identical message arriving while its twin is expunged must not lose its body."""

    async def body(s: Store) -> None:
        a = await account(s)
        inbox = await mailbox(s, a)
        for _round in range(10):
            await deliver(s, a, 0, flags=["\\Deleted"])

            async def again() -> None:
                await deliver(s, a, 0)

            await asyncio.gather(s.expunge(inbox.id), again(), again())
            msgs = await s.list_messages(inbox.id)
            for m in msgs:
                assert await s.blobs.read(m.blob_id) == message(0)
            await s.store_flags(inbox.id, [m.uid for m in msgs], ["\\Deleted"], "add")
            await s.expunge(inbox.id)

    run(make_store, body)


def test_concurrent_deliveries_get_distinct_uids_and_survive_reopen(make_store):
    n = 200

    async def first(s: Store) -> dict[int, bytes]:
        a = await account(s)

        async def one(i: int) -> tuple[int, bytes]:
            data = message(i, 5000)
            d = await deliver(s, a, data=data)
            return d.uid, data

        got = await asyncio.gather(*(one(i) for i in range(n)))
        return dict(got)

    async def second(s: Store) -> None:
        acc = await s.get_account("alice@example.com")
        assert acc is not None
        inbox = await mailbox(s, acc)
        msgs = await s.list_messages(inbox.id)
        assert [m.uid for m in msgs] == sorted(by_uid)
        for m in msgs:
            assert await s.blobs.read(m.blob_id) == by_uid[m.uid]
        assert inbox.uidnext == n + 1

    by_uid = run(make_store, first)
    assert sorted(by_uid) == list(range(1, n + 1))
    run(make_store, second)


def test_maintain_keeps_every_message_and_every_write_going(make_store):
    """Housekeeping while serving (the SQLite backend compacts segments there): what was
    expunged stays gone, everything else reads back byte for byte, and deliveries made
    meanwhile are stored."""
    async def body(s: Store) -> None:
        a = await account(s)
        inbox = await mailbox(s, a)
        done = [await deliver(s, a, i, data=message(i, 4000)) for i in range(40)]
        gone = [d.uid for i, d in enumerate(done) if i % 3]
        await s.store_flags(inbox.id, gone, ["\\Deleted"], "add")
        await s.expunge(inbox.id)
        _, *more = await asyncio.gather(
            s.maintain(), *(deliver(s, a, 100 + i, data=message(100 + i, 4000)) for i in range(5)))
        await s.maintain()
        refs = await s.list_messages(inbox.id)
        kept = [i for i in range(40) if not i % 3] + [100 + i for i in range(5)]
        assert [m.uid for m in refs] == sorted([d.uid for i, d in enumerate(done) if not i % 3]
                                               + [d.uid for d in more])
        for m, i in zip(refs, kept, strict=True):
            assert await s.blobs.read(m.blob_id) == message(i, 4000)

    run(make_store, body)
