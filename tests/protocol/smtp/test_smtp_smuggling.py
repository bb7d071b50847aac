"""SMTP smuggling battery (CVE-2023-51766, CVE-2023-51764, CVE-2023-51765;
SEC Consult, "SMTP Smuggling", 2023-12): every end-of-data look-alike built
from CR, LF, "." and NUL, fed whole and byte by byte. None may end the message
or start a second transaction; only <CRLF>.<CRLF> ends it (RFC 5321 §4.1.1.4).
"""

from __future__ import annotations

import itertools

import pytest

from mailyard.protocol.smtp import events as ev
from mailyard.testing.transcript import core_session

BEFORE = ["", "\r", "\n", "\r\n", "\n\r", "\r\r\n", "\r\n\x00", "\x00"]
AFTER = ["", "\r", "\n", "\r\n", "\n\r", "\r\r\n", "\x00\r\n", " \r\n"]
LOOKALIKES = sorted(
    {
        b + "." + a
        for b, a in itertools.product(BEFORE, AFTER)
        if "\r\n.\r\n" not in "x" + b + "." + a
    }
)

SMUGGLED = (
    "MAIL FROM:<admin@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
    "From: admin@example.test\r\nSubject: forged\r\n\r\nsmuggled\r\n"
)
SETUP = b"EHLO c.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"


def test_battery_is_large() -> None:
    assert len(LOOKALIKES) > 50


@pytest.mark.parametrize("seq", LOOKALIKES, ids=[repr(s) for s in LOOKALIKES])
@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_lookalike_does_not_end_data(seq: str, mode: str) -> None:
    run = core_session(setup=SETUP)
    payload = ("Subject: real\r\n\r\nx" + seq + SMUGGLED + ".\r\nQUIT\r\n").encode()
    run.feed(payload, mode)
    ends = [e for e in run.events if isinstance(e, (ev.MessageComplete, ev.MessageAborted))]
    assert len(ends) == 1, run.names
    assert not any(isinstance(e, (ev.MailFrom, ev.RcptTo)) for e in run.events)
    lines = run.lines()
    assert len(lines) == 2 and lines[1] == "221 2.0.0 Bye", lines
    bare = "\r" in seq.replace("\r\n", "") or "\n" in seq.replace("\r\n", "")
    if bare:
        assert isinstance(ends[0], ev.MessageAborted)
        assert lines[0].startswith("550 5.6.0")
    else:
        # No bare CR/LF: one message whose content includes the would-be commands.
        assert isinstance(ends[0], ev.MessageComplete)
        assert b"MAIL FROM:<admin@example.test>" in run.messages()[0]


@pytest.mark.parametrize("seq", ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r\n.\r"])
def test_lookalike_in_bdat_is_rejected(seq: str) -> None:
    run = core_session(setup=SETUP.replace(b"DATA\r\n", b""))
    content = ("x" + seq + SMUGGLED).encode()
    run.feed(b"BDAT %d LAST\r\n" % len(content) + content + b"QUIT\r\n")
    assert run.lines() == [
        "550 5.6.0 Bare CR or LF not allowed in message content",
        "221 2.0.0 Bye",
    ]
    assert not any(isinstance(e, (ev.MailFrom, ev.MessageComplete)) for e in run.events)
