"""Fuzz invariant (STYLE.md habit 7): any bytes, in any split, give commands or
protocol errors; never another exception, never an unbounded buffer."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap.parser import CommandParser

SEEDS = [
    b"a1 LOGIN joe secret\r\n", b"a2 SELECT INBOX (CONDSTORE)\r\n",
    b"a3 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM)]<0.10>) (CHANGEDSINCE 5)\r\n",
    b"a4 SEARCH RETURN (MIN) CHARSET UTF-8 OR NOT SEEN (FROM {3}\r\nbob) UID $\r\n",
    b"a5 APPEND INBOX (\\Seen) {5+}\r\nhello\r\n", b"a6 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n",
    b'a7 LIST (SUBSCRIBED) "" ("*" %) RETURN (STATUS (MESSAGES))\r\n',
    b"a8 IDLE\r\nDONE\r\n", b"a9 AUTHENTICATE PLAIN =\r\n", b'b1 ID ("a" NIL)\r\n',
    b"b2 SELECT x (QRESYNC (1 2 1:5 (1 1)))\r\n", b"b3 LOGIN {4294967296}\r\n",
    b"b4 APPEND INBOX ~{3+}\r\na\x00b\r\n",
]

MAX_LINE = 512
MAX_LITERAL = 512


def _run(chunks: list[bytes]) -> list[object]:
    p = CommandParser(max_line=MAX_LINE, max_literal=MAX_LITERAL, max_append=4096,
                      max_command=4096)
    events: list[object] = []
    for chunk in chunks:
        p.feed(chunk)
        for _ in range(10_000):
            ev = p.next()
            if isinstance(ev, c.NeedData):
                break
            assert isinstance(ev, c.Command | c.ParseError | c.NeedContinuation
                              | c.AppendMessage | c.AppendChunk | c.AppendMessageEnd
                              | c.AppendDone | c.IdleDone | c.SaslResponse), ev
            if isinstance(ev, c.Idle):
                p.expect_idle_done(ev.tag)
            if isinstance(ev, c.Authenticate):
                p.expect_sasl_response(ev.tag)
            events.append(ev)
        else:
            raise AssertionError("parser loops")
        # bounded: one line, or one buffered literal, plus what this chunk added
        assert len(p._buf) <= MAX_LINE + MAX_LITERAL + len(chunk) + 2
    return events


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c_, len(data)) for c_ in cuts})
    out, prev = [], 0
    for pt in points:
        out.append(data[prev:pt])
        prev = pt
    out.append(data[prev:])
    return out


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=8))
def test_any_bytes(data: bytes, cuts: list[int]) -> None:
    _run(_split(data, cuts))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(min_value=0, max_value=400), st.binary(max_size=4)),
                max_size=6),
       st.lists(st.integers(min_value=0, max_value=600), max_size=6))
def test_mutated_real_commands(seeds: list[bytes], edits: list[tuple[int, bytes]],
                               cuts: list[int]) -> None:
    data = bytearray(b"".join(seeds))
    for pos, junk in edits:
        pos = min(pos, len(data))
        data[pos : pos + len(junk)] = junk
    whole = _run([bytes(data)])
    split = _run(_split(bytes(data), cuts))
    # however it is split, the same events come out (chunks may be split differently)
    def norm(evs: list[object]) -> list[object]:
        out: list[object] = []
        for ev in evs:
            if isinstance(ev, c.AppendChunk) and out and isinstance(out[-1], c.AppendChunk):
                out[-1] = c.AppendChunk(ev.tag, out[-1].data + ev.data)
            else:
                out.append(ev)
        return out
    assert norm(whole) == norm(split)
