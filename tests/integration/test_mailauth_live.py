"""Issue 5 at the live server: SPF, DKIM, DMARC verdicts, policy, Authentication-Results, ARC.

The outside world is the loopback DNS server of conftest.py; each test publishes its own
sender domain so tests stay independent when they share it.
"""

from __future__ import annotations

import asyncio
import poplib
import re
import secrets
import smtplib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailyard.mailauth.dkim import generate_key, sign_message
from mailyard.testing.dnsserver import DNSServer
from mailyard.testing.smtpsink import SMTPSink
from tests.integration.harness import PASSWORD, Server, client_tls, make_server


def _domain(dns: DNSServer, *, spf: str, dmarc: str | None, dkim_txt: str | None = None,
            selector: str = "s1") -> str:
    d = f"s{secrets.token_hex(4)}.example"
    dns.set(d, {"TXT": [spf]})
    if dmarc:
        dns.set(f"_dmarc.{d}", {"TXT": [dmarc]})
    if dkim_txt:
        dns.set(f"{selector}._domainkey.{d}", {"TXT": [dkim_txt]})
    return d


def _message(domain: str, *, subject: str = "hello", body: bytes = b"Hello there.\r\n") -> bytes:
    return (f"From: Boss <ceo@{domain}>\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{secrets.token_hex(6)}@{domain}>\r\nDate: Tue, 24 Nov 2026 08:00:00 +0000\r\n"
            "\r\n").encode() + body


def _send_mx(server: Server, sender: str, msg: bytes) -> None:
    with smtplib.SMTP(*server.addr("smtp"), timeout=15) as s:
        s.sendmail(sender, ["bob@example.test"], msg)


def _inbox(server: Server) -> list[bytes]:
    p = poplib.POP3(*server.addr("pop3"), timeout=10)
    p.stls(client_tls())
    p.user("bob@example.test")
    p.pass_(PASSWORD)
    out = [b"\r\n".join(p.retr(i)[1]) + b"\r\n" for i in range(1, p.stat()[0] + 1)]
    p.quit()
    return out


def _auth_results(stored: bytes) -> str:
    m = re.search(rb"Authentication-Results: (.*?)\r\n(?![ \t])", stored, re.S)
    assert m, stored[:500]
    return m.group(1).decode()


def test_legitimate_message_passes_spf_dkim_dmarc(server: Server, dns_server: DNSServer) -> None:
    pem, txt = generate_key("rsa", 2048)
    d = _domain(dns_server, spf="v=spf1 ip4:127.0.0.0/8 -all", dmarc="v=DMARC1; p=reject",
                dkim_txt=txt)
    msg = _message(d)
    signed = sign_message(msg, domain=d, selector="s1", private_pem=pem) + msg
    _send_mx(server, f"ceo@{d}", signed)
    (stored,) = _inbox(server)
    ar = _auth_results(stored)
    assert ar.startswith(server_hostname(server))
    assert "spf=pass" in ar and "dkim=pass" in ar and "dmarc=pass" in ar, ar


def server_hostname(server: Server) -> str:
    text = (server.data / "mailyard.toml").read_text()
    m = re.search(r'^hostname = "([^"]+)"', text, re.M)
    assert m
    return m.group(1)


def test_spoofed_message_rejected_by_dmarc_reject(server: Server, dns_server: DNSServer) -> None:
    d = _domain(dns_server, spf="v=spf1 ip4:192.0.2.1 -all", dmarc="v=DMARC1; p=reject")
    with pytest.raises(smtplib.SMTPDataError) as e:
        _send_mx(server, f"ceo@{d}", _message(d))
    assert e.value.smtp_code == 550 and b"5.7.1" in e.value.smtp_error
    assert _inbox(server) == []
    assert _recorded(server, d) == [("fail", "reject")]


def test_quarantine_goes_to_junk(server: Server, dns_server: DNSServer) -> None:
    d = _domain(dns_server, spf="v=spf1 ip4:192.0.2.1 -all", dmarc="v=DMARC1; p=quarantine")
    _send_mx(server, f"ceo@{d}", _message(d))
    assert _inbox(server) == []
    db = sqlite3.connect(f"file:{server.data / 'mailyard.sqlite3'}?mode=ro", uri=True)
    (junk,) = db.execute(
        "select count(*) from messages m join mailboxes b on m.mailbox_id = b.id "
        "join accounts a on b.account_id = a.id "
        "where a.address = 'bob@example.test' and b.name = 'Junk'").fetchone()
    db.close()
    assert junk == 1
    assert _recorded(server, d) == [("fail", "quarantine")]


def _recorded(server: Server, domain: str) -> list[tuple[str, str]]:
    """The verdicts kept for DMARC aggregate reports."""
    db = sqlite3.connect(f"file:{server.data / 'mailyard.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute("select dmarc, disposition from auth_results where header_from = ?",
                          (domain,)).fetchall()
    finally:
        db.close()


def test_tampered_body_fails_dkim(server: Server, dns_server: DNSServer) -> None:
    pem, txt = generate_key("rsa", 2048)
    d = _domain(dns_server, spf="v=spf1 ip4:127.0.0.0/8 -all", dmarc="v=DMARC1; p=none",
                dkim_txt=txt)
    msg = _message(d)
    signed = sign_message(msg, domain=d, selector="s1", private_pem=pem) + msg
    _send_mx(server, f"ceo@{d}", signed.replace(b"Hello there.", b"Hello THERE."))
    (stored,) = _inbox(server)
    assert "dkim=fail" in _auth_results(stored)


