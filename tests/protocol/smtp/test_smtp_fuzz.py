"""Fuzz the server core (STYLE habit 7): any bytes, in any state, split
anywhere, answered either way, give replies and events only: no exception,
no unbounded buffer, well-formed output, and the core always settles."""

from __future__ import annotations

import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailyard.protocol.smtp import events as ev
from mailyard.protocol.smtp.replies import Reply
from mailyard.protocol.smtp.server import MAX_LINE_READ, ServerSettings
from mailyard.testing.transcript import core_session

SEED_LINES = [
    b"EHLO c.example\r\n",
    b"HELO c.example\r\n",
    b"MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n",
    b"MAIL FROM:<>\r\n",
    b"RCPT TO:<b@example.test> NOTIFY=SUCCESS ORCPT=rfc822;b@example.test\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN AGEAYg==\r\n",
    b"AUTH LOGIN\r\n",
    b"YQ==\r\n",
    b"AUTH SCRAM-SHA-256\r\n",
    b"AUTH SCRAM-SHA-256 biwsbj11c2VyLHI9YWJj\r\n",  # n,,n=user,r=abc
    b"biwsbj11c2VyLHI9YWJj\r\n",
    b"Yz1iaXdzLHI9YWJjLHA9QUFBQQ==\r\n",  # c=biws,r=abc,p=AAAA
    b"=\r\n",
    b"*\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"..x\r\n",
    b"QUIT\r\n",
    b"\x00\xff\r",
]

SETTINGS = [
    ServerSettings(hostname="h.example", max_message_size=64, max_recipients=2, chunk_size=7),
    ServerSettings(
        hostname="h.example",
        mode="submission",
        tls_available=True,
        auth_requires_tls=False,
        max_errors=1000,
        max_auth_failures=1000,
        max_buffered=MAX_LINE_READ + 2,
    ),
]

REPLY_LINE = re.compile(rb"\d{3}[ -][^\r\n]*")

chunks = st.lists(st.one_of(st.sampled_from(SEED_LINES), st.binary(max_size=40)), max_size=30)


def check(data: list[bytes], splits: list[int], answers: list[bool], which: int) -> None:
    answers_iter = iter(answers * 50 or [True])

    def decide(event: ev.Event) -> Reply | None:
        ok = next(answers_iter, True)
        return None if ok else Reply.make(550, "no", "5.7.1")

    run = core_session(SETTINGS[which], decide=decide)
    stream = b"".join(data)
    cuts = sorted({0, len(stream), *(s % (len(stream) + 1) for s in splits)})
    for a, b in itertools.pairwise(cuts):
        run.feed(stream[a:b])
        assert run.conn.buffered <= SETTINGS[which].max_buffered
    run.conn.receive_eof()
    run.drain()
    assert run.conn.closed
    out = bytes(run.out)
    assert out == b"" or out.endswith(b"\r\n")
    for line in out.split(b"\r\n")[:-1]:
        assert REPLY_LINE.fullmatch(line), line
    # A message is either complete or aborted before another begins.
    total = 0
    for e in run.events:
        if isinstance(e, ev.MessageData):
            total += len(e.chunk)
            assert total <= SETTINGS[which].max_message_size
        elif isinstance(e, (ev.MessageComplete, ev.MessageAborted)):
            total = 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks,
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
    st.lists(st.booleans(), max_size=10),
    st.integers(min_value=0, max_value=1),
)
def test_fuzz_any_input(
    data: list[bytes], splits: list[int], answers: list[bool], which: int
) -> None:
    check(data, splits, answers, which)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=1))
def test_fuzz_raw_bytes(data: bytes, which: int) -> None:
    check([data], [], [], which)
