"""Incremental, sans-IO IMAP command parser (the framing layer).

Theory of operation
-------------------
The adapter calls :meth:`CommandParser.feed` with whatever bytes arrived and
then :meth:`CommandParser.next` until it returns :data:`NEED_DATA`. ``next``
yields, in order:

* a :class:`~mailyard.protocol.imap.commands.Command` when a whole command
  has arrived (grammar.py does the RFC 9051 §9 grammar);
* :class:`NeedContinuation` when the client announced a synchronising literal
  ``{n}``: the adapter writes ``+ Ready`` and keeps feeding (RFC 9051 §7.5);
* :class:`ParseError` for anything refused; the parser has already skipped the
  rest of that command, *including the payload of any non-synchronising
  literal* (RFC 7888 §4), so that payload is never read as commands;
* for APPEND, the message literal streams as :class:`AppendMessage`,
  :class:`AppendChunk`... :class:`AppendMessageEnd` (once per message, RFC 3502
  MULTIAPPEND) and :class:`AppendDone` when the command line ends. Only that
  one literal streams; every other literal is buffered up to ``max_literal``.
  The message may come wrapped as ``UTF8 (~{n}...)`` (RFC 6855 §4, once the
  client enabled UTF8=ACCEPT): the literal8 streams the same way and the ")"
  that must follow it is taken from the next line before that line is read on.

Memory is bounded: a line is at most ``max_line`` octets, buffered literals at
most ``max_literal`` each, a whole command at most ``max_command``; the input
buffer never holds more than one line plus one chunk. An over-long line is
discarded up to its end (keeping only a short tail to spot a literal marker).

Modes the adapter switches on explicitly, because only it knows the reply it
sent: :meth:`expect_idle_done` after ``+ idling`` (the next line must be
``DONE``), :meth:`expect_sasl_response` after each ``+ <challenge>`` of
AUTHENTICATE. After STARTTLS or COMPRESS the adapter must call
:meth:`take_buffered` and discard the bytes (plaintext injection, CVE-2011-0411
class) or, for COMPRESS, decompress them.

Limits, with the arithmetic:

* ``max_line`` 65,536: RFC 7162 §4 asks servers to take lines of at least
  8,192 octets; a UID set of 1,000 discontiguous 10-digit UIDs is ~11 kB.
* ``max_literal`` 65,536 for literals other than APPEND's message (mailbox
  names, search strings, LOGIN).
* ``max_append`` (APPENDLIMIT, RFC 7889) 50 MiB by default.
* ``max_command`` 1 MiB: all lines and buffered literals of one command.
* LITERAL- (RFC 7888 §5): non-synchronising literals over 4,096 octets are
  refused with ``NO [TOOBIG]`` when only LITERAL- is advertised.
* Bare LF line ends are accepted as CRLF (what others do: Dovecot accepts
  them; what we do: the same, since refusing helps nobody).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from typing import Literal

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap.grammar import (
    GrammarError,
    Lit,
    parse_append_head,
    parse_command,
    peek_tag_and_name,
)

__all__ = ["CommandParser"]

# "{123}" / "{123+}" / "~{123}" at the end of a line (RFC 9051 §9 literal,
# RFC 7888 literal+, RFC 3516 literal8). 20 digits bound the int() work.
_LITERAL_RE = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\Z")
_APPEND_MAILBOX_LITERAL_RE = re.compile(rb"[^ ]+ APPEND \Z", re.IGNORECASE)
_MAX_LITERAL_NUMBER = 4294967295  # RFC 9051 §9 number: < 2^32
_LITERAL_MINUS_MAX = 4096  # RFC 7888 §5
_TAIL = 32  # bytes of an over-long line we keep to spot "{n+}"
CHUNK = 65536


class CommandParser:
    def __init__(self, *, max_literal: int = 65536, max_line: int = 65536,
                 max_append: int = 50 * 1024 * 1024, max_command: int = 1024 * 1024,
                 max_depth: int = 64, literal_plus: bool = True,
                 literal_minus: bool = False) -> None:
        self.max_literal = max_literal
        self.max_line = max_line
        self.max_append = max_append
        self.max_command = max_command
        self.max_depth = max_depth
        # LITERAL+ accepts any non-synchronising literal; LITERAL- only up to 4096.
        self.literal_plus = literal_plus
        self.literal_minus = literal_minus
        self.utf8 = False  # set by the session after ENABLE UTF8=ACCEPT (RFC 9051 §6.3.1)
        self._buf = bytearray()
        self._events: deque[c.Event] = deque()
        self._mode = "line"
        self._reset_command()
        self._idle_tag: str | None = None
        self._sasl_tag: str | None = None
        self._skip_remaining = 0
        self._skip_tail = b""
        self._append_mailbox = ""

    # -- public ------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self._buf += data

    def take_buffered(self) -> bytes:
        """Remove and return unparsed input (after STARTTLS / COMPRESS)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    @property
    def between_commands(self) -> bool:
        """Nothing of a command received yet: no partial line, literal or exchange."""
        return (self._mode == "line" and not self._buf and not self._segs
                and self._idle_tag is None and self._sasl_tag is None)

    def expect_idle_done(self, tag: str) -> None:
        """The adapter sent ``+ idling``: the next line must be DONE."""
        self._idle_tag = tag

    def expect_sasl_response(self, tag: str) -> None:
        """The adapter sent ``+ <challenge>``: the next line is a SASL response."""
        self._sasl_tag = tag

    def refuse_literal(self) -> None:
        """Refuse the literal just announced by :class:`AppendMessage`.

        Synchronising: the client sends nothing more for this command, so the
        parser goes back to reading commands. Non-synchronising: its payload
        and the rest of the command are skipped.
        """
        if self._mode != "append_literal":
            return
        self._events.clear()
        sync = self._append_sync
        remaining = self._remaining
        self._reset_command()
        if sync:
            self._mode = "line"
        else:
            self._start_skip(remaining)

    def next(self) -> c.Event:
        while True:
            if self._events:
                return self._events.popleft()
            ev = self._step()
            if ev is None:
                continue
            return ev

    # -- internals -----------------------------------------------------------------------
    def _reset_command(self) -> None:
        self._segs: list[bytes | Lit] = []
        self._cmd_size = 0
        self._tag: str | None = None
        self._cmd_name: str | None = None
        self._remaining = 0
        self._lit_binary = False
        self._append_index = 0
        self._append_sync = False
        self._in_append = False  # between message literals of an APPEND
        self._append_close = False  # the message was "UTF8 (" literal8: ")" must follow

    def _start_skip(self, literal_remaining: int | None) -> None:
        """Forget the current command. ``literal_remaining`` is the size of a
        non-synchronising literal whose payload (and the rest of whose command)
        must be skipped; None when the command ended with the current line."""
        self._reset_command()
        self._skip_remaining = literal_remaining or 0
        self._skip_tail = b""
        self._mode = "line" if literal_remaining is None else "skip_literal"

    def _error(self, message: str, *, kind: c.ErrorKind = "bad",
               skip_literal: int | None = None, code: str | None = None,
               fatal: bool = False, status: Literal["BAD", "NO"] = "BAD") -> c.ParseError:
        tag = self._tag
        self._start_skip(skip_literal)
        return c.ParseError(tag, message, kind, fatal, code, status)

    def _take_line(self) -> bytes | None:
        """One line without its line end, or None (need data / too long)."""
        idx = self._buf.find(b"\n")
        if idx < 0:
            return None
        end = idx - 1 if idx > 0 and self._buf[idx - 1] == 0x0D else idx
        line = bytes(self._buf[:end])
        del self._buf[: idx + 1]
        return line

    def _step(self) -> c.Event | None:
        mode = self._mode
        if mode == "line":
            return self._step_line()
        if mode == "literal":
            if len(self._buf) < self._remaining:
                return c.NEED_DATA
            data = bytes(self._buf[: self._remaining])
            del self._buf[: self._remaining]
            self._segs.append(Lit(data, self._lit_binary))
            self._mode = "line"
            return None
        if mode == "append_literal":
            if self._remaining == 0:
                self._mode = "line"
                self._in_append = True
                return c.AppendMessageEnd(self._tag or "")
            if not self._buf:
                return c.NEED_DATA
            n = min(len(self._buf), self._remaining, CHUNK)
            data = bytes(self._buf[:n])
            del self._buf[:n]
            self._remaining -= n
            return c.AppendChunk(self._tag or "", data)
        if mode == "skip_literal":
            n = min(len(self._buf), self._skip_remaining)
            del self._buf[:n]
            self._skip_remaining -= n
            if self._skip_remaining:
                return c.NEED_DATA
            self._mode = "skip_line"
            self._skip_tail = b""
            return None
        if mode == "skip_line":
            idx = self._buf.find(b"\n")
            if idx < 0:
                self._skip_tail = (self._skip_tail + bytes(self._buf))[-_TAIL:]
                self._buf.clear()
                return c.NEED_DATA
            tail = (self._skip_tail + bytes(self._buf[:idx]))[-_TAIL:]
            del self._buf[: idx + 1]
            tail = tail.rstrip(b"\r")
            m = _LITERAL_RE.search(tail)
            if m and m.group(3):  # non-synchronising: its data follows, skip it
                self._skip_remaining = int(m.group(2))
                self._mode = "skip_literal"
                return None
            # no literal, or a synchronising one we never acknowledge: the command ends
            self._mode = "line"
            return None
        raise AssertionError(mode)

    def _line_too_long(self, head: bytes, *, complete_tail: bytes | None) -> c.ParseError:
        if self._tag is None and not self._segs and not self._in_append:
            self._tag, _ = peek_tag_and_name(head[:256])
        err = self._error("line too long", kind="line_too_long")
        if complete_tail is not None:
            # The whole line was consumed: skip the literal it announces, if any.
            m = _LITERAL_RE.search(complete_tail)
            if m and m.group(3):
                self._skip_remaining = int(m.group(2))
                self._mode = "skip_literal"
            else:
                self._mode = "line"
        else:
            self._skip_tail = bytes(self._buf[-_TAIL:])
            self._buf.clear()
            self._mode = "skip_line"
        return err

    def _step_line(self) -> c.Event | None:
        line = self._take_line()
        if line is None:
            if len(self._buf) > self.max_line:
                return self._line_too_long(bytes(self._buf[:256]), complete_tail=None)
            return c.NEED_DATA
        if len(line) > self.max_line:
            return self._line_too_long(line[:256], complete_tail=line[-_TAIL:])

        if self._idle_tag is not None:
            tag = self._idle_tag
            self._idle_tag = None
            if line.upper() == b"DONE":
                return c.IdleDone()
            return c.ParseError(tag, "expected DONE")
        if self._sasl_tag is not None:
            tag = self._sasl_tag
            self._sasl_tag = None
            if line == b"*":
                return c.SaslResponse(cancelled=True)
            try:
                return c.SaslResponse(base64.b64decode(line, validate=True))
            except (binascii.Error, ValueError):
                return c.ParseError(tag, "bad base64 in SASL response")

        first_line = not self._segs and not self._in_append
        if first_line:
            if not line:
                return None  # RFC 9051 has no empty command; ignore blank lines
            self._tag, self._cmd_name = peek_tag_and_name(line[:256])
            if self._tag is None:
                return self._error("missing or invalid tag")
        m = _LITERAL_RE.search(line)
        size_s = int(m.group(2)) if m else 0
        nonsync = bool(m and m.group(3))
        self._cmd_size += len(line)
        if self._cmd_size > self.max_command:
            return self._error("command too long", skip_literal=size_s if nonsync else None)
        if self._in_append and self._append_close:
            # RFC 6855 §4: "UTF8" SP "(" literal8 ")": the line after the data opens
            # with the ")", then ends the command or starts the next message.
            if not line.startswith(b")"):
                return self._error("expected ')' after UTF8 APPEND data",
                                   skip_literal=size_s if nonsync else None)
            self._append_close = False
            line = line[1:]
            if m is not None:
                m = _LITERAL_RE.search(line)
        if m is None:
            return self._finish_command(line)
        text = line[: m.start()]
        binary = bool(m.group(1))
        if self._cmd_name == "APPEND" and not (
            first_line and _APPEND_MAILBOX_LITERAL_RE.match(text)
        ):
            return self._append_literal(text, size_s, nonsync, binary)
        if binary:
            return self._error("literal8 only in APPEND",
                               skip_literal=size_s if nonsync else None)
        if nonsync and not (self.literal_plus or self.literal_minus):
            return self._error("non-synchronising literal not supported",
                               skip_literal=size_s)
        if nonsync and not self.literal_plus and size_s > _LITERAL_MINUS_MAX:
            return self._error("non-synchronising literal over 4096 octets (LITERAL-)",
                               kind="toobig", code="TOOBIG", skip_literal=size_s)
        if size_s > self.max_literal or self._cmd_size + size_s > self.max_command:
            return self._error("literal too big", kind="toobig", code="TOOBIG", status="NO",
                               skip_literal=size_s if nonsync else None)
        self._segs.append(text)
        self._cmd_size += size_s
        self._remaining = size_s
        self._lit_binary = False
        self._mode = "literal"
        if not nonsync:
            return c.NeedContinuation(size_s, self._tag)
        return None

    def _finish_command(self, line: bytes) -> c.Event:
        if self._in_append:
            count = self._append_index
            atag = self._tag or ""
            self._reset_command()
            if line:
                return c.ParseError(atag, "junk after APPEND literal")
            return c.AppendDone(atag, count)
        self._segs.append(line)
        segs = self._segs
        tag = self._tag
        name = self._cmd_name
        self._reset_command()
        if name == "APPEND":
            return c.ParseError(tag, "APPEND without a message literal")
        try:
            return parse_command(segs, utf8=self.utf8, max_depth=self.max_depth)
        except GrammarError as e:
            return c.ParseError(tag, str(e), code=e.code, status="NO" if e.no else "BAD")
        except RecursionError:  # pragma: no cover - grammar is iterative; belt and braces
            return c.ParseError(tag, "command too complex")

    def _append_literal(self, text: bytes, size: int, nonsync: bool, binary: bool
                        ) -> c.Event:
        skip = size if nonsync else None
        first = self._append_index == 0
        try:
            head = parse_append_head([*self._segs, text], first=first, utf8=self.utf8)
        except GrammarError as e:
            return self._error(str(e), skip_literal=skip, code=e.code)
        if head.utf8 and not binary:
            return self._error("UTF8 APPEND data must be a literal8 (~{n})", skip_literal=skip)
        if size > _MAX_LITERAL_NUMBER or size > self.max_append:
            return self._error("message too big", kind="toobig", code="TOOBIG", status="NO",
                               skip_literal=skip)
        if nonsync and not self.literal_plus and size > _LITERAL_MINUS_MAX:
            return self._error("non-synchronising literal over 4096 octets (LITERAL-)",
                               kind="toobig", code="TOOBIG", skip_literal=skip)
        if nonsync and not (self.literal_plus or self.literal_minus):
            return self._error("non-synchronising literal not supported", skip_literal=skip)
        if first:
            assert head.mailbox is not None
            self._append_mailbox = head.mailbox
        self._segs = []
        self._remaining = size
        self._append_sync = not nonsync
        self._mode = "append_literal"
        self._in_append = False
        self._append_close = head.utf8
        ev = c.AppendMessage(self._tag or "", self._append_mailbox, head.flags,
                             head.internaldate, size, not nonsync, binary,
                             self._append_index, utf8=head.utf8)
        self._append_index += 1
        self._cmd_name = "APPEND"
        return ev
