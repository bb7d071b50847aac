"""AUTH SCRAM-SHA-256 in the SMTP core (RFC 4954 + RFC 5802/7677): the secrets step,
the server signature as a last 334, and every way the exchange can go wrong."""

from __future__ import annotations

import base64

import pytest

from mailyard.protocol import sasl
from mailyard.protocol.smtp import events as ev
from mailyard.protocol.smtp.replies import Reply
from mailyard.protocol.smtp.server import ServerSettings, SMTPServerConnection, State
from mailyard.testing.scram import ScramClient
from mailyard.testing.transcript import CoreSession
from mailyard.testing.transcript import core_session as start

USER = "alice@example.test"
PASSWORD = "pencil"
SECRETS = sasl.derive_scram_secrets(PASSWORD, salt=b"0123456789abcdef", iterations=4096)
SETTINGS = ServerSettings(hostname="h.example", mode="submission")


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def session(decide: object = None) -> tuple[CoreSession, list[ev.Event]]:
    seen: list[ev.Event] = []

    def default(e: ev.Event) -> Reply | sasl.ScramSecrets | None:
        seen.append(e)
        if isinstance(e, ev.AuthNeedSecrets):
            return SECRETS
        return None

    run = start(SETTINGS, tls_active=True, decide=decide or default,  # type: ignore[arg-type]
                setup=b"EHLO c\r\n")
    seen.clear()  # the EHLO of the setup
    return run, seen


def challenge(run: CoreSession) -> bytes:
    """The data of the one 334 the core just sent."""
    lines = run.take_lines()
    assert len(lines) == 1 and lines[0].startswith("334 "), lines
    return base64.b64decode(lines[0][4:])


def test_full_exchange_with_initial_response_then_mail() -> None:
    run, seen = session()
    client = ScramClient(USER, PASSWORD)
    run.feed(b"AUTH SCRAM-SHA-256 " + b64(client.first()) + b"\r\n")
    assert seen == [ev.AuthNeedSecrets("SCRAM-SHA-256", USER, "")]
    server_first = challenge(run)
    run.feed(b64(client.final(server_first)) + b"\r\n")
    client.check(challenge(run))  # v=: the server knows the password too
    assert run.conn.authenticated_as is None  # not before the client's empty answer
    run.feed(b"\r\nMAIL FROM:<alice@example.test>\r\n")
    assert run.take_lines() == ["235 2.7.0 Authentication successful", "250 2.1.0 Sender OK"]
    assert seen[-2] == ev.AuthProof("SCRAM-SHA-256", "", USER, True)
    assert run.conn.authenticated_as == USER


def test_exchange_without_initial_response_and_equals_as_empty_answer() -> None:
    run, seen = session()
    client = ScramClient(USER, PASSWORD)
    run.feed(b"AUTH scram-sha-256\r\n")
    assert challenge(run) == b""  # "334 " : the client speaks first (RFC 5802 §5)
    run.feed(b64(client.first()) + b"\r\n")
    run.feed(b64(client.final(challenge(run))) + b"\r\n")
    client.check(challenge(run))
    run.feed(b"=\r\n")  # RFC 4954 §4's form of an empty response is accepted too
    assert run.take_lines() == ["235 2.7.0 Authentication successful"]
    assert [type(e) for e in seen] == [ev.AuthNeedSecrets, ev.AuthProof]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_wrong_password_is_535_at_once_and_the_session_goes_on(mode: str) -> None:
    run, seen = session()
    client = ScramClient(USER, "not the password")
    run.feed(b"AUTH SCRAM-SHA-256 " + b64(client.first()) + b"\r\n", mode)
    run.feed(b64(client.final(challenge(run))) + b"\r\nNOOP\r\n", mode)
    assert run.take_lines() == ["535 5.7.8 Authentication credentials invalid", "250 2.0.0 OK"]
    assert seen[-1] == ev.AuthProof("SCRAM-SHA-256", "", USER, False)
    assert run.conn.authenticated_as is None and run.conn.state is State.READY


