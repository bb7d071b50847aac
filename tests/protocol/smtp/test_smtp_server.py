"""Server core: one table of (state, input, replies, events) fed three ways,
then the behaviours a table cannot show."""

from __future__ import annotations

import dataclasses

import pytest

from mailyard.protocol.smtp import events as ev
from mailyard.protocol.smtp import replies as R
from mailyard.protocol.smtp import server as srv
from mailyard.protocol.smtp.replies import Reply
from mailyard.protocol.smtp.server import (
    COMMANDS,
    DECISIONS,
    DEFAULT_ACCEPT,
    SEQUENCE_ERRORS,
    ServerSettings,
    SMTPServerConnection,
    State,
)
from mailyard.testing.transcript import core_session as start

SETTINGS = ServerSettings(hostname="mail.example.test")
SETUPS = {
    "greeted": b"",
    "ready": b"EHLO c.example\r\n",
    "mail": b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n",
    "rcpt": b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n",
    "data": b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n",
    "chunking": b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n"
    b"BDAT 3\r\nabc",
}

# (setup, client bytes, server reply lines, event names)
TABLE = [
    ("greeted", b"NOOP\r\n", ["250 OK"], []),
    ("greeted", b"MAIL FROM:<a@example.org>\r\n", ["503 Send EHLO or HELO first"], []),
    ("greeted", b"DATA\r\n", ["503 Send EHLO or HELO first"], []),
    ("greeted", b"EHLO\r\n", ["501 Invalid domain name or address literal"], []),
    ("greeted", b"EHLO a b\r\n", ["501 Invalid domain name or address literal"], []),
    ("greeted", b"EHLO [not literal\r\n", ["501 Invalid domain name or address literal"], []),
    ("ready", b"NOOP\r\n", ["250 2.0.0 OK"], []),
    ("ready", b"noop anything\r\n", ["250 2.0.0 OK"], []),
    ("ready", b"NOOP\n", ["250 2.0.0 OK"], []),
    ("ready", b"NO\rOP\r\n", ["501 5.5.2 Bare CR in command line"], []),
    ("ready", b"NOOP\x00\r\n", ["501 5.5.2 Syntax error in parameters or arguments"], []),
    ("ready", b"\xff\xfe\r\n", ["500 5.5.2 Command is not valid UTF-8"], []),
    ("ready", b"BOGUS\r\n", ["500 5.5.1 Command not recognized"], []),
    ("ready", b"\r\n", ["500 5.5.1 Command not recognized"], []),
    ("ready", b"HELP\r\n", [R.HELP.to_bytes().decode()[:-2]], []),
    ("ready", b"VRFY\r\n", ["501 5.5.2 Syntax error in parameters or arguments"], []),
    ("ready", b"VRFY bob\r\n", [R.VRFY_CANNOT.to_bytes().decode()[:-2]], []),
    ("ready", b"EXPN list\r\n", ["502 5.5.1 EXPN not available"], []),
    ("ready", b"RSET x\r\n", ["501 5.5.2 Syntax error in parameters or arguments"], []),
    ("ready", b"RSET\r\n", ["250 2.0.0 Reset OK"], []),
    ("ready", b"STARTTLS\r\n", ["502 5.5.1 STARTTLS not available"], []),
    ("ready", b"DATA\r\n", ["503 5.5.1 Need MAIL command first"], []),
    ("ready", b"RCPT TO:<b@example.test>\r\n", ["503 5.5.1 Need MAIL command first"], []),
    ("ready", b"AUTH PLAIN\r\n", ["503 5.5.1 AUTH not available"], []),
    (
        "ready",
        b"MAIL TO:<a@example.org>\r\n",
        ["501 5.5.2 Syntax error in parameters or arguments"],
        [],
    ),
    ("ready", b"MAIL FROM:<a@example.org>SIZE=1\r\n", ["501 5.1.7 Bad sender address syntax"], []),
    ("ready", b"MAIL FROM:<a@example.org> SIZE=x\r\n", ["501 5.5.4 Invalid parameter value"], []),
    ("ready", b"MAIL FROM:<a@example.org> SIZE\r\n", ["501 5.5.4 Invalid parameter value"], []),
    (
        "ready",
        b"MAIL FROM:<a@example.org> SIZE=1 size=2\r\n",
        ["501 5.5.4 Duplicate parameter"],
        [],
    ),
    (
        "ready",
        b"MAIL FROM:<a@example.org> SMTPUTF8=yes\r\n",
        ["501 5.5.4 Invalid parameter value"],
        [],
    ),
    (
        "ready",
        b"MAIL FROM:<a@example.org> BODY=9BIT\r\n",
        ["501 5.5.4 Invalid parameter value"],
        [],
    ),
    (
        "ready",
        b"MAIL FROM:<a@example.org> ENVID=" + b"x" * 101 + b"\r\n",
        ["501 5.5.4 Invalid parameter value"],
        [],
    ),
    # AUTH= belongs to the AUTH extension, which an MX does not offer (RFC 5321 §4.1.1.11).
    ("ready", b"MAIL FROM:<a@example.org> AUTH=<>\r\n", ["555 5.5.4 Unsupported parameter"], []),
    ("ready", b"MAIL FROM:<>\r\n", ["250 2.1.0 Sender OK"], ["MailFrom"]),
    ("mail", b"MAIL FROM:<a@example.org>\r\n", ["503 5.5.1 Sender already specified"], []),
    ("mail", b"DATA\r\n", ["554 5.5.1 No valid recipients"], []),
    ("mail", b"STARTTLS\r\n", ["503 5.5.1 STARTTLS not allowed now"], []),
    ("mail", b"RCPT TO:b@example.test\r\n", ["501 5.1.3 Bad recipient address syntax"], []),
    (
        "mail",
        b"RCPT FROM:<b@example.test>\r\n",
        ["501 5.5.2 Syntax error in parameters or arguments"],
        [],
    ),
    ("mail", b"RCPT TO:<b@example.test> FOO=1\r\n", ["555 5.5.4 Unsupported parameter"], []),
    (
        "mail",
        b"RCPT TO:<b@example.test> ORCPT=rfc822\r\n",
        ["501 5.5.4 Invalid parameter value"],
        [],
    ),
    ("mail", b"RCPT TO:<b@example.test> NOTIFY=\r\n", ["501 5.5.4 Invalid parameter value"], []),
    (
        "mail",
        b"RCPT TO:<b\xc3\xa9@example.test>\r\n",
        ["553 5.6.7 Non-ASCII addresses not permitted without SMTPUTF8"],
        [],
    ),
    ("mail", b"RCPT TO:<b@example.test>\r\n", ["250 2.1.5 Recipient OK"], ["RcptTo"]),
    ("rcpt", b"DATA now\r\n", ["501 5.5.2 Syntax error in parameters or arguments"], []),
    (
        "rcpt",
        b"DATA\r\n.\r\n",
        ["354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Message accepted"],
        ["MessageComplete"],
    ),
    ("rcpt", b"BDAT 0 LAST\r\n", ["250 2.0.0 Message accepted"], ["MessageComplete"]),
    (
        "rcpt",
        b"BDAT 2 last\r\nok",
        ["250 2.0.0 Message accepted"],
        ["MessageData", "MessageComplete"],
    ),
    ("rcpt", b"BDAT x\r\n", ["501 5.5.2 Syntax error in parameters or arguments"], []),
    ("rcpt", b"BDAT 1 NOTLAST\r\n", ["501 5.5.2 Syntax error in parameters or arguments"], []),
    ("rcpt", b"RSET\r\n", ["250 2.0.0 Reset OK"], []),
    ("data", b"x\r\n.\r\n", ["250 2.0.0 Message accepted"], ["MessageData", "MessageComplete"]),
    (
        "data",
        b"x\n.\r\n.\r\n",  # "\n.\r\n" does not end the data
        ["550 5.6.0 Bare CR or LF not allowed in message content"],
        ["MessageData", "MessageAborted"],
    ),
    (
        "chunking",
        b"BDAT 1 LAST\r\nd",
        ["250 2.0.0 Message accepted"],
        ["MessageData", "MessageComplete"],
    ),
    ("chunking", b"DATA\r\n", ["503 5.5.1 DATA not allowed after BDAT"], []),
    ("chunking", b"MAIL FROM:<a@example.org>\r\n", ["503 5.5.1 Sender already specified"], []),
    ("chunking", b"RSET\r\n", ["250 2.0.0 Reset OK"], ["MessageAborted"]),
    ("chunking", b"EHLO again.example\r\n", None, ["MessageAborted", "Hello"]),
    ("chunking", b"QUIT\r\n", ["221 2.0.0 Bye"], ["MessageAborted", "Quit"]),
    ("ready", b"QUIT\r\n", ["221 2.0.0 Bye"], ["Quit"]),
    (
        "ready",
        b"GET / HTTP/1.1\r\n",
        ["421 4.7.0 This is an SMTP server, closing connection"],
        ["ConnectionClosed"],
    ),
]


