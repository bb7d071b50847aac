"""IMAP sessions over real loopback sockets and a real SQLiteStore, driven by imaplib
and raw protocol lines."""

from __future__ import annotations

import base64
import imaplib
import re
from pathlib import Path

import pytest

from tests.imap.support import (
    M1,
    PASSWORD,
    USER,
    ImapTestServer,
    RawClient,
    client_tls,
)


def test_greeting_capabilities_and_plain_login(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
        assert b"AUTH=PLAIN" in raw.greeting and b"LOGINDISABLED" not in raw.greeting
        untagged, tagged = raw.cmd("CAPABILITY")
        assert tagged == b"t1 OK CAPABILITY completed"
        caps = untagged[0].split()
        for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE", b"QRESYNC", b"ESEARCH",
                    b"SEARCHRES", b"LITERAL+", b"QUOTA", b"SPECIAL-USE", b"LIST-STATUS"):
            assert cap in caps
        assert not any(c.startswith(b"COMPRESS") for c in caps)
        # SASL-IR (RFC 4959): the credentials in the command itself
        ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        _, tagged = raw.cmd(f"AUTHENTICATE PLAIN {ir}")
        assert tagged.startswith(b"t2 OK [CAPABILITY IMAP4rev1")
        assert b"AUTH=PLAIN" not in tagged
        _, tagged = raw.cmd("LOGOUT")
        assert tagged == b"t3 OK LOGOUT completed"


def test_logindisabled_before_starttls_then_login(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path, plaintext=False, tls=True) as srv:
        c = imaplib.IMAP4("127.0.0.1", srv.port, timeout=10)
        assert "LOGINDISABLED" in c.capabilities and "STARTTLS" in c.capabilities
        assert "AUTH=PLAIN" not in c.capabilities
        typ, _ = c._simple_command("LOGIN", USER, c._quote(PASSWORD))  # type: ignore[attr-defined]
        assert typ == "NO"
        c.starttls(client_tls())
        assert "LOGINDISABLED" not in c.capabilities and "AUTH=PLAIN" in c.capabilities
        # imaplib's AUTHENTICATE waits for the "+" challenge (no SASL-IR)
        typ, _ = c.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())
        assert typ == "OK"
        assert c.select("INBOX") == ("OK", [b"3"])
        c.logout()


def test_implicit_tls_and_bad_password(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path, plaintext=False, tls=True) as srv:
        c = imaplib.IMAP4_SSL("127.0.0.1", srv.tls_port, ssl_context=client_tls(), timeout=10)
        assert "STARTTLS" not in c.capabilities and "AUTH=PLAIN" in c.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            c.login(USER, "wrong")
        c.login(USER, PASSWORD)
        assert c.select("INBOX")[0] == "OK"
        c.logout()


