"""Issue 4, the two-domain journey: alice@a.test and bob@b.test on two mailyard
instances (two loopback addresses), with a real DNS server (Knot) publishing MX, A,
SPF, DKIM, DMARC p=reject, MTA-STS (mode enforce) and TLS-RPT for both.

alice submits over 587 (STARTTLS + AUTH, certificate verified against the test CA);
a.test signs with DKIM, fetches b.test's MTA-STS policy over HTTPS, delivers over
verified TLS; b.test checks SPF, DKIM and DMARC; bob reads over POP3 and IMAP,
replies, and the reply reaches alice the same way. A message
forging From: ceo@a.test, sent straight to b.test's MX from another address, is
refused 550 5.7.1 (DMARC p=reject, RFC 7489 §6.6.4).
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import json
import smtplib
import ssl
import urllib.request

import pytest

from mailyard.queue.mtasts import parse_policy
from tests.integration.harness import PASSWORD
from tests.journey.world import (
    HTTPS_PORT,
    Instance,
    World,
    pop3_messages,
    unfolded_headers,
    wait_for,
)


def submit(inst: Instance, ctx: ssl.SSLContext, user: str, rcpt: str, message: bytes) -> None:
    host, port = inst.server.addr("submission")
    with smtplib.SMTP(host, port, local_hostname="client.example.net", timeout=10) as s:
        s.ehlo()
        s.starttls(context=ctx)  # verifies the CA-signed certificate for the IP SAN
        s.ehlo()
        s.login(user, PASSWORD)
        assert s.sendmail(user, [rcpt], message) == {}


def arrived(inst: Instance, user: str, ctx: ssl.SSLContext, marker: bytes, n: int = 1
            ) -> list[bytes]:
    def look() -> list[bytes]:
        found = [m for m in pop3_messages(inst, user, ctx) if marker in m]
        return found if len(found) >= n else []

    return wait_for(look, timeout=30, what=f"{marker!r} in {user}'s INBOX")  # type: ignore[return-value]


def auth_results(message: bytes, authserv: str) -> bytes:
    ours = [v for v in unfolded_headers(message, b"Authentication-Results")
            if v.startswith(authserv.encode())]
    assert len(ours) == 1, unfolded_headers(message, b"Authentication-Results")
    return ours[0]


def check_transport(message: bytes, *, sender: Instance, receiver: Instance) -> None:
    """The topmost Received was added by the receiving MX, for a TLS session from the
    sending MX's address (RFC 3848 ESMTPS), and the message carries the sender's DKIM
    signature, checked by the receiver."""
    received = unfolded_headers(message, b"Received")
    top = received[0].decode()
    assert f"from {sender.hostname} ([{sender.ip}])" in top, top
    assert f"by {receiver.hostname} (mailyard) with ESMTPS " in top, top
    sigs = unfolded_headers(message, b"DKIM-Signature")
    assert any(b"d=" + sender.domain.encode() + b";" in s.replace(b" ", b"") for s in sigs), sigs
    ar = auth_results(message, receiver.hostname).decode()
    for expected in (f"dkim=pass header.d={sender.domain}", "spf=pass", "dmarc=pass"):
        assert expected in ar, ar
    assert f"smtp.mailfrom={sender.domain}" in ar or f"@{sender.domain}" in ar, ar


def test_mta_sts_policy_is_served_over_https(world: World) -> None:
    """What the sender fetches: the enforce policy, over HTTPS verified for mta-sts.b.test."""
    ctx = world.ca.client_context()
    ctx.check_hostname = False  # we connect by address; the policy host is in the SAN
    req = urllib.request.Request(f"https://{world.b.ip}:{HTTPS_PORT}/.well-known/mta-sts.txt",
                                 headers={"Host": "mta-sts.b.test"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        assert resp.headers.get_content_type() == "text/plain"
        body = resp.read().decode()
    assert "mode: enforce" in body and "mx: mail.b.test" in body


def test_two_domain_journey(world: World) -> None:
    ctx = world.ca.client_context()
    msg = (b"From: Alice <alice@a.test>\r\n"
           b"To: Bob <bob@b.test>\r\n"
           b"Subject: lunch on Friday?\r\n"
           b"Message-ID: <journey-1@a.test>\r\n"
           b"\r\n"
           b"Hi Bob,\r\n.a line with a leading dot\r\nAlice\r\n")
    submit(world.a, ctx, "alice@a.test", "bob@b.test", msg)

    [got] = arrived(world.b, "bob@b.test", ctx, b"<journey-1@a.test>")
    assert got.startswith(b"Return-Path: <alice@a.test>\r\n")
    assert got.endswith(b"\r\n\r\nHi Bob,\r\n.a line with a leading dot\r\nAlice\r\n")
    check_transport(got, sender=world.a, receiver=world.b)
    # The first hop (submission) is there too, authenticated and over TLS.
    assert any(b"by mail.a.test (mailyard) with ESMTPSA" in r
               for r in unfolded_headers(got, b"Received"))
    # a.test found b.test's MTA-STS policy (enforce) over HTTPS and delivered under it,
    # which means over TLS with mail.b.test's certificate verified (RFC 8461 §4.2).
    log_a = world.a.server.log()
    assert "MTA-STS policy for b.test: mode enforce, mx mail.b.test" in log_a, log_a
    assert "MTA-STS policy fetch for b.test failed" not in log_a
    # ... and kept it on disk, for after a restart (RFC 8461 §5.1, §10.2).
    cached = json.loads((world.a.server.data / "cache" / "mta-sts.json").read_text())
    assert parse_policy(cached["policies"]["b.test"]["policy"]).mode == "enforce"

    # IMAP: the same message, byte for byte, read with a second protocol.
    host, port = world.b.server.addr("imap")
    with imaplib.IMAP4(host, port, timeout=10) as imap:
        imap.starttls(ctx)
        imap.login("bob@b.test", PASSWORD)
        typ, data = imap.select("INBOX")
        assert typ == "OK" and int(data[0]) == 1  # type: ignore[arg-type]
        typ, data = imap.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][1] == got  # type: ignore[index]

    # bob replies; the reply comes back to alice the same way, signed by b.test.
    original = email.message_from_bytes(got, policy=email.policy.SMTP)
    reply = (b"From: Bob <bob@b.test>\r\n"
             b"To: Alice <alice@a.test>\r\n"
             b"Subject: Re: " + str(original["Subject"]).encode() + b"\r\n"
             b"Message-ID: <journey-2@b.test>\r\n"
             b"In-Reply-To: " + str(original["Message-ID"]).encode() + b"\r\n"
             b"\r\n"
             b"Friday works.\r\nBob\r\n")
    submit(world.b, ctx, "bob@b.test", "alice@a.test", reply)
    [back] = arrived(world.a, "alice@a.test", ctx, b"<journey-2@b.test>")
    assert back.startswith(b"Return-Path: <bob@b.test>\r\n")
    assert b"In-Reply-To: <journey-1@a.test>\r\n" in back
    check_transport(back, sender=world.b, receiver=world.a)
    log_b = world.b.server.log()
    assert "MTA-STS policy for a.test: mode enforce, mx mail.a.test" in log_b, log_b

    # Both queues are empty once everything is delivered.
    for inst in (world.a, world.b):
        assert inst.server.cli("queue", "list").stdout.strip() == "queue is empty"


def test_tls_report_reaches_the_domain_that_asked(world: World) -> None:
    """RFC 8460 end to end: a.test counts its TLS sessions to b.test (MTA-STS enforce,
    verified), and once the day is over reports them to the address b.test publishes
    in _smtp._tls (postmaster@b.test, bob), DKIM-signed by a.test."""
    import datetime
    import gzip

    ctx = world.ca.client_context()
    submit(world.a, ctx, "alice@a.test", "bob@b.test",
           b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: counted\r\n"
           b"Message-ID: <tlsrpt-1@a.test>\r\n\r\nhello\r\n")
    arrived(world.b, "bob@b.test", ctx, b"<tlsrpt-1@a.test>")
    world.a.server.stop()  # the counts are saved at shutdown
    state = world.a.server.data / "cache" / "tlsrpt.json"
    days = json.loads(state.read_text())["days"]
    (today,) = [d for d in days if "b.test" in days[d]]  # (the day of the delivery, UTC)
    counts = days[today]["b.test"]
    (policy_key, summary), = counts.items()
    policy_type, strings, mx = json.loads(policy_key)
    assert (policy_type, mx) == ("sts", ["mail.b.test"]) and "mode: enforce" in strings
    assert summary["ok"] >= 1 and summary["fail"] == 0, summary

    # As if the day were over: the next start reports it.
    yesterday = (datetime.datetime.strptime(today, "%Y-%m-%d") - datetime.timedelta(days=1)
                 ).strftime("%Y-%m-%d")
    state.write_text(json.dumps({"days": {yesterday: days[today]}}))
    world.a.server.start()
    [report] = arrived(world.b, "bob@b.test", ctx, b"TLS-Report-Domain: b.test")
    msg = email.message_from_bytes(report, policy=email.policy.default)
    assert msg["TLS-Report-Submitter"] == "a.test"
    assert msg["Subject"].startswith("Report Domain: b.test Submitter: a.test Report-ID: <")
    assert "dkim=pass header.d=a.test" in auth_results(report, world.b.hostname).decode()
    part = next(p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip")
    doc = json.loads(gzip.decompress(part.get_content()))
    assert doc["date-range"]["start-datetime"] == f"{yesterday}T00:00:00Z"
    (pol,) = doc["policies"]
    assert pol["policy"]["policy-type"] == "sts" and pol["policy"]["mx-host"] == ["mail.b.test"]
    assert pol["summary"]["total-successful-session-count"] == summary["ok"]
    # Sent once: a.test's counts for that day are gone.
    wait_for(lambda: yesterday not in json.loads(state.read_text())["days"], timeout=20,
             what="the reported day dropped from a.test's counts")


@pytest.mark.parametrize("mail_from", ["ceo@a.test", "ceo@attacker.test"])
def test_spoofed_from_is_rejected_by_dmarc(world: World, mail_from: str) -> None:
    """From: ceo@a.test sent straight to b.test's MX from 127.0.0.1, which a.test's SPF
    does not list and without a.test's signature: DMARC fails, p=reject -> 550 5.7.1.
    With an envelope sender of another domain, whose SPF passes, SPF does not align
    (RFC 7489 §3.1.2) and DMARC fails all the same."""
    forged = (b"From: The CEO <ceo@a.test>\r\n"
              b"To: bob@b.test\r\n"
              b"Subject: urgent wire transfer\r\n"
              b"Message-ID: <spoof@a.test>\r\n"
              b"\r\n"
              b"Please pay the invoice today.\r\n")
    host, port = world.b.server.addr("smtp")
    with smtplib.SMTP(host, port, local_hostname="mx.attacker.example", timeout=10,
                      source_address=("127.0.0.1", 0)) as s:
        s.ehlo()
        s.starttls(context=world.ca.client_context())
        s.ehlo()
        with pytest.raises(smtplib.SMTPDataError) as err:
            s.sendmail(mail_from, ["bob@b.test"], forged)
    assert err.value.smtp_code == 550
    assert err.value.smtp_error.startswith(b"5.7.1"), err.value.smtp_error
    assert not [m for m in pop3_messages(world.b, "bob@b.test", world.ca.client_context())
                if b"<spoof@a.test>" in m]
