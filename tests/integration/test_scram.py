"""SASL SCRAM-SHA-256 (RFC 5802, RFC 7677) against ``mailyard serve``, over real sockets.

SMTP submission (STARTTLS, then AUTH, RFC 4954), IMAP (STARTTLS, then AUTHENTICATE with
imaplib and a SCRAM callback, RFC 9051), POP3 (STLS, then AUTH, RFC 5034), and mbsync
(isync), whose SCRAM comes from Cyrus libsasl2. Users are made by ``mailyard user add``
as an administrator would, so they have SCRAM secrets from the start; a user from before
SCRAM is simulated by clearing the secret in the database.
"""

from __future__ import annotations

import base64
import imaplib
import re
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailyard.testing.dnsserver import DNSServer
from mailyard.testing.scram import ScramClient, ScramClientError
from tests.integration.harness import PASSWORD, Dialog, Server, client_tls, make_server

ALICE = "alice@example.test"
NOBODY = "nobody@example.test"
HOST = "mail.example.test"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def salt_of(server_first: bytes) -> tuple[str, str]:
    """(s=, i=) of a server-first-message."""
    attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
    return attrs["s"], attrs["i"]


# -- line clients over STARTTLS -------------------------------------------------------------
def smtp(server: Server) -> Dialog:
    d = Dialog(*server.addr("submission"))
    assert d.reply()[0] == 220
    code, text = d.cmd("EHLO client.example")
    assert code == 250 and "AUTH" not in text  # nothing before TLS (RFC 4954 §4)
    assert d.cmd("STARTTLS")[0] == 220
    d.sock = client_tls().wrap_socket(d.sock, server_hostname=HOST)
    code, text = d.cmd("EHLO client.example")
    assert code == 250 and "250 AUTH PLAIN LOGIN SCRAM-SHA-256" in text.splitlines(), text
    return d


def imap(server: Server) -> Dialog:
    d = Dialog(*server.addr("imap"))
    greeting = d.line()
    assert "AUTH=SCRAM-SHA-256" not in greeting and "LOGINDISABLED" in greeting
    d.send("s STARTTLS\r\n")
    assert d.line().startswith("s OK")
    d.sock = client_tls().wrap_socket(d.sock, server_hostname=HOST)
    d.send("c CAPABILITY\r\n")
    caps = d.line()
    assert "AUTH=PLAIN AUTH=LOGIN AUTH=SCRAM-SHA-256" in caps, caps
    assert d.line().startswith("c OK")
    return d


def pop3_tls(server: Server) -> tuple[Dialog, list[str]]:
    """A POP3 session after STLS, and its CAPA lines."""
    d = Dialog(*server.addr("pop3"))
    assert d.line().startswith("+OK")
    d.send("STLS\r\n")
    assert d.line().startswith("+OK")
    d.sock = client_tls().wrap_socket(d.sock, server_hostname=HOST)
    d.send("CAPA\r\n")
    caps = []
    while (line := d.line()) != ".":
        caps.append(line)
    return d, caps


def pop3(server: Server) -> Dialog:
    d, caps = pop3_tls(server)
    assert "SASL PLAIN LOGIN SCRAM-SHA-256" in caps, caps
    return d


def imap_tagged(d: Dialog, tag: str) -> str:
    while True:
        line = d.line()
        if line.startswith(tag + " "):
            return line


# -- SMTP --------------------------------------------------------------------------------------
def smtp_scram(d: Dialog, client: ScramClient, *, initial: bool = True) -> tuple[int, str]:
    """Run an exchange up to its end; (code, text) of the final reply."""
    if initial:
        code, text = d.cmd("AUTH SCRAM-SHA-256 " + b64(client.first()))
    else:
        assert d.cmd("AUTH SCRAM-SHA-256") == (334, "334 ")
        code, text = d.cmd(b64(client.first()))
    assert code == 334, text
    code, text = d.cmd(b64(client.final(unb64(text[4:]))))
    if code != 334:
        return code, text
    client.check(unb64(text[4:]))
    return d.cmd("")


