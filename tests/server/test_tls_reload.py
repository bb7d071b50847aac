"""SIGHUP replaces the TLS certificate on every listener: implicit TLS (the context was
handed to the listening server at start) and STARTTLS alike, and a certificate of a key
type no longer on disk is not served any more (load_cert_chain on the running context
used to add the new one beside the old: one per key type)."""

from __future__ import annotations

import imaplib
import signal
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from tests.integration.harness import Server, client_tls, make_server

from mailyard.server.tls import make_certificate


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = make_server(tmp_path, users=("alice",))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _cn(der: bytes | None) -> str:
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


def _rsa_only_client() -> ssl.SSLContext:
    ctx = client_tls()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("aRSA")  # only suites authenticated by an RSA certificate
    return ctx


def _implicit_cn(srv: Server, name: str, ctx: ssl.SSLContext | None = None) -> str:
    with socket.create_connection(srv.addr(name), timeout=10) as raw, \
            (ctx or client_tls()).wrap_socket(raw) as tls:
        return _cn(tls.getpeercert(binary_form=True))


def _submission_starttls_cn(srv: Server, ctx: ssl.SSLContext | None = None) -> str:
    with smtplib.SMTP(*srv.addr("submission"), timeout=10) as smtp:
        smtp.starttls(context=ctx or client_tls())
        assert isinstance(smtp.sock, ssl.SSLSocket)
        return _cn(smtp.sock.getpeercert(binary_form=True))


def _imap_starttls_cn(srv: Server) -> str:
    imap = imaplib.IMAP4(*srv.addr("imap"), timeout=10)
    try:
        imap.starttls(ssl_context=client_tls())
        assert isinstance(imap.sock, ssl.SSLSocket)
        return _cn(imap.sock.getpeercert(binary_form=True))
    finally:
        imap.logout()


def _all_cns(srv: Server, ctx: ssl.SSLContext | None = None) -> dict[str, str]:
    out = {name: _implicit_cn(srv, name, ctx) for name in ("submissions", "imaps", "pop3s")}
    out["submission+STARTTLS"] = _submission_starttls_cn(srv, ctx)
    if ctx is None:
        out["imap+STARTTLS"] = _imap_starttls_cn(srv)
    return out


def _reload(srv: Server) -> None:
    assert srv.proc is not None
    before = srv.log().count("reloaded configuration")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while srv.log().count("reloaded configuration") <= before:
        assert time.monotonic() < deadline, f"no reload logged:\n{srv.log()}"
        assert "reload failed" not in srv.log(), srv.log()
        time.sleep(0.05)


def test_sighup_serves_the_new_certificate_and_forgets_the_old_key_type(server: Server) -> None:
    cert, key = server.data / "tls" / "cert.pem", server.data / "tls" / "key.pem"
    start = _all_cns(server)
    assert set(start.values()) == {"mail.example.test"}  # init's EC certificate

    # EC -> RSA, with another name: every port, implicit TLS or STARTTLS, serves it.
    make_certificate(cert, key, hostnames=["rsa.example.test"], rsa_bits=2048)
    _reload(server)
    assert set(_all_cns(server).values()) == {"rsa.example.test"}, _all_cns(server)
    assert set(_all_cns(server, _rsa_only_client()).values()) == {"rsa.example.test"}

    # RSA -> EC again: the new EC certificate everywhere, and a client that accepts
    # only RSA certificates no longer finds the RSA one, which is gone from disk.
    make_certificate(cert, key, hostnames=["ec2.example.test"])
    _reload(server)
    assert set(_all_cns(server).values()) == {"ec2.example.test"}, _all_cns(server)
    for name in ("submissions", "imaps", "pop3s"):
        try:
            got = _implicit_cn(server, name, _rsa_only_client())
        except (ssl.SSLError, ConnectionError):
            continue  # no certificate for it: the handshake fails, as it should
        assert got != "rsa.example.test", f"{name} still serves the replaced RSA certificate"
    try:
        got = _submission_starttls_cn(server, _rsa_only_client())
    except (ssl.SSLError, ConnectionError, smtplib.SMTPException):
        pass
    else:
        assert got != "rsa.example.test", "STARTTLS still serves the replaced RSA certificate"


def test_a_failed_reload_keeps_serving_the_running_certificate(server: Server) -> None:
    cert = server.data / "tls" / "cert.pem"
    cert.write_text("not a certificate\n")
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while "reload failed" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert set(_all_cns(server).values()) == {"mail.example.test"}
