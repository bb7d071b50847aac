"""Hostile clients against the live server: smuggling, STARTTLS/STLS injection,
header injection through the envelope, look-alike addresses, authentication
probing and SASL edge cases."""

from __future__ import annotations

import base64
import poplib
import smtplib
import socket
import ssl
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening.helpers import (
    PASSWORD,
    hardened_server,
    pop3_messages,
    read_all,
    simple_message,
)
from tests.integration.harness import Dialog, Server, client_tls


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dns_server: object) -> Iterator[Server]:
    from mailyard.testing.dnsserver import DNSServer

    assert isinstance(dns_server, DNSServer)
    s = hardened_server(tmp_path_factory.mktemp("hostile"), dns_server.nameserver,
                        users=("alice", "bob", "carol", "dave"))
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def strict_srv(tmp_path_factory: pytest.TempPathFactory, dns_server: object) -> Iterator[Server]:
    """No plaintext AUTH even from loopback (the default)."""
    from mailyard.testing.dnsserver import DNSServer

    assert isinstance(dns_server, DNSServer)
    s = hardened_server(tmp_path_factory.mktemp("strict"), dns_server.nameserver,
                        auth={"allow_plaintext_loopback": False})
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _mx_dialog(srv: Server) -> Dialog:
    d = Dialog(*srv.addr("smtp"))
    assert d.reply()[0] == 220
    assert d.cmd("EHLO client.remote.example")[0] == 250
    return d


# -- SMTP smuggling (CVE-2023-51764/51765/51766 class) ----------------------------------

SMUGGLE_ENDINGS = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\r\n.\n",
                   b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\n..\n", b"\r\n.\r\r\n"]


@pytest.mark.parametrize("ending", SMUGGLE_ENDINGS, ids=repr)
def test_smuggling_never_yields_two_messages(srv: Server, ending: bytes) -> None:
    marker = f"smug{abs(hash(ending)) % 10**8}"
    d = _mx_dialog(srv)
    assert d.cmd("MAIL FROM:<sender@remote.example>")[0] == 250
    assert d.cmd("RCPT TO:<dave@example.test>")[0] == 250
    assert d.cmd("DATA")[0] == 354
    inner = (b"MAIL FROM:<sender@remote.example>\r\nRCPT TO:<dave@example.test>\r\nDATA\r\n"
             b"Subject: " + marker.encode() + b"-smuggled\r\n\r\nsmuggled\r\n")
    d.send(b"Subject: " + marker.encode() + b"-outer\r\n\r\nouter" + ending + inner + b"\r\n.\r\n")
    replies = []
    d.sock.settimeout(5)
    try:
        while True:
            replies.append(d.reply()[0])
    except (OSError, EOFError):
        pass
    d.close()
    assert replies.count(250) <= 1, replies
    msgs = pop3_messages(srv, "dave")
    assert not any(f"Subject: {marker}-smuggled".encode() in m.split(b"\r\n\r\n")[0]
                   for m in msgs), "a smuggled message was stored as its own message"
    assert sum(1 for m in msgs if marker.encode() in m) <= 1


# -- STARTTLS / STLS injection (CVE-2011-0411 class) --------------------------------------

def test_smtp_starttls_pipelined_command_is_discarded(srv: Server) -> None:
    d = _mx_dialog(srv)
    d.send(b"STARTTLS\r\nMAIL FROM:<injected@remote.example>\r\n")
    assert d.reply()[0] == 220
    tls = client_tls().wrap_socket(d.sock, server_hostname="mail.example.test")
    tls.settimeout(3)
    tls.sendall(b"EHLO client.remote.example\r\n")
    data = b""
    while not data.endswith(b"\r\n") or b"250 " not in data:
        data += tls.recv(65536)
    # The only reply is the EHLO's: the injected MAIL was never executed.
    assert b"2.1.0" not in data and b"Sender" not in data, data
    tls.sendall(b"RCPT TO:<alice@example.test>\r\n")
    assert tls.recv(65536).startswith(b"503"), "a transaction survived the TLS upgrade"
    tls.sendall(b"STARTTLS\r\n")  # twice: refused inside TLS
    second = tls.recv(65536)
    assert second[:1] == b"5", second
    tls.close()


