"""AUTH SCRAM-SHA-256 in the POP3 core (RFC 5034 + RFC 5802/7677)."""

from __future__ import annotations

import base64

import pytest

from mailyard.protocol import sasl
from mailyard.protocol.pop3 import (
    NEED_DATA,
    PAUSED,
    AuthNeedSecrets,
    AuthProof,
    LocalProtocolError,
    POP3Connection,
    State,
)
from mailyard.testing.scram import ScramClient

USER = "alice@example.org"
PASSWORD = "pencil"
SECRETS = sasl.derive_scram_secrets(PASSWORD, salt=b"0123456789abcdef", iterations=4096)
MAILDROP = [(10, "1.1"), (20, "1.2")]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class App:
    """The application side: secrets for USER, a maildrop for a valid proof."""

    def __init__(self) -> None:
        self.conn = POP3Connection(tls_active=True)
        self.conn.greet("ready")
        self.conn.data_to_send()
        self.events: list[object] = []

    def feed(self, data: bytes) -> list[bytes]:
        """Feed ``data``, answer every event, return the reply lines."""
        conn = self.conn
        conn.receive_data(data)
        out = b""
        while True:
            ev = conn.next_event()
            out += conn.data_to_send()
            if ev is NEED_DATA:
                return out.split(b"\r\n")[:-1]
            assert ev is not PAUSED
            self.events.append(ev)
            if isinstance(ev, AuthNeedSecrets):
                conn.provide_secrets(SECRETS)
            elif isinstance(ev, AuthProof):
                if ev.proof.valid:
                    conn.login_ok(MAILDROP)
                else:
                    conn.err("Authentication failed", code="AUTH")
            else:  # pragma: no cover - a test bug
                raise AssertionError(ev)


def challenge(lines: list[bytes]) -> bytes:
    assert len(lines) == 1 and lines[0].startswith(b"+ "), lines
    return base64.b64decode(lines[0][2:])


def to_server_first(app: App, client: ScramClient, *, initial: bool = True) -> bytes:
    if initial:
        return challenge(app.feed(b"AUTH SCRAM-SHA-256 " + b64(client.first()) + b"\r\n"))
    assert app.feed(b"AUTH SCRAM-SHA-256\r\n") == [b"+ "]
    return challenge(app.feed(b64(client.first()) + b"\r\n"))


@pytest.mark.parametrize("initial", [True, False])
def test_full_exchange(initial: bool) -> None:
    app = App()
    client = ScramClient(USER, PASSWORD)
    server_first = to_server_first(app, client, initial=initial)
    assert app.events == [AuthNeedSecrets(sasl.NeedSecrets("SCRAM-SHA-256", USER, ""))]
    client.check(challenge(app.feed(b64(client.final(server_first)) + b"\r\n")))
    assert app.conn.state is State.SASL  # waiting for the empty answer to v=
    assert app.feed(b"\r\nSTAT\r\n") == [b"+OK Maildrop has 2 messages (30 octets)",
                                         b"+OK 2 30"]
    assert app.events[-1] == AuthProof(sasl.ProofChecked("SCRAM-SHA-256", "", USER, True))
    assert app.conn.state is State.TRANSACTION


def test_wrong_password_then_user_pass_still_works() -> None:
    app = App()
    client = ScramClient(USER, "wrong")
    server_first = to_server_first(app, client)
    assert app.feed(b64(client.final(server_first)) + b"\r\n") == [
        b"-ERR [AUTH] Authentication failed"]
    assert app.conn.state is State.AUTHORIZATION
    assert app.feed(b"USER x\r\n") == [b"+OK Send PASS"]


