"""The reply catalogue itself (STYLE habit 2)."""

from __future__ import annotations

import re

import pytest

from mailyard.protocol.smtp import replies as R
from mailyard.protocol.smtp.replies import Reply

CATALOGUE = R.catalogue()


def test_catalogue_is_not_empty_and_named_in_capitals() -> None:
    assert len(CATALOGUE) > 40
    assert all(name.isupper() for name in CATALOGUE)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_reply_is_well_formed(name: str) -> None:
    reply = CATALOGUE[name]
    assert 200 <= reply.code <= 599
    assert reply.rfc.startswith(("RFC", "draft-")), name
    if reply.enhanced is not None:
        # RFC 3463 §2: class digit agrees with the reply code.
        assert reply.enhanced[0] == str(reply.code)[0]
    wire = reply.to_bytes()
    assert wire.endswith(b"\r\n")
    assert re.fullmatch(rb"(\d{3}[ -][^\r\n]*\r\n)+", wire)
    # 3xx intermediate replies carry no enhanced code (RFC 2034 §3 lists 2/4/5 only).
    if 300 <= reply.code < 400:
        assert reply.enhanced is None


def test_enhanced_codes_present_after_ehlo_for_all_final_replies() -> None:
    for name, reply in CATALOGUE.items():
        if reply.code >= 400 or reply.code in (250, 252, 221, 235, 214):
            assert reply.enhanced is not None, name


def test_to_bytes_single_and_multi_line() -> None:
    assert R.MESSAGE_TOO_BIG.to_bytes() == b"552 5.3.4 Message size exceeds fixed limit\r\n"
    assert R.MESSAGE_TOO_BIG.to_bytes(enhanced=False) == b"552 Message size exceeds fixed limit\r\n"
    multi = Reply(250, ("a", "b", "c"), "2.0.0")
    assert multi.to_bytes() == b"250-2.0.0 a\r\n250-2.0.0 b\r\n250 2.0.0 c\r\n"
    assert R.AUTH_EMPTY_CHALLENGE.to_bytes() == b"334 \r\n"


def test_ehlo_reply_has_no_enhanced_codes() -> None:
    reply = R.ehlo_reply("mx.example", "c.example", ["PIPELINING", "DSN"])
    assert reply.to_bytes() == b"250-mx.example Hello c.example\r\n250-PIPELINING\r\n250 DSN\r\n"


@pytest.mark.parametrize(
    "args",
    [
        (199, ("x",), None),
        (600, ("x",), None),
        (250, (), None),
        (250, ("x",), "5.0.0"),
        (250, ("x",), "2.0"),
        (250, ("x\r\n250 forged",), None),
        (250, ("x\ny",), None),
        (250, ("nul\x00",), None),
    ],
)
def test_invalid_replies_are_refused(args: tuple[int, tuple[str, ...], str | None]) -> None:
    with pytest.raises(ValueError):
        Reply(*args)


def test_make_and_with_text() -> None:
    reply = Reply.make(550, "one\ntwo", "5.1.1")
    assert reply.lines == ("one", "two")
    assert reply.with_text("other").lines == ("other",)
    assert reply.with_text("other").enhanced == "5.1.1"
    assert not reply.is_positive and not reply.is_success
    assert R.START_DATA.is_positive and not R.START_DATA.is_success