def test_pop3_stls_pipelined_command_is_discarded(srv: Server) -> None:
    s = socket.create_connection(srv.addr("pop3"), timeout=5)
    assert s.recv(1024).startswith(b"+OK")
    s.sendall(b"STLS\r\nUSER alice@example.test\r\n")
    buf = b""
    while b"\r\n" not in buf:
        buf += s.recv(1)
    assert buf.startswith(b"+OK"), buf
    tls = client_tls().wrap_socket(s, server_hostname="mail.example.test")
    tls.settimeout(3)
    tls.sendall(b"PASS " + PASSWORD.encode() + b"\r\n")
    reply = tls.recv(1024)
    assert reply.startswith(b"-ERR"), "USER sent in the clear survived the STLS upgrade"
    tls.sendall(b"STLS\r\n")
    assert tls.recv(1024).startswith(b"-ERR"), "STLS accepted twice"
    tls.close()


def test_auth_before_tls_is_refused(strict_srv: Server) -> None:
    d = Dialog(*strict_srv.addr("submission"))
    d.reply()
    _code, text = d.cmd("EHLO client.example.test")
    assert "AUTH" not in text
    plain = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
    assert d.cmd(f"AUTH PLAIN {plain}")[0] == 538
    assert d.cmd("MAIL FROM:<alice@example.test>")[0] == 530
    d.close()
    p = poplib.POP3(*strict_srv.addr("pop3"), timeout=5)
    with pytest.raises(poplib.error_proto):
        p.user("alice@example.test")
        p.pass_(PASSWORD)
    p.close()


# -- header injection through the envelope ------------------------------------------------

def _header_block(msg: bytes) -> bytes:
    return msg.split(b"\r\n\r\n", 1)[0]


def test_envelope_controls_never_reach_a_written_header(srv: Server) -> None:
    d = _mx_dialog(srv)
    # Rejected outright: NUL/CR in EHLO, MAIL and RCPT lines.
    for bad in (b"EHLO evil\x00X-Injected: 1", b"EHLO evil\rX-Injected: 1",
                b"MAIL FROM:<a@remote.example>\rX-Injected: 1",
                b"MAIL FROM:<a\x00@remote.example>"):
        d.send(bad + b"\r\n")
        assert d.reply()[0] >= 500, bad
    assert d.cmd("RSET")[0] == 250
    # Encoded control characters (xtext, RFC 3461 §4): refused, or kept encoded.
    code, _ = d.cmd("MAIL FROM:<sender@remote.example> ENVID=x+0D+0AX-Injected:+20envid "
                    "RET=HDRS")
    if code != 250:
        assert code == 501
        assert d.cmd("MAIL FROM:<sender@remote.example>")[0] == 250
    accepted = [d.cmd("RCPT TO:<carol@example.test> NOTIFY=NEVER "
                      "ORCPT=rfc822;c+0D+0AX-Injected:+20orcpt@example.test")[0],
                d.cmd('RCPT TO:<"carol\\\\X-Injected: quoted"@example.test>')[0]]
    if 250 not in accepted:
        assert d.cmd("RCPT TO:<carol@example.test>")[0] == 250
    assert d.cmd("DATA")[0] == 354
    d.send(simple_message("inject-check") + b".\r\n")
    assert d.reply()[0] == 250
    d.close()
    for m in pop3_messages(srv, "carol"):
        if b"inject-check" in m:
            lines = _header_block(m).split(b"\r\n")
            assert not any(ln.lower().startswith(b"x-injected") for ln in lines), lines
            assert b"\x00" not in _header_block(m)
            break
    else:
        raise AssertionError("the message was not delivered")


