"""Issue 2: what port 25 and submission accept, refuse and how (each a test)."""

from __future__ import annotations

import base64
import smtplib
import time

import pytest

from tests.integration.harness import PASSWORD, Dialog, Server, client_tls


def mx(server: Server) -> Dialog:
    d = Dialog(*server.addr("smtp"))
    assert d.reply()[0] == 220
    assert d.cmd("EHLO relay.remote.example")[0] == 250
    return d


@pytest.mark.parametrize("rcpt", [
    "<victim@elsewhere.example>",
    "<victim%elsewhere.example@example.test>",
    "<elsewhere.example!victim@example.test>",
    '<"victim@elsewhere.example"@example.test>',
    "<@example.test:victim@elsewhere.example>",
    "<victim@[192.0.2.1]>",
    "<victim@elsewhere.example.>",
    "<victim@EXAMPLE.test.elsewhere.example>",
])
def test_open_relay_battery(server: Server, rcpt: str) -> None:
    d = mx(server)
    assert d.cmd("MAIL FROM:<spammer@remote.example>")[0] == 250
    code, text = d.cmd(f"RCPT TO:{rcpt}")
    assert code in (550, 553, 554, 501), text
    if code == 554:
        assert "5.7.1" in text
    d.close()


@pytest.mark.parametrize("rcpt", [
    "<victim%elsewhere.example@example.test>",
    "<elsewhere.example!victim@example.test>",
    '<"victim@elsewhere.example"@example.test>',
    "<alice%elsewhere.example@example.test>",  # an existing user before the %
])
def test_routing_syntax_is_relay_denied_even_with_a_catch_all(server: Server, rcpt: str) -> None:
    """The %-hack, bang paths and a quoted address are relay attempts: 554 5.7.1 (not
    550 5.1.1, and not 250 into a catch-all that would otherwise take any local part)."""
    server.cli("alias", "add", "@example.test", "bob@example.test")
    d = mx(server)
    assert d.cmd("MAIL FROM:<spammer@remote.example>")[0] == 250
    code, text = d.cmd(f"RCPT TO:{rcpt}")
    assert code == 554 and text.startswith("554 5.7.1"), text
    assert d.cmd("RCPT TO:<anyone@example.test>")[0] == 250  # the catch-all works
    d.close()


def test_unknown_user_and_known_user(server: Server) -> None:
    d = mx(server)
    assert d.cmd("MAIL FROM:<x@remote.example>")[0] == 250
    code, text = d.cmd("RCPT TO:<nobody@example.test>")
    assert code == 550 and "5.1.1" in text
    assert d.cmd("RCPT TO:<Bob@Example.TEST>")[0] == 250
    assert d.cmd("RCPT TO:<bob+tag@example.test>")[0] == 250
    d.close()


def test_no_auth_on_port_25(server: Server) -> None:
    d = mx(server)
    code, _ = d.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode())
    assert code in (502, 503)
    d.close()


def test_submission_requires_tls_and_auth(server: Server) -> None:
    d = Dialog(*server.addr("submission"))
    d.reply()
    d.cmd("EHLO c")
    code, _ = d.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode())
    assert code in (530, 538, 503)
    code, text = d.cmd("MAIL FROM:<alice@example.test>")
    assert code == 530 and "5.7.0" in text
    d.close()


def test_sender_must_be_own_address(server: Server) -> None:
    with smtplib.SMTP(*server.addr("submission"), timeout=10) as s:
        s.starttls(context=client_tls())
        s.login("alice@example.test", PASSWORD)
        code, msg = s.mail("bob@example.test")
        assert code == 553 and b"5.7.1" in msg
        s.rset()
        assert s.mail("alice+lists@example.test")[0] == 250


def test_auth_failure_same_reply_for_unknown_user(server: Server) -> None:
    replies = []
    for user in ("alice@example.test", "nobody@example.test"):
        with smtplib.SMTP(*server.addr("submission"), timeout=30) as s:
            s.starttls(context=client_tls())
            with pytest.raises(smtplib.SMTPAuthenticationError) as e:
                s.login(user, "wrong-password")
            replies.append((e.value.smtp_code, e.value.smtp_error))
    assert replies[0] == replies[1]
    assert replies[0][0] == 535


def test_aliases_fan_out_catch_all_and_subaddress(server: Server) -> None:
    server.cli("alias", "add", "team@example.test", "alice@example.test", "bob@example.test")
    server.cli("alias", "add", "@example.test", "alice@example.test")
    with smtplib.SMTP(*server.addr("smtp"), timeout=10) as s:
        msg = b"From: x@remote.example\r\nSubject: t\r\n\r\nhi\r\n"
        s.sendmail("x@remote.example", ["team@example.test"], msg)
        s.sendmail("x@remote.example", ["whoever@example.test"], msg)
        s.sendmail("x@remote.example", ["bob+news@example.test"], msg)
    import poplib

    counts = {}
    for user in ("alice", "bob"):
        p = poplib.POP3(*server.addr("pop3"), timeout=10)
        p.stls(client_tls())
        p.user(f"{user}@example.test")
        p.pass_(PASSWORD)
        counts[user] = p.stat()[0]
        p.quit()
    assert counts == {"alice": 2, "bob": 2}


