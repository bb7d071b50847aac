"""BODY[section]<partial>, BINARY, text extraction, RFC 2047, PREVIEW."""

from __future__ import annotations

import base64

import pytest

from mailyard.message.mime import Part, parse_mime
from mailyard.message.parse import decode_header, find_body_start, parse_fields
from mailyard.message.sections import (
    UnknownCTE,
    binary_bytes,
    binary_size,
    find_part,
    partial,
    section_bytes,
)
from mailyard.message.text import body_text, preview, searchable_fields, searchable_text


def _mp(boundary: str, subtype: str, parts: list[bytes]) -> bytes:
    out = b"Content-Type: multipart/%s; boundary=%s\r\n\r\n" % (subtype.encode(),
                                                               boundary.encode())
    for p in parts:
        out += b"--" + boundary.encode() + b"\r\n" + p + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


def _leaf(ctype: str, text: str = "x") -> bytes:
    return f"Content-Type: {ctype}\r\n\r\n{text}".encode()


def _msg(inner: bytes) -> bytes:
    return b"Content-Type: message/rfc822\r\n\r\nSubject: enc\r\n" + inner


def rfc_example() -> bytes:
    """The part-numbering example of RFC 9051 §6.4.5 / RFC 3501 §6.4.5."""
    inner3 = _mp("m3", "mixed", [_leaf("text/plain", "3.1"),
                                 _leaf("application/octet-stream", "3.2")])
    alt = _mp("m422", "alternative", [_leaf("text/plain", "4.2.2.1"),
                                      _leaf("text/richtext", "4.2.2.2")])
    inner42 = _mp("m42", "mixed", [_leaf("text/plain", "4.2.1"), alt])
    four = _mp("m4", "mixed", [_leaf("image/gif", "4.1"), _msg(inner42)])
    top = _mp("top", "mixed", [_leaf("text/plain", "1"),
                               _leaf("application/octet-stream", "2"),
                               _msg(inner3), four])
    return b"Subject: top\r\n" + top


@pytest.mark.parametrize(("path", "ctype"), [
    ((1,), "TEXT/PLAIN"), ((2,), "APPLICATION/OCTET-STREAM"), ((3,), "MESSAGE/RFC822"),
    ((3, 1), "TEXT/PLAIN"), ((3, 2), "APPLICATION/OCTET-STREAM"), ((4,), "MULTIPART/MIXED"),
    ((4, 1), "IMAGE/GIF"), ((4, 2), "MESSAGE/RFC822"), ((4, 2, 1), "TEXT/PLAIN"),
    ((4, 2, 2), "MULTIPART/ALTERNATIVE"), ((4, 2, 2, 1), "TEXT/PLAIN"),
    ((4, 2, 2, 2), "TEXT/RICHTEXT"),
])
def test_rfc_part_numbering(path: tuple[int, ...], ctype: str) -> None:
    p = find_part(parse_mime(rfc_example()), path)
    assert p is not None and f"{p.maintype}/{p.subtype}" == ctype
    if not p.is_multipart and p.maintype not in ("MESSAGE",):
        assert p.body == ".".join(map(str, path)).encode()


@pytest.mark.parametrize("path", [(5,), (0,), (1, 1), (4, 3), (4, 2, 3), (3, 1, 1)])
def test_missing_parts(path: tuple[int, ...]) -> None:
    assert find_part(parse_mime(rfc_example()), path) is None


def test_sections_of_rfc_example() -> None:
    root = parse_mime(rfc_example())
    assert section_bytes(root, (3,), "HEADER") == \
        b"Content-Type: message/rfc822\r\n\r\n"[len(b"Content-Type: message/rfc822\r\n\r\n"):] + \
        b"Subject: enc\r\nContent-Type: multipart/mixed; boundary=m3\r\n\r\n"
    text3 = section_bytes(root, (3,), "TEXT")
    assert text3 is not None and text3.startswith(b"--m3\r\n")
    assert section_bytes(root, (4, 1), "MIME") == b"Content-Type: image/gif\r\n\r\n"
    assert section_bytes(root, (4, 2, 2, 2)) == b"4.2.2.2"
    assert section_bytes(root, (1,), "HEADER") is None  # not a message/rfc822 part
    assert section_bytes(root, (), "MIME") is None
    assert section_bytes(root, (9,)) is None


SIMPLE = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
          b"From: Fred Foobar <foobar@Blurdybloop.example>\r\n"
          b"Subject: afternoon\r\n meeting\r\n"
          b"To: mooch@owatagu.siam.edu.example\r\n"
          b"\r\n"
          b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n")


