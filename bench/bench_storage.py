"""Storage benchmark: durable deliveries/s, ours vs. a naive baseline, in one run.

    python bench/bench_storage.py [--messages 2000] [--size 5000] [--concurrency 20]

Measurements, same machine, same run, every write durable (fsync):

1. naive     - what a straightforward server does per message: write a file,
               fsync it, rename, fsync the directory, then one SQLite
               transaction (WAL, synchronous=FULL) inserting the message row.
               Concurrent tasks each run it in a thread; the single connection
               is serialised by a lock.
2. mailyard  - SQLiteStore, two ways:
               staged: ``blobs.stage`` + ``deliver`` (what the SMTP server does):
                 the body is appended to a segment, fdatasynced and indexed in
                 the same group-commit batch as the message rows (one hop);
               commit+deliver: ``blobs.commit`` then ``deliver`` (two batches).
3. blob layer alone: per-file blobs (FileBlobStore: fsync file, rename, fsync
               directory) vs. SQLiteStore's segment blobs (``blobs.put``: append,
               one fdatasync + one commit per batch) vs. a bare segment writer.
4. lookups   - ``get_account`` on the loop's own connection (what the store
               does) vs. the same query through the reader thread pool.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import queue
import sqlite3
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from mailyard.storage.blobs import FileBlobStore
from mailyard.storage.models import DeliveryTarget
from mailyard.storage.sqlite import SQLiteStore


def payloads(n: int, size: int) -> list[bytes]:
    return [(b"Subject: bench %d\r\n\r\n" % i).ljust(size - 2, b"x") + b"\r\n" for i in range(n)]


async def run_tasks(datas: list[bytes], concurrency: int, one) -> float:
    it = iter(datas)

    async def worker() -> None:
        for data in it:
            await one(data)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(datas) / (time.perf_counter() - t0)


# -- 1. naive ---------------------------------------------------------------------------
async def bench_naive(root: Path, datas: list[bytes], concurrency: int) -> float:
    root.mkdir(parents=True)  # noqa: ASYNC240 - setup, outside the timed part
    db = sqlite3.connect(root / "naive.sqlite3", check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, uid INTEGER, blob TEXT, size INT)")
    lock = threading.Lock()
    counter = iter(range(1, 10**9))
    dir_fd = os.open(root, os.O_RDONLY)

    def store(data: bytes) -> None:
        name = hashlib.sha256(data).hexdigest()
        tmp = root / f"{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, root / name)
        os.fsync(dir_fd)
        with lock:
            db.execute("BEGIN")
            db.execute("INSERT INTO messages (uid, blob, size) VALUES (?, ?, ?)",
                       (next(counter), name, len(data)))
            db.execute("COMMIT")

    async def one(data: bytes) -> None:
        await asyncio.to_thread(store, data)

    try:
        return await run_tasks(datas, concurrency, one)
    finally:
        os.close(dir_fd)
        db.close()


# -- 2. mailyard -----------------------------------------------------------------------
async def bench_store(root: Path, datas: list[bytes], concurrency: int, *,
                      staged: bool) -> tuple[float, float]:
    s = SQLiteStore(root, sweep_orphans=False)
    await s.open()
    acc = await s.add_account("bench@example.com", "x")
    target = [DeliveryTarget(acc.id)]
    b0, j0 = s.engine.batches, s.engine.jobs_done
    segs = s._segs

    async def one(data: bytes) -> None:
        spool = s.blobs.new_spool()
        spool.write(data)
        if staged:
            ref = await segs.stage(spool, prefix=b"Received: bench\r\n")
            await s.deliver(ref, target)
            spool.abort()
        else:
            ref = await s.blobs.commit(spool, prefix=b"Received: bench\r\n")
            await s.deliver(ref, target)

    try:
        rate = await run_tasks(datas, concurrency, one)
        per_tx = (s.engine.jobs_done - j0) / max(1, s.engine.batches - b0)
        return rate, per_tx
    finally:
        await s.close()


# -- 3. blob layer: per-file vs. segment ------------------------------------------------------
async def bench_blob_files(root: Path, datas: list[bytes], concurrency: int) -> float:
    bs = FileBlobStore(root)

    async def one(data: bytes) -> None:
        await bs.put(data)

    try:
        return await run_tasks(datas, concurrency, one)
    finally:
        bs.close()


class SegmentWriter:
    """Minimal append-only segment: one writer thread, one fdatasync per batch."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.offset = 0
        self.q: queue.SimpleQueue[tuple[bytes, Future[tuple[int, int]]] | None] = (
            queue.SimpleQueue())
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        while (item := self.q.get()) is not None:
            batch = [item]
            while True:
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.q.put(None)
                    break
                batch.append(nxt)
            done = []
            for data, fut in batch:
                hashlib.sha256(data).hexdigest()
                os.write(self.fd, data)
                done.append((fut, self.offset, len(data)))
                self.offset += len(data)
            os.fdatasync(self.fd)
            for fut, off, n in done:
                fut.set_result((off, n))

    async def put(self, data: bytes) -> tuple[int, int]:
        fut: Future[tuple[int, int]] = Future()
        self.q.put((data, fut))
        return await asyncio.wrap_future(fut)

    def close(self) -> None:
        self.q.put(None)
        self.t.join()
        os.close(self.fd)


