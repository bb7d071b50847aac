"""Outbound queue rows (one entry, its recipients) <-> QueueEntry. Runs in engine threads."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from mailyard.storage.models import BlobRef, QueueEntry, QueueRecipient, RecipientState

_ENTRY_COLS = ("id, sender, blob_id, blob_size, created, next_attempt, attempts, ret, envid, "
               "smtputf8, body_8bit, last_error, delay_warned, tls_report")


log = logging.getLogger("mailyard.queue")

def _pending(recipients: Sequence[QueueRecipient]) -> int:
    return sum(1 for r in recipients if r.state == RecipientState.PENDING)


def insert(conn: sqlite3.Connection, e: QueueEntry) -> None:
    conn.execute(
        f"INSERT INTO queue ({_ENTRY_COLS}, pending) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (e.id, e.sender, e.blob.blob_id, e.blob.size, e.created, e.next_attempt, e.attempts,
         e.ret, e.envid, int(e.smtputf8), int(e.body_8bit), e.last_error, int(e.delay_warned),
         int(e.tls_report), _pending(e.recipients)),
    )
    write_recipients(conn, e.id, e.recipients)


def write_recipients(conn: sqlite3.Connection, entry_id: str,
                     recipients: Sequence[QueueRecipient]) -> None:
    conn.execute("DELETE FROM queue_recipients WHERE entry_id = ?", (entry_id,))
    conn.executemany(
        "INSERT INTO queue_recipients (entry_id, idx, address, state, notify, orcpt, "
        "last_status, attempts) VALUES (?,?,?,?,?,?,?,?)",
        [(entry_id, i, r.address, str(r.state), r.notify, r.orcpt, r.last_status, r.attempts)
         for i, r in enumerate(recipients)],
    )


def update(conn: sqlite3.Connection, entry_id: str, recipients: Sequence[QueueRecipient],
           next_attempt: float, attempts: int, last_error: str,
           delay_warned: bool | None = None) -> bool:
    cur = conn.execute(
        "UPDATE queue SET next_attempt = ?, attempts = ?, last_error = ?, pending = ?, "
        "delay_warned = coalesce(?, delay_warned) WHERE id = ?",
        (next_attempt, attempts, last_error, _pending(recipients),
         None if delay_warned is None else int(delay_warned), entry_id),
    )
    if cur.rowcount == 0:
        return False
    write_recipients(conn, entry_id, recipients)
    return True


def _load(conn: sqlite3.Connection, rows: list[tuple]) -> list[QueueEntry]:
    if not rows:
        return []
    ids = [r[0] for r in rows]
    rcpts: dict[str, list[QueueRecipient]] = {i: [] for i in ids}
    corrupt: set[str] = set()
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        marks = ",".join("?" * len(part))
        for entry_id, address, state, notify, orcpt, last_status, attempts in conn.execute(
            "SELECT entry_id, address, state, notify, orcpt, last_status, attempts "
            f"FROM queue_recipients WHERE entry_id IN ({marks}) ORDER BY entry_id, idx",
            part,
        ):
            try:
                rstate = RecipientState(state)
            except ValueError:
                corrupt.add(entry_id)
                continue
            rcpts[entry_id].append(QueueRecipient(
                address=address, state=rstate, notify=notify, orcpt=orcpt,
                last_status=last_status, attempts=attempts))
    for entry_id in corrupt:
        # One damaged record must not stop the queue: leave it where it is (an operator
        # can inspect it with `mailyard queue show`) and deliver everything else.
        log.error("queue entry %s has a damaged recipient record: skipped", entry_id)
    return [
        QueueEntry(
            id=r[0], sender=r[1], blob=BlobRef(blob_id=r[2], size=r[3]),
            recipients=tuple(rcpts[r[0]]), created=r[4], next_attempt=r[5], attempts=r[6],
            ret=r[7], envid=r[8], smtputf8=bool(r[9]), body_8bit=bool(r[10]), last_error=r[11],
            delay_warned=bool(r[12]), tls_report=bool(r[13]),
        )
        for r in rows
        if r[0] not in corrupt
    ]


def get(conn: sqlite3.Connection, entry_id: str) -> QueueEntry | None:
    rows = conn.execute(f"SELECT {_ENTRY_COLS} FROM queue WHERE id = ?", (entry_id,)).fetchall()
    got = _load(conn, rows)
    return got[0] if got else None


def list_all(conn: sqlite3.Connection) -> list[QueueEntry]:
    rows = conn.execute(f"SELECT {_ENTRY_COLS} FROM queue ORDER BY created, id").fetchall()
    return _load(conn, rows)


def due(conn: sqlite3.Connection, now: float, limit: int) -> list[QueueEntry]:
    rows = conn.execute(
        f"SELECT {_ENTRY_COLS} FROM queue WHERE pending > 0 AND next_attempt <= ? "
        "ORDER BY next_attempt, created, id LIMIT ?",
        (now, limit),
    ).fetchall()
    return _load(conn, rows)
