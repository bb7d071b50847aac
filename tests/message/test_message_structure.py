"""BODYSTRUCTURE, BODY and ENVELOPE against hand-built expected values.

Every size and line count below is computed from the literal pieces the
message is assembled from (len() of what we wrote), never from the code
under test, following RFC 2046 §5.1.1: the CRLF before a boundary delimiter
belongs to the delimiter.
"""

from __future__ import annotations

from mailyard.message.bodystructure import body, bodystructure, count_lines
from mailyard.message.envelope import envelope, parse_address_list
from mailyard.message.mime import parse_mime
from mailyard.message.parse import drop_fields, parse_fields
from mailyard.protocol.imap.response import serialize

CRLF = b"\r\n"


def test_simple_text_message() -> None:
    # RFC 9051 §7.5.2 example shape: ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" n lines)
    text = b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n" * 3
    msg = (b"From: Fred Foobar <foobar@Blurdybloop.example>\r\n"
           b"Subject: afternoon meeting\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\n") + text
    # TEXT/PLAIN; CHARSET=US-ASCII is the default, written in the default form
    assert serialize(body(msg)) == \
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d 3)' % len(text)
    assert serialize(bodystructure(msg)) == \
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d 3 NIL NIL NIL NIL)' % len(text)
    msg2 = msg.replace(b"US-ASCII", b"UTF-8")
    assert serialize(body(msg2)) == \
        b'("TEXT" "PLAIN" ("CHARSET" "UTF-8") NIL NIL "7bit" %d 3)' % len(text)


def test_no_content_type_defaults() -> None:
    msg = b"Subject: x\r\n\r\nab\r\ncd"
    assert serialize(body(msg)) == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1)'


def test_nested_multipart_with_message_rfc822() -> None:
    inner_text = b"inner body line 1\r\ninner body line 2\r\n"
    inner_msg = (b"From: Inner <in@example.org>\r\n"
                 b"Subject: inner\r\n"
                 b"Content-Type: text/plain; charset=utf-8\r\n"
                 b"\r\n") + inner_text
    alt_plain = b"plain version"
    alt_html = b"<p>html version</p>\r\n<p>two</p>"
    alternative = (b"--ALT\r\n"
                   b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + alt_plain + CRLF +
                   b"--ALT\r\n"
                   b"Content-Type: text/html; charset=us-ascii\r\n"
                   b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + alt_html + CRLF +
                   b"--ALT--\r\n")
    attachment = b"AAECAwQF\r\n"
    outer_body = (b"This is a MIME preamble.\r\n"
                  b"--OUTER\r\n"
                  b"Content-Type: multipart/alternative; boundary=ALT\r\n\r\n" + alternative +
                  CRLF + b"--OUTER\r\n"
                  b"Content-Type: message/rfc822\r\n"
                  b"Content-Description: forwarded\r\n\r\n" + inner_msg +
                  CRLF + b"--OUTER\r\n"
                  b"Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
                  b"Content-Transfer-Encoding: base64\r\n"
                  b"Content-Disposition: attachment; filename=\"a.bin\"\r\n"
                  b"Content-ID: <id1@example>\r\n"
                  b"Content-Language: en, de\r\n"
                  b"Content-Location: http://example.invalid/a.bin\r\n\r\n" + attachment +
                  CRLF + b"--OUTER--\r\nepilogue\r\n")
    msg = (b"From: Outer <out@example.org>\r\n"
           b"To: a@example.org\r\n"
           b"Subject: nested\r\n"
           b"MIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="OUTER"\r\n\r\n') + outer_body

    # part octets: the alternative part's body is everything up to the CRLF before --OUTER
    alt_size = len(alternative)
    inner_size = len(inner_msg)
    att_size = len(attachment)
    # RFC 9051 §9: the bodies of a multipart are juxtaposed, "(...)(...)"
    inner_env = (b'(NIL "inner" (("Inner" NIL "in" "example.org")) (("Inner" NIL "in" "example.org"))'
                 b' (("Inner" NIL "in" "example.org")) NIL NIL NIL NIL NIL)')
    expected_ext = (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "quoted-printable" %d %d NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "ALT") NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL "forwarded" "7bit" %d ' + inner_env +
        b' ("text" "plain" ("charset" "utf-8") NIL NIL "7bit" %d 2 NIL NIL NIL NIL) %d'
        b' NIL NIL NIL NIL)'
        b'("application" "octet-stream" ("name" "a.bin") "<id1@example>" NIL "base64" %d'
        b' NIL ("attachment" ("filename" "a.bin")) ("en" "de") "http://example.invalid/a.bin")'
        b' "mixed" ("boundary" "OUTER") NIL NIL NIL)'
    ) % (len(alt_plain), alt_plain.count(b"\n"), len(alt_html), alt_html.count(b"\n"),
         inner_size, len(inner_text), inner_msg.count(b"\n"), att_size)
    assert serialize(bodystructure(msg)) == expected_ext

    expected_body = (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" %d %d)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "quoted-printable" %d %d)'
        b' "alternative")'
        b'("message" "rfc822" NIL NIL "forwarded" "7bit" %d ' + inner_env +
        b' ("text" "plain" ("charset" "utf-8") NIL NIL "7bit" %d 2) %d)'
        b'("application" "octet-stream" ("name" "a.bin") "<id1@example>" NIL "base64" %d)'
        b' "mixed")'
    ) % (len(alt_plain), alt_plain.count(b"\n"), len(alt_html), alt_html.count(b"\n"),
         inner_size, len(inner_text), inner_msg.count(b"\n"), att_size)
    assert serialize(body(msg)) == expected_body
    assert alt_size == parse_mime(msg).children[0].body_size


