"""Several sessions on one mailbox: changes in one reach the others (IDLE and command
boundaries), EXPUNGE timing (RFC 9051 §7.5.1), CONDSTORE/QRESYNC resynchronisation."""

from __future__ import annotations

import re
import time
from pathlib import Path

from imapclient import IMAPClient

from tests.imap.support import PASSWORD, USER, ImapTestServer, RawClient


def _client(srv: ImapTestServer) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=srv.port, ssl=False, timeout=10)
    c.login(USER, PASSWORD)
    return c


def _idle_until(c: IMAPClient, want: tuple[int, bytes], timeout: float = 1.0) -> list:
    """Collect IDLE responses until ``want`` arrives; fail after ``timeout`` seconds."""
    got: list = []
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"{want} not received within {timeout}s: {got}"
        got += c.idle_check(timeout=left)
    return got


def test_delivery_during_idle_reaches_the_client_within_a_second(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        a = _client(srv)
        a.select_folder("INBOX")
        a.idle()
        t0 = time.monotonic()
        uid = srv.deliver(b"Subject: new\r\n\r\nnew mail\r\n")
        _idle_until(a, (4, b"EXISTS"))
        assert time.monotonic() - t0 < 1.0
        a.idle_done()
        assert a.search(["SUBJECT", "new"]) == [4] and uid == 4
        a.logout()


def test_flag_change_and_expunge_in_one_session_reach_an_idling_one(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        a, b = _client(srv), _client(srv)
        a.select_folder("INBOX")
        b.select_folder("INBOX")
        a.idle()
        b.add_flags([2], [b"\\Flagged"])
        responses = a.idle_check(timeout=1.0)
        fetches = [r[2] for r in responses if len(r) > 2 and r[:2] == (2, b"FETCH")]
        assert fetches and b"\\Flagged" in fetches[0][fetches[0].index(b"FLAGS") + 1]
        b.add_flags([1], [b"\\Deleted"])
        b.expunge()
        _idle_until(a, (1, b"EXPUNGE"))
        a.idle_done()
        # B appends into the mailbox both have selected: B sees EXISTS in its APPEND
        b.append("INBOX", b"Subject: from b\r\n\r\nx\r\n")
        assert a.noop()[1] == [(3, b"EXISTS")]
        a.logout()
        b.logout()


def test_expunge_waits_during_fetch_store_search(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        a, b = RawClient(srv.port), RawClient(srv.port)
        a.login()
        b.login()
        a.cmd("SELECT INBOX")
        b.cmd("SELECT INBOX")
        b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert b.cmd("EXPUNGE")[0] == [b"* 1 EXPUNGE"]
        # A still numbers the messages 1..3: no EXPUNGE while answering FETCH/STORE/SEARCH
        untagged, _ = a.cmd("FETCH 1:3 (UID)")
        assert untagged == [b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)"]
        untagged, _ = a.cmd("SEARCH ALL")
        assert untagged == [b"* SEARCH 2 3"]
        untagged, _ = a.cmd("STORE 3 +FLAGS (\\Seen)")
        assert not any(b"EXPUNGE" in u for u in untagged)
        # ... and at the next NOOP it arrives
        untagged, _ = a.cmd("NOOP")
        assert untagged == [b"* 1 EXPUNGE"]
        untagged, _ = a.cmd("FETCH 1:* (UID)")
        assert untagged == [b"* 1 FETCH (UID 2)", b"* 2 FETCH (UID 3)"]
        # a flag change by B shows up in A's next command
        b.cmd("UID STORE 3 +FLAGS (\\Answered)")
        untagged, _ = a.cmd("NOOP")
        # A selected first, so the messages are \\Recent in A (RFC 3501 §2.3.2)
        assert untagged == [b"* 2 FETCH (UID 3 FLAGS (\\Answered \\Recent \\Seen))"]


def test_condstore_fetch_changedsince_and_modseq_search(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        untagged, _ = raw.cmd("SELECT INBOX (CONDSTORE)")
        hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(untagged)).group(1))  # type: ignore[union-attr]
        untagged, _ = raw.cmd("STORE 2 +FLAGS (\\Flagged)")
        m = re.match(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged \\Recent\) MODSEQ \((\d+)\)\)", untagged[0])
        assert m and int(m.group(1)) > hms
        untagged, _ = raw.cmd(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})")
        assert untagged == [b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%s))" % m.group(1)]
        untagged, _ = raw.cmd(f"SEARCH MODSEQ {hms + 1}")
        assert untagged == [b"* SEARCH 2 (MODSEQ %s)" % m.group(1)]


def test_qresync_select_and_vanished(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        assert raw.cmd("ENABLE QRESYNC")[0] == [b"* ENABLED QRESYNC"]
        untagged, _ = raw.cmd("SELECT INBOX")
        text = b" ".join(untagged)
        validity = int(re.search(rb"UIDVALIDITY (\d+)", text).group(1))  # type: ignore[union-attr]
        hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", text).group(1))  # type: ignore[union-attr]
        raw.cmd("UNSELECT")
        # changes while the client is away: a flag, an expunge
        other = RawClient(srv.port)
        other.login()
        other.cmd("SELECT INBOX")
        other.cmd("STORE 3 +FLAGS (\\Seen)")
        other.cmd("STORE 1 +FLAGS (\\Deleted)")
        other.cmd("EXPUNGE")
        untagged, tagged = raw.cmd(f"SELECT INBOX (QRESYNC ({validity} {hms} 1:3))")
        assert tagged.startswith(b"t5 OK [READ-WRITE]")
        assert b"* VANISHED (EARLIER) 1" in untagged
        assert any(re.match(rb"\* 2 FETCH \(UID 3 FLAGS \(\\Seen\) MODSEQ \(\d+\)\)", u)
                   for u in untagged), untagged
        # with QRESYNC enabled, removals are VANISHED, not EXPUNGE
        other.cmd("UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        other.cmd("UID EXPUNGE 2")
        untagged, _ = raw.cmd("NOOP")
        assert untagged == [b"* VANISHED 2"]
        untagged, _ = raw.cmd(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hms} VANISHED)")
        assert untagged[0] == b"* VANISHED (EARLIER) 1:2"
