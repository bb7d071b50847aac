"""Fuzz targets shared by the atheris harnesses (fuzz/fuzz_*.py, long runs via
scripts/fuzz.sh) and the short hypothesis run in the test suite
(tests/hardening/test_fuzz_short.py).

Each target takes bytes and checks the invariant of STYLE.md habit 7: any input
gives events, replies or a protocol error — never another exception, never an
unbounded buffer, never a loop that stops making progress. A target raises
AssertionError (or lets an unexpected exception escape) on a violation.

The protocol targets start from every state: the first input byte picks a
prefix of real commands that drives the core to a state (greeted, after EHLO,
inside a transaction, in DATA, BDAT, AUTH, after login...), the rest is fed in
pieces whose sizes come from the input as well.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailyard.protocol.sasl import ScramSecrets

MAX_STEPS = 20_000


@functools.cache
def _secrets() -> ScramSecrets:
    """SCRAM secrets to answer NeedSecrets with (made once, at first use)."""
    from mailyard.protocol.sasl import derive_scram_secrets

    return derive_scram_secrets("pencil", salt=b"0123456789abcdef", iterations=4096)

# -- helpers ------------------------------------------------------------------------------


def _split(data: bytes) -> tuple[int, list[bytes]]:
    """(selector, chunks): byte 0 picks a state, byte 1 a chunk size."""
    if not data:
        return 0, []
    sel = data[0]
    size = (data[1] % 64 + 1) if len(data) > 1 else 1
    rest = data[2:]
    return sel, [rest[i:i + size] for i in range(0, len(rest), size)] or [b""]


# -- SMTP server core ---------------------------------------------------------------------

SMTP_PREFIXES = [
    b"",
    b"EHLO client.example\r\n",
    b"EHLO client.example\r\nMAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\n",
    b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n",
    b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n",
    b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nBDAT 40\r\n",
    b"EHLO c.example\r\nAUTH LOGIN\r\n",
    b"EHLO c.example\r\nAUTH PLAIN\r\n",
    b"EHLO c.example\r\nAUTH SCRAM-SHA-256\r\n",
    b"EHLO c.example\r\nAUTH SCRAM-SHA-256 biwsbj11c2VyLHI9YWJj\r\n",  # n,,n=user,r=abc
    b"HELO c.example\r\nSTARTTLS\r\n",
    b"EHLO c.example\r\nMAIL FROM:<> SMTPUTF8\r\nRCPT TO:<b@example.test> NOTIFY=NEVER\r\n",
]


def smtp_core(data: bytes) -> None:
    from mailyard.protocol.smtp import server as core
    from mailyard.protocol.smtp.replies import Reply

    sel, chunks = _split(data)
    settings = core.ServerSettings(hostname="mx.example.test", mode="submission"
                                   if sel & 0x80 else "mx", tls_available=True,
                                   auth_requires_tls=False, allow_auth=True,
                                   max_message_size=4096, max_buffered=64 * 1024)
    conn = core.SMTPServerConnection(settings, tls_active=bool(sel & 0x40))
    conn.greeting()
    prefix = SMTP_PREFIXES[sel % len(SMTP_PREFIXES)]
    deny = Reply.make(550, "no", "5.7.1")
    for n, chunk in enumerate([prefix, *chunks, None]):
        if chunk is None:
            conn.receive_eof()
        else:
            conn.receive_data(chunk)
        for _ in range(MAX_STEPS):
            ev = conn.next_event()
            if ev is core.NEED_DATA or ev is core.PAUSED:
                if ev is core.PAUSED and conn.state is core.State.TLS:
                    conn.tls_started()
                    continue
                break
            assert isinstance(ev, core.Event), ev
            if isinstance(ev, core.ConnectionClosed | core.Quit):
                break
            if isinstance(ev, core.AuthNeedSecrets) and n % 2:
                conn.provide_secrets(_secrets())  # else respond(): made-up secrets or deny
            elif getattr(ev, "needs_decision", False):
                # Alternate acceptance and refusal so both paths are explored.
                conn.respond(None if (n + len(conn.data_to_send())) % 3 else deny)
        else:
            raise AssertionError("SMTP core makes no progress")
        assert conn.buffered <= settings.max_buffered
        conn.data_to_send()
        if conn.closed:
            break


# -- POP3 core ----------------------------------------------------------------------------

POP3_PREFIXES = [
    b"",
    b"USER alice\r\n",
    b"USER alice\r\nPASS secret\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH SCRAM-SHA-256 biwsbj11c2VyLHI9YWJj\r\n",  # n,,n=user,r=abc
    b"USER alice\r\nPASS secret\r\nDELE 1\r\n",
    b"UTF8\r\nCAPA\r\n",
    b"STLS\r\n",
]


def pop3_core(data: bytes) -> None:
    from mailyard.protocol import pop3

    sel, chunks = _split(data)
    conn = pop3.POP3Connection(tls_active=bool(sel & 0x40), tls_available=True,
                               allow_plaintext_auth=True)
    conn.greet("ready")
    prefix = POP3_PREFIXES[sel % len(POP3_PREFIXES)]
    for chunk in [prefix, *chunks, b""]:
        conn.receive_data(chunk)
        for _ in range(MAX_STEPS):
            ev = conn.next_event()
            if ev is pop3.NEED_DATA:
                break
            if ev is pop3.FLUSH:
                conn.data_to_send()
                continue
            if ev is pop3.PAUSED:
                raise AssertionError("POP3 core paused with nothing to answer")
            if isinstance(ev, pop3.ConnectionClosed):
                return
            if isinstance(ev, pop3.AuthNeedSecrets):
                if sel & 2:
                    conn.provide_secrets(_secrets())
                else:
                    conn.err("Temporary authentication failure", code="SYS/TEMP")
            elif isinstance(ev, pop3.AuthProof) and not ev.proof.valid:
                conn.err("Authentication failed", code="AUTH")
            elif isinstance(ev, pop3.Pass | pop3.AuthCredentials | pop3.AuthProof):
                if sel & 1:
                    conn.login_ok([(120, "1.1"), (3000, "1.2"), (5, "1.3")])
                else:
                    conn.err("Authentication failed", code="AUTH")
            elif isinstance(ev, pop3.Retr | pop3.Top):
                conn.ok_multiline("octets")
                conn.send_body(b"Subject: x\r\n\r\n.line\r\nbody\r\n")
                conn.end_body()
            elif isinstance(ev, pop3.Stls):
                conn.tls_started()
            elif isinstance(ev, pop3.Quit):
                conn.ok("bye")
            else:
                raise AssertionError(f"unexpected POP3 event {ev!r}")
            conn.data_to_send()
        else:
            raise AssertionError("POP3 core makes no progress")
        assert len(conn._inbuf) <= pop3.SASL_LINE_MAX + 2, "POP3 input buffer unbounded"
        conn.data_to_send()


# -- IMAP command parser ------------------------------------------------------------------

IMAP_PREFIXES = [b"", b"a1 IDLE\r\n", b"a2 AUTHENTICATE PLAIN\r\n", b"a3 APPEND INBOX {20}\r\n",
                 b"a4 LOGIN {5}\r\n", b"a5 UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM"]


def imap_parser(data: bytes) -> None:
    from mailyard.protocol.imap import commands as c
    from mailyard.protocol.imap.parser import CommandParser

    sel, chunks = _split(data)
    p = CommandParser(max_line=1024, max_literal=1024, max_append=8192, max_command=8192)
    for chunk in [IMAP_PREFIXES[sel % len(IMAP_PREFIXES)], *chunks]:
        p.feed(chunk)
        for _ in range(MAX_STEPS):
            ev = p.next()
            if isinstance(ev, c.NeedData):
                break
            if isinstance(ev, c.Idle):
                p.expect_idle_done(ev.tag)
            elif isinstance(ev, c.Authenticate):
                p.expect_sasl_response(ev.tag)
        else:
            raise AssertionError("IMAP parser makes no progress")
        assert len(p._buf) <= 1024 + 1024 + len(chunk) + 2, "IMAP buffer unbounded"


# -- SASL ---------------------------------------------------------------------------------


def sasl_machines(data: bytes) -> None:
    from mailyard.protocol import sasl

    sel, chunks = _split(data)
    try:
        sasl.b64decode_strict(data)
    except sasl.SaslError:
        pass
    for name in ("PLAIN", "LOGIN", "SCRAM-SHA-256"):
        m = sasl.server_mechanism(name)
        assert m is not None
        try:
            step = m.start(chunks[0] if chunks and sel & 1 else None)
            for chunk in chunks[1:4]:
                if isinstance(step, sasl.Credentials | sasl.ProofChecked):
                    break
                if isinstance(step, sasl.NeedSecrets):
                    assert step.authcid
                    step = m.secrets(_secrets())
                step = m.step(chunk)
        except sasl.SaslError:
            continue
        if isinstance(step, sasl.Credentials):
            assert step.authcid and step.password
        if isinstance(step, sasl.ProofChecked):
            assert not step.valid  # random input does not know the password


# -- messages -----------------------------------------------------------------------------


def mime_structure(data: bytes) -> None:
    from mailyard.message.bodystructure import body, bodystructure
    from mailyard.message.envelope import envelope
    from mailyard.message.mime import parse_mime
    from mailyard.message.parse import decode_header, parse_fields

    root = parse_mime(data)
    assert len(root.walk()) <= 10_000
    bodystructure(root)
    body(root)
    fields = parse_fields(data)
    envelope(fields)
    for f in fields[:50]:
        decode_header(f.value)


# -- mail authentication records ----------------------------------------------------------


def auth_records(data: bytes) -> None:
    from mailyard.mailauth import dkim, dmarc, spf

    text = data.decode("utf-8", "replace")
    try:
        spf.parse_record(text)
    except spf.SPFSyntaxError:
        pass
    try:
        spf.parse_macro_string(text)
    except spf.SPFSyntaxError:
        pass
    try:
        dmarc.parse_record(text)
    except dmarc.DMARCSyntaxError:
        pass
    try:
        dkim.parse_tags(data)
    except dkim.DKIMTagError:
        pass
    dkim.key_record_problem(text)


def dkim_verify(data: bytes) -> None:
    """Whole-message DKIM/DMARC verification against an empty resolver: a result, always."""
    from mailyard.mailauth import dkim
    from mailyard.testing.dns import FakeResolver

    async def go() -> None:
        results = await dkim.verify_dkim(data, resolver=FakeResolver({}))
        assert isinstance(results, list)

    asyncio.run(go())


TARGETS: dict[str, Callable[[bytes], None]] = {
    "smtp": smtp_core,
    "pop3": pop3_core,
    "imap": imap_parser,
    "sasl": sasl_machines,
    "mime": mime_structure,
    "authrecords": auth_records,
    "dkim": dkim_verify,
}
