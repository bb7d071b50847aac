"""OBJECTID (RFC 8474), PREVIEW (RFC 8970), SAVEDATE (RFC 8514), AUTH=LOGIN, ID,
LIST-EXTENDED RECURSIVEMATCH/CHILDINFO (RFC 5258), ESEARCH for UID SEARCH (RFC 4731)
and ``\\Recent`` for IMAP4rev1 sessions (RFC 3501 §2.3.2), over real sockets."""

from __future__ import annotations

import base64
import datetime as dt
import imaplib
import re
from pathlib import Path

from tests.imap.support import M1, PASSWORD, USER, ImapTestServer, RawClient

OBJECTID_RE = rb"[A-Za-z0-9_-]{1,255}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _one(pattern: bytes, lines: list[bytes] | bytes) -> bytes:
    data = lines if isinstance(lines, bytes) else b"\n".join(lines)
    m = re.search(pattern, data)
    assert m, (pattern, data)
    return m.group(1)


def test_mailboxid_select_status_create_list_and_rename(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        untagged, tagged = raw.cmd("CREATE Projects/2024")
        mbid = _one(rb"^t2 OK \[MAILBOXID \((" + OBJECTID_RE + rb")\)\]", tagged)
        untagged, _ = raw.cmd("STATUS Projects/2024 (MAILBOXID MESSAGES)")
        assert untagged == [b"* STATUS Projects/2024 (MAILBOXID (%s) MESSAGES 0)" % mbid]
        untagged, _ = raw.cmd("SELECT Projects/2024")
        assert b"* OK [MAILBOXID (%s)] Ok" % mbid in untagged
        inbox = _one(rb"MAILBOXID \((" + OBJECTID_RE + rb")\)", raw.cmd("EXAMINE INBOX")[0])
        assert inbox != mbid
        # RFC 8474 §4.2.1: the id survives RENAME; a new mailbox of the old name gets a new one
        _, tagged = raw.cmd("RENAME Projects/2024 Projects/Done")
        assert b"OK" in tagged
        untagged, _ = raw.cmd('LIST "" "Projects/*" RETURN (STATUS (MAILBOXID))')
        assert b"* STATUS Projects/Done (MAILBOXID (%s))" % mbid in untagged
        _, tagged = raw.cmd("CREATE Projects/2024")
        assert _one(rb"MAILBOXID \((" + OBJECTID_RE + rb")\)", tagged) not in (mbid, inbox)


def test_emailid_and_threadid_fetch_and_search(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        reply = (b"From: alice@example.org\r\nSubject: Re: Re: hello there\r\n"
                 b"Message-ID: <m4@example.org>\r\nIn-Reply-To: <m2@example.org>\r\n"
                 b"References: <m1@example.org> <m2@example.org>\r\n\r\nthird in thread\r\n")
        srv.deliver(reply)
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")
        untagged, tagged = raw.cmd("FETCH 1:4 (EMAILID THREADID)")
        assert tagged.endswith(b"OK FETCH completed")
        ids = {}
        for line in untagged:
            m = re.match(rb"\* (\d) FETCH \(EMAILID \((" + OBJECTID_RE + rb")\) THREADID \(("
                         + OBJECTID_RE + rb")\)\)", line)
            assert m, line
            ids[int(m.group(1))] = (m.group(2), m.group(3))
        assert len({e for e, _ in ids.values()}) == 4  # four different messages
        # M1 starts the thread, M2 answers it (References), the reply above continues it
        assert ids[1][1] == ids[2][1] == ids[4][1] != ids[3][1]
        # SEARCH EMAILID / THREADID (RFC 8474 §6)
        assert raw.cmd(b"SEARCH THREADID " + ids[1][1])[0] == [b"* SEARCH 1 2 4"]
        assert raw.cmd(b"SEARCH EMAILID " + ids[3][0])[0] == [b"* SEARCH 3"]
        # a copy keeps its EMAILID and THREADID (§5.1); the cache gives the same answer
        raw.cmd("COPY 3 Archive")
        raw.cmd("SELECT Archive")
        untagged, _ = raw.cmd("FETCH 1 (EMAILID THREADID)")
        assert untagged == [b"* 1 FETCH (EMAILID (%s) THREADID (%s))" % ids[3]]


def test_preview_and_savedate(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")
        untagged, _ = raw.cmd("FETCH 1:2 (PREVIEW)")
        assert untagged == [b'* 1 FETCH (PREVIEW "first body with a zebra")',
                            b'* 2 FETCH (PREVIEW "part one text")']
        # PREVIEW (LAZY) may answer from the cache; it does (RFC 8970 §3.2)
        untagged, _ = raw.cmd("FETCH 1 (PREVIEW (LAZY))")
        assert untagged == [b'* 1 FETCH (PREVIEW "first body with a zebra")']
        # non-ASCII text goes as a literal for clients without UTF8=ACCEPT
        srv.deliver("Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n".encode())
        raw.cmd("NOOP")
        untagged, _ = raw.cmd("FETCH 4 (PREVIEW)")
        expect = "Grüße aus Köln".encode()
        assert untagged == [b"* 4 FETCH (PREVIEW {%d}\r\n%s)" % (len(expect), expect)]
        # SAVEDATE (RFC 8514 §4.1) and the SAVED* search keys (§4.2)
        untagged, _ = raw.cmd("FETCH 1 (SAVEDATE)")
        text = _one(rb'SAVEDATE "([^"]+)"', untagged).decode()
        saved = dt.datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
        assert abs(saved.timestamp() - dt.datetime.now(dt.UTC).timestamp()) < 600
        day = saved.strftime("%d-%b-%Y")
        before = (saved - dt.timedelta(days=1)).strftime("%d-%b-%Y")
        after = (saved + dt.timedelta(days=1)).strftime("%d-%b-%Y")
        assert raw.cmd(f"SEARCH SAVEDON {day}")[0] == [b"* SEARCH 1 2 3 4"]
        assert raw.cmd(f"SEARCH SAVEDSINCE {after}")[0] == [b"* SEARCH"]
        assert raw.cmd(f"SEARCH SAVEDBEFORE {after}")[0] == [b"* SEARCH 1 2 3 4"]
        assert raw.cmd(f"SEARCH SAVEDBEFORE {before}")[0] == [b"* SEARCH"]
        assert raw.cmd("SEARCH SAVEDATESUPPORTED")[0] == [b"* SEARCH 1 2 3 4"]


def test_authenticate_login_with_and_without_initial_response(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        assert b"AUTH=LOGIN" in raw.greeting
        raw.send("a1 AUTHENTICATE LOGIN\r\n")
        assert raw.line() == b"+ " + base64.b64encode(b"Username:")
        raw.send(_b64(USER) + "\r\n")
        assert raw.line() == b"+ " + base64.b64encode(b"Password:")
        raw.send(_b64("wrong") + "\r\n")
        assert raw.until(b"a1")[1] == b"a1 NO [AUTHENTICATIONFAILED] Authentication failed"
        # SASL-IR: the user name in the command, the password after one challenge
        raw.send(f"a2 AUTHENTICATE LOGIN {_b64(USER)}\r\n")
        assert raw.line() == b"+ " + base64.b64encode(b"Password:")
        raw.send(_b64(PASSWORD) + "\r\n")
        _, tagged = raw.until(b"a2")
        assert tagged.startswith(b"a2 OK [CAPABILITY ")
        # imaplib's own AUTHENTICATE drives the two challenges
        c = imaplib.IMAP4("127.0.0.1", srv.port, timeout=10)
        answers = iter([USER, PASSWORD])
        assert c.authenticate("LOGIN", lambda _: next(answers).encode())[0] == "OK"
        c.logout()


def test_id_and_esearch_for_uid_search(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        untagged, tagged = raw.cmd('ID ("name" "test" "version" "1")')
        assert untagged == [b'* ID ("name" "mailyard")'] and tagged.endswith(b"OK ID completed")
        raw.login()
        raw.cmd("SELECT INBOX")
        untagged, _ = raw.cmd("UID SEARCH RETURN (MIN MAX COUNT ALL) SUBJECT hello")
        assert untagged == [b'* ESEARCH (TAG "t4") UID MIN 1 MAX 2 ALL 1:2 COUNT 2']
        untagged, _ = raw.cmd("UID SEARCH RETURN () ALL")
        assert untagged == [b'* ESEARCH (TAG "t5") UID ALL 1:3']
        untagged, _ = raw.cmd("UID SEARCH RETURN (COUNT) SUBJECT nothing-like-this")
        assert untagged == [b'* ESEARCH (TAG "t6") UID COUNT 0']


def test_list_recursivematch_childinfo(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        for name in ("Work", "Work/Reports", "Lists", "Lists/python"):
            raw.cmd(f"CREATE {name}")
        raw.cmd("UNSUBSCRIBE Work")
        raw.cmd("UNSUBSCRIBE Lists/python")
        untagged, _ = raw.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
        work = [u for u in untagged if b'"/" Work' in u]
        # Work is not subscribed but Work/Reports is: listed with CHILDINFO, no \Subscribed
        assert work == [b'* LIST (\\HasChildren) "/" Work (CHILDINFO ("SUBSCRIBED"))']
        lists = [u for u in untagged if b'"/" Lists' in u]
        assert lists == [b'* LIST (\\HasChildren \\Subscribed) "/" Lists']
        assert not any(b"python" in u or b"Reports" in u for u in untagged)
        # without RECURSIVEMATCH the unsubscribed parent is simply left out
        untagged, _ = raw.cmd('LIST (SUBSCRIBED) "" "%"')
        assert not any(b'"/" Work' in u for u in untagged)
        # RECURSIVEMATCH alone is BAD (RFC 5258 §3)
        assert b"BAD" in raw.cmd('LIST (RECURSIVEMATCH) "" "%"')[1]


def test_recent_first_session_only_examine_keeps_it(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        a, b = RawClient(srv.port), RawClient(srv.port)
        a.login()
        b.login()
        assert b"* 3 RECENT" in b.cmd("EXAMINE INBOX")[0]  # EXAMINE claims nothing
        assert b.cmd("STATUS Archive (RECENT)")[0] == [b"* STATUS Archive (RECENT 0)"]
        assert a.cmd("STATUS INBOX (RECENT)")[0] == [b"* STATUS INBOX (RECENT 3)"]
        untagged, _ = a.cmd("SELECT INBOX")
        assert b"* 3 RECENT" in untagged
        assert a.cmd("SEARCH RECENT")[0] == [b"* SEARCH 1 2 3"]
        assert a.cmd("FETCH 1 FLAGS")[0] == [b"* 1 FETCH (FLAGS (\\Recent))"]
        assert b.cmd("STATUS INBOX (RECENT)")[0] == [b"* STATUS INBOX (RECENT 0)"]
        assert b"* 0 RECENT" in b.cmd("SELECT INBOX")[0]
        assert b.cmd("SEARCH RECENT")[0] == [b"* SEARCH"]
        assert b.cmd("SEARCH OLD")[0] == [b"* SEARCH 1 2 3"]
        # new mail is recent in the first session told about it, not in the other
        srv.deliver(M1)
        assert b.cmd("NOOP")[0] == [b"* 4 EXISTS", b"* 1 RECENT"]
        assert b.cmd("SEARCH NEW")[0] == [b"* SEARCH 4"]
        assert a.cmd("NOOP")[0] == [b"* 4 EXISTS"]
        assert a.cmd("SEARCH RECENT")[0] == [b"* SEARCH 1 2 3"]
        # \Recent cannot be stored, and IMAP4rev2 sessions never see it
        assert b"BAD" in a.cmd("STORE 1 FLAGS (\\Recent \\Seen)")[1]
        untagged, _ = a.cmd("STORE 1 FLAGS (\\Seen)")
        assert untagged == [b"* 1 FETCH (FLAGS (\\Recent \\Seen))"]  # shown, never stored
        assert srv.flags(1) == {"\\Seen"}
        c = RawClient(srv.port)
        c.login()
        c.cmd("ENABLE IMAP4rev2")
        untagged, _ = c.cmd("SELECT INBOX")
        assert not any(b"RECENT" in u for u in untagged)
        srv.deliver(M1)
        assert c.cmd("NOOP")[0] == [b"* 5 EXISTS"]
        assert c.cmd("FETCH 5 FLAGS")[0] == [b"* 5 FETCH (FLAGS ())"]
