"""Storage benchmark: durable deliveries/s, ours vs. a naive baseline, in one run.

    python bench/bench_storage.py [--messages 2000] [--size 5000] [--concurrency 20]

Three measurements, same machine, same run, every write durable (fsync):

1. naive     - what a straightforward server does per message: write a file,
               fsync it, rename, fsync the directory, then one SQLite
               transaction (WAL, synchronous=FULL) inserting the message row.
               Concurrent tasks each run it in a thread; the single connection
               is serialised by a lock.
2. mailyard  - SQLiteStore: FileBlobStore.commit (parallel fsyncs, batched
               renames + directory fsyncs) + Store.deliver (group commit).
3. blob layer alone: per-file blobs (FileBlobStore) vs. an append-only segment
               file with one fdatasync per batch (DESIGN.md's alternative).
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
async def bench_store(root: Path, datas: list[bytes], concurrency: int) -> tuple[float, float]:
    s = SQLiteStore(root, sweep_orphans=False)
    await s.open()
    acc = await s.add_account("bench@example.com", "x")
    target = [DeliveryTarget(acc.id)]
    b0, j0 = s.engine.batches, s.engine.jobs_done

    async def one(data: bytes) -> None:
        spool = s.blobs.new_spool()
        spool.write(data)
        ref = await s.blobs.commit(spool)
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
        ours, per_tx = asyncio.run(bench_store(root / "store", datas, args.concurrency))
        files = asyncio.run(bench_blob_files(root / "files", datas, args.concurrency))
        segment = asyncio.run(bench_blob_segment(root / "segment", datas, args.concurrency))
    print(f"{args.messages} deliveries of {args.size} B, {args.concurrency} concurrent tasks, "
          "all fsynced")
    print(f"  naive (fsync'd file + 1 commit/msg): {naive:8.0f} deliveries/s")
    print(f"  mailyard SQLiteStore               : {ours:8.0f} deliveries/s  "
          f"({ours / naive:.1f}x naive; {per_tx:.1f} deliveries per SQL transaction)")
    print("blob layer alone:")
    print(f"  per-file blobs (FileBlobStore)     : {files:8.0f} blobs/s")
    print(f"  append-only segment, 1 fdatasync/batch: {segment:5.0f} blobs/s "
          f"({segment / files:.1f}x per-file)")


if __name__ == "__main__":
    main()