@pytest.mark.parametrize(("setup", "data", "replies", "names"), TABLE)
@pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
def test_table(
    setup: str, data: bytes, replies: list[str] | None, names: list[str], mode: str
) -> None:
    run = start(setup=SETUPS[setup])
    ends = any(n in ("Quit", "ConnectionClosed") for n in names)
    trailing = mode == "trailing" and not ends
    run.feed(
        data + (b"NOOP\r\n" if trailing else b""), "bytewise" if mode == "bytewise" else "whole"
    )
    lines = run.lines()
    if replies is not None:
        noop = [lines[-1]] if trailing else []
        assert lines == replies + noop
    if trailing:
        assert lines[-1] in ("250 OK", "250 2.0.0 OK")
    # Byte-at-a-time feeding splits content into more MessageData pieces.
    collapsed = [
        n for i, n in enumerate(run.names) if n != "MessageData" or run.names[i - 1 : i] != [n]
    ]
    assert collapsed == names


def test_state_table_is_consistent() -> None:
    for state, table in COMMANDS.items():
        for verb, name in table.items():
            assert callable(getattr(SMTPServerConnection, "_cmd_" + name)), (state, verb)
    assert set(SEQUENCE_ERRORS) == set(COMMANDS)
    assert set(DECISIONS) == set(DEFAULT_ACCEPT)
    for kind in DECISIONS:
        assert kind.needs_decision
    for kind in (ev.MessageData, ev.MessageAborted, ev.StartTLS, ev.Quit, ev.ConnectionClosed):
        assert not kind.needs_decision


