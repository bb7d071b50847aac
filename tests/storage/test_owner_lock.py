"""One process owns a data directory; an admin process beside it never recovers or unlinks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailyard.storage.interface import StorageError
from mailyard.storage.models import DeliveryTarget
from mailyard.storage.sqlite import SQLiteStore


def test_second_owner_is_refused_and_admin_open_skips_recovery(tmp_path: Path) -> None:
    async def go() -> None:
        owner = SQLiteStore(tmp_path, require_owner=True)
        await owner.open()
        assert owner.owner
        acct = await owner.add_account("a@x.test", "h")
        # Bytes the owner wrote but has not committed yet: an admin open must leave them.
        seg_dir = tmp_path / "blobs" / "segments"
        blob = await owner.blobs.put(b"Subject: one\r\n\r\nbody\r\n")
        await owner.deliver(blob, [DeliveryTarget(acct.id)])
        segs = sorted(seg_dir.glob("*.seg"))
        assert segs
        segs[-1].write_bytes(segs[-1].read_bytes() + b"uncommitted tail written by the owner")
        size = segs[-1].stat().st_size
        (tmp_path / "blobs" / "tmp").mkdir(parents=True, exist_ok=True)
        spool_file = tmp_path / "blobs" / "tmp" / "in-progress"
        spool_file.write_bytes(b"a spool the owner is filling")

        with pytest.raises(StorageError, match="in use"):
            await SQLiteStore(tmp_path, require_owner=True).open()

        admin = SQLiteStore(tmp_path)
        await admin.open()
        assert not admin.owner
        await admin.add_account("b@x.test", "h")  # admin writes still work
        assert segs[-1].stat().st_size == size  # no truncation of the owner's tail
        assert spool_file.exists()  # no sweep of the owner's spools
        await admin.close()
        assert await owner.get_account("b@x.test") is not None
        await owner.close()

        # With nobody else around, the next owner recovers: the tail goes.
        again = SQLiteStore(tmp_path, require_owner=True)
        await again.open()
        assert again.owner
        assert segs[-1].stat().st_size < size
        assert not spool_file.exists()
        await again.close()

    asyncio.run(go())
