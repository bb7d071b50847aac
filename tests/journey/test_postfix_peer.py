"""Issue 4 with a third peer that is not us: Postfix (Debian) as c.test.

Postfix -> mailyard: a client hands Postfix a message for bob@b.test; Postfix
relays it over TLS from its own address; b.test checks SPF (c.test publishes
``ip4:`` of Postfix) and DMARC (p=reject, aligned through SPF) and files it.

mailyard -> Postfix: alice@a.test submits to carol@c.test; a.test finds c.test's MX
in Knot, delivers with STARTTLS; Postfix puts it in carol's Maildir, DKIM-signed by
a.test.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import PASSWORD
from tests.journey import postfix as pf
from tests.journey.world import (
    SMTP_PORT,
    World,
    build_world,
    pop3_messages,
    unfolded_headers,
    wait_for,
)


def c_zone(ip: str) -> str:
    return f"""$ORIGIN c.test.
$TTL 60
@ IN SOA ns.c.test. hostmaster.c.test. 1 3600 600 86400 60
@ IN NS ns.c.test.
ns IN A 127.0.0.1
@ IN MX 10 mail.c.test.
mail IN A {ip}
@ IN TXT "v=spf1 ip4:{ip} -all"
_dmarc IN TXT "v=DMARC1; p=reject"
"""


@pytest.fixture
def three(tmp_path: Path) -> Iterator[tuple[World, pf.Postfix]]:
    why = pf.available()
    assert why is None, f"the Postfix peer cannot run: {why}"
    # c.test's zone needs the test's loopback prefix, which build_world picks.
    w = build_world(tmp_path, extra_zones_for=lambda prefix: {"c.test": c_zone(prefix + "4")})
    cert_dir = tmp_path / "c.test"
    cert_dir.mkdir()
    ip_c = w.ip(4)
    cert, key = w.ca.issue(cert_dir, "mail.c.test", ip_c)
    postfix = pf.Postfix(domain="c.test", ip=ip_c, port=SMTP_PORT,
                         routes={"a.test": f"{w.a.ip}:{SMTP_PORT}",
                                 "b.test": f"{w.b.ip}:{SMTP_PORT}"},
                         ca_file=w.ca.cert, cert=cert, key=key, mailboxes=("carol",))
    try:
        postfix.start()
        w.a.server.start()
        w.b.server.start()
        yield w, postfix
    finally:
        postfix.stop()
        w.stop()


def test_postfix_to_mailyard(three: tuple[World, pf.Postfix]) -> None:
    w, postfix = three
    msg = (b"From: Carol <carol@c.test>\r\nTo: bob@b.test\r\nSubject: from postfix\r\n"
           b"Message-ID: <pf-1@c.test>\r\n\r\nHello from Postfix.\r\n")
    with smtplib.SMTP(postfix.ip, postfix.port, timeout=10) as s:
        s.sendmail("carol@c.test", ["bob@b.test"], msg)

    ctx = w.ca.client_context()

    def got() -> list[bytes]:
        return [m for m in pop3_messages(w.b, "bob@b.test", ctx) if b"<pf-1@c.test>" in m]

    [m] = wait_for(got, timeout=30, what="Postfix's message at bob: " + postfix.log()[-2000:])  # type: ignore[misc]
    top = unfolded_headers(m, b"Received")[0].decode()
    assert f"from mail.c.test ([{postfix.ip}])" in top, top
    assert "by mail.b.test (mailyard) with ESMTPS " in top, top
    ar = next(v for v in unfolded_headers(m, b"Authentication-Results")
              if v.startswith(b"mail.b.test")).decode()
    assert "spf=pass" in ar and "dmarc=pass" in ar, ar
    assert m.endswith(b"\r\n\r\nHello from Postfix.\r\n")
    # Postfix logged the TLS session it made to us, verified against the test CA.
    assert "Trusted TLS connection established to " + w.b.ip in postfix.log() or \
        "Verified TLS connection established to " + w.b.ip in postfix.log(), postfix.log()


def test_mailyard_to_postfix(three: tuple[World, pf.Postfix]) -> None:
    w, postfix = three
    ctx = w.ca.client_context()
    host, port = w.a.server.addr("submission")
    msg = (b"From: Alice <alice@a.test>\r\nTo: carol@c.test\r\nSubject: to postfix\r\n"
           b"Message-ID: <to-pf-1@a.test>\r\n\r\nHello Carol.\r\n..dot-stuffed line\r\n")
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.starttls(context=ctx)
        s.login("alice@a.test", PASSWORD)
        assert s.sendmail("alice@a.test", ["carol@c.test"], msg) == {}

    [m] = wait_for(lambda: postfix.maildir("carol"), timeout=30,  # type: ignore[misc]
                   what="the message in carol's Maildir: " + w.a.server.log()[-2000:])
    m = m.replace(b"\r\n", b"\n")
    assert b"Message-ID: <to-pf-1@a.test>" in m
    assert m.endswith(b"\n\nHello Carol.\n..dot-stuffed line\n")
    assert b"DKIM-Signature:" in m and b"d=a.test" in m
    # Postfix's own trace line: from our host, over TLS (RFC 3848 "ESMTPS").
    assert f"from mail.a.test (unknown [{w.a.ip}])".encode() in m, m[:800]
    assert b"with ESMTPS id" in m
    wait_for(lambda: w.a.server.cli("queue", "list").stdout.strip() == "queue is empty",
             timeout=10, what="a.test's queue to drain")
