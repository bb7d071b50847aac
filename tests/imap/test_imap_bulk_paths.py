"""The bulk fast paths (compact SELECT, UID/FLAGS/MODSEQ FETCH from index rows) answer
exactly what the per-message paths answer (RFC 9051 §6.3.2, §7.5.2; RFC 7162 §3.1.4)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.imap.support import ImapTestServer, RawClient


def _msg(i: int) -> bytes:
    return (f"From: a{i}@example.org\r\nSubject: note {i}\r\n"
            f"Message-ID: <m{i}@example.org>\r\n\r\nbody {i}\r\n").encode()


def _without_size(lines: list[bytes]) -> list[bytes]:
    """The per-message path's answer with RFC822.SIZE removed (it forces that path)."""
    return [re.sub(rb" ?RFC822\.SIZE \d+", b"", ln).replace(b"( ", b"(") for ln in lines]


def _fill(srv: ImapTestServer) -> None:
    kinds = [(), ("\\Seen",), ("\\Seen", "$Work"), ("\\Flagged",), ("Later", "\\Seen")]
    for i in range(30):
        srv.deliver(_msg(i), flags=kinds[i % len(kinds)])


def test_flag_fetch_matches_per_message_path(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path, seed=False) as srv:
        _fill(srv)
        raw = RawClient(srv.port)
        raw.login()
        untagged, _ = raw.cmd("SELECT INBOX")  # claims \Recent (IMAP4rev1)
        assert b"* 30 EXISTS" in untagged and b"* 30 RECENT" in untagged
        assert b"* OK [UNSEEN 1] First unseen" in untagged  # UID 1 has no flags
        other = RawClient(srv.port)
        other.login()
        assert other.cmd("SELECT INBOX")[1].startswith(b"t2 OK")
        # a gap in the UIDs: 4 and 5 are expunged by the other session
        other.cmd("UID STORE 4:5 +FLAGS.SILENT (\\Deleted)")
        other.cmd("EXPUNGE")
        assert raw.cmd("NOOP")[0] == [b"* 5 EXPUNGE", b"* 4 EXPUNGE"]
        for spec in ("UID FETCH 1:* (FLAGS)", "FETCH 1:* (FLAGS UID)",
                     "FETCH 2:9 (UID FLAGS MODSEQ)", "UID FETCH 3:20 (MODSEQ FLAGS)",
                     "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 3)"):
            fast, ok_ = raw.cmd(spec)
            assert b" OK " in ok_, ok_
            slow_spec = spec.replace("(FLAGS", "(RFC822.SIZE FLAGS")
            slow_spec = slow_spec.replace("(UID FLAGS", "(UID RFC822.SIZE FLAGS")
            slow_spec = slow_spec.replace("(MODSEQ FLAGS", "(MODSEQ RFC822.SIZE FLAGS")
            slow, _ = raw.cmd(slow_spec)
            assert fast and fast == _without_size(slow), (spec, fast[:3], slow[:3])
        lines, _ = raw.cmd("UID FETCH 1:* (FLAGS)")
        assert lines[0] == b"* 1 FETCH (UID 1 FLAGS (\\Recent))"
        assert lines[3] == b"* 4 FETCH (UID 6 FLAGS (\\Recent))"
        assert lines[2] == b"* 3 FETCH (UID 3 FLAGS ($Work \\Recent \\Seen))"  # keywords sorted with system flags
        raw.close()
        other.close()


def test_select_counts_from_index(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path, seed=False) as srv:
        for i in range(6):
            srv.deliver(_msg(i), flags=("\\Seen", "$A") if i < 3 else ("\\Seen",))
        raw = RawClient(srv.port)
        raw.login()
        untagged, _ = raw.cmd("SELECT INBOX")
        joined = b"\n".join(untagged)
        assert b"* 6 EXISTS" in joined and b"UNSEEN" not in joined  # all seen
        assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $A)" in joined
        srv.deliver(_msg(9))
        raw.cmd("NOOP")
        raw.cmd("UNSELECT")
        untagged, _ = raw.cmd("EXAMINE INBOX")
        assert b"* OK [UNSEEN 7] First unseen" in untagged
        # a flag change by another session after SELECT is announced (modseq baseline)
        other = RawClient(srv.port)
        other.login()
        other.cmd("SELECT INBOX")
        other.cmd("STORE 2 -FLAGS (\\Seen)")
        untagged, _ = raw.cmd("NOOP")
        assert untagged == [b"* 2 FETCH (UID 2 FLAGS ($A))"]
        assert raw.cmd("NOOP")[0] == []  # told once
        raw.close()
        other.close()


