"""Sans-IO SMTP client: replies, EHLO capabilities, commands, body encoding."""

from __future__ import annotations

import random

import pytest

from mailyard.protocol.smtp.client import (
    MAX_REPLY_LINE,
    BodyEncoder,
    ReplyParser,
    SMTPProtocolError,
    cmd_bdat,
    cmd_mail,
    cmd_rcpt,
    encode_body,
    parse_ehlo,
    xtext_encode,
)

# (wire bytes, [(code, enhanced, text)])
REPLY_CASES = [
    (b"220 mx.example ESMTP\r\n", [(220, None, "mx.example ESMTP")]),
    (b"250 2.1.0 Sender OK\r\n", [(250, "2.1.0", "Sender OK")]),
    (b"250\r\n", [(250, None, "")]),
    (b"550 5.1.1 No such user\n", [(550, "5.1.1", "No such user")]),  # bare LF accepted
    (b"451-4.3.0 try\r\n451-4.3.0 again\r\n451 4.3.0 later\r\n", [(451, "4.3.0", "try again later")]),
    (b"250 5.0.0 liar\r\n", [(250, None, "5.0.0 liar")]),  # class mismatch: ignored (RFC 3463 §2)
    (b"250 2.0.0 a\r\n354 go\r\n", [(250, "2.0.0", "a"), (354, None, "go")]),
    (b"421 4.4.2 Timeout\r\n", [(421, "4.4.2", "Timeout")]),
]


def _parse_all(chunks: list[bytes]) -> list[tuple[int, str | None, str]]:
    p = ReplyParser()
    out = []
    for c in chunks:
        p.feed(c)
        while (r := p.next_reply()) is not None:
            out.append((r.code, r.enhanced, r.text))
    return out


@pytest.mark.parametrize(("wire", "expected"), REPLY_CASES)
def test_reply_parsing_whole_bytewise_and_trailing(wire: bytes, expected: list) -> None:
    assert _parse_all([wire]) == expected
    assert _parse_all([wire[i : i + 1] for i in range(len(wire))]) == expected
    # trailing partial data does not produce a reply
    assert _parse_all([wire + b"250-partial\r\n25"]) == expected


@pytest.mark.parametrize(
    "wire",
    [b"hello\r\n", b"25\r\n", b"250-a\r\n251 b\r\n", b"250*x\r\n", b"650 x\r\n", b"\r\n"],
)
def test_malformed_replies_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(SMTPProtocolError):
        _parse_all([wire])


def test_reply_bounds() -> None:
    p = ReplyParser()
    with pytest.raises(SMTPProtocolError):
        p.feed(b"2" * (MAX_REPLY_LINE + 10))
    p = ReplyParser()
    with pytest.raises(SMTPProtocolError):
        for _ in range(1000):
            p.feed(b"250-x\r\n")
            assert p.next_reply() is None


def test_diagnostic_and_status() -> None:
    p = ReplyParser()
    p.feed(b"550 5.7.1 Relay denied\r\n452 no room\r\n")
    r1, r2 = p.next_reply(), p.next_reply()
    assert r1 is not None and r2 is not None
    assert r1.diagnostic() == "550 5.7.1 Relay denied" and r1.is_permanent
    assert r2.status() == "4.0.0" and r2.is_transient


def test_ehlo_capabilities() -> None:
    p = ReplyParser()
    p.feed(
        b"250-mx.example greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250-chunking\r\n250-DSN\r\n250-STARTTLS\r\n250-AUTH PLAIN login\r\n"
        b"250 ENHANCEDSTATUSCODES\r\n"
    )
    r = p.next_reply()
    assert r is not None
    caps = parse_ehlo(r)
    assert caps.pipelining and caps.eightbitmime and caps.smtputf8 and caps.chunking
    assert caps.dsn and caps.starttls and caps.enhancedstatuscodes
    assert caps.size == 10240000
    assert caps.auth == ("PLAIN", "LOGIN")
    p.feed(b"250-x\r\n250 SIZE\r\n")
    r = p.next_reply()
    assert r is not None
    bare = parse_ehlo(r)
    assert bare.size == 0 and not bare.pipelining and not bare.starttls


