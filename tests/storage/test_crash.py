"""SIGKILL in the middle of deliveries loses nothing acknowledged and leaves nothing partial."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from mailyard.storage.sqlite import SQLiteStore

WORKER = Path(__file__).with_name("crash_worker.py")


def run_and_kill(data_dir: Path, lines_before_kill: int) -> list[tuple[int, str]]:
    proc = subprocess.Popen([sys.executable, str(WORKER), str(data_dir)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked: list[tuple[int, str]] = []
    try:
        for line in proc.stdout:
            uid, blob_id = line.split()
            acked.append((int(uid), blob_id))
            if len(acked) >= lines_before_kill:
                break
        os.kill(proc.pid, signal.SIGKILL)
        # what was printed before the kill was acknowledged too
        for line in proc.stdout:
            uid, blob_id = line.split()
            acked.append((int(uid), blob_id))
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return acked


def check(data_dir: Path, acked: list[tuple[int, str]]) -> int:
    async def main() -> int:
        store = SQLiteStore(data_dir)
        await store.open()
        try:
            acc = await store.get_account("crash@example.com")
            assert acc is not None
            inbox = await store.get_mailbox(acc.id, "INBOX")
            assert inbox is not None
            msgs = {m.uid: m for m in await store.list_messages(inbox.id)}
            for uid, blob_id in acked:
                assert uid in msgs, f"acknowledged uid {uid} lost"
                assert msgs[uid].blob_id == blob_id
            for m in msgs.values():  # no partial message: every body present and intact
                data = await store.blobs.read(m.blob_id)
                assert len(data) == m.size
                assert hashlib.sha256(data).hexdigest() == m.blob_id
            assert inbox.uidnext > max(msgs)
            return len(msgs)
        finally:
            await store.close()

    return asyncio.run(main())


def test_sigkill_during_deliveries(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    total_acked: list[tuple[int, str]] = []
    for round_ in range(3):
        acked = run_and_kill(data_dir, 60 + 40 * round_)
        assert len({uid for uid, _ in acked}) == len(acked)  # distinct UIDs
        total_acked += acked
        stored = check(data_dir, total_acked)
        assert stored >= len(total_acked)
    # UIDs are never reused across crashes
    assert len({uid for uid, _ in total_acked}) == len(total_acked)
    # no temporary files survive the reopen, and no orphan blobs
    assert list((data_dir / "blobs" / "tmp").iterdir()) == []
    db = sqlite3.connect(data_dir / "mailyard.sqlite3")
    try:
        rows = dict(db.execute("SELECT blob_id, refcount FROM blobs"))
        counts = dict(db.execute("SELECT blob_id, count(*) FROM messages GROUP BY blob_id"))
        locs = {r[0] for r in db.execute("SELECT blob_id FROM blob_locs")}
        ends = dict(db.execute("SELECT segment, max(start + length) FROM blob_locs "
                               "GROUP BY segment"))
    finally:
        db.close()
    assert rows == counts
    assert locs == set(rows)  # every stored body is referenced, every reference is stored
    # the reopen cut every segment back to its last indexed byte (unacknowledged tails)
    segs = {int(p.stem): p.stat().st_size for p in (data_dir / "blobs" / "segments").iterdir()}
    assert segs == ends
    assert not list((data_dir / "blobs").glob("??/??/*"))  # no per-file blobs