def test_the_default_answer_to_the_secrets_is_secrets_nothing_matches() -> None:
    """A driver that answers every decision with None (respond(None)) gets the exchange
    going on with random secrets: it ends in 535, never in a login."""
    run = start(SETTINGS, tls_active=True, setup=b"EHLO c\r\n")
    client = ScramClient(USER, PASSWORD)
    run.feed(b"AUTH SCRAM-SHA-256 " + b64(client.first()) + b"\r\n")
    run.feed(b64(client.final(challenge(run))) + b"\r\n")
    assert run.take_lines() == ["535 5.7.8 Authentication credentials invalid"]
    assert [type(e) for e in run.events] == [ev.AuthNeedSecrets, ev.AuthProof]


def test_driver_can_refuse_the_lookup_with_a_temporary_failure() -> None:
    def decide(e: ev.Event) -> Reply | None:
        if isinstance(e, ev.AuthNeedSecrets):
            return Reply.make(454, "Temporary authentication failure", "4.7.0")
        return None

    run, _ = session(decide)
    run.feed(b"AUTH SCRAM-SHA-256 " + b64(b"n,,n=a,r=abc") + b"\r\nNOOP\r\n")
    assert run.take_lines() == ["454 4.7.0 Temporary authentication failure", "250 2.0.0 OK"]


def _to_server_first(run: CoreSession, client: ScramClient) -> bytes:
    run.feed(b"AUTH SCRAM-SHA-256 " + b64(client.first()) + b"\r\n")
    return challenge(run)


BAD = "501 5.5.2 Malformed authentication response"


@pytest.mark.parametrize(("name", "final", "reply"), [
    ("bad base64", lambda c, sf: b"not base64!", "501 5.5.2 Cannot Base64-decode client response"),
    ("missing proof", lambda c, sf: b64(c.final(sf).rpartition(b",p=")[0]), BAD),
    ("missing channel binding", lambda c, sf: b64(c.final(sf).partition(b",")[2]), BAD),
    ("wrong nonce", lambda c, sf: b64(c.final(sf, nonce=c.client_nonce + "x")), BAD),
    ("client nonce only", lambda c, sf: b64(c.final(sf, nonce=c.client_nonce)), BAD),
    ("binding of another header", lambda c, sf: b64(c.final(sf, channel_binding=b"y,,")), BAD),
    ("cancel", lambda c, sf: b"*", "501 5.7.0 Authentication cancelled"),
])
def test_malformed_client_final_gets_501_and_the_session_goes_on(name: str, final: object,
                                                                 reply: str) -> None:
    run, seen = session()
    client = ScramClient(USER, PASSWORD)
    server_first = _to_server_first(run, client)
    run.feed(final(client, server_first) + b"\r\nNOOP\r\n")  # type: ignore[operator]
    assert run.take_lines() == [reply, "250 2.0.0 OK"], name
    assert not any(isinstance(e, ev.AuthProof) for e in seen)  # no verdict, no failure count
    assert run.conn.state is State.READY and run.conn.authenticated_as is None


@pytest.mark.parametrize(("first", "reply"), [
    (b64(b"p=tls-unique,,n=alice,r=abc"), BAD),  # we offer no SCRAM-SHA-256-PLUS
    (b64(b"n,,r=abc"), BAD),
    (b64(b"n,,n=al=ice,r=abc"), BAD),
    (b64(b"n,,n=alice,r=a\x01bc"), BAD),
    (b"%%%", "501 5.5.2 Cannot Base64-decode client response"),
    (b"=", BAD),  # an empty client-first-message
])
def test_malformed_client_first(first: bytes, reply: str) -> None:
    run, seen = session()
    run.feed(b"AUTH SCRAM-SHA-256 " + first + b"\r\nNOOP\r\n")
    assert run.take_lines() == [reply, "250 2.0.0 OK"]
    run.feed(b"AUTH SCRAM-SHA-256\r\n")
    assert challenge(run) == b""
    run.feed(first + b"\r\nNOOP\r\n")
    assert run.take_lines() == [reply, "250 2.0.0 OK"]
    assert seen == []


