"""Issue 2: submit over 587 (STARTTLS + AUTH) or 465, read back over POP3, byte for byte."""

from __future__ import annotations

import poplib
import re
import smtplib

from tests.integration.harness import PASSWORD, Server, client_tls

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <journey-1@example.test>\r\n"
    b"\r\n"
    b"Hi Bob,\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b"bye\r\n"
)


def _pop_all(server: Server, user: str) -> list[bytes]:
    host, port = server.addr("pop3")
    p = poplib.POP3(host, port, timeout=10)
    p.stls(client_tls())
    p.user(user)
    p.pass_(PASSWORD)
    count, _size = p.stat()
    out = []
    for i in range(1, count + 1):
        _resp, lines, _octets = p.retr(i)
        out.append(b"\r\n".join(lines) + b"\r\n")
    p.quit()
    return out


def _body_of(stored: bytes) -> bytes:
    """The submitted message is the tail of what is stored (trace headers are prepended)."""
    return stored[stored.index(b"From: Alice"):]


def test_submission_starttls_auth_then_pop3_byte_for_byte(server: Server) -> None:
    host, port = server.addr("submission")
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.ehlo("client.example.net")
        assert s.has_extn("starttls")
        assert not s.has_extn("auth"), "AUTH must not be offered before TLS"
        s.starttls(context=client_tls())
        s.ehlo("client.example.net")
        assert "PLAIN" in s.esmtp_features["auth"].upper()
        s.login("alice@example.test", PASSWORD)
        refused = s.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
        assert refused == {}
    msgs = _pop_all(server, "bob@example.test")
    assert len(msgs) == 1
    stored = msgs[0]
    assert _body_of(stored) == MESSAGE
    head = stored[: stored.index(b"From: Alice")]
    assert head.startswith(b"Return-Path: <alice@example.test>\r\n")
    assert b"Received: from client.example.net" in head
    assert b"with ESMTPSA" in head
    assert b"DKIM-Signature:" in head
    # The trace date is in UTC and says so: +0000 ("-0000" is "zone unknown", RFC 5322 §3.3).
    received = re.search(rb"Received: (?:.*\r\n[ \t])*.*\r\n", head)
    assert received and re.search(rb";\s+\w{3}, \d{2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n$",
                                  received.group()), received


def test_submissions_implicit_tls(server: Server) -> None:
    host, port = server.addr("submissions")
    with smtplib.SMTP_SSL(host, port, timeout=10, context=client_tls()) as s:
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
    assert len(_pop_all(server, "bob@example.test")) == 1


def test_mx_receives_for_local_user(server: Server) -> None:
    host, port = server.addr("smtp")
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.ehlo("mx.remote.example")
        assert not s.has_extn("auth"), "no AUTH on port 25"
        s.sendmail("someone@remote.example", ["bob@example.test"], MESSAGE)
    msgs = _pop_all(server, "bob@example.test")
    assert len(msgs) == 1
    assert _body_of(msgs[0]) == MESSAGE
    assert b"Authentication-Results: " in msgs[0]


def test_pop3_delete_and_keep(server: Server) -> None:
    host, port = server.addr("submission")
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.starttls(context=client_tls())
        s.login("alice@example.test", PASSWORD)
        for _ in range(3):
            s.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
    # leave on server: RETR without DELE, twice
    assert len(_pop_all(server, "bob@example.test")) == 3
    assert len(_pop_all(server, "bob@example.test")) == 3
    # download and delete
    h, p_ = server.addr("pop3")
    p = poplib.POP3(h, p_, timeout=10)
    p.stls(client_tls())
    p.user("bob@example.test")
    p.pass_(PASSWORD)
    uidls = p.uidl()[1]
    sizes = [int(x.split()[1]) for x in p.list()[1]]
    for i in (1, 2):
        _r, lines, _octets = p.retr(i)
        assert sum(len(line) + 2 for line in lines) == sizes[i - 1]
        p.dele(i)
    p.quit()
    left = _pop_all(server, "bob@example.test")
    assert len(left) == 1
    # UIDLs stable across a restart
    server.stop()
    server.start()
    p = poplib.POP3(h, server.ports["pop3"], timeout=10)
    p.stls(client_tls())
    p.user("bob@example.test")
    p.pass_(PASSWORD)
    assert p.uidl()[1] == [b"1 " + uidls[2].split()[1]]
    p.quit()


