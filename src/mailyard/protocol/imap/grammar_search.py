"""SEARCH / SORT / THREAD grammar (RFC 9051 §6.4.4, RFC 5256, RFC 4731 ESEARCH).

Search programs are parsed with an explicit stack, never by recursion, and the
nesting depth is bounded by ``Reader.max_depth`` (deeper is BAD).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import search as s
from mailyard.protocol.imap.reader import (
    _ATOM_RUN,
    MAX_NUMBER64,
    GrammarError,
    Reader,
    _search_date,
)

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


_BADCHARSET = ("BADCHARSET (UTF-8 US-ASCII ISO-8859-1 ISO-8859-15 WINDOWS-1252 KOI8-R "
               "ISO-2022-JP SHIFT_JIS EUC-JP EUC-KR GB2312 BIG5)")


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
        # RFC 9051 §6.4.4: an unsupported charset is a tagged NO (not BAD), with
        # BADCHARSET listing charsets we do support (the common ones of the many we do).
        raise GrammarError("unsupported charset", code=_BADCHARSET, no=True)

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


