"""Streaming dot-stuffing and TOP cutting (RFC 1939 §3, §7), against simple references."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailyard.protocol.pop3.dotstuff import DotStuffer, TopLimiter, stuff


def ref_stuff(data: bytes) -> bytes:
    """Reference: stuff every line that starts with '.', then terminate."""
    lines = data.split(b"\n")
    out = b"\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)
    if data and not data.endswith(b"\n"):
        out += b"\r\n"
    return out + b".\r\n"


def ref_top(data: bytes, n: int) -> bytes:
    """Reference: header, blank line, n body lines (lines end at LF; blank = '' or '\\r')."""
    lines = re.findall(rb"[^\n]*\n|[^\n]+\Z", data)
    out = []
    body_left = None
    for ln in lines:
        if body_left is None:
            out.append(ln)
            if ln in (b"\n", b"\r\n"):
                body_left = n
        else:
            if body_left == 0:
                break
            out.append(ln)
            body_left -= 1
    return b"".join(out)


def stream(data: bytes, cuts: list[int], feed) -> bytes:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return b"".join(feed(data[a:b]) for a, b in itertools.pairwise(points))


STUFF_CASES = [
    (b"", b".\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b".hello\r\n", b"..hello\r\n.\r\n"),
    (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
    (b"no final newline", b"no final newline\r\n.\r\n"),
    (b"x\r\n.", b"x\r\n..\r\n.\r\n"),
    (b"bare\n.lf\n", b"bare\n..lf\n.\r\n"),
    (b"mid.dot\r\n", b"mid.dot\r\n.\r\n"),
]


@pytest.mark.parametrize(("data", "expected"), STUFF_CASES)
def test_dot_stuffer_whole_and_bytewise(data: bytes, expected: bytes) -> None:
    s = DotStuffer()
    assert s.feed(data) + s.finish() == expected
    s = DotStuffer()
    assert b"".join(s.feed(data[i:i + 1]) for i in range(len(data))) + s.finish() == expected


@given(st.binary(max_size=200).map(lambda b: b.replace(b"x", b".").replace(b"y", b"\r\n")),
       st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_dot_stuffer_any_chunking_matches_reference(data: bytes, cuts: list[int]) -> None:
    s = DotStuffer()
    assert stream(data, cuts, s.feed) + s.finish() == ref_stuff(data)


@given(st.binary(max_size=400).map(lambda b: b.replace(b"x", b".").replace(b"y", b"\n")))
def test_stuff_equals_replace(data: bytes) -> None:
    assert stuff(data) == data.replace(b"\n.", b"\n..")


@pytest.mark.parametrize("dots", [0, 1, 15, 16, 17, 40])
def test_stuff_past_the_dot_scan_limit(dots: int) -> None:
    # Line-starting dots and mid-line dots, around the switch to the regex pass.
    data = b"".join(b".a.b\r\n" if i % 2 else b"c.d\r\n" for i in range(dots)) + b".end"
    assert stuff(data) == data.replace(b"\n.", b"\n..")
    s = DotStuffer()
    assert s.feed(data) + s.finish() == ref_stuff(data)


MSG = b"Subject: t\r\nX: y\r\n\r\nl1\r\n.l2\r\nl3\r\n"

TOP_CASES = [
    (0, b"Subject: t\r\nX: y\r\n\r\n"),
    (1, b"Subject: t\r\nX: y\r\n\r\nl1\r\n"),
    (2, b"Subject: t\r\nX: y\r\n\r\nl1\r\n.l2\r\n"),
    (3, MSG),
    (99, MSG),
]


@pytest.mark.parametrize(("n", "expected"), TOP_CASES)
def test_top_limiter_whole_and_bytewise(n: int, expected: bytes) -> None:
    t = TopLimiter(n)
    assert t.feed(MSG) == expected
    t = TopLimiter(n)
    out = b"".join(t.feed(MSG[i:i + 1]) for i in range(len(MSG)))
    assert out == expected
    assert t.done == (n <= 3)


def test_top_limiter_header_only_message() -> None:
    t = TopLimiter(5)
    assert t.feed(b"Subject: no body\r\n") == b"Subject: no body\r\n"
    assert not t.done


def test_top_limiter_stops_early_for_big_bodies() -> None:
    t = TopLimiter(1)
    assert t.feed(b"H: v\r\n\r\nfirst\r\nsecond\r\n") == b"H: v\r\n\r\nfirst\r\n"
    assert t.done
    assert t.feed(b"more\r\n" * 1000) == b""


def test_top_limiter_rejects_negative() -> None:
    with pytest.raises(ValueError):
        TopLimiter(-1)


@given(st.binary(max_size=200).map(lambda b: b.replace(b"x", b"\r\n").replace(b"y", b"\n")),
       st.integers(min_value=0, max_value=5),
       st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_top_limiter_any_chunking_matches_reference(data: bytes, n: int, cuts: list[int]) -> None:
    t = TopLimiter(n)
    assert stream(data, cuts, t.feed) == ref_top(data, n)
