"""The embedded default backend: SQLite metadata + message bodies in segment files.

Layout of ``data_dir``::

    mailyard.sqlite3(-wal,-shm)   metadata (WAL, synchronous=FULL)
    blobs/                        segments.SegmentBlobStore (tmp/, segments/)

Every write is a job for the single writer thread (``engine.Engine``), which
commits all jobs waiting at that moment in one transaction; message bytes
carried by a job (a ``StagedBlob``) are appended to a segment and fdatasynced
once per batch just before that transaction (``segments.py``). Small index
lookups (an account, an alias, a mailbox, a blob location) run on the event
loop's own read connection (~3 us, against ~100 us for a thread hop: see
``engine.py``), and so do message-index reads bounded by ``SMALL_READ`` rows
(under load a hop costs milliseconds of latency); queries whose cost grows
with the data run in the reader thread pool.

Opening recovers from a crash: spill files in ``blobs/tmp`` are removed, blob
locations no row references are dropped (committed but never delivered),
segment bytes past the last indexed blob are truncated, and segments less
than half live are compacted (``maintain`` does the same while serving). Per-file blobs of the previous layout
(``blobs/ab/cd/<id>``) are imported into a segment once.

Decisions recorded here (see also ``names.py`` for normalisation):

* UIDs: ``uidnext`` only grows; expunge never lowers it. A mailbox deleted and
  created again is a new row with a new UIDVALIDITY (RFC 9051 §2.3.1.1), taken
  from a store-wide counter that is at least the clock and strictly increasing.
* MODSEQ (RFC 7162 §3.1.1): every change to a message (append, flag change,
  expunge) takes ``highestmodseq + 1`` of its mailbox, one value per message.
  A new mailbox starts at HIGHESTMODSEQ 1. Expunges are kept in ``expunged``
  with their modseq for QRESYNC (RFC 7162 §3.2.10); the log is never trimmed.
* DELETE of a mailbox that has children removes only that mailbox (RFC 9051
  §6.3.4 allows it); the children stay. INBOX can never be deleted.
* CREATE makes missing superiors (RFC 9051 §6.3.4 "SHOULD create any superior
  hierarchical names"). RENAME moves children along ("a/x" -> "b/x"); RENAME of
  INBOX moves its messages to a new mailbox and leaves INBOX empty, without
  touching "INBOX/..." children (RFC 9051 §6.3.6).
* \\Recent is not tracked (IMAP4rev2 removed it): ``MailboxStatus.recent`` is 0.
* ``add_account`` creates the domain when missing. ``remove_domain`` refuses a
  domain that still has accounts (deleting mail is ``remove_account``'s job).
* Full-text rows are per blob (copies share them); a message delivered
  without ``text`` is found by no text search except the empty string.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from mailyard.storage import changes as changes_mod
from mailyard.storage.interface import (
    AlreadyExists,
    BlobStore,
    FlagMode,
    MailboxIndex,
    NotFound,
    QuotaExceeded,
    StorageError,
)
from mailyard.storage.models import (
    DEFAULT_MAILBOXES,
    Account,
    Alias,
    BlobRef,
    Change,
    Delivered,
    DeliveryTarget,
    Domain,
    FlagUpdate,
    Mailbox,
    MailboxStatus,
    MessageRef,
    QueueEntry,
    QueueRecipient,
    TextSource,
)
from mailyard.storage.sqlite import names, queue_ops, schema
from mailyard.storage.sqlite.engine import Engine, Tx
from mailyard.storage.sqlite.segments import (
    FileSource,
    LocRow,
    SegmentBlobStore,
    SegmentSource,
    StagedBlob,
    legacy_files,
    staged_blobs,
)
from mailyard.storage.sqlite.textindex import INDEX_NAME, TextIndex

log = logging.getLogger(__name__)

LOCK_NAME = "mailyard.lock"
DB_NAME = "mailyard.sqlite3"
# A full-text match in one mailbox, from the index outwards: matching rows -> blobs ->
# messages by blob_id. Left to itself the planner walks the whole mailbox and probes the
# match list per message (3 s for 20k messages, against 6 ms this way).
_MATCH_SQL = ("SELECT m.uid FROM (SELECT rowid AS id FROM fts.msg_text WHERE msg_text "
              "MATCH ?) t JOIN blobs b ON b.id = t.id JOIN messages m "
              "INDEXED BY messages_blob ON m.blob_id = b.blob_id WHERE m.mailbox_id = ?")
_UNINDEXED_SQL = ("SELECT m.uid FROM messages m JOIN blobs b ON b.blob_id = m.blob_id "
                  "WHERE m.mailbox_id = ? AND NOT EXISTS "
                  "(SELECT 1 FROM fts.indexed t WHERE t.id = b.id AND t.ok)")
_MBOX_COLS = ("id, account_id, name, uidvalidity, uidnext, highestmodseq, special_use, "
              "subscribed, recent_uid")
T = TypeVar("T")
_MSG_COLS = "mailbox_id, uid, modseq, flags, internaldate, savedate, size, blob_id"
_ROW_COLS = "uid, modseq, trim(flags), internaldate, size, blob_id"  # index_rows
MEMO_CHARS = 32 << 20  # characters of blob_cache values kept in memory (about 32 MB)
_CHUNK = 500  # bound on "IN (?, ...)" lists (SQLite's default variable limit is 32766)
# Reads of at most this many index rows (a FETCH or SEARCH of a few messages, SELECT or
# FETCH 1:* of a mailbox of a thousand) run on the loop's own connection: ~1 ms at this
# size, against a thread hop that costs ~10 ms of latency once 20 sessions keep the loop
# and the GIL busy (measured with bench/bench_imap.py: 3.5 ms to start in the pool,
# 5 ms to get back). Larger ones (big mailboxes) go to the reader pool so that one
# session does not hold up the others.
SMALL_READ = 2048
# Authentication verdicts (auth_results, one row per inbound message) are kept this long,
# for DMARC aggregate reports (daily, RFC 7489 §7.2): older rows are deleted, at most once
# an hour, by the write that adds new ones, so the table does not grow without end.
AUTH_RESULTS_KEEP = 31 * 86400.0
AUTH_RESULTS_PRUNE_EVERY = 3600.0
AUTH_RESULTS_PRUNE_BATCH = 5000  # rows deleted by one write at most
# Online compaction (maintain): live bytes, and rows, moved by one write job at most.
COMPACT_STEP = 4 * 1024 * 1024
COMPACT_ROWS = 2000
_LIVE_BY_SEGMENT = "SELECT segment, sum(length) FROM blob_locs GROUP BY segment"
_FLAGSETS: dict[str, frozenset[str]] = {}  # stored flags text -> set: a mailbox has a few


def _mailbox(row: tuple) -> Mailbox:
    return Mailbox(id=row[0], account_id=row[1], name=row[2], uidvalidity=row[3],
                   uidnext=row[4], highestmodseq=row[5], special_use=row[6],
                   subscribed=bool(row[7]), recent_uid=row[8])


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction on an autocommit connection: committed, or rolled back when
    the body raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _fts_match(cols: Sequence[str], query: str) -> str:
    """FTS5 query for ``query`` in ``cols``: with the trigram tokenizer a quoted phrase
    is an indexed, case-insensitive substring match (no query syntax passes through)."""
    return "{" + " ".join(cols) + "} : " + '"' + query.replace('"', '""') + '"'


def _flagset(text: str) -> frozenset[str]:
    got = _FLAGSETS.get(text)
    if got is None:
        if len(_FLAGSETS) >= 4096:
            _FLAGSETS.clear()
        got = _FLAGSETS[text] = names.text_to_flags(text)
    return got


def _message(row: tuple) -> MessageRef:
    return MessageRef(mailbox_id=row[0], uid=row[1], modseq=row[2],
                      flags=_flagset(row[3]), internaldate=row[4], savedate=row[5],
                      size=row[6], blob_id=row[7], email_id="M" + row[7][:24])


def _account(row: tuple) -> Account:
    return Account(id=row[0], address=row[1], password_hash=row[2], quota_bytes=row[3],
                   disabled=bool(row[4]), scram_sha256=row[5])


_ACCOUNT_COLS = "id, address, password_hash, quota_bytes, disabled, scram_sha256"


def _uid_col(cols: str) -> int:
    return [c.strip() for c in cols.split(",")].index("uid")


def _chunks(seq: Sequence[T]) -> Iterable[Sequence[T]]:
    for i in range(0, len(seq), _CHUNK):
        yield seq[i : i + _CHUNK]


def _insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], *,
                 tail: str = "", per_statement: int = 100) -> None:
    """``head VALUES (?, ...), (?, ...)tail`` for ``rows``, ``per_statement`` rows at a time.

    Not ``executemany``: that steps once per row, and every step gives the GIL away and
    takes it back, a wait when the event loop is busy (see Engine: bulk jobs)."""
    if not rows:
        return
    mark = "(" + ", ".join("?" * len(rows[0])) + ")"
    for i in range(0, len(rows), per_statement):
        part = rows[i:i + per_statement]
        conn.execute(f"{head} VALUES {','.join([mark] * len(part))}{tail}",
                     [v for row in part for v in row])


class SQLiteStore:
    """``Store`` on SQLite + files. Use ``await store.open()`` before anything else."""

    def __init__(self, data_dir: str | Path, *, clock: Callable[[], float] = time.time,
                 readers: int = 4, fsync: bool = True, verify_blobs: bool = False,
                 sweep_orphans: bool = True, change_queue_size: int = 1024,
                 segment_size: int = 64 * 1024 * 1024, require_owner: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self._require_owner = require_owner
        self._lock_fd = -1
        self.owner = False
        self._clock = clock
        self._readers = readers
        self._fsync = fsync
        self._verify_blobs = verify_blobs
        self._sweep_orphans = sweep_orphans
        self._segs = SegmentBlobStore(self.data_dir / "blobs", fsync=fsync, target=segment_size,
                                      engine=lambda: self.engine)
        self.blobs: BlobStore = self._segs
        self.bus = changes_mod.ChangeBus(maxsize=change_queue_size)
        self._engine: Engine | None = None
        self._text: TextIndex | None = None
        self._pop_locks: set[int] = set()
        # blob_cache rows already read or written, (blob_id, kind) -> value, oldest first.
        # A value depends only on the blob's bytes (content-addressed), so an entry can
        # never be wrong for its blob; rows of a deleted blob are dropped here too.
        # Kept per kind (a handful): kind -> {blob_id -> value}, each oldest first, so a
        # FETCH of 1:* looks its values up without building a key per message.
        self._memo: dict[str, dict[str, str]] = {}
        self._memo_chars = 0
        self._memo_kind_chars: dict[str, int] = {}
        self._memo_lock = threading.Lock()  # the writer thread forgets, the loop adds
        self._auth_pruned_at = float("-inf")  # writer thread: when auth_results was last pruned

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        if self._engine is not None:
            return
        await asyncio.to_thread(self._open_sync)

    def _take_owner_lock(self) -> bool:
        """One process owns a data directory: the server (or a lone admin command).

        Only the owner may recover at open (truncate segment tails, sweep spool files and
        orphan rows, compact) and unlink segments: another process doing so next to a live
        server would cut bytes the server has written but not yet committed. The lock is
        an flock on ``DIR/mailyard.lock``, released by the kernel if the owner dies.
        """
        fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _open_sync(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.owner = self._take_owner_lock()
        if not self.owner and self._require_owner:
            raise StorageError(f"{self.data_dir} is in use by another mailyard process "
                               "(is a server already running on it?)")
        if not self.owner:
            self._segs.files.may_drop = False
        path = self.data_dir / DB_NAME
        index_path = self.data_dir / INDEX_NAME
        text = TextIndex(index_path, read_blob=self._read_blob_sync)
        engine = Engine(path, readers=self._readers, after_commit=self._after_commit,
                        publish=self.bus.publish_many, blob_sink=self,
                        attach=[("fts", index_path)])
        conn = engine.writer_conn
        if not self._fsync:
            conn.execute("PRAGMA synchronous=OFF")
        schema.migrate(conn)
        self._text = text
        if not self.owner:  # an admin command beside a running server: no recovery
            engine.start()
            text.start()
            self._engine = engine
            return
        self._move_old_index(conn, index_path)
        self._segs.recover_tmp()
        if self._sweep_orphans:
            # Committed but never delivered (a crash in between): nobody holds them.
            conn.execute("DELETE FROM blob_locs WHERE blob_id NOT IN (SELECT blob_id FROM blobs)")
        files = self._segs.files
        files.recover(dict(conn.execute(
            "SELECT segment, max(start + length) FROM blob_locs GROUP BY segment").fetchall()))
        self._quarantine_torn(conn)
        self._import_legacy(conn)
        self._compact(conn)
        if self._verify_blobs:
            bad = self._segs.scrub(conn.execute(
                "SELECT blob_id, segment, start, length FROM blob_locs").fetchall())
            for blob_id in bad:
                conn.execute("DELETE FROM blob_locs WHERE blob_id = ?", (blob_id,))
        engine.start()
        self._engine = engine
        text.reconcile(path)  # the index may have lost its last moments in a crash
        text.start()

    def _move_old_index(self, conn: sqlite3.Connection, index_path: Path) -> None:
        """A database from before the index had its own file: move its rows there (once)."""
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'msg_text'").fetchone() is None:
            return
        conn.execute("ATTACH DATABASE ? AS fts", (str(index_path),))
        try:
            with _immediate(conn):
                conn.execute("INSERT OR IGNORE INTO fts.msg_text (rowid, headers, body, extra) "
                             "SELECT rowid, headers, body, extra FROM main.msg_text")
                conn.execute("INSERT OR IGNORE INTO fts.indexed (id, blob_id, ok) SELECT b.id, "
                             "b.blob_id, 1 FROM main.msg_text t JOIN main.blobs b "
                             "ON b.id = t.rowid")
                conn.execute("DROP TABLE main.msg_text")
        finally:
            conn.execute("DETACH DATABASE fts")
        log.info("moved the full-text index to %s", index_path.name)

    def _read_blob_sync(self, blob_id: str, limit: int) -> bytes | None:
        """The text indexer's thread: a stored blob's bytes; None when it is gone or
        longer than ``limit``."""
        try:
            return self._segs.read_sync(blob_id, limit)
        except (NotFound, StorageError):
            return None

    def _quarantine_torn(self, conn: sqlite3.Connection) -> None:
        """Blobs that reach past the end of their segment (a torn or truncated file) are
        copied, as far as they go, to ``blobs/quarantine/`` and their location rows removed:
        reads of them fail cleanly (POP3 -ERR, IMAP NO) and everything else is served."""
        sizes = self._segs.files.on_disk()
        torn: list[tuple[str, int, int, int]] = []
        for blob_id, seg, start, length in conn.execute(
                "SELECT blob_id, segment, start, length FROM blob_locs"):
            if start + length > sizes.get(seg, 0):
                torn.append((blob_id, seg, start, length))
        if not torn:
            return
        qdir = self._segs.root / "quarantine"
        qdir.mkdir(parents=True, exist_ok=True)
        for blob_id, seg, start, length in torn:
            with contextlib.suppress(OSError), open(self._segs.files.path(seg), "rb") as f:
                f.seek(start)
                (qdir / f"{blob_id}.partial").write_bytes(f.read(length))
            conn.execute("DELETE FROM blob_locs WHERE blob_id = ?", (blob_id,))
            log.error("quarantined blob %s: segment %d ends before its %d bytes at %d "
                      "(torn or truncated file)", blob_id, seg, length, start)
        conn.commit()

    def _store_now(self, conn: sqlite3.Connection, blobs: list[StagedBlob]) -> list[LocRow]:
        """Open-time helper: append ``blobs`` (fdatasynced) or raise."""
        rows, failed = self._segs.files.append(blobs)
        if failed:
            raise StorageError(f"could not store {len(failed)} blobs: {next(iter(failed.values()))}")
        return rows

    def _import_legacy(self, conn: sqlite3.Connection) -> None:
        """Move per-file blobs of the previous layout into a segment (once, at open)."""
        found = list(legacy_files(self._segs.root))
        if not found:
            return
        todo = [StagedBlob(blob_id=b, size=p.stat().st_size, spool=FileSource(p))
                for b, p in found
                if conn.execute("SELECT 1 FROM blobs WHERE blob_id = ?", (b,)).fetchone()
                and not conn.execute("SELECT 1 FROM blob_locs WHERE blob_id = ?", (b,)).fetchone()]
        rows = self._store_now(conn, todo) if todo else []
        with _immediate(conn):
            conn.executemany("INSERT INTO blob_locs (blob_id, segment, start, length) "
                             "VALUES (?, ?, ?, ?)", rows)
        for _, p in found:  # only now: the segment copy is durable and indexed
            with contextlib.suppress(OSError):
                p.unlink()
        for _, p in found:
            for d in (p.parent, p.parent.parent):
                with contextlib.suppress(OSError):
                    d.rmdir()
        log.info("imported %d per-file blobs into segment %d", len(rows), self._segs.files.current)

    def _sparse_segments(self, live: dict[int, int], sizes: dict[int, int]) -> list[int]:
        """Segments under half live (``live``: live bytes, ``sizes``: file sizes), oldest
        first; never the one being appended to."""
        current = self._segs.files.current
        return [seg for seg, size in sorted(sizes.items())
                if seg != current and size > 0 and live.get(seg, 0) * 2 < size]

    def _compact(self, conn: sqlite3.Connection) -> None:
        """Copy the live blobs of segments under half live to the current one (at open,
        before the writer starts: each segment in one transaction of ``_compact_step``s)."""
        files = self._segs.files
        live = dict(conn.execute(_LIVE_BY_SEGMENT).fetchall())
        sizes = files.on_disk()
        for seg in self._sparse_segments(live, sizes):
            tx = Tx(conn)
            with _immediate(conn):
                while self._compact_step(seg, tx) is not None:
                    pass
            files.drop(seg)
            log.info("compacted segment %d: %d live of %d bytes moved", seg, live.get(seg, 0),
                     sizes[seg])

    async def maintain(self) -> None:
        """Reclaim the space of deleted mail while serving (the server calls this now
        and then; the same happens at open).

        A segment under half live has its live blobs copied to the current segment,
        COMPACT_STEP bytes per write job, each job appending and fdatasyncing the copies
        and moving their rows in the writer's transaction, so deliveries keep going in
        between; the commit that moves its last row unlinks it (``_after_commit``). A
        reader that found a blob at its old place keeps reading it there (its handle holds
        the file); a reader that looks it up once the file is gone is sent to the new
        place (``SegmentBlobStore._open_blob``). Only the owner of the data directory
        drops segments, so a process beside a running server does nothing here.
        """
        files = self._segs.files
        if not self.owner or not files.may_drop:
            return
        live = dict(await self._read(lambda c: c.execute(_LIVE_BY_SEGMENT).fetchall()))
        sizes = await asyncio.to_thread(files.on_disk)
        for seg in self._sparse_segments(live, sizes):
            moved = 0
            while (step := await self._write(functools.partial(self._compact_step, seg))) is not None:
                moved += step
            log.info("compacted segment %d: %d live of %d bytes moved", seg, moved, sizes[seg])

    def _compact_step(self, seg: int, tx: Tx) -> int | None:
        """Writer: move up to COMPACT_STEP bytes of ``seg``'s blobs to the current
        segment; the bytes moved, or None once ``seg`` holds none (it is dropped after
        this commit)."""
        files = self._segs.files
        rows = tx.conn.execute("SELECT blob_id, start, length FROM blob_locs WHERE segment = ? "
                               "ORDER BY start LIMIT ?", (seg, COMPACT_ROWS)).fetchall()
        if not rows:
            tx.freed_segments.add(seg)
            return None
        batch: list[StagedBlob] = []
        total = 0
        for blob_id, start, length in rows:
            if batch and total + length > COMPACT_STEP:
                break
            batch.append(StagedBlob(blob_id=blob_id, size=length,
                                    spool=SegmentSource(files, seg, start, length)))
            total += length
        with files.append_lock:  # the stager appends too
            moved, failed = files.append(batch)
        if failed:
            raise next(iter(failed.values()))
        tx.conn.executemany("UPDATE blob_locs SET segment = ?, start = ? "
                            "WHERE blob_id = ? AND segment = ?",
                            [(r[1], r[2], r[0], seg) for r in moved])
        return total

    async def close(self) -> None:
        text, self._text = self._text, None  # commits from now on are indexed at next open
        self.bus.close()
        if text is not None:
            # Before the engine: draining, the indexer reads blobs through the engine's
            # readers (closed under it, it marked rows 'no text' or crashed in SQLite).
            await asyncio.to_thread(text.close)
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.uncork()  # here, on the loop: close() below runs in a thread
            await asyncio.to_thread(engine.close)
        self._segs.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the owner lock
            self._lock_fd = -1

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise StorageError("store is not open")
        return self._engine

    # -- engine.BlobSink ------------------------------------------------------------------
    def prepare(self, conn: sqlite3.Connection, blobs: list[StagedBlob]
                ) -> tuple[list[LocRow], dict[str, BaseException]]:
        # Stager thread. The batch pins keep a job of an earlier or the same batch
        # that drops the last reference of identical content from deleting the row.
        return self._segs.prepare(conn, blobs)

    def record(self, conn: sqlite3.Connection, rows: list[LocRow]) -> None:
        # OR REPLACE: a row written by an earlier batch still in flight is recorded
        # again; a fresh copy of a blob whose deletion was rolled back supersedes it.
        _insert_rows(conn, "INSERT OR REPLACE INTO blob_locs (blob_id, segment, start, length)",
                     rows, per_statement=200)

    def _after_commit(self, conn: sqlite3.Connection, txs: list[Tx], every: list[Tx],
                      pins: list[str], rows: list[LocRow]) -> None:
        # Writer thread, after COMMIT. Pins first: the DB now holds the references.
        segs = self._segs
        text = self._text
        if text is not None:  # before any caller wakes: a SEARCH after this sees it
            for tx in txs:
                for rowid, blob_id, source in tx.index:
                    if blob_id is None:
                        text.remove(rowid)
                    else:
                        text.add(rowid, blob_id, source)
        segs.landed(rows)
        segs.unclaim(b for tx in every for b in tx.deleting)
        for blob_id in pins:
            segs.release(blob_id)
        freed: set[int] = set()
        for tx in txs:
            freed |= tx.freed_segments
        # Blobs whose last reference went while pinned. A pin released without a
        # reference (a commit never delivered) leaves its blob until the sweep at
        # the next open, as the seam allows: a committed blob may still be delivered.
        candidates = dict.fromkeys(b for tx in txs for b in tx.maybe_dead_blobs)
        orphans = [b for b in candidates if conn.execute(
            "SELECT 1 FROM blobs WHERE blob_id = ?", (b,)).fetchone() is None
            and segs.claim_for_delete(b)]
        if orphans:
            # Rare: the pin is gone now and nothing references them.
            try:
                with _immediate(conn):
                    for b in orphans:
                        row = conn.execute("DELETE FROM blob_locs WHERE blob_id = ? AND blob_id "
                                           "NOT IN (SELECT blob_id FROM blobs) RETURNING segment",
                                           (b,)).fetchone()
                        if row is not None:
                            freed.add(row[0])
            finally:
                segs.unclaim(orphans)
        if freed:
            files = segs.files
            with files.append_lock:  # no append (and no rotation) meanwhile
                for seg in freed:
                    if seg != files.current and not segs.in_flight_segment(seg) and conn.execute(
                            "SELECT 1 FROM blob_locs WHERE segment = ? LIMIT 1",
                            (seg,)).fetchone() is None:
                        files.drop(seg)

    async def _write(self, fn: Callable[[Tx], Any]) -> Any:
        return await self.engine.write(fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self.engine.read(fn)

    def _lookup(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """A small index lookup, run right here on the loop (see the module docstring)."""
        return self.engine.read_now(fn)

    async def _read_rows(self, bound: int, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """A read of at most ``bound`` index rows: on the loop when that is small (see
        SMALL_READ), else in the reader pool."""
        if bound <= SMALL_READ:
            return self.engine.read_now(fn)
        return await self.engine.read(fn)

    def _uid_bound(self, mailbox_id: int) -> int:
        """More than the number of messages in the mailbox (UIDs are never reused)."""
        row = self._lookup(lambda c: c.execute("SELECT uidnext FROM mailboxes WHERE id = ?",
                                               (mailbox_id,)).fetchone())
        return int(row[0]) if row is not None else 0

    # -- shared transaction helpers (writer thread) ---------------------------------------
    def _new_uidvalidity(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        last = row[0] if row else 0
        value = max(int(self._clock()), last + 1) & 0xFFFFFFFF or 1  # nz-number, 32 bits
        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('uidvalidity', ?)", (value,))
        return value

    def _mailbox_row(self, conn: sqlite3.Connection, account_id: int, name: str) -> tuple | None:
        return conn.execute(f"SELECT {_MBOX_COLS} FROM mailboxes WHERE account_id = ? AND name = ?",
                            (account_id, names.mailbox(name))).fetchone()

    def _mailbox_by_id(self, conn: sqlite3.Connection, mailbox_id: int) -> tuple:
        row = conn.execute(f"SELECT {_MBOX_COLS} FROM mailboxes WHERE id = ?",
                           (mailbox_id,)).fetchone()
        if row is None:
            raise NotFound(f"mailbox {mailbox_id}")
        return row

    def _insert_mailbox(self, tx: Tx, account_id: int, name: str,
                        special_use: str | None) -> int:
        cur = tx.conn.execute(
            "INSERT INTO mailboxes (account_id, name, uidvalidity, uidnext, highestmodseq, "
            "special_use, subscribed) VALUES (?, ?, ?, 1, 1, ?, 1)",
            (account_id, name, self._new_uidvalidity(tx.conn), special_use),
        )
        mailbox_id = int(cur.lastrowid or 0)
        tx.changes.append(Change(account_id=account_id, mailbox_id=mailbox_id, kind="mailbox"))
        return mailbox_id

    def _ref_blob(self, tx: Tx, blob_id: str, size: int) -> int:
        """One more reference to a blob; returns its row id (the full-text key)."""
        row = tx.conn.execute(
            "INSERT INTO blobs (blob_id, size, refcount) VALUES (?, ?, 1) "
            "ON CONFLICT(blob_id) DO UPDATE SET refcount = refcount + 1 RETURNING id, refcount",
            (blob_id, size),
        ).fetchone()
        if row[1] == 1 and blob_id not in tx.recorded and tx.conn.execute(
                "SELECT 1 FROM blob_locs WHERE blob_id = ?", (blob_id,)).fetchone() is None:
            raise NotFound(f"blob {blob_id} is not stored")
        return int(row[0])

    def _unref_blob(self, tx: Tx, blob_id: str) -> None:
        row = tx.conn.execute(
            "UPDATE blobs SET refcount = refcount - 1 WHERE blob_id = ? RETURNING id, refcount",
            (blob_id,),
        ).fetchone()
        if row is not None and row[1] <= 0:
            tx.conn.execute("DELETE FROM blobs WHERE id = ?", (row[0],))
            tx.index.append((row[0], None, None))
            tx.conn.execute("DELETE FROM blob_cache WHERE blob_id = ?", (blob_id,))
            self._memo_forget(blob_id)
            if not self._segs.claim_for_delete(blob_id):  # a commit in flight pinned it
                tx.maybe_dead_blobs.append(blob_id)
                return
            tx.deleting.append(blob_id)
            loc = tx.conn.execute("DELETE FROM blob_locs WHERE blob_id = ? RETURNING segment",
                                  (blob_id,)).fetchone()
            if loc is not None:
                tx.freed_segments.add(loc[0])

    def _add_message(self, tx: Tx, mailbox_id: int, account_id: int, blob_id: str, size: int,
                     flags: str, internaldate: float, savedate: float,
                     text: TextSource = None) -> tuple[int, int]:
        uid, modseq = tx.conn.execute(
            "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 "
            "WHERE id = ? RETURNING uidnext - 1, highestmodseq", (mailbox_id,),
        ).fetchone()
        tx.conn.execute(
            f"INSERT INTO messages ({_MSG_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (mailbox_id, uid, modseq, flags, internaldate, savedate, size, blob_id),
        )
        rowid = self._ref_blob(tx, blob_id, size)
        if text is not None:
            tx.index.append((rowid, blob_id, text))
        tx.conn.execute("UPDATE accounts SET usage = usage + ? WHERE id = ?", (size, account_id))
        return uid, modseq

    def _remove_messages(self, tx: Tx, mailbox_id: int, account_id: int,
                         rows: Sequence[tuple[int, int, str]], *, log: bool = True) -> int:
        """Delete (uid, size, blob_id) rows; log each expunge with its own modseq."""
        modseq = 0
        for uid, size, blob_id in rows:
            tx.conn.execute("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?",
                            (mailbox_id, uid))
            if log:
                (modseq,) = tx.conn.execute(
                    "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ? "
                    "RETURNING highestmodseq", (mailbox_id,)).fetchone()
                tx.conn.execute("INSERT OR REPLACE INTO expunged (mailbox_id, uid, modseq) "
                                "VALUES (?, ?, ?)", (mailbox_id, uid, modseq))
            self._unref_blob(tx, blob_id)
            tx.conn.execute("UPDATE accounts SET usage = usage - ? WHERE id = ?",
                            (size, account_id))
        if log and rows:
            tx.changes.append(Change(account_id=account_id, mailbox_id=mailbox_id, kind="expunge",
                                     uids=tuple(r[0] for r in rows), modseq=modseq))
        return modseq

    def _check_quota(self, conn: sqlite3.Connection, account_id: int, extra: int) -> None:
        row = conn.execute("SELECT usage, quota_bytes FROM accounts WHERE id = ?",
                           (account_id,)).fetchone()
        if row is None:
            raise NotFound(f"account {account_id}")
        usage, quota = row
        if quota is not None and usage + extra > quota:
            raise QuotaExceeded(account_id, usage + extra, quota)

    def _delete_mailbox_rows(self, tx: Tx, mailbox_id: int, account_id: int) -> None:
        rows = tx.conn.execute("SELECT uid, size, blob_id FROM messages WHERE mailbox_id = ?",
                               (mailbox_id,)).fetchall()
        self._remove_messages(tx, mailbox_id, account_id, rows, log=False)
        tx.conn.execute("DELETE FROM expunged WHERE mailbox_id = ?", (mailbox_id,))
        tx.conn.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
        tx.changes.append(Change(account_id=account_id, mailbox_id=mailbox_id, kind="mailbox"))

    # -- domains -----------------------------------------------------------------------
    async def add_domain(self, name: str) -> Domain:
        name = names.domain(name)
        now = self._clock()

        def job(tx: Tx) -> Domain:
            if tx.conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"domain {name}")
            tx.conn.execute("INSERT INTO domains (name, created) VALUES (?, ?)", (name, now))
            return Domain(name=name, created=now)

        return await self._write(job)  # type: ignore[no-any-return]

    async def remove_domain(self, name: str) -> None:
        name = names.domain(name)

        def job(tx: Tx) -> None:
            if tx.conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone() is None:
                raise NotFound(f"domain {name}")
            if tx.conn.execute("SELECT 1 FROM accounts WHERE domain = ? LIMIT 1",
                               (name,)).fetchone():
                raise StorageError(f"domain {name} still has accounts")
            tx.conn.execute("DELETE FROM aliases WHERE domain = ?", (name,))
            tx.conn.execute("DELETE FROM dkim_keys WHERE domain = ?", (name,))
            tx.conn.execute("DELETE FROM domains WHERE name = ?", (name,))

        await self._write(job)

    async def list_domains(self) -> list[Domain]:
        rows = await self._read(lambda c: c.execute(
            "SELECT name, created FROM domains ORDER BY name").fetchall())
        return [Domain(name=r[0], created=r[1]) for r in rows]

    async def get_domain(self, name: str) -> Domain | None:
        name = names.domain(name)
        row = self._lookup(lambda c: c.execute(
            "SELECT name, created FROM domains WHERE name = ?", (name,)).fetchone())
        return Domain(name=row[0], created=row[1]) if row else None

    # -- accounts ----------------------------------------------------------------------
    async def add_account(self, address: str, password_hash: str, *,
                          quota_bytes: int | None = None,
                          scram_sha256: str | None = None) -> Account:
        address = names.address(address)
        dom = names.domain_of(address)
        now = self._clock()

        def job(tx: Tx) -> Account:
            c = tx.conn
            if c.execute("SELECT 1 FROM accounts WHERE address = ?", (address,)).fetchone():
                raise AlreadyExists(f"account {address}")
            c.execute("INSERT OR IGNORE INTO domains (name, created) VALUES (?, ?)", (dom, now))
            cur = c.execute("INSERT INTO accounts (address, domain, password_hash, quota_bytes, "
                            "scram_sha256) VALUES (?, ?, ?, ?, ?)",
                            (address, dom, password_hash, quota_bytes, scram_sha256))
            account_id = int(cur.lastrowid or 0)
            for name, special in DEFAULT_MAILBOXES:
                self._insert_mailbox(tx, account_id, name, special)
            return Account(id=account_id, address=address, password_hash=password_hash,
                           quota_bytes=quota_bytes, scram_sha256=scram_sha256)

        return await self._write(job)  # type: ignore[no-any-return]

    async def remove_account(self, address: str) -> None:
        address = names.address(address)

        def job(tx: Tx) -> int:
            row = tx.conn.execute("SELECT id FROM accounts WHERE address = ?",
                                  (address,)).fetchone()
            if row is None:
                raise NotFound(f"account {address}")
            account_id = row[0]
            for (mailbox_id,) in tx.conn.execute(
                    "SELECT id FROM mailboxes WHERE account_id = ?", (account_id,)).fetchall():
                self._delete_mailbox_rows(tx, mailbox_id, account_id)
            tx.conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
            return int(account_id)

        account_id = await self._write(job)
        self._pop_locks.discard(account_id)

    async def _update_account(self, address: str, sql: str, value: Any) -> None:
        address = names.address(address)

        def job(tx: Tx) -> None:
            if tx.conn.execute(sql, (value, address)).rowcount == 0:
                raise NotFound(f"account {address}")

        await self._write(job)

    async def set_password(self, address: str, password_hash: str, *,
                           scram_sha256: str | None = None) -> None:
        address = names.address(address)

        def job(tx: Tx) -> None:
            if tx.conn.execute(
                    "UPDATE accounts SET password_hash = ?, scram_sha256 = ? WHERE address = ?",
                    (password_hash, scram_sha256, address)).rowcount == 0:
                raise NotFound(f"account {address}")

        await self._write(job)

    async def set_scram_secret(self, address: str, scram_sha256: str, *,
                               password_hash: str) -> bool:
        address = names.address(address)

        def job(tx: Tx) -> bool:
            return bool(tx.conn.execute(
                "UPDATE accounts SET scram_sha256 = ? WHERE address = ? AND password_hash = ?",
                (scram_sha256, address, password_hash)).rowcount)

        return bool(await self._write(job))

    async def count_accounts_without_scram(self) -> int:
        row = await self._read(lambda c: c.execute(
            "SELECT count(*) FROM accounts WHERE scram_sha256 IS NULL").fetchone())
        return int(row[0])

    async def set_quota(self, address: str, quota_bytes: int | None) -> None:
        await self._update_account(
            address, "UPDATE accounts SET quota_bytes = ? WHERE address = ?", quota_bytes)

    async def set_disabled(self, address: str, disabled: bool) -> None:
        """Extra (not in the seam): disable or enable logins for an account."""
        await self._update_account(
            address, "UPDATE accounts SET disabled = ? WHERE address = ?", int(disabled))

    async def get_account(self, address: str) -> Account | None:
        try:
            address = names.address(address)
        except StorageError:
            return None
        row = self._lookup(lambda c: c.execute(
            f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE address = ?", (address,)).fetchone())
        return _account(row) if row else None

    async def get_account_by_id(self, account_id: int) -> Account | None:
        row = self._lookup(lambda c: c.execute(
            f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE id = ?", (account_id,)).fetchone())
        return _account(row) if row else None

    async def list_accounts(self, domain: str | None = None) -> list[Account]:
        if domain is None:
            rows = await self._read(lambda c: c.execute(
                f"SELECT {_ACCOUNT_COLS} FROM accounts ORDER BY address").fetchall())
        else:
            dom = names.domain(domain)
            rows = await self._read(lambda c: c.execute(
                f"SELECT {_ACCOUNT_COLS} FROM accounts WHERE domain = ? ORDER BY address",
                (dom,)).fetchall())
        return [_account(r) for r in rows]

    async def account_usage(self, account_id: int) -> int:
        row = self._lookup(lambda c: c.execute(
            "SELECT usage FROM accounts WHERE id = ?", (account_id,)).fetchone())
        if row is None:
            raise NotFound(f"account {account_id}")
        return int(row[0])

    async def server_secret(self, name: str) -> bytes:
        row = self._lookup(lambda c: c.execute(
            "SELECT value FROM server_secrets WHERE name = ?", (name,)).fetchone())
        if row is not None:
            return bytes(row[0])
        fresh = secrets.token_bytes(32)

        def job(tx: Tx) -> bytes:
            # Two processes may race to make it: the first insert wins, both read it back.
            tx.conn.execute("INSERT OR IGNORE INTO server_secrets (name, value) VALUES (?, ?)",
                            (name, fresh))
            return bytes(tx.conn.execute("SELECT value FROM server_secrets WHERE name = ?",
                                         (name,)).fetchone()[0])

        return bytes(await self._write(job))

    # -- aliases -----------------------------------------------------------------------
    async def add_alias(self, source: str, targets: Sequence[str]) -> Alias:
        source = names.address(source)
        tgts = tuple(names.address(t) for t in targets)
        if not tgts:
            raise StorageError("an alias needs at least one target")

        def job(tx: Tx) -> Alias:
            if tx.conn.execute("SELECT 1 FROM aliases WHERE source = ?", (source,)).fetchone():
                raise AlreadyExists(f"alias {source}")
            tx.conn.execute("INSERT INTO aliases (source, domain, targets) VALUES (?, ?, ?)",
                            (source, names.domain_of(source), json.dumps(tgts)))
            return Alias(source=source, targets=tgts)

        return await self._write(job)  # type: ignore[no-any-return]

    async def remove_alias(self, source: str) -> None:
        source = names.address(source)

        def job(tx: Tx) -> None:
            if tx.conn.execute("DELETE FROM aliases WHERE source = ?", (source,)).rowcount == 0:
                raise NotFound(f"alias {source}")

        await self._write(job)

    async def get_alias(self, source: str) -> Alias | None:
        try:
            source = names.address(source)
        except StorageError:
            return None
        row = self._lookup(lambda c: c.execute(
            "SELECT source, targets FROM aliases WHERE source = ?", (source,)).fetchone())
        return Alias(source=row[0], targets=tuple(json.loads(row[1]))) if row else None

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        if domain is None:
            rows = await self._read(lambda c: c.execute(
                "SELECT source, targets FROM aliases ORDER BY source").fetchall())
        else:
            dom = names.domain(domain)
            rows = await self._read(lambda c: c.execute(
                "SELECT source, targets FROM aliases WHERE domain = ? ORDER BY source",
                (dom,)).fetchall())
        return [Alias(source=r[0], targets=tuple(json.loads(r[1]))) for r in rows]

    # -- DKIM keys ---------------------------------------------------------------------
    async def add_dkim_key(self, domain: str, selector: str, algorithm: str,
                           private_pem: str, *, active: bool = True) -> None:
        dom = names.domain(domain)

        def job(tx: Tx) -> None:
            try:
                tx.conn.execute("INSERT INTO dkim_keys (domain, selector, algorithm, private_pem, "
                                "active) VALUES (?, ?, ?, ?, ?)",
                                (dom, selector, algorithm, private_pem, int(active)))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"dkim key {selector}._domainkey.{dom}")

        await self._write(job)

    async def list_dkim_keys(self, domain: str | None = None
                             ) -> list[tuple[str, str, str, str, bool]]:
        sql = "SELECT domain, selector, algorithm, private_pem, active FROM dkim_keys"
        if domain is None:
            rows = await self._read(lambda c: c.execute(
                sql + " ORDER BY domain, selector").fetchall())
        else:
            dom = names.domain(domain)
            rows = self._lookup(lambda c: c.execute(
                sql + " WHERE domain = ? ORDER BY selector", (dom,)).fetchall())
        return [(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    async def set_dkim_active(self, domain: str, selector: str, active: bool) -> None:
        dom = names.domain(domain)

        def job(tx: Tx) -> None:
            if tx.conn.execute("UPDATE dkim_keys SET active = ? WHERE domain = ? AND selector = ?",
                               (int(active), dom, selector)).rowcount == 0:
                raise NotFound(f"dkim key {selector}._domainkey.{dom}")

        await self._write(job)

    # -- delivery ----------------------------------------------------------------------
    async def deliver(self, blob: BlobRef, targets: Sequence[DeliveryTarget], *,
                      queue: QueueEntry | None = None, internaldate: float | None = None,
                      text: TextSource = None) -> list[Delivered]:
        now = self._clock()
        idate = now if internaldate is None else internaldate

        def job(tx: Tx) -> list[Delivered]:
            if not isinstance(blob, StagedBlob):  # a staged blob holds no pin of its own
                tx.release_pins.append(blob.blob_id)
            out: list[Delivered] = []
            appended: dict[int, tuple[int, list[int], int]] = {}
            for t in targets:
                row = (self._mailbox_row(tx.conn, t.account_id, t.mailbox)
                       or self._mailbox_row(tx.conn, t.account_id, "INBOX"))
                if row is None:
                    raise NotFound(f"account {t.account_id} has no INBOX")
                uid, modseq = self._add_message(
                    tx, row[0], t.account_id, blob.blob_id, blob.size,
                    names.flags_to_text(t.flags), idate, now, text)
                out.append(Delivered(account_id=t.account_id, mailbox_id=row[0], uid=uid))
                acc, uids, _ = appended.get(row[0], (t.account_id, [], 0))
                uids.append(uid)
                appended[row[0]] = (acc, uids, modseq)
            if queue is not None:
                if queue.blob.blob_id != blob.blob_id and not isinstance(queue.blob, StagedBlob):
                    tx.release_pins.append(queue.blob.blob_id)
                queue_ops.insert(tx.conn, queue)
                self._ref_blob(tx, queue.blob.blob_id, queue.blob.size)
            self._append_changes(tx, appended)
            return out

        return await self.engine.write(  # type: ignore[no-any-return]
            job, blobs=staged_blobs(blob, queue.blob if queue is not None else None),
            bulk=None if queue is not None else (self._deliver_bulk, (blob, targets, idate, now, text)))

    @staticmethod
    def _append_changes(tx: Tx, appended: dict[int, tuple[int, list[int], int]]) -> None:
        """Publish a delivery's new messages: mailbox id -> (account, UIDs, last MODSEQ)."""
        for mailbox_id, (acc, uids, modseq) in appended.items():
            tx.changes.append(Change(account_id=acc, mailbox_id=mailbox_id, kind="append",
                                     uids=tuple(uids), modseq=modseq))

    def _deliver_bulk(self, conn: sqlite3.Connection,
                      items: list[tuple[Tx, tuple[BlobRef, Sequence[DeliveryTarget], float, float,
                                                  TextSource]]]) -> list[list[Delivered]]:
        """Writer: the deliveries of a batch (without queue entries) in a few multi-row
        statements, with what ``deliver``'s job does one by one: each message its own
        UID and MODSEQ, in order, per mailbox (see Engine: bulk jobs)."""
        # Each target mailbox's UIDs and MODSEQs are taken in ONE statement, by name (a
        # missing mailbox falls back to INBOX, as in ``deliver``).
        count: dict[tuple[int, str], int] = {}
        for tx, (blob, targets, _idate, _now, _text) in items:
            if not isinstance(blob, StagedBlob):
                tx.release_pins.append(blob.blob_id)
            for t in targets:
                key = (t.account_id, names.mailbox(t.mailbox))
                count[key] = count.get(key, 0) + 1
        def take(account_id: int, name: str, n: int) -> tuple | None:
            """(mailbox id, first UID, first MODSEQ) of ``n`` new messages, or None."""
            return conn.execute(  # type: ignore[no-any-return]
                "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + ? "
                "WHERE account_id = ? AND name = ? RETURNING id, uidnext - ?, highestmodseq - ? + 1",
                (n, n, account_id, name, n, n)).fetchone()

        where: dict[tuple[int, str], int] = {}  # (account, name) -> mailbox id
        nxt: dict[tuple[int, str], list[int]] = {}  # (account, name) -> [next uid, next modseq]
        for key, n in count.items():
            row = take(key[0], key[1], n) or take(key[0], "INBOX", n)
            if row is None:
                raise NotFound(f"account {key[0]} has no INBOX")
            where[key] = row[0]
            nxt[key] = [row[1], row[2]]
        msg_rows: list[tuple[Any, ...]] = []
        refs: dict[str, list[int]] = {}  # blob id -> [size, references added]
        usage: dict[int, int] = {}
        out: list[list[Delivered]] = []
        for tx, (blob, targets, idate, now, _text) in items:
            delivered: list[Delivered] = []
            appended: dict[int, tuple[int, list[int], int]] = {}
            for t in targets:
                key = (t.account_id, names.mailbox(t.mailbox))
                mailbox_id, account_id = where[key], t.account_id
                uid, modseq = nxt[key]
                nxt[key] = [uid + 1, modseq + 1]
                msg_rows.append((mailbox_id, uid, modseq, names.flags_to_text(t.flags), idate,
                                 now, blob.size, blob.blob_id))
                ref = refs.setdefault(blob.blob_id, [blob.size, 0])
                ref[1] += 1
                usage[account_id] = usage.get(account_id, 0) + blob.size
                delivered.append(Delivered(account_id=account_id, mailbox_id=mailbox_id, uid=uid))
                acc, uids, _ = appended.get(mailbox_id, (account_id, [], 0))
                uids.append(uid)
                appended[mailbox_id] = (acc, uids, modseq)
            self._append_changes(tx, appended)
            out.append(delivered)
        _insert_rows(conn, f"INSERT INTO messages ({_MSG_COLS})", msg_rows)
        _insert_rows(conn, "INSERT INTO blobs (blob_id, size, refcount)",
                     [(blob_id, size, n) for blob_id, (size, n) in refs.items()],
                     tail=" ON CONFLICT(blob_id) DO UPDATE SET refcount = refcount + excluded.refcount")
        blob_rows: dict[str, int] = {}
        recorded = items[0][0].recorded
        for part in _chunks(list(refs)):
            # The rows back as ONE row (RETURNING would step, and hand the GIL over, once
            # per row).
            (got,) = conn.execute(
                "SELECT json_group_array(json_array(blob_id, id, refcount)) FROM blobs "
                f"WHERE blob_id IN ({','.join('?' * len(part))})", part).fetchone()
            for bid, rowid, refcount in json.loads(got):
                if (refcount == refs[bid][1] and bid not in recorded and conn.execute(
                        "SELECT 1 FROM blob_locs WHERE blob_id = ?", (bid,)).fetchone() is None):
                    raise NotFound(f"blob {bid} is not stored")
                blob_rows[bid] = int(rowid)
        if len(blob_rows) != len(refs):
            raise StorageError("a blob row vanished in its own transaction")
        for account_id, size in usage.items():
            conn.execute("UPDATE accounts SET usage = usage + ? WHERE id = ?", (size, account_id))
        for tx, (blob, targets, _idate, _now, text) in items:
            if text is not None:
                rowid = blob_rows[blob.blob_id]
                tx.index.extend((rowid, blob.blob_id, text) for _ in targets)
        return out

    # -- mailboxes ---------------------------------------------------------------------
    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        rows = self._lookup(lambda c: c.execute(
            f"SELECT {_MBOX_COLS} FROM mailboxes WHERE account_id = ? ORDER BY name",
            (account_id,)).fetchall())
        return [_mailbox(r) for r in rows]

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        row = self._lookup(lambda c: self._mailbox_row(c, account_id, name))
        return _mailbox(row) if row else None

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        row = self._lookup(lambda c: c.execute(
            f"SELECT {_MBOX_COLS} FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone())
        return _mailbox(row) if row else None

    async def create_mailbox(self, account_id: int, name: str, *,
                             special_use: str | None = None) -> Mailbox:
        name = names.mailbox(name)
        parts = name.split(names.DELIMITER)
        if any(p == "" for p in parts):
            raise StorageError(f"bad mailbox name {name!r}")

        def job(tx: Tx) -> Mailbox:
            c = tx.conn
            if c.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
                raise NotFound(f"account {account_id}")
            if self._mailbox_row(c, account_id, name) is not None:
                raise AlreadyExists(f"mailbox {name}")
            for i in range(1, len(parts)):  # RFC 9051 §6.3.4: create missing superiors
                sup = names.DELIMITER.join(parts[:i])
                if self._mailbox_row(c, account_id, sup) is None:
                    self._insert_mailbox(tx, account_id, sup, None)
            mailbox_id = self._insert_mailbox(tx, account_id, name, special_use)
            return _mailbox(self._mailbox_by_id(c, mailbox_id))

        return await self._write(job)  # type: ignore[no-any-return]

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        name = names.mailbox(name)
        if name == "INBOX":
            raise StorageError("INBOX cannot be deleted")

        def job(tx: Tx) -> None:
            row = self._mailbox_row(tx.conn, account_id, name)
            if row is None:
                raise NotFound(f"mailbox {name}")
            self._delete_mailbox_rows(tx, row[0], account_id)

        await self._write(job)

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        old, new = names.mailbox(old), names.mailbox(new)
        if any(p == "" for p in new.split(names.DELIMITER)):
            raise StorageError(f"bad mailbox name {new!r}")
        if new == old:
            raise AlreadyExists(f"mailbox {new}")
        if old != "INBOX" and new.startswith(old + names.DELIMITER):
            raise StorageError("cannot rename a mailbox into its own child")

        def job(tx: Tx) -> None:
            c = tx.conn
            src = self._mailbox_row(c, account_id, old)
            if src is None:
                raise NotFound(f"mailbox {old}")
            if self._mailbox_row(c, account_id, new) is not None:
                raise AlreadyExists(f"mailbox {new}")
            if old == "INBOX":
                self._rename_inbox(tx, account_id, src, new)
                return
            prefix = old + names.DELIMITER
            children = c.execute(
                "SELECT id, name FROM mailboxes WHERE account_id = ? AND substr(name, 1, ?) = ?",
                (account_id, len(prefix), prefix)).fetchall()
            moves = [(src[0], new)] + [(cid, new + cname[len(old):]) for cid, cname in children]
            for _, target in moves[1:]:
                if self._mailbox_row(c, account_id, target) is not None:
                    raise AlreadyExists(f"mailbox {target}")
            for mailbox_id, target in moves:
                c.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (target, mailbox_id))
                tx.changes.append(Change(account_id=account_id, mailbox_id=mailbox_id,
                                         kind="mailbox"))

        await self._write(job)

    def _rename_inbox(self, tx: Tx, account_id: int, inbox: tuple, new: str) -> None:
        # RFC 9051 §6.3.6: move all messages to a new mailbox; INBOX stays, empty.
        parts = new.split(names.DELIMITER)
        for i in range(1, len(parts)):
            sup = names.DELIMITER.join(parts[:i])
            if self._mailbox_row(tx.conn, account_id, sup) is None:
                self._insert_mailbox(tx, account_id, sup, None)
        dst = self._insert_mailbox(tx, account_id, new, None)
        self._move_rows(tx, inbox[0], dst, account_id, account_id, None)

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        def job(tx: Tx) -> None:
            row = self._mailbox_row(tx.conn, account_id, name)
            if row is None:
                raise NotFound(f"mailbox {name}")
            tx.conn.execute("UPDATE mailboxes SET subscribed = ? WHERE id = ?",
                            (int(subscribed), row[0]))
            tx.changes.append(Change(account_id=account_id, mailbox_id=row[0], kind="mailbox"))

        await self._write(job)

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        def q(c: sqlite3.Connection) -> MailboxStatus:
            mb = self._mailbox_by_id(c, mailbox_id)
            n, unseen, deleted, size = c.execute(
                "SELECT count(*), "
                "coalesce(sum(instr(flags, ' \\Seen ') = 0), 0), "
                "coalesce(sum(instr(flags, ' \\Deleted ') > 0), 0), "
                "coalesce(sum(size), 0) FROM messages WHERE mailbox_id = ?",
                (mailbox_id,)).fetchone()
            return MailboxStatus(messages=n, unseen=unseen, recent=0, uidnext=mb[4],
                                 uidvalidity=mb[3], highestmodseq=mb[5], size=size,
                                 deleted=deleted)

        return await self._read(q)  # type: ignore[no-any-return]

    # -- messages ----------------------------------------------------------------------
    async def list_messages(self, mailbox_id: int) -> list[MessageRef]:
        rows = await self._read_rows(self._uid_bound(mailbox_id), lambda c: c.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE mailbox_id = ? ORDER BY uid",
            (mailbox_id,)).fetchall())
        return [_message(r) for r in rows]

    async def mailbox_index(self, mailbox_id: int) -> MailboxIndex:
        def q(c: sqlite3.Connection) -> MailboxIndex:
            # The UIDs come from the (mailbox_id, uid) index alone; the distinct flag
            # strings are few (a scan in C); the first unseen stops at the first match.
            uids = array("I", [r[0] for r in c.execute(
                "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,))])
            (modseq,) = c.execute("SELECT coalesce(max(modseq), 0) FROM messages "
                                  "WHERE mailbox_id = ?", (mailbox_id,)).fetchone()
            keywords: set[str] = set()
            for (text,) in c.execute("SELECT DISTINCT flags FROM messages WHERE mailbox_id = ?",
                                     (mailbox_id,)):
                keywords.update(f for f in text.split() if not f.startswith("\\"))
            row = c.execute("SELECT uid FROM messages WHERE mailbox_id = ? AND "
                            "instr(flags, ' \\Seen ') = 0 ORDER BY uid LIMIT 1",
                            (mailbox_id,)).fetchone()
            return MailboxIndex(uids=uids, modseq=modseq, keywords=frozenset(keywords),
                                first_unseen=row[0] if row else None)

        return await self._read_rows(self._uid_bound(mailbox_id), q)  # type: ignore[no-any-return]

    async def flag_rows(self, mailbox_id: int, lo: int, hi: int
                        ) -> list[tuple[int, int, str]]:
        return await self._read_rows(hi - lo + 1, lambda c: c.execute(  # type: ignore[no-any-return]
            "SELECT uid, modseq, trim(flags) FROM messages WHERE mailbox_id = ? "
            "AND uid BETWEEN ? AND ? ORDER BY uid", (mailbox_id, lo, hi)).fetchall())

    @staticmethod
    def _select_uids(c: sqlite3.Connection, cols: str, mailbox_id: int,
                     uids: Sequence[int]) -> list[tuple]:
        wanted = sorted(set(uids))
        if len(wanted) > 8 and wanted[-1] - wanted[0] < 2 * len(wanted):
            # Dense (a range like 1:*): one indexed range scan, filtered here, costs
            # far less than IN lists of 500.
            keep = set(wanted)
            dense = c.execute(f"SELECT {cols} FROM messages WHERE mailbox_id = ? AND uid "
                             "BETWEEN ? AND ? ORDER BY uid",
                             (mailbox_id, wanted[0], wanted[-1])).fetchall()
            i = _uid_col(cols)
            return [r for r in dense if r[i] in keep]
        rows: list[tuple] = []
        for part in _chunks(wanted):
            marks = ",".join("?" * len(part))
            rows += c.execute(f"SELECT {cols} FROM messages WHERE mailbox_id = ? AND uid IN "
                              f"({marks}) ORDER BY uid", (mailbox_id, *part)).fetchall()
        return rows

    async def index_rows(self, mailbox_id: int, uids: Sequence[int]
                         ) -> list[tuple[int, int, str, float, int, str]]:
        return await self._read_rows(len(uids), lambda c: self._select_uids(  # type: ignore[no-any-return]
            c, _ROW_COLS, mailbox_id, uids))

    async def get_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageRef]:
        rows = await self._read_rows(len(uids), lambda c: self._select_uids(
            c, _MSG_COLS, mailbox_id, uids))
        return [_message(r) for r in rows]

    async def changed_since(self, mailbox_id: int, modseq: int) -> list[MessageRef]:
        rows = await self._read(lambda c: c.execute(
            f"SELECT {_MSG_COLS} FROM messages WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
            (mailbox_id, modseq)).fetchall())
        return [_message(r) for r in rows]

    async def expunged_since(self, mailbox_id: int, modseq: int) -> list[int]:
        rows = await self._read(lambda c: c.execute(
            "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
            (mailbox_id, modseq)).fetchall())
        return [r[0] for r in rows]

    async def append(self, mailbox_id: int, blob: BlobRef, *, flags: Iterable[str] = (),
                     internaldate: float | None = None,
                     text: TextSource = None) -> Delivered:
        now = self._clock()
        idate = now if internaldate is None else internaldate
        flag_text = names.flags_to_text(flags)

        def job(tx: Tx) -> Delivered:
            if not isinstance(blob, StagedBlob):
                tx.release_pins.append(blob.blob_id)
            mb = self._mailbox_by_id(tx.conn, mailbox_id)
            account_id = mb[1]
            self._check_quota(tx.conn, account_id, blob.size)
            uid, modseq = self._add_message(tx, mailbox_id, account_id, blob.blob_id, blob.size,
                                            flag_text, idate, now, text)
            tx.changes.append(Change(account_id=account_id, mailbox_id=mailbox_id, kind="append",
                                     uids=(uid,), modseq=modseq))
            return Delivered(account_id=account_id, mailbox_id=mailbox_id, uid=uid)

        return await self.engine.write(job, blobs=staged_blobs(blob))  # type: ignore[no-any-return]

    async def store_flags(self, mailbox_id: int, uids: Sequence[int], flags: Iterable[str],
                          mode: FlagMode, *, unchanged_since: int | None = None
                          ) -> tuple[list[FlagUpdate], list[int]]:
        given = list(flags)
        if mode not in ("set", "add", "remove"):
            raise StorageError(f"bad flag mode {mode!r}")

        def job(tx: Tx) -> tuple[list[FlagUpdate], list[int]]:
            mb = self._mailbox_by_id(tx.conn, mailbox_id)
            rows = self._select_uids(tx.conn, "uid, modseq, flags", mailbox_id, uids)
            updates: list[FlagUpdate] = []
            failed: list[int] = []
            modseq = mb[5]
            for uid, old_modseq, old_text in rows:
                # RFC 7162 §3.1.3: UNCHANGEDSINCE fails messages modified after it.
                if unchanged_since is not None and old_modseq > unchanged_since:
                    failed.append(uid)
                    continue
                old = names.text_to_flags(old_text)
                new = names.apply_flags(old, given, mode)
                if new == old:
                    continue
                modseq += 1
                tx.conn.execute("UPDATE messages SET flags = ?, modseq = ? "
                                "WHERE mailbox_id = ? AND uid = ?",
                                (names.flags_to_text(new), modseq, mailbox_id, uid))
                updates.append(FlagUpdate(uid=uid, flags=new, modseq=modseq))
            if updates:
                tx.conn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?",
                                (modseq, mailbox_id))
                tx.changes.append(Change(account_id=mb[1], mailbox_id=mailbox_id, kind="flags",
                                         uids=tuple(u.uid for u in updates), modseq=modseq))
            return updates, failed

        return await self._write(job)  # type: ignore[no-any-return]

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        def job(tx: Tx) -> list[int]:
            mb = self._mailbox_by_id(tx.conn, mailbox_id)
            cols = "uid, size, blob_id, flags"
            if uids is None:
                rows = tx.conn.execute(f"SELECT {cols} FROM messages WHERE mailbox_id = ? "
                                       "ORDER BY uid", (mailbox_id,)).fetchall()
            else:
                rows = self._select_uids(tx.conn, cols, mailbox_id, uids)
            gone = [(r[0], r[1], r[2]) for r in rows if " \\Deleted " in r[3]]
            self._remove_messages(tx, mailbox_id, mb[1], gone)
            return [g[0] for g in gone]

        return await self._write(job)  # type: ignore[no-any-return]

    def _move_rows(self, tx: Tx, src: int, dst: int, src_account: int, dst_account: int,
                   uids: Sequence[int] | None, *, remove: bool = True) -> list[tuple[int, int]]:
        cols = "uid, modseq, flags, internaldate, savedate, size, blob_id"
        if uids is None:
            rows = tx.conn.execute(f"SELECT {cols} FROM messages WHERE mailbox_id = ? "
                                   "ORDER BY uid", (src,)).fetchall()
        else:
            rows = self._select_uids(tx.conn, cols, src, uids)
        if not rows:
            return []
        if not (remove and src_account == dst_account):  # a move within an account is free
            self._check_quota(tx.conn, dst_account, sum(r[5] for r in rows))
        now = self._clock()
        pairs: list[tuple[int, int]] = []
        modseq = 0
        for uid, _, flags, idate, _, size, blob_id in rows:
            new_uid, modseq = self._add_message(tx, dst, dst_account, blob_id, size, flags,
                                                idate, now)
            pairs.append((uid, new_uid))
        tx.changes.append(Change(account_id=dst_account, mailbox_id=dst, kind="append",
                                 uids=tuple(p[1] for p in pairs), modseq=modseq))
        if remove:
            self._remove_messages(tx, src, src_account, [(r[0], r[5], r[6]) for r in rows])
        return pairs

    async def copy(self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
                   ) -> list[tuple[int, int]]:
        return await self._copy_or_move(src_mailbox_id, uids, dst_mailbox_id, remove=False)

    async def move(self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
                   ) -> list[tuple[int, int]]:
        return await self._copy_or_move(src_mailbox_id, uids, dst_mailbox_id, remove=True)

    async def _copy_or_move(self, src: int, uids: Sequence[int], dst: int, *,
                            remove: bool) -> list[tuple[int, int]]:
        def job(tx: Tx) -> list[tuple[int, int]]:
            s = self._mailbox_by_id(tx.conn, src)
            d = self._mailbox_by_id(tx.conn, dst)
            if remove and src == dst:
                raise StorageError("cannot move a message to its own mailbox")
            return self._move_rows(tx, src, dst, s[1], d[1], list(uids), remove=remove)

        return await self._write(job)  # type: ignore[no-any-return]

    @property
    def trigram(self) -> bool:
        return self._text is not None and self._text.trigram

    async def _flush_index(self) -> None:
        """Wait until every message committed so far is in the full-text index."""
        if self._text is None:
            raise StorageError("store is not open")
        await self._text.flush()

    async def search_text(self, mailbox_id: int, query: str, *,
                          field: Literal["body", "text", "headers"] = "text") -> set[int]:
        cols = {"body": ("body",), "headers": ("headers",),
                "text": ("headers", "body", "extra")}.get(field)
        if cols is None:
            raise StorageError(f"bad search field {field!r}")
        if query == "":
            rows = await self._read(lambda c: c.execute(
                "SELECT uid FROM messages WHERE mailbox_id = ?", (mailbox_id,)).fetchall())
            return {r[0] for r in rows}
        await self._flush_index()
        if self.trigram and len(query) >= 3:
            match = _fts_match(cols, query)
            rows = await self._read(
                lambda c: c.execute(_MATCH_SQL, (match, mailbox_id)).fetchall())
            return {r[0] for r in rows}
        # Short queries (or no trigram tokenizer): scan this mailbox's texts.
        needle = query.casefold()

        def scan(c: sqlite3.Connection) -> set[int]:
            found: set[int] = set()
            for uid, *texts in c.execute(
                    "SELECT m.uid, t.headers, t.body, t.extra FROM messages m "
                    "JOIN blobs b ON b.blob_id = m.blob_id JOIN fts.msg_text t ON t.rowid = b.id "
                    "WHERE m.mailbox_id = ?", (mailbox_id,)):
                named = dict(zip(("headers", "body", "extra"), texts, strict=True))
                if any(needle in (named[col] or "").casefold() for col in cols):
                    found.add(uid)
            return found

        return await self._read(scan)  # type: ignore[no-any-return]

    async def header_candidates(self, mailbox_id: int, query: str) -> set[int] | None:
        """See the seam. One read; None without a trigram tokenizer or for a query
        under 3 characters."""
        if not self.trigram or len(query) < 3:
            return None
        match = _fts_match(("headers",), query)

        def run(c: sqlite3.Connection) -> set[int]:
            # One read transaction: both queries see the same snapshot of the index, so
            # a message the indexer takes in meanwhile is in one answer or the other.
            c.execute("BEGIN")
            try:
                found = {r[0] for r in c.execute(_MATCH_SQL, (match, mailbox_id))}
                return found | {r[0] for r in c.execute(_UNINDEXED_SQL, (mailbox_id,))}
            finally:
                c.execute("COMMIT")

        return await self._read(run)  # type: ignore[no-any-return]

    async def unindexed_uids(self, mailbox_id: int) -> set[int]:
        await self._flush_index()
        rows = await self._read(lambda c: c.execute(_UNINDEXED_SQL, (mailbox_id,)).fetchall())
        return {r[0] for r in rows}

    def _memo_add(self, blob_id: str, kind: str, value: str) -> None:
        with self._memo_lock:
            self._memo_add_locked(blob_id, kind, value)

    def _memo_add_locked(self, blob_id: str, kind: str, value: str) -> None:
        memo = self._memo.get(kind)
        if memo is None:
            memo = self._memo[kind] = {}
            self._memo_kind_chars[kind] = 0
        self._memo_drop_locked(blob_id, kind)
        memo[blob_id] = value
        self._memo_chars += len(value)
        self._memo_kind_chars[kind] += len(value)
        while self._memo_chars > MEMO_CHARS:
            # the oldest value of the kind that holds the most
            big = max(self._memo_kind_chars, key=self._memo_kind_chars.__getitem__)
            if not self._memo[big]:
                break
            self._memo_drop_locked(next(iter(self._memo[big])), big)

    def _memo_drop_locked(self, blob_id: str, kind: str) -> None:
        memo = self._memo.get(kind)
        old = memo.pop(blob_id, None) if memo is not None else None
        if old is not None:
            self._memo_chars -= len(old)
            self._memo_kind_chars[kind] -= len(old)

    def _memo_forget(self, blob_id: str, kind: str | None = None) -> None:
        with self._memo_lock:
            for k in (self._memo if kind is None else (kind,)):
                self._memo_drop_locked(blob_id, k)

    async def cache_get(self, blob_id: str, kind: str) -> str | None:
        hit = self._memo.get(kind, {}).get(blob_id)
        if hit is not None:
            return hit
        row = self._lookup(lambda c: c.execute(
            "SELECT value FROM blob_cache WHERE blob_id = ? AND kind = ?",
            (blob_id, kind)).fetchone())
        if row is None:
            return None
        self._memo_add(blob_id, kind, row[0])
        return row[0]  # type: ignore[no-any-return]

    async def cache_get_many(self, blob_ids: Sequence[str], kind: str) -> dict[str, str]:
        memo = self._memo.get(kind, {})
        got = {b: hit for b in blob_ids if (hit := memo.get(b)) is not None}
        if len(got) == len(blob_ids):
            return got
        wanted = [b for b in dict.fromkeys(blob_ids) if b not in got]
        if not wanted:
            return got

        def q(c: sqlite3.Connection) -> list[tuple[str, str]]:
            rows: list[tuple[str, str]] = []
            for i in range(0, len(wanted), _CHUNK):
                part = wanted[i : i + _CHUNK]
                marks = ",".join("?" * len(part))
                rows += c.execute(
                    f"SELECT blob_id, value FROM blob_cache WHERE kind = ? AND blob_id IN "
                    f"({marks})", (kind, *part)).fetchall()
            return rows

        for b, value in self._lookup(q):
            got[b] = value
            self._memo_add(b, kind, value)
        return got

    @staticmethod
    def _cache_job(blob_id: str, kind: str, value: str) -> Callable[[Tx], bool]:
        def job(tx: Tx) -> bool:
            # Only for stored blobs: the row goes when the blob's last reference does.
            if tx.conn.execute("SELECT 1 FROM blobs WHERE blob_id = ?", (blob_id,)).fetchone():
                tx.conn.execute("INSERT OR REPLACE INTO blob_cache (blob_id, kind, value) "
                                "VALUES (?, ?, ?)", (blob_id, kind, value))
                return True
            return False

        return job

    async def cache_put(self, blob_id: str, kind: str, value: str) -> None:
        if await self._write(self._cache_job(blob_id, kind, value)):
            self._memo_add(blob_id, kind, value)

    def cache_put_later(self, blob_id: str, kind: str, value: str) -> None:
        # Served from memory at once; the row goes to the writer without anyone waiting
        # for its commit (a value depends only on the blob's bytes, so serving it early
        # is never wrong). Dropped again when the blob turned out to be gone.
        # The row is a rider (Engine.write_soon) that asks for no commit of its own: it
        # goes with the next write (or once RIDERS_MAX wait, or at close).
        self._memo_add(blob_id, kind, value)
        put = self._cache_job(blob_id, kind, value)

        def job(tx: Tx) -> None:
            if not put(tx):
                self._memo_forget(blob_id, kind)

        self.engine.write_soon(job, prompt=False)

    # -- POP3 maildrop lock (RFC 1939 §8: exclusive access) -------------------------------
    async def lock_maildrop(self, account_id: int) -> bool:
        if account_id in self._pop_locks:
            return False
        self._pop_locks.add(account_id)
        return True

    async def unlock_maildrop(self, account_id: int) -> None:
        self._pop_locks.discard(account_id)

    # -- change feed -------------------------------------------------------------------
    def subscribe(self, account_id: int) -> changes_mod.Subscription:
        return self.bus.subscribe(account_id)

    # -- outbound queue ----------------------------------------------------------------
    async def queue_add(self, entry: QueueEntry) -> None:
        def job(tx: Tx) -> None:
            if not isinstance(entry.blob, StagedBlob):
                tx.release_pins.append(entry.blob.blob_id)
            if tx.conn.execute("SELECT 1 FROM queue WHERE id = ?", (entry.id,)).fetchone():
                raise AlreadyExists(f"queue entry {entry.id}")
            queue_ops.insert(tx.conn, entry)
            self._ref_blob(tx, entry.blob.blob_id, entry.blob.size)

        await self.engine.write(job, blobs=staged_blobs(entry.blob))

    async def queue_get(self, entry_id: str) -> QueueEntry | None:
        return self._lookup(lambda c: queue_ops.get(c, entry_id))  # type: ignore[no-any-return]

    async def queue_list(self) -> list[QueueEntry]:
        return await self._read(queue_ops.list_all)  # type: ignore[no-any-return]

    async def queue_due(self, now: float, limit: int = 100) -> list[QueueEntry]:
        return await self._read(lambda c: queue_ops.due(c, now, limit))  # type: ignore[no-any-return]

    async def queue_update(self, entry_id: str, *, recipients: Sequence[QueueRecipient],
                           next_attempt: float, attempts: int, last_error: str = "",
                           delay_warned: bool | None = None) -> None:
        def job(tx: Tx) -> None:
            if not queue_ops.update(tx.conn, entry_id, recipients, next_attempt, attempts,
                                    last_error, delay_warned):
                raise NotFound(f"queue entry {entry_id}")

        await self._write(job)

    async def queue_delete(self, entry_id: str) -> None:
        """Idempotent: deleting an entry that is gone is not an error."""

        def job(tx: Tx) -> None:
            row = tx.conn.execute("SELECT blob_id FROM queue WHERE id = ?",
                                  (entry_id,)).fetchone()
            if row is None:
                return
            tx.conn.execute("DELETE FROM queue_recipients WHERE entry_id = ?", (entry_id,))
            tx.conn.execute("DELETE FROM queue WHERE id = ?", (entry_id,))
            self._unref_blob(tx, row[0])

        await self._write(job)

    async def queue_retry_now(self, entry_id: str | None, now: float) -> int:
        def job(tx: Tx) -> int:
            if entry_id is None:
                cur = tx.conn.execute("UPDATE queue SET next_attempt = ? WHERE pending > 0",
                                      (now,))
            else:
                cur = tx.conn.execute("UPDATE queue SET next_attempt = ? "
                                      "WHERE id = ? AND pending > 0", (now, entry_id))
            return int(cur.rowcount)

        return await self._write(job)  # type: ignore[no-any-return]

    # -- \Recent ------------------------------------------------------------------------
    def remember_recent(self, mailbox_id: int, uid: int) -> None:
        # A rider that asks for no commit of its own (a SELECT or new mail announced to
        # an IDLE session would otherwise cost one each): it goes with the next write,
        # or at close; a crash before either leaves those messages recent once more.
        def job(tx: Tx) -> None:
            tx.conn.execute("UPDATE mailboxes SET recent_uid = max(recent_uid, ?) WHERE id = ?",
                            (uid, mailbox_id))

        self.engine.write_soon(job, prompt=False)

    # -- authentication results ----------------------------------------------------------
    async def record_auth_result(self, *, when: float, source_ip: str, header_from: str,
                                 spf: str, dkim: str, dmarc: str, disposition: str,
                                 delivery_follows: bool = False) -> None:
        # A rider: written with the next group commit (the delivery that follows it),
        # never waited for; a crash may lose the last few (they only feed reports).
        # When a delivery follows, its batch carries the row: no wake token (which
        # cost the stager and the writer a wake-up each per message, and now and then
        # a commit of its own).
        def job(tx: Tx) -> None:
            tx.conn.execute(
                "INSERT INTO auth_results (at, source_ip, header_from, spf, dkim, dmarc, "
                "disposition) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (when, source_ip, header_from, spf, dkim, dmarc, disposition))
            self._prune_auth_results(tx.conn, when)

        self.engine.write_soon(job, prompt=not delivery_follows, bulk=(
            self._auth_results_bulk,
            (when, source_ip, header_from, spf, dkim, dmarc, disposition)))

    def _auth_results_bulk(self, conn: sqlite3.Connection, items: list[tuple[Tx, tuple]]
                           ) -> list[None]:
        rows = [row for _, row in items]
        _insert_rows(conn, "INSERT INTO auth_results (at, source_ip, header_from, spf, dkim, "
                     "dmarc, disposition)", rows)
        self._prune_auth_results(conn, max(row[0] for row in rows))
        return [None] * len(items)

    def _prune_auth_results(self, conn: sqlite3.Connection, newest: float) -> None:
        """The writer thread: drop verdicts older than AUTH_RESULTS_KEEP before ``newest``
        (the time of the rows just added), at most once per AUTH_RESULTS_PRUNE_EVERY."""
        if newest - self._auth_pruned_at < AUTH_RESULTS_PRUNE_EVERY:
            return
        # A bounded delete per batch, so that a large backlog (a first start after an
        # upgrade) does not hold up the deliveries in this batch; the next batch goes on.
        cur = conn.execute("DELETE FROM auth_results WHERE id IN (SELECT id FROM auth_results "
                           "WHERE at < ? LIMIT ?)",
                           (newest - AUTH_RESULTS_KEEP, AUTH_RESULTS_PRUNE_BATCH))
        if cur.rowcount < AUTH_RESULTS_PRUNE_BATCH:
            self._auth_pruned_at = newest

    async def list_auth_results(self, since: float = 0.0) -> list[tuple]:
        """Extra (not in the seam): (when, ip, header_from, spf, dkim, dmarc, disposition)."""
        return await self._read(lambda c: c.execute(  # type: ignore[no-any-return]
            "SELECT at, source_ip, header_from, spf, dkim, dmarc, disposition FROM auth_results "
            "WHERE at >= ? ORDER BY at, id", (since,)).fetchall())
