"""Golden SMTP transcripts: plain-text dialogs run against the server core.

A transcript is a text file of one directive per line (STYLE habit 4)::

    # RFC 5321 §4.5.2: dot-stuffing            <- comments; the first ones say what is covered
    # settings: mode=submission tls_active=true  <- ServerSettings overrides (optional)
    # feed: whole                                <- restrict feeding modes (optional)
    S: 220 mail.example.test ESMTP mailyard     <- a line the server sends
    C: EHLO client.test                          <- a line the client sends (CRLF appended)
    R: body\\n.\\n                               <- raw client bytes, escapes \\r \\n \\t \\0 \\\\ \\xHH
    A: 550 5.1.1 No such user                    <- the application's answer to the next
                                                    decision (default: accept)
    E: MessageAborted                            <- an event expected (in order, others may come between)
    M: Subject: hi\\r\\n\\r\\nbody\\r\\n         <- content of the next accepted message
    X: EOF                                       <- the client closes its side

``C``/``R``/``S``/``X`` lines are portable to a live socket run;
``A``/``E``/``M`` concern the core and its driver only (a live runner skips them).

:func:`run_transcript_core` drives a :class:`SMTPServerConnection` the way the
asyncio adapter does (STARTTLS "handshakes" at once) and raises
:class:`TranscriptMismatch` when the dialog differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from mailyard.protocol.sasl import ScramSecrets
from mailyard.protocol.smtp import events as ev
from mailyard.protocol.smtp.replies import Reply
from mailyard.protocol.smtp.server import (
    MAX_LINE_READ,
    ServerSettings,
    SMTPServerConnection,
    State,
)

__all__ = [
    "DIRECTIONS",
    "CoreSession",
    "TranscriptMismatch",
    "TranscriptResult",
    "core_session",
    "parse_header",
    "parse_transcript",
    "run_transcript_core",
    "unescape",
]

DIRECTIONS = frozenset("CSRAEMX")
FeedMode = Literal["whole", "bytewise", "lines"]
FEED_MODES: tuple[FeedMode, ...] = ("whole", "bytewise", "lines")

DEFAULT_SETTINGS = ServerSettings(hostname="mail.example.test")


class TranscriptMismatch(AssertionError):
    """The server did not say what the transcript says."""


@dataclass
class TranscriptResult:
    output: list[str] = field(default_factory=list)
    events: list[ev.Event] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)


def unescape(text: str) -> bytes:
    """Decode the escapes of an ``R:``/``M:`` line into bytes (UTF-8 otherwise)."""
    out = bytearray()
    i = 0
    simple = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\x00", "\\": b"\\"}
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in simple:
                out += simple[nxt]
                i += 2
                continue
            if nxt == "x" and i + 3 < len(text):
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
        out += c.encode("utf-8")
        i += 1
    return bytes(out)


def parse_transcript(text: str) -> list[tuple[str, str]]:
    """``[(direction, line), ...]``; comments and blank lines dropped.

    A directive is ``X: text``; the single space after the colon is part of
    the syntax, anything after it (even trailing spaces) is the line.
    """
    items: list[tuple[str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.startswith("#"):
            continue
        if len(raw) < 2 or raw[0] not in DIRECTIONS or raw[1] != ":":
            raise ValueError(f"line {number}: not a transcript directive: {raw!r}")
        body = raw[2:]
        if body.startswith(" "):
            body = body[1:]
        items.append((raw[0], body))
    return items


def parse_header(text: str) -> dict[str, str]:
    """``# key: value`` comment lines of the header (e.g. ``settings``, ``feed``)."""
    header: dict[str, str] = {}
    for raw in text.splitlines():
        if not raw.startswith("#"):
            if raw.strip():
                break
            continue
        key, sep, value = raw[1:].strip().partition(":")
        if sep and key.strip() in ("settings", "feed"):
            header[key.strip()] = value.strip()
    return header


