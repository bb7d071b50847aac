"""Start-up with damaged data: a truncated or corrupted blob, a corrupt queue record.

Promise (issue 6): the damaged item is quarantined and reported, everything else
keeps working. The server must start, serve the intact messages and deliver the
intact queue entries.
"""

from __future__ import annotations

import smtplib
import sqlite3
import time
from pathlib import Path

from tests.hardening.helpers import (
    PASSWORD,
    ThreadedSink,
    count_with,
    hardened_server,
    pop3_retr_all,
    send_mx,
    simple_message,
    wait_for,
)


def _file_with(data: Path, marker: bytes) -> tuple[Path, int]:
    """The stored file holding ``marker`` and its offset (per-file blob or segment)."""
    root = data / "blobs"
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if p.is_file() and rel[0] not in ("tmp", "quarantine"):
            at = p.read_bytes().find(marker)
            if at >= 0:
                return p, at
    raise AssertionError(f"no stored file holds {marker!r}")


def _quarantined(data: Path) -> list[Path]:
    q = data / "blobs" / "quarantine"
    return [p for p in q.rglob("*") if p.is_file()] if q.is_dir() else []


def test_truncated_blob_is_quarantined_and_the_rest_served(tmp_path: Path,
                                                            nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver)
    srv.start()
    try:
        send_mx(srv, ["alice@example.test"], simple_message("intact-one"))
        send_mx(srv, ["alice@example.test"], simple_message("damaged-one", body=("z" * 70 + "\r\n") * 70))
    finally:
        srv.stop()
    victim, at = _file_with(srv.data, b"damaged-one")
    victim.write_bytes(victim.read_bytes()[:at + 200])  # a torn write inside the message
    srv.start()
    try:
        msgs, _errors = pop3_retr_all(srv, "alice")  # -ERR for the damaged one is fine
        # The intact message is served; the damaged one is never served as if whole.
        assert count_with(msgs, b"intact-one") == 1
        assert not any(b"damaged-one" in m and len(m) < 5000 for m in msgs)
        assert _quarantined(srv.data), "the damaged blob was not quarantined"
        assert "quarantin" in srv.log().lower(), "the damage was not reported"
    finally:
        srv.stop()


def test_corrupted_blob_bytes_do_not_stop_the_server(tmp_path: Path, nameserver: str) -> None:
    """Flipped bytes inside one stored message: the server starts, serves the intact
    message and accepts new mail."""
    srv = hardened_server(tmp_path, nameserver)
    srv.start()
    try:
        send_mx(srv, ["alice@example.test"], simple_message("kept-blob"))
        send_mx(srv, ["alice@example.test"], simple_message("flipped-blob",
                                                          body=("z" * 70 + "\r\n") * 40))
    finally:
        srv.stop()
    victim, at = _file_with(srv.data, b"zzzzzzzzzz")
    raw = bytearray(victim.read_bytes())
    raw[at:at + 60] = b"Q" * 60
    victim.write_bytes(bytes(raw))
    srv.start()
    try:
        msgs, _errors = pop3_retr_all(srv, "alice")
        assert count_with(msgs, b"kept-blob") == 1
        send_mx(srv, ["alice@example.test"], simple_message("after-damage"))
        msgs, _errors = pop3_retr_all(srv, "alice")
        assert count_with(msgs, b"after-damage") == 1
    finally:
        srv.stop()


def _queue(srv_data: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(srv_data / "mailyard.sqlite3")
    try:
        return db.execute("SELECT q.id, r.address FROM queue q JOIN queue_recipients r "
                          "ON r.entry_id = q.id ORDER BY r.address").fetchall()
    finally:
        db.close()


def test_corrupt_queue_record_does_not_block_the_queue(tmp_path: Path, nameserver: str) -> None:
    with ThreadedSink() as sink:
        port = sink.port
    # The remote is down while we queue (its port is closed now).
    srv = hardened_server(tmp_path, nameserver, queue={"outbound_port": port,
                                                       "retry_initial": 1.0})
    srv.start()
    try:
        with smtplib.SMTP(*srv.addr("submission"), timeout=30) as s:
            s.login("alice@example.test", PASSWORD)
            for name in ("corrupt", "good"):
                s.sendmail("alice@example.test", [f"{name}@remote.example"],
                           simple_message(f"queued-{name}", sender="alice@example.test"))
        assert wait_for(lambda: len(_queue(srv.data)) == 2, 10)
    finally:
        srv.stop()
    db = sqlite3.connect(srv.data / "mailyard.sqlite3")
    db.execute("UPDATE queue_recipients SET state = 'garbage' WHERE address = ?",
               ("corrupt@remote.example",))
    db.execute("UPDATE queue SET next_attempt = 0")
    db.commit()
    db.close()
    with ThreadedSink(port=port) as sink2:  # the port the config names
        srv2 = srv
        srv2.start()
        try:
            ok = wait_for(lambda: any(b"queued-good" in m.content for m in sink2.messages), 15)
            time.sleep(0.5)
            assert srv2.proc is not None and srv2.proc.poll() is None, "server died"
        finally:
            srv2.stop()
    assert ok, "the intact queue entry was not delivered"
    assert not any(b"queued-corrupt" in m.content for m in sink2.messages)