async def bench_store_blobs(root: Path, datas: list[bytes], concurrency: int) -> float:
    s = SQLiteStore(root, sweep_orphans=False)
    await s.open()
    try:
        return await run_tasks(datas, concurrency, s.blobs.put)
    finally:
        await s.close()


async def bench_lookups(root: Path, n: int) -> tuple[float, float]:
    s = SQLiteStore(root)
    await s.open()
    try:
        for i in range(200):
            await s.add_account(f"u{i}@example.com", "x")
        t0 = time.perf_counter()
        for i in range(n):
            assert await s.get_account(f"u{i % 200}@example.com") is not None
        inline = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(n):
            addr = f"u{i % 200}@example.com"
            assert await s.engine.read(lambda c, a=addr: c.execute(  # type: ignore[misc]
                "SELECT id FROM accounts WHERE address = ?", (a,)).fetchone()) is not None
        pooled = n / (time.perf_counter() - t0)
        return inline, pooled
    finally:
        await s.close()


async def bench_blob_segment(root: Path, datas: list[bytes], concurrency: int) -> float:
    root.mkdir(parents=True)  # noqa: ASYNC240 - setup, outside the timed part
    seg = SegmentWriter(root / "segment-000001")
    try:
        return await run_tasks(datas, concurrency, seg.put)
    finally:
        seg.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    datas = payloads(args.messages, args.size)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        naive = asyncio.run(bench_naive(root / "naive", datas, args.concurrency))
        staged, per_tx = asyncio.run(bench_store(root / "staged", datas, args.concurrency,
                                                 staged=True))
        two, per_tx2 = asyncio.run(bench_store(root / "two", datas, args.concurrency,
                                               staged=False))
        files = asyncio.run(bench_blob_files(root / "files", datas, args.concurrency))
        segs = asyncio.run(bench_store_blobs(root / "segs", datas, args.concurrency))
        segment = asyncio.run(bench_blob_segment(root / "segment", datas, args.concurrency))
        inline, pooled = asyncio.run(bench_lookups(root / "lookups", 20_000))
    print(f"{args.messages} deliveries of {args.size} B, {args.concurrency} concurrent tasks, "
          "all fsynced")
    print(f"  naive (fsync'd file + 1 commit/msg)   : {naive:8.0f} deliveries/s")
    print(f"  SQLiteStore, staged (1 batch/msg)     : {staged:8.0f} deliveries/s  "
          f"({staged / naive:.1f}x naive; {per_tx:.1f} deliveries per batch)")
    print(f"  SQLiteStore, commit + deliver         : {two:8.0f} deliveries/s  "
          f"({two / naive:.1f}x naive; {per_tx2:.1f} jobs per batch)")
    print("blob layer alone:")
    print(f"  per-file blobs (FileBlobStore)        : {files:8.0f} blobs/s")
    print(f"  segment blobs (SQLiteStore.blobs.put) : {segs:8.0f} blobs/s "
          f"({segs / files:.1f}x per-file)")
    print(f"  bare segment writer, 1 fdatasync/batch: {segment:8.0f} blobs/s "
          f"({segment / files:.1f}x per-file)")
    print("index lookups (get_account, sequential):")
    print(f"  on the loop's connection              : {inline:8.0f} /s  "
          f"({1e6 / inline:.1f} us each)")
    print(f"  through the reader thread pool        : {pooled:8.0f} /s  "
          f"({1e6 / pooled:.1f} us each)")


if __name__ == "__main__":
    main()