def test_smtp_submission_with_scram(server: Server) -> None:
    # smtplib's own AUTH loop (initial response, 334s, the empty answer to v=).
    with smtplib.SMTP(*server.addr("submission"), timeout=10) as s:
        s.starttls(context=client_tls())
        s.ehlo()
        assert "SCRAM-SHA-256" in s.esmtp_features["auth"].split()
        client = ScramClient(ALICE, PASSWORD)
        assert s.auth("SCRAM-SHA-256", client.smtplib) == (235, b"2.7.0 Authentication successful")
        assert client.verified  # the server proved it knows the password too
        msg = f"From: {ALICE}\r\nTo: bob@example.test\r\nSubject: scram\r\n\r\nhi\r\n"
        assert s.sendmail(ALICE, ["bob@example.test"], msg.encode()) == {}

    d = smtp(server)
    assert smtp_scram(d, ScramClient(ALICE, PASSWORD), initial=False)[0] == 235
    assert d.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    d.close()


def test_smtp_wrong_password_and_unknown_user_fail_alike(server: Server) -> None:
    d = smtp(server)
    wrong = smtp_scram(d, ScramClient(ALICE, "wrong-password"))
    ghost = smtp_scram(d, ScramClient(NOBODY, PASSWORD))
    assert wrong == ghost == (535, "535 5.7.8 Authentication credentials invalid")
    assert d.cmd("NOOP")[0] == 250
    assert d.cmd(f"MAIL FROM:<{ALICE}>")[0] == 530  # still nobody
    d.close()
    d = smtp(server)  # two failures were counted for this IP: a delay, then success
    assert smtp_scram(d, ScramClient(ALICE, PASSWORD))[0] == 235
    d.close()


def test_smtp_malformed_input_gets_501_and_the_session_goes_on(server: Server) -> None:
    d = smtp(server)
    bad_base64 = "501 5.5.2 Cannot Base64-decode client response"
    malformed = "501 5.5.2 Malformed authentication response"
    cancelled = "501 5.7.0 Authentication cancelled"
    assert d.cmd("AUTH SCRAM-SHA-256 %%%") == (501, bad_base64)
    assert d.cmd("AUTH SCRAM-SHA-256 " + b64(b"n,,r=abc")) == (501, malformed)  # no n=
    assert d.cmd("AUTH SCRAM-SHA-256 " + b64(b"p=tls-unique,,n=a,r=b")) == (501, malformed)
    # Mid-exchange: bad base64, missing proof, a wrong nonce, a forged binding, "*".
    for final, reply in (
            (lambda c, sf: "not base64!", bad_base64),
            (lambda c, sf: b64(c.final(sf).rpartition(b",p=")[0]), malformed),
            (lambda c, sf: b64(c.final(sf, nonce=c.client_nonce)), malformed),
            (lambda c, sf: b64(c.final(sf, channel_binding=b"y,,")), malformed),
            (lambda c, sf: "*", cancelled)):
        client = ScramClient(ALICE, PASSWORD)
        code, text = d.cmd("AUTH SCRAM-SHA-256 " + b64(client.first()))
        assert code == 334
        assert d.cmd(final(client, unb64(text[4:]))) == (501, reply)
        assert d.cmd("NOOP")[0] == 250
    # "*" instead of the empty answer to the server signature: not logged in.
    client = ScramClient(ALICE, PASSWORD)
    code, text = d.cmd("AUTH SCRAM-SHA-256 " + b64(client.first()))
    code, text = d.cmd(b64(client.final(unb64(text[4:]))))
    assert code == 334
    client.check(unb64(text[4:]))
    assert d.cmd("*") == (501, cancelled)
    assert d.cmd(f"MAIL FROM:<{ALICE}>")[0] == 530
    # The session still works: a correct exchange on the same connection.
    assert smtp_scram(d, ScramClient(ALICE, PASSWORD))[0] == 235
    assert d.cmd(f"MAIL FROM:<{ALICE}>")[0] == 250
    d.close()
    assert "Traceback" not in server.log()


