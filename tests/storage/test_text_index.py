"""The full-text index in its own file: deferred, complete for readers, repaired at open."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from mailyard.server.delivery import searchable
from mailyard.storage.models import DeliveryTarget, SearchableText
from mailyard.storage.sqlite import SQLiteStore, textindex

MSG = (b"From: a@example.com\r\nSubject: Quarterly figures %d\r\n\r\n"
       b"The pelican count rose again, note %d.\r\n")


async def _deliver(s: SQLiteStore, acc: int, i: int, text: object = searchable) -> None:
    ref = await s.blobs.put(MSG % (i, i))
    await s.deliver(ref, [DeliveryTarget(acc)], text=text)  # type: ignore[arg-type]


def test_search_sees_every_delivery_at_once(tmp_path: Path) -> None:
    """Indexing is deferred while mail arrives, yet a search right after sees it all."""
    async def main() -> None:
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.add_account("a@example.com", "h")
        inbox = await s.get_mailbox(acc.id, "INBOX")
        assert inbox is not None
        await asyncio.gather(*(_deliver(s, acc.id, i) for i in range(50)))
        # The text is extracted from the stored message (prefix headers and all).
        assert await s.search_text(inbox.id, "pelican") == set(range(1, 51))
        assert await s.search_text(inbox.id, "note 17.", field="body") == {
            m.uid for m in await s.list_messages(inbox.id)
            if (await s.blobs.read(m.blob_id)).endswith(b"note 17.\r\n")}
        assert await s.unindexed_uids(inbox.id) == set()
        await s.close()

    asyncio.run(main())


def test_lost_index_is_rebuilt_at_open(tmp_path: Path) -> None:
    """A crash may lose the index's last transactions: the next open indexes what is
    missing from the stored messages and drops rows whose blob is gone or changed."""
    async def setup() -> None:
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.add_account("a@example.com", "h")
        for i in range(5):
            await _deliver(s, acc.id, i)
        inbox = await s.get_mailbox(acc.id, "INBOX")
        assert inbox is not None
        assert await s.search_text(inbox.id, "pelican") == {1, 2, 3, 4, 5}
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
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.get_account("a@example.com")
        assert acc is not None
        inbox = await s.get_mailbox(acc.id, "INBOX")
        assert inbox is not None
        assert await s.search_text(inbox.id, "pelican") == {1, 2, 3, 4, 5}
        assert await s.unindexed_uids(inbox.id) == set()
        await s.close()

    asyncio.run(check())
    db = sqlite3.connect(tmp_path / textindex.INDEX_NAME)
    try:
        assert db.execute("SELECT count(*) FROM indexed WHERE id = 999").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM msg_text WHERE rowid = 999").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM indexed WHERE blob_id = 'stale'").fetchone() == (0,)
    finally:
        db.close()


def test_removed_messages_leave_the_index(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.add_account("a@example.com", "h")
        inbox = await s.get_mailbox(acc.id, "INBOX")
        assert inbox is not None
        await _deliver(s, acc.id, 1)
        await s.search_text(inbox.id, "pelican")  # indexed now
        await s.store_flags(inbox.id, [1], ["\\Deleted"], "add")
        await s.expunge(inbox.id)
        await _deliver(s, acc.id, 2, SearchableText(headers="Subject: other", body="walrus"))
        assert await s.search_text(inbox.id, "pelican") == set()
        assert await s.search_text(inbox.id, "walrus") == {2}
        await s.close()

    asyncio.run(main())
    db = sqlite3.connect(tmp_path / textindex.INDEX_NAME)
    try:
        assert db.execute("SELECT count(*) FROM indexed").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM msg_text").fetchone() == (1,)
    finally:
        db.close()


def test_old_database_index_is_moved(tmp_path: Path) -> None:
    """A database from before the separate file keeps its index: rows are moved once."""
    async def setup() -> None:
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.add_account("a@example.com", "h")
        await _deliver(s, acc.id, 1, SearchableText(headers="Subject: x", body="only in old"))
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
        s = SQLiteStore(tmp_path)
        await s.open()
        acc = await s.get_account("a@example.com")
        assert acc is not None
        inbox = await s.get_mailbox(acc.id, "INBOX")
        assert inbox is not None
        # Moved, not rebuilt: a rebuild from the message would not say "only in old".
        assert await s.search_text(inbox.id, "only in old") == {1}
        await s.close()

    asyncio.run(check())
    db = sqlite3.connect(tmp_path / "mailyard.sqlite3")
    try:
        assert db.execute("SELECT 1 FROM sqlite_master WHERE name = 'msg_text'").fetchone() is None
    finally:
        db.close()