def test_search_header_prefilter_is_exact(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path, seed=False) as srv:
        for i in range(12):
            srv.deliver(_msg(i), flags=("\\Seen",) if i % 2 else ())
        # an encoded-word subject: matched on its decoded text
        srv.deliver(b"From: z@example.org\r\nSubject: =?utf-8?q?Quarterly_r=C3=A9sum=C3=A9?="
                    b"\r\n\r\nx\r\n")

        async def no_text() -> int:  # delivered without a full-text row
            store = srv.store
            assert store is not None
            mb = await store.get_mailbox(srv.account_id, "INBOX")
            assert mb is not None
            body = b"From: y@example.org\r\nSubject: quarterly plain\r\n\r\nzanzibar\r\n"
            d = await store.append(mb.id, await store.blobs.put(body))
            return d.uid

        assert srv.run(no_text()) == 14
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")
        assert raw.cmd("SEARCH SUBJECT quarterly")[0] == [b"* SEARCH 13 14"]
        assert raw.cmd("SEARCH SUBJECT QUARTERLY UNSEEN")[0] == [b"* SEARCH 13 14"]
        assert raw.cmd("SEARCH SUBJECT \"note 1\"")[0] == [b"* SEARCH 2 11 12"]
        assert raw.cmd("SEARCH OR FROM a3@ SUBJECT \"note 5\"")[0] == [b"* SEARCH 4 6"]
        assert raw.cmd("SEARCH SEEN NOT SUBJECT \"note\"")[0] == [b"* SEARCH"]
        assert raw.cmd("SEARCH NOT SUBJECT note")[0] == [b"* SEARCH 13 14"]
        assert raw.cmd("UID SEARCH UID 2:5 FROM example")[0] == [b"* SEARCH 2 3 4 5"]
        assert raw.cmd("SEARCH HEADER Message-ID m7@")[0] == [b"* SEARCH 8"]
        assert raw.cmd("SEARCH SUBJECT nothing-like-this")[0] == [b"* SEARCH"]
        assert raw.cmd("SEARCH BODY \"body 3\" SUBJECT \"note 3\"")[0] == [b"* SEARCH 4"]
        raw.close()


def test_bulk_envelope_fetch_cached_uncached_and_compressed(tmp_path: Path) -> None:
    """FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE) over more than one batch (256) and more
    than one output piece (64 KiB): the answer from parsed messages (first FETCH), from
    the per-batch cache lookup (second), for a single message, and through COMPRESS
    are the same."""
    import imaplib

    from tests.imap.support import PASSWORD, USER
    from tests.imap.test_imap_compress import DeflateIMAP4

    n = 300
    with ImapTestServer(tmp_path, seed=False) as srv:
        for i in range(n):
            srv.deliver(_msg(i) + b"x" * (i % 7) * 40, flags=("\\Seen",) if i % 2 else ())
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")
        spec = "FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE)"
        wide = "FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE MODSEQ ENVELOPE BODY)"
        wide1, _ = raw.cmd(wide)  # BODY not cached yet: computed per message
        wide2, _ = raw.cmd(wide)  # now from the cache
        assert len(wide1) == n and wide1 == wide2
        assert re.match(rb'\* 3 FETCH \(UID 3 FLAGS \(\\Recent\) INTERNALDATE "[^"]+" '
                        rb'RFC822.SIZE \d+ MODSEQ \(\d+\) ENVELOPE \(.*\) BODY \(', wide2[2])
        first, ok1 = raw.cmd(spec)
        second, ok2 = raw.cmd(spec)
        assert b"OK" in ok1 and b"OK" in ok2
        assert len(first) == n and first == second
        assert sum(len(x) for x in first) > 65536
        assert first[7].startswith(b"* 8 FETCH (FLAGS (\\Recent \\Seen) ENVELOPE (")
        assert b'"note 7"' in first[7] and b"BODYSTRUCTURE (" in first[7]
        one, _ = raw.cmd("FETCH 123 (FLAGS ENVELOPE BODYSTRUCTURE)")
        assert one == [first[122]]
        raw.close()

        c = DeflateIMAP4("127.0.0.1", srv.port, timeout=10)
        c.login(USER, PASSWORD)
        c.compress()
        assert c.select("INBOX")[0] == "OK"
        typ, data = c.fetch("1:*", "(FLAGS ENVELOPE BODYSTRUCTURE)")
        assert typ == "OK" and len(data) == n
        # this session did not claim \Recent: same answer without it
        want = [ln[2:].replace(b" FETCH ", b" ", 1).replace(b"\\Recent ", b"")
                .replace(b"(\\Recent)", b"()") for ln in first]
        assert [d if isinstance(d, bytes) else d[0] for d in data] == want
        assert c.logout()[0] == "BYE"
        del imaplib


