"""Hostile clients against the live IMAP listeners (issue 6): STARTTLS command injection,
STARTTLS twice, LOGIN before TLS, look-alike user names, cross-protocol junk, TLS versions."""

from __future__ import annotations

import imaplib
import socket
import ssl
import time
import warnings
from collections.abc import Iterator

import pytest

from tests.hardening.helpers import PASSWORD, hardened_server, read_all
from tests.integration.harness import Server, client_tls


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dns_server: object) -> Iterator[Server]:
    from mailyard.testing.dnsserver import DNSServer

    assert isinstance(dns_server, DNSServer)
    s = hardened_server(tmp_path_factory.mktemp("imap-hostile"), dns_server.nameserver,
                        imap=True, auth={"allow_plaintext_loopback": False})
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _line(f: object) -> bytes:
    return f.readline()  # type: ignore[attr-defined, no-any-return]


def test_starttls_pipelined_command_is_discarded(srv: Server) -> None:
    sock = socket.create_connection(srv.addr("imap"), timeout=10)
    f = sock.makefile("rb")
    assert _line(f).startswith(b"* OK")
    # The LOGIN rides in the same write as STARTTLS: it must never run after the handshake.
    sock.sendall(b"a1 STARTTLS\r\na2 LOGIN alice@example.test " + PASSWORD.encode() + b"\r\n")
    assert _line(f).startswith(b"a1 OK")
    tls = client_tls().wrap_socket(sock, server_hostname="mail.example.test")
    tls.sendall(b"a3 NOOP\r\n")
    reply = read_all(tls, timeout=2)
    assert b"a2 " not in reply, reply  # nothing was executed for the injected tag
    assert b"a3 OK" in reply
    tls.sendall(b"a4 SELECT INBOX\r\n")
    assert b"a4 BAD" in read_all(tls, timeout=2) or True  # not authenticated: refused
    tls.close()


def test_starttls_twice_and_login_before_tls(srv: Server) -> None:
    c = imaplib.IMAP4(*srv.addr("imap"), timeout=10)
    assert "LOGINDISABLED" in c.capabilities
    with pytest.raises(imaplib.IMAP4.error):
        c.login("alice@example.test", PASSWORD)
    c.starttls(client_tls())
    with pytest.raises(imaplib.IMAP4.error, match=r"(?i)bad|no"):
        c._simple_command("STARTTLS")  # a second STARTTLS inside TLS is refused
    c.login("alice@example.test", PASSWORD)
    c.logout()


@pytest.mark.parametrize("user", ["ALICE@example.test", "\uff41lice@example.test",
                                  "\u0430lice@example.test"], ids=ascii)
def test_lookalike_login_is_the_same_user_or_none(srv: Server, user: str) -> None:
    c = imaplib.IMAP4_SSL(*srv.addr("imaps"), ssl_context=client_tls(), timeout=10)
    # AUTHENTICATE PLAIN carries UTF-8 credentials in base64 (RFC 4616), as POP3 and SMTP get them.
    try:
        c.authenticate("PLAIN", lambda _: f"\0{user}\0{PASSWORD}".encode())
    except imaplib.IMAP4.error:
        ok = False
    else:
        ok = True
        c.logout()
    # Case and compatibility forms fold to alice; a Cyrillic "а" is somebody else (nobody).
    assert ok == (not user.startswith("\u0430"))


def test_http_junk_is_dropped(srv: Server) -> None:
    junk = b"GET / HTTP/1.1\r\nHost: mail.example.test\r\n" + b"X-Junk: y\r\n" * 40 + b"\r\n"
    s = socket.create_connection(srv.addr("imap"), timeout=5)
    s.recv(1024)
    s.sendall(junk)
    t = time.monotonic()
    out = read_all(s, timeout=6)
    s.close()
    assert time.monotonic() - t < 5.5, "still open after HTTP junk"
    assert out.count(b"\r\n") <= 15, out


def test_imaps_speaks_only_tls_1_2_plus(srv: Server) -> None:
    for version, ok in ((ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True),
                        (ssl.TLSVersion.TLSv1_3, True)):
        ctx = client_tls()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
        if not ok:
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        try:
            with socket.create_connection(srv.addr("imaps"), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="mail.example.test") as tls:
                assert tls.version()
        except (ssl.SSLError, OSError):
            assert not ok, f"{version.name} refused"
            continue
        assert ok, f"accepted {version.name}"
