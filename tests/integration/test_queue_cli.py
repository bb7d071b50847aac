"""Issue 4: `mailyard queue list|show|retry|delete` on a live server with a dead remote."""

from __future__ import annotations

import re
import smtplib
import socket
import time
from pathlib import Path

from mailyard.testing.dnsserver import DNSServer
from tests.integration.harness import PASSWORD, client_tls, make_server


def test_queue_commands(tmp_path: Path, dns_server: DNSServer) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nobody listens there: every attempt fails and is deferred
    dns_server.set("queue-cli.example", {"MX": [(10, "mx.queue-cli.example")]})
    dns_server.set("mx.queue-cli.example", {"A": ["127.0.0.1"]})
    srv = make_server(tmp_path, nameserver=dns_server.nameserver)
    cfg = srv.data / "mailyard.toml"
    cfg.write_text(cfg.read_text().replace("outbound_port = 25", f"outbound_port = {port}")
                   .replace("retry_initial = 1.0", "retry_initial = 3600.0"))
    srv.start()
    try:
        with smtplib.SMTP(*srv.addr("submission"), timeout=15) as s:
            s.starttls(context=client_tls())
            s.login("alice@example.test", PASSWORD)
            s.sendmail("alice@example.test", ["someone@queue-cli.example"],
                       b"From: alice@example.test\r\nSubject: queued\r\n\r\nhi\r\n")
        deadline = time.monotonic() + 20
        while True:  # the first attempt fails at once and the entry is deferred
            listing = srv.cli("queue", "list").stdout
            if "last error" in listing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        m = re.search(r"^([0-9a-f]+)  from <alice@example.test>", listing, re.M)
        assert m, listing
        entry = m.group(1)
        assert "someone@queue-cli.example" in listing and "attempts 1" in listing, listing
        shown = srv.cli("queue", "show", entry).stdout
        assert "sender: <alice@example.test>" in shown
        assert "someone@queue-cli.example: pending" in shown
        out = srv.cli("queue", "retry", entry).stdout
        assert "1 entry scheduled now; the running server (pid" in out, out
        # Woken by the CLI (SIGUSR1), the server tries at once, not at its next poll.
        deadline = time.monotonic() + 10
        while "attempts 2" not in srv.cli("queue", "list").stdout:
            assert time.monotonic() < deadline, srv.cli("queue", "list").stdout
            time.sleep(0.2)
        assert "scheduled now" in srv.cli("queue", "retry").stdout
        r = srv.cli("queue", "retry", "nosuchid", check=False)
        assert r.returncode == 2 and "no queue entry nosuchid" in r.stderr
        r = srv.cli("queue", "show", "nosuchid", check=False)
        assert r.returncode == 2 and "no queue entry" in r.stderr
        srv.cli("queue", "delete", entry)
        assert srv.cli("queue", "list").stdout.strip() == "queue is empty"
    finally:
        srv.stop()