# -- IMAP --------------------------------------------------------------------------------------
def test_imaplib_authenticate_scram(server: Server) -> None:
    c = imaplib.IMAP4(*server.addr("imap"), timeout=10)
    c.starttls(client_tls())
    assert "AUTH=SCRAM-SHA-256" in c.capabilities
    client = ScramClient(ALICE, PASSWORD)
    typ, _ = c.authenticate("SCRAM-SHA-256", client.imaplib)
    assert typ == "OK" and client.verified
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    # imaps (implicit TLS) and a wrong password: NO [AUTHENTICATIONFAILED].
    s = imaplib.IMAP4_SSL(*server.addr("imaps"), ssl_context=client_tls(), timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        s.authenticate("SCRAM-SHA-256", ScramClient(ALICE, "wrong").imaplib)
    client = ScramClient(ALICE, PASSWORD)
    assert s.authenticate("SCRAM-SHA-256", client.imaplib)[0] == "OK"
    s.logout()


def imap_server_first(d: Dialog, tag: str, client: ScramClient) -> bytes:
    d.send(f"{tag} AUTHENTICATE SCRAM-SHA-256\r\n")
    assert d.line() == "+ "
    d.send(b64(client.first()) + "\r\n")
    line = d.line()
    assert line.startswith("+ "), line
    return unb64(line[2:])


def test_imap_unknown_user_fails_like_a_wrong_password_with_a_stable_salt(
        server: Server) -> None:
    d = imap(server)
    salts = []
    for tag, user, password in (("a", NOBODY, PASSWORD), ("b", NOBODY, PASSWORD),
                                ("c", ALICE, "wrong"), ("d", "Nobody@Example.TEST", "x")):
        client = ScramClient(user, password)
        server_first = imap_server_first(d, tag, client)
        salts.append(salt_of(server_first))
        d.send(b64(client.final(server_first)) + "\r\n")  # no v=: straight to the answer
        assert imap_tagged(d, tag) == f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed"
    ghost, again, alice, case_variant = salts
    assert ghost == again == case_variant  # the same name always sees the same salt
    assert ghost != alice and len(unb64(ghost[0])) == len(unb64(alice[0]))
    assert ghost[1] == alice[1]  # and the same iteration count as a real account
    d.close()
    # Stable across connections too (the key behind it lives in the store).
    d = imap(server)
    assert salt_of(imap_server_first(d, "e", ScramClient(NOBODY, "x")))[0] == ghost[0]
    d.close()


def test_imap_malformed_input_gets_bad_and_the_session_goes_on(server: Server) -> None:
    d = imap(server)
    d.send("a AUTHENTICATE SCRAM-SHA-256 " + b64(b"p=tls-unique,,n=a,r=b") + "\r\n")
    assert imap_tagged(d, "a").startswith("a BAD ")
    for tag, final in (("b", lambda c, sf: "%%%"),
                       ("c", lambda c, sf: b64(c.final(sf, nonce="x"))),
                       ("d", lambda c, sf: b64(c.final(sf).partition(b",")[2])),
                       ("e", lambda c, sf: "*")):
        client = ScramClient(ALICE, PASSWORD)
        d.send(final(client, imap_server_first(d, tag, client)) + "\r\n")
        assert imap_tagged(d, tag).startswith(f"{tag} BAD "), tag
    client = ScramClient(ALICE, PASSWORD)
    d.send(b64(client.final(imap_server_first(d, "f", client))) + "\r\n")
    line = d.line()
    assert line.startswith("+ ")
    client.check(unb64(line[2:]))
    d.send("\r\n")
    assert imap_tagged(d, "f").startswith("f OK [CAPABILITY ")
    d.send("g SELECT INBOX\r\n")
    assert imap_tagged(d, "g").startswith("g OK")
    d.close()
    assert "Traceback" not in server.log()


# -- POP3 --------------------------------------------------------------------------------------
def pop3_scram(d: Dialog, client: ScramClient) -> str:
    d.send("AUTH SCRAM-SHA-256 " + b64(client.first()) + "\r\n")
    line = d.line()
    assert line.startswith("+ "), line
    d.send(b64(client.final(unb64(line[2:]))) + "\r\n")
    line = d.line()
    if not line.startswith("+ "):
        return line
    client.check(unb64(line[2:]))
    d.send("\r\n")
    return d.line()


def test_pop3_auth_scram(server: Server) -> None:
    d = pop3(server)
    assert pop3_scram(d, ScramClient(ALICE, "wrong")) == "-ERR [AUTH] Authentication failed"
    assert pop3_scram(d, ScramClient(NOBODY, "x")) == "-ERR [AUTH] Authentication failed"
    d.send("AUTH SCRAM-SHA-256 " + b64(b"y,,n=" + ALICE.encode()) + "\r\n")  # no nonce
    assert d.line().startswith("-ERR [AUTH] Authentication failed: ")
    d.send("AUTH SCRAM-SHA-256\r\n")
    assert d.line() == "+ "
    d.send("%%%\r\n")
    assert d.line() == "-ERR [AUTH] Invalid base64 in authentication response"
    client = ScramClient(ALICE, PASSWORD)
    d.send("AUTH SCRAM-SHA-256 " + b64(client.first()) + "\r\n")
    assert d.line().startswith("+ ")
    d.send("*\r\n")
    assert d.line() == "-ERR [AUTH] Authentication cancelled"
    client = ScramClient(ALICE, PASSWORD, gs2_flag="y")
    assert pop3_scram(d, client).startswith("+OK Maildrop has ")
    assert client.verified
    d.send("STAT\r\n")
    assert d.line().startswith("+OK ")
    d.send("QUIT\r\n")
    assert d.line().startswith("+OK")
    d.close()
    assert "Traceback" not in server.log()


# -- a user from before SCRAM ----------------------------------------------------------------
@pytest.fixture
def legacy_server(tmp_path: Path, dns_server: DNSServer) -> Iterator[Server]:
    """alice's SCRAM secret removed before the start: an account made before SCRAM."""
    srv = make_server(tmp_path, nameserver=dns_server.nameserver)
    (db,) = srv.data.rglob("mailyard.sqlite3")
    with sqlite3.connect(db) as conn:
        assert conn.execute("UPDATE accounts SET scram_sha256 = NULL WHERE address = ?",
                            (ALICE,)).rowcount == 1
        assert conn.execute("SELECT count(*) FROM accounts WHERE scram_sha256 LIKE "
                            "'SCRAM-SHA-256$10000:%'").fetchone() == (1,)  # bob's
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_scram_is_offered_once_every_account_has_its_secret(legacy_server: Server) -> None:
    """An account from before SCRAM cannot use it until it logged in once with its
    password. Offered meanwhile, a client that takes the strongest mechanism on offer
    (mbsync, mutt with a SASL library) would fail where PLAIN would have worked: so
    SCRAM-SHA-256 is offered in no protocol until every account has its secret."""
    server = legacy_server
    assert re.search(r"SCRAM-SHA-256 is not offered while 1 accounts have no SCRAM secret",
                     server.log())
    d = Dialog(*server.addr("submission"))
    assert d.reply()[0] == 220
    assert d.cmd("EHLO client.example")[0] == 250
    assert d.cmd("STARTTLS")[0] == 220
    d.sock = client_tls().wrap_socket(d.sock, server_hostname=HOST)
    code, text = d.cmd("EHLO client.example")
    assert code == 250 and text.splitlines()[-1] == "250 AUTH PLAIN LOGIN", text
    assert d.cmd("AUTH SCRAM-SHA-256 " + b64(ScramClient(ALICE, PASSWORD).first()))[0] == 504
    d.close()
    c = imaplib.IMAP4(*server.addr("imap"), timeout=10)
    c.starttls(client_tls())
    assert "AUTH=LOGIN" in c.capabilities and "AUTH=SCRAM-SHA-256" not in c.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="Unsupported authentication mechanism"):
        c.authenticate("SCRAM-SHA-256", ScramClient("bob@example.test", PASSWORD).imaplib)
    # One password login (here IMAP LOGIN) gives alice, the last account without one, her
    # secret...
    c.login(ALICE, PASSWORD)
    c.logout()
    assert re.search(r"stored a SCRAM-SHA-256 secret for alice@example\.test", server.log())
    assert re.search(r"every account has its SCRAM secret: SCRAM-SHA-256 is offered",
                     server.log())
    # ...and SCRAM is offered, and works, from then on in every protocol (the helpers
    # check that each offers it).
    d = smtp(server)
    assert smtp_scram(d, ScramClient(ALICE, PASSWORD))[0] == 235
    d.close()
    c = imaplib.IMAP4(*server.addr("imap"), timeout=10)
    c.starttls(client_tls())
    assert c.authenticate("SCRAM-SHA-256", ScramClient(ALICE, PASSWORD).imaplib)[0] == "OK"
    c.logout()
    d = pop3(server)
    assert pop3_scram(d, ScramClient(ALICE, PASSWORD)).startswith("+OK Maildrop")
    d.close()
    # The secret follows password changes (user passwd): the old password stops working.
    server.cli("user", "passwd", ALICE, "--password-stdin", stdin="a-new-password\n")
    d = smtp(server)
    assert smtp_scram(d, ScramClient(ALICE, PASSWORD))[0] == 535
    assert smtp_scram(d, ScramClient(ALICE, "a-new-password"))[0] == 235
    d.close()


