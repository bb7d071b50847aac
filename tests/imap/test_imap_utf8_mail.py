"""UTF-8 mail over real sockets: SEARCH BODY/TEXT in bodies that are UTF-8 without a
declared charset (RFC 6532 mail), the RFC 6855 §4 ``UTF8 (literal8)`` form of APPEND,
and BINARY (RFC 3516): FETCH BINARY[] / BINARY.SIZE and APPEND with a literal8."""

from __future__ import annotations

import re
from pathlib import Path

from mailyard.message.searchctx import MessageSearchContext
from mailyard.message.text import index_text
from tests.imap.support import ImapTestServer, RawClient

KOELN = "Köln".encode()

# RFC 6532 mail: raw UTF-8 in the body, no charset anywhere
NO_CONTENT_TYPE = ("From: jörg@example.org\r\nSubject: Grüße\r\n\r\n"
                   "Grüße aus Köln\r\n").encode()
NO_CHARSET = ("From: a@example.org\r\nSubject: plain\r\nMIME-Version: 1.0\r\n"
              "Content-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
              "Viele Grüße aus Köln am Rhein\r\n").encode()
# a sender that says us-ascii and sends UTF-8 all the same
SAYS_ASCII = ("From: b@example.org\r\nSubject: ascii\r\nMIME-Version: 1.0\r\n"
              "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
              "Treffen in Köln, Straße 5\r\n").encode()
# no charset and not UTF-8 (latin-1 octets): read as before, never a false match
NOT_UTF8 = ("From: c@example.org\r\nSubject: latin\r\n\r\n"
            "Gr\xfc\xdfe aus K\xf6ln\r\n").encode("latin-1")
ASCII_ONLY = b"From: d@example.org\r\nSubject: ascii only\r\n\r\nKoeln is spelt so here\r\n"


def _append(raw: RawClient, msg: bytes) -> None:
    raw.send(b"x APPEND INBOX {%d+}\r\n%s\r\n" % (len(msg), msg))
    assert raw.until(b"x")[1].startswith(b"x OK [APPENDUID")


def _stored(raw: RawClient, seq: int) -> bytes:
    """The stored bytes of message ``seq`` (FETCH BODY.PEEK[])."""
    lines, tagged = raw.cmd(f"FETCH {seq} (BODY.PEEK[])")
    assert b" OK " in tagged, tagged
    (line,) = lines
    m = re.match(rb"\* %d FETCH \(BODY\[\] \{(\d+)\}\r\n" % seq, line)
    assert m, line
    size = int(m.group(1))
    return line[m.end() : m.end() + size]


def test_search_body_and_text_find_utf8_without_declared_charset(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path, seed=False) as srv:
        raw = RawClient(srv.port)
        raw.login()
        # APPEND: the store's indexer extracts the text from the stored bytes
        for msg in (NO_CONTENT_TYPE, NO_CHARSET, SAYS_ASCII, NOT_UTF8, ASCII_ONLY):
            _append(raw, msg)
        raw.close()
        imap = srv.imaplib()
        imap.select("INBOX")
        # the quoted form and the literal form
        assert imap.search("UTF-8", "BODY", '"Köln"'.encode()) == ("OK", [b"1 2 3"])
        imap.literal = KOELN
        assert imap.search("UTF-8", "BODY") == ("OK", [b"1 2 3"])
        imap.literal = "KÖLN".encode()  # case-insensitive (RFC 9051 §6.4.4)
        assert imap.search("UTF-8", "TEXT") == ("OK", [b"1 2 3"])
        imap.literal = "Straße".encode()
        assert imap.search("UTF-8", "TEXT") == ("OK", [b"3"])
        imap.literal = "Grüße aus".encode()
        assert imap.search("UTF-8", "BODY") == ("OK", [b"1 2"])
        # TEXT covers the headers too (raw UTF-8 in Subject, RFC 6532)
        imap.literal = "Grüße".encode()
        assert imap.search("UTF-8", "TEXT") == ("OK", [b"1 2"])
        # a two-character query takes the index's scan path: the same answer
        imap.literal = "öl".encode()
        assert imap.search("UTF-8", "BODY") == ("OK", [b"1 2 3"])
        imap.literal = "Kö".encode()
        assert imap.search("UTF-8", "TEXT") == ("OK", [b"1 2 3"])
        assert imap.search(None, "BODY", "Koeln") == ("OK", [b"5"])
        # PREVIEW reads the same text
        typ, data = imap.fetch("1", "(PREVIEW)")
        assert typ == "OK" and "Grüße aus Köln".encode() in data[0][1]
        imap.logout()


