"""The bad-input list: every entry must give a protocol error (with the tag when
there is one), never an exception, never unbounded memory or recursion."""

from __future__ import annotations

import time
from typing import Any

import pytest

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap.parser import CommandParser

BAD: list[tuple[bytes, str | None]] = [
    (b"a1 FROB\r\n", "a1"),  # unknown command
    (b"a1\r\n", "a1"),  # no command
    (b"a1  NOOP\r\n", "a1"),  # two spaces
    (b"a1 NOOP extra\r\n", "a1"),
    (b"* NOOP\r\n", None),  # "*" is not a tag
    (b"+ NOOP\r\n", None),
    (b"(x) NOOP\r\n", None),
    (b'"a" NOOP\r\n', None),
    (b"a1 LOGIN\r\n", "a1"),
    (b'a1 LOGIN "unterminated\r\n', "a1"),
    (b'a1 LOGIN "bad\\escape" x\r\n', "a1"),
    (b"a1 SELECT\r\n", "a1"),
    (b"a1 FETCH 0 FLAGS\r\n", "a1"),
    (b"a1 FETCH 0:5 FLAGS\r\n", "a1"),
    (b"a1 FETCH 4294967296 FLAGS\r\n", "a1"),
    (b"a1 FETCH 1:: FLAGS\r\n", "a1"),
    (b"a1 FETCH , FLAGS\r\n", "a1"),
    (b"a1 FETCH 1 (FLAGS\r\n", "a1"),
    (b"a1 FETCH 1 BODY[1.0]\r\n", "a1"),
    (b"a1 FETCH 1 BODY[MIME]\r\n", "a1"),
    (b"a1 FETCH 1 BODY[HEADER.FIELDS ()]\r\n", "a1"),
    (b"a1 FETCH 1 BODY[]<1.0>\r\n", "a1"),
    (b"a1 FETCH 1 BINARY[HEADER]\r\n", "a1"),
    (b"a1 FETCH 1 BODY.PEEK\r\n", "a1"),
    (b"a1 FETCH 1 NONSENSE\r\n", "a1"),
    (b"a1 STORE 1 FLAGS (\\Recent)\r\n", "a1"),
    (b"a1 STORE 1 XFLAGS (\\Seen)\r\n", "a1"),
    (b"a1 SEARCH\r\n", "a1"),
    (b"a1 SEARCH (SEEN\r\n", "a1"),
    (b"a1 SEARCH SEEN)\r\n", "a1"),
    (b"a1 SEARCH OR SEEN\r\n", "a1"),
    (b"a1 SEARCH NOT\r\n", "a1"),
    (b"a1 SEARCH BEFORE 31-Feb-2020\r\n", "a1"),
    (b"a1 SEARCH BEFORE 1-Foo-2020\r\n", "a1"),
    (b"a1 SEARCH LARGER x\r\n", "a1"),
    (b"a1 SEARCH RETURN (BOGUS) ALL\r\n", "a1"),
    (b"a1 SEARCH UID 0\r\n", "a1"),
    (b"a1 STATUS INBOX (BOGUS)\r\n", "a1"),
    (b"a1 STATUS INBOX ()\r\n", "a1"),
    (b"a1 LIST (BOGUS) \"\" *\r\n", "a1"),
    (b"a1 LIST (RECURSIVEMATCH) \"\" *\r\n", "a1"),
    (b"a1 ENABLE\r\n", "a1"),
    (b"a1 UID FROB 1\r\n", "a1"),
    (b"a1 UID EXPUNGE\r\n", "a1"),
    (b"a1 SELECT INBOX (BOGUS)\r\n", "a1"),
    (b"a1 SELECT INBOX (QRESYNC (0 1))\r\n", "a1"),
    (b"a1 ID (\"a\")\r\n", "a1"),
    (b"a1 APPEND INBOX (\\Seen\r\n", "a1"),
    (b"a1 LOGIN {3}x\r\n", "a1"),  # junk after the literal marker is not a marker
    (b"a1 EXPUNGE 1\r\n", "a1"),
    (b"a1 SELECT a\x00b\r\n", "a1"),
    (b"a1 SEARCH CHARSET UTF-8 SUBJECT \"\xff\xfe\"\r\n", "a1"),
]