def test_dns_failure_is_temporary_never_5xx(server: Server, dns_server: DNSServer) -> None:
    d = f"s{secrets.token_hex(4)}.example"
    dns_server.servfail.add(d)
    with smtplib.SMTP(*server.addr("smtp"), timeout=30) as s:
        s.ehlo("c")
        code, text = s.mail(f"ceo@{d}")
        assert code == 451 and text.startswith(b"4.")


def test_spf_verdict_serves_a_connection_and_a_dns_failure_is_asked_again(
        server: Server, dns_server: DNSServer) -> None:
    # TTL 0: the server's DNS cache keeps nothing, so every SPF evaluation asks.
    d = f"s{secrets.token_hex(4)}.example"
    dns_server.set(d, {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]}, ttl=0)
    other = f"s{secrets.token_hex(4)}.example"
    dns_server.set(other, {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"]}, ttl=0)
    with smtplib.SMTP(*server.addr("smtp"), timeout=30) as s:
        for n in range(3):
            s.sendmail(f"ceo@{d}", ["bob@example.test"], _message(d, subject=f"m{n}"))
        assert dns_server.asked[(d, "TXT")] == 1  # three messages, one SPF check
        s.sendmail(f"cfo@{d}", ["bob@example.test"], _message(d))  # another sender: its own
        assert dns_server.asked[(d, "TXT")] == 2
        # A temporary DNS failure is not kept: the same sender is checked again.
        dns_server.servfail.add(other)
        code, _ = s.mail(f"ceo@{other}")
        assert code == 451
        dns_server.servfail.discard(other)
        s.rset()
        code, _ = s.mail(f"ceo@{other}")
        assert code == 250
        s.rset()
    with smtplib.SMTP(*server.addr("smtp"), timeout=30) as s:  # a new connection asks anew
        s.sendmail(f"ceo@{d}", ["bob@example.test"], _message(d))
    assert dns_server.asked[(d, "TXT")] == 3
    stored = _inbox(server)
    assert len(stored) == 5
    assert all("spf=pass" in _auth_results(m) for m in stored)


def test_forged_authentication_results_are_removed(server: Server, dns_server: DNSServer) -> None:
    d = _domain(dns_server, spf="v=spf1 ip4:127.0.0.0/8 -all", dmarc=None)
    me = server_hostname(server)
    forged = f"Authentication-Results: {me}; dkim=pass header.d=bank.example\r\n".encode()
    _send_mx(server, f"ceo@{d}", forged + _message(d))
    (stored,) = _inbox(server)
    assert b"header.d=bank.example" not in stored
    assert stored.count(b"Authentication-Results:") == 1


@pytest.fixture
def sink() -> Iterator[SMTPSink]:
    loop = asyncio.new_event_loop()
    s = SMTPSink()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(s.start("127.0.0.1", 0))
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(10)
    yield s
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)


def test_alias_forward_is_arc_sealed(tmp_path: Path, dns_server: DNSServer, sink: SMTPSink) -> None:
    srv = make_server(tmp_path, nameserver=dns_server.nameserver)
    cfg = srv.data / "mailyard.toml"
    cfg.write_text(cfg.read_text().replace("outbound_port = 25", f"outbound_port = {sink.port}"))
    dns_server.set("forward-target.example", {"MX": [(10, "mx.forward-target.example")]})
    dns_server.set("mx.forward-target.example", {"A": ["127.0.0.1"]})
    records = srv.cli("dns", "records", "example.test").stdout
    m = re.search(r'^(\S+)\._domainkey\.example\.test\. IN TXT (.+)$', records, re.M)
    assert m, records
    txt = "".join(re.findall(r'"([^"]*)"', m.group(2)))
    dns_server.set(f"{m.group(1)}._domainkey.example.test", {"TXT": [txt]})
    srv.cli("alias", "add", "fwd@example.test", "someone@forward-target.example")
    srv.start()
    try:
        pem, key_txt = generate_key("rsa", 2048)
        d = _domain(dns_server, spf="v=spf1 ip4:127.0.0.0/8 -all", dmarc="v=DMARC1; p=none",
                    dkim_txt=key_txt)
        msg = _message(d)
        signed = sign_message(msg, domain=d, selector="s1", private_pem=pem) + msg
        with smtplib.SMTP(*srv.addr("smtp"), timeout=15) as s:
            s.sendmail(f"ceo@{d}", ["fwd@example.test"], signed)
        import time

        deadline = time.monotonic() + 20
        while not sink.messages and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sink.messages, srv.log()[-2000:]
        relayed = sink.messages[0].content
        assert relayed.startswith(b"ARC-Seal:") or b"\r\nARC-Seal:" in relayed.split(b"\r\n\r\n")[0]
        assert b"ARC-Message-Signature:" in relayed and b"ARC-Authentication-Results:" in relayed

        from mailyard.mailauth.arc import verify_arc
        from mailyard.mailauth.resolver import DnsResolver

        result = asyncio.run(verify_arc(relayed, resolver=DnsResolver([dns_server.nameserver])))
        assert result.result == "pass", result
    finally:
        srv.stop()
