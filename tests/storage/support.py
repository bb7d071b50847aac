"""Helpers shared by the segment-storage tests of the SQLite backend."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mailyard.storage.models import Delivered, DeliveryTarget
from mailyard.storage.sqlite import SQLiteStore


def segment_sizes(data_dir: Path) -> dict[int, int]:
    d = data_dir / "blobs" / "segments"
    return {int(p.stem): p.stat().st_size for p in d.iterdir()} if d.exists() else {}


def body(n: int, size: int = 3000) -> bytes:
    head = b"Subject: seg %d\r\n\r\n" % n
    return head + hashlib.sha256(b"%d" % n).hexdigest().encode() * (size // 64) + b"\r\n"


async def opened(data_dir: Path, **kw: object) -> SQLiteStore:
    s = SQLiteStore(data_dir, **kw)  # type: ignore[arg-type]
    await s.open()
    return s


async def deliver_staged(s: SQLiteStore, data: bytes, targets: list[DeliveryTarget], *,
                         prefix: bytes = b"") -> tuple[str, list[Delivered]]:
    """Stage ``data`` (after ``prefix``) in a spool and deliver it: (blob id, deliveries)."""
    spool = s.blobs.new_spool()
    spool.write(data)
    ref = await s._segs.stage(spool, prefix=prefix)
    try:
        return ref.blob_id, await s.deliver(ref, targets)
    finally:
        spool.abort()


async def staged_deliver(s: SQLiteStore, acc_id: int, data: bytes, *, prefix: bytes = b"",
                         box: str = "INBOX") -> tuple[str, int]:
    blob_id, (d,) = await deliver_staged(s, data, [DeliveryTarget(acc_id, box)], prefix=prefix)
    return blob_id, d.uid
