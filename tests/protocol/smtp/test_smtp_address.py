"""RFC 5321 §4.1.2 path grammar and RFC 3461 xtext / ESMTP parameters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailyard.protocol.smtp.address import AddressError, ParsedPath, parse_path, split_path
from mailyard.protocol.smtp.params import ParamError, parse_params, xtext_decode, xtext_encode

GOOD = [
    ("<>", False, ParsedPath("", "", is_null=True)),
    ("<Postmaster>", False, ParsedPath("Postmaster", "")),
    ("<a@example.org>", False, ParsedPath("a", "example.org")),
    ("<a.b+tag@sub.example.org>", False, ParsedPath("a.b+tag", "sub.example.org")),
    ('<"john doe"@example.org>', False, ParsedPath("john doe", "example.org")),
    ('<"a\\"b"@example.org>', False, ParsedPath('a"b', "example.org")),
    ('<""@example.org>', False, ParsedPath("", "example.org")),
    ("<a@[192.0.2.1]>", False, ParsedPath("a", "[192.0.2.1]", is_literal=True)),
    ("<a@[IPv6:2001:db8::1]>", False, ParsedPath("a", "[IPv6:2001:db8::1]", is_literal=True)),
    (
        "<@r1.example,@r2.example:a@example.org>",
        False,
        ParsedPath("a", "example.org", source_route=("r1.example", "r2.example")),
    ),
    ("<jöran@exämple.org>", True, ParsedPath("jöran", "exämple.org")),
    ("<用户@例子.测试>", True, ParsedPath("用户", "例子.测试")),
]

BAD = [
    "",
    "a@example.org",
    "<a@example.org",
    "<a>",
    "<a@>",
    "<@example.org>",
    "<a..b@example.org>",
    "<.a@example.org>",
    "<a.@example.org>",
    "<a b@example.org>",
    "<a@-example.org>",
    "<a@example-.org>",
    "<a@exa_mple.org>",
    "<a@example..org>",
    "<a@[300.1.1.1]>",
    "<a@[IPv6:zz::1]>",
    "<a@[tag:whatever]>",
    '<"unterminated@example.org>',
    "<@r1.example:>",
    "<@:a@example.org>",
    "<@r1..example:a@example.org>",
    "<a\r@example.org>",
    "<a\x00@example.org>",
    "<" + "a" * 65 + "@example.org>",
    "<a@" + "b" * 64 + ".org>",
    "<a@" + ".".join(["b" * 60] * 5) + ">",
]


@pytest.mark.parametrize(("text", "utf8", "expected"), GOOD)
def test_good_paths(text: str, utf8: bool, expected: ParsedPath) -> None:
    assert parse_path(text, allow_utf8=utf8) == expected


@pytest.mark.parametrize("text", BAD)
@pytest.mark.parametrize("utf8", [False, True])
def test_bad_paths(text: str, utf8: bool) -> None:
    with pytest.raises(AddressError):
        parse_path(text, allow_utf8=utf8)


def test_non_ascii_without_smtputf8_says_so() -> None:
    with pytest.raises(AddressError) as info:
        parse_path("<jöran@example.org>", allow_utf8=False)
    assert info.value.needs_utf8


def test_mailbox_and_postmaster() -> None:
    assert (
        parse_path('<"john doe"@example.org>', allow_utf8=False).mailbox == '"john doe"@example.org'
    )
    assert parse_path("<a@example.org>", allow_utf8=False).mailbox == "a@example.org"
    assert parse_path("<>", allow_utf8=False).mailbox == ""
    pm = parse_path("<postmaster>", allow_utf8=False)
    assert pm.is_postmaster and pm.mailbox == "postmaster"
    assert not parse_path("<postmaster@x.example>", allow_utf8=False).is_postmaster


@pytest.mark.parametrize(
    ("text", "path", "rest"),
    [
        ("<a@b.example> SIZE=1", "<a@b.example>", " SIZE=1"),
        ('<"x>y"@b.example> X', '<"x>y"@b.example>', " X"),
        ('<"x\\">"@b.example>', '<"x\\">"@b.example>', ""),
    ],
)
def test_split_path(text: str, path: str, rest: str) -> None:
    assert split_path(text) == (path, rest)


@pytest.mark.parametrize("text", ["a@b", "<a@b", '<"a>'])
def test_split_path_errors(text: str) -> None:
    with pytest.raises(AddressError):
        split_path(text)


def test_parse_params() -> None:
    assert parse_params(" SIZE=10 body=8BITMIME SMTPUTF8") == {
        "SIZE": "10",
        "BODY": "8BITMIME",
        "SMTPUTF8": None,
    }
    assert parse_params("") == {}


@pytest.mark.parametrize(
    "text", [" =1", " -A=1", " A=", " A=b=c", " A=\x01", " A=1 a=2", " A=x\x7f"]
)
def test_parse_params_errors(text: str) -> None:
    with pytest.raises(ParamError):
        parse_params(text)


@pytest.mark.parametrize(
    ("xtext", "decoded"),
    [("abc", "abc"), ("a+2Bb", "a+b"), ("+3D", "="), ("", ""), ("rfc822+3Bx", "rfc822;x")],
)
def test_xtext_decode(xtext: str, decoded: str) -> None:
    assert xtext_decode(xtext) == decoded


@pytest.mark.parametrize("xtext", ["a+2b", "a+", "a+G0", "a=b", "a b", "+0D", "+0A", "+00", "+FF"])
def test_xtext_decode_errors(xtext: str) -> None:
    with pytest.raises(ParamError):
        xtext_decode(xtext)


@given(
    st.text(alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)))
)
def test_xtext_round_trip(text: str) -> None:
    assert xtext_decode(xtext_encode(text)) == text


@given(st.text(max_size=300))
def test_parse_path_never_raises_anything_else(text: str) -> None:
    for utf8 in (False, True):
        try:
            parse_path(text, allow_utf8=utf8)
        except AddressError:
            pass
