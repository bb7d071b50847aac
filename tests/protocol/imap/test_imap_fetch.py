"""FETCH item rendering and search over real message bytes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from mailyard.message.mime import parse_mime
from mailyard.message.searchctx import MessageSearchContext
from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import search as s
from mailyard.protocol.imap.fetch import (
    UnknownCTE,
    format_datetime,
    index_item,
    message_item,
    needs_message,
    sets_seen,
)
from mailyard.protocol.imap.parser import CommandParser
from mailyard.protocol.imap.response import fetch

MSG = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
       b"From: Fred Foobar <foobar@Blurdybloop.example>\r\n"
       b"Subject: =?utf-8?q?caf=C3=A9?= meeting\r\n"
       b"Content-Type: multipart/mixed; boundary=X\r\n\r\n"
       b"--X\r\nContent-Type: text/plain\r\n\r\nHello Joe\r\n"
       b"--X\r\nContent-Type: application/x-thing\r\nContent-Transfer-Encoding: x-weird\r\n\r\n"
       b"zz\r\n--X--\r\n")


def parse_fetch(line: bytes) -> c.Fetch:
    p = CommandParser()
    p.feed(line)
    cmd = p.next()
    assert isinstance(cmd, c.Fetch), cmd
    return cmd


def render(line: bytes) -> bytes:
    cmd = parse_fetch(line)
    root = parse_mime(MSG)
    return fetch(1, [message_item(i, root) for i in cmd.items])


def test_body_sections_and_partial() -> None:
    out = render(b"a FETCH 1 (BODY.PEEK[1] BODY[]<0.20> BODY[1.MIME] BODY[9])\r\n")
    assert out == (b"* 1 FETCH (BODY[1] {9}\r\nHello Joe BODY[]<0> {20}\r\n" + MSG[:20] +
                   b" BODY[1.MIME] {28}\r\nContent-Type: text/plain\r\n\r\n BODY[9] NIL)\r\n")


def test_partial_past_end_echoes_origin() -> None:
    out = render(b"a FETCH 1 BODY[]<0.99999>\r\n")
    assert out == b"* 1 FETCH (BODY[]<0> {%d}\r\n" % len(MSG) + MSG + b")\r\n"


def test_rfc822_items() -> None:
    out = render(b"a FETCH 1 RFC822.HEADER\r\n")
    hdr = MSG[: MSG.index(b"\r\n\r\n") + 4]
    assert out == b"* 1 FETCH (RFC822.HEADER {%d}\r\n" % len(hdr) + hdr + b")\r\n"


def test_binary_unknown_cte() -> None:
    cmd = parse_fetch(b"a FETCH 1 BINARY[2]\r\n")
    with pytest.raises(UnknownCTE):
        message_item(cmd.items[0], parse_mime(MSG))
    cmd = parse_fetch(b"a FETCH 1 BINARY.SIZE[1]\r\n")
    assert message_item(cmd.items[0], parse_mime(MSG)) == ("BINARY.SIZE[1]", 9)


@pytest.mark.parametrize(("line", "seen"), [
    (b"a FETCH 1 BODY[]\r\n", True), (b"a FETCH 1 BODY.PEEK[]\r\n", False),
    (b"a FETCH 1 RFC822\r\n", True), (b"a FETCH 1 RFC822.HEADER\r\n", False),
    (b"a FETCH 1 RFC822.TEXT\r\n", True), (b"a FETCH 1 BINARY[1]\r\n", True),
    (b"a FETCH 1 BINARY.PEEK[1]\r\n", False), (b"a FETCH 1 (FLAGS BODY)\r\n", False),
    (b"a FETCH 1 FULL\r\n", False),
])
def test_sets_seen(line: bytes, seen: bool) -> None:
    assert sets_seen(parse_fetch(line).items) is seen


def test_needs_message() -> None:
    assert not needs_message(parse_fetch(b"a FETCH 1 (FLAGS UID MODSEQ)\r\n").items)
    assert needs_message(parse_fetch(b"a FETCH 1 ALL\r\n").items)


def test_format_datetime() -> None:
    tz = dt.timezone(-dt.timedelta(hours=7))
    ts = dt.datetime(1996, 7, 17, 2, 44, 25, tzinfo=tz).timestamp()
    assert format_datetime(ts, tz) == "17-Jul-1996 02:44:25 -0700"
    assert format_datetime(0) == " 1-Jan-1970 00:00:00 +0000"


def test_search_over_message_bytes() -> None:
    def ctx(**kw: Any) -> MessageSearchContext:
        return MessageSearchContext(uid=7, seq=1, flags=frozenset({"\\Seen"}), size=len(MSG),
                                    internaldate=0.0, data=MSG, **kw)

    env = s.SearchEnv(max_seq=1, max_uid=7)
    p = CommandParser()
    p.feed('a SEARCH SUBJECT "CAFÉ" BODY joe FROM blurdybloop SENTON 7-Feb-1994 '
           'HEADER Content-Type multipart\r\n'.encode())
    cmd = p.next()
    assert isinstance(cmd, c.Search), cmd
    assert s.needs_text(cmd.key) == {"header", "body", "sent"}
    assert s.evaluate(cmd.key, ctx(), env)
    p.feed(b"b SEARCH OR TEXT nomatch BODY zz\r\n")
    cmd2 = p.next()
    assert isinstance(cmd2, c.Search)
    assert not s.evaluate(cmd2.key, ctx(), env)  # zz is in a non-text part


def test_index_items() -> None:
    cmd = parse_fetch(b"a UID FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE MODSEQ SAVEDATE "
                      b"EMAILID THREADID)\r\n")
    pairs = [index_item(i, uid=42, flags=["\\Seen", "$Junk"], internaldate=0.0, size=99,
                        modseq=7, email_id="Mabc") for i in cmd.items]
    assert fetch(3, pairs) == (b'* 3 FETCH (UID 42 FLAGS (\\Seen $Junk) INTERNALDATE '
                               b'" 1-Jan-1970 00:00:00 +0000" RFC822.SIZE 99 MODSEQ (7) '
                               b'SAVEDATE NIL EMAILID (Mabc) THREADID NIL)\r\n')