def caps(settings: ServerSettings, *, tls_active: bool = False) -> list[str]:
    run = start(settings, tls_active=tls_active)
    run.feed(b"EHLO c.example\r\n")
    return [line[4:] for line in run.lines()[1:]]


BASE_CAPS = [
    "PIPELINING",
    "SIZE 1000",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "DSN",
]


@pytest.mark.parametrize(
    ("kwargs", "tls_active", "extra"),
    [
        ({"mode": "mx"}, False, []),
        ({"mode": "mx", "tls_available": True}, False, ["STARTTLS"]),
        ({"mode": "mx", "tls_available": True}, True, []),
        ({"mode": "submission", "tls_available": True}, False, ["STARTTLS"]),
        ({"mode": "submission", "tls_available": True}, True, ["AUTH PLAIN LOGIN SCRAM-SHA-256"]),
        ({"mode": "submission", "auth_requires_tls": False}, False,
         ["AUTH PLAIN LOGIN SCRAM-SHA-256"]),
        ({"mode": "submission", "auth_mechanisms": ("PLAIN",)}, True, ["AUTH PLAIN"]),
        ({"mode": "mx", "allow_auth": True}, True, ["AUTH PLAIN LOGIN SCRAM-SHA-256"]),
    ],
)
def test_ehlo_capabilities(kwargs: dict[str, object], tls_active: bool, extra: list[str]) -> None:
    settings = ServerSettings(hostname="mx.example", max_message_size=1000, **kwargs)  # type: ignore[arg-type]
    assert caps(settings, tls_active=tls_active) == BASE_CAPS + extra


def test_settings_defaults_follow_mode() -> None:
    mx = ServerSettings(hostname="h")
    sub = ServerSettings(hostname="h", mode="submission")
    assert (mx.allow_auth, mx.auth_required) == (False, False)
    assert (sub.allow_auth, sub.auth_required) == (True, True)
    with pytest.raises(ValueError):
        ServerSettings(hostname="h", mode="lmtp")  # type: ignore[arg-type]


