"""The sans-IO POP3 core, driven by C:/S: transcripts.

Every table case runs three ways (STYLE.md habit 3): the whole input at once,
one byte at a time, and with a trailing pipelined QUIT in the same feed.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest

from mailyard.protocol.pop3 import (
    FLUSH,
    FLUSH_AT,
    MAX_COMMAND_LINE,
    NEED_DATA,
    PAUSED,
    SASL_LINE_MAX,
    AuthCredentials,
    ConnectionClosed,
    LocalProtocolError,
    Pass,
    POP3Connection,
    Quit,
    Retr,
    State,
    Stls,
    Top,
)

M1 = b"Subject: one\r\n\r\nhello\r\n"
M2 = b"Subject: two\r\n\r\n.hello\r\n..x\r\nend\r\n"
M3 = b"Subject: three\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n"
MESSAGES = [M1, M2, M3]
MAILDROP = [(len(m), f"7.{i + 1}") for i, m in enumerate(MESSAGES)]
TOTAL = sum(len(m) for m in MESSAGES)


def respond(conn: POP3Connection, ev: object) -> None:
    """The application side used by every test: a fixed maildrop and password."""
    if isinstance(ev, Pass | AuthCredentials):
        password = ev.password if isinstance(ev, Pass) else ev.credentials.password
        if password == "secret":
            conn.login_ok(MAILDROP)
        elif password == "busy":
            conn.err("Maildrop is locked by another session", code="IN-USE")
        else:
            conn.err("Authentication failed", code="AUTH")
    elif isinstance(ev, Retr | Top):
        body = MESSAGES[ev.msg - 1]
        conn.ok_multiline(f"{len(body)} octets")
        for i in range(0, len(body), 3):  # stream in small pieces
            conn.send_body(body[i:i + 3])
            if conn.body_done:
                break
        conn.end_body()
    elif isinstance(ev, Quit):
        conn.ok("Bye")
    else:  # pragma: no cover - a test bug
        raise AssertionError(ev)


def drive(conn: POP3Connection, chunks: list[bytes], events: list[object] | None = None) -> bytes:
    out = bytearray()
    feed = iter(chunks)
    while True:
        ev = conn.next_event()
        out += conn.data_to_send()
        if ev is NEED_DATA:
            try:
                conn.receive_data(next(feed))
            except StopIteration:
                return bytes(out)
        elif ev is FLUSH:
            continue
        elif ev is PAUSED:  # pragma: no cover - a core bug
            raise AssertionError("paused with nothing to answer")
        elif isinstance(ev, ConnectionClosed):
            return bytes(out)
        elif isinstance(ev, Stls):
            if events is not None:
                events.append(ev)
            conn.tls_started()
        else:
            if events is not None:
                events.append(ev)
            respond(conn, ev)


def new_conn(setup: str) -> POP3Connection:
    if setup == "plain":  # no TLS yet, STLS offered, plaintext logins refused
        return POP3Connection(tls_available=True)
    if setup == "loopback":  # no TLS at all, plaintext allowed by policy
        return POP3Connection(allow_plaintext_auth=True)
    conn = POP3Connection(tls_active=True)
    if setup == "trans":
        drive(conn, [b"USER a@example.org\r\nPASS secret\r\n"])
        assert conn.state is State.TRANSACTION
    return conn


@dataclass
class Case:
    name: str
    setup: str  # "plain" | "loopback" | "tls" | "trans"
    client: bytes
    server: bytes
    trailing: bool = True  # a pipelined QUIT after the input is answered "+OK Bye"


def listing(lines: list[str]) -> bytes:
    return b"".join(ln.encode() + b"\r\n" for ln in lines) + b".\r\n"


def stuffed(body: bytes) -> bytes:
    return b"".join(b"." + ln if ln.startswith(b".") else ln
                    for ln in body.splitlines(keepends=True)) + b".\r\n"


b64 = base64.b64encode

CASES = [
    # -- AUTHORIZATION (RFC 1939 §4, RFC 2449, RFC 2595, RFC 5034, RFC 6856) ------------------
    Case("capa-before-tls", "plain", b"CAPA\r\n", b"+OK Capability list follows\r\n" + listing(
        ["TOP", "UIDL", "STLS", "UTF8", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
         "EXPIRE NEVER", "IMPLEMENTATION mailyard"])),
    Case("capa-under-tls", "tls", b"capa\r\n", b"+OK Capability list follows\r\n" + listing(
        ["TOP", "UIDL", "USER", "SASL PLAIN LOGIN SCRAM-SHA-256", "UTF8 USER", "RESP-CODES",
         "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER", "IMPLEMENTATION mailyard"])),
    Case("capa-loopback-plaintext-allowed-no-stls", "loopback", b"CAPA\r\n",
         b"+OK Capability list follows\r\n" + listing(
             ["TOP", "UIDL", "USER", "SASL PLAIN LOGIN SCRAM-SHA-256", "UTF8 USER", "RESP-CODES",
              "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER", "IMPLEMENTATION mailyard"])),
    Case("user-refused-before-tls", "plain", b"USER a@example.org\r\n",
         b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS\r\n"),
    Case("auth-refused-before-tls", "plain", b"AUTH PLAIN " + b64(b"\0a\0secret") + b"\r\n",
         b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS\r\n"),
    Case("user-allowed-on-loopback", "loopback", b"USER a\r\nPASS secret\r\n",
         b"+OK Send PASS\r\n+OK Maildrop has 3 messages (%d octets)\r\n" % TOTAL),
    Case("user-pass-ok", "tls", b"USER a@example.org\r\nPASS secret\r\n",
         b"+OK Send PASS\r\n+OK Maildrop has 3 messages (%d octets)\r\n" % TOTAL),
    Case("pass-with-spaces", "tls", b"USER a\r\nPASS sec ret\r\n",
         b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed\r\n"),
    Case("bad-password-auth-code", "tls", b"USER a\r\nPASS wrong\r\n",
         b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed\r\n"),
    Case("maildrop-in-use", "tls", b"USER a\r\nPASS busy\r\n",
         b"+OK Send PASS\r\n-ERR [IN-USE] Maildrop is locked by another session\r\n"),
    Case("pass-without-user", "tls", b"PASS secret\r\n", b"-ERR USER first\r\n"),
    Case("pass-not-immediately-after-user", "tls", b"USER a\r\nCAPA\r\nPASS secret\r\n",
         b"+OK Send PASS\r\n+OK Capability list follows\r\n" + listing(
             ["TOP", "UIDL", "USER", "SASL PLAIN LOGIN SCRAM-SHA-256", "UTF8 USER", "RESP-CODES",
              "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER", "IMPLEMENTATION mailyard"])
         + b"-ERR USER first\r\n"),
    Case("user-without-name", "tls", b"USER\r\n", b"-ERR Syntax: USER name\r\n"),
    Case("retr-before-login", "tls", b"RETR 1\r\n", b"-ERR RETR is not valid in this state\r\n"),
    Case("noop-before-login", "tls", b"NOOP\r\n", b"-ERR NOOP is not valid in this state\r\n"),
    Case("unknown-command", "tls", b"XYZZY\r\n", b"-ERR Unknown command\r\n"),
    Case("apop-not-offered", "tls", b"APOP a abcdef\r\n", b"-ERR Unknown command\r\n"),
    Case("empty-line", "tls", b"\r\n", b"-ERR Unknown command\r\n"),
    Case("nul-in-command", "tls", b"US\0ER a\r\n", b"-ERR Invalid characters in command\r\n"),
    Case("invalid-utf8", "tls", b"USER \xff\xfe\r\n", b"-ERR Invalid characters in command\r\n"),
    Case("bare-lf-accepted", "tls", b"USER a\nPASS secret\n",
         b"+OK Send PASS\r\n+OK Maildrop has 3 messages (%d octets)\r\n" % TOTAL),
    Case("utf8", "tls", b"UTF8\r\n", b"+OK UTF8 enabled\r\n"),
    Case("utf8-user", "tls", "USER jörg@exämple.org\r\nPASS secret\r\n".encode(),
         b"+OK Send PASS\r\n+OK Maildrop has 3 messages (%d octets)\r\n" % TOTAL),
    Case("stls-when-tls-active", "tls", b"STLS\r\n", b"-ERR Already using TLS\r\n"),
    Case("stls-not-available", "loopback", b"STLS\r\n", b"-ERR STLS not available\r\n"),
    Case("auth-list", "tls", b"AUTH\r\n", b"+OK Supported mechanisms follow\r\n"
         + listing(["PLAIN", "LOGIN", "SCRAM-SHA-256"])),
    Case("auth-plain-initial", "tls", b"AUTH PLAIN " + b64(b"\0a@example.org\0secret") + b"\r\n",
         b"+OK Maildrop has 3 messages (%d octets)\r\n" % TOTAL),
    Case("auth-plain-challenge", "tls",
         b"AUTH PLAIN\r\n" + b64(b"\0a@example.org\0secret") + b"\r\n",
         b"+ \r\n+OK Maildrop has 3 messages (%d octets)\r\n" % TOTAL),
    Case("auth-plain-wrong", "tls", b"AUTH PLAIN " + b64(b"\0a\0nope") + b"\r\n",
         b"-ERR [AUTH] Authentication failed\r\n"),
    Case("auth-login", "tls", b"AUTH LOGIN\r\n" + b64(b"a@example.org") + b"\r\n"
         + b64(b"secret") + b"\r\n",
         b"+ " + b64(b"Username:") + b"\r\n+ " + b64(b"Password:") + b"\r\n"
         + b"+OK Maildrop has 3 messages (%d octets)\r\n" % TOTAL),
    Case("auth-cancel", "tls", b"AUTH PLAIN\r\n*\r\n",
         b"+ \r\n-ERR [AUTH] Authentication cancelled\r\n"),
    Case("auth-bad-base64", "tls", b"AUTH PLAIN\r\n!!!!\r\n",
         b"+ \r\n-ERR [AUTH] Invalid base64 in authentication response\r\n"),
    Case("auth-bad-initial-base64", "tls", b"AUTH PLAIN @@\r\n",
         b"-ERR [AUTH] Invalid base64 in initial response\r\n"),
    Case("auth-malformed-plain", "tls", b"AUTH PLAIN " + b64(b"no-nuls") + b"\r\n",
         b"-ERR [AUTH] Authentication failed: malformed PLAIN response\r\n"),
    Case("auth-unknown-mechanism", "tls", b"AUTH CRAM-MD5\r\n",
         b"-ERR Unsupported authentication mechanism\r\n"),
    Case("quit-in-authorization", "tls", b"QUIT\r\n", b"+OK Bye\r\n", trailing=False),
    # -- TRANSACTION (RFC 1939 §5, §7) ------------------------------------------------------
    Case("stat", "trans", b"STAT\r\n", b"+OK 3 %d\r\n" % TOTAL),
    Case("list", "trans", b"LIST\r\n", b"+OK 3 messages (%d octets)\r\n" % TOTAL
         + listing([f"{i + 1} {len(m)}" for i, m in enumerate(MESSAGES)])),
    Case("list-one", "trans", b"LIST 2\r\n", b"+OK 2 %d\r\n" % len(M2)),
    Case("list-zero", "trans", b"LIST 0\r\n", b"-ERR No such message\r\n"),
    Case("list-out-of-range", "trans", b"LIST 4\r\n", b"-ERR No such message\r\n"),
    Case("list-non-numeric", "trans", b"LIST x\r\n", b"-ERR Invalid message number\r\n"),
    Case("list-two-args", "trans", b"LIST 1 2\r\n", b"-ERR Syntax: LIST [msg]\r\n"),
    Case("retr", "trans", b"RETR 1\r\n", b"+OK %d octets\r\n" % len(M1) + stuffed(M1)),
    Case("retr-dot-stuffed", "trans", b"RETR 2\r\n",
         b"+OK %d octets\r\nSubject: two\r\n\r\n..hello\r\n...x\r\nend\r\n.\r\n" % len(M2)),
    Case("retr-zero", "trans", b"RETR 0\r\n", b"-ERR No such message\r\n"),
    Case("retr-out-of-range", "trans", b"RETR 99\r\n", b"-ERR No such message\r\n"),
    Case("retr-huge-number", "trans", b"RETR 99999999999999999999\r\n",
         b"-ERR Invalid message number\r\n"),
    Case("retr-non-numeric", "trans", b"RETR one\r\n", b"-ERR Invalid message number\r\n"),
    Case("retr-plus-sign", "trans", b"RETR +1\r\n", b"-ERR Invalid message number\r\n"),
    Case("retr-negative", "trans", b"RETR -1\r\n", b"-ERR Invalid message number\r\n"),
    Case("retr-no-arg", "trans", b"RETR\r\n", b"-ERR Syntax: RETR msg\r\n"),
    Case("retr-double-space", "trans", b"RETR  1\r\n", b"-ERR Syntax: RETR msg\r\n"),
    Case("top", "trans", b"TOP 3 1\r\n",
         b"+OK %d octets\r\nSubject: three\r\nX: y\r\n\r\nl1\r\n.\r\n" % len(M3)),
    Case("top-zero-lines", "trans", b"TOP 3 0\r\n",
         b"+OK %d octets\r\nSubject: three\r\nX: y\r\n\r\n.\r\n" % len(M3)),
    Case("top-more-lines-than-the-body", "trans", b"TOP 3 99999999999999999999999\r\n",
         b"+OK %d octets\r\n" % len(M3) + stuffed(M3)),
    Case("top-negative-lines", "trans", b"TOP 1 -1\r\n", b"-ERR Invalid number of lines\r\n"),
    Case("top-non-numeric-lines", "trans", b"TOP 1 x\r\n", b"-ERR Invalid number of lines\r\n"),
    Case("top-missing-lines", "trans", b"TOP 1\r\n", b"-ERR Syntax: TOP msg n\r\n"),
    Case("top-msg-zero", "trans", b"TOP 0 1\r\n", b"-ERR No such message\r\n"),
    Case("dele", "trans", b"DELE 1\r\nSTAT\r\n",
         b"+OK Message 1 deleted\r\n+OK 2 %d\r\n" % (TOTAL - len(M1))),
    Case("dele-twice", "trans", b"DELE 1\r\nDELE 1\r\n",
         b"+OK Message 1 deleted\r\n-ERR Message 1 already deleted\r\n"),
    Case("retr-deleted", "trans", b"DELE 2\r\nRETR 2\r\n",
         b"+OK Message 2 deleted\r\n-ERR Message 2 already deleted\r\n"),
    Case("list-skips-deleted", "trans", b"DELE 2\r\nLIST\r\n",
         b"+OK Message 2 deleted\r\n+OK 2 messages (%d octets)\r\n" % (len(M1) + len(M3))
         + listing([f"1 {len(M1)}", f"3 {len(M3)}"])),
    Case("rset", "trans", b"DELE 1\r\nDELE 3\r\nRSET\r\nSTAT\r\n",
         b"+OK Message 1 deleted\r\n+OK Message 3 deleted\r\n"
         + b"+OK Maildrop has 3 messages (%d octets)\r\n+OK 3 %d\r\n" % (TOTAL, TOTAL)),
    Case("dele-zero", "trans", b"DELE 0\r\n", b"-ERR No such message\r\n"),
    Case("uidl", "trans", b"UIDL\r\n", b"+OK Unique-ID listing follows\r\n"
         + listing(["1 7.1", "2 7.2", "3 7.3"])),
    Case("uidl-one", "trans", b"UIDL 3\r\n", b"+OK 3 7.3\r\n"),
    Case("uidl-deleted", "trans", b"DELE 3\r\nUIDL 3\r\n",
         b"+OK Message 3 deleted\r\n-ERR Message 3 already deleted\r\n"),
    Case("noop", "trans", b"NOOP\r\n", b"+OK\r\n"),
    Case("noop-with-arg", "trans", b"NOOP x\r\n", b"-ERR Syntax: NOOP\r\n"),
    Case("stat-trailing-space", "trans", b"STAT \r\n", b"+OK 3 %d\r\n" % TOTAL),
    Case("lower-case", "trans", b"stat\r\n", b"+OK 3 %d\r\n" % TOTAL),
    Case("stls-after-login", "trans", b"STLS\r\n", b"-ERR STLS is not allowed after login\r\n"),
    Case("user-after-login", "trans", b"USER b\r\n", b"-ERR USER is not valid in this state\r\n"),
    Case("auth-after-login", "trans", b"AUTH PLAIN\r\n",
         b"-ERR AUTH is not valid in this state\r\n"),
    Case("utf8-after-login", "trans", b"UTF8\r\n", b"-ERR UTF8 is not valid in this state\r\n"),
    Case("capa-after-login", "trans", b"CAPA\r\n", b"+OK Capability list follows\r\n" + listing(
        ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER",
         "IMPLEMENTATION mailyard"])),
    Case("pipelined", "trans", b"STAT\r\nLIST 1\r\nUIDL 1\r\nNOOP\r\n",
         b"+OK 3 %d\r\n+OK 1 %d\r\n+OK 1 7.1\r\n+OK\r\n" % (TOTAL, len(M1))),
    Case("quit-update", "trans", b"DELE 1\r\nQUIT\r\n", b"+OK Message 1 deleted\r\n+OK Bye\r\n",
         trailing=False),
    # -- line length (RFC 2449 §4: 255 octets including CRLF) ---------------------------------
    Case("line-255-octets-is-parsed", "trans", b"NOOP " + b"x" * 248 + b"\r\n",
         b"-ERR Syntax: NOOP\r\n"),
    Case("line-256-octets-too-long", "trans", b"NOOP " + b"x" * 249 + b"\r\nNOOP\r\n",
         b"-ERR Line too long\r\n+OK\r\n"),
    Case("line-far-too-long", "trans", b"RETR " + b"1" * 5000 + b"\r\nSTAT\r\n",
         b"-ERR Line too long\r\n+OK 3 %d\r\n" % TOTAL),
]


def _id(c: Case) -> str:
    return c.name


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_whole(case: Case) -> None:
    assert drive(new_conn(case.setup), [case.client]) == case.server


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_byte_by_byte(case: Case) -> None:
    chunks = [case.client[i:i + 1] for i in range(len(case.client))]
    assert drive(new_conn(case.setup), chunks) == case.server


@pytest.mark.parametrize("case", [c for c in CASES if c.trailing], ids=_id)
def test_with_trailing_data(case: Case) -> None:
    conn = new_conn(case.setup)
    assert drive(conn, [case.client + b"QUIT\r\n"]) == case.server + b"+OK Bye\r\n"
    assert conn.state is State.CLOSED


def test_quit_reports_deleted_messages_and_closes() -> None:
    conn = new_conn("trans")
    events: list[object] = []
    drive(conn, [b"DELE 3\r\nDELE 1\r\nQUIT\r\n"], events)
    assert events == [Quit((1, 3))]
    assert conn.state is State.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_quit_after_rset_deletes_nothing() -> None:
    conn = new_conn("trans")
    events: list[object] = []
    drive(conn, [b"DELE 3\r\nRSET\r\nQUIT\r\n"], events)
    assert events == [Quit(())]


def test_failed_update_still_closes() -> None:
    conn = new_conn("trans")
    conn.receive_data(b"DELE 1\r\nQUIT\r\n")
    assert conn.next_event() == Quit((1,))  # DELE was answered by the core on the way
    conn.err("Some deleted messages not removed", code="SYS/TEMP")
    assert conn.data_to_send().endswith(b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n")
    assert isinstance(conn.next_event(), ConnectionClosed)


def test_eof_without_quit_closes_without_update() -> None:
    conn = new_conn("trans")
    events: list[object] = []
    drive(conn, [b"DELE 1\r\n", b""], events)
    assert events == []
    assert conn.state is State.CLOSED


def test_paused_until_answered() -> None:
    conn = new_conn("trans")
    conn.receive_data(b"RETR 1\r\nNOOP\r\n")
    assert conn.next_event() == Retr(1)
    assert conn.next_event() is PAUSED
    conn.ok_multiline()
    assert conn.next_event() is PAUSED  # body still streaming
    conn.send_body(M1)
    conn.end_body()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send().endswith(b".\r\n+OK\r\n")


def test_stls_discards_pipelined_commands() -> None:
    """CVE-2011-0411: commands sent in the clear after STLS never run inside TLS."""
    conn = new_conn("plain")
    conn.receive_data(b"STLS\r\nUSER evil\r\nPASS secret\r\n")
    assert isinstance(conn.next_event(), Stls)
    assert conn.data_to_send() == b"+OK Begin TLS negotiation now\r\n"
    assert conn.next_event() is PAUSED
    conn.receive_data(b"RETR 1\r\n")  # still plaintext: dropped
    conn.tls_started()
    assert conn.tls_active
    assert conn.state is State.AUTHORIZATION
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b""
    # The session starts over: USER is now offered.
    assert drive(conn, [b"USER a\r\nPASS secret\r\n"]).startswith(b"+OK Send PASS\r\n+OK Maildrop")


def test_stls_twice_refused() -> None:
    conn = new_conn("plain")
    events: list[object] = []
    out = drive(conn, [b"STLS\r\n", b"STLS\r\n"], events)
    assert events == [Stls()]
    assert out == b"+OK Begin TLS negotiation now\r\n-ERR Already using TLS\r\n"


def test_overlong_line_memory_is_bounded() -> None:
    conn = new_conn("trans")
    for _ in range(1000):
        conn.receive_data(b"A" * 4096)
        assert conn.next_event() is NEED_DATA
        assert len(conn._inbuf) <= MAX_COMMAND_LINE
    conn.receive_data(b"\r\nNOOP\r\n")
    conn.next_event()
    assert conn.data_to_send() == b"-ERR Line too long\r\n+OK\r\n"


def test_overlong_sasl_response_aborts_exchange() -> None:
    conn = new_conn("tls")
    out = drive(conn, [b"AUTH PLAIN\r\n", b"A" * (SASL_LINE_MAX + 10), b"\r\nCAPA\r\n"])
    assert out.startswith(b"+ \r\n-ERR [AUTH] Authentication response too long\r\n+OK Capa")
    assert conn.state is State.AUTHORIZATION


def test_sasl_response_longer_than_command_limit_is_accepted() -> None:
    password = "p" * 400
    conn = new_conn("tls")
    events: list[object] = []
    drive(conn, [b"AUTH PLAIN\r\n" + b64(b"\0a\0" + password.encode()) + b"\r\n"], events)
    assert len(events) == 1 and isinstance(events[0], AuthCredentials)
    assert events[0].credentials.password == password


def test_pipelined_list_output_is_flushed_in_bounded_pieces() -> None:
    conn = POP3Connection(tls_active=True)
    conn.receive_data(b"USER a\r\nPASS x\r\n")
    ev = conn.next_event()
    while not isinstance(ev, Pass):
        ev = conn.next_event()
    conn.login_ok([(100, f"u{i}") for i in range(20000)])
    conn.data_to_send()
    conn.receive_data(b"LIST\r\n" * 50)
    total = 0
    flushes = 0
    while True:
        ev = conn.next_event()
        chunk = conn.data_to_send()
        assert len(chunk) < FLUSH_AT + 100
        total += len(chunk)
        if ev is NEED_DATA:
            break
        assert ev is FLUSH
        flushes += 1
    assert flushes > 10
    assert total > 50 * 20000 * 8


def test_app_misuse_raises_local_error() -> None:
    conn = new_conn("tls")
    with pytest.raises(LocalProtocolError):
        conn.ok_multiline("x")
    with pytest.raises(LocalProtocolError):
        conn.send_body(b"x")
    with pytest.raises(LocalProtocolError):
        conn.login_ok([])


def test_login_ok_rejects_bad_unique_ids() -> None:
    conn = new_conn("tls")
    conn.receive_data(b"USER a\r\nPASS secret\r\n")
    ev = conn.next_event()
    while not isinstance(ev, Pass):
        ev = conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.login_ok([(1, "has space")])


def test_err_rejects_unknown_code() -> None:
    conn = new_conn("tls")
    conn.receive_data(b"USER a\r\nPASS x\r\n")
    while not isinstance(conn.next_event(), Pass):
        pass
    with pytest.raises(LocalProtocolError):
        conn.err("x", code="BOGUS")


def test_reply_text_cannot_inject_lines() -> None:
    conn = new_conn("tls")
    conn.receive_data(b"USER a\r\nPASS x\r\n")
    while not isinstance(conn.next_event(), Pass):
        pass
    conn.data_to_send()
    conn.err("bad\r\n+OK forged", code="AUTH")
    assert conn.data_to_send() == b"-ERR [AUTH] bad  +OK forged\r\n"


def test_greeting() -> None:
    conn = POP3Connection()
    conn.greet("mailyard POP3 ready")
    assert conn.data_to_send() == b"+OK mailyard POP3 ready\r\n"


def test_max_errors_closes_after_that_many_error_replies() -> None:
    # Pipelined junk is answered with exactly max_errors -ERR lines, then the last word;
    # what follows is never read. A DELE in TRANSACTION is not carried out (no UPDATE).
    conn = POP3Connection(tls_active=True, max_errors=3)
    drive(conn, [b"USER a@example.org\r\nPASS secret\r\n"])
    events: list[object] = []
    out = drive(conn, [b"DELE 1\r\nBOGUS\r\nRETR 99\r\nNOOP\r\nXX\r\nYY\r\nQUIT\r\n"], events)
    assert out == (b"+OK Message 1 deleted\r\n-ERR Unknown command\r\n-ERR No such message\r\n"
                   b"+OK\r\n-ERR Unknown command\r\n-ERR Too many errors, closing\r\n")
    assert events == []
    assert conn.state is State.CLOSED


def test_max_errors_counts_the_applications_refusals() -> None:
    conn = POP3Connection(tls_active=True, max_errors=2)
    out = drive(conn, [b"USER a\r\nPASS bad\r\n", b"USER a\r\nPASS bad\r\n", b"USER a\r\n"])
    assert out.count(b"-ERR [AUTH] Authentication failed\r\n") == 2
    assert out.endswith(b"-ERR Too many errors, closing\r\n")
    assert conn.state is State.CLOSED


def test_no_error_limit_by_default() -> None:
    conn = POP3Connection(tls_active=True)
    out = drive(conn, [b"BOGUS\r\n" * 50])
    assert out.count(b"-ERR Unknown command\r\n") == 50
    assert conn.state is State.AUTHORIZATION


def test_input_pending_and_output_size() -> None:
    conn = new_conn("trans")
    conn.receive_data(b"RETR 1\r\nRETR")
    assert conn.next_event() == Retr(1)
    assert not conn.input_pending  # "RETR" alone is not a line yet
    conn.receive_data(b" 2\r\n")
    assert conn.input_pending
    conn.ok_multiline()
    conn.send_body(M1)
    conn.end_body()
    assert conn.output_size == len(b"+OK\r\n" + M1 + b".\r\n")
    assert conn.next_event() == Retr(2)
    assert not conn.input_pending
    assert conn.output_size == len(conn.data_to_send()) and conn.output_size == 0
