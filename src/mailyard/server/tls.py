"""TLS contexts and self-signed certificates.

Every listener uses the same server context: TLS 1.2 or newer, the ssl module's
secure default cipher list minus anything without forward secrecy or AEAD.

No TLS 1.3 session tickets. OpenSSL sends them as post-handshake messages right after
the client's Finished, so after STARTTLS/STLS they reach the client just as it writes
its first command. A client that reads in one thread and writes in another on the same
SSL object (imaplib2, hence offlineimap) can then lose that command inside its own
OpenSSL: SSL_write returns success and nothing reaches the socket, so both sides wait
(issue #3; seen with ss: the client's kernel had sent everything up to its Finished).
Going by OpenSSL 3.0's code, the reader's SSL_read runs the handshake state machine for
the ticket, which pushes a buffering BIO onto the connection; the writer's record lands
in it, and it is freed when the ticket is done. Without tickets the server sends nothing
after the handshake until the client speaks (tests/hardening/test_starttls_flight.py).

The cost is TLS 1.3 resumption, which saved little: measured on the 2 vCPU test VM, a
full handshake without tickets takes the server about 155 us of CPU, a resumed one that
issues new tickets about the same, a full one with tickets about 190 us. TLS 1.2
resumption, whose ticket is part of the handshake, is unchanged. After STARTTLS the
server acknowledges the client's Finished at once instead (streams.ack_now): the
tickets used to carry that ACK.

Reloading (SIGHUP) builds a fresh context: ``load_cert_chain`` on a live one would add
the new certificate beside the old (OpenSSL keeps one per key type, so an RSA client
would go on getting a replaced RSA certificate). The context a listener was started
with hands every handshake to the current one from its SNI callback
(:func:`follow_current`), which OpenSSL runs for every ClientHello, SNI or not.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

# Modern AEAD suites with forward secrecy (TLS 1.2); TLS 1.3 suites are always on.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.num_tickets = 0  # see the module docstring
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def follow_current(base: ssl.SSLContext,
                   current: Callable[[], ssl.SSLContext | None]) -> None:
    """Make handshakes started on ``base`` use ``current()`` (its certificate and key).

    For servers that captured ``base`` when they started (asyncio's ``start_server``
    with ``ssl=``, aiohttp's HTTPS site): after a reload ``current()`` returns the fresh
    context, and each new connection switches to it before the server's certificate is
    chosen. The other settings come from ``base``, which :func:`server_context` made the
    same way.
    """

    def switch(conn: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None,
               ctx: ssl.SSLContext) -> None:
        fresh = current()
        if fresh is not None and fresh is not ctx:
            conn.context = fresh

    base.sni_callback = switch


def client_context(*, ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if ca_file:
        # Trust the system store as well as the extra CA.
        try:
            ctx.load_default_certs()
        except ssl.SSLError:
            pass
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_ca(cert_path: Path, key_path: Path, *, name: str = "mailyard test CA") -> None:
    """A self-signed CA (for tests and the two-instance demo)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_certificate(cert_path: Path, key_path: Path, *, hostnames: list[str],
                     ca_cert: Path | None = None, ca_key: Path | None = None,
                     days: int = 825, rsa_bits: int = 0) -> None:
    """A server certificate for ``hostnames``: self-signed, or signed by the given CA.
    An EC (P-256) key, or RSA of ``rsa_bits`` bits for clients that take only RSA."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits) if rsa_bits
        else ec.generate_private_key(ec.SECP256R1()))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    sans: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    if ca_cert is not None and ca_key is not None:
        issuer_cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
        issuer_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        issuer = issuer_cert.subject
    else:
        issuer_key, issuer = key, subject
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                              x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
