"""Threads that run SQLite for the event loop: one group-committing writer, a reader pool.

Theory of operation
-------------------
SQLite allows one writer at a time and, in WAL mode with ``synchronous=FULL``,
pays one fsync of the WAL per COMMIT. So every write goes through a single
writer thread holding a single connection. The thread takes the first job
waiting, then every other job already queued at that moment, and runs them all
in ONE transaction, each inside its own SAVEPOINT: a job that raises is rolled
back alone and fails alone, the others commit. Twenty concurrent deliveries
therefore share one fsync. Under no load a batch is a single job, so latency
is one commit, never a timer.

A job is a plain function ``fn(tx) -> result`` run in the writer thread; ``tx``
gives it the connection and collects *after-commit* work: changes to publish,
pins to release, blobs and segments that may have become unreferenced.
Results are handed back to the event loop with ``call_soon_threadsafe`` only
after COMMIT returned, so an awaited write is durable.

A job may also carry *staged blobs* (``segments.StagedBlob``: message bytes
not stored yet). Writing is a two-stage pipeline:

1. the *blob stager* thread takes every job waiting with staged blobs (the jobs
   of one turn of the event loop are handed to it together at the end of the turn:
   see ``_cork``), hands
   them to the blob sink, which appends the new ones to a segment file and
   fdatasyncs it ONCE, then passes the batch on. Jobs without blobs (flag
   changes, expunges, cache rows...) skip this stage: they go straight to the
   writer's queue, so they never wait for a segment fsync they do not need
   (nor for a thread hand-off). Concurrent jobs have no order among them;
   a caller that needs one awaits the first job before it submits the next;
2. the *SQLite writer* takes every prepared batch waiting, inserts their blob
   index rows first thing in ONE transaction, runs the jobs, COMMITs.

Alike jobs run as one. Every statement a job runs releases the GIL for its
step and must take it back after; with the event loop busy, taking it back is
a wait (measured under the SMTP bench: 2.1 ms of wall time for 0.8 ms of CPU in
a batch's statements). So the fewer statements per batch, the sooner its
callers hear back. A job may therefore carry a
*bulk* form (``bulk=(fn, payload)``): the writer gathers the jobs of a batch that
share the same ``fn`` and calls ``fn(conn, [(tx, payload), ...])`` ONCE, with no
savepoint, which does the work of them all in a few multi-row statements and
returns one result per job. If it raises, the whole transaction is rolled back
and the batch runs again with every job alone in its own savepoint, so a bad
job still fails alone (at the price of a batch run twice, which only a job that
fails would cost). Riders (``write_soon``) may carry a bulk form the same way.

So the segment fdatasync of batch k+1 overlaps the WAL fsync of batch k:
under load the period of the pipeline is the longer of the two fsyncs, not
their sum (they measured 4-7 ms each on this VM while other test suites ran).
A job whose blob could not be written fails alone. A caller waits for both
stages, so an acknowledged blob is on disk and indexed.

Reads. Measured on the 2 vCPU test VM (Python 3.11, SQLite 3.40, uvloop off):
a primary-key SELECT on a connection of the calling thread takes ~3 us; the
same through ``run_in_executor`` takes ~100 us, nearly all of it the two
thread hand-offs (more under load, when the GIL is contended). So
``read_now`` serves small index lookups (an account, an alias, a mailbox, a
blob location...) synchronously on a connection owned by the calling thread
(the event loop's), and ``read`` keeps a thread pool for queries whose cost
grows with the data (message lists, counts, search). WAL readers never block
the writer and never wait for it; the price is that a lookup needing a page
that is not cached reads it from disk on the loop (one page, ~0.1 ms on SSD).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mailyard.storage.interface import InsufficientStorage, StorageError
from mailyard.storage.models import Change
from mailyard.storage.sqlite.segments import LocRow, StagedBlob

log = logging.getLogger(__name__)

T = TypeVar("T")
# The bulk form of alike jobs: (connection, [(job's Tx, job's payload), ...]) -> one
# result per job, in order. Jobs are alike when their bulk functions are equal.
BulkFn = Callable[[sqlite3.Connection, list[tuple["Tx", Any]]], list[Any]]
_WAKE: Any = object()  # in the stager's queue: riders are waiting (see write_soon)
RIDERS_MAX = 256  # riders without a wake token of their own waiting at most


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _map_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return InsufficientStorage(str(exc))
    if isinstance(exc, sqlite3.Error):
        return StorageError(f"sqlite: {exc}")
    return exc


@dataclass
class Tx:
    """What a write job sees: the connection plus its after-commit work."""

    conn: sqlite3.Connection
    changes: list[Change] = field(default_factory=list)
    maybe_dead_blobs: list[str] = field(default_factory=list)
    release_pins: list[str] = field(default_factory=list)
    freed_segments: set[int] = field(default_factory=set)
    deleting: list[str] = field(default_factory=list)  # blob rows this job deletes
    # Full-text index work for after COMMIT, in order: (blob row, blob id, text source)
    # to add, (blob row, None, None) to remove.
    index: list[tuple[int, str | None, Any]] = field(default_factory=list)
    # Blobs whose location rows this batch wrote first thing (pinned: none can go).
    recorded: frozenset[str] = frozenset()


@dataclass
class _Job:
    fn: Callable[[Tx], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any] | None  # None: a rider (write_soon), nobody waits
    blobs: Sequence[StagedBlob] = ()
    bulk: tuple[BulkFn, Any] | None = None


class _BulkFailed(Exception):
    """A bulk form raised: the batch's transaction is rolled back and run job by job."""


