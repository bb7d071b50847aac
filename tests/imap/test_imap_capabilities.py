"""Every capability the server advertises works (RFC 9051 §7.2.2: a client may rely on
what CAPABILITY lists).

The test collects the capabilities of a server from the greeting, after STARTTLS and
after login (and those of a server that refuses plaintext logins), then runs one small
check per capability, each in a fresh session. A capability without a check fails
the test: advertising something new needs a check here.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Callable
from pathlib import Path

from mailyard.testing.scram import ScramClient
from tests.imap.support import PASSWORD, USER, ImapTestServer, RawClient, client_tls

Check = Callable[[ImapTestServer], None]


def _client(srv: ImapTestServer, *, login: bool = True, select: bool = False) -> RawClient:
    raw = RawClient(srv.port)
    if login:
        raw.login()
    if select:
        _, tagged = raw.cmd("SELECT INBOX")
        assert b"OK" in tagged
    return raw


def _ok(raw: RawClient, command: str | bytes) -> list[bytes]:
    untagged, tagged = raw.cmd(command)
    assert re.match(rb"t\d+ OK", tagged), (command, tagged)
    return untagged


def _caps(line: bytes) -> set[str]:
    m = re.search(rb"CAPABILITY ([^\]\r\n]+)", line)
    assert m, line
    return set(m.group(1).decode().split())


# -- one check per capability ------------------------------------------------------------
def check_rev1(srv: ImapTestServer) -> None:
    raw = _client(srv)
    untagged = _ok(raw, "SELECT INBOX")
    assert b"* 3 EXISTS" in untagged and any(u.endswith(b"RECENT") for u in untagged)
    assert _ok(raw, "FETCH 1 (UID RFC822.SIZE)")[0].startswith(b"* 1 FETCH (UID 1 RFC822.SIZE")


def check_rev2(srv: ImapTestServer) -> None:
    raw = _client(srv)
    assert _ok(raw, "ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2"]
    untagged = _ok(raw, "SELECT INBOX")
    assert not any(b"RECENT" in u for u in untagged)
    assert any(u.startswith(b"* LIST") for u in untagged)  # RFC 9051 §6.3.2
    assert _ok(raw, "SEARCH ALL") == [b'* ESEARCH (TAG "t4") ALL 1:3']


def check_starttls(srv: ImapTestServer) -> None:
    raw = _client(srv, login=False)
    assert raw.cmd("STARTTLS")[1] == b"t1 OK Begin TLS negotiation now"
    raw.sock = client_tls().wrap_socket(raw.sock)
    caps = _caps(_ok(raw, "CAPABILITY")[0])
    assert "STARTTLS" not in caps and "AUTH=PLAIN" in caps
    raw.login()


def check_auth_plain(srv: ImapTestServer) -> None:
    raw = _client(srv, login=False)
    raw.send("a AUTHENTICATE PLAIN\r\n")
    assert raw.line() == b"+ "
    raw.send(base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n")
    assert raw.until(b"a")[1].startswith(b"a OK")


def check_auth_login(srv: ImapTestServer) -> None:
    raw = _client(srv, login=False)
    raw.send("a AUTHENTICATE LOGIN\r\n")
    for answer in (USER, PASSWORD):
        assert raw.line().startswith(b"+ ")
        raw.send(base64.b64encode(answer.encode()) + b"\r\n")
    assert raw.until(b"a")[1].startswith(b"a OK")


def check_auth_scram_sha256(srv: ImapTestServer) -> None:
    """RFC 7677 over RFC 9051 AUTHENTICATE: the server signature comes as a last
    continuation, answered with an empty line, then the tagged OK."""
    raw = _client(srv, login=False)
    client = ScramClient(USER, PASSWORD)
    raw.send("a AUTHENTICATE SCRAM-SHA-256\r\n")
    assert raw.line() == b"+ "
    raw.send(base64.b64encode(client.first()) + b"\r\n")
    server_first = raw.line()
    assert server_first.startswith(b"+ ")
    raw.send(base64.b64encode(client.final(base64.b64decode(server_first[2:]))) + b"\r\n")
    server_final = raw.line()
    assert server_final.startswith(b"+ ")
    client.check(base64.b64decode(server_final[2:]))
    raw.send(b"\r\n")
    assert raw.until(b"a")[1].startswith(b"a OK")
    assert _ok(raw, "SELECT INBOX")


def check_logindisabled(srv: ImapTestServer) -> None:
    (srv.tmp_path / "strict").mkdir()
    with ImapTestServer(srv.tmp_path / "strict", plaintext=False, tls=True, seed=False) as strict:
        raw = RawClient(strict.port)
        assert "LOGINDISABLED" in _caps(raw.greeting)
        assert raw.cmd(f'LOGIN "{USER}" "{PASSWORD}"')[1].startswith(b"t1 NO [PRIVACYREQUIRED]")


def check_sasl_ir(srv: ImapTestServer) -> None:
    raw = _client(srv, login=False)
    ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    untagged, tagged = raw.cmd(f"AUTHENTICATE PLAIN {ir}")
    assert untagged == [] and tagged.startswith(b"t1 OK")


def check_literal_plus(srv: ImapTestServer) -> None:
    raw = _client(srv, login=False)
    raw.send(b"a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n"
             % (len(USER), USER.encode(), len(PASSWORD), PASSWORD.encode()))
    untagged, tagged = raw.until(b"a")
    assert untagged == [] and tagged.startswith(b"a OK")  # no "+" continuation


def check_id(srv: ImapTestServer) -> None:
    assert _ok(_client(srv, login=False), "ID NIL") == [b'* ID ("name" "mailyard")']


def check_enable(srv: ImapTestServer) -> None:
    raw = _client(srv)
    assert _ok(raw, "ENABLE CONDSTORE X-UNKNOWN") == [b"* ENABLED CONDSTORE"]


def check_idle(srv: ImapTestServer) -> None:
    raw = _client(srv, select=True)
    raw.send("i IDLE\r\n")
    assert raw.line().startswith(b"+ ")
    srv.deliver(b"Subject: idle\r\n\r\nx\r\n")
    assert raw.line() == b"* 4 EXISTS"
    raw.send("DONE\r\n")
    assert raw.until(b"i")[1] == b"i OK IDLE terminated"


def check_namespace(srv: ImapTestServer) -> None:
    assert _ok(_client(srv), "NAMESPACE") == [b'* NAMESPACE (("" "/")) NIL NIL']


def check_unselect(srv: ImapTestServer) -> None:
    raw = _client(srv, select=True)
    _ok(raw, "STORE 1 +FLAGS (\\Deleted)")
    _ok(raw, "UNSELECT")
    assert raw.cmd("FETCH 1 FLAGS")[1].startswith(b"t5 BAD")
    assert len(srv.uids()) == 3  # UNSELECT does not expunge


def check_uidplus(srv: ImapTestServer) -> None:
    raw = _client(srv, select=True)
    raw.send(b"a APPEND INBOX {12+}\r\nSubject: u\r\n\r\n")
    assert re.match(rb"a OK \[APPENDUID \d+ 4\]", raw.until(b"a")[1])
    _ok(raw, "NOOP")
    _ok(raw, "STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    untagged = _ok(raw, "UID EXPUNGE 2")
    assert untagged == [b"* 2 EXPUNGE"] and srv.uids() == [1, 3, 4]


def check_move(srv: ImapTestServer) -> None:
    raw = _client(srv, select=True)
    untagged = _ok(raw, "MOVE 1 Archive")
    assert re.match(rb"\* OK \[COPYUID \d+ 1 1\]", untagged[0]) and untagged[1] == b"* 1 EXPUNGE"
    assert srv.uids("Archive") == [1]


def check_children(srv: ImapTestServer) -> None:
    raw = _client(srv)
    _ok(raw, "CREATE Top/Sub")
    assert _ok(raw, 'LIST "" Top') == [b'* LIST (\\HasChildren) "/" Top']


def check_list_extended(srv: ImapTestServer) -> None:
    raw = _client(srv)
    _ok(raw, "UNSUBSCRIBE Junk")
    untagged = _ok(raw, 'LIST (SUBSCRIBED) "" ("INBOX" "J*" "Sent") RETURN (CHILDREN)')
    assert untagged == [b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX',
                        b'* LIST (\\HasNoChildren \\Sent \\Subscribed) "/" Sent']


def check_list_status(srv: ImapTestServer) -> None:
    untagged = _ok(_client(srv), 'LIST "" INBOX RETURN (STATUS (MESSAGES UNSEEN))')
    assert untagged == [b'* LIST (\\HasNoChildren) "/" INBOX',
                        b"* STATUS INBOX (MESSAGES 3 UNSEEN 3)"]


def check_special_use(srv: ImapTestServer) -> None:
    untagged = _ok(_client(srv), 'LIST (SPECIAL-USE) "" "*"')
    uses = {u.split(b")")[0].split()[-1] for u in untagged}
    assert uses == {b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk", b"\\Archive"}


def check_create_special_use(srv: ImapTestServer) -> None:
    raw = _client(srv)
    _ok(raw, "CREATE Old (USE (\\Archive))")
    assert b'\\Archive) "/" Old' in b"\n".join(_ok(raw, 'LIST "" Old RETURN (SPECIAL-USE)'))
    assert b"[USEATTR]" in raw.cmd("CREATE Bad (USE (\\All))")[1]


def check_esearch(srv: ImapTestServer) -> None:
    raw = _client(srv, select=True)
    assert _ok(raw, "SEARCH RETURN (COUNT MIN) SUBJECT hello") == [
        b'* ESEARCH (TAG "t3") MIN 1 COUNT 2']


def check_searchres(srv: ImapTestServer) -> None:
    raw = _client(srv, select=True)
    assert _ok(raw, "SEARCH RETURN (SAVE) FROM carol") == []
    assert _ok(raw, "FETCH $ (UID)") == [b"* 2 FETCH (UID 2)"]


def check_condstore(srv: ImapTestServer) -> None:
    raw = _client(srv)
    untagged = _ok(raw, "SELECT INBOX (CONDSTORE)")
    assert any(b"HIGHESTMODSEQ" in u for u in untagged)
    line = _ok(raw, "STORE 1 +FLAGS (\\Flagged)")[0]
    modseq = int(re.search(rb"MODSEQ \((\d+)\)", line).group(1))  # type: ignore[union-attr]
    assert _ok(raw, f"SEARCH MODSEQ {modseq}") == [b"* SEARCH 1 (MODSEQ %d)" % modseq]


def check_qresync(srv: ImapTestServer) -> None:
    raw = _client(srv)
    _ok(raw, "ENABLE QRESYNC")
    untagged = _ok(raw, "SELECT INBOX")
    validity = int(re.search(rb"UIDVALIDITY (\d+)", b" ".join(untagged)).group(1))  # type: ignore[union-attr]
    modseq = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(untagged)).group(1))  # type: ignore[union-attr]
    _ok(raw, "STORE 3 +FLAGS.SILENT (\\Deleted)")
    assert _ok(raw, "EXPUNGE") == [b"* VANISHED 3"]
    _ok(raw, "UNSELECT")
    untagged = _ok(raw, f"SELECT INBOX (QRESYNC ({validity} {modseq} 1:3))")
    assert b"* VANISHED (EARLIER) 3" in untagged


def check_quota(srv: ImapTestServer) -> None:
    raw = _client(srv)
    untagged = _ok(raw, "GETQUOTAROOT INBOX")
    assert untagged[0] == b'* QUOTAROOT INBOX ""'
    assert re.match(rb'\* QUOTA "" \(STORAGE \d+ 10240\)', untagged[1])
    assert b"NO" in raw.cmd('SETQUOTA "" (STORAGE 1)')[1]


def check_quota_storage(srv: ImapTestServer) -> None:
    assert re.match(rb'\* QUOTA "" \(STORAGE [1-9]\d* 10240\)', _ok(_client(srv), 'GETQUOTA ""')[0])


def check_status_size(srv: ImapTestServer) -> None:
    raw = _client(srv, select=True)
    sizes = [int(x) for x in re.findall(rb"RFC822.SIZE (\d+)",
                                        b" ".join(_ok(raw, "FETCH 1:* RFC822.SIZE")))]
    assert _ok(raw, "STATUS INBOX (SIZE)") == [b"* STATUS INBOX (SIZE %d)" % sum(sizes)]


def check_appendlimit(srv: ImapTestServer) -> None:
    raw = _client(srv)
    limit = srv.config.limits.max_message_size
    assert _ok(raw, "STATUS INBOX (APPENDLIMIT)") == [b"* STATUS INBOX (APPENDLIMIT %d)" % limit]
    raw.send(b"a APPEND INBOX {%d}\r\n" % (limit + 1))
    assert raw.until(b"a")[1].startswith(b"a NO [TOOBIG]")


def check_multiappend(srv: ImapTestServer) -> None:
    raw = _client(srv)
    raw.send(b"a APPEND Drafts {10+}\r\nSubject:\r\n {10+}\r\nSubject:\r\n\r\n")
    assert re.match(rb"a OK \[APPENDUID \d+ 1:2\]", raw.until(b"a")[1])


def check_utf8_accept(srv: ImapTestServer) -> None:
    raw = _client(srv)
    assert _ok(raw, "ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT"]
    _ok(raw, 'CREATE "Grüße"'.encode())
    assert _ok(raw, b'LIST "" "Gr*"') == ['* LIST (\\HasNoChildren) "/" "Grüße"'.encode()]
    # RFC 6855 §4: APPEND's UTF8 data item, stored as sent
    msg = "Subject: Grüße\r\n\r\naus Köln\r\n".encode()
    raw.send('a APPEND "Grüße" UTF8 ('.encode() + b"~{%d+}\r\n%s)\r\n" % (len(msg), msg))
    assert re.match(rb"a OK \[APPENDUID \d+ 1\]", raw.until(b"a")[1])
    _ok(raw, 'SELECT "Grüße"'.encode())
    assert _ok(raw, "FETCH 1 BODY.PEEK[]") == [b"* 1 FETCH (BODY[] {%d}\r\n%s)" % (len(msg), msg)]


def check_binary(srv: ImapTestServer) -> None:
    raw = _client(srv)
    msg = b"Subject: nul\r\nContent-Transfer-Encoding: binary\r\n\r\na\x00b\r\n"
    raw.send(b"a APPEND INBOX ~{%d+}\r\n%s\r\n" % (len(msg), msg))  # RFC 3516 §4.4
    assert re.match(rb"a OK \[APPENDUID \d+ 4\]", raw.until(b"a")[1])
    _ok(raw, "SELECT INBOX")
    assert _ok(raw, "FETCH 4 (BINARY.PEEK[1] BINARY.SIZE[1])") == [
        b"* 4 FETCH (BINARY[1] ~{5}\r\na\x00b\r\n BINARY.SIZE[1] 5)"]
    # M2's part 2 is base64 "hello world"
    assert _ok(raw, "FETCH 2 (BINARY.PEEK[2])") == [b"* 2 FETCH (BINARY[2] ~{11}\r\nhello world)"]


def check_compress(srv: ImapTestServer) -> None:
    raw = _client(srv)
    assert raw.cmd("COMPRESS DEFLATE")[1] == b"t2 OK DEFLATE active"
    z, d = zlib.compressobj(6, zlib.DEFLATED, -15), zlib.decompressobj(-15)
    raw.send(z.compress(b"c NOOP\r\n") + z.flush(zlib.Z_SYNC_FLUSH))
    out = b""
    while b"c OK" not in out:
        out += d.decompress(raw.sock.recv(4096))
    assert out == b"c OK NOOP completed\r\n"


def check_sort(srv: ImapTestServer) -> None:
    # base subjects "hello there" (1, 2) > "another topic" (3); ties keep mailbox order
    assert _ok(_client(srv, select=True), "SORT (REVERSE SUBJECT) UTF-8 ALL") == [b"* SORT 1 2 3"]


def check_sort_display(srv: ImapTestServer) -> None:
    # display names Bob Smith, Carol, Dave
    assert _ok(_client(srv, select=True), "SORT (REVERSE DISPLAYFROM) UTF-8 ALL") == [
        b"* SORT 3 2 1"]


def check_esort(srv: ImapTestServer) -> None:
    # RFC 5267 §3.2: an ESEARCH answer; MIN/MAX in sort order, ALL keeps the order
    raw = _client(srv, select=True)
    assert _ok(raw, "SORT RETURN (MIN MAX COUNT ALL) (REVERSE DISPLAYFROM) UTF-8 ALL") == [
        b'* ESEARCH (TAG "t3") MIN 3 MAX 1 ALL 3,2,1 COUNT 3']


def check_thread_orderedsubject(srv: ImapTestServer) -> None:
    assert _ok(_client(srv, select=True), "THREAD ORDEREDSUBJECT UTF-8 ALL") == [
        b"* THREAD (1 2)(3)"]


def check_thread_references(srv: ImapTestServer) -> None:
    assert _ok(_client(srv, select=True), "THREAD REFERENCES UTF-8 ALL") == [
        b"* THREAD (1 2)(3)"]


def check_objectid(srv: ImapTestServer) -> None:
    raw = _client(srv, select=True)
    assert re.match(rb"\* STATUS INBOX \(MAILBOXID \(F[0-9a-f]{24}\)\)",
                    _ok(raw, "STATUS INBOX (MAILBOXID)")[0])
    line = _ok(raw, "FETCH 2 (EMAILID THREADID)")[0]
    assert re.match(rb"\* 2 FETCH \(EMAILID \(M[0-9a-f]{24}\) THREADID \(T[0-9a-f]{24}\)\)", line)


def check_preview(srv: ImapTestServer) -> None:
    assert _ok(_client(srv, select=True), "FETCH 1 (PREVIEW)") == [
        b'* 1 FETCH (PREVIEW "first body with a zebra")']


def check_savedate(srv: ImapTestServer) -> None:
    raw = _client(srv, select=True)
    assert re.match(rb'\* 1 FETCH \(SAVEDATE "[ \d]\d-\w{3}-\d{4} ', _ok(raw, "FETCH 1 SAVEDATE")[0])
    assert _ok(raw, "SEARCH SAVEDSINCE 1-Jan-2000") == [b"* SEARCH 1 2 3"]


def check_within(srv: ImapTestServer) -> None:
    raw = _client(srv, select=True)
    assert _ok(raw, "SEARCH YOUNGER 3600") == [b"* SEARCH 1 2 3"]
    assert _ok(raw, "SEARCH OLDER 3600") == [b"* SEARCH"]


CHECKS: dict[str, Check] = {
    "IMAP4rev1": check_rev1, "IMAP4rev2": check_rev2, "STARTTLS": check_starttls,
    "AUTH=PLAIN": check_auth_plain, "AUTH=LOGIN": check_auth_login,
    "AUTH=SCRAM-SHA-256": check_auth_scram_sha256,
    "LOGINDISABLED": check_logindisabled, "SASL-IR": check_sasl_ir,
    "LITERAL+": check_literal_plus, "ID": check_id, "ENABLE": check_enable,
    "IDLE": check_idle, "NAMESPACE": check_namespace, "UNSELECT": check_unselect,
    "UIDPLUS": check_uidplus, "MOVE": check_move, "CHILDREN": check_children,
    "LIST-EXTENDED": check_list_extended, "LIST-STATUS": check_list_status,
    "SPECIAL-USE": check_special_use, "CREATE-SPECIAL-USE": check_create_special_use,
    "ESEARCH": check_esearch, "SEARCHRES": check_searchres, "CONDSTORE": check_condstore,
    "QRESYNC": check_qresync, "QUOTA": check_quota, "QUOTA=RES-STORAGE": check_quota_storage,
    "STATUS=SIZE": check_status_size, "APPENDLIMIT": check_appendlimit,
    "MULTIAPPEND": check_multiappend, "UTF8=ACCEPT": check_utf8_accept,
    "BINARY": check_binary,
    "COMPRESS=DEFLATE": check_compress, "SORT": check_sort, "SORT=DISPLAY": check_sort_display,
    "ESORT": check_esort,
    "THREAD=ORDEREDSUBJECT": check_thread_orderedsubject,
    "THREAD=REFERENCES": check_thread_references, "OBJECTID": check_objectid,
    "PREVIEW": check_preview, "SAVEDATE": check_savedate, "WITHIN": check_within,
}


def test_every_advertised_capability_works(tmp_path: Path) -> None:
    advertised: set[str] = set()
    with ImapTestServer(tmp_path, tls=True, quota=10 * 1024 * 1024) as srv:
        raw = RawClient(srv.port)
        advertised |= _caps(raw.greeting)
        raw.login()
        advertised |= _caps(_ok(raw, "CAPABILITY")[0])
        raw.close()
    (tmp_path / "strict").mkdir()
    with ImapTestServer(tmp_path / "strict", plaintext=False, tls=True) as srv:
        raw = RawClient(srv.port)  # plaintext refused: LOGINDISABLED, no AUTH=
        advertised |= _caps(raw.greeting)
        raw.close()
    assert {"LOGINDISABLED", "STARTTLS", "AUTH=PLAIN", "COMPRESS=DEFLATE"} <= advertised
    names = {cap.split("=")[0] if cap.startswith("APPENDLIMIT=") else cap
             for cap in advertised}
    missing = names - set(CHECKS)
    assert not missing, f"advertised without a check: {sorted(missing)}"
    failed = []
    for name in sorted(names):
        sub = tmp_path / re.sub(r"[^A-Za-z0-9]", "_", name)
        sub.mkdir()
        with ImapTestServer(sub, tls=True, quota=10 * 1024 * 1024) as one:
            try:
                CHECKS[name](one)
            except (AssertionError, EOFError, OSError) as e:
                failed.append(f"{name}: {e!r}")
    assert not failed, "\n".join(failed)