def test_index_and_scan_read_the_same_body_text() -> None:
    """The full-text index (``index_text``, what the store keeps) and the evaluator's
    per-message scan (``MessageSearchContext``) decode a body alike."""
    for msg in (NO_CONTENT_TYPE, NO_CHARSET, SAYS_ASCII, NOT_UTF8, ASCII_ONLY):
        indexed = index_text(msg)
        assert indexed is not None
        ctx = MessageSearchContext(uid=1, seq=1, flags=frozenset(), size=len(msg),
                                   internaldate=0.0, data=msg)
        assert ctx.body_text() == indexed.body
    assert "Köln" in index_text(NO_CONTENT_TYPE).body  # type: ignore[union-attr]
    # not UTF-8: as before, each undecodable octet is U+FFFD, no false "Köln"
    latin = index_text(NOT_UTF8).body  # type: ignore[union-attr]
    assert "Köln" not in latin and "\ufffd" in latin


def test_utf8_append_needs_enable_and_stores_bytes_as_sent(tmp_path: Path) -> None:
    msg = NO_CONTENT_TYPE
    with ImapTestServer(tmp_path, seed=False) as srv:
        raw = RawClient(srv.port)
        raw.login()
        caps = raw.cmd("CAPABILITY")[0][0].split()
        assert b"UTF8=ACCEPT" in caps and b"BINARY" in caps
        # RFC 6855 §4: without ENABLE UTF8=ACCEPT the UTF8 data item is an error (BAD),
        # and no continuation is offered for its literal
        raw.send(b"a1 APPEND INBOX (\\Seen) UTF8 (~{%d}\r\n" % len(msg))
        assert raw.line() == b"a1 BAD UTF8 APPEND data needs ENABLE UTF8=ACCEPT"
        # a non-synchronising one: its data and the ")" are skipped, not read as commands
        raw.send(b"a2 APPEND INBOX UTF8 (~{%d+}\r\n%s)\r\n" % (len(msg), msg))
        assert raw.line() == b"a2 BAD UTF8 APPEND data needs ENABLE UTF8=ACCEPT"
        assert raw.cmd("NOOP")[1].endswith(b"OK NOOP completed")
        assert srv.uids() == []

        assert raw.cmd("ENABLE UTF8=ACCEPT")[0] == [b"* ENABLED UTF8=ACCEPT"]
        # synchronising literal8, with flags and a date
        raw.send(b'a3 APPEND INBOX (\\Seen \\Flagged) "07-Feb-1994 21:52:25 -0800" '
                 b"UTF8 (~{%d}\r\n" % len(msg))
        assert raw.line().startswith(b"+ ")
        raw.send(msg + b")\r\n")
        _, tagged = raw.until(b"a3")
        assert re.match(rb"a3 OK \[APPENDUID \d+ 1\] APPEND completed", tagged), tagged
        # MULTIAPPEND (RFC 3502): UTF8 data, again UTF8 data, then a plain literal
        other = NO_CHARSET
        raw.send(b"a4 APPEND INBOX UTF8 (~{%d+}\r\n%s) (\\Draft) UTF8 (~{%d+}\r\n%s)"
                 b" {%d+}\r\n%s\r\n" % (len(msg), msg, len(other), other, len(msg), msg))
        _, tagged = raw.until(b"a4")
        assert re.match(rb"a4 OK \[APPENDUID \d+ 2:4\]", tagged), tagged
        # the data must be a literal8, and the ")" must follow it; nothing is added
        raw.send(b"a5 APPEND INBOX UTF8 ({%d}\r\n" % len(msg))
        assert raw.line() == b"a5 BAD UTF8 APPEND data must be a literal8 (~{n})"
        raw.send(b"a6 APPEND INBOX UTF8 (~{%d+}\r\n%s\r\n" % (len(msg), msg))
        assert raw.until(b"a6")[1] == b"a6 BAD expected ')' after UTF8 APPEND data"
        raw.send(b"a7 APPEND INBOX {%d+}\r\n%s UTF8 (~{%d+}\r\n%s\r\n"
                 % (len(msg), msg, len(msg), msg))
        assert raw.until(b"a7")[1] == b"a7 BAD expected ')' after UTF8 APPEND data"
        assert srv.uids() == [1, 2, 3, 4]

        assert b" OK " in raw.cmd("SELECT INBOX")[1]
        for seq, want in ((1, msg), (2, msg), (3, other), (4, msg)):
            assert _stored(raw, seq) == want  # byte for byte
        untagged, _ = raw.cmd("FETCH 1:3 (FLAGS INTERNALDATE)")
        assert untagged[0] == (b'* 1 FETCH (FLAGS (\\Flagged \\Recent \\Seen) '
                               b'INTERNALDATE " 8-Feb-1994 05:52:25 +0000")')
        assert untagged[2].startswith(b"* 3 FETCH (FLAGS (\\Draft \\Recent)")
        # what came in as UTF8 data is searchable like any other message
        untagged, _ = raw.cmd(b'SEARCH CHARSET UTF-8 BODY "%s"' % KOELN)
        assert untagged == [b"* SEARCH 1 2 3 4"]
        untagged, _ = raw.cmd('SEARCH SUBJECT "Grüße"'.encode())
        assert untagged == [b"* SEARCH 1 2 4"]
        raw.close()


