"""Alike writes of a batch run as one (Engine ``bulk=``).

A delivery batch shares a handful of multi-row statements instead of ten statements
per message. What each caller sees must be what the one-by-one path gives: its own
UIDs and MODSEQs, the account's usage, its change published, and a bad job failing
alone.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from mailyard.storage.interface import NotFound
from mailyard.storage.models import DeliveryTarget
from mailyard.storage.sqlite import SQLiteStore
from tests.storage.support import body, opened
from tests.storage.support import deliver_staged as deliver


def count_bulk(s: SQLiteStore, raised: list[BaseException] | None = None) -> list[int]:
    """Wrap the store's bulk delivery: the sizes of the groups it was given (and
    what it raised, into ``raised``)."""
    sizes: list[int] = []
    real = s._deliver_bulk

    def wrapped(conn: Any, items: list[Any]) -> Any:
        sizes.append(len(items))
        try:
            return real(conn, items)
        except Exception as exc:
            if raised is not None:
                raised.append(exc)
            raise

    s._deliver_bulk = wrapped  # type: ignore[method-assign]
    return sizes


def hold_first_batch(s: SQLiteStore) -> None:
    """The stager's first batch takes a while, so that the jobs queued meanwhile make
    one batch together (as under load)."""
    real = s._segs.prepare
    first = [True]

    def slow(conn: Any, blobs: list[Any]) -> Any:
        if first[0]:
            first[0] = False
            time.sleep(0.3)
        return real(conn, blobs)

    s._segs.prepare = slow  # type: ignore[method-assign]


def test_a_batch_of_deliveries_is_one_bulk_write_with_what_one_by_one_gives(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path)
        try:
            a = await s.add_account("a@example.com", "h")
            b = await s.add_account("b@example.com", "h")
            sizes = count_bulk(s)
            hold_first_batch(s)
            sub = s.subscribe(a.id)
            # 30 at once: to a's INBOX, to a's Archive, to a box a lacks (INBOX then),
            # and to a and b both (one blob, two references)
            jobs = []
            for i in range(30):
                kind = i % 4
                targets = ([DeliveryTarget(a.id)] if kind == 0 else
                           [DeliveryTarget(a.id, "Archive")] if kind == 1 else
                           [DeliveryTarget(a.id, "No/Such/Box")] if kind == 2 else
                           [DeliveryTarget(a.id), DeliveryTarget(b.id)])
                jobs.append(deliver(s, body(i), targets))
            results = await asyncio.gather(*jobs)
            assert max(sizes) > 1, "no two deliveries shared a bulk write"

            inbox = await s.get_mailbox(a.id, "INBOX")
            archive = await s.get_mailbox(a.id, "Archive")
            b_inbox = await s.get_mailbox(b.id, "INBOX")
            assert inbox and archive and b_inbox
            want: dict[int, list[tuple[int, str]]] = {inbox.id: [], archive.id: [], b_inbox.id: []}
            for blob_id, delivered in results:
                for d in delivered:
                    want[d.mailbox_id].append((d.uid, blob_id))
            for box in (inbox, archive, b_inbox):
                rows = await s.list_messages(box.id)
                # every UID once, 1..n, each naming the blob its caller was told
                assert sorted((m.uid, m.blob_id) for m in rows) == sorted(want[box.id])
                assert [m.uid for m in sorted(rows, key=lambda m: m.uid)] == list(range(1, len(rows) + 1))
                modseqs = [m.modseq for m in rows]
                assert len(set(modseqs)) == len(modseqs)  # each message its own MODSEQ
                now = await s.get_mailbox_by_id(box.id)
                assert now is not None
                assert now.uidnext == len(rows) + 1
                assert now.highestmodseq == max(modseqs)
            assert len(want[inbox.id]) == 22 and len(want[archive.id]) == 8
            assert len(want[b_inbox.id]) == 7
            sizes_of = {blob_id: len(body(i)) for i, (blob_id, _) in enumerate(results)}
            assert await s.account_usage(a.id) == sum(sizes_of.values())
            assert await s.account_usage(b.id) == sum(sizes_of[bid] for i, (bid, _) in enumerate(results)
                                                      if i % 4 == 3)
            for i, (blob_id, _) in enumerate(results):
                assert await s.blobs.read(blob_id) == body(i)
            # the changes of a's mailboxes were published: every new UID of a once
            seen: set[tuple[int, int]] = set()
            while (c := sub.get_nowait()) is not None:
                if c.kind == "append":
                    seen.update((c.mailbox_id, u) for u in c.uids)
            assert seen == {(box, uid) for box in (inbox.id, archive.id) for uid, _ in want[box]}
        finally:
            await s.close()

    asyncio.run(main())


def test_a_bad_delivery_fails_alone_and_its_batch_mates_are_stored(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path)
        try:
            a = await s.add_account("a@example.com", "h")
            raised: list[BaseException] = []
            count_bulk(s, raised)
            hold_first_batch(s)
            jobs = [deliver(s, body(i), [DeliveryTarget(a.id)]) for i in range(8)]
            jobs.insert(4, deliver(s, body(99), [DeliveryTarget(424242)]))  # no such account
            results = await asyncio.gather(*jobs, return_exceptions=True)
            assert isinstance(results[4], NotFound)
            good = [r for i, r in enumerate(results) if i != 4]
            assert not any(isinstance(r, BaseException) for r in good)
            # the bad one was in a bulk write, which failed and fell back to one by one
            assert [type(e) for e in raised] == [NotFound]
            inbox = await s.get_mailbox(a.id, "INBOX")
            assert inbox is not None
            rows = await s.list_messages(inbox.id)
            assert sorted(m.uid for m in rows) == list(range(1, 9))
            assert inbox.uidnext == 9  # the rolled-back bulk left no UID taken
            assert await s.account_usage(a.id) == sum(len(body(i)) for i in range(8))
        finally:
            await s.close()

    asyncio.run(main())


def test_auth_result_riders_share_one_insert(tmp_path: Path) -> None:
    async def main() -> None:
        s = await opened(tmp_path)
        try:
            a = await s.add_account("a@example.com", "h")
            for i in range(40):
                await s.record_auth_result(when=1000.0 + i, source_ip=f"192.0.2.{i}",
                                           header_from="x.example", spf="pass", dkim="none",
                                           dmarc="pass", disposition="none",
                                           delivery_follows=True)
            await deliver(s, body(1), [DeliveryTarget(a.id)])  # carries the riders
            got = await s.list_auth_results()
            assert [(r[0], r[1]) for r in got] == [(1000.0 + i, f"192.0.2.{i}") for i in range(40)]
        finally:
            await s.close()

    asyncio.run(main())