def test_commands() -> None:
    assert cmd_mail("a@b.example") == b"MAIL FROM:<a@b.example>\r\n"
    assert cmd_mail("", size=10, body="8BITMIME", smtputf8=True, ret="hdrs", envid="id+1 x") == (
        b"MAIL FROM:<> SIZE=10 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+20x\r\n"
    )
    assert cmd_rcpt("u@x", notify="failure,delay", orcpt="rfc822;u@x") == (
        b"RCPT TO:<u@x> NOTIFY=FAILURE,DELAY ORCPT=rfc822;u@x\r\n"
    )
    assert cmd_bdat(5) == b"BDAT 5\r\n" and cmd_bdat(0, last=True) == b"BDAT 0 LAST\r\n"
    assert xtext_encode("a=b") == "a+3Db"
    for bad in ("a@b>\r\nRCPT TO:<c@d", "x\ny", "a b"):
        with pytest.raises(ValueError):
            cmd_mail(bad)
        with pytest.raises(ValueError):
            cmd_rcpt(bad)


# (stored content, DATA wire form) -- RFC 5321 §4.5.2 and line-end normalisation
BODY_CASES = [
    (b"", b".\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),
    (b".", b"..\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
    (b"bare\nlf\n", b"bare\r\nlf\r\n.\r\n"),
    (b"bare\rcr\r", b"bare\r\ncr\r\n.\r\n"),
    (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
    (b"a\n\rb", b"a\r\n\r\nb\r\n.\r\n"),
    (b"x\n.\ny", b"x\r\n..\r\ny\r\n.\r\n"),
    (b"x\r.\ry", b"x\r\n..\r\ny\r\n.\r\n"),
    (b"\r\n.\r\n", b"\r\n..\r\n.\r\n"),  # an embedded terminator is defused
    (b"caf\xc3\xa9\r\n", b"caf\xc3\xa9\r\n.\r\n"),
]


def _encode_in_pieces(data: bytes, cuts: list[int], *, dot_stuff: bool) -> bytes:
    enc = BodyEncoder(dot_stuff=dot_stuff)
    out = b""
    prev = 0
    for c in [*cuts, len(data)]:
        out += enc.feed(data[prev:c])
        prev = c
    return out + enc.finish()


@pytest.mark.parametrize(("content", "wire"), BODY_CASES)
def test_body_encoder_data(content: bytes, wire: bytes) -> None:
    assert encode_body(content) == wire
    assert _encode_in_pieces(content, list(range(1, len(content))), dot_stuff=True) == wire
    rng = random.Random(len(content))
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(content) + 1), k=min(3, len(content) + 1)))
        assert _encode_in_pieces(content, cuts, dot_stuff=True) == wire


@pytest.mark.parametrize(("content", "wire"), BODY_CASES)
def test_body_encoder_bdat_normalises_without_stuffing(content: bytes, wire: bytes) -> None:
    expected = wire[:-3].replace(b"\r\n..", b"\r\n.")
    if expected.startswith(b".."):
        expected = expected[1:]
    assert encode_body(content, dot_stuff=False) == expected
    assert _encode_in_pieces(content, list(range(1, len(content))), dot_stuff=False) == expected


def test_body_encoder_random_roundtrip() -> None:
    rng = random.Random(7)
    alphabet = [b"\r", b"\n", b".", b"a", b"\r\n", b"\xff"]
    for _ in range(300):
        content = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        wire = encode_body(content)
        cuts = sorted(rng.sample(range(len(content) + 1), k=min(4, len(content) + 1)))
        assert _encode_in_pieces(content, cuts, dot_stuff=True) == wire
        assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
        body = wire[:-3]
        # no bare CR or LF on the wire
        assert body.replace(b"\r\n", b"").count(b"\r") == 0
        assert body.replace(b"\r\n", b"").count(b"\n") == 0
        # unstuffing gives back the normalised content
        lines = body.split(b"\r\n")[:-1] if body else []
        unstuffed = b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
        norm = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if norm and not norm.endswith(b"\r\n"):
            norm += b"\r\n"
        assert unstuffed == norm