def test_header_text_and_fields() -> None:
    root = parse_mime(SIMPLE)
    hdr_end = SIMPLE.index(b"\r\n\r\n") + 4
    assert section_bytes(root) == SIMPLE
    assert section_bytes(root, (), "HEADER") == SIMPLE[:hdr_end]
    assert section_bytes(root, (), "TEXT") == SIMPLE[hdr_end:]
    assert section_bytes(root, (1,)) == SIMPLE[hdr_end:]  # non-multipart: part 1 is the body
    assert section_bytes(root, (), "HEADER.FIELDS", ("subject", "DATE")) == (
        b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nSubject: afternoon\r\n meeting\r\n\r\n")
    assert section_bytes(root, (), "HEADER.FIELDS.NOT", ("Subject", "Date", "From")) == \
        b"To: mooch@owatagu.siam.edu.example\r\n\r\n"
    assert section_bytes(root, (), "HEADER.FIELDS", ("X-None",)) == b"\r\n"


def test_partial() -> None:
    assert partial(b"0123456789", 2, 3) == b"234"
    assert partial(b"0123456789", 8, 100) == b"89"
    assert partial(b"0123456789", 50, 1) == b""


def test_no_blank_line_and_empty_header() -> None:
    assert find_body_start(b"Subject: x\r\n") == len(b"Subject: x\r\n")
    root = parse_mime(b"\r\nbody only")
    assert root.header == b"\r\n" and root.body == b"body only"
    assert parse_fields(b"not a field\r\nX: y\r\n\r\n")[0].name == "X"


def test_binary_decoding() -> None:
    payload = bytes(range(256))
    b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    qp = b"caf=C3=A9 =\r\nsoft break\r\n"
    msg = (b"Content-Type: multipart/mixed; boundary=Z\r\n\r\n"
           b"--Z\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"\r\n"
           b"--Z\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: Quoted-Printable\r\n\r\n" + qp + b"\r\n"
           b"--Z\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n"
           b"--Z\r\n\r\nplain\r\n--Z--\r\n")
    root = parse_mime(msg)
    assert binary_bytes(root, (1,)) == payload
    assert binary_size(root, (1,)) == 256
    assert binary_bytes(root, (2,)) == "café soft break\r\n".encode()
    with pytest.raises(UnknownCTE):
        binary_bytes(root, (3,))
    assert binary_bytes(root, (4,)) == b"plain"
    assert binary_bytes(root, ()) == msg
    assert binary_bytes(root, (7,)) is None


def test_rfc2047() -> None:
    assert decode_header(b"=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@x>") == \
        "Keld Jørn Simonsen <keld@x>"
    assert decode_header(b"=?utf-8?b?w6k=?= =?utf-8?b?w6k=?=") == "éé"  # RFC 2047 §6.2
    assert decode_header(b"a =?utf-8?q?b?= c") == "a b c"
    assert decode_header(b"=?x-unknown?q?zz?=") == "=?x-unknown?q?zz?="
    assert decode_header(b"=?utf-8?b?!!!?=") == "=?utf-8?b?!!!?="
    assert decode_header("Grüße".encode()) == "Grüße"
    assert decode_header(b"=?UTF-8*en?Q?hi?=") == "hi"


def test_searchable_text_and_html() -> None:
    msg = (b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
           b"Content-Type: multipart/alternative; boundary=A\r\n\r\n"
           b"--A\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\nna=EFve text\r\n"
           b"--A\r\nContent-Type: text/html\r\n\r\n"
           b"<html><style>p{}</style><p>Hello &amp; bye</p></html>\r\n"
           b"--A\r\nContent-Type: image/png\r\n\r\nPNGDATA\r\n--A--\r\n")
    headers, text = searchable_text(msg)
    assert "Subject: Grüße" in headers
    assert "naïve text" in text and "Hello & bye" in text
    assert "PNGDATA" not in text and "p{}" not in text
    assert len(body_text(msg, max_chars=5)) == 5


def test_preview() -> None:
    long_words = ("word " * 100).encode()
    msg = (b"Content-Type: multipart/mixed; boundary=A\r\n\r\n"
           b"--A\r\nContent-Type: text/html\r\n\r\n<b>html first</b>\r\n"
           b"--A\r\nContent-Type: text/plain\r\n\r\n  Hello\r\n\r\n  there  \r\n"
           b"--A--\r\n")
    assert preview(msg) == "Hello there"
    html_only = b"Content-Type: text/html\r\n\r\n<p>Only&nbsp;HTML</p>"
    assert preview(html_only) == "Only HTML"  # &nbsp; collapses like any whitespace
    out = preview(b"Content-Type: text/plain\r\n\r\n" + long_words)
    assert len(out) <= 200 and out.endswith("word")
    att = (b"Content-Type: multipart/mixed; boundary=A\r\n\r\n"
           b"--A\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nno\r\n"
           b"--A--\r\n")
    assert preview(att) == ""
    assert isinstance(parse_mime(att), Part)


def test_searchable_fields_keep_attached_headers_apart() -> None:
    msg = (b"Subject: outer\r\nContent-Type: message/rfc822\r\n\r\n"
           b"Subject: inner subject\r\n\r\ninner body\r\n")
    st = searchable_fields(msg)
    assert "outer" in st.headers and "inner subject" not in st.headers
    assert "inner body" in st.body and "inner subject" not in st.body
    assert "inner subject" in st.extra["attached_headers"]
