"""What :meth:`POP3Connection.next_event` hands to the application.

Only commands that need the world (credentials, message bodies, the store,
a TLS handshake) become events; everything the core can answer from its own
state (CAPA, STAT, LIST, UIDL, DELE, RSET, NOOP, UTF8, USER, syntax and state
errors) is answered inside the core, so every rule of RFC 1939 lives in one
place and is tested without a socket.

After an event other than :class:`Stls` and :class:`ConnectionClosed` the core
is *paused* until the application answers with one of the reply methods
(``login_ok``, ``ok``, ``err``, ``ok_multiline`` ... ``end_body``, and
``provide_secrets`` for :class:`AuthNeedSecrets`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mailyard.protocol.sasl import Credentials, NeedSecrets, ProofChecked


class Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    PAUSED = "PAUSED"  # answer the last event first
    FLUSH = "FLUSH"  # write data_to_send() out, then call next_event() again


NEED_DATA = Sentinel.NEED_DATA
PAUSED = Sentinel.PAUSED
FLUSH = Sentinel.FLUSH


@dataclass(frozen=True, slots=True)
class Pass:
    """USER/PASS login (RFC 1939 §7). Answer with ``login_ok(...)`` or ``err(...)``."""

    user: str
    password: str


@dataclass(frozen=True, slots=True)
class AuthCredentials:
    """A completed SASL exchange (RFC 5034). Answer like :class:`Pass`."""

    credentials: Credentials


@dataclass(frozen=True, slots=True)
class AuthNeedSecrets:
    """SCRAM-SHA-256 needs the stored secrets of ``request.authcid`` (RFC 5802).

    Answer with ``provide_secrets(...)`` (made-up ones with a stable salt for an
    unknown user), or ``err(...)`` to end the exchange (the store cannot be read).
    """

    request: NeedSecrets


@dataclass(frozen=True, slots=True)
class AuthProof:
    """A completed SCRAM exchange: the core checked the client's proof, ``proof.valid``.

    Answer like :class:`Pass`; ``login_ok`` for an invalid proof is refused
    (LocalProtocolError).
    """

    proof: ProofChecked


@dataclass(frozen=True, slots=True)
class Retr:
    """RETR msg (RFC 1939 §5); ``msg`` is 1-based, checked to exist and not be deleted.

    Answer with ``ok_multiline(...)``, ``send_body(...)``*, ``end_body()``, or ``err(...)``.
    """

    msg: int


@dataclass(frozen=True, slots=True)
class Top:
    """TOP msg n (RFC 1939 §7). Answer like :class:`Retr`; the core cuts the body."""

    msg: int
    lines: int


@dataclass(frozen=True, slots=True)
class Stls:
    """STLS accepted (RFC 2595 §4): "+OK" is already queued and buffered input discarded.

    Write ``data_to_send()``, run the TLS handshake, then call ``tls_started()``.
    No reply is expected.
    """


@dataclass(frozen=True, slots=True)
class Quit:
    """QUIT in the TRANSACTION state: enter UPDATE (RFC 1939 §6).

    ``deleted`` lists the 1-based numbers marked by DELE. Remove them, then answer
    ``ok(...)``, or ``err(...)`` when some could not be removed. The connection then closes.
    """

    deleted: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the connection, or the session ended (QUIT answered)."""


Event = (Pass | AuthCredentials | AuthNeedSecrets | AuthProof | Retr | Top | Stls | Quit
         | ConnectionClosed)
