"""Fuzz the POP3 core with an invariant (STYLE.md habit 7): any input, in any state,
yields replies or events, never another exception, and never unbounded buffering."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from mailyard.protocol.pop3 import (
    FLUSH,
    NEED_DATA,
    SASL_LINE_MAX,
    AuthCredentials,
    AuthNeedSecrets,
    AuthProof,
    ConnectionClosed,
    Pass,
    POP3Connection,
    Quit,
    Retr,
    Stls,
    Top,
)
from mailyard.protocol.sasl import derive_scram_secrets

SEEDS = [b"USER a", b"PASS secret", b"PASS x", b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH",
         b"AUTH PLAIN " + base64.b64encode(b"\0a\0secret"), b"*", b"=", b"STLS", b"UTF8",
         b"CAPA", b"STAT", b"LIST", b"LIST 1", b"RETR 1", b"RETR 0", b"TOP 1 0", b"TOP 2 -1",
         b"DELE 1", b"DELE 9", b"RSET", b"NOOP", b"UIDL", b"UIDL 2", b"QUIT", b"", b"\xff",
         b"\0", b"A" * 300, base64.b64encode(b"secret"),
         b"AUTH SCRAM-SHA-256", b"AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,,n=a,r=abc"),
         base64.b64encode(b"n,,n=a,r=abc"), base64.b64encode(b"c=biws,r=abc,p=AAAA")]
SECRETS = derive_scram_secrets("secret", salt=b"0123456789abcdef", iterations=4096)

line = st.one_of(st.sampled_from(SEEDS), st.binary(max_size=40))
ending = st.sampled_from([b"\r\n", b"\n", b"\r", b""])
script = st.lists(st.tuples(line, ending), max_size=25)


def answer(conn: POP3Connection, ev: object) -> None:
    if isinstance(ev, AuthNeedSecrets):
        conn.provide_secrets(SECRETS)
    elif isinstance(ev, AuthProof):
        if ev.proof.valid:
            conn.login_ok([(10, "a.1")])
        else:
            conn.err("no", code="AUTH")
    elif isinstance(ev, Pass | AuthCredentials):
        pw = ev.password if isinstance(ev, Pass) else ev.credentials.password
        if pw == "secret":
            conn.login_ok([(10, "a.1"), (20, "a.2")])
        else:
            conn.err("no", code="AUTH")
    elif isinstance(ev, Retr | Top):
        conn.ok_multiline()
        conn.send_body(b"H: v\r\n\r\n.body\r\nx")
        conn.end_body()
    elif isinstance(ev, Quit):
        conn.ok("bye")
    elif isinstance(ev, Stls):
        conn.tls_started()


@settings(max_examples=300, deadline=None)
@given(script, st.booleans(), st.booleans(), st.integers(min_value=1, max_value=7))
def test_any_input_gives_replies_or_events(parts: list[tuple[bytes, bytes]], tls: bool,
                                           plaintext: bool, chunk: int) -> None:
    conn = POP3Connection(tls_active=tls, tls_available=not tls, allow_plaintext_auth=plaintext)
    data = b"".join(a + b for a, b in parts)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    feed = iter(chunks)
    for _ in range(10_000):
        ev = conn.next_event()
        out = conn.data_to_send()
        assert out == b"" or out.endswith(b"\r\n")
        assert len(conn._inbuf) <= SASL_LINE_MAX + chunk
        if ev is NEED_DATA:
            conn.receive_data(next(feed))
        elif ev is FLUSH:
            continue
        elif isinstance(ev, ConnectionClosed):
            return
        else:
            answer(conn, ev)
    raise AssertionError("the core did not finish")
