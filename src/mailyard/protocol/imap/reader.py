"""Tokens of the RFC 9051 §9 grammar: a :class:`Reader` over an assembled command.

The framing layer (parser.py) hands over a command as alternating line text
and literal payloads: ``[b'A1 LOGIN ', Lit(b'joe'), b' ', Lit(b'pw'), b'']``.
:class:`Reader` walks that list. Token runs use precompiled byte-class regexes
(the hot path of parsing). Nothing here recurses on client data.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from mailyard.protocol.imap.mailbox import MailboxNameError, wire_to_name
from mailyard.protocol.imap.sequence import SequenceError, SequenceSet, parse_sequence_set


class GrammarError(ValueError):
    def __init__(self, message: str, code: str | None = None, *, no: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.no = no  # a tagged NO, not BAD: well-formed, but not something we do


@dataclass(frozen=True, slots=True)
class Lit:
    data: bytes
    binary: bool = False  # literal8 "~{n}"


# RFC 9051 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards /
# quoted-specials / resp-specials
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')


def _is_atom_char(b: int) -> bool:
    return 0x20 < b < 0x7F and b not in _ATOM_SPECIALS


def _is_astring_char(b: int) -> bool:
    return _is_atom_char(b) or b == 0x5D  # "]"


def _is_tag_char(b: int) -> bool:
    return _is_astring_char(b) and b != 0x2B  # not "+"


def _is_list_char(b: int) -> bool:
    return _is_astring_char(b) or b in (0x25, 0x2A)  # "%" "*"


MAX_NUMBER64 = 2**63 - 1  # RFC 9051 §9 number64


def _class_re(pred: Callable[[int], bool]) -> re.Pattern[bytes]:
    """A compiled ``[...]*`` for the bytes where ``pred`` holds (runs are the hot path)."""
    chars = b"".join(re.escape(bytes([b])) for b in range(256) if pred(b))
    return re.compile(b"[" + chars + b"]*")


_ATOM_RUN = _class_re(_is_atom_char)
_ASTRING_RUN = _class_re(_is_astring_char)
_TAG_RUN = _class_re(_is_tag_char)
_LIST_RUN = _class_re(_is_list_char)
_DIGITS_RUN = _class_re(lambda b: 0x30 <= b <= 0x39)
_SEQ_RUN = _class_re(lambda b: (0x30 <= b <= 0x39) or b in b"*:,$")
_DATE_RUN = _class_re(lambda b: b not in b" ()")
_SECTION_RUN = _class_re(lambda b: b not in b" ]")
_FETCH_ATT_RUN = _class_re(lambda b: _is_atom_char(b) and b not in b"[<")
_NONSPACE_RUN = _class_re(lambda b: b != 0x20)


class Reader:
    def __init__(self, segs: list[bytes | Lit], *, utf8: bool = False,
                 max_depth: int = 64) -> None:
        self.segs = segs
        self.si = 0
        self.pos = 0
        self.utf8 = utf8
        self.max_depth = max_depth

    # -- position ----------------------------------------------------------------
    @property
    def _line(self) -> bytes:
        seg = self.segs[self.si]
        assert isinstance(seg, bytes)
        return seg

    def peek(self) -> int | None:
        line = self._line
        return line[self.pos] if self.pos < len(line) else None

    def literal_next(self) -> bool:
        return self.pos >= len(self._line) and self.si + 1 < len(self.segs)

    def at_end(self) -> bool:
        return self.pos >= len(self._line) and self.si + 1 >= len(self.segs)

    def expect_end(self) -> None:
        if not self.at_end():
            raise GrammarError("unexpected extra arguments")

    def take_literal(self) -> Lit:
        lit = self.segs[self.si + 1]
        assert isinstance(lit, Lit)
        self.si += 2
        self.pos = 0
        return lit

    def char(self, ch: bytes) -> None:
        if self.peek() != ch[0]:
            raise GrammarError(f"expected {ch.decode()!r}")
        self.pos += 1

    def maybe(self, ch: bytes) -> bool:
        if self.peek() == ch[0]:
            self.pos += 1
            return True
        return False

    def sp(self) -> None:
        self.char(b" ")

    def _run(self, run: re.Pattern[bytes]) -> bytes:
        """The longest run of bytes matched by one of the ``_*_RUN`` classes."""
        m = run.match(self._line, self.pos)
        assert m is not None  # "[...]*" always matches
        self.pos = m.end()
        return m.group()

    # -- tokens ------------------------------------------------------------------
    def atom(self) -> str:
        tok = self._run(_ATOM_RUN)
        if not tok:
            raise GrammarError("expected an atom")
        return tok.decode("ascii")

    def keyword(self) -> str:
        return self.atom().upper()

    def tag(self) -> str:
        tok = self._run(_TAG_RUN)
        if not tok:
            raise GrammarError("missing or invalid tag")
        return tok.decode("ascii")

    def number(self, *, nz: bool = False, limit: int = 4294967295) -> int:
        tok = self._run(_DIGITS_RUN)
        if not tok or len(tok) > 19:
            raise GrammarError("expected a number")
        n = int(tok)
        if n > limit or (nz and n == 0):
            raise GrammarError("number out of range")
        return n

    def quoted(self) -> bytes:
        self.char(b'"')
        line = self._line
        out = bytearray()
        i = self.pos
        n = len(line)
        while True:
            if i >= n:
                raise GrammarError("unterminated quoted string")
            b = line[i]
            if b == 0x22:
                break
            if b == 0x5C:
                i += 1
                if i >= n or line[i] not in (0x22, 0x5C):
                    raise GrammarError("bad escape in quoted string")
                b = line[i]
            elif b in (0x0D, 0x0A, 0x00):
                raise GrammarError("bad character in quoted string")
            out.append(b)
            i += 1
        self.pos = i + 1
        return bytes(out)

    def string(self) -> bytes:
        if self.literal_next():
            return self.take_literal().data
        if self.peek() == 0x22:
            return self.quoted()
        raise GrammarError("expected a string")

    def astring(self) -> bytes:
        if self.literal_next() or self.peek() == 0x22:
            return self.string()
        tok = self._run(_ASTRING_RUN)
        if not tok:
            raise GrammarError("expected a string or atom")
        return tok

    def nstring(self) -> bytes | None:
        if self.peek() in (0x4E, 0x6E):  # N/n
            save = self.pos
            if self._run(_ATOM_RUN).upper() == b"NIL":
                return None
            self.pos = save
        return self.string()

    def list_mailbox(self) -> bytes:
        if self.literal_next() or self.peek() == 0x22:
            return self.string()
        tok = self._run(_LIST_RUN)
        if not tok:
            raise GrammarError("expected a mailbox pattern")
        return tok

    def text_str(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GrammarError("string is not UTF-8")

    def mailbox(self, *, for_create: bool = False) -> str:
        raw = self.astring()
        try:
            return wire_to_name(raw, utf8=self.utf8, for_create=for_create)
        except MailboxNameError as e:
            raise GrammarError(f"bad mailbox name: {e}")

    def sequence_set(self) -> SequenceSet:
        tok = self._run(_SEQ_RUN)
        try:
            return parse_sequence_set(tok.decode("ascii"))
        except SequenceError as e:
            raise GrammarError(f"bad sequence set: {e}")

    def flag(self) -> str:
        if self.maybe(b"\\"):
            if self.maybe(b"*"):
                return "\\*"
            return "\\" + self.atom()
        return self.atom()

    def flag_list(self, *, allow_recent: bool = False) -> tuple[str, ...]:
        self.char(b"(")
        flags: list[str] = []
        if not self.maybe(b")"):
            while True:
                flags.append(self.flag())
                if self.maybe(b")"):
                    break
                self.sp()
        for f in flags:
            if f.upper() == "\\RECENT" and not allow_recent:
                raise GrammarError("\\Recent cannot be set by a client")
            if f == "\\*":
                raise GrammarError("\\* is not a flag")
        return tuple(flags)


# -- dates -------------------------------------------------------------------------------
_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
_DATE_RE = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
_DATETIME_RE = re.compile(
    rb'"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"')


def _search_date(r: Reader) -> _dt.date:
    quoted = r.peek() == 0x22
    raw = r.quoted() if quoted else r._run(_DATE_RUN)
    m = _DATE_RE.fullmatch(raw)
    if not m or m.group(2).upper().decode() not in _MONTHS:
        raise GrammarError("bad date")
    try:
        return _dt.date(int(m.group(3)), _MONTHS[m.group(2).upper().decode()], int(m.group(1)))
    except ValueError:
        raise GrammarError("bad date")


def _date_time(r: Reader) -> _dt.datetime:
    """RFC 9051 §9 date-time, e.g. ``"17-Jul-1996 02:44:25 -0700"``."""
    line = r._line
    m = _DATETIME_RE.match(line, r.pos)
    if not m:
        raise GrammarError("bad date-time")
    r.pos = m.end()
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    month = _MONTHS.get(mon.upper().decode())
    if month is None:
        raise GrammarError("bad month in date-time")
    try:
        off = _dt.timedelta(hours=int(zh), minutes=int(zm))
        tz = _dt.timezone(off if sign == b"+" else -off)
        return _dt.datetime(int(year), month, int(day.strip()), int(hh), int(mm), int(ss),
                            tzinfo=tz)
    except ValueError:
        raise GrammarError("bad date-time")