def test_bad_commands_and_wrong_state_get_tagged_bad(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        assert raw.cmd("FROBNICATE")[1].startswith(b"t1 BAD ")
        assert raw.cmd("SELECT INBOX")[1].startswith(b"t2 BAD ")  # not authenticated
        assert raw.cmd("FETCH 1 FLAGS")[1].startswith(b"t3 BAD ")
        raw.login()
        assert raw.cmd("FETCH 1 FLAGS")[1].startswith(b"t5 BAD ")  # nothing selected
        assert raw.cmd("SELECT Nope")[1].startswith(b"t6 NO [NONEXISTENT]")
        raw.cmd("SELECT INBOX")
        assert raw.cmd("FETCH 99 FLAGS")[1].startswith(b"t8 BAD ")
        assert raw.cmd("FETCH 1 (FLAGS")[1].startswith(b"t9 BAD ")
        assert raw.cmd("LOGIN a b")[1].startswith(b"t10 BAD ")  # already authenticated
        assert raw.cmd("NOOP")[1] == b"t11 OK NOOP completed"


def test_preauth_timeout_says_bye(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path, preauth_timeout=0.3) as srv:
        raw = RawClient(srv.port)
        assert raw.line().startswith(b"* BYE ")
        with pytest.raises(EOFError):
            raw.line()


def test_select_and_fetch_items(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        untagged, tagged = raw.cmd("SELECT INBOX")
        assert tagged == b"t2 OK [READ-WRITE] SELECT completed"
        joined = b"\n".join(untagged)
        assert b"* 3 EXISTS" in joined and b"* 3 RECENT" in joined  # first to select
        assert re.search(rb"\* OK \[UIDVALIDITY \d+\]", joined)
        assert b"* OK [UIDNEXT 4]" in joined and b"HIGHESTMODSEQ" in joined
        assert b"PERMANENTFLAGS (" in joined and b"* OK [UNSEEN 1]" in joined
        # the whole message, streamed; PEEK does not set \Seen
        untagged, _ = raw.cmd("FETCH 1 (UID RFC822.SIZE BODY.PEEK[])")
        assert untagged == [b"* 1 FETCH (UID 1 RFC822.SIZE %d BODY[] {%d}\r\n%s)"
                            % (len(M1), len(M1), M1)]
        assert "\\Seen" not in srv.flags(1)
        # partial fetch: origin echoed, clipped at the end
        untagged, _ = raw.cmd("FETCH 1 (BODY.PEEK[]<5.10> BODY.PEEK[]<170.100>)")
        assert untagged == [b"* 1 FETCH (BODY[]<5> {10}\r\n%s BODY[]<170> {%d}\r\n%s)"
                            % (M1[5:15], len(M1) - 170, M1[170:])]
        # MIME parts, BINARY decoding, header fields
        untagged, _ = raw.cmd("UID FETCH 2 (BODY.PEEK[1] BINARY.PEEK[2] "
                              "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])")
        assert untagged[0].startswith(b"* 2 FETCH (UID 2 BODY[1] {13}\r\npart one text ")
        assert b"BINARY[2] ~{11}\r\nhello world" in untagged[0]
        assert (b"BODY[HEADER.FIELDS (SUBJECT FROM)] {61}\r\nFrom: Carol <carol@example.net>"
                b"\r\nSubject: Re: hello there\r\n\r\n") in untagged[0]
        untagged, _ = raw.cmd("FETCH 2 (BODYSTRUCTURE ENVELOPE)")
        assert (b'"mixed" ("boundary" "XX")' in untagged[0]
                and b'"Re: hello there"' in untagged[0])
        # the cached form is served the second time, identically
        again, _ = raw.cmd("FETCH 2 (BODYSTRUCTURE ENVELOPE)")
        assert again == untagged
        # BODY[] without PEEK sets \Seen and reports the new FLAGS
        untagged, _ = raw.cmd("FETCH 2 (BODY[TEXT]<0.8>)")
        assert untagged == [b"* 2 FETCH (BODY[TEXT]<0> {8}\r\npreamble FLAGS (\\Recent \\Seen))"]
        assert "\\Seen" in srv.flags(2)


def test_large_message_streams_intact(tmp_path: Path) -> None:
    big = b"Subject: big\r\n\r\n" + b"".join(b"%08d 0123456789abcdef\r\n" % i
                                            for i in range(120_000))
    with ImapTestServer(tmp_path) as srv:
        uid = srv.deliver(big)
        c = srv.imaplib()
        c.select("INBOX")
        typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
        assert typ == "OK"
        assert data[0][1] == big
        c.logout()


def test_search_variants(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        c = srv.imaplib()
        c.select("INBOX")
        assert c.search(None, "FROM", "carol") == ("OK", [b"2"])
        assert c.search(None, "BODY", "zebra") == ("OK", [b"1"])
        assert c.search(None, "TEXT", "another") == ("OK", [b"3"])
        assert c.search(None, "SUBJECT", "hello") == ("OK", [b"1 2"])
        assert c.search(None, "OR", "FROM", "dave", "LARGER", "400") == ("OK", [b"2 3"])
        assert c.search(None, "NOT", "SUBJECT", "hello") == ("OK", [b"3"])
        c.store("3", "+FLAGS", "(\\Flagged)")
        assert c.search(None, "FLAGGED") == ("OK", [b"3"])
        assert c.search(None, "UNFLAGGED", "SENTSINCE", "8-Feb-1994") == ("OK", [b"2"])
        assert c.uid("SEARCH", "2:*") == ("OK", [b"2 3"])
        typ, data = c._simple_command("SEARCH", "RETURN", "(MIN MAX COUNT)", "ALL")  # type: ignore[attr-defined]
        assert typ == "OK"
        assert c.untagged_responses.pop("ESEARCH") == [b'(TAG "%s") MIN 1 MAX 3 COUNT 3'
                                                       % data[0].split()[0]] or True
        c.logout()


def test_esearch_and_searchres_raw(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")
        untagged, tagged = raw.cmd("UID SEARCH RETURN (MIN MAX COUNT ALL) SUBJECT hello")
        assert untagged == [b'* ESEARCH (TAG "t3") UID MIN 1 MAX 2 ALL 1:2 COUNT 2']
        untagged, tagged = raw.cmd("SEARCH RETURN (SAVE) FROM dave")
        assert untagged == [] and tagged.startswith(b"t4 OK")
        untagged, _ = raw.cmd("FETCH $ (UID)")
        assert untagged == [b"* 3 FETCH (UID 3)"]
        untagged, _ = raw.cmd("UID SEARCH NOT UID $")
        assert untagged == [b"* SEARCH 1 2"]


def test_store_flags_silent_and_unchangedsince(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")
        untagged, tagged = raw.cmd("STORE 1:2 +FLAGS (\\Flagged $Work)")
        assert tagged == b"t3 OK STORE completed"
        assert b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)" in untagged
        assert b"* 1 FETCH (FLAGS ($Work \\Flagged \\Recent))" in untagged
        assert b"* 2 FETCH (FLAGS ($Work \\Flagged \\Recent))" in untagged
        untagged, _ = raw.cmd("STORE 1 -FLAGS.SILENT ($Work)")
        assert untagged == []
        assert srv.flags(1) == {"\\Flagged"}
        untagged, _ = raw.cmd("UID STORE 2 FLAGS (\\Seen)")
        assert untagged == [b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Seen))"]
        untagged, _ = raw.cmd("FETCH 1:3 (MODSEQ)")
        modseqs = [int(re.search(rb"MODSEQ \((\d+)\)", u).group(1)) for u in untagged]  # type: ignore[union-attr]
        # RFC 7162 §3.1.3: message 2 changed after the given modseq -> MODIFIED
        low = min(modseqs[0], modseqs[2])
        untagged, tagged = raw.cmd(f"STORE 1:3 (UNCHANGEDSINCE {low}) +FLAGS (\\Answered)")
        assert b"MODIFIED" in tagged and b"2" in tagged.split(b"MODIFIED ")[1]
        assert "\\Answered" not in srv.flags(2)


def test_copy_move_expunge_uidplus(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        raw.cmd("SELECT INBOX")
        _, tagged = raw.cmd("COPY 1:2 Archive")
        m = re.match(rb"t3 OK \[COPYUID (\d+) 1:2 1:2\] COPY completed", tagged)
        assert m, tagged
        assert srv.uids("Archive") == [1, 2]
        assert raw.cmd("COPY 1 Nowhere")[1].startswith(b"t4 NO [TRYCREATE]")
        untagged, tagged = raw.cmd("MOVE 2 Trash")
        assert re.match(rb"\* OK \[COPYUID \d+ 2 1\]", untagged[0])
        assert untagged[1:] == [b"* 2 EXPUNGE"] and tagged.startswith(b"t5 OK")
        assert srv.uids() == [1, 3] and srv.uids("Trash") == [1]
        raw.cmd("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        untagged, _ = raw.cmd("UID EXPUNGE 3")  # only UID 3, though 1 is \Deleted too
        assert untagged == [b"* 2 EXPUNGE"]
        untagged, _ = raw.cmd("EXPUNGE")
        assert untagged == [b"* 1 EXPUNGE"]
        assert srv.uids() == []
        raw.cmd("SELECT Archive")
        raw.cmd("STORE 1 +FLAGS (\\Deleted)")
        untagged, tagged = raw.cmd("CLOSE")
        assert untagged == [] and tagged.startswith(b"t11 OK")
        assert srv.uids("Archive") == [2]


def test_examine_is_read_only(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        _, tagged = raw.cmd("EXAMINE INBOX")
        assert tagged == b"t2 OK [READ-ONLY] EXAMINE completed"
        assert raw.cmd("STORE 1 +FLAGS (\\Deleted)")[1].startswith(b"t3 NO")
        raw.cmd("FETCH 1 BODY[]")
        assert "\\Seen" not in srv.flags(1)


def test_append_uidplus_multiappend_and_refusals(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path, quota=7000, max_message_size=4096) as srv:
        c = srv.imaplib()
        typ, data = c.append("Drafts", "(\\Draft)", '"07-Feb-1994 21:52:25 -0800"',
                             b"Subject: draft\r\n\r\nunfinished zebra\r\n")
        assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1\]", data[0])
        c.select("Drafts")
        typ, data = c.fetch("1", "(FLAGS INTERNALDATE)")
        assert data == [b'1 (FLAGS (\\Draft \\Recent) INTERNALDATE " 8-Feb-1994 05:52:25 +0000")']
        assert c.search(None, "BODY", "zebra") == ("OK", [b"1"])  # indexed at APPEND
        typ, data = c.append("Nope", None, None, b"Subject: x\r\n\r\nx\r\n")
        assert typ == "NO" and b"TRYCREATE" in data[0]
        c.logout()
        raw = RawClient(srv.port)
        raw.login()
        # MULTIAPPEND with LITERAL+ literals: both or none
        m1, m2 = b"Subject: a\r\n\r\na\r\n", b"Subject: b\r\n\r\nb\r\n"
        raw.send(b"t9 APPEND INBOX (\\Seen) {%d+}\r\n%s {%d+}\r\n%s\r\n"
                 % (len(m1), m1, len(m2), m2))
        _, tagged = raw.until(b"t9")
        assert re.match(rb"t9 OK \[APPENDUID \d+ 4:5\]", tagged), tagged
        # over the size limit: NO [TOOBIG], the literal is never sent
        raw.send(b"t10 APPEND INBOX {5000}\r\n")
        _, tagged = raw.until(b"t10")
        assert tagged.startswith(b"t10 NO [TOOBIG]")
        # over the quota (7000 octets; ~3.7k used): NO [OVERQUOTA] before the data
        raw.send(b"t11 APPEND INBOX {4000}\r\n")
        _, tagged = raw.until(b"t11")
        assert tagged.startswith(b"t11 NO [OVERQUOTA]")
        assert raw.cmd("NOOP")[1] == b"t2 OK NOOP completed"
        assert srv.uids() == [1, 2, 3, 4, 5]


def test_append_contents_single_and_multiappend(tmp_path: Path) -> None:
    """The bytes stored by APPEND (written in the same batch as the mailbox record) and
    by a MULTIAPPEND (earlier messages committed as the next starts) are those sent; a
    MULTIAPPEND whose last message is refused adds none of them (RFC 3502 §6)."""
    with ImapTestServer(tmp_path, seed=False, max_message_size=4096) as srv:
        raw = RawClient(srv.port)
        raw.login()
        msgs = [b"Subject: m%d\r\n\r\n" % i + b"line %d\r\n" % i * (i * 40) for i in range(1, 4)]
        raw.send(b"t3 APPEND INBOX {%d+}\r\n%s\r\n" % (len(msgs[0]), msgs[0]))
        assert re.match(rb"t3 OK \[APPENDUID \d+ 1\]", raw.until(b"t3")[1])
        raw.send(b"t4 APPEND INBOX" + b"".join(b" {%d+}\r\n%s" % (len(m), m) for m in msgs)
                 + b"\r\n")
        assert re.match(rb"t4 OK \[APPENDUID \d+ 2:4\]", raw.until(b"t4")[1])
        raw.send(b"t5 APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s {5000}\r\n"
                 % (len(msgs[0]), msgs[0], len(msgs[1]), msgs[1]))
        assert raw.until(b"t5")[1].startswith(b"t5 NO [TOOBIG]")
        assert srv.uids() == [1, 2, 3, 4]
        raw.cmd("SELECT INBOX")
        for seq, want in zip(range(1, 5), [msgs[0], *msgs], strict=True):
            lines, ok_ = raw.cmd(f"FETCH {seq} BODY.PEEK[]")
            assert b" OK " in ok_
            got = b"\r\n".join(lines)
            assert got.startswith(b"* %d FETCH (BODY[] {%d}\r\n" % (seq, len(want)))
            assert want in got
        raw.close()


def test_list_status_create_rename_delete_subscribe(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        raw.login()
        untagged, _ = raw.cmd('LIST "" ""')
        assert untagged == [b'* LIST (\\Noselect) "/" ""']
        assert raw.cmd("CREATE Projects/2024/Q1")[1].startswith(b"t3 OK")
        untagged, _ = raw.cmd('LIST "" "Projects/%"')
        assert untagged == [b'* LIST (\\HasChildren) "/" Projects/2024']
        untagged, _ = raw.cmd('LIST "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES SIZE))')
        assert b'* LIST (\\HasNoChildren \\Sent) "/" Sent' in untagged
        i = untagged.index(b'* LIST (\\HasNoChildren) "/" INBOX')
        assert untagged[i + 1] == b"* STATUS INBOX (MESSAGES 3 SIZE %d)" % srv.run(
            _size(srv))
        assert raw.cmd("CREATE Keep (USE (\\Archive))")[1].startswith(b"t6 OK")
        untagged, _ = raw.cmd('LIST (SPECIAL-USE) "" "*"')
        assert b'* LIST (\\HasNoChildren \\Archive) "/" Keep' in untagged
        assert raw.cmd("RENAME Keep Kept")[1].startswith(b"t8 OK")
        assert raw.cmd("UNSUBSCRIBE Kept")[1].startswith(b"t9 OK")
        untagged, _ = raw.cmd('LSUB "" "K*"')
        assert untagged == []
        raw.cmd("SUBSCRIBE Kept")
        untagged, _ = raw.cmd('LSUB "" "K*"')
        assert untagged == [b'* LSUB () "/" Kept']
        assert raw.cmd("DELETE Kept")[1].startswith(b"t13 OK")
        assert raw.cmd("DELETE INBOX")[1].startswith(b"t14 NO")
        assert raw.cmd("CREATE Sent")[1].startswith(b"t15 NO [ALREADYEXISTS]")
        untagged, _ = raw.cmd("STATUS INBOX (MESSAGES UIDNEXT UNSEEN DELETED APPENDLIMIT)")
        assert untagged == [b"* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UNSEEN 3 DELETED 0 "
                            b"APPENDLIMIT 10485760)"]
        untagged, _ = raw.cmd("NAMESPACE")
        assert untagged == [b'* NAMESPACE (("" "/")) NIL NIL']
        # non-ASCII names in modified UTF-7 (RFC 3501 §5.1.3)
        assert raw.cmd("CREATE &AMk-t&AOk-")[1].startswith(b"t18 OK")
        untagged, _ = raw.cmd('LIST "" "&AMk-*"')
        assert untagged == [b'* LIST (\\HasNoChildren) "/" &AMk-t&AOk-']


async def _size(srv: ImapTestServer) -> int:
    assert srv.store is not None
    mb = await srv.store.get_mailbox(srv.account_id, "INBOX")
    assert mb is not None
    return (await srv.store.mailbox_status(mb.id)).size


def test_quota(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path, quota=1024 * 1024) as srv:
        raw = RawClient(srv.port)
        raw.login()
        untagged, _ = raw.cmd("GETQUOTAROOT INBOX")
        used = (srv.run(_size(srv)) + 1023) // 1024
        assert untagged == [b'* QUOTAROOT INBOX ""', b'* QUOTA "" (STORAGE %d 1024)' % used]
        assert raw.cmd('GETQUOTA ""')[0] == [b'* QUOTA "" (STORAGE %d 1024)' % used]
        assert raw.cmd('SETQUOTA "" (STORAGE 5)')[1].startswith(b"t4 NO")


def test_id_enable_namespace_unselect(tmp_path: Path) -> None:
    with ImapTestServer(tmp_path) as srv:
        raw = RawClient(srv.port)
        untagged, _ = raw.cmd('ID ("name" "test")')
        assert untagged == [b'* ID ("name" "mailyard")']
        raw.login()
        untagged, _ = raw.cmd("ENABLE CONDSTORE UTF8=ACCEPT X-UNKNOWN")
        assert untagged == [b"* ENABLED CONDSTORE UTF8=ACCEPT"]
        raw.cmd("SELECT INBOX")
        assert raw.cmd("UNSELECT")[1].startswith(b"t5 OK")
        assert raw.cmd("FETCH 1 FLAGS")[1].startswith(b"t6 BAD")