def test_multipart_without_close_delimiter_and_longer_boundary_lookalike() -> None:
    part1 = b"--Bx is not a delimiter\r\nline"
    msg = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
           b"--B\r\n\r\n" + part1 + b"\r\n--B \t\r\n\r\nlast part without close")
    root = parse_mime(msg)
    assert [p.body for p in root.children] == [part1, b"last part without close"]


def test_multipart_without_boundary_is_opaque() -> None:
    msg = b"Content-Type: multipart/mixed\r\n\r\nabc"
    assert serialize(body(msg)) == b'("application" "octet-stream" NIL NIL NIL "7bit" 3)'


def test_digest_default_is_message_rfc822() -> None:
    inner = b"Subject: d\r\n\r\nx"
    msg = (b"Content-Type: multipart/digest; boundary=D\r\n\r\n"
           b"--D\r\n\r\n" + inner + b"\r\n--D--\r\n")
    root = parse_mime(msg)
    assert root.children[0].maintype == "MESSAGE" and root.children[0].message is not None
    out = serialize(body(msg))
    assert out.startswith(b'(("message" "rfc822" NIL NIL NIL "7bit" %d (NIL "d"' % len(inner))


def test_deeply_nested_mime_is_bounded() -> None:
    depth = 5000
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                    for i in range(depth))
    msg = head + b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    out = serialize(bodystructure(msg))  # no RecursionError
    assert out.count(b'"mixed"') == 32  # mime.DEFAULT_MAX_DEPTH levels are split
    assert b'"application" "octet-stream"' in out
    nested_msgs = b"Content-Type: message/rfc822\r\n\r\n" * depth + b"Subject: end\r\n\r\nx"
    out = serialize(body(nested_msgs))
    assert out.count(b'"rfc822"') == 32


def test_many_parts_are_bounded() -> None:
    parts = b"".join(b"--P\r\n\r\n%d\r\n" % i for i in range(20_000))
    msg = b"Content-Type: multipart/mixed; boundary=P\r\n\r\n" + parts + b"--P--\r\n"
    root = parse_mime(msg)
    assert len(root.children) < 5000


def test_count_lines() -> None:
    # LF octets, as Dovecot counts (message/bodystructure.py)
    assert count_lines(b"") == 0
    assert count_lines(b"a") == 0
    assert count_lines(b"a\r\n") == 1
    assert count_lines(b"a\r\nb") == 1


# -- ENVELOPE ---------------------------------------------------------------------------------
def test_envelope_rfc9051_example() -> None:
    # RFC 9051 §7.5.2 (and RFC 3501 §7.4.2) sample message headers
    hdr = (b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
           b"From: Terry Gray <gray@cac.washington.edu>\r\n"
           b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
           b"To: imap@cac.washington.edu\r\n"
           b"cc: minutes@CNRI.Reston.VA.US,\r\n"
           b"        John Klensin <KLENSIN@MIT.EDU>\r\n"
           b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n\r\n")
    out = serialize(envelope(parse_fields(hdr)))
    assert out == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes"'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' ((NIL NIL "imap" "cac.washington.edu"))'
        b' ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU"))'
        b' NIL NIL "<B27397-0100000@cac.washington.edu>")')


def test_address_forms() -> None:
    got = parse_address_list(
        b'"Doe, Jane" <jane@x.example>, (comment) bob @ y.example, '
        b"Team: a@t.example, B <b@t.example>;, <@route1,@route2:c@z.example>, "
        b"=?utf-8?q?J=C3=B6rg?= <j@x.example>, nodomain")
    assert got == [
        [b"Doe, Jane", None, b"jane", b"x.example"],
        [None, None, b"bob", b"y.example"],
        [None, None, b"Team", None],
        [None, None, b"a", b"t.example"],
        [b"B", None, b"b", b"t.example"],
        [None, None, None, None],
        [None, b"@route1,@route2", b"c", b"z.example"],
        [b"=?utf-8?q?J=C3=B6rg?=", None, b"j", b"x.example"],
        [None, None, b"nodomain", b""],
    ]
    assert parse_address_list(None) is None
    assert parse_address_list(b"") is None
    assert parse_address_list(b"undisclosed-recipients:;") == [
        [None, None, b"undisclosed-recipients", None], [None, None, None, None]]


def test_envelope_sender_reply_to_default_and_8bit() -> None:
    hdr = "From: Jörg <j@x.example>\r\nSender:\r\nSubject: Grüße\r\n\r\n".encode()
    env = envelope(parse_fields(hdr))
    assert env[3] == env[2] == env[4]
    # 8-bit header text is sent as a literal unless UTF8=ACCEPT
    assert serialize(env[1]) == b"{7}\r\n" + "Grüße".encode()
    assert serialize(env[1], utf8=True) == '"Grüße"'.encode()


def test_drop_fields_removes_named_fields_with_their_folds_only_from_the_header() -> None:
    rp = frozenset((b"return-path",))
    msg = (b"Return-Path: <a@b>\r\nFrom: x\r\nRETURN-PATH :\r\n\t<c@d>\r\n"
           b"X-Return-Path: keep\r\nSubject: return-path: keep\r\n\r\nReturn-Path: body\r\n")
    assert drop_fields(msg, rp) == (b"From: x\r\nX-Return-Path: keep\r\n"
                                    b"Subject: return-path: keep\r\n\r\nReturn-Path: body\r\n")
    assert drop_fields(b"From: a\r\n\r\nReturn-Path: <x@y>\r\n", rp) is None  # body only
    assert drop_fields(b"From: a\r\nX-Return-Path: y\r\n\r\n", rp) is None  # a look-alike
    assert drop_fields(b"From: a\nReturn-path: <>\n\nbody", rp) == b"From: a\n\nbody"  # bare LF
    assert drop_fields(b"Return-Path: <x@y>", rp) == b""  # no body at all