# -- look-alike addresses ----------------------------------------------------------------

LOOKALIKES = [
    "\u0430lice",  # Cyrillic a
    "\uff41lice",  # full-width a (NFKC folds it to "alice")
    "ALICE",
    "al\u200bice",  # zero-width space
    "a\u0301lice",  # combining accent
    "alice\u00a0",  # no-break space
]


def _rcpt_accepts(srv: Server, local: str) -> bool:
    d = Dialog(*srv.addr("smtp"))
    d.reply()
    d.cmd("EHLO client.remote.example")
    d.cmd("MAIL FROM:<sender@remote.example> SMTPUTF8")
    code, _ = d.cmd(f"RCPT TO:<{local}@example.test>".encode())
    d.close()
    return code == 250


def _pop3_login(srv: Server, local: str) -> bool:
    p = poplib.POP3(*srv.addr("pop3"), timeout=10)
    try:
        p._putcmd("UTF8")  # RFC 6856: UTF-8 user names
        p._getresp()
        p._shortcmd(f"USER {local}@example.test")
        p._shortcmd(f"PASS {PASSWORD}")
        return True
    except poplib.error_proto:
        return False
    finally:
        p.close()


def _smtp_auth(srv: Server, local: str) -> bool:
    s = smtplib.SMTP(*srv.addr("submission"), timeout=10)
    try:
        s.ehlo("client.example.test")
        blob = base64.b64encode(f"\0{local}@example.test\0{PASSWORD}".encode()).decode()
        code, _ = s.docmd("AUTH", f"PLAIN {blob}")
        return code == 235
    finally:
        s.close()


@pytest.mark.parametrize("local", LOOKALIKES, ids=ascii)
def test_lookalike_maps_to_one_user_or_none_everywhere(srv: Server, local: str) -> None:
    outcomes = (_rcpt_accepts(srv, local), _pop3_login(srv, local), _smtp_auth(srv, local))
    assert len(set(outcomes)) == 1, f"RCPT/POP3/AUTH disagree on {local!r}: {outcomes}"
    if outcomes[0]:
        # Accepted: it must be alice's mailbox, not a new or different one.
        marker = f"lookalike-{local.encode('unicode_escape').decode()}"
        with smtplib.SMTP(*srv.addr("smtp"), timeout=10) as s:
            s.ehlo("client.remote.example")
            s.sendmail("sender@remote.example", [f"{local}@example.test"],
                       simple_message(marker), mail_options=["SMTPUTF8"])
        assert any(marker.encode() in m for m in pop3_messages(srv, "alice"))


# -- authentication probing and SASL edge cases --------------------------------------------

def _auth_attempt(srv: Server, user: str, password: str) -> tuple[int, str, float]:
    d = Dialog(*srv.addr("submission"))
    d.reply()
    d.cmd("EHLO client.example.test")
    blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    t = time.monotonic()
    code, text = d.cmd(f"AUTH PLAIN {blob}")
    took = time.monotonic() - t
    d.close()
    return code, text, took


def test_unknown_user_and_wrong_password_look_the_same(srv: Server) -> None:
    for _ in range(4):  # reach the capped delay (make_server: 0.05 s doubling to 0.2 s)
        _auth_attempt(srv, "nobody@example.test", "x")
    unknown, wrong = [], []
    for _ in range(5):
        c1, t1, d1 = _auth_attempt(srv, "nobody@example.test", "wrong")
        c2, t2, d2 = _auth_attempt(srv, "alice@example.test", "wrong")
        assert (c1, t1) == (c2, t2), (t1, t2)
        unknown.append(d1)
        wrong.append(d2)
    mu, mw = statistics.median(unknown), statistics.median(wrong)
    assert abs(mu - mw) < 0.1 + 0.3 * max(mu, mw), (unknown, wrong)


