"""The MX listener in receiver processes (``[smtp] workers``): mail arrives through them
exactly as through the server itself, connection limits hold across them, a worker that
dies is replaced without losing acknowledged mail, and none outlives the server."""

from __future__ import annotations

import os
import signal
import smtplib
import time
from pathlib import Path

import pytest

from mailyard.config import ConfigError, parse_config
from tests.hardening.helpers import (
    count_with,
    dialog_in_data,
    first_octets,
    hardened_server,
    pop3_messages,
    send_mx,
    simple_message,
    wait_for,
)
from tests.integration.harness import Dialog, Server


def workers_of(srv: Server) -> list[int]:
    assert srv.proc is not None
    out = []
    for task in os.listdir(f"/proc/{srv.proc.pid}/task"):
        with open(f"/proc/{srv.proc.pid}/task/{task}/children") as f:
            for pid in f.read().split():
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    if b"mailyard.server.smtpworker" in c.read():
                        out.append(int(pid))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_receive_verify_and_deliver(tmp_path: Path, nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver, smtp={"workers": 2})
    srv.start()
    try:
        assert len(workers_of(srv)) == 2
        # Many sessions, so both workers take some; one message big enough to leave
        # memory (the server reads it from the worker's spool file).
        big = "x" * 998 + "\r\n"
        for i in range(12):
            send_mx(srv, ["alice@example.test"], simple_message(f"w-msg-{i:02d}"))
        send_mx(srv, ["alice@example.test", "bob@example.test"],
                simple_message("w-big", body=big * 400))
        alice = pop3_messages(srv, "alice")
        for i in range(12):
            assert count_with(alice, f"w-msg-{i:02d}".encode()) == 1
        stored = next(m for m in alice if b"w-big" in m)
        assert stored.endswith(big.encode() * 400)
        assert b"Authentication-Results: " in stored and b"spf=pass" in stored
        assert stored.startswith(b"Return-Path: <sender@remote.example>\r\n")
        assert count_with(pop3_messages(srv, "bob"), b"w-big") == 1
        # Unknown users and relaying are refused by the worker as by the server.
        with smtplib.SMTP(*srv.addr("smtp"), timeout=10) as s:
            s.ehlo("client.remote.example")
            s.mail("sender@remote.example")
            assert s.rcpt("nobody@example.test")[0] == 550
            assert s.rcpt("someone@elsewhere.example")[0] == 554
    finally:
        assert srv.stop() == 0


def test_per_ip_limit_holds_across_workers(tmp_path: Path, nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver, smtp={"workers": 2},
                          limits={"max_connections_per_ip": 4})
    srv.start()
    try:
        held = [Dialog(*srv.addr("smtp")) for _ in range(4)]
        for d in held:
            assert d.reply()[0] == 220
        for _ in range(3):  # whichever worker takes it, the count is the server's
            assert not first_octets(srv).startswith(b"220"), \
                "a 5th connection from one IP was served"
        held.pop().close()
        # The slot is given back once the worker saw the connection end and told the
        # server; until then a new connection is still refused (closed), so ask again.
        assert wait_for(lambda: first_octets(srv).startswith(b"220"), 10)
        for d in held:
            d.close()
    finally:
        srv.stop()


def test_a_killed_worker_is_replaced_and_loses_only_unacknowledged_mail(
        tmp_path: Path, nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver, smtp={"workers": 1},
                          limits={"max_connections_per_ip": 2})
    srv.start()
    try:
        (old,) = workers_of(srv)
        send_mx(srv, ["alice@example.test"], simple_message("before-kill"))
        d = dialog_in_data(srv, "alice@example.test")
        d.send(simple_message("cut-off")[:40])
        os.kill(old, signal.SIGKILL)
        assert d.closed(10)
        d.close()
        assert wait_for(lambda: len(workers_of(srv)) == 1 and workers_of(srv) != [old], 20)
        assert "SMTP worker 0 exited" in srv.log()
        # The dead worker's connections were counted out: two new ones are served.
        two = [Dialog(*srv.addr("smtp"), timeout=20) for _ in range(2)]
        for c in two:
            assert c.reply()[0] == 220
            c.close()
        send_mx(srv, ["alice@example.test"], simple_message("after-kill"))
        alice = pop3_messages(srv, "alice")
        assert count_with(alice, b"before-kill") == 1
        assert count_with(alice, b"after-kill") == 1
        assert count_with(alice, b"cut-off") == 0
    finally:
        srv.stop()


def test_sigterm_lets_a_worker_finish_its_message(tmp_path: Path, nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver, smtp={"workers": 1})
    srv.start()
    try:
        d = dialog_in_data(srv, "bob@example.test")
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # Delivered through the server, which waits for its workers before closing the store.
        assert d.cmd(simple_message("in-flight") + b".")[0] == 250
        d.cmd("QUIT")
        d.close()
        assert srv.proc.wait(30) == 0
        srv.proc = None
        srv.start()
        assert count_with(pop3_messages(srv, "bob"), b"in-flight") == 1
    finally:
        srv.stop()


def test_workers_exit_when_the_server_is_killed(tmp_path: Path, nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver, smtp={"workers": 2})
    srv.start()
    pids = workers_of(srv)
    assert len(pids) == 2
    srv.kill9()
    assert wait_for(lambda: not any(alive(p) for p in pids), 10), \
        "a worker outlived its server"
    # The listening socket went with them: the restarted server binds again.
    srv.start()
    send_mx(srv, ["alice@example.test"], simple_message("after-restart"))
    assert count_with(pop3_messages(srv, "alice"), b"after-restart") == 1
    srv.stop()


def test_sighup_reaches_the_workers(tmp_path: Path, nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver, smtp={"workers": 1})
    srv.start()
    try:
        (pid,) = workers_of(srv)
        send_mx(srv, ["alice@example.test"], simple_message("hup-1"))
        srv.add_user("carol@example.test")
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "reloaded configuration" in srv.log(), 20)
        # the same worker, its recipient cache dropped: carol is known at once
        assert workers_of(srv) == [pid]
        send_mx(srv, ["carol@example.test"], simple_message("hup-2"))
        assert count_with(pop3_messages(srv, "carol"), b"hup-2") == 1
    finally:
        srv.stop()


@pytest.mark.parametrize(("value", "message"), [
    ('"many"', 'smtp.workers: expected a number or "auto"'),
    ("-1", "smtp.workers: must not be negative"),
    ("65", "smtp.workers: at most 64"),
    ("1.5", "smtp.workers: expected an integer"),
])
def test_bad_worker_counts_are_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(f"[smtp]\nworkers = {value}\n", data_dir="/tmp")


def test_worker_counts_are_read() -> None:
    assert parse_config("[smtp]\nworkers = 3\n", data_dir="/tmp").smtp.workers == 3
    assert parse_config("", data_dir="/tmp").smtp.workers == 0
    assert parse_config('[smtp]\nworkers = "auto"\n', data_dir="/tmp").smtp.workers == "auto"
