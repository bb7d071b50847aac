"""Resource exhaustion against the live server: slowloris floods cut by deadlines
while a real client still gets in, a 10 B/s DATA sender cut by the minimum data
rate, the per-IP connection limit, and half-open TLS handshakes timing out."""

from __future__ import annotations

import contextlib
import resource
import select
import smtplib
import socket
import time
from pathlib import Path

from tests.hardening.helpers import (
    count_with,
    first_octets,
    hardened_server,
    pop3_messages,
    simple_message,
)
from tests.integration.harness import Dialog, client_tls

FLOOD = 2000
HALF_OPEN_TLS = 1000


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def _closed_by_peer(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has closed (EOF or reset readable now)."""
    closed = 0
    for i in range(0, len(socks), 500):
        part = socks[i:i + 500]
        poller = select.poll()
        for s in part:
            poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
        ready = {fd for fd, _ in poller.poll(0)}
        for s in part:
            if s.fileno() not in ready:
                continue
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        closed += 1
                        break
            except BlockingIOError:
                continue
            except OSError:
                closed += 1
    return closed


def test_slowloris_and_half_open_tls_are_cut_while_real_clients_get_in(
        tmp_path: Path, nameserver: str) -> None:
    _raise_nofile(3 * (FLOOD + HALF_OPEN_TLS) + 1000)
    srv = hardened_server(tmp_path, nameserver,
                          limits={"command_timeout": 3.0, "preauth_timeout": 3.0,
                                  "max_connections_per_ip": 10 * FLOOD,
                                  "max_connections": 10 * FLOOD})
    srv.start()
    flood: list[socket.socket] = []
    half_open: list[socket.socket] = []
    try:
        for i in range(FLOOD):
            s = socket.create_connection(srv.addr("smtp" if i % 2 else "pop3"), timeout=10)
            s.setblocking(False)
            flood.append(s)
        for _ in range(HALF_OPEN_TLS):
            s = socket.create_connection(srv.addr("submissions"), timeout=10)
            s.setblocking(False)
            half_open.append(s)
        started = time.monotonic()
        # Half of the SMTP ones trickle a byte now and then: a command that never ends.
        trickle = flood[1::4]
        for s in trickle:
            with contextlib.suppress(OSError):
                s.send(b"N")
        # A real client gets in over SMTP, POP3 and implicit TLS meanwhile.
        with smtplib.SMTP(*srv.addr("smtp"), timeout=20) as c:
            c.ehlo("client.remote.example")
            c.sendmail("sender@remote.example", ["alice@example.test"],
                       simple_message("through-the-flood"))
        assert count_with(pop3_messages(srv, "alice"), b"through-the-flood") == 1
        with socket.create_connection(srv.addr("submissions"), timeout=20) as raw, \
                client_tls().wrap_socket(raw, server_hostname="mail.example.test") as tls:
            assert tls.recv(1024).startswith(b"220")
        for _ in range(3):
            time.sleep(1.0)
            for s in trickle:
                with contextlib.suppress(OSError):
                    s.send(b"O")
        # Command/pre-auth deadlines: 3 s, however the bytes trickle.
        deadline = started + 15
        closed = 0
        while time.monotonic() < deadline:
            closed = _closed_by_peer(flood)
            if closed == FLOOD:
                break
            time.sleep(0.5)
        assert closed == FLOOD, f"{FLOOD - closed} slowloris connections still open"
        # TLS handshakes: the listener's ssl_handshake_timeout (30 s).
        tls_deadline = started + 45
        closed_tls = 0
        while time.monotonic() < tls_deadline:
            closed_tls = _closed_by_peer(half_open)
            if closed_tls == HALF_OPEN_TLS:
                break
            time.sleep(1.0)
        assert closed_tls == HALF_OPEN_TLS, f"{HALF_OPEN_TLS - closed_tls} half-open TLS left"
        assert srv.proc is not None and srv.proc.poll() is None
    finally:
        for s in flood + half_open:
            s.close()
        srv.stop()


def test_slow_data_sender_is_cut_by_the_minimum_rate(tmp_path: Path, nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver,
                          limits={"data_timeout": 2.0, "command_timeout": 30.0})
    srv.start()
    try:
        d = Dialog(*srv.addr("smtp"))
        d.reply()
        d.cmd("EHLO client.remote.example")
        assert d.cmd("MAIL FROM:<sender@remote.example>")[0] == 250
        assert d.cmd("RCPT TO:<alice@example.test>")[0] == 250
        assert d.cmd("DATA")[0] == 354
        d.send(b"Subject: slow-sender\r\n\r\n")
        t = time.monotonic()
        cut = None
        while time.monotonic() - t < 15:
            try:
                d.send(b"x" * 9 + b"\n")  # 10 B/s
            except OSError:
                cut = time.monotonic() - t
                break
            d.sock.settimeout(1.0)
            try:
                data = d.sock.recv(1024)
            except TimeoutError:
                continue
            except OSError:
                cut = time.monotonic() - t
                break
            assert data.startswith(b"421") or data == b"", data
            cut = time.monotonic() - t
            break
        assert cut is not None and cut < 10, "a 10 B/s DATA sender was never cut"
        d.close()
        assert count_with(pop3_messages(srv, "alice"), b"slow-sender") == 0
    finally:
        srv.stop()


def test_per_ip_connection_limit(tmp_path: Path, nameserver: str) -> None:
    srv = hardened_server(tmp_path, nameserver, limits={"max_connections_per_ip": 5})
    srv.start()
    try:
        held = [Dialog(*srv.addr("smtp")) for _ in range(5)]
        for d in held:
            assert d.reply()[0] == 220
        assert not first_octets(srv).startswith(b"220"), \
            "the 6th connection from one IP was served"
        held.pop().close()
        time.sleep(0.3)
        again = Dialog(*srv.addr("smtp"))
        assert again.reply()[0] == 220, "a slot freed by a closed connection was not reused"
        again.close()
        for d in held:
            d.close()
    finally:
        srv.stop()