def test_mail_and_rcpt_events_carry_parsed_parts() -> None:
    run = start(setup=SETUPS["ready"])
    run.feed(
        b"MAIL FROM:<@r.example:j\xc3\xb6@ex\xc3\xa4mple.org> SIZE=123 BODY=8bitmime SMTPUTF8 "
        b"RET=hdrs ENVID=id+2B1\r\n"
        b'RCPT TO:<"b c"@example.test> NOTIFY=success,failure ORCPT=RFC822;b+20c@example.test\r\n'
    )
    mail, rcpt = run.events
    assert isinstance(mail, ev.MailFrom) and isinstance(rcpt, ev.RcptTo)
    assert mail.address == "@r.example:jö@exämple.org"
    assert mail.path.mailbox == "jö@exämple.org"
    assert mail.path.source_route == ("r.example",)
    assert (mail.size, mail.body, mail.smtputf8, mail.ret, mail.envid) == (
        123,
        "8BITMIME",
        True,
        "HDRS",
        "id+1",
    )
    assert mail.params["SIZE"] == "123"
    assert rcpt.path.local == "b c" and rcpt.address == '"b c"@example.test'
    assert rcpt.notify == ("SUCCESS", "FAILURE")
    assert rcpt.orcpt == ("rfc822", "b c@example.test")


def test_decisions_pause_pipelined_commands() -> None:
    conn = SMTPServerConnection(SETTINGS)
    conn.receive_data(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), ev.Hello)
    assert conn.next_event() is ev.PAUSED
    assert conn.next_event() is ev.PAUSED
    assert conn.data_to_send() == b""
    conn.respond(Reply.make(250, "fine"))  # any 2xx: the core writes the capability list
    assert conn.data_to_send().startswith(
        b"250-mail.example.test Hello c.example\r\n250-PIPELINING"
    )
    mail = conn.next_event()
    assert isinstance(mail, ev.MailFrom)
    conn.respond(Reply.make(550, "not you", "5.7.1"))
    assert conn.next_event() is ev.NEED_DATA
    assert conn.data_to_send() == b"550 5.7.1 not you\r\n250 2.0.0 OK\r\n"
    assert conn.state is State.READY


def test_rejected_hello_returns_to_greeted() -> None:
    run = start(decide=lambda e: Reply.make(550, "go away", "5.7.1"))
    run.feed(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
    assert run.lines() == ["550 go away", "503 Send EHLO or HELO first"]
    assert run.conn.state is State.GREETED and run.conn.hello_name is None


def test_respond_without_decision_is_a_programming_error() -> None:
    conn = SMTPServerConnection(SETTINGS)
    with pytest.raises(RuntimeError):
        conn.respond()
    with pytest.raises(RuntimeError):
        conn.tls_started()


def test_starttls_discards_pipelined_plaintext_and_resets() -> None:
    settings = ServerSettings(hostname="h.example", mode="submission", tls_available=True)
    conn = SMTPServerConnection(settings)
    conn.receive_data(b"EHLO c\r\n")
    conn.next_event()
    conn.respond()
    conn.data_to_send()
    conn.receive_data(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
    assert isinstance(conn.next_event(), ev.StartTLS)
    assert conn.data_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    assert conn.buffered == 0
    conn.receive_data(b"RSET\r\n")  # still plaintext: dropped
    assert conn.next_event() is ev.PAUSED and conn.buffered == 0
    conn.tls_started()
    assert conn.tls_active and conn.hello_name is None and conn.state is State.GREETED
    conn.receive_data(b"EHLO c\r\n")
    conn.next_event()
    conn.respond()
    out = conn.data_to_send()
    assert b"STARTTLS" not in out and b"250 AUTH PLAIN LOGIN SCRAM-SHA-256\r\n" in out


def test_auth_then_mail_on_submission() -> None:
    settings = ServerSettings(hostname="h.example", mode="submission")
    seen: list[ev.Event] = []

    def decide(e: ev.Event) -> Reply | None:
        seen.append(e)
        return None

    run = start(settings, tls_active=True, decide=decide, setup=b"EHLO c\r\n")
    run.feed(b"AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nMAIL FROM:<alice@example.test> AUTH\r\n"
             b"MAIL FROM:<alice@example.test> AUTH=<>\r\n")
    assert run.lines() == [
        "334 VXNlcm5hbWU6",
        "334 UGFzc3dvcmQ6",
        "235 2.7.0 Authentication successful",
        "501 5.5.4 Invalid parameter value",
        "250 2.1.0 Sender OK",  # AUTH=<> (RFC 4954 §5) where AUTH is offered
    ]
    creds = next(e for e in seen if isinstance(e, ev.AuthCredentials))
    assert isinstance(creds, ev.AuthCredentials)
    assert (creds.mechanism, creds.authzid, creds.authcid, creds.password) == (
        "LOGIN",
        "",
        "alice",
        "secret",
    )
    assert "secret" not in repr(creds)
    assert run.conn.authenticated_as == "alice"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"AUTH PLAIN AGFsaWNl\r\n", "501 5.5.2 Malformed authentication response"),
        (b"AUTH PLAIN *\r\n", "501 5.7.0 Authentication cancelled"),
        (b"AUTH PLAIN a b\r\n", "501 5.5.2 Syntax error in parameters or arguments"),
        (b"AUTH\r\n", "501 5.5.2 Syntax error in parameters or arguments"),
        (b"AUTH XOAUTH2 x\r\n", "504 5.5.4 Unrecognized authentication type"),
        (b"AUTH PLAIN " + b"A" * 13000 + b"\r\n", "500 5.5.6 Line too long"),
    ],
)
def test_auth_errors(line: bytes, reply: str) -> None:
    settings = ServerSettings(hostname="h.example", mode="submission")
    run = start(settings, tls_active=True, setup=b"EHLO c\r\n")
    run.feed(line + b"NOOP\r\n")
    assert run.lines() == [reply, "250 2.0.0 OK"]


