"""SORT / THREAD over the session, and the per-session view at 100k messages."""

from __future__ import annotations

import time
from pathlib import Path

from mailyard.protocol.imap.sequence import parse_sequence_set
from mailyard.server.imap.view import MailboxView
from mailyard.storage.models import Mailbox, MessageRef
from tests.imap.support import ImapTestServer, RawClient


def test_sort_and_thread(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        # M1 "hello there" (Feb 7, bob), M2 "Re: hello there" (Feb 8, carol, replies to
        # M1), M3 "another topic" (Feb 9, dave); a fourth replies to M2
        srv.deliver(b"From: eve@example.org\r\nSubject: Re: Re: hello there\r\n"
                    b"Date: Thu, 10 Feb 1994 08:00:00 +0000\r\nMessage-ID: <m4@example.org>\r\n"
                    b"References: <m1@example.org> <m2@example.org>\r\n\r\nx\r\n")
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")
        assert raw.cmd("SORT (SUBJECT) UTF-8 ALL")[0] == [b"* SORT 3 1 2 4"]
        assert raw.cmd("SORT (REVERSE DATE) UTF-8 ALL")[0] == [b"* SORT 4 3 2 1"]
        assert raw.cmd("SORT (FROM) UTF-8 ALL")[0] == [b"* SORT 1 2 3 4"]
        assert raw.cmd("SORT (SIZE) UTF-8 SUBJECT hello")[0] == [b"* SORT 4 1 2"]
        assert raw.cmd("UID SORT (ARRIVAL) UTF-8 NOT FROM dave")[0] == [b"* SORT 1 2 4"]
        assert raw.cmd("THREAD REFERENCES UTF-8 ALL")[0] == [b"* THREAD (1 2 4)(3)"]
        assert raw.cmd("THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == [
            b"* THREAD (1 (2)(4))(3)"]
        assert raw.cmd("THREAD REFERENCES UTF-8 FROM nobody")[0] == [b"* THREAD"]


def _esort(raw: RawClient, command: str) -> list[bytes]:
    """The untagged answer, each ESEARCH's (TAG "...") checked against the command's and cut."""
    untagged, tagged = raw.cmd(command)
    tag = tagged.split(b" ", 1)[0]
    assert tagged.startswith(tag + b" OK"), tagged
    return [line.replace(b' (TAG "%s")' % tag, b"") for line in untagged]


def test_esort(tmp_path: Path) -> None:
    """SORT RETURN (RFC 5267 §3.2), with SEARCHRES (RFC 5182) and CONDSTORE (RFC 7162)."""
    with ImapTestServer(tmp_path) as srv:
        for i in range(4, 8):  # M4..M7: subjects "a4".."a7", sorted before the seeded three
            srv.deliver(b"From: x@example.org\r\nSubject: a%d\r\n\r\nx\r\n" % i)
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")
        assert raw.cmd("SORT (SUBJECT) UTF-8 ALL")[0] == [b"* SORT 4 5 6 7 3 1 2"]
        # ALL in sort order: a range only for an ascending run
        assert _esort(raw, "SORT RETURN (ALL) (SUBJECT) UTF-8 ALL") == [
            b'* ESEARCH ALL 4:7,3,1:2']
        assert _esort(raw, "SORT RETURN () (REVERSE SUBJECT) UTF-8 ALL") == [
            b'* ESEARCH ALL 1:3,7,6,5,4']  # ties keep mailbox order
        assert _esort(raw, "UID SORT RETURN (MIN MAX COUNT) (SUBJECT) UTF-8 NOT SUBJECT a5") == [
            b'* ESEARCH UID MIN 4 MAX 2 COUNT 6']
        # nothing matches: COUNT 0, no MIN/MAX/ALL (RFC 4731 §3.1)
        assert _esort(raw, "SORT RETURN (MIN ALL COUNT) (SUBJECT) UTF-8 FROM nobody") == [
            b'* ESEARCH COUNT 0']
        # SAVE: "$" is the matching set; with only MIN/MAX, just those (in sort order)
        untagged, tagged = raw.cmd("SORT RETURN (SAVE) (SUBJECT) UTF-8 FROM x@example.org")
        assert untagged == [] and b" OK " in tagged
        assert raw.cmd("SEARCH $")[0] == [b"* SEARCH 4 5 6 7"]
        raw.cmd("SORT RETURN (SAVE MIN MAX) (REVERSE SUBJECT) UTF-8 FROM x@example.org")
        assert raw.cmd("SEARCH $")[0] == [b"* SEARCH 4 7"]
        # a MODSEQ search adds the highest mod-sequence, to SORT and to ESORT
        raw.cmd("STORE 5 +FLAGS (\\Flagged)")
        line = raw.cmd("SORT (SUBJECT) UTF-8 MODSEQ 1")[0][0]
        assert line.startswith(b"* SORT 4 5 6 7 3 1 2 (MODSEQ ") and line.endswith(b")")
        line = _esort(raw, "SORT RETURN (COUNT) (SUBJECT) UTF-8 MODSEQ 1")[0]
        assert line.startswith(b"* ESEARCH COUNT 7 MODSEQ ")
        # a bad RETURN option is BAD
        assert b" BAD " in raw.cmd("SORT RETURN (BOGUS) (SUBJECT) UTF-8 ALL")[1]


def _refs(n: int) -> list[MessageRef]:
    return [MessageRef(mailbox_id=1, uid=2 * i + 1, modseq=1, flags=frozenset(),
                       internaldate=0.0, savedate=0.0, size=1, blob_id="b")
            for i in range(n)]


def test_view_maps_100k_messages_quickly() -> None:
    mb = Mailbox(id=1, account_id=1, name="INBOX", uidvalidity=1, uidnext=200_001,
                 highestmodseq=1)
    view = MailboxView(mb, _refs(100_000), readonly=False)
    t0 = time.perf_counter()
    assert view.exists == 100_000
    assert view.seq_of(1) == 1 and view.seq_of(199_999) == 100_000 and view.seq_of(2) is None
    for uid in range(1, 200_000, 97):  # about 2,000 lookups: bisection, not a scan
        view.seq_of(uid)
    # generous bound for loaded CI machines; a linear scan per lookup would take minutes
    assert time.perf_counter() - t0 < 2.0
    # a UID range is selected by bisection, a seqnum range by slicing
    assert view.select_uids(parse_sequence_set("100:110"), uid=True) == [101, 103, 105,
                                                                         107, 109]
    assert view.select_uids(parse_sequence_set("99999:*"), uid=False) == [199_997, 199_999]
    # removing: EXPUNGE responses in descending order, each valid when sent
    assert view.remove([199_999, 1, 5]) == [99_999 + 1, 3, 1]
    assert view.exists == 99_997 and view.seq_of(3) == 1 and view.seq_of(7) == 2
    view.add([MessageRef(mailbox_id=1, uid=200_001, modseq=2,
                                    flags=frozenset({"$Work"}), internaldate=0.0,
                                    savedate=0.0, size=1, blob_id="b")])
    assert view.seq_of(200_001) == 99_998 and "$Work" in view.keywords
