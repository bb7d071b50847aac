"""Golden transcripts (tests/protocol/smtp/transcripts/*.txt) against the core,
fed whole, one byte at a time and line by line unless the file says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailyard.testing.transcript import (
    FEED_MODES,
    TranscriptMismatch,
    parse_header,
    parse_transcript,
    run_transcript_core,
    unescape,
)

DIR = Path(__file__).parent / "transcripts"
FILES = sorted(DIR.glob("*.txt"))
CASES = [
    pytest.param(path, mode, id=f"{path.stem}-{mode}")
    for path in FILES
    for mode in (parse_header(path.read_text("utf-8")).get("feed", "").split() or FEED_MODES)
]


def test_there_are_transcripts_and_each_names_what_it_covers() -> None:
    assert len(FILES) >= 15
    for path in FILES:
        first = path.read_text("utf-8").splitlines()[0]
        assert first.startswith("# ") and ("RFC" in first or "CVE" in first or "Cross" in first), (
            path
        )


@pytest.mark.parametrize(("path", "mode"), CASES)
def test_transcript(path: Path, mode: str) -> None:
    run_transcript_core(path.read_text("utf-8"), feed=mode)  # type: ignore[arg-type]


def test_runner_detects_a_wrong_reply() -> None:
    text = "S: 220 mail.example.test ESMTP mailyard\nC: NOOP\nS: 250 2.0.0 OK\n"
    with pytest.raises(TranscriptMismatch):
        run_transcript_core(text)  # before EHLO there is no enhanced code
    run_transcript_core(text.replace("250 2.0.0 OK", "250 OK"))


def test_runner_detects_missing_event_message_and_unused_decision() -> None:
    head = "S: 220 mail.example.test ESMTP mailyard\nC: HELO c\nS: 250 mail.example.test Hello c\n"
    with pytest.raises(TranscriptMismatch):
        run_transcript_core(head + "E: Quit\n")
    with pytest.raises(TranscriptMismatch):
        run_transcript_core(head + "C: NOOP\nA: accept\nS: 250 OK\n")
    data = (
        "C: MAIL FROM:<a@b.example>\nS: 250 Sender OK\nC: RCPT TO:<c@d.example>\n"
        "S: 250 Recipient OK\nC: DATA\nS: 354 End data with <CR><LF>.<CR><LF>\n"
        "C: hi\nC: .\nS: 250 Message accepted\n"
    )
    run_transcript_core(head + data + "M: hi\\r\\n\n")
    with pytest.raises(TranscriptMismatch):
        run_transcript_core(head + data + "M: bye\\r\\n\n")


def test_parse_transcript_and_unescape() -> None:
    items = parse_transcript("# c\n\nC: EHLO x\nS: 250 ok \nR: a\\r\\n\\x00\\\\\n")
    assert items == [("C", "EHLO x"), ("S", "250 ok "), ("R", "a\\r\\n\\x00\\\\")]
    assert unescape(items[2][1]) == b"a\r\n\x00\\"
    assert unescape("grüße") == "grüße".encode()
    with pytest.raises(ValueError):
        parse_transcript("Q: what\n")
