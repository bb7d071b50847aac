"""Events the SMTP server core hands to its driver (the asyncio adapter).

Events marked *needs decision* pause the core until the driver calls
``SMTPServerConnection.respond(reply)``; the others are informational and the
core has already queued any reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailyard.protocol.smtp.address import ParsedPath

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "AuthCredentials",
    "AuthNeedSecrets",
    "AuthProof",
    "ConnectionClosed",
    "Event",
    "Hello",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "MessageData",
    "Quit",
    "RcptTo",
    "Sentinel",
    "StartTLS",
]


class Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = Sentinel("NEED_DATA")
"""The core needs more bytes: call ``receive_data`` (or ``receive_eof``)."""

PAUSED = Sentinel("PAUSED")
"""The core waits for ``respond()`` (or ``tls_started()``, or the connection is over)."""


@dataclass(frozen=True)
class Event:
    """Base class of all events."""

    needs_decision = False


@dataclass(frozen=True)
class Hello(Event):
    """HELO/EHLO (RFC 5321 §4.1.1.1). Needs decision: a 2xx reply accepts and
    the core sends its own HELO line or EHLO capability list."""

    name: str
    extended: bool
    needs_decision = True


@dataclass(frozen=True)
class MailFrom(Event):
    """MAIL FROM (RFC 5321 §4.1.1.2). Needs decision.

    ``address`` is the text between the angle brackets as sent; ``path`` the
    parsed parts (``path.mailbox`` the canonical mailbox, ``""`` for ``<>``).
    """

    address: str
    path: ParsedPath
    params: dict[str, str | None] = field(hash=False)
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    needs_decision = True


@dataclass(frozen=True)
class RcptTo(Event):
    """RCPT TO (RFC 5321 §4.1.1.3). Needs decision.

    ``notify`` is ``None`` when absent, else a tuple of ``NEVER`` or some of
    ``SUCCESS``/``FAILURE``/``DELAY`` (RFC 3461 §4.1); ``orcpt`` is
    ``(addr-type, decoded address)`` (RFC 3461 §4.2).
    """

    address: str
    path: ParsedPath
    params: dict[str, str | None] = field(hash=False)
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    needs_decision = True


@dataclass(frozen=True)
class AuthCredentials(Event):
    """Decoded SASL PLAIN or LOGIN credentials (RFC 4954, RFC 4616). Needs
    decision: a 2xx reply (default ``235 2.7.0``) authenticates the session,
    anything else (typically ``535 5.7.8``) counts as a failure."""

    mechanism: str
    authzid: str
    authcid: str
    password: str = field(repr=False)
    needs_decision = True


@dataclass(frozen=True)
class AuthNeedSecrets(Event):
    """SCRAM-SHA-256 (RFC 5802): the client named ``authcid`` and the exchange needs that
    user's stored secrets. Needs decision, answered with
    ``SMTPServerConnection.provide_secrets(secrets)`` (for an unknown user, made-up
    secrets with a stable salt: the exchange must look the same). ``respond(reply)``
    with a 4xx/5xx instead ends the exchange with that reply (e.g. ``454 4.7.0`` when
    the store cannot be read); ``respond(None)`` goes on with random secrets that no
    proof matches."""

    mechanism: str
    authcid: str
    authzid: str
    needs_decision = True


@dataclass(frozen=True)
class AuthProof(Event):
    """The end of a SCRAM exchange: the core checked the client's proof against the
    secrets given; ``valid`` says whether it matched (for a valid one the server
    signature has already gone out). Needs decision like :class:`AuthCredentials`;
    ``respond(None)`` accepts a valid proof and refuses an invalid one with 535, and a
    2xx answer to an invalid proof is a bug of the driver (RuntimeError)."""

    mechanism: str
    authzid: str
    authcid: str
    valid: bool
    needs_decision = True


@dataclass(frozen=True)
class StartTLS(Event):
    """The core queued ``220 2.0.0 Ready to start TLS`` and discarded any bytes
    received after the STARTTLS line (CVE-2011-0411). Flush, handshake, then
    call ``tls_started()``."""


@dataclass(frozen=True)
class MessageData(Event):
    """A piece of message content: canonical CRLF text, un-dot-stuffed for
    DATA, raw for BDAT. Append it to the spool."""

    chunk: bytes


@dataclass(frozen=True)
class MessageComplete(Event):
    """End of the message (``.`` after DATA, or ``BDAT n LAST``). Needs
    decision: 250 once the message is durably stored, 4xx/5xx otherwise.
    ``size`` is the content size in octets; ``chunked`` true for BDAT."""

    size: int = 0
    chunked: bool = False
    needs_decision = True


@dataclass(frozen=True)
class MessageAborted(Event):
    """The message failed (too big, bare CR/LF, connection lost). The core
    already replied where a reply was due; discard the spool."""

    reason: str


@dataclass(frozen=True)
class Quit(Event):
    """QUIT: the core queued 221. Flush ``data_to_send()`` and close."""


@dataclass(frozen=True)
class ConnectionClosed(Event):
    """The connection is over: the peer closed (``reason`` "eof"), or the core
    gave up (e.g. 421 after too many errors, already queued). Flush and close."""

    reason: str = "eof"
