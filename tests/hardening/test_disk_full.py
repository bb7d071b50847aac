"""Disk full (RFC 5321 §4.5.3.1.9 / RFC 3463 X.3.1): the data directory lives on a
small tmpfs mounted by the test (we run as root in CI), so space runs out for real.

- under ``limits.min_free_bytes`` MAIL gets ``452 4.3.1``;
- ENOSPC in the middle of DATA gives 452/451, never 250, and the partial data is
  removed; the server stays up and accepts mail again once space returns;
- an IMAP APPEND that hits ENOSPC gets NO, leaves nothing behind, and works again
  once space returns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening.helpers import count_with, hardened_server, pop3_messages, simple_message
from tests.integration.harness import Dialog, Server

MIB = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> Path:
    """Fill the filesystem until about ``leave`` bytes are free."""
    filler = mnt / "filler"
    free = shutil.disk_usage(mnt).free
    with open(filler, "ab") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, free - leave))
        f.flush()
        os.fsync(f.fileno())
    return filler


def _server(tmp_path: Path, nameserver: str, min_free: int) -> Server:
    return hardened_server(tmp_path, nameserver, users=("alice",),
                           limits={"min_free_bytes": min_free})


def _spool_bytes(data: Path) -> int:
    tmp = data / "blobs" / "tmp"
    return sum(p.stat().st_size for p in tmp.iterdir()) if tmp.is_dir() else 0


def test_mail_refused_with_452_under_the_free_space_threshold(tmp_path: Path, tmpfs: Path,
                                                               nameserver: str) -> None:
    srv = _server(tmp_path, nameserver, 3 * MIB)
    srv.start()
    try:
        filler = _fill(tmpfs, 2 * MIB)
        d = Dialog(*srv.addr("smtp"))
        d.reply()
        d.cmd("EHLO client.remote.example")
        code, text = d.cmd("MAIL FROM:<sender@remote.example>")
        assert code == 452 and "4.3.1" in text, text
        filler.unlink()
        code, text = d.cmd("MAIL FROM:<sender@remote.example>")
        assert code == 250, text
        d.close()
    finally:
        srv.stop()


def test_enospc_mid_data_never_250_and_recovers(tmp_path: Path, tmpfs: Path,
                                                nameserver: str) -> None:
    srv = _server(tmp_path, nameserver, 0)
    srv.start()
    try:
        filler = _fill(tmpfs, 1 * MIB)
        free_before = shutil.disk_usage(tmpfs).free
        d = Dialog(*srv.addr("smtp"), timeout=30)
        d.reply()
        d.cmd("EHLO client.remote.example")
        assert d.cmd("MAIL FROM:<sender@remote.example>")[0] == 250
        assert d.cmd("RCPT TO:<alice@example.test>")[0] == 250
        assert d.cmd("DATA")[0] == 354
        line = b"y" * 998 + b"\r\n"
        body = simple_message("too-big-for-disk") + line * 3000  # ~3 MB
        code = None
        try:
            d.send(body + b".\r\n")
            code, _text = d.reply()
        except (OSError, EOFError):
            code = None  # the connection was dropped: still never a 250
        assert code in (None, 451, 452), code
        assert code is not None, "ENOSPC mid-DATA closed the connection without a reply"
        d.close()
        assert _spool_bytes(srv.data) == 0, "the partial spool was left on disk"
        assert shutil.disk_usage(tmpfs).free >= free_before - 256 * 1024
        assert srv.proc is not None and srv.proc.poll() is None, "the server died"
        filler.unlink()
        with smtplib.SMTP(*srv.addr("smtp"), timeout=30) as s:
            s.ehlo("client.remote.example")
            s.sendmail("sender@remote.example", ["alice@example.test"],
                       simple_message("after-space-returns"))
        msgs = pop3_messages(srv, "alice")
        assert count_with(msgs, b"after-space-returns") == 1
        assert count_with(msgs, b"too-big-for-disk") == 0
    finally:
        srv.stop()


def test_append_on_a_full_disk_is_no_and_recovers(tmp_path: Path, tmpfs: Path,
                                                  nameserver: str) -> None:
    import imaplib

    from tests.hardening.helpers import PASSWORD

    srv = hardened_server(tmp_path, nameserver, users=("alice",), imap=True,
                          limits={"min_free_bytes": 0})
    srv.start()
    try:
        filler = _fill(tmpfs, 1 * MIB)
        c = imaplib.IMAP4(*srv.addr("imap"), timeout=30)
        c.login("alice@example.test", PASSWORD)
        big = simple_message("append-too-big") + (b"z" * 998 + b"\r\n") * 3000  # ~3 MB
        typ, _data = c.append("INBOX", None, None, big)
        assert typ == "NO"
        assert _spool_bytes(srv.data) == 0, "the partial APPEND was left on disk"
        assert srv.proc is not None and srv.proc.poll() is None, "the server died"
        filler.unlink()
        typ, _data = c.append("INBOX", None, None, simple_message("append-after-space"))
        assert typ == "OK"
        c.select("INBOX")
        typ, found = c.search(None, "SUBJECT", "append-after-space")
        assert typ == "OK" and len(found[0].split()) == 1
        typ, found = c.search(None, "SUBJECT", "append-too-big")
        assert found[0] == b""
        c.logout()
    finally:
        srv.stop()