def test_auth_response_too_long_aborts_exchange() -> None:
    settings = ServerSettings(hostname="h.example", mode="submission")
    run = start(settings, tls_active=True, setup=b"EHLO c\r\n")
    run.feed(b"AUTH PLAIN\r\n" + b"A" * 20000 + b"\r\nNOOP\r\n")
    assert run.lines() == ["334 ", "500 5.5.6 Line too long", "250 2.0.0 OK"]
    assert run.conn.state is State.READY


def test_message_data_is_streamed_in_bounded_pieces() -> None:
    settings = ServerSettings(hostname="h", chunk_size=1024)
    run = start(settings, setup=SETUPS["data"])
    body = b"".join(b"line %05d " % i + b"x" * 90 + b"\r\n" for i in range(200))
    run.feed(body + b".\r\n")
    chunks = [e.chunk for e in run.events if isinstance(e, ev.MessageData)]
    assert len(chunks) > 10 and all(len(c) <= 1024 for c in chunks)
    assert b"".join(chunks) == body
    done = run.events[-1]
    assert isinstance(done, ev.MessageComplete) and done.size == len(body) and not done.chunked


def test_oversized_message_streams_no_more_than_the_limit() -> None:
    settings = ServerSettings(hostname="h", chunk_size=100, max_message_size=1000)
    run = start(settings, setup=SETUPS["data"])
    run.feed(b"y" * 98 + b"\r\n")
    run.feed((b"z" * 98 + b"\r\n") * 50 + b".\r\nNOOP\r\n")
    streamed = sum(len(e.chunk) for e in run.events if isinstance(e, ev.MessageData))
    assert streamed <= 1000
    assert run.names[-1] == "MessageAborted"
    assert run.lines() == ["552 5.3.4 Message size exceeds fixed limit", "250 2.0.0 OK"]


def test_bdat_bare_lf_is_rejected_and_split_crlf_is_not() -> None:
    run = start(setup=SETUPS["rcpt"])
    run.feed(b"BDAT 2\r\na\rBDAT 2 LAST\r\n\nb")
    assert run.lines() == ["250 2.0.0 Chunk received", "250 2.0.0 Message accepted"]
    assert run.messages() == [b"a\r\nb"]
    run = start(setup=SETUPS["rcpt"])
    run.out.clear()
    run.feed(b"BDAT 2 LAST\r\na\n")
    assert run.lines() == ["550 5.6.0 Bare CR or LF not allowed in message content"]
    assert run.names == ["MessageAborted"]


def test_bdat_out_of_sequence_is_consumed_not_executed() -> None:
    run = start(setup=SETUPS["ready"])
    run.feed(b"BDAT 19 LAST\r\nMAIL FROM:<x@y.z>\r\nNOOP\r\n")
    assert run.lines() == ["503 5.5.1 Need MAIL command first", "250 2.0.0 OK"]
    assert run.events == []


