"""A small client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) for tests.

Written from the RFC, independently of the server machine in
``mailyard.protocol.sasl`` (it shares no code with it but the key derivation
of the standard library), so the two check each other. It also plugs into
the standard library's clients::

    client = ScramClient("alice@example.test", "secret")
    imap.authenticate("SCRAM-SHA-256", client.imaplib)    # imaplib callback
    smtp.auth("SCRAM-SHA-256", client.smtplib)            # smtplib authobject

Options exist to send what a broken or hostile client would (a wrong nonce, a
channel-binding flag, a proof for another password) in tests of the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

__all__ = ["ScramClient", "ScramClientError"]


class ScramClientError(Exception):
    """The server said something a correct SCRAM server does not."""


def _escape(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


class ScramClient:
    def __init__(self, username: str, password: str, *, authzid: str = "",
                 nonce: str | None = None, gs2_flag: str = "n") -> None:
        self.username = username
        self.password = password
        self.authzid = authzid
        self.client_nonce = nonce or secrets.token_urlsafe(18)
        self.gs2_header = f"{gs2_flag},{'a=' + _escape(authzid) if authzid else ''},"
        self.client_first_bare = f"n={_escape(username)},r={self.client_nonce}"
        self.server_first = ""
        self.salt = b""
        self.iterations = 0
        self.server_signature = b""
        self.verified = False
        self._step = 0  # for the imaplib/smtplib callbacks

    # -- the three client messages ---------------------------------------------------------
    def first(self) -> bytes:
        return (self.gs2_header + self.client_first_bare).encode("utf-8")

    def final(self, server_first: bytes, *, nonce: str | None = None,
              channel_binding: bytes | None = None, password: str | None = None) -> bytes:
        """client-final-message for ``server_first``; the keywords forge parts of it."""
        text = server_first.decode("utf-8")
        attrs = dict(a.split("=", 1) for a in text.split(","))
        if not attrs.get("r", "").startswith(self.client_nonce):
            raise ScramClientError(f"server nonce does not extend ours: {text!r}")
        self.server_first = text
        self.salt = base64.b64decode(attrs["s"])
        self.iterations = int(attrs["i"])
        cbind = base64.b64encode(channel_binding if channel_binding is not None
                                 else self.gs2_header.encode()).decode()
        without_proof = f"c={cbind},r={nonce if nonce is not None else attrs['r']}"
        salted = hashlib.pbkdf2_hmac("sha256", (password or self.password).encode("utf-8"),
                                     self.salt, self.iterations)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        auth_message = f"{self.client_first_bare},{text},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.server_signature = hmac.new(server_key, auth_message, "sha256").digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def check(self, server_final: bytes) -> None:
        """Verify ``v=`` (RFC 5802 §5.1: the client authenticates the server)."""
        text = server_final.decode("utf-8", "replace")
        if not text.startswith("v="):
            raise ScramClientError(f"server error: {text!r}")
        if not hmac.compare_digest(base64.b64decode(text[2:]), self.server_signature):
            raise ScramClientError("wrong server signature")
        self.verified = True

    # -- adapters for the standard library's clients -----------------------------------------
    def imaplib(self, challenge: bytes) -> bytes:
        """``imaplib.IMAP4.authenticate`` callback: gets decoded challenges."""
        self._step += 1
        if self._step == 1:
            return self.first()
        if self._step == 2:
            return self.final(challenge)
        self.check(challenge)
        return b""

    def smtplib(self, challenge: bytes | None = None) -> str:
        """``smtplib.SMTP.auth`` authobject: None asks for the initial response."""
        if challenge is None:
            self._step = 1
            return self.first().decode()
        self._step += 1
        if self._step == 2:
            return self.final(challenge).decode()
        self.check(challenge)
        return ""