def test_failure_delays_grow_and_are_capped(tmp_path: Path, nameserver: str) -> None:
    s = hardened_server(tmp_path, nameserver, auth={"failure_delay": 0.15,
                                                    "max_failure_delay": 0.6})
    s.start()
    try:
        took = [_auth_attempt(s, "alice@example.test", "wrong")[2] for _ in range(5)]
    finally:
        s.stop()
    # Delay before attempt n: 0, 0.15, 0.3, 0.6, 0.6 (plus the hash check).
    assert took[1] >= 0.14 and took[2] >= 0.29 and took[3] >= 0.59, took
    assert took[2] > took[1] and took[3] > took[2]
    assert took[4] < 0.6 + 0.5, took


def test_failure_counters_are_bounded() -> None:
    from mailyard.policy.auth import FailureTable

    t = FailureTable(max_entries=1000)
    for i in range(20_000):
        t.record(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(t) == 1000


def test_sasl_edge_cases(srv: Server) -> None:
    d = Dialog(*srv.addr("submission"))
    d.reply()
    d.cmd("EHLO client.example.test")
    assert d.cmd("AUTH PLAIN *")[0] == 501  # cancel as initial response
    assert d.cmd("AUTH PLAIN")[0] == 334
    assert d.cmd("*")[0] == 501  # RFC 4954 §4 cancel
    assert d.cmd("AUTH PLAIN !!!notbase64")[0] == 501
    assert d.cmd("AUTH LOGIN")[0] == 334
    assert d.cmd("%%%")[0] == 501
    huge = base64.b64encode(b"\0alice@example.test\0" + b"p" * 30_000).decode()
    code, _ = d.cmd(f"AUTH PLAIN {huge}")
    assert 500 <= code < 600
    # authzid (bob) different from authcid (alice), right password: refused.
    proxy = base64.b64encode(b"bob@example.test\0alice@example.test\0" + PASSWORD.encode())
    code, _ = d.cmd(b"AUTH PLAIN " + proxy)
    assert code == 535
    d.close()
    # The session machinery is intact: a correct AUTH on a new connection works.
    with smtplib.SMTP(*srv.addr("submission"), timeout=10) as s:
        s.login("alice@example.test", PASSWORD)


def test_implicit_tls_listeners_speak_only_tls_1_2_plus(srv: Server) -> None:
    for name in ("submissions", "pop3s"):
        for version, ok in ((ssl.TLSVersion.TLSv1, False), (ssl.TLSVersion.TLSv1_1, False),
                            (ssl.TLSVersion.TLSv1_2, True), (ssl.TLSVersion.TLSv1_3, True)):
            ctx = client_tls()
            with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ctx.maximum_version = version
            if not ok:
                ctx.set_ciphers("ALL:@SECLEVEL=0")
            try:
                with socket.create_connection(srv.addr(name), timeout=5) as raw, \
                        ctx.wrap_socket(raw, server_hostname="mail.example.test") as tls:
                    got = tls.version()
                    cipher = tls.cipher()[0]
            except (ssl.SSLError, OSError):
                assert not ok, f"{name}: {version.name} refused"
                continue
            assert ok, f"{name}: accepted {got}"
            assert "GCM" in cipher or "CHACHA20" in cipher, cipher


def test_cross_protocol_junk_is_dropped(srv: Server) -> None:
    junk = b"GET / HTTP/1.1\r\nHost: mail.example.test\r\nUser-Agent: x\r\n" + b"X: y\r\n" * 30
    for name in ("smtp", "pop3"):
        s = socket.create_connection(srv.addr(name), timeout=5)
        s.recv(1024)
        s.sendall(junk)
        t = time.monotonic()
        out = read_all(s, timeout=5)
        s.close()
        assert time.monotonic() - t < 4.5, f"{name}: still open after HTTP junk"
        assert out.count(b"\r\n") <= 12, f"{name}: answered every junk line: {out!r}"