def _settings_from_header(base: ServerSettings, spec: str) -> tuple[ServerSettings, bool]:
    changes: dict[str, object] = {}
    tls_active = False
    for item in spec.split():
        key, _, value = item.partition("=")
        parsed: object
        if value in ("true", "false"):
            parsed = value == "true"
        elif value.isdigit():
            parsed = int(value)
        else:
            parsed = value
        if key == "tls_active":
            tls_active = bool(parsed)
        elif key == "auth_mechanisms":
            changes[key] = tuple(value.split(","))
        else:
            changes[key] = parsed
    if "mode" in changes:
        changes.setdefault("allow_auth", None)
        changes.setdefault("auth_required", None)
    return dataclasses.replace(base, **changes), tls_active  # type: ignore[arg-type]


def _reply_from_text(text: str) -> Reply | None:
    if text.strip().lower() == "accept":
        return None
    code, _, rest = text.partition(" ")
    enhanced: str | None = None
    first, _, tail = rest.partition(" ")
    if first[:1] in "245" and first.count(".") == 2:
        enhanced, rest = first, tail
    return Reply.make(int(code), rest, enhanced)


def _chunks(data: bytes, mode: FeedMode) -> Iterable[bytes]:
    if mode == "whole":
        yield data
    elif mode == "bytewise":
        for i in range(len(data)):
            yield data[i : i + 1]
    else:
        yield from data.splitlines(keepends=True)


def run_transcript_core(
    text: str,
    settings: ServerSettings | None = None,
    *,
    feed: FeedMode = "whole",
    tls_active: bool | None = None,
) -> TranscriptResult:
    """Run ``text`` against a fresh server core. Raises :class:`TranscriptMismatch`."""
    items = parse_transcript(text)
    header = parse_header(text)
    base = settings or DEFAULT_SETTINGS
    settings, header_tls = _settings_from_header(base, header.get("settings", ""))
    conn = SMTPServerConnection(
        settings, tls_active=header_tls if tls_active is None else tls_active
    )
    result = TranscriptResult()
    out = bytearray(conn.greeting())
    current: list[bytes] = []
    pos = 0
    closed = False

    def drain() -> None:
        nonlocal pos, closed
        while not closed:
            event = conn.next_event()
            if event is ev.NEED_DATA:
                return
            if event is ev.PAUSED:
                if conn.state is State.TLS:
                    out.extend(conn.data_to_send())
                    conn.tls_started()
                    continue
                return
            assert isinstance(event, ev.Event)
            result.events.append(event)
            if isinstance(event, ev.MessageData):
                current.append(event.chunk)
            elif isinstance(event, ev.MessageAborted):
                current.clear()
            elif isinstance(event, (ev.Quit, ev.ConnectionClosed)):
                closed = True
            if event.needs_decision:
                reply: Reply | None = None
                if pos < len(items) and items[pos][0] == "A":
                    reply = _reply_from_text(items[pos][1])
                    pos += 1
                if isinstance(event, ev.MessageComplete) and (reply is None or reply.is_success):
                    result.messages.append(b"".join(current))
                if isinstance(event, ev.MessageComplete):
                    current.clear()
                conn.respond(reply)
            out.extend(conn.data_to_send())
        out.extend(conn.data_to_send())

    expected_out: list[str] = []
    expected_events: list[str] = []
    expected_messages: list[bytes] = []
    while pos < len(items):
        direction, line = items[pos]
        pos += 1
        if direction in "CR":
            # A block of client lines is sent together (pipelining); the A:
            # lines after it answer the decisions it causes, in order.
            block = [(direction, line)]
            while pos < len(items) and items[pos][0] in "CR":
                block.append(items[pos])
                pos += 1
            for d, text_line in block:
                data = text_line.encode("utf-8") + b"\r\n" if d == "C" else unescape(text_line)
                for piece in _chunks(data, feed):
                    if closed:
                        break
                    conn.receive_data(piece)
                    if feed != "whole":
                        drain()
            drain()
        elif direction == "X":
            if line.strip().upper() != "EOF":
                raise ValueError(f"unknown X directive {line!r}")
            conn.receive_eof()
            drain()
        elif direction == "S":
            expected_out.append(line)
        elif direction == "E":
            expected_events.append(line.strip())
        elif direction == "M":
            expected_messages.append(unescape(line))
        elif direction == "A":
            raise TranscriptMismatch(f"A: {line!r} was not consumed by a decision")
    drain()
    out.extend(conn.data_to_send())

    actual = out.decode("utf-8", "replace").split("\r\n")
    if actual and actual[-1] == "":
        actual.pop()
    result.output = actual
    if actual != expected_out:
        raise TranscriptMismatch(_diff(expected_out, actual))
    names = [type(e).__name__ for e in result.events]
    it = iter(names)
    for want in expected_events:
        if not any(name == want for name in it):
            raise TranscriptMismatch(f"expected event {want} not seen in order; got {names}")
    if expected_messages and expected_messages != result.messages:
        raise TranscriptMismatch(
            f"messages differ:\n expected {expected_messages!r}\n actual   {result.messages!r}"
        )
    return result