def test_notify_success_gets_a_delivered_report(server: Server) -> None:
    """RFC 3461: the server offers DSN, so NOTIFY=SUCCESS is honoured: a "delivered" report
    (an alias that fans out: "expanded") to the sender, headers only, nothing for the
    recipients that did not ask."""
    server.cli("alias", "add", "team@example.test", "alice@example.test", "bob@example.test")
    host, port = server.addr("submissions")
    with smtplib.SMTP_SSL(host, port, timeout=10, context=client_tls()) as s:
        s.login("alice@example.test", PASSWORD)
        s.ehlo()
        assert s.has_extn("dsn")
        s.mail("alice@example.test", ["RET=FULL", "ENVID=journey-env"])
        assert s.rcpt("bob@example.test", ["NOTIFY=SUCCESS,FAILURE",
                                           "ORCPT=rfc822;Bob@example.test"])[0] == 250
        assert s.rcpt("team@example.test", ["NOTIFY=SUCCESS"])[0] == 250
        assert s.rcpt("alice@example.test", ["NOTIFY=FAILURE"])[0] == 250
        assert s.data(MESSAGE)[0] == 250
    bob = _pop_all(server, "bob@example.test")
    assert len(bob) == 1 and _body_of(bob[0]) == MESSAGE  # one copy per mailbox
    alice = _pop_all(server, "alice@example.test")
    reports = [m for m in alice if b"multipart/report" in m]
    assert len(alice) == 2 and len(reports) == 1  # her copy (team, direct) + one report
    (dsn,) = reports
    assert dsn.startswith(b"Return-Path: <>\r\n")
    assert b"Subject: Successful Mail Delivery Report" in dsn
    assert b"Original-Envelope-Id: journey-env" in dsn
    assert re.search(rb"Final-Recipient: rfc822; bob@example.test\r\n"
                     rb"Original-Recipient: rfc822; Bob@example.test\r\nAction: delivered\r\n"
                     rb"Status: 2\.0\.0", dsn)
    assert re.search(rb"Final-Recipient: rfc822; team@example.test\r\nAction: expanded", dsn)
    assert b"Final-Recipient: rfc822; alice@example.test" not in dsn
    assert b"Subject: hello" in dsn and b"Hi Bob," not in dsn  # headers only
    # From another server, on port 25: the report goes to the remote sender, queued.
    with smtplib.SMTP(*server.addr("smtp"), timeout=10) as s:
        s.ehlo("mx.remote.example")
        s.mail("someone@remote.example")
        assert s.rcpt("bob@example.test", ["NOTIFY=SUCCESS"])[0] == 250
        assert s.data(b"From: someone@remote.example\r\nSubject: x\r\n\r\nhi\r\n")[0] == 250
    listing = server.cli("queue", "list").stdout
    assert "someone@remote.example" in listing and "<>" in listing, listing


def test_a_return_path_the_client_wrote_is_replaced_not_kept(server: Server) -> None:
    """RFC 5321 §4.4: Return-Path is added at final delivery; one written by the client
    (folded or not, any case) is dropped, over MX and submission alike, so the stored
    copy has exactly one, ours. A "Return-Path:" in the body is content, kept."""
    forged = (b"Return-Path: <ceo@forged.example>\r\n"
              b"From: Alice <alice@example.test>\r\n"
              b"return-path:\r\n <other@forged.example>\r\n"
              b"Subject: trace\r\n\r\n"
              b"Return-Path: <in-the-body@example.test>\r\n")
    with smtplib.SMTP(*server.addr("submission"), timeout=10) as s:
        s.starttls(context=client_tls())
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["bob@example.test"], forged)
    with smtplib.SMTP(*server.addr("smtp"), timeout=10) as s:
        s.sendmail("x@remote.example", ["bob@example.test"], forged)
    msgs = _pop_all(server, "bob@example.test")
    assert len(msgs) == 2
    for stored, sender in zip(msgs, (b"alice@example.test", b"x@remote.example"), strict=True):
        head = stored[: stored.index(b"\r\n\r\n")]
        assert head.startswith(b"Return-Path: <" + sender + b">\r\n")
        assert head.lower().count(b"return-path") == 1
        assert b"forged.example" not in head
        assert stored.endswith(b"\r\n\r\nReturn-Path: <in-the-body@example.test>\r\n")