@pytest.mark.parametrize(("answer", "reply"), [
    (b"*", "501 5.7.0 Authentication cancelled"),
    (b64(b"more"), BAD),
])
def test_anything_but_an_empty_answer_to_the_signature_logs_nobody_in(answer: bytes,
                                                                     reply: str) -> None:
    run, seen = session()
    client = ScramClient(USER, PASSWORD)
    run.feed(b64(client.final(_to_server_first(run, client))) + b"\r\n")
    client.check(challenge(run))
    run.feed(answer + b"\r\nMAIL FROM:<alice@example.test>\r\n")
    assert run.take_lines() == [reply, "530 5.7.0 Authentication required"]
    assert run.conn.authenticated_as is None
    assert not any(isinstance(e, ev.AuthProof) for e in seen)


def test_cancel_right_after_the_empty_challenge() -> None:
    run, _ = session()
    run.feed(b"AUTH SCRAM-SHA-256\r\n*\r\nNOOP\r\n")
    assert run.take_lines() == ["334 ", "501 5.7.0 Authentication cancelled", "250 2.0.0 OK"]


def test_three_wrong_proofs_close_like_three_wrong_passwords() -> None:
    run, _ = session()
    for attempt in range(3):
        client = ScramClient(USER, "wrong")
        run.feed(b64(client.final(_to_server_first(run, client))) + b"\r\n")
        lines = run.take_lines()
        assert lines[0] == "535 5.7.8 Authentication credentials invalid"
        assert run.conn.closed == (attempt == 2)
    assert lines[1].startswith("421 ")


def test_driver_mistakes_are_runtime_errors() -> None:
    conn = SMTPServerConnection(SETTINGS, tls_active=True)
    with pytest.raises(RuntimeError):
        conn.provide_secrets(SECRETS)  # nothing asked for secrets
    conn.receive_data(b"EHLO c\r\nAUTH SCRAM-SHA-256 " + b64(b"n,,n=a,r=abc") + b"\r\n")
    assert isinstance(conn.next_event(), ev.Hello)
    conn.respond()
    need = conn.next_event()
    assert isinstance(need, ev.AuthNeedSecrets)
    with pytest.raises(RuntimeError):
        conn.respond(Reply.make(235, "ok", "2.7.0"))  # secrets are not a reply
    client = ScramClient("a", "wrong", nonce="abc")
    conn.provide_secrets(SECRETS)
    server_first = base64.b64decode(conn.data_to_send().split(b"\r\n")[-2][4:])
    conn.receive_data(b64(client.final(server_first)) + b"\r\n")
    proof = conn.next_event()
    assert proof == ev.AuthProof("SCRAM-SHA-256", "", "a", False)
    with pytest.raises(RuntimeError):
        conn.respond(Reply.make(235, "ok", "2.7.0"))  # an invalid proof cannot log in
    conn.respond(Reply.make(535, "no", "5.7.8"))
    assert conn.authenticated_as is None


def test_shutdown_while_waiting_for_secrets() -> None:
    conn = SMTPServerConnection(SETTINGS, tls_active=True)
    conn.receive_data(b"EHLO c\r\nAUTH SCRAM-SHA-256 " + b64(b"n,,n=a,r=abc") + b"\r\n")
    conn.next_event()
    conn.respond()
    assert isinstance(conn.next_event(), ev.AuthNeedSecrets)
    conn.shutdown()
    assert isinstance(conn.next_event(), ev.ConnectionClosed)
    conn.provide_secrets(SECRETS)  # a late answer after the close is ignored
    assert conn.closed


def test_ehlo_offers_scram_only_where_it_offers_plain() -> None:
    run = start(SETTINGS, tls_active=True)
    run.feed(b"EHLO c\r\n")
    assert "250 AUTH PLAIN LOGIN SCRAM-SHA-256" in run.lines()
    run = start(ServerSettings(hostname="h.example", mode="submission", tls_available=True))
    run.feed(b"EHLO c\r\nAUTH SCRAM-SHA-256\r\n")
    assert not any("AUTH" in ln and ln.startswith("250") for ln in run.lines())
    assert run.lines()[-1] == "538 5.7.11 Encryption required for requested authentication mechanism"