def test_login_ok_for_an_invalid_proof_is_a_bug_of_the_application() -> None:
    conn = POP3Connection(tls_active=True)
    client = ScramClient(USER, "wrong")
    conn.receive_data(b"AUTH SCRAM-SHA-256 " + b64(client.first()) + b"\r\n")
    assert isinstance(conn.next_event(), AuthNeedSecrets)
    conn.data_to_send()
    conn.provide_secrets(SECRETS)
    server_first = base64.b64decode(conn.data_to_send()[2:-2])
    conn.receive_data(b64(client.final(server_first)) + b"\r\n")
    proof = conn.next_event()
    assert isinstance(proof, AuthProof) and not proof.proof.valid
    with pytest.raises(LocalProtocolError):
        conn.login_ok(MAILDROP)
    with pytest.raises(LocalProtocolError):
        conn.provide_secrets(SECRETS)  # not what is pending


@pytest.mark.parametrize("in_sasl", [False, True])
def test_application_can_refuse_the_lookup(in_sasl: bool) -> None:
    conn = POP3Connection(tls_active=True)
    first = b64(b"n,,n=a,r=abc")
    conn.receive_data(b"AUTH SCRAM-SHA-256\r\n" + first + b"\r\n" if in_sasl
                      else b"AUTH SCRAM-SHA-256 " + first + b"\r\n")
    assert isinstance(conn.next_event(), AuthNeedSecrets)
    assert conn.state is (State.SASL if in_sasl else State.AUTHORIZATION)
    conn.err("Temporary authentication failure", code="SYS/TEMP")
    assert conn.data_to_send().endswith(b"-ERR [SYS/TEMP] Temporary authentication failure\r\n")
    assert conn.state is State.AUTHORIZATION
    conn.receive_data(b"NOOP\r\nUSER a\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b"-ERR NOOP is not valid in this state\r\n+OK Send PASS\r\n"


@pytest.mark.parametrize(("name", "final", "reply"), [
    ("bad base64", lambda c, sf: b"%%%", b"-ERR [AUTH] Invalid base64 in authentication response"),
    ("wrong nonce", lambda c, sf: b64(c.final(sf, nonce="x")),
     b"-ERR [AUTH] Authentication failed: nonce does not match"),
    ("no proof", lambda c, sf: b64(c.final(sf).rpartition(b",p=")[0]),
     b"-ERR [AUTH] Authentication failed: client-final-message needs p= last"),
    ("cancel", lambda c, sf: b"*", b"-ERR [AUTH] Authentication cancelled"),
])
def test_malformed_client_final(name: str, final: object, reply: bytes) -> None:
    app = App()
    client = ScramClient(USER, PASSWORD)
    server_first = to_server_first(app, client)
    assert app.feed(final(client, server_first) + b"\r\n") == [reply], name  # type: ignore[operator]
    assert app.conn.state is State.AUTHORIZATION
    assert not any(isinstance(e, AuthProof) for e in app.events)


@pytest.mark.parametrize("first", [b"p=tls-unique,,n=a,r=abc", b"n,,n=a", b"n,,n=a=,r=abc"])
def test_malformed_client_first(first: bytes) -> None:
    app = App()
    lines = app.feed(b"AUTH SCRAM-SHA-256 " + b64(first) + b"\r\n")
    assert len(lines) == 1 and lines[0].startswith(b"-ERR [AUTH] Authentication failed: ")
    assert app.conn.state is State.AUTHORIZATION and app.events == []


@pytest.mark.parametrize("answer", [b"*", b64(b"x")])
def test_anything_but_an_empty_answer_to_the_signature_logs_nobody_in(answer: bytes) -> None:
    app = App()
    client = ScramClient(USER, PASSWORD)
    server_first = to_server_first(app, client)
    client.check(challenge(app.feed(b64(client.final(server_first)) + b"\r\n")))
    lines = app.feed(answer + b"\r\nSTAT\r\n")
    assert lines[0].startswith(b"-ERR [AUTH] ")
    assert lines[1] == b"-ERR STAT is not valid in this state"
    assert app.conn.state is State.AUTHORIZATION
    assert not any(isinstance(e, AuthProof) for e in app.events)