def test_postmaster_is_always_accepted(server: Server) -> None:
    """RFC 5321 §4.5.1: postmaster@ of every domain, and a bare <Postmaster>, MUST be
    accepted. The domain's first user gets it as an ordinary alias (the DMARC and TLS-RPT
    records that init prints send their reports there too)."""
    assert "postmaster@example.test\t-> alice@example.test" in server.cli("alias", "list").stdout
    server.cli("domain", "add", "other.test")
    out = server.cli("user", "add", "carol@other.test", "--password-stdin",
                     stdin="pw-carol-1\n").stdout
    assert "postmaster@other.test -> carol@other.test" in out
    out = server.cli("user", "add", "dave@other.test", "--password-stdin", stdin="pw-dave-1\n").stdout
    assert "postmaster" not in out  # the first user's, not changed by the next
    d = mx(server)
    assert d.cmd("MAIL FROM:<reporter@remote.example>")[0] == 250
    for rcpt in ("<postmaster@example.test>", "<POSTMASTER@Example.Test>", "<Postmaster>",
                 "<postmaster@other.test>"):
        code, text = d.cmd(f"RCPT TO:{rcpt}")
        assert code == 250, (rcpt, text)
    d.close()
    with smtplib.SMTP(*server.addr("smtp"), timeout=10) as s:
        msg = b"From: reporter@remote.example\r\nSubject: report\r\n\r\nhi\r\n"
        s.sendmail("reporter@remote.example", ["postmaster"], msg)  # bare: the host's domain
        s.sendmail("reporter@remote.example", ["postmaster@example.test"], msg)
    import poplib

    p = poplib.POP3(*server.addr("pop3"), timeout=10)
    p.stls(client_tls())
    p.user("alice@example.test")
    p.pass_(PASSWORD)
    assert p.stat()[0] == 2
    p.quit()


def test_quota_at_rcpt_with_and_without_size(server: Server) -> None:
    """A mailbox over its quota is refused at RCPT (452 4.2.2, RFC 3463), and so is a
    message whose declared SIZE= would overshoot it; one larger than the whole quota can
    never fit (552 5.2.2). Other recipients are not affected."""
    server.cli("user", "quota", "bob@example.test", "4K")
    d = mx(server)
    assert d.cmd("MAIL FROM:<x@remote.example> SIZE=5000")[0] == 250
    code, text = d.cmd("RCPT TO:<bob@example.test>")
    assert code == 552 and "5.2.2" in text, text
    assert d.cmd("RCPT TO:<alice@example.test>")[0] == 250  # no quota
    assert d.cmd("RSET")[0] == 250
    assert d.cmd("MAIL FROM:<x@remote.example> SIZE=3000")[0] == 250
    assert d.cmd("RCPT TO:<bob@example.test>")[0] == 250  # fits
    d.close()
    with smtplib.SMTP(*server.addr("smtp"), timeout=10) as s:
        s.sendmail("x@remote.example", ["bob@example.test"],
                   b"From: x@remote.example\r\nSubject: fill\r\n\r\n" + b"x" * 3000 + b"\r\n")
    d = mx(server)  # bob now holds ~3.5K of his 4K
    assert d.cmd("MAIL FROM:<x@remote.example> SIZE=1000")[0] == 250
    code, text = d.cmd("RCPT TO:<bob@example.test>")
    assert code == 452 and "4.2.2" in text, text
    assert d.cmd("RSET")[0] == 250
    assert d.cmd("MAIL FROM:<x@remote.example>")[0] == 250
    assert d.cmd("RCPT TO:<bob@example.test>")[0] == 250  # no SIZE: not full yet
    d.close()


def test_commands_out_of_order_and_syntax(server: Server) -> None:
    d = Dialog(*server.addr("smtp"))
    d.reply()
    assert d.cmd("MAIL FROM:<a@b.example>")[0] == 503  # before EHLO
    d.cmd("EHLO c")
    assert d.cmd("RCPT TO:<bob@example.test>")[0] == 503  # before MAIL
    assert d.cmd("DATA")[0] == 503
    assert d.cmd("MAIL FROM:bad address")[0] == 501
    assert d.cmd("FOOBAR")[0] == 500
    assert d.cmd("X" * 2000)[0] == 500
    assert d.cmd("VRFY bob")[0] == 252
    assert d.cmd("NOOP")[0] == 250
    assert d.cmd("HELP")[0] in (214, 250)
    assert d.cmd("QUIT")[0] == 221
    d.close()


def test_too_many_recipients(server: Server) -> None:
    d = mx(server)
    d.cmd("MAIL FROM:<x@remote.example>")
    codes = [d.cmd("RCPT TO:<bob@example.test>")[0] for _ in range(101)]
    assert codes[:100] == [250] * 100
    assert codes[100] == 452
    d.close()


