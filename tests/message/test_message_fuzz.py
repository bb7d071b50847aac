"""Any bytes parse into a MIME tree, BODYSTRUCTURE, ENVELOPE, sections and text
without raising (UnknownCTE for BINARY is the one documented error)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailyard.message.bodystructure import body, bodystructure
from mailyard.message.envelope import envelope
from mailyard.message.mime import parse_mime
from mailyard.message.sections import UnknownCTE, binary_bytes, section_bytes
from mailyard.message.text import preview, searchable_text
from mailyard.protocol.imap.response import serialize

PIECES = [b"Content-Type: multipart/mixed; boundary=B\r\n", b"\r\n", b"--B\r\n", b"--B--\r\n",
          b"Content-Type: message/rfc822\r\n", b"From: a <b@c>, (x) d@e, g: h@i;\r\n",
          b"Content-Transfer-Encoding: base64\r\n",
          b"Content-Transfer-Encoding: qUoted-printable\r\n",
          b"=?utf-8?q?=C3?=", b"text\r\n", b"Content-Type: text/html; charset=bogus\r\n",
          b"\n", b"(((", b'"', b"<", b"Content-Disposition: attachment; filename*0=a; filename*1=b\r\n"]


def _check(data: bytes) -> None:
    root = parse_mime(data)
    serialize(bodystructure(root))
    serialize(body(root))
    serialize(envelope(root.fields))
    assert root.walk()[0] is root
    for path in [(), (1,), (1, 1), (2,), (1, 2, 1)]:
        for text in (None, "HEADER", "TEXT", "MIME", "HEADER.FIELDS"):
            section_bytes(root, path, text, ("From",))
        try:
            binary_bytes(root, path)
        except UnknownCTE:
            pass
    searchable_text(root)
    preview(root)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=800))
def test_any_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_mime_shaped_bytes(pieces: list[bytes]) -> None:
    _check(b"".join(pieces))
