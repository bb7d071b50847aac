"""The full-text index in its own file: deferred, complete for readers, repaired at open."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from mailyard.message.text import index_text
from mailyard.storage.models import DeliveryTarget, SearchableText
from mailyard.storage.sqlite import SQLiteStore, textindex

MSG = (b"From: a@example.com\r\nSubject: Quarterly figures %d\r\n\r\n"
       b"The pelican count rose again, note %d.\r\n")


async def _reopen(tmp_path: Path) -> tuple[SQLiteStore, int]:
    """The store of a finished setup, open again, and the INBOX id of its one account."""
    s = SQLiteStore(tmp_path)
    await s.open()
    acc = await s.get_account("a@example.com")
    assert acc is not None
    inbox = await s.get_mailbox(acc.id, "INBOX")
    assert inbox is not None
    return s, inbox.id


async def _new_store(tmp_path: Path) -> tuple[SQLiteStore, int, int]:
    """A new store with one account: (store, account id, INBOX id)."""
    s = SQLiteStore(tmp_path)
    await s.open()
    acc = await s.add_account("a@example.com", "h")
    inbox = await s.get_mailbox(acc.id, "INBOX")
    assert inbox is not None
    return s, acc.id, inbox.id


def _count(tmp_path: Path, sql: str) -> int:
    db = sqlite3.connect(tmp_path / textindex.INDEX_NAME)
    try:
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()


async def _deliver(s: SQLiteStore, acc: int, i: int, text: object = index_text) -> None:
    ref = await s.blobs.put(MSG % (i, i))
    await s.deliver(ref, [DeliveryTarget(acc)], text=text)  # type: ignore[arg-type]


def test_search_sees_every_delivery_at_once(tmp_path: Path) -> None:
    """Indexing is deferred while mail arrives, yet a search right after sees it all."""
    async def main() -> None:
        s, acc, inbox = await _new_store(tmp_path)
        await asyncio.gather(*(_deliver(s, acc, i) for i in range(50)))
        # The text is extracted from the stored message (prefix headers and all).
        assert await s.search_text(inbox, "pelican") == set(range(1, 51))
        assert await s.search_text(inbox, "note 17.", field="body") == {
            m.uid for m in await s.list_messages(inbox)
            if (await s.blobs.read(m.blob_id)).endswith(b"note 17.\r\n")}
        assert await s.unindexed_uids(inbox) == set()
        await s.close()

    asyncio.run(main())


def test_lost_index_is_rebuilt_at_open(tmp_path: Path) -> None:
    """A crash may lose the index's last transactions: the next open indexes what is
    missing from the stored messages and drops rows whose blob is gone or changed."""
    async def setup() -> None:
        s, acc, inbox = await _new_store(tmp_path)
        for i in range(5):
            await _deliver(s, acc, i)
        assert await s.search_text(inbox, "pelican") == {1, 2, 3, 4, 5}
        await s.close()

    asyncio.run(setup())
    db = sqlite3.connect(tmp_path / textindex.INDEX_NAME)
    with db:
        db.execute("DELETE FROM msg_text WHERE rowid IN (SELECT id FROM indexed LIMIT 3)")
        db.execute("DELETE FROM indexed WHERE id IN (SELECT id FROM indexed LIMIT 3)")
        # a row left from a deleted blob whose row id was then reused by other content
        db.execute("UPDATE indexed SET blob_id = 'stale' WHERE id = (SELECT max(id) FROM indexed)")
        db.execute("INSERT INTO msg_text (rowid, headers, body, extra) VALUES (999, 'x', "
                   "'a ghost of pelicans', '')")
        db.execute("INSERT INTO indexed (id, blob_id, ok) VALUES (999, 'gone', 1)")
    db.close()

    async def check() -> None:
        s, inbox = await _reopen(tmp_path)
        assert await s.search_text(inbox, "pelican") == {1, 2, 3, 4, 5}
        assert await s.unindexed_uids(inbox) == set()
        await s.close()

    asyncio.run(check())
    assert _count(tmp_path, "SELECT count(*) FROM indexed WHERE id = 999") == 0
    assert _count(tmp_path, "SELECT count(*) FROM msg_text WHERE rowid = 999") == 0
    assert _count(tmp_path, "SELECT count(*) FROM indexed WHERE blob_id = 'stale'") == 0


def test_removed_messages_leave_the_index(tmp_path: Path) -> None:
    async def main() -> None:
        s, acc, inbox = await _new_store(tmp_path)
        await _deliver(s, acc, 1)
        await s.search_text(inbox, "pelican")  # indexed now
        await s.store_flags(inbox, [1], ["\\Deleted"], "add")
        await s.expunge(inbox)
        await _deliver(s, acc, 2, SearchableText(headers="Subject: other", body="walrus"))
        assert await s.search_text(inbox, "pelican") == set()
        assert await s.search_text(inbox, "walrus") == {2}
        await s.close()

    asyncio.run(main())
    assert _count(tmp_path, "SELECT count(*) FROM indexed") == 1
    assert _count(tmp_path, "SELECT count(*) FROM msg_text") == 1


def test_old_database_index_is_moved(tmp_path: Path) -> None:
    """A database from before the separate file keeps its index: rows are moved once."""
    async def setup() -> None:
        s, acc, _ = await _new_store(tmp_path)
        await _deliver(s, acc, 1, SearchableText(headers="Subject: x", body="only in old"))
        await s.close()

    asyncio.run(setup())
    (tmp_path / textindex.INDEX_NAME).unlink()
    for extra in ("-wal", "-shm"):
        (tmp_path / (textindex.INDEX_NAME + extra)).unlink(missing_ok=True)
    db = sqlite3.connect(tmp_path / "mailyard.sqlite3")
    with db:
        db.execute("CREATE VIRTUAL TABLE msg_text USING fts5(headers, body, extra, "
                   "tokenize='trigram')")
        db.execute("INSERT INTO msg_text (rowid, headers, body, extra) SELECT id, 'Subject: x', "
                   "'only in old', '' FROM blobs")
    db.close()

    async def check() -> None:
        s, inbox = await _reopen(tmp_path)
        # Moved, not rebuilt: a rebuild from the message would not say "only in old".
        assert await s.search_text(inbox, "only in old") == {1}
        await s.close()

    asyncio.run(check())
    db = sqlite3.connect(tmp_path / "mailyard.sqlite3")
    try:
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'msg_text'").fetchone() is None
    finally:
        db.close()


def test_deleted_index_file_is_rebuilt(tmp_path: Path) -> None:
    """The index is derived data: with its file gone, the next open rebuilds it."""
    async def setup() -> None:
        s, acc, _ = await _new_store(tmp_path)
        for i in range(3):
            await _deliver(s, acc, i)
        await s.close()

    asyncio.run(setup())
    for name in (textindex.INDEX_NAME, textindex.INDEX_NAME + "-wal",
                 textindex.INDEX_NAME + "-shm"):
        (tmp_path / name).unlink(missing_ok=True)

    async def check() -> None:
        s, inbox = await _reopen(tmp_path)
        assert await s.search_text(inbox, "pelican") == {1, 2, 3}
        assert await s.search_text(inbox, "Quarterly figures 2", field="headers") == {3}
        await s.close()

    asyncio.run(check())


def test_header_candidates_never_miss_what_the_indexer_has_not_taken_in(tmp_path: Path) -> None:
    """SEARCH's header prefilter does not wait for the indexer: a message it has not
    indexed yet is a candidate; once indexed, only the matches are."""
    async def main() -> None:
        s, acc, inbox = await _new_store(tmp_path)
        await _deliver(s, acc, 1)
        await _deliver(s, acc, 2, SearchableText(headers="Subject: lunch", body="soup"))
        got = await s.header_candidates(inbox, "quarterly")
        assert got is not None and 1 in got  # matched, or not indexed yet
        await s.search_text(inbox, "x")  # waits for the indexer
        assert await s.header_candidates(inbox, "quarterly") == {1}
        assert await s.header_candidates(inbox, "lunch") == {2}
        assert await s.header_candidates(inbox, "qu") is None  # too short to narrow
        await s.close()

    asyncio.run(main())


def test_close_right_after_deliveries_indexes_what_it_was_handed(tmp_path: Path) -> None:
    """Closing drains the deferred index work while the blobs can still be read: every
    message delivered before close() is found by a search after a restart. (Closed the
    other way round, the indexer read blobs through a closed engine: rows marked
    'no text', or a segfault when the engine's readers closed under its query.)"""
    async def first() -> None:
        s, acc, _inbox = await _new_store(tmp_path)
        await asyncio.gather(*(_deliver(s, acc, i) for i in range(40)))
        await s.close()  # at once: the index work is still deferred

    async def second() -> None:
        s, inbox = await _reopen(tmp_path)
        try:
            assert await s.search_text(inbox, "pelican") == set(range(1, 41))
        finally:
            await s.close()

    asyncio.run(first())
    assert _count(tmp_path, "SELECT count(*) FROM indexed WHERE ok = 0") == 0
    asyncio.run(second())


def test_rows_from_an_older_text_extraction_are_indexed_again(tmp_path: Path) -> None:
    """An index whose text came from an older extraction (``PRAGMA user_version`` below
    TEXT_VERSION) has the rows it would read differently indexed again at open, from the
    stored bytes, once: before version 1 a body with no charset was read as ASCII, its
    UTF-8 octets becoming U+FFFD, so SEARCH BODY missed its non-ASCII words."""
    utf8 = "Subject: s\r\n\r\nGrüße aus Köln\r\n".encode()
    old_body = utf8.split(b"\r\n\r\n", 1)[1].decode("ascii", "replace")

    async def setup() -> None:
        s, acc, inbox = await _new_store(tmp_path)
        await s.deliver(await s.blobs.put(utf8), [DeliveryTarget(acc)], text=index_text)
        await _deliver(s, acc, 2, SearchableText(headers="Subject: x", body="walrus"))
        assert await s.search_text(inbox, "Köln", field="body") == {1}
        await s.close()

    def make_old(version: int) -> None:
        db = sqlite3.connect(tmp_path / textindex.INDEX_NAME)
        with db:
            db.execute("UPDATE msg_text SET body = ? WHERE body LIKE 'Gr%'", (old_body,))
            db.execute(f"PRAGMA user_version = {version}")
        db.close()

    async def check(found: set[int]) -> None:
        s, inbox = await _reopen(tmp_path)
        assert await s.search_text(inbox, "Köln", field="body") == found
        assert await s.search_text(inbox, "Kö", field="body") == found  # the scan path
        # rows without U+FFFD are kept as they are (this one was never in the message)
        assert await s.search_text(inbox, "walrus", field="body") == {2}
        await s.close()

    asyncio.run(setup())
    assert _count(tmp_path, "PRAGMA user_version") == textindex.TEXT_VERSION
    make_old(0)
    asyncio.run(check({1}))
    assert _count(tmp_path, "PRAGMA user_version") == textindex.TEXT_VERSION
    # once only: a row that is current by its version is not read again
    make_old(textindex.TEXT_VERSION)
    asyncio.run(check(set()))