@dataclass
class _Prepared:
    """A batch whose new blobs are durable in a segment, waiting for its transaction."""

    jobs: list[_Job]
    rows: list[LocRow]
    failed: dict[str, BaseException]
    pins: list[str]


class BlobSink(Protocol):
    def prepare(self, conn: sqlite3.Connection, blobs: list[StagedBlob]
                ) -> tuple[list[LocRow], dict[str, BaseException]]:
        """Stager thread (``conn`` is its read connection): pin the blobs and make
        the new ones durable in a segment. Never raises."""
        ...

    def record(self, conn: sqlite3.Connection, rows: list[LocRow]) -> None:
        """Writer thread, inside the transaction: index what ``prepare`` wrote."""
        ...


# (writer connection, committed jobs' Tx, every job's Tx, pins to release, blob rows
# of the batch) -> None. Called after COMMIT, and after a failed COMMIT with no
# committed Tx.
AfterCommit = Callable[[sqlite3.Connection, list[Tx], list[Tx], list[str], list[LocRow]], None]
Publish = Callable[[list[Change]], None]


class Engine:
    def __init__(self, path: Path, *, readers: int = 4, after_commit: AfterCommit,
                 publish: Publish, blob_sink: BlobSink | None = None,
                 attach: Sequence[tuple[str, Path]] = ()) -> None:
        self.path = path
        self._attach = list(attach)  # (schema name, file) attached to every reader
        self._after_commit = after_commit
        self._sink = blob_sink
        self._publish = publish
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()  # _Job, _WAKE or None
        self._wconn = connect(path)
        self._prepared: queue.SimpleQueue[_Prepared | None] = queue.SimpleQueue()
        self._riders: collections.deque[_Job] = collections.deque()  # see write_soon
        self._corked: list[_Job] = []  # see _cork
        self._corked_loop: asyncio.AbstractEventLoop | None = None
        self._writer = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self._stager = threading.Thread(target=self._stage, name="blob-stager", daemon=True)
        self._pool = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._rconns: list[sqlite3.Connection] = []
        self._rlock = threading.Lock()
        self._closed = False
        self.batches = 0  # statistics: transactions committed
        self.jobs_done = 0

    @property
    def writer_conn(self) -> sqlite3.Connection:
        return self._wconn

    def start(self) -> None:
        self._writer.start()
        self._stager.start()

    # -- writes ----------------------------------------------------------------------
    async def write(self, fn: Callable[[Tx], T], *, blobs: Sequence[StagedBlob] = (),
                    bulk: tuple[BulkFn, Any] | None = None) -> T:
        """Run ``fn`` in the next group commit; ``blobs`` are stored in the same batch.

        ``bulk=(bulk_fn, payload)``: the same work in a form that alike jobs of a batch
        share (see the module docstring); ``fn`` still runs when the shared form fails.
        """
        if self._closed:
            raise StorageError("store closed")
        if blobs and self._sink is None:
            raise StorageError("this engine has no blob sink")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if blobs:
            self._cork(_Job(fn, loop, fut, blobs, bulk))
        else:  # nothing to stage: straight to the writer (one thread hand-off less)
            self._prepared.put(_Prepared([_Job(fn, loop, fut, (), bulk)], [], {}, []))
        return await fut

    def _cork(self, job: _Job) -> None:
        """Queue a job for the stager at the end of this turn of its loop, with the others
        of the turn: one wake-up of the stager for them all, and the batch it takes is
        whole (put one by one, the stager woke at the first and, once it had the GIL,
        often took that one alone)."""
        if self._corked_loop is not job.loop:
            self.uncork()
            self._corked_loop = job.loop
        if not self._corked:
            job.loop.call_soon(self.uncork)
        self._corked.append(job)

    def uncork(self) -> None:
        """Hand the stager the corked jobs now (on their loop's thread)."""
        jobs, self._corked = self._corked, []
        for job in jobs:
            self._jobs.put(job)

    def write_soon(self, fn: Callable[[Tx], None], *, prompt: bool = True,
                   bulk: tuple[BulkFn, Any] | None = None) -> None:
        """Run ``fn`` in the next group commit; nobody waits for it (a *rider*).

        For records that may be lost in a crash but must not cost the caller a wait of
        their own (the verdicts kept for DMARC reports): queued before a delivery, the
        rider shares its transaction, runs without a savepoint, and a failure is logged.
        """
        if self._closed:
            raise StorageError("store closed")
        # Riders wait beside the queues: the writer takes them first into whatever
        # batch it commits next, whichever way that came (jobs without blobs do not
        # pass the stager), so one is never committed after a job queued later. A wake
        # token through the stager makes sure that a batch comes soon, and lets a
        # delivery queued right behind the rider carry it.
        # ``prompt=False``: no wake token; the rider waits for the next write, or until
        # RIDERS_MAX are waiting (derived data that only saves work later).
        riders = self._riders
        riders.append(_Job(fn, asyncio.get_running_loop(), None, (), bulk))
        if prompt or len(riders) >= RIDERS_MAX:
            self._jobs.put(_WAKE)

    @staticmethod
    def _take(q: queue.SimpleQueue[Any]) -> tuple[list[Any], bool]:
        """The first item (blocking) and every other one waiting; (items, stop seen)."""
        first = q.get()
        if first is None:
            return [], True
        items = [first]
        while True:
            try:
                nxt = q.get_nowait()
            except queue.Empty:
                return items, False
            if nxt is None:
                return items, True
            items.append(nxt)

    def _stage(self) -> None:
        """Stage 1: make the batch's new blobs durable, then hand the batch on."""
        rconn: sqlite3.Connection | None = None
        try:
            while True:
                batch, stop = self._take(self._jobs)
                if batch:
                    batch = [job for job in batch if job is not _WAKE]  # may leave none
                    staged: dict[str, StagedBlob] = {}
                    for job in batch:
                        for b in job.blobs:
                            staged.setdefault(b.blob_id, b)
                    rows: list[LocRow] = []
                    failed: dict[str, BaseException] = {}
                    if staged and self._sink is not None:
                        if rconn is None:
                            rconn = connect(self.path)
                            rconn.execute("PRAGMA query_only=ON")
                        rows, failed = self._sink.prepare(rconn, list(staged.values()))
                    self._prepared.put(_Prepared(batch, rows, failed, list(staged)))
                if stop:
                    return
        finally:
            self._prepared.put(None)
            if rconn is not None:
                with contextlib.suppress(sqlite3.Error):
                    rconn.close()

    def _run(self) -> None:
        """Stage 2: commit every prepared batch waiting in one transaction."""
        while True:
            preps, stop = self._take(self._prepared)
            riders: list[_Job] = []
            while self._riders and (preps or stop):
                riders.append(self._riders.popleft())
            if riders or any(p.jobs for p in preps):
                merged = _Prepared(riders + [j for p in preps for j in p.jobs],
                                   [r for p in preps for r in p.rows],
                                   {k: v for p in preps for k, v in p.failed.items()},
                                   [b for p in preps for b in p.pins])
                try:
                    self._run_batch(merged)
                except BaseException as exc:  # never let the writer die silently
                    log.exception("writer batch failed")
                    for job in merged.jobs:
                        self._resolve(job, exc=_map_error(exc))
            if stop:
                return

    def _run_batch(self, prep: _Prepared, *, bulk: bool = True) -> None:
        conn = self._wconn
        batch = prep.jobs
        rows, failed = prep.rows, prep.failed
        outcomes: list[tuple[_Job, Tx, Any, BaseException | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        if len(batch) == 1 and not rows and not batch[0].blobs and batch[0].future is not None:
            # One job alone: the transaction is its savepoint (two statements fewer).
            job = batch[0]
            tx = Tx(conn)
            try:
                result = job.fn(tx)
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                self._finish(conn, prep, [(job, tx, None, _map_error(exc))])
                return
            try:
                conn.execute("COMMIT")
            except BaseException as exc:
                self._failed_commit(conn, prep, [(job, tx, result, None)], exc)
                return
            self.batches += 1
            self.jobs_done += 1
            self._finish(conn, prep, [(job, tx, result, None)])
            return
        recorded: frozenset[str] = frozenset()
        try:
            if rows and self._sink is not None:
                self._sink.record(conn, rows)
                recorded = frozenset(r[0] for r in rows)
            for group in self._groups(batch, failed) if bulk else [[j] for j in batch]:
                if len(group) > 1:
                    self._run_bulk(conn, group, recorded, outcomes)
                    continue
                self._run_one(conn, group[0], recorded, failed, outcomes)
            conn.execute("COMMIT")
        except _BulkFailed:
            # Whatever the bulk form left half done goes with the whole transaction;
            # the batch runs again, every job alone in its savepoint.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._run_batch(prep, bulk=False)
            return
        except BaseException as exc:
            self._failed_commit(conn, prep, outcomes, exc)
            return
        self.batches += 1
        self.jobs_done += len(batch)
        self._finish(conn, prep, outcomes)

    @staticmethod
    def _groups(batch: list[_Job], failed: dict[str, BaseException]) -> list[list[_Job]]:
        """The batch in run order: riders first (as queued), each set of alike jobs at
        the place of its first; a job whose blob failed stands alone."""
        groups: list[list[_Job]] = []
        alike: dict[tuple[bool, Any], list[_Job]] = {}
        for job in batch:
            if job.bulk is None or any(b.blob_id in failed for b in job.blobs):
                groups.append([job])
                continue
            key = (job.future is None, job.bulk[0])
            group = alike.get(key)
            if group is None:
                group = alike[key] = []
                groups.append(group)
            group.append(job)
        return groups

    def _run_bulk(self, conn: sqlite3.Connection, group: list[_Job], recorded: frozenset[str],
                  outcomes: list[tuple[_Job, Tx, Any, BaseException | None]]) -> None:
        """Run alike jobs through their shared bulk form, with no savepoint of its own
        (two statements, two GIL hand-offs fewer): if it raises, ``_BulkFailed``."""
        assert group[0].bulk is not None
        bulk_fn = group[0].bulk[0]
        txs = [Tx(conn, recorded=recorded) for _ in group]
        try:
            results = bulk_fn(conn, [(tx, job.bulk[1]) for tx, job in zip(txs, group, strict=True)
                                     if job.bulk is not None])
            if len(results) != len(group):
                raise StorageError(f"bulk write returned {len(results)} results for {len(group)}")
        except Exception as exc:
            if not isinstance(exc, (sqlite3.Error, StorageError)):
                log.warning("bulk write failed, running its batch job by job", exc_info=True)
            raise _BulkFailed from exc
        for job, tx, result in zip(group, txs, results, strict=True):
            if job.future is not None:
                outcomes.append((job, tx, result, None))

    def _run_one(self, conn: sqlite3.Connection, job: _Job, recorded: frozenset[str],
                 failed: dict[str, BaseException],
                 outcomes: list[tuple[_Job, Tx, Any, BaseException | None]]) -> None:
        tx = Tx(conn, recorded=recorded)
        if job.future is None:
            try:
                job.fn(tx)
            except sqlite3.Error:
                log.exception("a write nobody waits for failed")
            return
        bad = next((failed[b.blob_id] for b in job.blobs if b.blob_id in failed), None)
        if bad is not None:
            outcomes.append((job, tx, None, bad))
            return
        conn.execute("SAVEPOINT job")
        try:
            result = job.fn(tx)
        except BaseException as exc:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            outcomes.append((job, tx, None, _map_error(exc)))
            return
        conn.execute("RELEASE job")
        outcomes.append((job, tx, result, None))

    def _failed_commit(self, conn: sqlite3.Connection, prep: _Prepared,
                       outcomes: list[tuple[_Job, Tx, Any, BaseException | None]],
                       exc: BaseException) -> None:
        """The transaction failed as a whole: roll back, clean up, fail every job."""
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        err = _map_error(exc)
        pins = list(prep.pins)
        for _job, tx, _, _ in outcomes:
            pins.extend(tx.release_pins)
        with contextlib.suppress(Exception):
            self._after_commit(conn, [], [o[1] for o in outcomes], pins, prep.rows)
        for job in prep.jobs:
            self._resolve(job, exc=err)

    def _finish(self, conn: sqlite3.Connection, prep: _Prepared,
                outcomes: list[tuple[_Job, Tx, Any, BaseException | None]]) -> None:
        """After COMMIT (or a lone job's rollback): after-commit work, then publish
        and wake the callers."""
        rows = prep.rows
        pins = list(prep.pins)
        committed: list[Tx] = []
        for _, tx, _, failure in outcomes:
            pins.extend(tx.release_pins)
            if failure is None:
                committed.append(tx)
        try:
            self._after_commit(conn, committed, [o[1] for o in outcomes], pins, rows)
        except Exception:
            log.exception("after-commit cleanup failed")
        # Publish per loop, in commit order, before waking the callers.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Tx, Any, BaseException | None]]] = {}
        for o in outcomes:
            by_loop.setdefault(o[0].loop, []).append(o)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._deliver_results, items)

    def _deliver_results(self, items: list[tuple[_Job, Tx, Any, BaseException | None]]) -> None:
        changes = [c for _, tx, _, exc in items if exc is None for c in tx.changes]
        if changes:
            try:
                self._publish(changes)
            except Exception:
                log.exception("change publication failed")
        for job, _, result, exc in items:
            fut = job.future
            if fut is None or fut.done():
                continue
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    def _resolve(self, job: _Job, *, exc: BaseException) -> None:
        fut = job.future
        if fut is None:
            return

        def set_exc() -> None:
            if not fut.done():
                fut.set_exception(exc)

        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(set_exc)

    # -- reads -------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            for name, file in self._attach:
                conn.execute(f"ATTACH DATABASE ? AS {name}", (str(file),))
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._rlock:
                self._rconns.append(conn)
        return conn

    def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a small index lookup synchronously on this thread's own connection."""
        if self._closed:
            raise StorageError("store closed")
        try:
            return fn(self._reader())
        except sqlite3.Error as exc:
            raise _map_error(exc)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StorageError("store closed")
        loop = asyncio.get_running_loop()

        def run() -> T:
            conn = self._reader()
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise _map_error(exc)

        return await loop.run_in_executor(self._pool, run)

    # -- shutdown ----------------------------------------------------------------------
    def close(self) -> None:
        """Blocking: finish queued writes, stop threads, close connections."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        self._stager.join()
        self._writer.join()
        self._pool.shutdown(wait=True)
        with self._rlock:
            for c in self._rconns:
                with contextlib.suppress(sqlite3.Error):
                    c.close()
            self._rconns.clear()
        with contextlib.suppress(sqlite3.Error):
            self._wconn.close()