def test_pop3_does_not_offer_scram_before_every_account_has_its_secret(
        legacy_server: Server) -> None:
    d, caps = pop3_tls(legacy_server)
    assert "SASL PLAIN LOGIN" in caps, caps
    d.send("AUTH SCRAM-SHA-256 " + b64(ScramClient("bob@example.test", PASSWORD).first()) + "\r\n")
    assert d.line().startswith("-ERR")
    d.send("AUTH PLAIN " + b64(f"\0bob@example.test\0{PASSWORD}".encode()) + "\r\n")
    assert d.line().startswith("+OK")
    d.close()


# -- a real client: mbsync (isync), SCRAM from Cyrus libsasl2 -------------------------------
def test_mbsync_authenticates_with_scram(server: Server, tmp_path: Path) -> None:
    mbsync = shutil.which("mbsync")
    assert mbsync, "mbsync is not installed: run the README test command (scripts/test.sh)"
    local = tmp_path / "maildir"
    local.mkdir()
    host, port = server.addr("imap")
    rc = tmp_path / "mbsyncrc"

    def sync(password: str) -> subprocess.CompletedProcess[str]:
        rc.write_text(
            f"IMAPAccount mailyard\nHost {host}\nPort {port}\nUser {ALICE}\nPass {password}\n"
            f"AuthMechs SCRAM-SHA-256\nSSLType STARTTLS\n"
            f"CertificateFile {server.data / 'tls' / 'cert.pem'}\nSystemCertificates no\n\n"
            f"IMAPStore remote\nAccount mailyard\n\n"
            f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\n\n"
            f"Channel mail\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Both\n"
            f"SyncState *\n")
        return subprocess.run([mbsync, "-V", "-c", str(rc), "-a"], capture_output=True,
                              text=True, timeout=120)

    with smtplib.SMTP(*server.addr("submission"), timeout=10) as s:
        s.starttls(context=client_tls())
        s.ehlo()
        assert s.auth("SCRAM-SHA-256", ScramClient("bob@example.test", PASSWORD).smtplib)[0] == 235
        s.sendmail("bob@example.test", [ALICE],
                   b"From: bob@example.test\r\nSubject: for mbsync\r\n\r\nhello\r\n")
    r = sync(PASSWORD)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # mbsync -V logs the mechanism it chose (AuthMechs allows no other).
    assert "Authenticating with SASL mechanism SCRAM-SHA-256" in out, out
    files = [p for sub in ("cur", "new") for p in (local / "INBOX" / sub).iterdir()]
    assert len(files) == 1 and b"Subject: for mbsync" in files[0].read_bytes()
    r = sync("wrong-password")
    assert r.returncode != 0
    assert "AUTHENTICATIONFAILED" in r.stdout + r.stderr


