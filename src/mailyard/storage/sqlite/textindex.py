"""The full-text index: its own SQLite file, fed after commit by its own thread.

Theory of operation
-------------------
Indexing a message in FTS5 costs far more than storing it: the tokenizer runs
over every character, and FTS5 writes a new index segment at every savepoint
release and merges segments at commit. Done in the writer's transaction, as it
first was, it took over half of the writer thread's time and put it on every
delivery's path to its ``250``. The index is derived data, rebuilt from the
messages themselves, so it does not need to be durable with them:

* it lives in ``search.sqlite3`` next to the main database (WAL,
  ``synchronous=NORMAL``: a crash may lose the last few transactions, never
  corrupt the file), with a plain table ``indexed (id, blob_id, ok)`` naming the
  blob rows it holds (``id`` is ``blobs.id`` of the main database, the FTS rowid);
* the writer, after COMMIT and before any caller is woken, hands this thread the
  batch's additions (blob row, blob id, text or a function making it) and
  removals (blob rows deleted), in commit order. The thread defers the work while
  mail keeps arriving, then writes everything waiting in one transaction (no
  savepoints, so FTS5 flushes once): when nothing new came for ``IDLE_SECONDS``,
  when the oldest has waited ``MAX_DEFER_SECONDS``, when ``DEFER_MAX`` items wait,
  or at once when a reader asks. The text is
  extracted there too, from the stored message, so a delivery's path to its
  ``250`` holds neither tokenising nor MIME decoding for the index;
* a reader wanting the index complete (``search_text``) first awaits
  :meth:`TextIndex.flush`: a barrier that resolves once everything handed over
  before it is committed. So SEARCH sees every message the client can see;
* at open, the owner reconciles (:meth:`TextIndex.reconcile`, first job of the
  thread, so the first barrier waits for it): rows whose blob is gone, or whose
  blob row now holds other content (row ids are reused), are removed; message
  blobs with no row are indexed from their stored bytes. That repairs what a
  crash lost between a commit and the index's own. Before that, an index whose
  ``PRAGMA user_version`` is below ``TEXT_VERSION`` drops the rows the current text
  extraction would read differently (:meth:`TextIndex._reextract`), so the same
  repair indexes them afresh.

Blob row ids are reused by SQLite after a delete, so the order matters: a
removal and a later addition of the same row id arrive in commit order on one
queue, and ``indexed.blob_id`` guards reconciliation against a stale row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailyard.storage.models import SearchableText, TextSource

log = logging.getLogger(__name__)

INDEX_NAME = "search.sqlite3"
MAX_DERIVE_SIZE = 8 * 1024 * 1024  # larger messages are not indexed (as APPEND's limit)
IDLE_SECONDS = 0.2  # index what waits once no work has arrived for this long ...
MAX_DEFER_SECONDS = 2.0  # ... or once the oldest item has waited this long ...
DEFER_MAX = 5000  # ... or once this many additions and removals wait
TXN_MAX = 100  # items per index transaction (FTS5 holds its pending terms in memory)
# How the index's text was extracted (message/text.py); an older index is brought up to
# date at open (TextIndex._reextract). 1: a body with no charset or us-ascii whose octets
# are valid UTF-8 is read as UTF-8 (it was read as ASCII, each 8-bit octet U+FFFD).
TEXT_VERSION = 1

FTS_TRIGRAM = ("CREATE VIRTUAL TABLE IF NOT EXISTS msg_text USING fts5("
               "headers, body, extra, tokenize='trigram')")
FTS_PLAIN = "CREATE VIRTUAL TABLE IF NOT EXISTS msg_text USING fts5(headers, body, extra)"
INDEXED = ("CREATE TABLE IF NOT EXISTS indexed (id INTEGER PRIMARY KEY, blob_id TEXT NOT NULL, "
           "ok INTEGER NOT NULL)")


def has_trigram(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("CREATE VIRTUAL TABLE temp._probe USING fts5(x, tokenize='trigram')")
        conn.execute("DROP TABLE temp._probe")
        return True
    except sqlite3.OperationalError:
        return False


def connect_index(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def create_schema(conn: sqlite3.Connection) -> bool:
    """Create the index tables if missing; True when the FTS table uses trigrams."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'msg_text'").fetchone() is None:
        conn.execute(FTS_TRIGRAM if has_trigram(conn) else FTS_PLAIN)
    conn.execute(INDEXED)
    row = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'msg_text'").fetchone()
    return bool(row and "trigram" in row[0])