def _diff(expected: list[str], actual: list[str]) -> str:
    lines = ["server output differs (expected | actual):"]
    for i in range(max(len(expected), len(actual))):
        e = expected[i] if i < len(expected) else "<none>"
        a = actual[i] if i < len(actual) else "<none>"
        mark = "  " if e == a else "!!"
        lines.append(f"{mark} {e!r} | {a!r}")
    return "\n".join(lines)


# --- a scripted driver for tests of the core ----------------------------

#: Answers a decision: a Reply, None (the default), or for ``AuthNeedSecrets`` the
#: user's SCRAM secrets.
Decide = Callable[[ev.Event], Reply | ScramSecrets | None]


def accept_all(event: ev.Event) -> Reply | ScramSecrets | None:
    return None


@dataclass
class CoreSession:
    """Drives a core like the adapter: feeds bytes, answers decisions with
    ``decide`` (default: accept), "handshakes" STARTTLS at once, and records
    the events and the output. Asserts the bounded-buffer invariant."""

    conn: SMTPServerConnection
    out: bytearray = field(default_factory=bytearray)
    events: list[ev.Event] = field(default_factory=list)
    decide: Decide = accept_all

    @property
    def names(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    def lines(self) -> list[str]:
        text = bytes(self.out).decode("utf-8")
        return text.split("\r\n")[:-1] if text else []

    def take_lines(self) -> list[str]:
        lines = self.lines()
        self.out.clear()
        return lines

    def drain(self) -> None:
        conn = self.conn
        for _ in range(1_000_000):
            event = conn.next_event()
            if event is ev.NEED_DATA:
                # Bounded memory: at most one partial line is ever held back.
                assert conn.buffered <= MAX_LINE_READ
                break
            if event is ev.PAUSED:
                if conn.state is State.TLS:
                    self.out += conn.data_to_send()
                    conn.tls_started()
                    continue
                break
            assert isinstance(event, ev.Event)
            self.events.append(event)
            if event.needs_decision:
                answer = self.decide(event)
                if isinstance(answer, ScramSecrets):
                    conn.provide_secrets(answer)
                else:
                    conn.respond(answer)
            if isinstance(event, (ev.Quit, ev.ConnectionClosed)):
                break
        else:  # pragma: no cover
            raise AssertionError("core did not settle")
        self.out += conn.data_to_send()

    def feed(self, data: bytes, mode: str = "whole") -> CoreSession:
        pieces = [data[i : i + 1] for i in range(len(data))] if mode == "bytewise" else [data]
        for piece in pieces:
            self.conn.receive_data(piece)
            self.drain()
        return self

    def messages(self) -> list[bytes]:
        """Content of each MessageComplete, in order."""
        done: list[bytes] = []
        cur: list[bytes] = []
        for e in self.events:
            if isinstance(e, ev.MessageData):
                cur.append(e.chunk)
            elif isinstance(e, ev.MessageAborted):
                cur = []
            elif isinstance(e, ev.MessageComplete):
                done.append(b"".join(cur))
                cur = []
        return done


def core_session(
    settings: ServerSettings | None = None,
    *,
    tls_active: bool = False,
    decide: Decide = accept_all,
    setup: bytes = b"",
) -> CoreSession:
    run = CoreSession(
        SMTPServerConnection(settings or DEFAULT_SETTINGS, tls_active=tls_active), decide=decide
    )
    run.out += run.conn.greeting()
    if setup:
        run.feed(setup)
    run.out.clear()
    run.events.clear()
    return run
