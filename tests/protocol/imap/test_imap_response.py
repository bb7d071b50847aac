"""Response serialisers, modified UTF-7, and the state table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import response as r
from mailyard.protocol.imap.mailbox import (
    MailboxNameError,
    decode_mutf7,
    encode_mutf7,
    validate_name,
)
from mailyard.protocol.imap.states import State, after, check, is_legal


@pytest.mark.parametrize(("value", "utf8", "wire"), [
    ("hello", False, b'"hello"'),
    ('a"b\\c', False, b'"a\\"b\\\\c"'),
    ("", False, b'""'),
    ("line\r\nbreak", False, b"{11}\r\nline\r\nbreak"),
    ("café", False, b"{5}\r\ncaf\xc3\xa9"),
    ("café", True, b'"caf\xc3\xa9"'),
    (b"\xff\xfe", True, b"{2}\r\n\xff\xfe"),  # not UTF-8: literal even with UTF8=ACCEPT
    (b"nul\x00", False, b"{4}\r\nnul\x80"),  # no NUL in a literal (RFC 9051 §9 CHAR8)
])
def test_string(value: str | bytes, utf8: bool, wire: bytes) -> None:
    assert r.string(value, utf8=utf8) == wire


def test_long_string_goes_literal() -> None:
    assert r.string("x" * 5000).startswith(b"{5000}\r\n")


def test_serialize_nested() -> None:
    value = [r.Atom("\\Seen"), None, 42, "a b", [[], [b"x"]], r.Literal(b"lit")]
    assert r.serialize(value) == b'(\\Seen NIL 42 "a b" (() ("x")) {3}\r\nlit)'
    assert r.serialize(r.Literal8(b"a\x00b")) == b"~{3}\r\na\x00b"
    assert r.serialize(r.Literal8(b"ab")) == b"~{2}\r\nab"
    assert r.serialize([r.Adjacent([[1], [2]]), "x"]) == b'((1)(2) "x")'
    assert r.serialize(r.Adjacent([])) == b""
    deep: list[object] = []
    cur = deep
    for _ in range(50_000):
        nxt: list[object] = []
        cur.append(nxt)
        cur = nxt
    out = r.serialize(deep)
    assert out == b"(" * 50_001 + b")" * 50_001


def test_astring_and_nstring() -> None:
    assert r.astring("INBOX") == b"INBOX"
    assert r.astring("NIL") == b'"NIL"'
    assert r.astring("a b") == b'"a b"'
    assert r.nstring(None) == b"NIL"


def test_tagged_untagged() -> None:
    assert r.tagged("A142", "OK", "SELECT completed", "READ-WRITE") == \
        b"A142 OK [READ-WRITE] SELECT completed\r\n"
    assert r.tagged("a", "BAD", "evil\r\n* OK injected") == b"a BAD evil  * OK injected\r\n"
    assert r.untagged("OK", "Unseen messages", "UNSEEN 12") == b"* OK [UNSEEN 12] Unseen messages\r\n"
    assert r.untagged("172 EXISTS") == b"* 172 EXISTS\r\n"
    assert r.continuation() == b"+ Ready\r\n"
    assert r.bye("Autologout; idle for too long") == b"* BYE Autologout; idle for too long\r\n"


def test_rfc9051_response_examples() -> None:
    # RFC 9051 §7.2.1 / §7.3 / §7.5 examples
    assert r.capability(["IMAP4rev2", "STARTTLS", "AUTH=GSSAPI", "LOGINDISABLED"]) == \
        b"* CAPABILITY IMAP4rev2 STARTTLS AUTH=GSSAPI LOGINDISABLED\r\n"
    assert r.flags(["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]) == \
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
    assert r.list_response("blurdybloop", attributes=["\\Noselect"]) == \
        b'* LIST (\\Noselect) "/" blurdybloop\r\n'
    assert r.status("blurdybloop", {"MESSAGES": 231, "UIDNEXT": 44292}) == \
        b"* STATUS blurdybloop (MESSAGES 231 UIDNEXT 44292)\r\n"
    assert r.exists(23) == b"* 23 EXISTS\r\n"
    assert r.expunge(44) == b"* 44 EXPUNGE\r\n"
    assert r.fetch(12, [("FLAGS", [r.Atom("\\Seen")]), ("UID", 4827313)]) == \
        b"* 12 FETCH (FLAGS (\\Seen) UID 4827313)\r\n"
    assert r.esearch("A282", uid=False, results={"MIN": 2, "COUNT": 3}) == \
        b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n'
    assert r.esearch("A283", uid=True, results={"ALL": [2, 10, 11]}) == \
        b'* ESEARCH (TAG "A283") UID ALL 2,10:11\r\n'
    assert r.esearch("A284", uid=False, results={"ALL": []}) == b'* ESEARCH (TAG "A284")\r\n'
    assert r.search([2, 84, 882]) == b"* SEARCH 2 84 882\r\n"
    assert r.search([]) == b"* SEARCH\r\n"
    assert r.namespace() == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert r.enabled(["CONDSTORE"]) == b"* ENABLED CONDSTORE\r\n"
    assert r.vanished([41, 43, 44, 45], earlier=True) == b"* VANISHED (EARLIER) 41,43:45\r\n"
    assert r.quota("", [("STORAGE", 10, 512)]) == b'* QUOTA "" (STORAGE 10 512)\r\n'
    assert r.quotaroot("INBOX", [""]) == b'* QUOTAROOT INBOX ""\r\n'
    assert r.id_response({"name": "mailyard", "version": None}) == \
        b'* ID ("name" "mailyard" "version" NIL)\r\n'


def test_list_mutf7_and_extended() -> None:
    assert r.list_response("~peter/mail/台北/日本語") == \
        b'* LIST () "/" ~peter/mail/&U,BTFw-/&ZeVnLIqe-\r\n'
    assert r.list_response("台北", utf8=True) == '* LIST () "/" "台北"\r\n'.encode()
    out = r.list_response("Foo", attributes=["\\Subscribed"],
                          extended=[("CHILDINFO", ["SUBSCRIBED"])])
    assert out == b'* LIST (\\Subscribed) "/" Foo (CHILDINFO ("SUBSCRIBED"))\r\n'


# -- modified UTF-7 ---------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "wire"), [
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("a&b", "a&-b"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("😀", "&2D3eAA-"),
])
def test_mutf7(name: str, wire: str) -> None:
    assert encode_mutf7(name) == wire
    assert decode_mutf7(wire) == name


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_mutf7_round_trip(name: str) -> None:
    assert decode_mutf7(encode_mutf7(name)) == name


@pytest.mark.parametrize("name", ["", "/x", "a//b", "a/../b", "..", "a\x00", "a\tb",
                                  "x" * 1001, "a/./b"])
def test_validate_name_rejects(name: str) -> None:
    with pytest.raises(MailboxNameError):
        validate_name(name)


def test_validate_name_normalises_inbox() -> None:
    assert validate_name("inbox") == "INBOX"
    assert validate_name("Inbox/Sub") == "INBOX/Sub"
    assert validate_name("INBOXES") == "INBOXES"
    assert validate_name("new/", for_create=True) == "new"


# -- states -----------------------------------------------------------------------------------
NA, AU, SE = State.NOT_AUTHENTICATED, State.AUTHENTICATED, State.SELECTED


@pytest.mark.parametrize(("name", "legal"), [
    ("CAPABILITY", {NA, AU, SE}), ("NOOP", {NA, AU, SE}), ("LOGOUT", {NA, AU, SE}),
    ("STARTTLS", {NA}), ("LOGIN", {NA}), ("AUTHENTICATE", {NA}),
    ("SELECT", {AU, SE}), ("LIST", {AU, SE}), ("APPEND", {AU, SE}), ("IDLE", {AU, SE}),
    ("ENABLE", {AU}), ("FETCH", {SE}), ("STORE", {SE}), ("CLOSE", {SE}),
    ("UNSELECT", {SE}), ("EXPUNGE", {SE}), ("MOVE", {SE}), ("SEARCH", {SE}),
])
def test_state_table(name: str, legal: set[State]) -> None:
    for st_ in (NA, AU, SE, State.LOGOUT):
        assert is_legal(name, st_) is (st_ in legal)
        assert (check(name, st_) is None) is (st_ in legal)


def test_every_command_class_is_in_the_table() -> None:
    for cls in c._NAMES:
        assert any(is_legal(c._NAMES[cls], st_) for st_ in (NA, AU, SE)), cls


def test_transitions() -> None:
    assert after(c.Login(tag="a", username="u", password="p"), NA, True) is AU
    assert after(c.Login(tag="a", username="u", password="p"), NA, False) is NA
    assert after(c.Select(tag="a", mailbox="x"), AU, True) is SE
    assert after(c.Select(tag="a", mailbox="x"), SE, False) is AU  # RFC 9051 §6.3.2
    assert after(c.Close(tag="a"), SE, True) is AU
    assert after(c.Logout(tag="a"), SE, True) is State.LOGOUT
    assert after(c.Noop(tag="a"), SE, True) is SE
    assert check("FETCH", AU) == "FETCH needs a selected mailbox"


@given(st.text(max_size=30))
def test_decode_mutf7_any_text(text: str) -> None:
    try:
        name = decode_mutf7(text)
    except MailboxNameError:
        return
    # strict decoding: only the canonical spelling decodes (one name, one spelling)
    assert encode_mutf7(name) == text
