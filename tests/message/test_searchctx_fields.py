"""MessageSearchContext answers header keys from the header fields alone; they are
exactly the fields of the parsed message's root part."""

from __future__ import annotations

import pytest

from mailyard.message.mime import parse_mime
from mailyard.message.searchctx import MessageSearchContext

SAMPLES = [
    b"Subject: plain\r\nFrom: a@example.org\r\n\r\nbody\r\n",
    b"Subject: folded\r\n  over two lines\r\nTo: b@example.org\r\n\r\nx\r\n",
    b"Subject: lf only\nFrom: c@example.org\n\nbody\n",
    b"Subject: no empty line\r\nFrom: d@example.org\r\n",
    b"garbage line\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n",
    (b"Subject: multi\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
     b"--b\r\nSubject: inner\r\n\r\ninner body\r\n--b--\r\n"),
    b"",
]


@pytest.mark.parametrize("data", SAMPLES)
def test_header_fields_match_the_parsed_root(data: bytes) -> None:
    ctx = MessageSearchContext(uid=1, seq=1, flags=frozenset(), size=len(data),
                               internaldate=0.0, data=data)
    assert ctx.header_fields() == parse_mime(data).fields
    for name in ("Subject", "From", "To", "Content-Type"):
        parsed = MessageSearchContext(uid=1, seq=1, flags=frozenset(), size=len(data),
                                      internaldate=0.0, data=data)
        _ = parsed.root  # the MIME tree first: header() then reads root.fields
        assert ctx.header(name) == parsed.header(name)
