"""Delivers forever into a SQLiteStore and prints "uid blob_id" after each acknowledged delivery.

Run by test_crash.py, which kills it with SIGKILL mid-flight.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys

from mailyard.storage.models import DeliveryTarget
from mailyard.storage.sqlite import SQLiteStore


async def main(data_dir: str) -> None:
    store = SQLiteStore(data_dir)
    await store.open()
    acc = await store.get_account("crash@example.com")
    if acc is None:
        acc = await store.add_account("crash@example.com", "h")
    counter = itertools.count()

    async def worker(staged: bool) -> None:
        while True:
            n = next(counter)
            spool = store.blobs.new_spool()
            spool.write(b"Subject: crash %d\r\n\r\n" % n + os.urandom(2000).hex().encode())
            if staged:  # bytes written in the delivery's own batch
                ref = await store.blobs.stage(spool, prefix=b"Received: test\r\n")
                (d,) = await store.deliver(ref, [DeliveryTarget(acc.id)])
                spool.abort()
            else:  # commit, then deliver: two batches
                ref = await store.blobs.commit(spool, prefix=b"Received: test\r\n")
                (d,) = await store.deliver(ref, [DeliveryTarget(acc.id)])
            sys.stdout.write(f"{d.uid} {ref.blob_id}\n")
            sys.stdout.flush()

    await asyncio.gather(*(worker(i % 2 == 0) for i in range(10)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