def test_binary_fetch_and_literal8_append(tmp_path: Path) -> None:
    """RFC 3516: BINARY is advertised, and what it promises works."""
    blob = b"\x00\x01\xfe\xff binary \x00 octets\r\n"
    msg = (b"From: a@example.org\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n"
           b"--B\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: binary\r\n\r\n" + blob +
           b"--B\r\nContent-Type: application/x-odd\r\n"
           b"Content-Transfer-Encoding: x-unknown\r\n\r\nzzz\r\n--B--\r\n")
    with ImapTestServer(tmp_path, seed=False) as srv:
        raw = RawClient(srv.port)
        raw.login()
        assert b"BINARY" in raw.cmd("CAPABILITY")[0][0].split()
        # APPEND with a literal8 (RFC 3516 §4.4), NUL octets and all
        raw.send(b"b1 APPEND INBOX ~{%d}\r\n" % len(msg))
        assert raw.line().startswith(b"+ ")
        raw.send(msg + b"\r\n")
        assert raw.until(b"b1")[1].startswith(b"b1 OK [APPENDUID")
        raw.cmd("SELECT INBOX")
        # BINARY.PEEK[]: the whole message as stored, as a literal8 (it holds NUL)
        untagged, _ = raw.cmd("FETCH 1 (BINARY.PEEK[])")
        assert untagged == [b"* 1 FETCH (BINARY[] ~{%d}\r\n%s)" % (len(msg), msg)]
        # decoded parts, their sizes, a partial, a missing part
        untagged, _ = raw.cmd("FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1] BINARY.SIZE[2] "
                              "BINARY.PEEK[2]<1.3> BINARY.PEEK[9])")
        # (the CRLF before a delimiter is the delimiter's, RFC 2046 §5.1.1; a decoded
        # part comes as a literal8, an identity-encoded one only when it holds NUL)
        expect, octets = "Grüße".encode(), blob[:-2]
        assert untagged == [b"* 1 FETCH (BINARY[1] ~{%d}\r\n%s BINARY.SIZE[1] %d "
                            b"BINARY.SIZE[2] %d BINARY[2]<1> {3}\r\n%s BINARY[9] NIL)"
                            % (len(expect), expect, len(expect), len(octets), octets[1:4])]
        untagged, _ = raw.cmd("FETCH 1 (BINARY.PEEK[2])")
        assert untagged == [b"* 1 FETCH (BINARY[2] ~{%d}\r\n%s)" % (len(octets), octets)]
        # an encoding we cannot undo: NO [UNKNOWN-CTE] (RFC 3516 §4.3)
        _, tagged = raw.cmd("FETCH 1 (BINARY.PEEK[3])")
        assert tagged.endswith(b"NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding")
        _, tagged = raw.cmd("FETCH 1 (BINARY.SIZE[3])")
        assert b"NO [UNKNOWN-CTE]" in tagged
        # only part numbers in a BINARY section
        assert b" BAD " in raw.cmd("FETCH 1 (BINARY.PEEK[1.MIME])")[1]
        # A plain literal never carries NUL (RFC 9051 §9 CHAR8): BODY[] and RFC822 of
        # the same message, whole (streamed), partial or one part, send each NUL as
        # 0x80, the size unchanged; BINARY above gave the octets as stored.
        shown = msg.replace(b"\0", b"\x80")
        untagged, _ = raw.cmd("FETCH 1 (RFC822.SIZE BODY.PEEK[])")
        assert untagged == [b"* 1 FETCH (RFC822.SIZE %d BODY[] {%d}\r\n%s)"
                            % (len(msg), len(msg), shown)]
        untagged, _ = raw.cmd("FETCH 1 (BODY.PEEK[]<0.100000> BODY.PEEK[2])")
        assert untagged == [b"* 1 FETCH (BODY[]<0> {%d}\r\n%s BODY[2] {%d}\r\n%s)"
                            % (len(msg), shown, len(octets), octets.replace(b"\0", b"\x80"))]
        untagged, _ = raw.cmd("FETCH 1 (BODY.PEEK[TEXT])")
        assert b"\0" not in untagged[0] and b"\x80\x01\xfe\xff binary \x80 octets" in untagged[0]
        # BINARY[] without .PEEK sets \Seen (RFC 3516 §4.2)
        untagged, _ = raw.cmd("FETCH 1 (BINARY[1])")
        assert b"FLAGS (\\Recent \\Seen)" in untagged[0]
        raw.close()