def test_too_many_recipients() -> None:
    settings = ServerSettings(hostname="h", max_recipients=1)
    run = start(settings, setup=SETUPS["rcpt"])
    run.feed(b"RCPT TO:<c@example.test>\r\n")
    assert run.lines() == ["452 4.5.3 Too many recipients"]


def test_rejected_recipients_do_not_count() -> None:
    settings = ServerSettings(hostname="h", max_recipients=1)
    run = start(settings, setup=SETUPS["mail"])
    run.decide = lambda e: Reply.make(550, "no", "5.1.1")
    run.feed(b"RCPT TO:<c@example.test>\r\n")
    run.decide = lambda e: None
    run.feed(b"RCPT TO:<d@example.test>\r\n")
    assert run.lines() == ["550 5.1.1 no", "250 2.1.5 Recipient OK"]


def test_eof_in_command_state_and_after() -> None:
    run = start(setup=SETUPS["ready"])
    run.conn.receive_data(b"NOO")
    run.conn.receive_eof()
    run.drain()
    assert run.names == ["ConnectionClosed"]
    assert run.conn.closed
    assert isinstance(run.conn.next_event(), ev.ConnectionClosed)
    run.conn.receive_data(b"NOOP\r\n")
    assert run.conn.buffered == 0


def test_eof_in_chunking_aborts_message() -> None:
    run = start(setup=SETUPS["chunking"])
    run.conn.receive_eof()
    run.drain()
    assert run.names == ["MessageAborted", "ConnectionClosed"]


def test_shutdown_mid_data() -> None:
    run = start(setup=SETUPS["data"])
    run.feed(b"partial\r\n")
    run.conn.shutdown()
    run.drain()
    assert run.names[-2:] == ["MessageAborted", "ConnectionClosed"]
    assert run.lines()[-1] == "421 4.3.2 Service shutting down, closing connection"
    run.conn.shutdown()  # idempotent


def test_pipelined_flood_while_paused_is_cut_off() -> None:
    settings = ServerSettings(hostname="h", max_buffered=20000)
    conn = SMTPServerConnection(settings)
    conn.receive_data(b"EHLO c\r\n")
    assert isinstance(conn.next_event(), ev.Hello)
    for _ in range(100):
        conn.receive_data(b"NOOP\r\n" * 100)
        assert conn.buffered <= 20000
    closed = conn.next_event()
    assert isinstance(closed, ev.ConnectionClosed)
    assert conn.data_to_send() == b"421 Too much pipelined input, closing connection\r\n"
    conn.respond()  # late decision after close: ignored


def test_errors_counted_to_421() -> None:
    settings = ServerSettings(hostname="h", max_errors=10)
    run = start(settings, setup=SETUPS["ready"])
    run.feed(b"JUNK\r\n" * 20)
    lines = run.lines()
    assert lines[:9] == ["500 5.5.1 Command not recognized"] * 9
    assert lines[9:] == ["421 4.7.0 Too many errors, closing connection"]
    assert run.names == ["ConnectionClosed"]


def test_endless_line_keeps_memory_bounded() -> None:
    run = start(setup=SETUPS["ready"])
    for _ in range(200):
        run.feed(b"a" * 65536)
        assert run.conn.buffered <= srv.MAX_LINE_READ
    run.feed(b"\r\nNOOP\r\n")
    assert run.lines() == ["500 5.5.6 Line too long", "250 2.0.0 OK"]


@pytest.mark.parametrize("verb", [b"NOOP ", b"HELO ", b"RSET "])
def test_plain_commands_limited_to_512(verb: bytes) -> None:
    run = start(setup=SETUPS["ready"])
    run.feed(verb + b"x" * (510 - len(verb)) + b"\r\n")  # exactly 512 with CRLF
    assert not run.lines()[0].startswith("500")
    run.out.clear()
    run.feed(verb + b"x" * (511 - len(verb)) + b"\r\n")
    # After HELO (not EHLO) replies carry no enhanced code (RFC 2034 §3).
    expected = R.LINE_TOO_LONG.to_bytes(enhanced=run.conn.extended).decode()[:-2]
    assert run.lines() == [expected]


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        ServerSettings(hostname="h", max_message_size=0)
    with pytest.raises(ValueError):
        ServerSettings(hostname="h", max_buffered=100)
    base = ServerSettings(hostname="h")
    assert dataclasses.replace(base, max_recipients=5).max_recipients == 5