@dataclass(slots=True)
class _Add:
    rowid: int
    blob_id: str
    text: TextSource


@dataclass(slots=True)
class _Remove:
    rowid: int


@dataclass(slots=True)
class _Barrier:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Reconcile:
    main_db: Path


_Item = _Add | _Remove | _Barrier | _Reconcile | None
_IDLE = _Remove(-1)  # marker: the queue stayed empty for IDLE_SECONDS

# Reads a stored blob's bytes in the indexer thread: None when it is not there or is
# longer than the limit given.
ReadBlob = Callable[[str, int], bytes | None]
Derive = Callable[[bytes], SearchableText | None]


def _default_derive(content: bytes) -> SearchableText | None:
    from mailyard.message.text import index_text  # the store does not parse mail itself

    return index_text(content)


class TextIndex:
    def __init__(self, path: Path, *, read_blob: ReadBlob,
                 derive: Derive = _default_derive) -> None:
        self.path = path
        self._read_blob = read_blob
        self._derive = derive
        self._conn = connect_index(path)
        self.trigram = create_schema(self._conn)
        self._q: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="text-index", daemon=True)
        self._closed = False
        # Work handed over / work done (each counted by one thread only): a reader finds
        # the index complete without a round trip to the thread when they are equal.
        self._handed = 0
        self._done = 0

    def start(self) -> None:
        self._thread.start()

    # -- the writer's side (after COMMIT, in commit order) -----------------------------------
    def add(self, rowid: int, blob_id: str, text: TextSource) -> None:
        if text is not None:
            self._handed += 1
            self._q.put(_Add(rowid, blob_id, text))

    def remove(self, rowid: int) -> None:
        self._handed += 1
        self._q.put(_Remove(rowid))

    def reconcile(self, main_db: Path) -> None:
        self._handed += 1
        self._q.put(_Reconcile(main_db))

    # -- readers ---------------------------------------------------------------------------
    async def flush(self) -> None:
        """Return once everything handed over before this call is in the index."""
        if self._closed:
            return
        # The writer hands work over before it wakes anyone, so whatever a caller can have
        # seen committed is counted in _handed already (read first).
        handed = self._handed
        if self._done >= handed:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._q.put(_Barrier(loop, fut))
        await fut

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        """Collect work; index it when asked (a barrier), when idle, when the oldest item
        has waited ``MAX_DEFER_SECONDS`` or when a lot waits.

        Indexing is deferred while mail keeps arriving (Dovecot's FTS plugins index
        lazily too): a burst of deliveries is not slowed by tokenising, and one large
        transaction costs FTS5 far less than many small ones. A body search never sees
        the deferral: its barrier makes the thread index everything before it at once;
        the header prefilter counts what is not indexed yet as a candidate, and the age
        limit keeps that set small under a steady stream of mail.
        """
        pending: list[_Item] = []
        oldest = 0.0
        stop = False
        while not stop:
            timeout = None
            if pending:
                timeout = max(0.0, min(IDLE_SECONDS, oldest + MAX_DEFER_SECONDS - time.monotonic()))
            try:
                item = self._q.get(timeout=timeout)
            except queue.Empty:
                item = _IDLE
            urgent = item is _IDLE
            while True:
                if item is None:
                    stop = urgent = True
                    break
                if item is not _IDLE:
                    if not pending:
                        oldest = time.monotonic()
                    pending.append(item)
                    if not isinstance(item, _Add | _Remove) or len(pending) >= DEFER_MAX:
                        urgent = True
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            if pending and (urgent or time.monotonic() - oldest >= MAX_DEFER_SECONDS):
                work, pending = pending, []
                self._process(work)

    def _process(self, work: list[_Item]) -> None:
        units = sum(1 for i in work if not isinstance(i, _Barrier))
        try:
            self._apply(work)
        except Exception:  # never let the indexer die: reconciliation repairs at next open
            log.exception("full-text indexing failed for a batch of %d", len(work))
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
        self._done += units  # failed work too: the next open's repair redoes it
        for item in work:
            if isinstance(item, _Barrier):
                with contextlib.suppress(RuntimeError):  # loop closed
                    item.loop.call_soon_threadsafe(_wake, item.future)

    def _apply(self, items: list[Any]) -> None:
        conn = self._conn
        began, done = False, 0
        for item in items:
            if isinstance(item, _Barrier):
                continue
            if isinstance(item, _Reconcile):  # runs its own transactions
                if began:
                    conn.execute("COMMIT")
                    began = False
                self._reconcile(item.main_db)
                continue
            if began and done >= TXN_MAX:  # bounds FTS5's in-memory pending terms
                conn.execute("COMMIT")
                began = False
            if not began:
                conn.execute("BEGIN IMMEDIATE")
                began, done = True, 0
            done += 1
            if isinstance(item, _Remove):
                self._remove(conn, item.rowid)
            else:
                self._add(conn, item.rowid, item.blob_id, item.text)
        if began:
            conn.execute("COMMIT")

    @staticmethod
    def _remove(conn: sqlite3.Connection, rowid: int) -> None:
        conn.execute("DELETE FROM msg_text WHERE rowid = ?", (rowid,))
        conn.execute("DELETE FROM indexed WHERE id = ?", (rowid,))

    def _add(self, conn: sqlite3.Connection, rowid: int, blob_id: str, text: TextSource) -> None:
        row = conn.execute("SELECT blob_id FROM indexed WHERE id = ?", (rowid,)).fetchone()
        if row is not None:
            if row[0] == blob_id:
                return  # the same content delivered again: already indexed
            conn.execute("DELETE FROM msg_text WHERE rowid = ?", (rowid,))  # a stale row
        made: SearchableText | None = None
        if callable(text):
            content = self._read_blob(blob_id, MAX_DERIVE_SIZE)
            if content is not None:
                try:
                    made = text(content)
                except Exception:
                    log.exception("could not extract the text of blob %s", blob_id)
        else:
            made = text
        if made is not None:
            conn.execute("INSERT INTO msg_text (rowid, headers, body, extra) VALUES (?, ?, ?, ?)",
                         (rowid, made.headers, made.body, "\n".join(made.extra.values())))
        conn.execute("INSERT OR REPLACE INTO indexed (id, blob_id, ok) VALUES (?, ?, ?)",
                     (rowid, blob_id, int(made is not None)))

    def _reextract(self) -> None:
        """Once per ``TEXT_VERSION``: drop the rows whose text the current extraction may
        read differently, so that :meth:`_reconcile` indexes them again from the stored
        bytes. For version 1 those are the rows holding U+FFFD in ``body``: the octets
        the old reading replaced (every body it changed has one; another body holding
        one is indexed again to the same text)."""
        conn = self._conn
        if conn.execute("PRAGMA user_version").fetchone()[0] >= TEXT_VERSION:
            return
        rows = conn.execute(
            "SELECT rowid FROM msg_text WHERE instr(body, char(65533)) > 0").fetchall()
        self._apply([_Remove(rowid) for (rowid,) in rows])
        conn.execute(f"PRAGMA user_version = {TEXT_VERSION}")
        if rows:
            log.info("full-text index: %d messages to index again (text extraction %d)",
                     len(rows), TEXT_VERSION)

    def _reconcile(self, main_db: Path) -> None:
        """Called by ``_apply`` outside any transaction. The main database is attached
        only to read: written with it attached, a transaction would lock it too."""
        self._reextract()
        conn = self._conn
        conn.execute("ATTACH DATABASE ? AS store", (str(main_db),))
        try:
            stale = conn.execute(
                "SELECT i.id FROM indexed i LEFT JOIN store.blobs b ON b.id = i.id "
                "WHERE b.blob_id IS NOT i.blob_id").fetchall()
            missing = conn.execute(
                "SELECT b.id, b.blob_id FROM store.blobs b WHERE NOT EXISTS "
                "(SELECT 1 FROM indexed i WHERE i.id = b.id AND i.blob_id = b.blob_id) "
                "AND EXISTS (SELECT 1 FROM store.messages m WHERE m.blob_id = b.blob_id)"
            ).fetchall()
        finally:
            conn.execute("DETACH DATABASE store")
        # Stale rows first: a reused row id is then indexed afresh from its bytes.
        self._apply([_Remove(rowid) for (rowid,) in stale]
                    + [_Add(rowid, blob_id, self._derive) for rowid, blob_id in missing])
        if stale or missing:
            log.info("full-text index: %d stale rows removed, %d messages indexed from their "
                     "stored bytes", len(stale), len(missing))

    def close(self) -> None:
        """Blocking: index what was handed over, stop the thread, close the file."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
