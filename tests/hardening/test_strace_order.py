"""The order of durable writes, seen from the kernel (RFC 5321 §6.1; DESIGN.md
"Nothing lost"): for one SMTP transaction the message octets are synced
(fsync/fdatasync of the blob or segment file), then — with per-file blobs — renamed
into place and the directory synced, then the SQLite commit syncs its WAL, and only
then is ``250 ... queued`` written to the socket.

The server runs under ``strace -f -y`` (``-y`` prints the path behind each fd), so
the test needs no knowledge of the storage internals beyond "under blobs/" and
"the SQLite database files"; it accepts both the per-file and the append-only
segment design.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.hardening.helpers import hardened_server, simple_message

SYNCS = ("fsync", "fdatasync")
_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<rest>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)")


@dataclass
class Call:
    pos: int  # order of completion
    name: str
    args: str
    result: str


def parse_strace(text: str) -> list[Call]:
    """Calls in order of completion ("unfinished ... resumed" pairs joined)."""
    calls: list[Call] = []
    pending: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        pid, rest = m.group("pid"), m.group("rest")
        if rest.startswith("<..."):
            r = re.match(r"<\.\.\. (\w+) resumed>(.*)\)\s*=\s*(.*)$", rest)
            if r and pid in pending:
                name, args = pending.pop(pid)
                calls.append(Call(len(calls), name, args + r.group(2), r.group(3)))
            continue
        c = _CALL.match(rest)
        if not c:
            continue
        if rest.endswith("<unfinished ...>"):
            pending[pid] = (c.group("name"), c.group("args").removesuffix("<unfinished ...>"))
            continue
        args, _, result = c.group("args").rpartition(") = ")
        calls.append(Call(len(calls), c.group("name"), args, result))
    return calls


def _fd_path(args: str) -> str:
    m = re.match(r"\s*-?\d+<(.*?)>", args)
    return m.group(1) if m else ""


def check_order(calls: list[Call], data_dir: Path) -> dict[str, int]:
    blobs = str(data_dir / "blobs") + "/"
    reply = [c for c in calls
             if c.name in ("write", "writev", "sendto", "sendmsg") and ("TCP" in c.args or "socket:" in c.args)
             and "250 2.0.0 Ok: queued" in c.args]
    assert reply, "the 250 reply to DATA was not seen"
    r250 = reply[0].pos

    def is_data_sync(c: Call) -> bool:
        p = _fd_path(c.args)
        return (c.name in SYNCS and p.startswith(blobs) and c.result.startswith("0")
                and not os.path.isdir(p))

    def is_db_sync(c: Call) -> bool:
        p = _fd_path(c.args)
        return c.name in SYNCS and ".sqlite3" in p and c.result.startswith("0")

    data = [c.pos for c in calls if is_data_sync(c) and c.pos < r250]
    assert data, "no fsync/fdatasync of message data under blobs/ before the 250"
    d = data[-1]
    renames = [c for c in calls if c.name.startswith("rename") and c.pos > d and c.pos < r250
               and blobs in c.args]
    mark = d
    if renames:  # per-file blobs: rename into place, then fsync the directory
        rn = renames[-1].pos
        dirs = [c.pos for c in calls if c.name in SYNCS and c.pos > rn and c.pos < r250
                and os.path.isdir(_fd_path(c.args)) and _fd_path(c.args).startswith(str(data_dir))]
        assert dirs, "blob renamed into place but its directory was not fsynced before the 250"
        mark = dirs[0]
    db = [c.pos for c in calls if is_db_sync(c) and mark < c.pos < r250]
    assert db, "no SQLite commit sync between the message data sync and the 250"
    return {"data": d, "db": db[-1], "reply": r250}


def test_parse_strace_joins_unfinished_calls() -> None:
    text = ("10 fsync(7</d/blobs/tmp/x> <unfinished ...>\n"
            "11 write(9<TCP:[1]>, \"250 2.0.0 Ok: queued\\r\\n\", 22) = 22\n"
            "10 <... fsync resumed>) = 0\n")
    calls = parse_strace(text)
    assert [c.name for c in calls] == ["write", "fsync"]
    assert _fd_path(calls[1].args) == "/d/blobs/tmp/x"


def test_data_synced_before_index_commit_before_250(tmp_path: Path, nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver)
    trace = tmp_path / "strace.out"
    runtime = srv.data / "run" / "listeners.json"
    log = open(tmp_path / "server.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        ["strace", "-f", "-y", "-s", "200", "-o", str(trace),
         "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,write,writev,sendto,sendmsg",
         sys.executable, "-m", "mailyard.cli.main", "--data", str(srv.data), "serve"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not runtime.exists():
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "server under strace did not start"
            time.sleep(0.1)
        info = json.loads(runtime.read_text())
        port = info["smtp"]["port"]
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.ehlo("client.remote.example")
            s.sendmail("sender@remote.example", ["alice@example.test"],
                       simple_message(f"strace-{time.time_ns()}"))
    finally:
        # Kill the traced server itself (strace exits with it); SIGTERM to strace
        # would only detach it and wait.
        if runtime.exists():
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.kill(int(json.loads(runtime.read_text())["pid"]), signal.SIGKILL)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    order = check_order(parse_strace(trace.read_text(errors="replace")), srv.data)
    assert order["data"] < order["db"] < order["reply"]