BAD_MAILBOXES = [
    b"&U,BTFw",  # unterminated shift
    b"&AGE-",  # encodes printable ASCII
    b"&Jjo!-",  # not base64
    b"&U,BTFw-&ZeVnLIqe-",  # adjacent shifts
    b"&AAA=-",  # padding
    b'"/etc/passwd"',
    b'"a/../b"',
    b'"a//b"',
    b'".."',
    b'"a\\\\b\x01"',
    b'""',
    b"x" * 1001,
    b"caf\xc3\xa9",  # 8-bit without UTF8=ACCEPT
]


@pytest.mark.parametrize(("data", "tag"), BAD)
def test_bad_syntax_is_bad_with_tag(data: bytes, tag: str | None, feed3: Any) -> None:
    evs = feed3(data)
    assert len(evs) == 1, evs
    err = evs[0]
    assert isinstance(err, c.ParseError), err
    assert err.tag == tag
    assert err.kind == "bad"


@pytest.mark.parametrize("name", BAD_MAILBOXES)
def test_bad_mailbox_names(name: bytes, feed3: Any) -> None:
    for verb in (b"SELECT", b"CREATE", b"DELETE", b"SUBSCRIBE"):
        [err] = feed3(b"m1 " + verb + b" " + name + b"\r\n")
        assert isinstance(err, c.ParseError) and err.tag == "m1"


def test_lists_nested_thousands_deep(feed3: Any) -> None:
    data = b"a SEARCH " + b"(" * 5000 + b"ALL" + b")" * 5000 + b"\r\n"
    [err] = feed3(data, max_line=100_000)
    assert isinstance(err, c.ParseError) and "deep" in err.message
    data = b"a FETCH 1 " + b"(" * 5000 + b"\r\n"
    [err] = feed3(data, max_line=100_000)
    assert isinstance(err, c.ParseError)


def test_not_chain_100k_deep_is_bad_not_recursion_error() -> None:
    data = b"a SEARCH " + b"NOT " * 100_000 + b"ALL\r\n"
    p = CommandParser(max_line=1_000_000)
    p.feed(data)
    err = p.next()
    assert isinstance(err, c.ParseError) and err.tag == "a" and err.kind == "bad"
    # with the default line limit the same input is refused for its length
    p2 = CommandParser()
    p2.feed(data)
    err = p2.next()
    assert isinstance(err, c.ParseError) and err.kind == "line_too_long"


def test_or_chain_deep_is_bad() -> None:
    data = b"a SEARCH " + b"OR SEEN " * 10_000 + b"ALL\r\n"
    p = CommandParser(max_line=1_000_000)
    p.feed(data)
    assert isinstance(p.next(), c.ParseError)


def test_million_element_set_is_ranges_not_a_list() -> None:
    numbers = ",".join(str(n) for n in range(1, 1_000_001)).encode()
    p = CommandParser(max_line=10_000_000, max_command=10_000_000)
    p.feed(b"a UID FETCH " + numbers + b" FLAGS\r\n")
    t0 = time.monotonic()
    cmd = p.next()
    assert time.monotonic() - t0 < 20
    assert isinstance(cmd, c.Fetch)
    assert cmd.sequence.ranges == ((1, 1_000_000),)
    # with default limits that command is simply too long
    p2 = CommandParser()
    p2.feed(b"a UID FETCH " + numbers + b" FLAGS\r\n")
    err = p2.next()
    assert isinstance(err, c.ParseError) and err.tag == "a"


def test_full_range_and_reversed_star(feed3: Any) -> None:
    [cmd] = feed3(b"a UID FETCH 1:4294967295 FLAGS\r\n")
    assert list(cmd.sequence.select([5, 9, 4294967295])) == [5, 9, 4294967295]
    [cmd] = feed3(b"a FETCH *:1 FLAGS\r\n")
    assert list(cmd.sequence.seqnums(3)) == [1, 2, 3]


def test_junk_after_append_literal(feed3: Any) -> None:
    evs = feed3(b"a APPEND INBOX {2+}\r\nhi junk\r\n")
    assert isinstance(evs[-1], c.ParseError) and evs[-1].tag == "a"


def test_literal8_outside_append(feed3: Any) -> None:
    [err] = feed3(b"a LOGIN ~{3+}\r\nabc x\r\n")
    assert isinstance(err, c.ParseError)