def test_scram_client_checks_the_server_signature() -> None:
    """The test client would notice a server that does not know the password."""
    client = ScramClient(ALICE, PASSWORD, nonce="abc")
    client.final(b"r=abcdef,s=" + base64.b64encode(b"0123456789abcdef") + b",i=4096")
    with pytest.raises(ScramClientError):
        client.check(b"v=" + base64.b64encode(b"\0" * 32))
    with pytest.raises(ScramClientError):
        client.check(b"e=invalid-proof")


def test_sighup_offers_scram_once_the_admin_gave_every_account_its_secret(
        legacy_server: Server) -> None:
    """'mailyard user passwd' (another process) gives alice her secret; SIGHUP, which
    rereads users, makes the server look again."""
    server = legacy_server

    def offered() -> bool:
        with smtplib.SMTP(*server.addr("submission"), timeout=10) as s:
            s.starttls(context=client_tls())
            s.ehlo()
            return "SCRAM-SHA-256" in s.esmtp_features["auth"].split()

    assert not offered()
    server.cli("user", "passwd", ALICE, "--password-stdin", stdin="a-new-password\n")
    assert not offered()  # the server has not looked yet
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not offered():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    d = smtp(server)
    assert smtp_scram(d, ScramClient(ALICE, "a-new-password"))[0] == 235
    d.close()