def test_flag_search_matches_per_message_path(tmp_path: Path) -> None:
    """SEARCH keys about flags, sequence numbers and UIDs only are answered from index
    rows; "LARGER 0" (true for every message here) forces the per-message path, and
    both answer alike (RFC 9051 §6.4.4; \\Recent and NEW/OLD of RFC 3501 §6.4.4)."""
    with ImapTestServer(tmp_path, seed=False) as srv:
        _fill(srv)
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")  # claims \Recent for all 30
        other = RawClient(srv.port)
        other.login()
        other.cmd("SELECT INBOX")
        other.cmd("UID STORE 4:5 +FLAGS.SILENT (\\Deleted)")
        other.cmd("EXPUNGE")
        raw.cmd("NOOP")
        srv.deliver(_msg(99))  # not yet announced to raw: must not show up
        lines, _ = raw.cmd("SEARCH UNSEEN")  # the new message (seq 29) is announced after
        assert lines[0].startswith(b"* SEARCH 1 ") and not lines[0].endswith(b" 29")
        assert b"* 29 EXISTS" in lines
        assert raw.cmd("SEARCH UNSEEN")[0][0].endswith(b" 29")
        keys = ["UNSEEN", "SEEN", "FLAGGED", "NOT SEEN", "KEYWORD $Work", "KEYWORD later",
                "OR FLAGGED UNSEEN", "NEW", "RECENT", "OLD", "ALL", "1:10 UNSEEN",
                "UID 3:20 SEEN", "NOT OR SEEN FLAGGED", "UNKEYWORD $Work SEEN"]
        for prefix in ("SEARCH", "UID SEARCH", "SEARCH RETURN (MIN MAX COUNT)"):
            for key in keys:
                fast, ok1 = raw.cmd(f"{prefix} {key}")
                slow, ok2 = raw.cmd(f"{prefix} {key} LARGER 0")
                assert b" OK " in ok1 and b" OK " in ok2, (ok1, ok2)
                assert fast == [ln.replace(b" LARGER 0", b"") for ln in slow] or (
                    [re.sub(rb'TAG "t\d+"', b"", ln) for ln in fast]
                    == [re.sub(rb'TAG "t\d+"', b"", ln) for ln in slow]), (prefix, key)
        # SEARCHRES: a saved result is used by the fast path
        raw.cmd("SEARCH RETURN (SAVE) FLAGGED")
        fast, _ = raw.cmd("UID SEARCH $ UNSEEN")
        slow, _ = raw.cmd("UID SEARCH $ UNSEEN LARGER 0")
        assert fast == slow and fast != [b"* SEARCH"]
        raw.close()
        other.close()


def test_header_search_same_from_cached_header_blocks(tmp_path: Path) -> None:
    """SEARCH on header keys and SORT answer the same when the header blocks come from
    the per-blob cache (second run) as when they are read from the messages (first),
    for a header-only message, LF line ends, a long header (not cached) and 8-bit text."""
    msgs = [_msg(i) for i in range(12)]
    msgs.append(b"Subject: quarterly header only\r\nFrom: h@example.org\r\n")
    msgs.append(b"Subject: quarterly lf\nFrom: lf@example.org\n\nbody quarterly\n")
    msgs.append(b"Subject: quarterly long\r\nX-Pad: " + b"y" * 20000
                + b"\r\nFrom: long@example.org\r\n\r\nbody\r\n")
    msgs.append("Subject: quarterly café\r\nFrom: u@example.org\r\n\r\nx\r\n".encode())
    msgs.append(b"Subject: =?utf-8?q?quarterly_r=C3=A9sum=C3=A9?=\r\n\r\nbody\r\n")
    with ImapTestServer(tmp_path, seed=False) as srv:
        for m in msgs:
            srv.deliver(m)
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")
        specs = ["SEARCH SUBJECT quarterly", "SEARCH FROM example.org",
                 "SEARCH HEADER X-Pad yyy", "SEARCH SUBJECT note", "SEARCH SUBJECT sum",
                 "SEARCH OR SUBJECT lf FROM long", "SEARCH NOT SUBJECT quarterly",
                 "SORT (SUBJECT) UTF-8 ALL", "SORT (FROM) UTF-8 SUBJECT quarterly"]
        first = [raw.cmd(spec) for spec in specs]
        second = [raw.cmd(spec) for spec in specs]
        for spec, (a, ok1), (b, ok2) in zip(specs, first, second, strict=True):
            assert b" OK " in ok1 and b" OK " in ok2, (spec, ok1)
            assert a == b, spec
        assert first[0][0] == [b"* SEARCH 13 14 15 16 17"]
        assert first[2][0] == [b"* SEARCH 15"]
        assert first[4][0] == [b"* SEARCH 17"]

        async def cached() -> dict[int, str | None]:
            store = srv.store
            assert store is not None
            mb = await store.get_mailbox(srv.account_id, "INBOX")
            assert mb is not None
            refs = await store.list_messages(mb.id)
            return {m.uid: await store.cache_get(m.blob_id, "imap.HEADER") for m in refs}

        got = srv.run(cached())
        assert got[14] == "Subject: quarterly lf\nFrom: lf@example.org\n\n"
        assert got[13] == msgs[12].decode()  # no empty line: all of it is header
        assert got[15] is None  # longer than 16 KiB: not cached
        assert got[16] == "Subject: quarterly café\r\nFrom: u@example.org\r\n\r\n".encode(
            ).decode("latin-1")
        raw.close()
