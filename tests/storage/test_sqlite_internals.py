"""SQLite-backend specifics: group commit, job isolation, schema, blob files, change bus."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from mailyard.storage import open_store
from mailyard.storage.blobs import SPOOL_MEMORY_LIMIT, FileBlobStore
from mailyard.storage.changes import ChangeBus, SubscriptionClosed
from mailyard.storage.interface import NotFound, StorageError, Store
from mailyard.storage.models import BlobRef, Change, DeliveryTarget
from mailyard.storage.sqlite import SQLiteStore
from mailyard.storage.sqlite.schema import MIGRATIONS

from .test_segments import locs, segment_sizes


def test_group_commit_shares_transactions(tmp_path: Path) -> None:
    async def main() -> tuple[int, int]:
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.add_account("a@example.com", "h")
        refs = [await s.blobs.put(b"msg %d\r\n" % i) for i in range(100)]
        before = s.engine.batches, s.engine.jobs_done
        await asyncio.gather(*(s.deliver(r, [DeliveryTarget(acc.id)]) for r in refs))
        after = s.engine.batches, s.engine.jobs_done
        await s.close()
        return after[0] - before[0], after[1] - before[1]

    batches, jobs = asyncio.run(main())
    assert jobs == 100
    assert batches < jobs / 2  # concurrent jobs shared transactions (and fsyncs)


def test_failing_job_does_not_spoil_its_batch(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.add_account("a@example.com", "h")
        good = [await s.blobs.put(b"good %d" % i) for i in range(10)]
        bad = await s.blobs.put(b"bad")
        results = await asyncio.gather(
            *(s.deliver(r, [DeliveryTarget(acc.id)]) for r in good[:5]),
            s.deliver(bad, [DeliveryTarget(acc.id), DeliveryTarget(10**6)]),
            *(s.deliver(r, [DeliveryTarget(acc.id)]) for r in good[5:]),
            return_exceptions=True,
        )
        assert isinstance(results[5], NotFound)
        inbox = await s.get_mailbox(acc.id, "INBOX")
        assert inbox is not None
        msgs = await s.list_messages(inbox.id)
        assert len(msgs) == 10 and {m.blob_id for m in msgs} == {r.blob_id for r in good}
        assert [m.uid for m in msgs] == sorted(m.uid for m in msgs)
        await s.close()

    asyncio.run(main())


def test_lone_failing_job_leaves_nothing(tmp_path: Path) -> None:
    """A job alone in its transaction (no savepoint) that fails after writing leaves
    nothing behind; the writer goes on with the next job."""
    async def main() -> None:
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.add_account("a@example.com", "h")
        bad = await s.blobs.put(b"bad")
        # the first target is written, the second does not exist: the job raises
        with pytest.raises(NotFound):
            await s.deliver(bad, [DeliveryTarget(acc.id), DeliveryTarget(10**6)])
        inbox = await s.get_mailbox(acc.id, "INBOX")
        assert inbox is not None
        assert await s.list_messages(inbox.id) == []
        assert inbox.uidnext == 1 and await s.account_usage(acc.id) == 0
        ok = await s.blobs.put(b"ok")
        (d,) = await s.deliver(ok, [DeliveryTarget(acc.id)])
        assert d.uid == 1
        await s.close()

    asyncio.run(main())


def test_schema_version_and_pragmas(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStore(tmp_path)
        await s.open()
        await s.close()
        s2 = SQLiteStore(tmp_path)  # reopen: migrations are not re-run
        await s2.open()
        await s2.close()

    asyncio.run(main())
    db = sqlite3.connect(tmp_path / "mailyard.sqlite3")
    try:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"messages", "mailboxes", "expunged", "queue", "blobs"} <= tables
        assert "msg_text" not in tables  # the full-text index has its own file
    finally:
        db.close()
    fts = sqlite3.connect(tmp_path / "search.sqlite3")
    try:
        tables = {r[0] for r in fts.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"msg_text", "indexed"} <= tables
    finally:
        fts.close()


def test_open_store_factory(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path / "a"), SQLiteStore)
    assert isinstance(open_store(f"sqlite://{tmp_path / 'b'}"), SQLiteStore)
    assert isinstance(open_store(tmp_path / "c"), Store)
    with pytest.raises(StorageError):
        open_store("ftp://example.org/x")


def test_store_refuses_use_before_open_and_after_close(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStore(tmp_path)
        with pytest.raises(StorageError):
            await s.list_domains()
        await s.open()
        await s.close()
        with pytest.raises(StorageError):
            await s.list_domains()

    asyncio.run(main())


def test_orphan_blobs_are_swept_on_open(tmp_path: Path) -> None:
    async def main() -> str:
        s = SQLiteStore(tmp_path)
        await s.open()
        ref = await s.blobs.put(b"never delivered")  # crash before the index commit
        assert await s.blobs.read(ref.blob_id) == b"never delivered"
        await s.close()
        return ref.blob_id

    blob_id = asyncio.run(main())
    assert set(locs(tmp_path)) == {blob_id}

    async def reopen() -> None:
        s = SQLiteStore(tmp_path)
        await s.open()
        with pytest.raises(NotFound):
            await s.blobs.read(blob_id)
        assert s.blobs.path(blob_id) is None
        await s.close()

    asyncio.run(reopen())
    assert locs(tmp_path) == {}
    assert segment_sizes(tmp_path) == {}  # the segment held nothing else: removed


# -- FileBlobStore -----------------------------------------------------------------------

def test_spool_spills_past_the_memory_limit(tmp_path: Path) -> None:
    bs = FileBlobStore(tmp_path)
    try:
        spool = bs.new_spool()
        spool.write(b"a" * SPOOL_MEMORY_LIMIT)
        assert not spool.spilled
        spool.write(b"b")
        assert spool.spilled and len(list((tmp_path / "tmp").iterdir())) == 1
        ref = asyncio.run(bs.commit(spool))  # no prefix: the spill file itself is renamed
        assert ref.size == SPOOL_MEMORY_LIMIT + 1
        assert list((tmp_path / "tmp").iterdir()) == []
        data = asyncio.run(bs.read(ref.blob_id))
        assert hashlib.sha256(data).hexdigest() == ref.blob_id
        spool2 = bs.new_spool()
        spool2.write(b"x" * (SPOOL_MEMORY_LIMIT + 10))
        spool2.abort()
        assert list((tmp_path / "tmp").iterdir()) == []
        with pytest.raises(StorageError):
            spool2.write(b"more")
    finally:
        bs.close()


def test_recover_and_scrub(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bs = FileBlobStore(tmp_path)
    try:
        good = asyncio.run(bs.put(b"good"))
        bad = asyncio.run(bs.put(b"will rot"))
        (tmp_path / "tmp" / "blob-leftover").write_bytes(b"partial")
        assert bs.recover() == 1
        assert list((tmp_path / "tmp").iterdir()) == []
        path = bs.path(bad.blob_id)
        assert path is not None
        Path(path).write_bytes(b"bit rot")
        with caplog.at_level(logging.ERROR):
            assert bs.scrub() == [bad.blob_id]
        assert bad.blob_id in caplog.text
        assert (tmp_path / "quarantine" / bad.blob_id).exists()
        assert bs.path(bad.blob_id) is None and bs.path(good.blob_id) is not None
    finally:
        bs.close()


def test_pinned_blob_is_not_deleted(tmp_path: Path) -> None:
    bs = FileBlobStore(tmp_path)
    try:
        ref = asyncio.run(bs.put(b"pinned"))
        assert bs.pinned(ref.blob_id)
        assert not bs.delete(ref.blob_id)
        bs.release(ref.blob_id)
        assert bs.delete(ref.blob_id)
        assert bs.path(ref.blob_id) is None
    finally:
        bs.close()


def test_many_concurrent_commits(tmp_path: Path) -> None:
    bs = FileBlobStore(tmp_path)

    async def main() -> None:
        datas = [os.urandom(5000) for _ in range(100)] + [b"same"] * 20
        refs = await asyncio.gather(*(bs.put(d) for d in datas))
        for d, r in zip(datas, refs, strict=True):
            assert await bs.read(r.blob_id) == d
        assert len({r.blob_id for r in refs}) == 101

    try:
        asyncio.run(main())
    finally:
        bs.close()


# -- ChangeBus -----------------------------------------------------------------------------

def test_bus_overflow_sets_resync() -> None:
    async def main() -> None:
        bus = ChangeBus(maxsize=3)
        sub = bus.subscribe(1)
        for i in range(5):
            bus.publish(Change(account_id=1, mailbox_id=7, kind="append", uids=(i,), modseq=i))
        assert sub.resync_needed
        first = await sub.get()
        assert first.kind == "resync"
        rest = [sub.get_nowait() for _ in range(sub.pending())]
        assert [c.uids for c in rest if c] == [(3,), (4,)]  # changes after the overflow
        sub.clear_resync()
        assert not sub.resync_needed
        assert sub.pending() == 0

    asyncio.run(main())


def test_bus_wakes_waiter_and_close_unblocks() -> None:
    async def main() -> None:
        bus = ChangeBus()
        sub = bus.subscribe(1)
        waiter = asyncio.create_task(sub.get())
        await asyncio.sleep(0)
        bus.publish(Change(account_id=2, mailbox_id=1, kind="flags"))
        bus.publish(Change(account_id=1, mailbox_id=1, kind="flags"))
        got = await asyncio.wait_for(waiter, 5)
        assert got.account_id == 1
        waiter = asyncio.create_task(sub.get())
        await asyncio.sleep(0)
        sub.close()
        with pytest.raises(SubscriptionClosed):
            await asyncio.wait_for(waiter, 5)
        assert bus.subscribers(1) == 0

    asyncio.run(main())


def test_riders_share_the_next_commit_and_fail_alone(tmp_path: Path) -> None:
    """``write_soon``: nobody waits; the record lands with the next durable write, and a
    rider that fails is logged without spoiling the jobs it rode with."""
    async def main() -> list[tuple]:
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.add_account("a@example.com", "h")
        ref = await s.blobs.put(b"Subject: x\r\n\r\nbody\r\n")
        await s.record_auth_result(when=1.0, source_ip="192.0.2.1", header_from="example.org",
                                   spf="pass", dkim="none", dmarc="pass", disposition="none")

        def broken(tx: object) -> None:
            raise sqlite3.OperationalError("no such table: nowhere")

        s.engine.write_soon(broken)
        await s.deliver(ref, [DeliveryTarget(acc.id)])  # committed after the riders queued first
        got = await s.list_auth_results()
        await s.close()
        return got

    assert asyncio.run(main()) == [(1.0, "192.0.2.1", "example.org", "pass", "none", "pass",
                                    "none")]


DAY = 86400.0


def test_old_authentication_results_are_pruned(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """auth_results keeps AUTH_RESULTS_KEEP of verdicts: older rows go with the write that
    adds new ones, at most once per AUTH_RESULTS_PRUNE_EVERY, a bounded number at a time."""
    from mailyard.storage.sqlite import store as store_mod

    monkeypatch.setattr(store_mod, "AUTH_RESULTS_PRUNE_BATCH", 3)
    keep = store_mod.AUTH_RESULTS_KEEP
    X = 1003.5 * DAY + 600  # an old row that comes of age half an hour after NOW
    OLD = [1000 * DAY + i * DAY for i in range(7)] + [X]
    NOW = 1003.5 * DAY + keep  # rows before day 1003.5 are older than the window

    async def main() -> list[list[float]]:
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.add_account("a@example.com", "h")

        async def record(when: float, *, deliver: bool) -> None:
            await s.record_auth_result(when=when, source_ip="192.0.2.1",
                                       header_from="example.org", spf="pass", dkim="none",
                                       dmarc="pass", disposition="none",
                                       delivery_follows=deliver)
            if deliver:  # the bulk path: the row rides with a delivery
                ref = await s.blobs.put(f"Subject: {when}\r\n\r\nbody\r\n".encode())
                await s.deliver(ref, [DeliveryTarget(acc.id)])
            else:
                await s.engine.write(lambda tx: None)  # the row's own write is done

        async def times() -> list[float]:
            return [r[0] for r in await s.list_auth_results()]

        seen = []
        for when in OLD:
            await record(when, deliver=False)
        seen.append(await times())
        await record(NOW, deliver=True)  # 4 rows are old; a batch deletes 3 at most
        seen.append(await times())
        await record(NOW + 1, deliver=False)  # the backlog goes on with the next write
        seen.append(await times())
        await record(NOW + 1800, deliver=True)  # X is old now, but within the hour
        seen.append(await times())
        await record(NOW + 3602, deliver=False)  # an hour later: pruned
        seen.append(await times())
        await s.close()
        return seen

    seen = asyncio.run(main())
    assert seen[0] == sorted(OLD)
    assert seen[1] == [1003 * DAY, X, 1004 * DAY, 1005 * DAY, 1006 * DAY, NOW]
    assert seen[2] == [X, 1004 * DAY, 1005 * DAY, 1006 * DAY, NOW, NOW + 1]
    assert seen[3] == [X, 1004 * DAY, 1005 * DAY, 1006 * DAY, NOW, NOW + 1, NOW + 1800]
    assert seen[4] == [1004 * DAY, 1005 * DAY, 1006 * DAY, NOW, NOW + 1, NOW + 1800, NOW + 3602]


def test_migration_3_moves_the_delay_warning_out_of_last_error(tmp_path: Path) -> None:
    """Entries an older runner marked with a "[delay-warned] " prefix keep their flag."""
    db = sqlite3.connect(tmp_path / "mailyard.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version (version) VALUES (2)")
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    for entry_id, last_error in (("warned", "[delay-warned] b@x.example: 451 later"),
                                 ("fresh", "c@x.example: 451 later")):
        db.execute("INSERT INTO queue (id, sender, blob_id, blob_size, created, next_attempt, "
                   "attempts, smtputf8, body_8bit, last_error, pending) "
                   "VALUES (?, 'a@example.com', 'ff', 1, 0, 0, 1, 0, 0, ?, 1)",
                   (entry_id, last_error))
    db.close()

    async def main() -> list[tuple[str, bool, str]]:
        s = SQLiteStore(tmp_path, sweep_orphans=False)
        await s.open()
        got = [(e.id, e.delay_warned, e.last_error) for e in await s.queue_list()]
        await s.close()
        return got

    assert sorted(asyncio.run(main())) == [("fresh", False, "c@x.example: 451 later"),
                                           ("warned", True, "b@x.example: 451 later")]


def test_migration_5_keeps_existing_mail_from_being_recent_again(tmp_path: Path) -> None:
    """The \\Recent watermark moves into the mailbox row; what a mailbox held at the
    upgrade counts as seen (it was, by the sessions before), what comes later is recent."""
    db = sqlite3.connect(tmp_path / "mailyard.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version (version) VALUES (4)")
    for script in MIGRATIONS[:4]:
        db.executescript(script)
    db.execute("INSERT INTO mailboxes (id, account_id, name, uidvalidity, uidnext, "
               "highestmodseq) VALUES (5, 1, 'INBOX', 1, 11, 20), (6, 1, 'Empty', 1, 1, 1)")
    db.close()

    async def main() -> list[int]:
        s = SQLiteStore(tmp_path, sweep_orphans=False)
        await s.open()
        got = [(await s.get_mailbox_by_id(i)).recent_uid for i in (5, 6)]  # type: ignore[union-attr]
        await s.close()
        return got

    assert asyncio.run(main()) == [10, 0]


def test_migration_6_accounts_start_without_a_scram_secret(tmp_path: Path) -> None:
    """Accounts from before SCRAM have no secret (NULL) until their password is next set
    or used with PLAIN/LOGIN; their password hash is untouched."""
    db = sqlite3.connect(tmp_path / "mailyard.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version (version) VALUES (5)")
    for script in MIGRATIONS[:5]:
        db.executescript(script)
    db.execute("INSERT INTO accounts (id, address, domain, password_hash) "
               "VALUES (7, 'old@example.com', 'example.com', '$argon2id$old')")
    db.close()

    async def main() -> tuple[object, ...]:
        s = SQLiteStore(tmp_path, sweep_orphans=False)
        await s.open()
        before = await s.get_account("old@example.com")
        stored = await s.set_scram_secret("old@example.com", "SCRAM", password_hash="$argon2id$old")
        after = await s.get_account_by_id(7)
        await s.close()
        assert before is not None and after is not None
        return before.password_hash, before.scram_sha256, stored, after.scram_sha256

    assert asyncio.run(main()) == ("$argon2id$old", None, True, "SCRAM")
    assert len(MIGRATIONS) == 6


async def _store_with_messages(tmp_path: Path, n: int) -> tuple[SQLiteStore, list[BlobRef]]:
    """A new store with one account and ``n`` small messages in its INBOX."""
    s = SQLiteStore(tmp_path)
    await s.open()
    acc = await s.add_account("a@example.com", "h")
    refs = [await s.blobs.put(b"m %d\r\n" % i) for i in range(n)]
    for r in refs:
        await s.deliver(r, [DeliveryTarget(acc.id)])
    return s, refs


def test_cache_memo_is_bounded_and_forgets_with_the_blob(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mailyard.storage.sqlite.store as store_mod

    monkeypatch.setattr(store_mod, "MEMO_CHARS", 100)

    async def main() -> None:
        s, refs = await _store_with_messages(tmp_path, 8)
        for r in refs:  # 8 x 20 characters of one kind, 8 x 5 of another
            await s.cache_put(r.blob_id, "big", "x" * 20)
            await s.cache_put(r.blob_id, "small", "y" * 5)
        memo = s._memo
        assert s._memo_chars <= 100
        assert s._memo_chars == sum(len(v) for d in memo.values() for v in d.values())
        assert list(memo["big"]) == [r.blob_id for r in refs[-len(memo["big"]):]]  # oldest went
        assert len(memo["small"]) == 8  # the kind holding the most gave way
        # a value pushed out of memory still comes from the database
        assert await s.cache_get(refs[0].blob_id, "big") == "x" * 20
        s._memo_forget(refs[-1].blob_id)
        assert all(refs[-1].blob_id not in d for d in memo.values())
        assert s._memo_chars == sum(len(v) for d in memo.values() for v in d.values())
        await s.close()

    asyncio.run(main())


def test_riders_commit_soon_and_never_after_a_later_job(tmp_path: Path) -> None:
    """A rider is committed soon without any other write, and never after a job queued
    later, although jobs without blobs skip the stager and may overtake its queue."""
    async def record(s: SQLiteStore, n: int) -> None:
        for i in range(n):
            await s.record_auth_result(when=float(i), source_ip="192.0.2.1",
                                       header_from="example.org", spf="pass", dkim="none",
                                       dmarc="pass", disposition="none")

    async def main() -> None:
        s = SQLiteStore(tmp_path)
        await s.open()
        await record(s, 2)
        for _ in range(200):
            if len(await s.list_auth_results()) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(await s.list_auth_results()) == 2  # no other write needed
        for n in range(3, 40, 3):
            await record(s, 3)
            await s.add_domain(f"d{n}.example")  # no blobs: straight to the writer
            assert len(await s.list_auth_results()) == n + 2  # the riders went with it
        await record(s, 1)
        await s.close()
        s = SQLiteStore(tmp_path)
        await s.open()
        assert len(await s.list_auth_results()) == 42  # the last one at close
        await s.close()

    asyncio.run(main())


def test_riders_without_prompt_wait_for_a_write_or_enough_company(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``write_soon(prompt=False)`` (cached values): no commit of its own until
    RIDERS_MAX wait; the next write, or close(), takes them."""
    import mailyard.storage.sqlite.engine as engine_mod

    monkeypatch.setattr(engine_mod, "RIDERS_MAX", 3)

    async def main() -> None:
        s, refs = await _store_with_messages(tmp_path, 6)

        def rows() -> int:
            return int(s.engine.read_now(lambda c: c.execute(
                "SELECT count(*) FROM blob_cache").fetchone()[0]))

        s.cache_put_later(refs[0].blob_id, "k", "v0")
        s.cache_put_later(refs[1].blob_id, "k", "v1")
        await asyncio.sleep(0.1)
        assert rows() == 0  # waiting for company
        await s.add_domain("example.org")
        assert rows() == 2  # rode with that write
        for r in refs[2:5]:  # RIDERS_MAX of them: a commit of their own
            s.cache_put_later(r.blob_id, "k", "v")
        for _ in range(200):
            if rows() == 5:
                break
            await asyncio.sleep(0.01)
        assert rows() == 5
        s.cache_put_later(refs[5].blob_id, "k", "v5")
        await s.close()
        s = SQLiteStore(tmp_path)
        await s.open()
        assert rows() == 6  # the last one at close
        assert await s.cache_get(refs[5].blob_id, "k") == "v5"
        await s.close()

    asyncio.run(main())
