"""dotstuff: DotUnstuffer fed three ways, BareLineEndingDetector, dot_stuff."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailyard.protocol.smtp.dotstuff import BareLineEndingDetector, DotUnstuffer, dot_stuff

# (wire bytes after 354, content, done, bare line ending seen)
CASES = [
    (b".\r\n", b"", True, False),
    (b"a\r\n.\r\n", b"a\r\n", True, False),
    (b"..a\r\n.\r\n", b".a\r\n", True, False),
    (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", True, False),
    (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n", True, False),
    (b"a.\r\nb\r\n.\r\n", b"a.\r\nb\r\n", True, False),
    (b"\r\n.\r\n", b"\r\n", True, False),
    (b"a\r\n", b"a\r\n", False, False),
    (b"a\r\n.", b"a\r\n", False, False),
    (b"a\r\n.\r", b"a\r\n", False, False),
    # Smuggling: none of these end the data.
    (b"a\n.\n", b"a", False, True),
    (b"a\n.\r\n", b"a", False, True),
    (b"a\r.\r", b"a", False, True),
    (b"a\r.\r\n", b"a", False, True),
    (b"a\r\n.\n", b"a\r\n", False, True),
    (b"a\r\n.\rb", b"a\r\n", False, True),
    (b"a\r\n.\n\r\n", b"a\r\n", False, True),
    # The real end still ends after bare characters.
    (b"a\nb\r\n.\r\n", b"a", True, True),
    (b"a\r\rb\r\n.\r\n", b"a", True, True),
]


def feed_all(pieces: list[bytes]) -> tuple[bytes, bool, bool, bytes]:
    """Feed like the server: unconsumed bytes are offered again."""
    u = DotUnstuffer()
    out = bytearray()
    pending = b""
    rest = b""
    for piece in pieces:
        pending += piece
        if u.done:
            rest += piece
            continue
        content, used = u.feed(pending)
        out += content
        if u.done:
            rest += pending[used:]
            pending = b""
        else:
            assert len(pending) - used <= 2  # never holds back more than ".\r"
            pending = pending[used:]
    return bytes(out), u.done, u.bare_line_ending, rest


@pytest.mark.parametrize(("wire", "content", "done", "bare"), CASES)
@pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
def test_unstuffer_three_ways(
    wire: bytes, content: bytes, done: bool, bare: bool, mode: str
) -> None:
    # Trailing data only means "the next command" once the data has ended.
    trailing = b"QUIT\r\n" if mode == "trailing" and done else b""
    data = wire + trailing
    pieces = [data[i : i + 1] for i in range(len(data))] if mode == "bytewise" else [data]
    out, got_done, got_bare, rest = feed_all(pieces)
    assert got_done == done
    assert got_bare == bare
    if not bare:
        assert out == content
    else:
        assert content.startswith(out) or out == content
    if done:
        assert rest == trailing


def test_unstuffer_returns_nothing_after_done() -> None:
    u = DotUnstuffer()
    assert u.feed(b".\r\nmore") == (b"", 3)
    assert u.feed(b"more") == (b"", 0)


@given(st.binary(max_size=300))
def test_dot_stuff_round_trips(content: bytes) -> None:
    # Only CRLF-clean content can round-trip; make it so.
    content = content.replace(b"\r", b"").replace(b"\n", b"\r\n")
    wire = dot_stuff(content)
    out, done, bare, rest = feed_all([wire])
    assert done and not bare and rest == b""
    expected = content if (not content or content.endswith(b"\r\n")) else content + b"\r\n"
    assert out == expected


@pytest.mark.parametrize(
    ("pieces", "found"),
    [
        ([b"a\r\nb\r\n"], False),
        ([b"a\r", b"\nb"], False),
        ([b"a\r", b"b"], True),
        ([b"a\n"], True),
        ([b"\n"], True),
        ([b"a\r\r\n"], True),
        ([b"a\r"], True),  # a trailing lone CR at the end of content
        ([b"", b"x\r\n"], False),
    ],
)
def test_bare_line_ending_detector(pieces: list[bytes], found: bool) -> None:
    d = BareLineEndingDetector()
    for p in pieces:
        d.feed(p)
    assert d.finish() == found


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=5))
def test_detector_agrees_with_whole_scan(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    d = BareLineEndingDetector()
    for a, b in itertools.pairwise(bounds):
        d.feed(data[a:b])
    stripped = data.replace(b"\r\n", b"")
    assert d.finish() == (b"\r" in stripped or b"\n" in stripped)
