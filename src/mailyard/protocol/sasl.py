"""SASL server mechanisms as small step machines (sans-IO).

The protocol cores (SMTP AUTH, IMAP AUTHENTICATE, POP3 AUTH) do the base64
framing and the ``*`` cancel; these machines see decoded bytes only.

- PLAIN, RFC 4616: one message ``[authzid] NUL authcid NUL passwd``.
- LOGIN (draft-murchison-sasl-login): two challenges, "Username:" and "Password:".
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

MAX_RESPONSE = 8192  # octets of a decoded response; longer input is refused


class SaslError(Exception):
    """Malformed client response (the core answers with its syntax error reply)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    mechanism: str
    authzid: str
    authcid: str
    password: str


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


SaslStep = Challenge | Credentials


def b64decode_strict(text: bytes | str) -> bytes:
    """Decode a client's base64 response; '=' alone is the empty response (RFC 4954 §4)."""
    if isinstance(text, str):
        try:
            text = text.encode("ascii")
        except UnicodeEncodeError:
            raise SaslError("invalid base64") from None
    text = text.strip()
    if text == b"=":
        return b""
    if len(text) > MAX_RESPONSE * 4 // 3 + 4:
        raise SaslError("response too long")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("invalid base64") from None


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("credentials are not UTF-8") from None


def parse_plain(data: bytes) -> tuple[str, str, str]:
    """Split a PLAIN message into (authzid, authcid, password). RFC 4616 §2."""
    if len(data) > MAX_RESPONSE:
        raise SaslError("response too long")
    parts = data.split(b"\0")
    if len(parts) != 3:
        raise SaslError("malformed PLAIN response")
    authzid, authcid, password = (_utf8(p) for p in parts)
    if not authcid or not password:
        raise SaslError("empty user name or password")
    return authzid, authcid, password


class ServerMechanism:
    name = ""

    def start(self, initial: bytes | None) -> SaslStep:
        raise NotImplementedError

    def step(self, response: bytes) -> SaslStep:
        raise NotImplementedError


class Plain(ServerMechanism):
    name = "PLAIN"

    def start(self, initial: bytes | None) -> SaslStep:
        if initial is None:
            return Challenge(b"")
        return self.step(initial)

    def step(self, response: bytes) -> SaslStep:
        authzid, authcid, password = parse_plain(response)
        return Credentials(self.name, authzid, authcid, password)


class Login(ServerMechanism):
    name = "LOGIN"

    def __init__(self) -> None:
        self._user: str | None = None

    def start(self, initial: bytes | None) -> SaslStep:
        if initial:
            return self.step(initial)
        return Challenge(b"Username:")

    def step(self, response: bytes) -> SaslStep:
        if len(response) > MAX_RESPONSE:
            raise SaslError("response too long")
        if self._user is None:
            self._user = _utf8(response)
            if not self._user:
                raise SaslError("empty user name")
            return Challenge(b"Password:")
        password = _utf8(response)
        if not password:
            raise SaslError("empty password")
        return Credentials(self.name, "", self._user, password)


MECHANISMS: dict[str, type[ServerMechanism]] = {"PLAIN": Plain, "LOGIN": Login}


def server_mechanism(name: str) -> ServerMechanism | None:
    """A fresh machine for ``name`` (case-insensitive), or None when unsupported."""
    cls = MECHANISMS.get(name.upper())
    return cls() if cls else None
