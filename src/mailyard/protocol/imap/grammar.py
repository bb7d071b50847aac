"""RFC 9051 §9 / RFC 3501 §9 grammar: one assembled command -> a command object.

The framing layer (parser.py) hands over a command as alternating line text
and literal payloads: ``[b'A1 LOGIN ', Lit(b'joe'), b' ', Lit(b'pw'), b'']``.
:class:`Reader` walks that list; every ``parse_*`` function raises
:class:`GrammarError` on bad input and never recurses on client data:
nested lists (search keys, ID, QRESYNC) are parsed with explicit stacks or
fixed shapes, and the depth is bounded by ``max_depth``.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import datetime as _dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import search as s
from mailyard.protocol.imap.mailbox import MailboxNameError, wire_to_name, wire_to_pattern
from mailyard.protocol.imap.sequence import SequenceError, SequenceSet, parse_sequence_set


class GrammarError(ValueError):
    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


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


# -- search keys ---------------------------------------------------------------------------
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
    "RECENT": ("\\Recent", True), "OLD": ("\\Recent", False),
}
_HEADER_KEYS = {"FROM", "TO", "CC", "BCC", "SUBJECT"}
_DATE_KEYS = {
    "BEFORE": ("internal", "before"), "ON": ("internal", "on"), "SINCE": ("internal", "since"),
    "SENTBEFORE": ("sent", "before"), "SENTON": ("sent", "on"), "SENTSINCE": ("sent", "since"),
    "SAVEDBEFORE": ("save", "before"), "SAVEDON": ("save", "on"),
    "SAVEDSINCE": ("save", "since"),
}


def _charset_decoder(charset: str | None) -> Callable[[bytes], str]:
    name = (charset or "UTF-8").upper()
    if name in ("UTF-8", "US-ASCII", "UTF8"):
        def dec(raw: bytes) -> str:
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise GrammarError("search string is not UTF-8")
        return dec
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise GrammarError("unsupported charset", code="BADCHARSET (UTF-8 US-ASCII)")

    def dec2(raw: bytes) -> str:
        try:
            return info.decode(raw)[0]
        except (UnicodeDecodeError, ValueError):
            raise GrammarError(f"search string is not {name}")
    return dec2


def _search_atom(r: Reader, dec: Callable[[bytes], str]) -> s.SearchKey:
    """One search key that is not NOT / OR / parenthesised."""
    b = r.peek()
    if b is not None and (0x30 <= b <= 0x39 or b in b"*$"):
        return s.SeqKey(r.sequence_set())
    kw = r.keyword()
    if kw == "ALL":
        return s.All()
    if kw in _FLAG_KEYS:
        flag, present = _FLAG_KEYS[kw]
        key: s.SearchKey = s.HasFlag(flag)
        return key if present else s.Not(key)
    if kw == "NEW":
        return s.And((s.HasFlag("\\Recent"), s.Not(s.HasFlag("\\Seen"))))
    if kw in ("KEYWORD", "UNKEYWORD"):
        r.sp()
        key = s.HasFlag(r.atom())
        return key if kw == "KEYWORD" else s.Not(key)
    if kw in _HEADER_KEYS:
        r.sp()
        return s.Header(kw.capitalize() if kw != "CC" else "Cc", dec(r.astring()))
    if kw == "HEADER":
        r.sp()
        name = r.text_str(r.astring())
        r.sp()
        return s.Header(name, dec(r.astring()))
    if kw == "BODY":
        r.sp()
        return s.Body(dec(r.astring()))
    if kw == "TEXT":
        r.sp()
        return s.Text(dec(r.astring()))
    if kw in _DATE_KEYS:
        r.sp()
        which, op = _DATE_KEYS[kw]
        return s.DateKey(which, op, _search_date(r))  # type: ignore[arg-type]
    if kw in ("LARGER", "SMALLER"):
        r.sp()
        return s.SizeKey("larger" if kw == "LARGER" else "smaller", r.number(limit=MAX_NUMBER64))
    if kw == "UID":
        r.sp()
        return s.UidKey(r.sequence_set())
    if kw == "MODSEQ":
        r.sp()
        entry = etype = None
        if r.peek() == 0x22 or r.literal_next():
            entry = r.text_str(r.string())
            r.sp()
            etype = r.keyword()
            if etype not in ("PRIV", "SHARED", "ALL"):
                raise GrammarError("bad MODSEQ entry type")
            r.sp()
        return s.ModSeqKey(r.number(limit=MAX_NUMBER64), entry, etype)
    if kw in ("OLDER", "YOUNGER"):
        r.sp()
        return s.Within("older" if kw == "OLDER" else "younger", r.number(nz=True))
    if kw == "SAVEDATESUPPORTED":
        return s.SaveDateSupported()
    if kw in ("EMAILID", "THREADID"):
        r.sp()
        return s.ObjectIdKey(kw, r.atom())  # type: ignore[arg-type]
    raise GrammarError(f"unknown search key {kw[:30]}")


def parse_search_program(r: Reader, charset: str | None) -> s.SearchKey:
    """``search-key *(SP search-key)`` to the end of the command, iteratively.

    Frames on the stack: ["top"|"paren", children] collect keys; ["not"] and
    ["or", children] wait for 1 and 2 keys. Depth over ``r.max_depth`` is BAD.
    """
    dec = _charset_decoder(charset)
    stack: list[tuple[str, list[s.SearchKey]]] = [("top", [])]
    need_key = True  # a key must come next
    while True:
        if need_key:
            if len(stack) > r.max_depth:
                raise GrammarError("search keys nested too deeply")
            if r.maybe(b"("):
                stack.append(("paren", []))
                continue
            b = r.peek()
            if b in (0x4E, 0x6E, 0x4F, 0x6F):  # NOT / OR, checked by keyword
                save = r.pos
                kw = r._run(_ATOM_RUN).upper()
                if kw == b"NOT":
                    r.sp()
                    stack.append(("not", []))
                    continue
                if kw == b"OR":
                    r.sp()
                    stack.append(("or", []))
                    continue
                r.pos = save
            key = _search_atom(r, dec)
            # reduce
            while True:
                kind, kids = stack[-1]
                kids.append(key)
                if kind == "not":
                    stack.pop()
                    key = s.Not(kids[0])
                    continue
                if kind == "or":
                    if len(kids) == 2:
                        stack.pop()
                        key = s.Or(kids[0], kids[1])
                        continue
                    r.sp()  # second operand follows
                    need_key = True
                    break
                need_key = False
                break
            continue
        # after a complete key inside "top" or "paren"
        kind, kids = stack[-1]
        if r.maybe(b")"):
            if kind != "paren":
                raise GrammarError("unbalanced ')' in search")
            stack.pop()
            key = kids[0] if len(kids) == 1 else s.And(tuple(kids))
            while True:
                kind, kids = stack[-1]
                kids.append(key)
                if kind == "not":
                    stack.pop()
                    key = s.Not(kids[0])
                    continue
                if kind == "or":
                    if len(kids) == 2:
                        stack.pop()
                        key = s.Or(kids[0], kids[1])
                        continue
                    r.sp()
                    need_key = True
                break
            continue
        if r.at_end():
            if len(stack) != 1:
                raise GrammarError("unbalanced '(' in search")
            break
        r.sp()
        need_key = True
    kids = stack[0][1]
    return kids[0] if len(kids) == 1 else s.And(tuple(kids))


def _return_opts(r: Reader, allowed: frozenset[str]) -> tuple[str, ...]:
    r.char(b"(")
    opts: list[str] = []
    if not r.maybe(b")"):
        while True:
            opt = r.keyword()
            if opt not in allowed:
                raise GrammarError(f"unknown RETURN option {opt[:20]}")
            opts.append(opt)
            if r.maybe(b")"):
                break
            r.sp()
    return tuple(opts)


_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


def _search(r: Reader, tag: str, uid: bool) -> c.Search:
    r.sp()
    returns = None
    charset = None
    save = (r.si, r.pos)
    kw = r._run(_ATOM_RUN).upper()
    if kw == b"RETURN":
        r.sp()
        returns = _return_opts(r, _SEARCH_RETURN)
        r.sp()
        save = (r.si, r.pos)
        kw = r._run(_ATOM_RUN).upper()
    if kw == b"CHARSET":
        r.sp()
        charset = r.text_str(r.astring())
        r.sp()
    else:
        r.si, r.pos = save
    key = parse_search_program(r, charset)
    return c.Search(tag=tag, key=key, charset=charset, returns=returns, uid=uid)


_SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
                        "DISPLAYFROM", "DISPLAYTO"})


def _sort(r: Reader, tag: str, uid: bool) -> c.Sort:
    r.sp()
    returns = None
    if r.peek() in (0x52, 0x72):
        if r.keyword() != "RETURN":
            raise GrammarError("expected RETURN or sort criteria")
        r.sp()
        returns = _return_opts(r, _SEARCH_RETURN)
        r.sp()
    r.char(b"(")
    crit: list[tuple[bool, str]] = []
    while True:
        k = r.keyword()
        rev = False
        if k == "REVERSE":
            rev = True
            r.sp()
            k = r.keyword()
        if k not in _SORT_KEYS:
            raise GrammarError(f"unknown sort key {k[:20]}")
        crit.append((rev, k))
        if r.maybe(b")"):
            break
        r.sp()
    r.sp()
    charset = r.text_str(r.astring())
    r.sp()
    key = parse_search_program(r, charset)
    return c.Sort(tag=tag, criteria=tuple(crit), charset=charset, key=key, uid=uid,
                  returns=returns)


def _thread(r: Reader, tag: str, uid: bool) -> c.Thread:
    r.sp()
    alg = r.keyword()
    if alg not in ("ORDEREDSUBJECT", "REFERENCES", "REFS"):
        raise GrammarError("unknown THREAD algorithm")
    r.sp()
    charset = r.text_str(r.astring())
    r.sp()
    key = parse_search_program(r, charset)
    return c.Thread(tag=tag, algorithm=alg, charset=charset, key=key, uid=uid)


# -- FETCH -------------------------------------------------------------------------------
_SIMPLE_ATTS = frozenset({"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                          "RFC822.SIZE", "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID",
                          "MODSEQ", "PREVIEW", "EMAILID", "THREADID", "SAVEDATE"})
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


def _section(r: Reader, *, binary: bool) -> c.Section:
    r.char(b"[")
    tok = r._run(_SECTION_RUN).decode("ascii", "replace").upper()
    part: list[int] = []
    text: str | None = None
    fields: tuple[str, ...] = ()
    if tok:
        pieces = tok.split(".")
        i = 0
        while i < len(pieces) and pieces[i].isdigit():
            p = pieces[i]
            if p.startswith("0") or len(p) > 10 or int(p) > 4294967295:
                raise GrammarError("bad section part number")
            part.append(int(p))
            i += 1
        if len(part) > 64:
            raise GrammarError("section part nested too deeply")
        rest = ".".join(pieces[i:])
        if rest:
            if binary:
                raise GrammarError("BINARY takes only part numbers")
            allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"}
            if part:
                allowed.add("MIME")
            if rest not in allowed:
                raise GrammarError(f"bad section text {rest[:30]}")
            text = rest
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        r.sp()
        r.char(b"(")
        names: list[str] = []
        while True:
            raw = r.astring()
            if not raw or any(b <= 0x20 or b >= 0x7F or b == 0x3A for b in raw):
                raise GrammarError("bad header field name")
            names.append(raw.decode("ascii"))
            if r.maybe(b")"):
                break
            r.sp()
        fields = tuple(names)
    r.char(b"]")
    return c.Section(part=tuple(part), text=text, fields=fields)


def _partial(r: Reader) -> tuple[int, int] | None:
    if not r.maybe(b"<"):
        return None
    off = r.number(limit=MAX_NUMBER64)
    r.char(b".")
    length = r.number(nz=True, limit=MAX_NUMBER64)
    r.char(b">")
    return (off, length)


def _fetch_att(r: Reader) -> c.FetchItem:
    name = r._run(_FETCH_ATT_RUN).decode("ascii").upper()
    if not name:
        raise GrammarError("expected a fetch attribute")
    if name in ("BODY", "BODY.PEEK") and r.peek() == 0x5B:
        sec = _section(r, binary=False)
        return c.FetchItem(name="BODY", section=sec, peek=name == "BODY.PEEK",
                           partial=_partial(r))
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        sec = _section(r, binary=True)
        if name == "BINARY.SIZE":
            return c.FetchItem(name="BINARY.SIZE", section=sec)
        return c.FetchItem(name="BINARY", section=sec, peek=name == "BINARY.PEEK",
                           partial=_partial(r))
    if name == "BODY.PEEK":
        raise GrammarError("BODY.PEEK needs a section")
    if name == "PREVIEW":
        lazy = False
        if r.peek() == 0x20 and r._line[r.pos + 1 : r.pos + 2] == b"(":
            r.sp()
            r.char(b"(")
            while True:
                mod = r.keyword()
                if mod != "LAZY":
                    raise GrammarError("unknown PREVIEW modifier")
                lazy = True
                if r.maybe(b")"):
                    break
                r.sp()
        return c.FetchItem(name="PREVIEW", lazy=lazy)
    if name not in _SIMPLE_ATTS:
        raise GrammarError(f"unknown fetch attribute {name[:30]}")
    return c.FetchItem(name=name)


def _fetch(r: Reader, tag: str, uid: bool) -> c.Fetch:
    r.sp()
    seq = r.sequence_set()
    r.sp()
    items: list[c.FetchItem] = []
    macro = None
    if r.maybe(b"("):
        while True:
            items.append(_fetch_att(r))
            if len(items) > 100:
                raise GrammarError("too many fetch attributes")
            if r.maybe(b")"):
                break
            r.sp()
    else:
        save = r.pos
        word = r._run(_ATOM_RUN).decode("ascii").upper()
        if word in _MACROS:
            macro = word
            items = [c.FetchItem(name=n) for n in _MACROS[word]]
        else:
            r.pos = save
            items.append(_fetch_att(r))
    changedsince = None
    vanished = False
    if not r.at_end():
        r.sp()
        r.char(b"(")
        while True:
            mod = r.keyword()
            if mod == "CHANGEDSINCE":
                r.sp()
                changedsince = r.number(limit=MAX_NUMBER64)
            elif mod == "VANISHED":
                vanished = True
            else:
                raise GrammarError(f"unknown FETCH modifier {mod[:20]}")
            if r.maybe(b")"):
                break
            r.sp()
    # RFC 7162 §3.2.6: VANISHED needs UID FETCH and CHANGEDSINCE.
    if vanished and (not uid or changedsince is None):
        raise GrammarError("VANISHED requires UID FETCH with CHANGEDSINCE")
    if changedsince is not None and not any(i.name == "MODSEQ" for i in items):
        items.append(c.FetchItem(name="MODSEQ"))  # RFC 7162 §3.1.4.1
    if uid and not any(i.name == "UID" for i in items):
        items.insert(0, c.FetchItem(name="UID"))  # RFC 9051 §6.4.9
    r.expect_end()
    return c.Fetch(tag=tag, sequence=seq, items=tuple(items), uid=uid,
                   changedsince=changedsince, vanished=vanished, macro=macro)


def _store(r: Reader, tag: str, uid: bool) -> c.Store:
    r.sp()
    seq = r.sequence_set()
    r.sp()
    unchanged = None
    if r.maybe(b"("):
        if r.keyword() != "UNCHANGEDSINCE":
            raise GrammarError("unknown STORE modifier")
        r.sp()
        unchanged = r.number(limit=MAX_NUMBER64)
        r.char(b")")
        r.sp()
    mode = "set"
    if r.maybe(b"+"):
        mode = "add"
    elif r.maybe(b"-"):
        mode = "remove"
    item = r.keyword()
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise GrammarError("expected FLAGS or FLAGS.SILENT")
    r.sp()
    if r.peek() == 0x28:
        flags = r.flag_list()
    else:
        fl = [r.flag()]
        while not r.at_end():
            r.sp()
            fl.append(r.flag())
        flags = tuple(fl)
        if any(f.upper() == "\\RECENT" or f == "\\*" for f in flags):
            raise GrammarError("\\Recent cannot be set by a client")
    r.expect_end()
    return c.Store(tag=tag, sequence=seq, mode=mode, silent=item.endswith(".SILENT"),  # type: ignore[arg-type]
                   flags=flags, uid=uid, unchangedsince=unchanged)


# -- the rest ----------------------------------------------------------------------------
def _select(r: Reader, tag: str, readonly: bool) -> c.Select:
    r.sp()
    mbox = r.mailbox()
    condstore = False
    qresync = None
    if not r.at_end():
        r.sp()
        r.char(b"(")
        while True:
            p = r.keyword()
            if p == "CONDSTORE":
                condstore = True
            elif p == "QRESYNC":
                r.sp()
                r.char(b"(")
                uidvalidity = r.number(nz=True)
                r.sp()
                modseq = r.number(nz=True, limit=MAX_NUMBER64)
                known = None
                match = None
                if r.maybe(b" "):
                    if r.peek() != 0x28:
                        known = r.sequence_set()
                        if known.saved or known.uses_star:
                            raise GrammarError("bad known-uids")
                        r.maybe(b" ")
                    if r.maybe(b"("):
                        seqs = r.sequence_set()
                        r.sp()
                        uids = r.sequence_set()
                        r.char(b")")
                        match = (seqs, uids)
                r.char(b")")
                qresync = c.QresyncParams(uidvalidity=uidvalidity, modseq=modseq,
                                          known_uids=known, seq_match=match)
            else:
                raise GrammarError(f"unknown SELECT parameter {p[:20]}")
            if r.maybe(b")"):
                break
            r.sp()
    r.expect_end()
    return c.Select(tag=tag, mailbox=mbox, readonly=readonly, condstore=condstore,
                    qresync=qresync)


_USE_ATTRS = frozenset({"\\ALL", "\\ARCHIVE", "\\DRAFTS", "\\FLAGGED", "\\JUNK", "\\SENT",
                        "\\TRASH"})


def _create(r: Reader, tag: str) -> c.Create:
    r.sp()
    mbox = r.mailbox(for_create=True)
    uses: list[str] = []
    if not r.at_end():
        r.sp()
        r.char(b"(")
        if r.keyword() != "USE":
            raise GrammarError("unknown CREATE parameter")
        r.sp()
        for f in r.flag_list():
            if f.upper() not in _USE_ATTRS:
                raise GrammarError("unknown special-use attribute", code="USEATTR")
            uses.append(f.capitalize() if not f.startswith("\\") else "\\" + f[1:].capitalize())
        r.char(b")")
    r.expect_end()
    return c.Create(tag=tag, mailbox=mbox, special_use=tuple(uses))


_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


def _pattern(r: Reader, raw: bytes) -> str:
    try:
        return wire_to_pattern(raw, utf8=r.utf8)
    except MailboxNameError as e:
        raise GrammarError(f"bad mailbox pattern: {e}")


def _status_items(r: Reader) -> tuple[str, ...]:
    r.char(b"(")
    items: list[str] = []
    while True:
        it = r.keyword()
        if it not in c.STATUS_ITEMS:
            raise GrammarError(f"unknown STATUS item {it[:20]}")
        items.append(it)
        if r.maybe(b")"):
            break
        r.sp()
    return tuple(items)


def _list(r: Reader, tag: str) -> c.List:
    r.sp()
    selection: list[str] = []
    extended = False
    if r.maybe(b"("):
        extended = True
        if not r.maybe(b")"):
            while True:
                opt = r.keyword()
                if opt not in _LIST_SELECT:
                    raise GrammarError(f"unknown LIST selection option {opt[:20]}")
                selection.append(opt)
                if r.maybe(b")"):
                    break
                r.sp()
        r.sp()
        if "RECURSIVEMATCH" in selection and selection == ["RECURSIVEMATCH"]:
            # RFC 5258 §3: RECURSIVEMATCH alone is BAD
            raise GrammarError("RECURSIVEMATCH needs another selection option")
    reference = _pattern(r, r.astring())
    r.sp()
    patterns: list[str] = []
    if r.maybe(b"("):
        extended = True
        while True:
            patterns.append(_pattern(r, r.list_mailbox()))
            if r.maybe(b")"):
                break
            r.sp()
    else:
        patterns.append(_pattern(r, r.list_mailbox()))
    returns: list[str] = []
    status_items = None
    if not r.at_end():
        r.sp()
        if r.keyword() != "RETURN":
            raise GrammarError("expected RETURN")
        extended = True
        r.sp()
        r.char(b"(")
        if not r.maybe(b")"):
            while True:
                opt = r.keyword()
                if opt not in _LIST_RETURN:
                    raise GrammarError(f"unknown LIST return option {opt[:20]}")
                if opt == "STATUS":
                    r.sp()
                    status_items = _status_items(r)
                returns.append(opt)
                if r.maybe(b")"):
                    break
                r.sp()
    r.expect_end()
    return c.List(tag=tag, reference=reference, patterns=tuple(patterns),
                  selection=tuple(selection), returns=tuple(returns),
                  status_items=status_items, extended=extended)


def _id(r: Reader, tag: str) -> c.Id:
    r.sp()
    if r.peek() != 0x28:
        if r.nstring() is not None:
            raise GrammarError("ID takes a list or NIL")
        r.expect_end()
        return c.Id(tag=tag, params=None)
    r.char(b"(")
    params: list[tuple[str, str | None]] = []
    if not r.maybe(b")"):
        while True:
            k = r.string()
            r.sp()
            v = r.nstring()
            # RFC 2971 §3.3: at most 30 pairs, names 30 octets, values 1024.
            if len(params) >= 30 or len(k) > 30 or (v is not None and len(v) > 1024):
                raise GrammarError("ID parameters over RFC 2971 limits")
            params.append((k.decode("utf-8", "replace"),
                           None if v is None else v.decode("utf-8", "replace")))
            if r.maybe(b")"):
                break
            r.sp()
    r.expect_end()
    return c.Id(tag=tag, params=tuple(params))


def _authenticate(r: Reader, tag: str) -> c.Authenticate:
    r.sp()
    mech = r.keyword()
    initial = None
    if not r.at_end():
        r.sp()
        raw = r._run(_NONSPACE_RUN)
        if raw == b"=":
            initial = b""
        else:
            try:
                initial = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise GrammarError("bad base64 initial response")
            if not initial:
                raise GrammarError("empty initial response must be '='")
    r.expect_end()
    return c.Authenticate(tag=tag, mechanism=mech, initial_response=initial)


def _setquota(r: Reader, tag: str) -> c.SetQuota:
    r.sp()
    root = r.text_str(r.astring())
    r.sp()
    r.char(b"(")
    limits: list[tuple[str, int]] = []
    if not r.maybe(b")"):
        while True:
            res = r.keyword()
            r.sp()
            limits.append((res, r.number(limit=MAX_NUMBER64)))
            if r.maybe(b")"):
                break
            r.sp()
    r.expect_end()
    return c.SetQuota(tag=tag, root=root, limits=tuple(limits))


def _no_args(cls: type[c.Command]) -> Callable[[Reader, str], c.Command]:
    def parse(r: Reader, tag: str) -> c.Command:
        r.expect_end()
        return cls(tag=tag)
    return parse


def _one_mailbox(cls: Callable[..., c.Command]) -> Callable[[Reader, str], c.Command]:
    def parse(r: Reader, tag: str) -> c.Command:
        r.sp()
        m = r.mailbox()
        r.expect_end()
        return cls(tag=tag, mailbox=m)
    return parse


def _login(r: Reader, tag: str) -> c.Login:
    r.sp()
    user = r.text_str(r.astring())
    r.sp()
    pw = r.text_str(r.astring())
    r.expect_end()
    return c.Login(tag=tag, username=user, password=pw)


def _enable(r: Reader, tag: str) -> c.Enable:
    caps: list[str] = []
    while not r.at_end():
        r.sp()
        caps.append(r.keyword())
    if not caps:
        raise GrammarError("ENABLE needs a capability")
    return c.Enable(tag=tag, capabilities=tuple(caps))


def _rename(r: Reader, tag: str) -> c.Rename:
    r.sp()
    old = r.mailbox()
    r.sp()
    new = r.mailbox(for_create=True)
    r.expect_end()
    return c.Rename(tag=tag, old=old, new=new)


def _lsub(r: Reader, tag: str) -> c.Lsub:
    r.sp()
    ref = _pattern(r, r.astring())
    r.sp()
    pat = _pattern(r, r.list_mailbox())
    r.expect_end()
    return c.Lsub(tag=tag, reference=ref, pattern=pat)


def _status(r: Reader, tag: str) -> c.Status:
    r.sp()
    m = r.mailbox()
    r.sp()
    items = _status_items(r)
    r.expect_end()
    return c.Status(tag=tag, mailbox=m, items=items)


def _getquota(r: Reader, tag: str) -> c.GetQuota:
    r.sp()
    root = r.text_str(r.astring())
    r.expect_end()
    return c.GetQuota(tag=tag, root=root)


def _compress(r: Reader, tag: str) -> c.Compress:
    r.sp()
    mech = r.keyword()
    r.expect_end()
    return c.Compress(tag=tag, mechanism=mech)


def _copy_move(cls: type[c.Copy] | type[c.Move]) -> Callable[[Reader, str, bool], c.Command]:
    def parse(r: Reader, tag: str, uid: bool) -> c.Command:
        r.sp()
        seq = r.sequence_set()
        r.sp()
        m = r.mailbox()
        r.expect_end()
        return cls(tag=tag, sequence=seq, mailbox=m, uid=uid)
    return parse


def _expunge(r: Reader, tag: str, uid: bool) -> c.Expunge:
    seq = None
    if uid:
        r.sp()
        seq = r.sequence_set()
    r.expect_end()
    return c.Expunge(tag=tag, uid=uid, sequence=seq)


_PLAIN: dict[str, Callable[[Reader, str], c.Command]] = {
    "CAPABILITY": _no_args(c.Capability), "NOOP": _no_args(c.Noop),
    "LOGOUT": _no_args(c.Logout), "STARTTLS": _no_args(c.StartTLS),
    "NAMESPACE": _no_args(c.Namespace), "IDLE": _no_args(c.Idle),
    "CHECK": _no_args(c.Check), "CLOSE": _no_args(c.Close), "UNSELECT": _no_args(c.Unselect),
    "AUTHENTICATE": _authenticate, "LOGIN": _login, "ENABLE": _enable,
    "SELECT": lambda r, t: _select(r, t, False), "EXAMINE": lambda r, t: _select(r, t, True),
    "CREATE": _create, "DELETE": _one_mailbox(c.Delete), "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(c.Subscribe), "UNSUBSCRIBE": _one_mailbox(c.Unsubscribe),
    "LIST": _list, "LSUB": _lsub, "STATUS": _status, "ID": _id,
    "GETQUOTA": _getquota, "GETQUOTAROOT": _one_mailbox(c.GetQuotaRoot),
    "SETQUOTA": _setquota, "COMPRESS": _compress,
}
_UIDABLE: dict[str, Callable[[Reader, str, bool], c.Command]] = {
    "FETCH": _fetch, "STORE": _store, "COPY": _copy_move(c.Copy), "MOVE": _copy_move(c.Move),
    "SEARCH": _search, "SORT": _sort, "THREAD": _thread, "EXPUNGE": _expunge,
}


def peek_tag_and_name(line: bytes) -> tuple[str | None, str | None]:
    """The tag and upper-case command name at the start of a line, if valid."""
    r = Reader([line])
    try:
        tag = r.tag()
    except GrammarError:
        return None, None
    if not r.maybe(b" "):
        return tag, None
    name = r._run(_ATOM_RUN).decode("ascii").upper()
    if name == "UID" and r.maybe(b" "):
        name = "UID " + r._run(_ATOM_RUN).decode("ascii").upper()
    return tag, name or None


def parse_command(segs: list[bytes | Lit], *, utf8: bool = False, max_depth: int = 64
                  ) -> c.Command:
    """Parse one complete command (without APPEND, which parser.py streams)."""
    r = Reader(segs, utf8=utf8, max_depth=max_depth)
    tag = r.tag()
    r.sp()
    name = r.keyword()
    if name == "UID":
        r.sp()
        sub = r.keyword()
        fn = _UIDABLE.get(sub)
        if fn is None:
            raise GrammarError(f"unknown UID command {sub[:20]}")
        return fn(r, tag, True)
    if name in _UIDABLE:
        if name == "EXPUNGE":
            r.expect_end()
            return c.Expunge(tag=tag)
        return _UIDABLE[name](r, tag, False)
    fn2 = _PLAIN.get(name)
    if fn2 is None:
        raise GrammarError(f"unknown command {name[:20]}")
    return fn2(r, tag)


@dataclass(frozen=True, slots=True)
class AppendHead:
    mailbox: str | None
    flags: tuple[str, ...]
    internaldate: _dt.datetime | None


def parse_append_head(segs: list[bytes | Lit], *, first: bool, utf8: bool = False
                      ) -> AppendHead:
    """The part of an APPEND before a message literal.

    ``first``: ``tag APPEND mailbox [SP flag-list] [SP date-time] SP``;
    otherwise (MULTIAPPEND, RFC 3502) ``SP [flag-list SP] [date-time SP]``.
    """
    r = Reader(segs, utf8=utf8)
    mbox = None
    if first:
        r.tag()
        r.sp()
        if r.keyword() != "APPEND":
            raise GrammarError("not APPEND")
        r.sp()
        mbox = r.mailbox()
    r.sp()
    flags: tuple[str, ...] = ()
    when = None
    if r.peek() == 0x28:
        flags = r.flag_list()
        r.sp()
    if r.peek() == 0x22:
        when = _date_time(r)
        r.sp()
    r.expect_end()
    return AppendHead(mailbox=mbox, flags=flags, internaldate=when)