def test_too_big_by_size_and_by_data(server: Server) -> None:
    d = mx(server)
    code, text = d.cmd("MAIL FROM:<x@remote.example> SIZE=999999999999")
    assert code == 552 and "5.3.4" in text
    d.close()
    server.stop()
    cfg = server.data / "mailyard.toml"
    cfg.write_text(cfg.read_text().replace("max_message_size = 52428800", "max_message_size = 2048"))
    server.start()
    d = mx(server)
    d.cmd("MAIL FROM:<x@remote.example>")
    d.cmd("RCPT TO:<bob@example.test>")
    assert d.cmd("DATA")[0] == 354
    d.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100 + b".\r\n")
    code, text = d.reply()
    assert code == 552 and "5.3.4" in text
    assert d.cmd("NOOP")[0] == 250
    d.close()


@pytest.mark.parametrize("payload", [
    b"Subject: a\r\n\r\nline\n.\nMAIL FROM:<evil@x>\r\n.\r\n",
    b"Subject: a\r\n\r\nline\r\n.\nRCPT TO:<x>\r\n.\r\n",
    b"Subject: a\r\n\r\nline\r.\rDATA\r\n.\r\n",
    b"Subject: a\r\n\r\nbare\nlf\r\n.\r\n",
])
def test_bare_lf_and_cr_rejected_never_two_messages(server: Server, payload: bytes) -> None:
    d = mx(server)
    d.cmd("MAIL FROM:<x@remote.example>")
    d.cmd("RCPT TO:<bob@example.test>")
    assert d.cmd("DATA")[0] == 354
    d.send(payload)
    code, _ = d.reply()
    assert code >= 500
    assert d.cmd("NOOP")[0] == 250  # the session goes on, and nothing else was executed
    d.close()


def test_pipelined_after_starttls_is_discarded(server: Server) -> None:
    import socket
    import ssl

    sock = socket.create_connection(server.addr("submission"), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"EHLO c\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    sock.sendall(b"STARTTLS\r\nMAIL FROM:<alice@example.test>\r\n")
    assert f.readline().startswith(b"220")
    tls = client_tls().wrap_socket(sock, server_hostname="localhost")
    tls.sendall(b"NOOP\r\n")
    line = tls.recv(1000)
    # The injected MAIL was never executed: the first reply after TLS is the NOOP's.
    assert line.startswith(b"250"), line
    tls.sendall(b"MAIL FROM:<alice@example.test>\r\n")
    assert tls.recv(1000).startswith(b"503")  # EHLO needed again after TLS
    tls.close()
    _ = ssl


def test_bdat_with_low_level_commands(server: Server) -> None:
    body = b"From: x@remote.example\r\nSubject: chunked\r\n\r\nfirst part\r\n"
    tail = b"second part\r\n"
    with smtplib.SMTP(*server.addr("smtp"), timeout=10) as s:
        s.ehlo("c")
        assert s.has_extn("chunking")
        assert s.mail("x@remote.example")[0] == 250
        assert s.rcpt("bob@example.test")[0] == 250
        s.send(f"BDAT {len(body)}\r\n".encode() + body)
        assert s.getreply()[0] == 250
        s.send(f"BDAT {len(tail)} LAST\r\n".encode() + tail)
        assert s.getreply()[0] == 250
    import poplib

    p = poplib.POP3(*server.addr("pop3"), timeout=10)
    p.stls(client_tls())
    p.user("bob@example.test")
    p.pass_(PASSWORD)
    lines = p.retr(1)[1]
    p.quit()
    stored = b"\r\n".join(lines) + b"\r\n"
    assert stored.endswith(body + tail)


def test_smtputf8_international_address(server: Server) -> None:
    server.add_user("用户@example.test")
    msg = "From: alice@example.test\r\nTo: 用户@example.test\r\nSubject: 你好\r\n\r\nüñí\r\n".encode()
    with smtplib.SMTP(*server.addr("submission"), timeout=10) as s:
        s.starttls(context=client_tls())
        s.ehlo("c")
        assert s.has_extn("smtputf8")
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["用户@example.test"], msg,
                   mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    import poplib

    p = poplib.POP3(*server.addr("pop3"), timeout=10)
    p.stls(client_tls())
    p.user("用户@example.test")
    p.pass_(PASSWORD)
    stored = b"\r\n".join(p.retr(1)[1]) + b"\r\n"
    p.quit()
    assert stored.endswith(msg)
    assert b"UTF8SMTPSA" in stored


def test_idle_client_is_timed_out_and_others_served(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.harness import make_server

    srv = make_server(tmp_path)
    cfg = srv.data / "mailyard.toml"
    cfg.write_text(cfg.read_text().replace("[limits]\n", "[limits]\ncommand_timeout = 1.0\n", 1))
    srv.start()
    try:
        quiet = Dialog(*srv.addr("smtp"))
        assert quiet.reply()[0] == 220
        t0 = time.monotonic()
        other = Dialog(*srv.addr("smtp"))
        assert other.reply()[0] == 220
        assert other.cmd("EHLO c")[0] == 250
        code, _ = quiet.reply()
        assert code == 421
        assert quiet.closed()
        assert time.monotonic() - t0 < 10
    finally:
        srv.stop()
