"""File-descriptor exhaustion (issue 6): when accept() fails with EMFILE the server backs
off instead of spinning, keeps serving the connections it has, and recovers once
descriptors are free again."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from tests.hardening.helpers import hardened_server
from tests.integration.harness import Dialog

LIMIT = 160  # the server's RLIMIT_NOFILE: a flood of a few hundred sockets exhausts it


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_emfile_backs_off_without_spinning_and_recovers(tmp_path: Path, nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver, limits={"max_connections_per_ip": 5000,
                                                        "command_timeout": 60.0})
    srv.max_open_files = LIMIT
    srv.start()
    flood: list[socket.socket] = []
    try:
        before = Dialog(*srv.addr("smtp"))  # an established session must keep working
        assert before.reply()[0] == 220
        for _ in range(LIMIT + 100):
            with contextlib.suppress(OSError):
                s = socket.create_connection(srv.addr("smtp"), timeout=2)
                s.setblocking(False)
                flood.append(s)
        assert srv.proc is not None
        pid = srv.proc.pid
        time.sleep(0.5)
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        time.sleep(3)
        busy = (_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        assert busy < 0.5, f"server spins at {busy:.0%} CPU while out of file descriptors"
        assert before.cmd("EHLO still.here")[0] == 250
        assert srv.proc.poll() is None, "server died"
    finally:
        for s in flood:
            s.close()
    try:
        deadline = time.monotonic() + 15
        while True:  # the listener resumes accepting once descriptors are free
            try:
                d = Dialog(*srv.addr("smtp"), timeout=3)
                code, _ = d.reply()
                d.close()
                if code == 220:
                    break
            except (OSError, EOFError):  # refused, or accepted and dropped while short of fds
                pass
            assert time.monotonic() < deadline, "no new connection accepted after recovery"
            time.sleep(0.3)
        assert before.cmd("QUIT")[0] == 221
    finally:
        srv.stop()
