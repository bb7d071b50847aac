"""Every accepted message has an id of its own that traces it: the "queued as" of the
250 reply, the ``id`` of its Received header, the log line that records it and, when it
has remote recipients, its queue entry (``mailyard queue show ID``). And a remote
address named twice in one transaction (two aliases forwarding to it, or the client
naming it twice) is one RCPT TO and one copy at the next hop."""

from __future__ import annotations

import re
import smtplib
import time
from pathlib import Path

from tests.hardening.helpers import (
    PASSWORD,
    ThreadedSink,
    hardened_server,
    pop3_retr_all,
    simple_message,
    wait_for,
)

_QUEUED = re.compile(rb"queued as ([0-9a-f]+)")


def test_each_message_has_its_own_traceable_id(tmp_path: Path, nameserver: str) -> None:
    with ThreadedSink() as sink:
        port = sink.port
    # The next hop is down: the remote copy stays in the queue, where its id is shown.
    srv = hardened_server(tmp_path, nameserver, queue={"outbound_port": port},
                          log={"level": "debug"})  # the per-message line is at DEBUG
    srv.start()
    try:
        ids = []
        with smtplib.SMTP(*srv.addr("smtp"), timeout=30) as s:
            s.ehlo("client.remote.example")
            for n in range(2):  # two messages on one connection
                s.mail("sender@remote.example")
                s.rcpt("alice@example.test")
                code, text = s.data(simple_message(f"traced-{n}"))
                assert code == 250, text
                m = _QUEUED.search(text)
                assert m, text
                ids.append(m.group(1).decode())
        assert ids[0] != ids[1]
        msgs, _ = pop3_retr_all(srv, "alice")
        for n, msg_id in enumerate(ids):
            (got,) = [m for m in msgs if f"traced-{n}".encode() in m]
            assert f" id {msg_id}".encode() in got.split(b"\r\n\r\n", 1)[0]
        assert wait_for(lambda: all(f"{i} accepted" in srv.log() for i in ids), 5), srv.log()

        with smtplib.SMTP(*srv.addr("submission"), timeout=30) as s:
            s.login("alice@example.test", PASSWORD)
            s.mail("alice@example.test")
            s.rcpt("carol@remote.example")
            code, text = s.data(simple_message("to-the-queue", sender="alice@example.test"))
        assert code == 250
        m = _QUEUED.search(text)
        assert m, text
        queued = m.group(1).decode()
        shown = srv.cli("queue", "show", queued)
        assert shown.returncode == 0 and "carol@remote.example" in shown.stdout, shown
    finally:
        srv.stop()


def test_one_remote_address_named_twice_is_sent_once(tmp_path: Path, nameserver: str) -> None:
    with ThreadedSink() as sink:
        srv = hardened_server(tmp_path, nameserver, queue={"outbound_port": sink.port})
        srv.cli("alias", "add", "one@example.test", "dest@remote.example")
        srv.cli("alias", "add", "two@example.test", "Dest@REMOTE.example", "bob@example.test")
        srv.start()
        try:
            with smtplib.SMTP(*srv.addr("smtp"), timeout=30) as s:
                s.ehlo("client.remote.example")
                s.sendmail("sender@remote.example", ["one@example.test", "two@example.test"],
                           simple_message("forwarded-once"))
            with smtplib.SMTP(*srv.addr("submission"), timeout=30) as s:
                s.login("alice@example.test", PASSWORD)
                s.sendmail("alice@example.test", ["x@remote.example", "x@remote.example"],
                           simple_message("named-twice", sender="alice@example.test"))
            assert wait_for(lambda: len(sink.messages) >= 2, 20), sink.messages
            time.sleep(0.5)  # a second copy would be on its way by now
            msgs, _ = pop3_retr_all(srv, "bob")  # the alias's local member has its copy
            assert sum(b"forwarded-once" in m for m in msgs) == 1
        finally:
            srv.stop()
    by_subject: dict[bytes, list[list[str]]] = {b"forwarded-once": [], b"named-twice": []}
    for m in sink.messages:
        for key, got in by_subject.items():
            if key in m.content:
                got.append(m.recipients)
    assert by_subject[b"forwarded-once"] == [["dest@remote.example"]]
    assert by_subject[b"named-twice"] == [["x@remote.example"]]
