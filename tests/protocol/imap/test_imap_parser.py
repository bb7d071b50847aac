"""CommandParser: framing, literals, APPEND streaming, modes, and the bad-input list."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import search as s
from mailyard.protocol.imap.parser import CommandParser
from mailyard.protocol.imap.sequence import STAR, SequenceSet


def drain(p: CommandParser) -> list[object]:
    out: list[object] = []
    while not isinstance(ev := p.next(), c.NeedData):
        out.append(ev)
    return out

# (input, expected events) — each row is fed whole, byte-wise and with trailing data.
CASES: list[tuple[bytes, list[object]]] = [
    (b"a1 CAPABILITY\r\n", [c.Capability(tag="a1")]),
    (b"a1 noop\r\n", [c.Noop(tag="a1")]),
    (b"a1 NOOP\n", [c.Noop(tag="a1")]),  # bare LF accepted
    (b"a2 LOGIN SMITH SESAME\r\n", [c.Login(tag="a2", username="SMITH", password="SESAME")]),
    (b'a2 LOGIN "sm\\"ith" "p w"\r\n', [c.Login(tag="a2", username='sm"ith', password="p w")]),
    (b"a2 LOGIN {5}\r\nSMITH {6}\r\nSESAME\r\n",
     [c.NeedContinuation(5, "a2"), c.NeedContinuation(6, "a2"),
      c.Login(tag="a2", username="SMITH", password="SESAME")]),
    (b"a2 LOGIN {5+}\r\nSMITH {0+}\r\n\r\n",
     [c.Login(tag="a2", username="SMITH", password="")]),
    (b"a3 SELECT inbox\r\n", [c.Select(tag="a3", mailbox="INBOX")]),
    (b"a3 EXAMINE blurdybloop (CONDSTORE)\r\n",
     [c.Select(tag="a3", mailbox="blurdybloop", readonly=True, condstore=True)]),
    (b"a4 CREATE owatagusiam/\r\n", [c.Create(tag="a4", mailbox="owatagusiam")]),
    (b'a4 CREATE "~peter/mail/&U,BTFw-/&ZeVnLIqe-"\r\n',
     [c.Create(tag="a4", mailbox="~peter/mail/台北/日本語")]),
    (b"a5 DELETE foo\r\na6 RENAME foo bar\r\n",
     [c.Delete(tag="a5", mailbox="foo"), c.Rename(tag="a6", old="foo", new="bar")]),
    (b"a7 LIST \"\" *\r\n", [c.List(tag="a7", reference="", patterns=("*",))]),
    (b"a8 LSUB \"#news.\" \"comp.mail.*\"\r\n",
     [c.Lsub(tag="a8", reference="#news.", pattern="comp.mail.*")]),
    (b"a9 STATUS blurdybloop (UIDNEXT MESSAGES SIZE APPENDLIMIT HIGHESTMODSEQ)\r\n",
     [c.Status(tag="a9", mailbox="blurdybloop",
               items=("UIDNEXT", "MESSAGES", "SIZE", "APPENDLIMIT", "HIGHESTMODSEQ"))]),
    (b"b1 UID EXPUNGE 3000:3002\r\n",
     [c.Expunge(tag="b1", uid=True, sequence=SequenceSet(((3000, 3002),)))]),
    (b"b2 COPY 2:4 MEETING\r\n",
     [c.Copy(tag="b2", sequence=SequenceSet(((2, 4),)), mailbox="MEETING")]),
    (b"b3 UID MOVE 42:69 foo\r\n",
     [c.Move(tag="b3", sequence=SequenceSet(((42, 69),)), mailbox="foo", uid=True)]),
    (b"b4 STORE 2:4 +FLAGS (\\Deleted)\r\n",
     [c.Store(tag="b4", sequence=SequenceSet(((2, 4),)), mode="add", silent=False,
              flags=("\\Deleted",))]),
    (b"b4 STORE 1 -FLAGS.SILENT \\Seen $Junk\r\n",
     [c.Store(tag="b4", sequence=SequenceSet(((1, 1),)), mode="remove", silent=True,
              flags=("\\Seen", "$Junk"))]),
    (b"b5 ENABLE CONDSTORE\r\n", [c.Enable(tag="b5", capabilities=("CONDSTORE",))]),
    (b"b6 AUTHENTICATE PLAIN\r\n", [c.Authenticate(tag="b6", mechanism="PLAIN")]),
    (b"b6 AUTHENTICATE PLAIN =\r\n",
     [c.Authenticate(tag="b6", mechanism="PLAIN", initial_response=b"")]),
    (b"b7 ID NIL\r\n", [c.Id(tag="b7", params=None)]),
    (b"b8 GETQUOTA \"\"\r\n", [c.GetQuota(tag="b8", root="")]),
    (b"b9 COMPRESS DEFLATE\r\n", [c.Compress(tag="b9", mechanism="DEFLATE")]),
    (b"c1 IDLE\r\n", [c.Idle(tag="c1")]),
    (b"c2 NAMESPACE\r\nc3 CHECK\r\nc4 CLOSE\r\nc5 UNSELECT\r\nc6 EXPUNGE\r\nc7 LOGOUT\r\n",
     [c.Namespace(tag="c2"), c.Check(tag="c3"), c.Close(tag="c4"), c.Unselect(tag="c5"),
      c.Expunge(tag="c6"), c.Logout(tag="c7")]),
    (b"c8 STARTTLS\r\n", [c.StartTLS(tag="c8")]),
    (b"\r\nc9 NOOP\r\n", [c.Noop(tag="c9")]),  # empty lines are ignored
]


@pytest.mark.parametrize(("data", "expected"), CASES)
def test_commands_three_ways(data: bytes, expected: list[object], feed3: Any) -> None:
    assert feed3(data) == expected


def test_fetch_items(feed3: Any) -> None:
    [cmd] = feed3(
        b"a FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)] BODY.PEEK[1.2.MIME]<0.10> "
        b"BINARY[1] BINARY.SIZE[2] RFC822.SIZE MODSEQ PREVIEW EMAILID THREADID SAVEDATE "
        b"BODYSTRUCTURE ENVELOPE INTERNALDATE RFC822.HEADER)\r\n")
    assert isinstance(cmd, c.Fetch)
    names = [i.response_name() for i in cmd.items]
    assert names == ["FLAGS", "BODY[HEADER.FIELDS (DATE FROM)]", "BODY[1.2.MIME]<0>",
                     "BINARY[1]", "BINARY.SIZE[2]", "RFC822.SIZE", "MODSEQ", "PREVIEW",
                     "EMAILID", "THREADID", "SAVEDATE", "BODYSTRUCTURE", "ENVELOPE",
                     "INTERNALDATE", "RFC822.HEADER"]
    assert cmd.items[2].peek and cmd.items[2].partial == (0, 10)
    assert not cmd.items[1].peek


@pytest.mark.parametrize(("macro", "names"), [
    ("ALL", ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]),
    ("FAST", ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]),
    ("full", ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]),
])
def test_fetch_macros(macro: str, names: list[str], feed3: Any) -> None:
    [cmd] = feed3(f"a FETCH 1:* {macro}\r\n".encode())
    assert [i.name for i in cmd.items] == names
    assert cmd.sequence == SequenceSet(((1, STAR),))


def test_uid_fetch_adds_uid_and_changedsince_adds_modseq(feed3: Any) -> None:
    [cmd] = feed3(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n")
    assert [i.name for i in cmd.items] == ["UID", "FLAGS", "MODSEQ"]
    assert cmd.changedsince == 12345 and cmd.vanished and cmd.uid


def test_vanished_requires_uid_fetch(feed3: Any) -> None:
    [err] = feed3(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)\r\n")
    assert isinstance(err, c.ParseError) and err.tag == "a"


def test_store_unchangedsince(feed3: Any) -> None:
    [cmd] = feed3(b"d105 STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT "
                            b"(\\Deleted)\r\n")
    assert cmd.unchangedsince == 320162338 and cmd.silent and cmd.mode == "add"
    assert cmd.sequence.resolve(10) == [(5, 5), (7, 7), (9, 9)]


def test_select_qresync(feed3: Any) -> None:
    [cmd] = feed3(b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 "
                            b"41,43:211,214:541 (1,3 41,43)))\r\n")
    q = cmd.qresync
    assert q.uidvalidity == 67890007 and q.modseq == 20050715194045000
    assert q.known_uids.resolve(1000) == [(41, 41), (43, 211), (214, 541)]
    assert q.seq_match[0].resolve(10) == [(1, 1), (3, 3)]


def test_list_extended(feed3: Any) -> None:
    [cmd] = feed3(b'A01 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("INBOX" "Drafts" %) '
                            b"RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))\r\n")
    assert cmd == c.List(tag="A01", reference="", patterns=("INBOX", "Drafts", "%"),
                         selection=("SUBSCRIBED", "RECURSIVEMATCH"),
                         returns=("CHILDREN", "SPECIAL-USE", "STATUS"),
                         status_items=("MESSAGES", "UNSEEN"), extended=True)


def test_create_special_use(feed3: Any) -> None:
    [cmd] = feed3(b"t1 CREATE MySpecialArchive (USE (\\Archive))\r\n")
    assert cmd.special_use == ("\\Archive",)
    [err] = feed3(b"t1 CREATE x (USE (\\Bogus))\r\n")
    assert isinstance(err, c.ParseError) and err.code == "USEATTR"


def test_search_program(feed3: Any) -> None:
    [cmd] = feed3(b'A282 SEARCH RETURN (MIN COUNT SAVE) CHARSET UTF-8 FLAGGED '
                            b'SINCE 1-Feb-1994 NOT FROM "Smith" OR SEEN (LARGER 100 UID $) '
                            b'OLDER 3600 MODSEQ "/flags/\\\\draft" all 620162338\r\n')
    assert cmd.returns == ("MIN", "COUNT", "SAVE") and cmd.charset == "UTF-8"
    assert cmd.key == s.And((
        s.HasFlag("\\Flagged"),
        s.DateKey("internal", "since", dt.date(1994, 2, 1)),
        s.Not(s.Header("From", "Smith")),
        s.Or(s.HasFlag("\\Seen"),
             s.And((s.SizeKey("larger", 100), s.UidKey(SequenceSet((), saved=True))))),
        s.Within("older", 3600),
        s.ModSeqKey(620162338, "/flags/\\draft", "ALL"),
    ))


def test_search_charset_latin1_decodes_literal(feed3: Any) -> None:
    data = b"a SEARCH CHARSET ISO-8859-1 SUBJECT {4}\r\ncaf\xe9\r\n"
    [cont, cmd] = feed3(data)
    assert cont == c.NeedContinuation(4, "a")
    assert cmd.key == s.Header("Subject", "café")


def test_search_bad_charset(feed3: Any) -> None:
    [err] = feed3(b"a SEARCH CHARSET X-NOPE-42 ALL\r\n")
    assert isinstance(err, c.ParseError) and err.code.startswith("BADCHARSET")
    # RFC 9051 §6.4.4: "it MUST return a tagged NO response (not a BAD)"
    assert err.status == "NO" and "ISO-8859-1" in err.code
    [err] = feed3(b"b SORT (DATE) X-NOPE-42 ALL\r\n")
    assert isinstance(err, c.ParseError) and err.status == "NO"


def test_sort_and_thread(feed3: Any) -> None:
    [cmd] = feed3(b"A283 SORT (SUBJECT REVERSE DATE) UTF-8 ALL\r\n")
    assert cmd.criteria == ((False, "SUBJECT"), (True, "DATE"))
    [cmd] = feed3(b"A284 UID THREAD ORDEREDSUBJECT UTF-8 SINCE 5-MAR-2000\r\n")
    assert cmd.algorithm == "ORDEREDSUBJECT" and cmd.uid


def test_id_and_setquota(feed3: Any) -> None:
    [cmd] = feed3(b'a023 ID ("name" "sodr" "version" "19.34")\r\n')
    assert cmd.params == (("name", "sodr"), ("version", "19.34"))
    [cmd] = feed3(b'A003 SETQUOTA "" (STORAGE 512)\r\n')
    assert cmd.limits == (("STORAGE", 512),)


def test_sasl_ir(feed3: Any) -> None:
    [cmd] = feed3(b"a AUTHENTICATE PLAIN AHRlc3QAcGFzcw==\r\n")
    assert cmd.initial_response == b"\0test\0pass"
    [err] = feed3(b"a AUTHENTICATE PLAIN !!!\r\n")
    assert isinstance(err, c.ParseError)


# -- APPEND streaming -------------------------------------------------------------------------
def test_append_streams_message(feed3: Any) -> None:
    msg = b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nSubject: x\r\n\r\nHello\r\n"
    data = (b'A003 APPEND saved-messages (\\Seen) "07-Feb-1994 21:52:25 -0800" {%d}\r\n'
            % len(msg)) + msg + b"\r\n"
    evs = feed3(data)
    start, chunk, end, done = evs
    assert start.mailbox == "saved-messages" and start.flags == ("\\Seen",)
    assert start.internaldate == dt.datetime(1994, 2, 7, 21, 52, 25,
                                             tzinfo=dt.timezone(-dt.timedelta(hours=8)))
    assert start.size == len(msg) and start.synchronizing
    assert chunk == c.AppendChunk("A003", msg)
    assert end == c.AppendMessageEnd("A003") and done == c.AppendDone("A003", 1)


def test_multiappend_and_literal_mailbox(feed3: Any) -> None:
    data = b"a APPEND {3+}\r\nfoo {2+}\r\nhi (\\Draft) {3+}\r\nbye\r\n"
    evs = feed3(data)
    assert [type(e).__name__ for e in evs] == [
        "AppendMessage", "AppendChunk", "AppendMessageEnd",
        "AppendMessage", "AppendChunk", "AppendMessageEnd", "AppendDone"]
    assert evs[0].mailbox == "foo" and evs[3].flags == ("\\Draft",) and evs[3].index == 1
    assert evs[-1] == c.AppendDone("a", 2)


def test_append_large_literal_is_chunked_with_bounded_buffer() -> None:
    size = 300_000
    p = CommandParser(max_append=1_000_000)
    p.feed(b"a APPEND INBOX {%d+}\r\n" % size)
    [start] = drain(p)
    assert start.size == size and not start.synchronizing
    got = 0
    others = []
    for _ in range(30):
        p.feed(b"x" * 10_000)
        for ev in drain(p):
            if isinstance(ev, c.AppendChunk):
                assert len(ev.data) <= 65536
                got += len(ev.data)
            else:
                others.append(ev)
        assert len(p._buf) == 0  # nothing is held back
    assert got == size
    assert others == [c.AppendMessageEnd("a")]
    p.feed(b"\r\n")
    assert drain(p) == [c.AppendDone("a", 1)]


def test_append_too_big_sync_is_refused_without_reading_data(feed3: Any) -> None:
    evs = feed3(b"a APPEND INBOX {4294967296}\r\n", max_append=1000)
    [err] = evs
    assert err.kind == "toobig" and err.code == "TOOBIG" and err.tag == "a"


def test_append_too_big_nonsync_payload_is_skipped_not_parsed(feed3: Any) -> None:
    payload = b"x LOGOUT\r\n" * 50  # must never surface as commands
    data = b"a APPEND INBOX {%d+}\r\n" % len(payload) + payload + b"\r\n"
    evs = feed3(data, max_append=100)
    assert len(evs) == 1 and evs[0].kind == "toobig"


def test_refuse_sync_append_literal() -> None:
    p = CommandParser()
    p.feed(b"a APPEND nosuch {10}\r\n")
    [start] = drain(p)
    assert start.synchronizing
    p.refuse_literal()  # adapter answers "a NO [TRYCREATE]"; the client sends nothing
    p.feed(b"b NOOP\r\n")
    assert drain(p) == [c.Noop(tag="b")]


def test_refuse_nonsync_append_literal_skips_payload() -> None:
    p = CommandParser()
    p.feed(b"a APPEND nosuch {10+}\r\n")
    [start] = drain(p)
    assert not start.synchronizing
    p.refuse_literal()
    p.feed(b"b LOGOUT\r\n (\\Seen) {10+}\r\nc LOGOUT\r\n\r\nd NOOP\r\n")
    assert drain(p) == [c.Noop(tag="d")]


def test_append_without_literal_is_bad(feed3: Any) -> None:
    [err] = feed3(b"a APPEND INBOX\r\n")
    assert isinstance(err, c.ParseError) and err.tag == "a"


def _feed_utf8(data: bytes, *, bytewise: bool = False) -> list[object]:
    """Events of a parser after ENABLE UTF8=ACCEPT, adjacent chunks joined."""
    p = CommandParser()
    p.utf8 = True
    out: list[object] = []
    for piece in ([data[i : i + 1] for i in range(len(data))] if bytewise else [data]):
        p.feed(piece)
        for ev in drain(p):
            if isinstance(ev, c.AppendChunk) and out and isinstance(out[-1], c.AppendChunk):
                out[-1] = c.AppendChunk(ev.tag, out[-1].data + ev.data)
            else:
                out.append(ev)
    return out


def test_utf8_append_data_item() -> None:
    """RFC 6855 §4 ``UTF8 (literal8)``: the literal8 streams as any message does and
    the ")" after it is taken; MULTIAPPEND may mix it with plain literals."""
    m1, m2 = "Subject: Grüße\r\n\r\nKöln\r\n".encode(), b"Subject: b\r\n\r\nb\r\n"
    data = (b'a APPEND INBOX (\\Seen) "07-Feb-1994 21:52:25 -0800" UTF8 (~{%d}\r\n%s)'
            b" (\\Draft) {%d+}\r\n%s utf8 (~{%d+}\r\n%s)\r\nb NOOP\r\n"
            % (len(m1), m1, len(m2), m2, len(m1), m1))
    evs = _feed_utf8(data)
    assert _feed_utf8(data, bytewise=True) == evs
    assert [type(e).__name__ for e in evs] == [
        "AppendMessage", "AppendChunk", "AppendMessageEnd",
        "AppendMessage", "AppendChunk", "AppendMessageEnd",
        "AppendMessage", "AppendChunk", "AppendMessageEnd", "AppendDone", "Noop"]
    first, second, third = evs[0], evs[3], evs[6]
    assert isinstance(first, c.AppendMessage) and isinstance(second, c.AppendMessage)
    assert isinstance(third, c.AppendMessage)
    assert first.utf8 and first.binary and first.synchronizing and first.flags == ("\\Seen",)
    assert first.internaldate is not None and first.size == len(m1)
    assert not second.utf8 and not second.binary and second.flags == ("\\Draft",)
    assert third.utf8 and third.index == 2
    assert evs[1] == c.AppendChunk("a", m1) and evs[4] == c.AppendChunk("a", m2)
    assert evs[9] == c.AppendDone("a", 3)


@pytest.mark.parametrize(("data", "message"), [
    # the data item needs a literal8 ...
    (b"a APPEND INBOX UTF8 ({3+}\r\nabc)\r\n", "UTF8 APPEND data must be a literal8 (~{n})"),
    # ... and the ")" after it
    (b"a APPEND INBOX UTF8 (~{3+}\r\nabc\r\n", "expected ')' after UTF8 APPEND data"),
    (b"a APPEND INBOX UTF8 (~{3+}\r\nabc (\\Seen) {3+}\r\nabc\r\n",
     "expected ')' after UTF8 APPEND data"),
    (b"a APPEND INBOX UTF8 ~{3+}\r\nabc\r\n", "unexpected extra arguments"),
])
def test_bad_utf8_append(data: bytes, message: str) -> None:
    for bytewise in (False, True):
        evs = _feed_utf8(data + b"b NOOP\r\n", bytewise=bytewise)
        errs = [e for e in evs if isinstance(e, c.ParseError)]
        assert len(errs) == 1 and errs[0].tag == "a" and errs[0].message == message
        assert errs[0].status == "BAD" and evs[-1] == c.Noop(tag="b")


def test_utf8_append_without_enable_is_bad_and_its_data_skipped(feed3: Any) -> None:
    """RFC 6855 §4: only after ENABLE UTF8=ACCEPT; a non-synchronising literal8 and the
    rest of the command are skipped, never read as commands."""
    [err] = feed3(b"a APPEND INBOX UTF8 (~{10+}\r\nb LOGOUT\r\n)\r\n")
    assert isinstance(err, c.ParseError) and err.tag == "a" and err.status == "BAD"
    assert err.message == "UTF8 APPEND data needs ENABLE UTF8=ACCEPT"
    [err] = feed3(b"a APPEND INBOX UTF8 (~{10}\r\n")  # no "+ Ready" is asked for
    assert isinstance(err, c.ParseError) and err.tag == "a"


# -- literal limits ---------------------------------------------------------------------------
def test_oversize_literal_number(feed3: Any) -> None:
    [err] = feed3(b"a LOGIN {4294967296}\r\n")
    assert err.kind == "toobig" and err.tag == "a" and err.status == "NO"
    [err] = feed3(b"a LOGIN {99999999999999999999}\r\n")
    assert err.kind == "toobig"


def test_refused_nonsync_literal_payload_never_parsed(feed3: Any) -> None:
    payload = b"evil DELETE INBOX\r\n" * 10
    data = b"a LOGIN {%d+}\r\n" % len(payload) + payload + b" pw\r\n"
    evs = feed3(data, max_literal=50)
    assert len(evs) == 1 and evs[0].kind == "toobig"


def test_literal_minus_limit(feed3: Any) -> None:
    payload = b"y" * 5000
    data = b"a LOGIN {5000+}\r\n" + payload + b" pw\r\n"
    evs = feed3(data, literal_plus=False, literal_minus=True, max_literal=10_000)
    assert len(evs) == 1 and evs[0].kind == "toobig" and evs[0].code == "TOOBIG"
    assert evs[0].status == "BAD"  # RFC 7888 §5
    # 4096 and under is fine with LITERAL-
    ok = feed3(b"a LOGIN {3+}\r\nabc pw\r\n", literal_plus=False,
                         literal_minus=True)
    assert ok == [c.Login(tag="a", username="abc", password="pw")]


def test_nonsync_without_literal_plus_is_bad_and_skipped(feed3: Any) -> None:
    evs = feed3(b"a LOGIN {12+}\r\nb DELETE x\r\n pw\r\n", literal_plus=False)
    assert len(evs) == 1 and evs[0].tag == "a"


# -- lines ------------------------------------------------------------------------------------
def test_line_without_crlf_past_limit() -> None:
    p = CommandParser(max_line=1000)
    p.feed(b"a1 NOOP " + b"x" * 5000)
    [err] = drain(p)
    assert err.kind == "line_too_long" and err.tag == "a1"
    assert len(p._buf) == 0
    p.feed(b"y" * 100_000)  # still discarded, memory stays flat
    assert drain(p) == [] and len(p._buf) == 0
    p.feed(b"\r\nb NOOP\r\n")
    assert drain(p) == [c.Noop(tag="b")]


def test_overlong_line_ending_in_nonsync_literal_skips_payload(feed3: Any) -> None:
    data = b"a LOGIN " + b"x" * 2000 + b" {20+}\r\n" + b"c DELETE INBOX\r\n1234" + b"\r\n"
    evs = feed3(data, max_line=1000)
    assert len(evs) == 1 and evs[0].kind == "line_too_long"


def test_command_total_limit(feed3: Any) -> None:
    data = b"a LOGIN " + b"{900+}\r\n" + b"u" * 900 + b" {900+}\r\n" + b"p" * 900 + b"\r\n"
    evs = feed3(data, max_command=1000)
    assert len(evs) == 1 and evs[0].tag == "a"


# -- modes ------------------------------------------------------------------------------------
def test_idle_done() -> None:
    p = CommandParser()
    p.feed(b"a IDLE\r\ndone\r\nb NOOP\r\n")
    assert p.next() == c.Idle(tag="a")
    p.expect_idle_done("a")
    assert drain(p) == [c.IdleDone(), c.Noop(tag="b")]


def test_idle_expects_done() -> None:
    p = CommandParser()
    p.feed(b"a IDLE\r\nb NOOP\r\n")
    assert p.next() == c.Idle(tag="a")
    p.expect_idle_done("a")
    [err] = drain(p)
    assert isinstance(err, c.ParseError) and err.tag == "a"


def test_sasl_responses() -> None:
    p = CommandParser()
    p.feed(b"a AUTHENTICATE PLAIN\r\nAHUAcA==\r\n")
    assert p.next() == c.Authenticate(tag="a", mechanism="PLAIN")
    p.expect_sasl_response("a")
    assert drain(p) == [c.SaslResponse(b"\0u\0p")]
    p.feed(b"a AUTHENTICATE LOGIN\r\n*\r\n")
    p.next()
    p.expect_sasl_response("a")
    assert drain(p) == [c.SaslResponse(cancelled=True)]


def test_starttls_buffer_is_taken() -> None:
    p = CommandParser()
    p.feed(b"a STARTTLS\r\nb LOGIN injected pw\r\n")
    assert p.next() == c.StartTLS(tag="a")
    assert p.take_buffered() == b"b LOGIN injected pw\r\n"
    assert drain(p) == []


def test_utf8_accept_mailbox_names() -> None:
    p = CommandParser()
    p.utf8 = True
    p.feed('a SELECT "Entwürfe"\r\n'.encode())
    assert drain(p) == [c.Select(tag="a", mailbox="Entwürfe")]
    p2 = CommandParser()
    p2.feed('a SELECT "Entwürfe"\r\n'.encode())
    [err] = drain(p2)
    assert isinstance(err, c.ParseError)


@pytest.mark.parametrize(("program", "key"), [
    (b"OR (SEEN) (DRAFT)", s.Or(s.HasFlag("\\Seen"), s.HasFlag("\\Draft"))),
    (b"NOT (SEEN FLAGGED)", s.Not(s.And((s.HasFlag("\\Seen"), s.HasFlag("\\Flagged"))))),
    (b"OR OR SEEN DRAFT DELETED",
     s.Or(s.Or(s.HasFlag("\\Seen"), s.HasFlag("\\Draft")), s.HasFlag("\\Deleted"))),
    (b"(OR SEEN DRAFT) NOT NOT ALL",
     s.And((s.Or(s.HasFlag("\\Seen"), s.HasFlag("\\Draft")), s.Not(s.Not(s.All()))))),
    (b"((((ALL))))", s.All()),
    (b"NEW", s.And((s.HasFlag("\\Recent"), s.Not(s.HasFlag("\\Seen"))))),
    (b"UNKEYWORD $Junk", s.Not(s.HasFlag("$Junk"))),
    (b'SENTSINCE "1-Feb-1994"', s.DateKey("sent", "since", dt.date(1994, 2, 1))),
    (b"SAVEDBEFORE 02-Jan-2020 SAVEDATESUPPORTED",
     s.And((s.DateKey("save", "before", dt.date(2020, 1, 2)), s.SaveDateSupported()))),
    (b"YOUNGER 60 EMAILID M1", s.And((s.Within("younger", 60), s.ObjectIdKey("EMAILID", "M1")))),
    (b"2:4,*", s.SeqKey(SequenceSet(((2, 4), (STAR, STAR))))),
])
def test_search_nesting(program: bytes, key: s.SearchKey, feed3: Any) -> None:
    [cmd] = feed3(b"a SEARCH " + program + b"\r\n")
    assert cmd.key == key


@pytest.mark.parametrize("program", [b"OR (SEEN)", b"()", b"OR SEEN DRAFT)", b"NOT NOT",
                                     b"(SEEN", b"SEEN  DRAFT", b"KEYWORD", b"HEADER From"])
def test_search_bad_nesting(program: bytes, feed3: Any) -> None:
    [err] = feed3(b"a SEARCH " + program + b"\r\n")
    assert isinstance(err, c.ParseError) and err.tag == "a"
