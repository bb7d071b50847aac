"""Message bodies packed into append-only segment files, indexed in SQLite.

Layout under ``data_dir/blobs``::

    tmp/                   spools spilled to disk (emptied on open)
    segments/00000001.seg  concatenated message octets, appended only
    quarantine/            blobs whose content no longer matches their id (scrub)

A blob is ``(segment, start, length)``, one row of ``blob_locs`` keyed by its
id (hex SHA-256 of the content, opaque to callers). A blob exists exactly
when its row does.

Theory of operation
-------------------
Writing is done by the SQLite writer thread (``engine.Engine``), inside the
batch that group-commits the index (DESIGN.md "Nothing lost", RFC 5321 §6.1):

1. the batch's new blobs are appended to the current segment with ``pwrite``;
2. the segment is ``fdatasync``-ed ONCE for the whole batch (the file size is
   part of what fdatasync makes durable);
3. their ``blob_locs`` rows and every job of the batch commit in ONE SQLite
   transaction (WAL, ``synchronous=FULL``);
4. only then are the callers woken.

So a delivery costs one thread hop (loop -> writer -> loop) and a batch of N
deliveries costs two fsyncs, whatever N. Callers that hold a spool *stage*
it (:meth:`SegmentBlobStore.stage`: hash now, bytes later) and pass the
staged reference straight to ``Store.deliver``/``queue_add``/``append``; the
job carries the bytes to the writer. ``BlobStore.commit`` keeps its contract
(durable on return) by running a tiny job of its own through the same batch.

Crash recovery (``SegmentFiles.recover``, at open, before any reader): bytes
beyond the last row of a segment were never acknowledged (their transaction
did not commit) and are truncated away; a segment with no row is removed.

Deletion: when a blob's reference count reaches 0 its row is deleted in the
same transaction, unless a commit in flight *pinned* it (identical content
committed but not yet delivered: see ``SegmentBlobStore.pin``); the pin's
release re-checks it. A segment (other than the one being written) whose last
row is gone is unlinked after the commit. A segment less than half live is
compacted: its live blobs are copied to the current segment (fsynced, rows
moved in the same transaction) and the old file removed; at open in one go,
while serving a few MiB per write job (``SQLiteStore.maintain``). A reader that
located a blob before it moved reads it where it was (an open handle keeps a
dropped file readable); one that finds the file gone looks the blob up again
(``SegmentBlobStore._open_blob``, ``SegmentSetReader.read``).

Reads: a location is a primary-key lookup (~3 us on the loop's own read
connection, against ~100 us for a hop to the reader pool; measured, see
``engine.py``), and a ``pread`` of a page-cached range up to 256 KiB costs
under 10 us, so both are done on the event loop; larger ranges are read in
a thread, chunk by chunk. Segment file descriptors are shared and reference
counted so a segment unlinked during a read stays readable until the read
ends.

``path()`` is always None: no file holds exactly one blob (callers stream).

A :class:`SegmentSetReader` (``reader()``, used by POP3 sessions) looks the
locations of its blobs up in batches of :data:`LOCATE_BATCH` (one SELECT each)
and keeps them, so reading a message is one ``pread``: the lookup and its SQLite
read transaction were a third of the storage cost of a small RETR. A location
stays right while its segment exists: segments are append-only, never rewritten,
and a blob id names its content, so wherever it is stored the bytes are the
same. When the segment has been dropped, the reader looks the blob up again
(stored anew elsewhere or moved by compaction, or NotFound).

Measured on the 2 vCPU test VM (ext4, shared with other test runs, so noisy;
each line compares within one run). bench/bench_storage.py, 2,000 x 5 KB, 20
tasks: per-file blobs 2,550/s vs segment blobs 5,740/s; full durable
deliveries 1,360/s naive, 2,250/s commit+deliver, 3,910/s staged (one
batch per delivery). bench_smtp.py end to end (smtp-source, 20 sessions):
the server went from 1.58 to 1.16 ms of CPU per message and from ~450-560 to
~740-790 msg/s; it is now CPU-bound outside storage (SMTP, SPF/DMARC). POP3
RETR (inline stream reads): 2,900 -> 5,040 msg/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailyard.storage.blobs import FileSpool
from mailyard.storage.interface import InsufficientStorage, NotFound, Spool, StorageError
from mailyard.storage.models import BlobRef

if TYPE_CHECKING:
    from mailyard.storage.sqlite.engine import Engine, Tx

log = logging.getLogger(__name__)

SEGMENT_TARGET = 64 * 1024 * 1024  # rotate once the current segment reaches this size
INLINE_READ_MAX = 256 * 1024  # reads up to this size are done on the event loop
LOCATE_BATCH = 200  # blob locations a SegmentSetReader looks up in one query
_RELOCATE_TRIES = 3  # lookups of a blob whose segment vanished under the reader
_CHUNK = 1 << 16
GATHER_MAX = 256 * 1024  # blobs up to this size are gathered into one vectored write ...
GATHER_TOTAL = 4 * 1024 * 1024  # ... of at most about this many bytes
IOV_MAX = 1024  # buffers per pwritev (Linux's UIO_MAXIOV)

#: hashlib releases the GIL for inputs of 2048 octets or more (HASHLIB_GIL_MINSIZE).
_GIL_SLICE = 2047
_BLOB_ID_RE = re.compile(r"[0-9a-f]{64}")
_SEG_RE = re.compile(r"(\d{8})\.seg")

# (blob_id, segment, start, length)
LocRow = tuple[str, int, int, int]


def check_id(blob_id: str) -> None:
    # Ids are content hashes; anything else cannot name a blob.
    if not _BLOB_ID_RE.fullmatch(blob_id):
        raise NotFound(f"not a blob id: {blob_id!r}")


def _oserror(exc: OSError) -> StorageError:
    if exc.errno in (28, 122):  # ENOSPC, EDQUOT
        return InsufficientStorage(str(exc))
    return StorageError(str(exc))


def _pwrite_all(fd: int, buffers: list[bytes], offset: int) -> None:
    """Write ``buffers`` contiguously at ``offset``: pwritev, resumed after a short write."""
    views = [memoryview(b) for b in buffers if b]
    i = 0
    while i < len(views):
        n = os.pwritev(fd, views[i:i + IOV_MAX], offset)
        if n <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += n
        while i < len(views) and n >= len(views[i]):
            n -= len(views[i])
            i += 1
        if n:
            views[i] = views[i][n:]


@dataclass(frozen=True, slots=True, eq=False)
class StagedBlob(BlobRef):
    """A blob whose id and size are known but whose bytes are not stored yet.

    Pass it to ``deliver``/``queue_add``/``append`` of the store that staged it:
    the bytes are written, fdatasynced and indexed in the same batch as the
    records that reference them. The spool must stay untouched (not written,
    not aborted) until that call returns; abort it afterwards.
    """

    prefix: bytes = b""
    spool: Any = None  # the Spool holding the rest of the content

    def pieces(self) -> Iterator[bytes]:
        if self.prefix:
            yield self.prefix
        if self.spool is not None:
            yield from self.spool.chunks(_CHUNK)

    def ref(self) -> BlobRef:
        return BlobRef(blob_id=self.blob_id, size=self.size)


async def content_id(spool: Spool, prefix: bytes = b"") -> tuple[str, int]:
    """(blob id, size) of ``prefix + spool``: its SHA-256 in hex and its length.

    In-memory spools are hashed on the loop (SHA-256 of 5 KB is a few us), in
    slices too small for hashlib to release the GIL: getting it back from a
    thread running Python can take a whole switch interval (5 ms), a stall of
    the event loop far longer than the hash. Spilled ones are hashed in a thread.
    """

    def digest(step: int) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        for part in itertools.chain((prefix,), spool.chunks(_CHUNK)):
            view = memoryview(part)
            for i in range(0, len(view), step):
                h.update(view[i : i + step])
            size += len(view)
        return h.hexdigest(), size

    if isinstance(spool, FileSpool) and not spool.spilled:
        return digest(_GIL_SLICE)
    return await asyncio.to_thread(digest, _CHUNK)


def staged_blobs(*refs: BlobRef | None) -> list[StagedBlob]:
    return [r for r in refs if isinstance(r, StagedBlob)]


class _Handle:
    __slots__ = ("closing", "fd", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.closing = False


class SegmentFiles:
    """The segment files: append (writer thread only), pread (any thread), recovery."""

    def __init__(self, directory: Path, *, fsync: bool = True,
                 target: int = SEGMENT_TARGET) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self.target = target
        self._lock = threading.Lock()
        # Held by the stager around an append and by the writer around dropping a
        # segment, so a segment is never dropped while rows for it are on their way.
        self.append_lock = threading.Lock()
        self._handles: dict[int, _Handle] = {}
        self.current = 0  # segment being appended to (0: none yet)
        self.end = 0  # its size: where the next blob goes
        self._wfd = -1
        self._next = 1
        # False in a process that opened the store without owning it (an admin command
        # next to a running server): it must never unlink a segment the owner may be
        # appending to; the owner reclaims space at its next open.
        self.may_drop = True

    def path(self, seg: int) -> Path:
        return self.dir / f"{seg:08d}.seg"

    def on_disk(self) -> dict[int, int]:
        """Segment number -> size of every segment file. Blocking."""
        out: dict[int, int] = {}
        for entry in os.scandir(self.dir):
            m = _SEG_RE.fullmatch(entry.name)
            if m:
                out[int(m.group(1))] = entry.stat().st_size
        return out

    # -- recovery (at open, before readers and the writer start) --------------------------
    def recover(self, ends: dict[int, int]) -> tuple[int, int]:
        """Cut every segment to its last indexed byte; remove unindexed segments.

        ``ends``: segment -> max(start + length) of its rows. Returns (segments
        removed, bytes truncated).
        """
        removed = cut = 0
        disk = self.on_disk()
        for seg, size in sorted(disk.items()):
            end = ends.get(seg)
            if end is None:
                os.unlink(self.path(seg))
                removed += 1
                continue
            if size > end:
                # Appended and maybe fdatasynced, but the transaction naming these
                # bytes never committed: nobody was told they are stored.
                with open(self.path(seg), "r+b") as f:
                    f.truncate(end)
                    if self._fsync:
                        os.fsync(f.fileno())
                cut += size - end
            elif size < end:
                log.error("segment %d is shorter than its index (%d < %d bytes)", seg, size, end)
        if removed and self._fsync:
            self._fsync_dir()
        live = {s: disk[s] for s in disk if s in ends}
        self._next = max([*disk, *ends, 0]) + 1
        if live:
            last = max(live)
            if live[last] < self.target:
                self._open_for_append(last, min(live[last], ends[last]))
        if removed or cut:
            log.info("segment recovery: %d unindexed segments removed, %d bytes truncated",
                     removed, cut)
        return removed, cut

    # -- appending (writer thread) ------------------------------------------------------------
    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open_for_append(self, seg: int, end: int) -> None:
        self._wfd = os.open(self.path(seg), os.O_RDWR | os.O_CLOEXEC)
        self.current, self.end = seg, end

    def _rotate(self) -> None:
        seg = self._next
        fd = os.open(self.path(seg), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if self._fsync:
                self._fsync_dir()  # the new directory entry must be durable before any row names it
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path(seg))
            raise
        if self._wfd >= 0:
            os.close(self._wfd)
        self._next = seg + 1
        self._wfd, self.current, self.end = fd, seg, 0

    def append(self, blobs: Iterable[StagedBlob]) -> tuple[list[LocRow], dict[str, BaseException]]:
        """Write ``blobs`` and fdatasync once. Returns (rows to index, failures by blob id).

        Blobs up to ``GATHER_MAX`` bytes are gathered and written together with one
        ``pwritev`` (up to ``GATHER_TOTAL`` at a time); larger ones stream in chunks. Each
        write gives the GIL away and must take it back, a wait of its own when the
        event loop is busy: a batch of twenty 5 KB messages is one write, not forty.
        """
        rows: list[LocRow] = []
        failed: dict[str, BaseException] = {}
        dirty: list[tuple[int, int, int]] = []  # (segment, fd, end before this batch)
        gathered: list[tuple[StagedBlob, int]] = []  # (blob, start): not written yet
        vec: list[bytes] = []

        def flush() -> None:
            if not gathered:
                return
            first = gathered[0][1]
            try:
                _pwrite_all(self._wfd, vec, first)
            except OSError as exc:
                err = _oserror(exc)
                with contextlib.suppress(OSError):
                    os.ftruncate(self._wfd, first)
                for blob, _ in gathered:
                    failed[blob.blob_id] = err
                self.end = first
            else:
                rows.extend((blob.blob_id, self.current, start, blob.size)
                            for blob, start in gathered)
            gathered.clear()
            vec.clear()

        for blob in blobs:
            try:
                if self._wfd < 0 or self.end >= self.target:
                    flush()
                    if self._wfd >= 0 and dirty and dirty[-1][0] == self.current:
                        self._sync(self._wfd)  # the old segment is done: sync before leaving it
                    self._rotate()
                if not dirty or dirty[-1][0] != self.current:
                    dirty.append((self.current, self._wfd, self.end))
            except OSError as exc:
                failed[blob.blob_id] = _oserror(exc)
                continue
            start = self.end
            if blob.size <= GATHER_MAX:
                try:
                    pieces = [bytes(p) for p in blob.pieces()]
                except OSError as exc:
                    failed[blob.blob_id] = _oserror(exc)
                    continue
                if sum(len(p) for p in pieces) != blob.size:
                    failed[blob.blob_id] = StorageError(
                        f"spool of blob {blob.blob_id} changed after staging")
                    continue
                gathered.append((blob, start))
                vec.extend(pieces)
                self.end = start + blob.size
                if self.end - gathered[0][1] >= GATHER_TOTAL:
                    flush()
                continue
            flush()
            start = pos = self.end
            try:
                for piece in blob.pieces():
                    view = memoryview(piece)
                    while view:
                        n = os.pwrite(self._wfd, view, pos)
                        view = view[n:]
                        pos += n
                if pos - start != blob.size:
                    raise StorageError(f"spool of blob {blob.blob_id} changed after staging")
            except (OSError, StorageError) as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._wfd, start)
                failed[blob.blob_id] = _oserror(exc) if isinstance(exc, OSError) else exc
                continue
            self.end = pos
            rows.append((blob.blob_id, self.current, start, blob.size))
        flush()
        if rows and dirty:
            seg, fd, before = dirty[-1]
            try:
                self._sync(fd)
            except OSError as exc:
                # After a failed fsync the state of those pages is unknown: nothing
                # of this batch is acknowledged; the tail is dropped (or cut at open).
                err = _oserror(exc)
                for row in rows:
                    failed[row[0]] = err
                rows = []
                if seg == self.current:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, before)
                        self.end = before
        return rows, failed

    def _sync(self, fd: int) -> None:
        if self._fsync:
            os.fdatasync(fd)

    # -- reading (any thread) ---------------------------------------------------------------------
    def acquire(self, seg: int) -> _Handle:
        with self._lock:
            h = self._handles.get(seg)
            if h is None:
                try:
                    fd = os.open(self.path(seg), os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise NotFound(f"segment {seg}")
                h = self._handles[seg] = _Handle(fd)
            h.users += 1
            return h

    def release(self, h: _Handle) -> None:
        with self._lock:
            h.users -= 1
            if h.closing and h.users == 0:
                os.close(h.fd)

    @staticmethod
    def pread(h: _Handle, length: int, offset: int) -> bytes:
        parts: list[bytes] = []
        while length > 0:
            block = os.pread(h.fd, length, offset)
            if not block:
                raise StorageError("segment shorter than its index")
            parts.append(block)
            length -= len(block)
            offset += len(block)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def drop(self, seg: int) -> None:
        """Unlink a segment nothing references any more (writer thread, after commit)."""
        if seg == self.current or not self.may_drop:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(seg))
        with self._lock:
            h = self._handles.pop(seg, None)
            if h is not None:
                h.closing = True
                if h.users == 0:
                    os.close(h.fd)

    def close(self) -> None:
        with self._lock:
            for h in self._handles.values():
                h.closing = True
                if h.users == 0:
                    os.close(h.fd)
            self._handles.clear()
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1


class SegmentBlobStore:
    """``BlobStore`` of the storage seam on segment files; writes go through the engine."""

    def __init__(self, root: Path, *, fsync: bool = True, target: int = SEGMENT_TARGET,
                 engine: Callable[[], Engine]) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.files = SegmentFiles(root / "segments", fsync=fsync, target=target)
        self._engine = engine
        self._lock = threading.Lock()
        self._pins: Counter[str] = Counter()
        # Written to a segment by the stager, row not committed yet: blob id -> row.
        self._inflight: dict[str, LocRow] = {}
        # Rows a transaction in progress deletes: the stager must not count on them.
        self._deleting: set[str] = set()

    # -- pins (see the module docstring) ------------------------------------------------------
    def pin(self, blob_id: str) -> None:
        with self._lock:
            self._pins[blob_id] += 1

    def claim_for_delete(self, blob_id: str) -> bool:
        """Writer: may the row of this unreferenced blob be deleted now? (not if pinned)"""
        with self._lock:
            if self._pins.get(blob_id, 0) > 0:
                return False
            self._deleting.add(blob_id)
            return True

    def unclaim(self, blob_ids: Iterable[str]) -> None:
        with self._lock:
            self._deleting.difference_update(blob_ids)

    def prepare(self, conn: Any, blobs: list[StagedBlob]
                ) -> tuple[list[LocRow], dict[str, BaseException]]:
        """Stager thread: pin ``blobs`` for their batch, append those not stored yet.

        A blob counts as stored when its row is committed and no transaction in
        progress deletes it (pinned first, so none can start), or when an earlier
        batch still on its way wrote it (its row is recorded again, harmlessly).
        """
        with self._lock:
            for b in blobs:
                self._pins[b.blob_id] += 1
            reuse = {b.blob_id: self._inflight[b.blob_id] for b in blobs
                     if b.blob_id in self._inflight}
            deleting = {b.blob_id for b in blobs if b.blob_id in self._deleting}
        try:
            ask = [b.blob_id for b in blobs if b.blob_id not in reuse and b.blob_id not in deleting]
            stored: set[str] = set()
            for i in range(0, len(ask), 500):  # one query per batch, not one per blob
                part = ask[i:i + 500]
                stored.update(r[0] for r in conn.execute(
                    f"SELECT blob_id FROM blob_locs WHERE blob_id IN ({','.join('?' * len(part))})",
                    part))
            new = [b for b in blobs if b.blob_id not in reuse and b.blob_id not in stored]
            rows: list[LocRow] = []
            failed: dict[str, BaseException] = {}
            if new:
                with self.files.append_lock:
                    rows, failed = self.files.append(new)
                    with self._lock:
                        for r in rows:
                            self._inflight[r[0]] = r
            return rows + list(reuse.values()), failed
        except Exception as exc:  # never let one bad blob take the pipeline down
            err = exc if isinstance(exc, StorageError) else StorageError(str(exc))
            return [], {b.blob_id: err for b in blobs}

    def landed(self, rows: Iterable[LocRow]) -> None:
        """Writer, after its COMMIT (or its failure): these rows are no longer in flight."""
        with self._lock:
            for r in rows:
                if self._inflight.get(r[0]) == r:
                    del self._inflight[r[0]]

    def in_flight_segment(self, seg: int) -> bool:
        with self._lock:
            return any(r[1] == seg for r in self._inflight.values())

    def release(self, blob_id: str) -> None:
        with self._lock:
            n = self._pins.get(blob_id, 0)
            if n <= 1:
                self._pins.pop(blob_id, None)
            else:
                self._pins[blob_id] = n - 1

    def pinned(self, blob_id: str) -> bool:
        with self._lock:
            return self._pins.get(blob_id, 0) > 0

    # -- writing --------------------------------------------------------------------------------
    def new_spool(self) -> FileSpool:
        return FileSpool(self.tmp_dir)

    async def stage(self, spool: Spool, *, prefix: bytes = b"") -> StagedBlob:
        """Hash ``prefix + spool`` now; the bytes are written by the call that takes the ref."""
        blob_id, size = await content_id(spool, prefix)
        return StagedBlob(blob_id=blob_id, size=size, prefix=prefix, spool=spool)

    async def commit(self, spool: Spool, *, prefix: bytes = b"") -> BlobRef:
        try:
            staged = await self.stage(spool, prefix=prefix)

            def job(tx: Tx) -> None:
                # Held until the store commits a reference (it releases the pin then).
                self.pin(staged.blob_id)

            await self._engine().write(job, blobs=[staged])
        finally:
            spool.abort()
        return staged.ref()

    async def put(self, data: bytes) -> BlobRef:
        spool = self.new_spool()
        spool.write(data)
        return await self.commit(spool)

    # -- reading ----------------------------------------------------------------------------------
    def locate(self, blob_id: str) -> tuple[int, int, int]:
        """(segment, start, length) of a stored blob; raises NotFound."""
        check_id(blob_id)
        row = self._engine().read_now(lambda c: c.execute(
            "SELECT segment, start, length FROM blob_locs WHERE blob_id = ?",
            (blob_id,)).fetchone())
        if row is None:
            raise NotFound(f"blob {blob_id}")
        return int(row[0]), int(row[1]), int(row[2])

    def locate_many(self, blob_ids: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """(segment, start, length) of the stored blobs among ``blob_ids``, one query."""
        for blob_id in blob_ids:
            check_id(blob_id)
        if not blob_ids:
            return {}
        marks = ",".join("?" * len(blob_ids))
        rows = self._engine().read_now(lambda c: c.execute(
            f"SELECT blob_id, segment, start, length FROM blob_locs WHERE blob_id IN ({marks})",
            tuple(blob_ids)).fetchall())
        return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}

    def reader(self, blob_ids: Sequence[str]) -> SegmentSetReader:
        return SegmentSetReader(self, blob_ids)

    def exists(self, blob_id: str) -> bool:
        try:
            self.locate(blob_id)
        except NotFound:
            return False
        return True

    def path(self, blob_id: str) -> str | None:
        check_id(blob_id)
        return None

    @staticmethod
    def _range(total: int, offset: int, length: int | None) -> tuple[int, int]:
        start = min(max(0, offset), total)
        n = total - start if length is None else max(0, min(length, total - start))
        return start, n

    def _read_range(self, seg: int, pos: int, n: int) -> bytes:
        return self._read_handle(self.files.acquire(seg), pos, n)

    def _open_blob(self, blob_id: str) -> tuple[_Handle, int, int]:
        """(handle of its segment, start, length) of a stored blob; raises NotFound.

        The handle keeps the segment readable even if it is dropped meanwhile; release
        it with ``files.release``. A segment dropped between the lookup and the open had
        its blobs moved by compaction (``SQLiteStore.maintain``) or deleted: the blob is
        looked up again (its row moved before the segment was dropped).
        """
        for _ in range(_RELOCATE_TRIES):
            seg, start, length = self.locate(blob_id)
            try:
                return self.files.acquire(seg), start, length
            except NotFound:
                continue
        raise NotFound(f"blob {blob_id}")

    def _read_handle(self, h: _Handle, pos: int, n: int) -> bytes:
        """``n`` bytes at ``pos`` of an acquired segment, which this releases."""
        try:
            return self.files.pread(h, n, pos)
        except OSError as exc:
            raise _oserror(exc)
        finally:
            self.files.release(h)

    def read_sync(self, blob_id: str, limit: int | None = None) -> bytes | None:
        """A stored blob's bytes from any thread (the text indexer); None when it is
        longer than ``limit``. Raises NotFound."""
        h, start, n = self._open_blob(blob_id)
        if limit is not None and n > limit:
            self.files.release(h)
            return None
        return self._read_handle(h, start, n)

    async def read(self, blob_id: str, offset: int = 0, length: int | None = None) -> bytes:
        h, start, total = self._open_blob(blob_id)
        skip, n = self._range(total, offset, length)
        if n == 0:
            self.files.release(h)
            return b""
        if n <= INLINE_READ_MAX:
            return self._read_handle(h, start + skip, n)
        return await asyncio.to_thread(self._read_handle, h, start + skip, n)

    async def stream(self, blob_id: str, *, offset: int = 0, length: int | None = None,
                     chunk: int = 65536) -> AsyncIterator[bytes]:
        h, start, total = self._open_blob(blob_id)
        skip, n = self._range(total, offset, length)
        try:
            pos, end = start + skip, start + skip + n
            inline = n <= INLINE_READ_MAX
            while pos < end:
                size = min(chunk, end - pos)
                try:
                    block = (self.files.pread(h, size, pos) if inline
                             else await asyncio.to_thread(self.files.pread, h, size, pos))
                except OSError as exc:
                    raise _oserror(exc)
                pos += size
                yield block
        finally:
            self.files.release(h)

    # -- maintenance (blocking; at open) ------------------------------------------------------------
    def recover_tmp(self) -> int:
        """Remove spill files a crash left in tmp/ (nothing there was ever acknowledged)."""
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
        return removed

    def scrub(self, rows: Iterable[LocRow]) -> list[str]:
        """Re-hash ``rows``; copy mismatches to quarantine/ and return their ids."""
        bad: list[str] = []
        for blob_id, seg, start, length in rows:
            try:
                data = self._read_range(seg, start, length)
            except (NotFound, StorageError):
                data = b""
            if hashlib.sha256(data).hexdigest() != blob_id:
                log.error("blob %s does not match its hash; quarantined", blob_id)
                self.quarantine_dir.mkdir(exist_ok=True)
                (self.quarantine_dir / blob_id).write_bytes(data)
                bad.append(blob_id)
        return bad

    def close(self) -> None:
        self.files.close()


class SegmentSetReader:
    """``BlobStore.reader``: locations looked up in batches and kept (module docstring)."""

    def __init__(self, store: SegmentBlobStore, blob_ids: Sequence[str]) -> None:
        self._store = store
        self._ids = list(blob_ids)
        self._pos: dict[str, int] = {}
        for i, blob_id in enumerate(self._ids):
            self._pos.setdefault(blob_id, i)
        self._locs: dict[str, tuple[int, int, int]] = {}

    def _locate(self, blob_id: str) -> tuple[int, int, int]:
        i = self._pos.get(blob_id)
        if i is None:
            return self._store.locate(blob_id)
        # This one and the next ones not located yet: readers mostly go in order.
        batch = [b for b in self._ids[i:i + LOCATE_BATCH] if b not in self._locs]
        found = self._store.locate_many(batch)
        self._locs.update(found)
        loc = found.get(blob_id)
        if loc is None:
            raise NotFound(f"blob {blob_id}")
        return loc

    async def _read_at(self, loc: tuple[int, int, int]) -> bytes:
        seg, start, length = loc
        if length == 0:
            return b""
        if length <= INLINE_READ_MAX:
            return self._store._read_range(seg, start, length)
        return await asyncio.to_thread(self._store._read_range, seg, start, length)

    async def read(self, blob_id: str) -> bytes:
        loc = self._locs.get(blob_id)
        if loc is None:
            loc = self._locate(blob_id)
        try:
            return await self._read_at(loc)
        except NotFound:
            # Its segment was dropped: the blob is gone, or stored again elsewhere.
            self._locs.pop(blob_id, None)
            loc = self._store.locate(blob_id)
            self._locs[blob_id] = loc
            return await self._read_at(loc)


def legacy_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Per-file blobs of the previous layout (``ab/cd/<id>``), for the import at open."""
    for a in os.scandir(root):
        if not (a.is_dir() and len(a.name) == 2):
            continue
        for b in os.scandir(a.path):
            if not b.is_dir():
                continue
            for f in os.scandir(b.path):
                if _BLOB_ID_RE.fullmatch(f.name):
                    yield f.name, Path(f.path)


class FileSource:
    """A file read in chunks, standing in for a spool (legacy import)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def chunks(self, size: int = _CHUNK) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while block := f.read(size):
                yield block


class SegmentSource:
    """A stored blob read in chunks, standing in for a spool (compaction)."""

    def __init__(self, files: SegmentFiles, seg: int, start: int, length: int) -> None:
        self.files, self.seg, self.start, self.length = files, seg, start, length

    def chunks(self, size: int = _CHUNK) -> Iterator[bytes]:
        h = self.files.acquire(self.seg)
        try:
            pos, end = self.start, self.start + self.length
            while pos < end:
                n = min(size, end - pos)
                yield self.files.pread(h, n, pos)
                pos += n
        finally:
            self.files.release(h)
