"""RFC 9051 §9 / RFC 3501 §9 grammar: one assembled command -> a command object.

Tokens come from reader.py, search programs from grammar_search.py. Every
``_parse`` function raises :class:`GrammarError` on bad input and never
recurses on client data.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap.grammar_search import _search, _sort, _thread
from mailyard.protocol.imap.mailbox import MailboxNameError, wire_to_pattern
from mailyard.protocol.imap.reader import (
    _ATOM_RUN,
    _FETCH_ATT_RUN,
    _NONSPACE_RUN,
    _SECTION_RUN,
    MAX_NUMBER64,
    GrammarError,
    Lit,
    Reader,
    _date_time,
)

__all__ = ["GrammarError", "Lit", "parse_append_head", "parse_command", "peek_tag_and_name"]

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
    utf8: bool = False  # RFC 6855 §4 ``UTF8 (`` opens the data: literal8, then ")"


_UTF8_DATA = b"UTF8 ("


def parse_append_head(segs: list[bytes | Lit], *, first: bool, utf8: bool = False
                      ) -> AppendHead:
    """The part of an APPEND before a message literal.

    ``first``: ``tag APPEND mailbox [SP flag-list] [SP date-time] SP``;
    otherwise (MULTIAPPEND, RFC 3502) ``SP [flag-list SP] [date-time SP]``.
    Either may end in ``UTF8 (`` (RFC 6855 §4: ``append-data =/ "UTF8" SP "("
    literal8 ")"``), allowed only once the client enabled UTF8=ACCEPT (``utf8``);
    the framing layer checks that a literal8 follows and takes the ")" after it.
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
    wrapped = (r.si + 1 == len(r.segs)
               and r._line[r.pos :].upper() == _UTF8_DATA)
    if wrapped and not utf8:
        raise GrammarError("UTF8 APPEND data needs ENABLE UTF8=ACCEPT")
    if not wrapped:
        r.expect_end()
    return AppendHead(mailbox=mbox, flags=flags, internaldate=when, utf8=wrapped)
