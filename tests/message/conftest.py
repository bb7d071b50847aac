"""Dovecot as a reference oracle: run its ``imap`` binary in PREAUTH mode over
stdin/stdout (no network), APPEND a corpus, FETCH items, and hand back the raw
untagged responses for byte-for-byte comparison with ours.

scripts/test.sh installs dovecot-imapd on every developer machine and in CI.
Dovecot refuses mail access as root, so when we are root the binary runs as
``nobody`` (setpriv) on a directory owned by nobody.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

IMAP_BIN = "/usr/lib/dovecot/imap"


def run_dovecot(tmp: Path, messages: Sequence[bytes], commands: Sequence[bytes]
                ) -> list[bytes]:
    """APPEND ``messages`` to INBOX, SELECT it, run each command (without tag)
    one at a time, and return each command's untagged output."""
    home = tmp / "home"
    for sub in ("cur", "new", "tmp"):
        (home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
    uid, gid = os.getuid(), os.getgid()
    prefix: list[str] = []
    if uid == 0:
        uid = gid = 65534
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    conf = tmp / "dovecot.conf"
    conf.write_text(
        f"mail_location = maildir:{home}/Maildir\n"
        f"base_dir = {tmp}/run\nstate_dir = {tmp}/state\n"
        "log_path = /dev/null\nssl = no\n"
        f"mail_uid = {uid}\nmail_gid = {gid}\nfirst_valid_uid = 0\nfirst_valid_gid = 0\n"
        )
    if prefix:
        for path in [tmp, *tmp.rglob("*")]:
            os.chown(path, uid, gid)
    env = {"USER": "nobody", "HOME": str(home), "PATH": "/usr/bin:/bin"}
    # One command at a time: Dovecot runs pipelined FETCHes in parallel and
    # interleaves their responses.
    proc = subprocess.Popen([*prefix, IMAP_BIN, "-c", str(conf)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def command(tag: bytes, data: bytes) -> bytes:
        stdin.write(tag + b" " + data + b"\r\n")
        stdin.flush()
        out = bytearray()
        while True:
            line = stdout.readline()
            assert line, f"dovecot closed the connection: {bytes(out)!r}"
            if re.match(rb"%s (OK|NO|BAD)" % re.escape(tag), line):
                return bytes(out)
            out += line

    try:
        stdout.readline()  # * PREAUTH
        for i, msg in enumerate(messages):
            command(b"p%d" % i, b"APPEND INBOX {%d+}\r\n" % len(msg) + msg)
        command(b"s", b"SELECT INBOX")
        return [command(b"f%d" % j, cmd) for j, cmd in enumerate(commands)]
    finally:
        stdin.close()
        proc.wait(timeout=30)


@pytest.fixture
def dovecot() -> Iterator[Callable[[Sequence[bytes], Sequence[bytes]], list[bytes]]]:
    assert os.path.exists(IMAP_BIN), "dovecot-imapd is installed by scripts/test.sh"
    # Not tmp_path: pytest's base directory is private to us (0700), and the
    # binary may run as nobody. A fresh mkdtemp under /tmp is reachable.
    tmp = Path(tempfile.mkdtemp(prefix="mailyard-dovecot-"))

    def run(messages: Sequence[bytes], commands: Sequence[bytes]) -> list[bytes]:
        return run_dovecot(tmp, messages, commands)

    try:
        yield run
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
