"""SORT and THREAD (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO): pure algorithms.

The session picks the messages (SEARCH), wraps each in a ``SortItem`` and calls
``sort_messages`` or ``thread_messages``; ``format_threads`` writes the THREAD
response data. Nothing here touches storage, sockets or the clock.

Theory of operation
-------------------
* Strings are compared after the i;unicode-casemap collation (RFC 5051: simple
  titlecase, then NFKD); ``casemap`` does it.
* The base subject (RFC 5256 §2.1) is extracted by one left-to-right scan over
  index bounds: no regex backtracking and no re-slicing, so a subject of
  "Re: " * 100_000 or "[a]" * 100_000 costs linear time.
* The sent date (RFC 5256 §2.2) is the Date: header adjusted to UTC, falling back
  to the internal date when missing or unparseable.
* THREAD=REFERENCES (RFC 5256 §4) keeps its containers in plain lists; every tree
  walk (pruning, sorting, serialising) uses an explicit stack, so a References
  chain of any depth cannot raise RecursionError.

Header values may be given as ``str`` or ``bytes`` exactly as in the message
(RFC 2047 encoded-words are decoded here).

Wiring (server side), for the messages a SORT/THREAD search matched::

    items = [SortItem(seq=..., uid=..., size=..., internaldate=..., headers=...)]
    numbers = sort_messages(items, cmd.criteria, uid=cmd.uid)        # * SORT 3 1 2
    data = format_threads(thread_messages(items, cmd.algorithm, uid=cmd.uid))
    # -> "* THREAD " + data
"""

from __future__ import annotations

import calendar
import email.utils
import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mailyard.message.envelope import parse_address_list
from mailyard.message.parse import decode_header

__all__ = [
    "SORT_KEYS",
    "THREAD_ALGORITHMS",
    "SortItem",
    "ThreadNode",
    "base_subject",
    "casemap",
    "format_threads",
    "sent_date",
    "sort_messages",
    "subject_info",
    "thread_messages",
    "thread_orderedsubject",
    "thread_references",
    "thread_refs",
]

SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
                       "DISPLAYFROM", "DISPLAYTO"})
THREAD_ALGORITHMS = frozenset({"ORDEREDSUBJECT", "REFERENCES", "REFS"})

# A References header names the ancestors oldest first. We keep the last
# MAX_REFERENCES of them: the nearest ancestors decide the tree, and the cap bounds
# the loop checks (each is a walk up one ancestor chain) per message.
# 1,000 ids is ~40 KB of header, far past any real thread.
MAX_REFERENCES = 1000
# Steps of ancestor walking allowed per THREAD command (see _LoopGuard): real
# threads are shallow and most links need no walk at all.
LOOP_CHECK_STEPS = 5_000_000
LOOP_CHECK_STEPS_PER_MESSAGE = 100

HeaderValue = str | bytes
HeaderSource = Mapping[str, HeaderValue] | Callable[[str], HeaderValue | None]


@dataclass(frozen=True, slots=True)
class SortItem:
    """One message as SORT/THREAD see it.

    ``headers`` is a mapping (names matched case-insensitively) or a getter
    ``name -> value | None``. The fields read are Subject, Date, From, To, Cc,
    Message-ID, References and In-Reply-To. ``internaldate`` is unix time.
    """

    seq: int
    uid: int
    size: int
    internaldate: float
    headers: HeaderSource = field(default_factory=dict)

    def header(self, name: str) -> bytes | None:
        """The first value of header ``name`` as bytes, or None."""
        h = self.headers
        v: HeaderValue | None
        if isinstance(h, Mapping):
            v = h.get(name)
            if v is None:
                v = h.get(name.lower())
            if v is None:
                low = name.lower()
                for k, kv in h.items():
                    if isinstance(k, str) and k.lower() == low:
                        v = kv
                        break
        else:
            v = h(name)
        if v is None:
            return None
        if isinstance(v, bytes):
            return v
        try:
            return v.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return v.encode("utf-8", "replace")


# -- i;unicode-casemap (RFC 5051) ----------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def _title_char(ch: str) -> str:
    t = ch.title()
    # RFC 5051 §2 uses the simple (one-to-one) titlecase mapping; Python's
    # str.title() applies the full one (ß -> Ss), so keep the char then.
    return t if len(t) == 1 else ch


def casemap(text: str) -> str:
    """The i;unicode-casemap canonical form (RFC 5051 §2): titlecase, then NFKD."""
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFKD", "".join(map(_title_char, text)))


# -- base subject (RFC 5256 §2.1) ----------------------------------------------------------
_WS_RE = re.compile(r"[ \t\r\n]+")


def _blob_end(s: str, i: int, end: int) -> int:
    """If a subj-blob ("[" *BLOBCHAR "]" *WSP) starts at ``i``, the index after
    it, else -1."""
    if i >= end or s[i] != "[":
        return -1
    j = i + 1
    while j < end:
        ch = s[j]
        if ch == "]":
            j += 1
            while j < end and s[j] == " ":
                j += 1
            return j
        if ch == "[":
            return -1
        j += 1
    return -1


def _refwd_end(s: str, i: int, end: int) -> int:
    """If a subj-refwd (("re" / ("fw" ["d"])) *WSP [subj-blob] ":") starts at
    ``i``, the index after it, else -1."""
    head = s[i : i + 2].upper()
    if head == "RE":
        j = i + 2
    elif head == "FW":
        j = i + 2
        if j < end and s[j] in "dD":
            j += 1
    else:
        return -1
    while j < end and s[j] == " ":
        j += 1
    b = _blob_end(s, j, end)
    if b >= 0:
        j = b
    if j < end and s[j] == ":":
        return j + 1
    return -1


def _extract(s: str) -> tuple[str, bool]:
    """RFC 5256 §2.1 steps (2)-(6) on normalised text; returns (base subject,
    is reply or forward). Everything works on [pos, end) bounds: linear time."""
    pos, end = 0, len(s)
    refwd = False
    while True:
        # (2) trailing subj-trailer = "(fwd)" / WSP, repeatedly.
        while end > pos:
            if s[end - 1] == " ":
                end -= 1
            elif end - pos >= 5 and s[end - 5 : end].upper() == "(FWD)":
                end -= 5
                refwd = True
            else:
                break
        # (3)-(5): leaders, then one blob if a non-empty base remains; repeat.
        no_leader_before = -1  # memo: step (3) is known to fail for pos < this
        while True:
            # (3) subj-leader = (*subj-blob subj-refwd) / WSP
            while pos < end and pos >= no_leader_before:
                if s[pos] == " ":
                    pos += 1
                    continue
                q = pos
                while (b := _blob_end(s, q, end)) >= 0:
                    q = b
                r = _refwd_end(s, q, end)
                if r < 0:
                    # Stripping blobs one at a time (step 4) lands on blob
                    # boundaries before q, where this same test fails again.
                    no_leader_before = q + 1
                    break
                pos = r
                refwd = True
            # (4) a leading subj-blob goes if a non-empty subj-base is left.
            b = _blob_end(s, pos, end)
            if b < 0 or b >= end:
                break
            pos = b
        # (6) "[fwd:" subject "]" -> subject, and again from (2).
        if end - pos >= 6 and s[pos : pos + 5].upper() == "[FWD:" and s[end - 1] == "]":
            pos += 5
            end -= 1
            refwd = True
            continue
        return s[pos:end], refwd


def subject_info(raw_subject: str | bytes | None) -> tuple[str, bool]:
    """(base subject, is reply or forward) per RFC 5256 §2.1 and §4 (REFERENCES
    step 5: the extraction removed a subj-refwd, a "(fwd)" trailer or a
    "[fwd: ...]" wrapper). The base subject is in i;unicode-casemap form."""
    if raw_subject is None:
        return "", False
    if isinstance(raw_subject, str):
        try:
            raw = raw_subject.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = raw_subject.encode("utf-8", "replace")
    else:
        raw = raw_subject
    # (1) RFC 2047 -> Unicode; fold case; tabs, continuations, runs of spaces -> " ".
    text = _WS_RE.sub(" ", casemap(decode_header(raw)))
    return _extract(text)


def base_subject(raw_subject: str | bytes | None) -> str:
    """The RFC 5256 §2.1 base subject, case-folded (i;unicode-casemap)."""
    return subject_info(raw_subject)[0]


# -- sent date (RFC 5256 §2.2) -------------------------------------------------------------
def _parse_date(value: bytes | None) -> float | None:
    if not value:
        return None
    try:
        t = email.utils.parsedate_tz(value.decode("ascii", "replace"))
    except Exception:  # the stdlib parser has raised on odd input in past releases
        return None
    if t is None:
        return None
    year, month, day, hour, minute, sec = t[:6]
    tz = t[9] or 0  # no zone / -0000: take it as UTC
    if not (1 <= year <= 9999 and 1 <= month <= 12 and 0 <= hour <= 23
            and 0 <= minute <= 59 and 0 <= sec <= 60 and abs(tz) < 100 * 3600):
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, sec, 0, 0, 0)) - tz)


def sent_date(item: SortItem) -> float:
    """RFC 5256 §2.2: the Date: header in UTC (unix time), else the internal date."""
    d = _parse_date(item.header("Date"))
    return item.internaldate if d is None else d


# -- addresses -----------------------------------------------------------------------------
def _first_address(item: SortItem, name: str) -> list[bytes | None] | None:
    addrs = parse_address_list(item.header(name))
    for a in addrs or ():
        if a[3] is not None:  # group start/end markers have a NIL host
            return a
    return None


def _addr_mailbox(item: SortItem, name: str) -> str:
    """RFC 5256 §3 FROM/TO/CC: the addr-mailbox of the first address, or ""."""
    a = _first_address(item, name)
    if a is None or a[2] is None:
        return ""
    return casemap(a[2].decode("utf-8", "replace"))


def _display(item: SortItem, name: str) -> str:
    """RFC 5957 §3 DISPLAYFROM/DISPLAYTO: the (RFC 2047 decoded) display name of
    the first address; without one, its addr-spec (mailbox@host)."""
    a = _first_address(item, name)
    if a is None:
        return ""
    if a[0]:
        disp = _WS_RE.sub(" ", decode_header(a[0])).strip()
        if disp:
            return casemap(disp)
    mbox = (a[2] or b"").decode("utf-8", "replace")
    host = (a[3] or b"").decode("utf-8", "replace")
    return casemap(f"{mbox}@{host}" if host else mbox)


# -- SORT (RFC 5256 §3) --------------------------------------------------------------------
_KEY_FUNCS: dict[str, Callable[[SortItem], str | float | int]] = {
    "ARRIVAL": lambda m: m.internaldate,
    "CC": lambda m: _addr_mailbox(m, "Cc"),
    "DATE": sent_date,
    "FROM": lambda m: _addr_mailbox(m, "From"),
    "SIZE": lambda m: m.size,
    "SUBJECT": lambda m: base_subject(m.header("Subject")),
    "TO": lambda m: _addr_mailbox(m, "To"),
    "DISPLAYFROM": lambda m: _display(m, "From"),
    "DISPLAYTO": lambda m: _display(m, "To"),
}


def sort_messages(items: Iterable[SortItem], criteria: Sequence[tuple[bool, str]],
                  *, uid: bool = False) -> list[int]:
    """Order ``items`` by ``criteria`` — ``(reverse, KEY)`` pairs as in
    ``commands.Sort.criteria`` — and return their sequence numbers (UIDs when
    ``uid``). Exact ties keep mailbox order: REVERSE does not reverse that
    implicit last key (RFC 5256 §3). Raises ValueError for an unknown key."""
    for _, key in criteria:
        if key not in _KEY_FUNCS:
            raise ValueError(f"unknown sort key {key!r}")
    msgs = sorted(items, key=lambda m: m.seq)
    # Stable sorts from the least significant key up; Python keeps stability
    # with reverse=True, so ties stay in sequence order under REVERSE too.
    for reverse, key in reversed(criteria):
        f = _KEY_FUNCS[key]
        values = {id(m): f(m) for m in msgs}
        msgs.sort(key=lambda m, v=values: v[id(m)], reverse=reverse)  # type: ignore[misc]
    return [m.uid if uid else m.seq for m in msgs]


# -- THREAD --------------------------------------------------------------------------------
@dataclass(eq=False, repr=False, slots=True)
class ThreadNode:
    """One node of a thread tree: ``id`` is the sequence number (or UID), None for
    a dummy standing in for a missing parent.

    No generated ``__eq__``/``__repr__``: both would recurse down the tree, and a
    thread may be thousands deep. Compare ``format_threads`` output instead."""

    id: int | None
    children: list[ThreadNode] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"ThreadNode(id={self.id!r}, children={len(self.children)})"


class _C:
    """A REFERENCES container (RFC 5256 §4 step 1)."""

    __slots__ = ("children", "item", "parent")

    def __init__(self) -> None:
        self.item: _Msg | None = None
        self.parent: _C | None = None
        self.children: list[_C] = []


class _Msg:
    """A SortItem with its derived thread facts computed once."""

    __slots__ = ("date", "item", "reply", "subject")

    def __init__(self, item: SortItem) -> None:
        self.item = item
        self.date = sent_date(item)
        self.subject, self.reply = subject_info(item.header("Subject"))

    def key(self) -> tuple[float, int]:
        return (self.date, self.item.seq)


_MSGID_RE = re.compile(rb"<([^<>]*)>")
_CFWS_RE = re.compile(rb"[ \t\r\n]+")


def _msgids(value: bytes | None) -> list[bytes]:
    """The valid (non-empty) msg-ids in a header value, in order."""
    if not value:
        return []
    out = []
    for m in _MSGID_RE.finditer(value):
        mid = _CFWS_RE.sub(b"", m.group(1))
        if mid:
            out.append(mid)
    return out


def _references(item: SortItem) -> list[bytes]:
    """RFC 5256 §4 step 1: the References ids; without valid ones, the first valid
    id of In-Reply-To."""
    refs = _msgids(item.header("References"))
    if refs:
        return refs[-MAX_REFERENCES:]
    irt = _msgids(item.header("In-Reply-To"))
    return irt[:1]


class _LoopGuard:
    """The loop test of RFC 5256 §4 step 1: before making ``parent`` the parent of
    ``child``, check that ``child`` is not ``parent`` or one of its ancestors.

    The test walks up from ``parent``. A walk is as long as the thread is deep,
    and a References header may ask for hundreds of links, so a crafted mailbox
    (a deep chain, then messages naming "<leaf> <root>" again and again) costs
    depth x links. What others do: Dovecot walks with no bound. What we do: the
    same walk, within a budget of steps for the whole command (~0.3 s of Python at
    the cap); once it is spent, any link that would need a walk is refused. The
    tree stays loop-free and every message stays in it; only a mailbox built to
    exhaust the budget threads differently.
    """

    __slots__ = ("steps",)

    def __init__(self, n_messages: int) -> None:
        self.steps = LOOP_CHECK_STEPS + LOOP_CHECK_STEPS_PER_MESSAGE * n_messages

    def would_loop(self, parent: _C, child: _C) -> bool:
        if child is parent:
            return True
        if not child.children:
            return False  # a leaf cannot be anyone's ancestor
        x: _C | None = parent
        steps = self.steps
        while x is not None:
            if x is child or steps <= 0:
                self.steps = steps
                return True
            steps -= 1
            x = x.parent
        self.steps = steps
        return False


def _link(parent: _C, child: _C) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: _C) -> None:
    p = child.parent
    if p is not None:
        p.children.remove(child)
        child.parent = None


def _preorder(roots: Iterable[_C]) -> list[_C]:
    order: list[_C] = []
    stack = list(roots)
    while stack:
        x = stack.pop()
        order.append(x)
        stack.extend(x.children)
    return order


def _ckey(c: _C) -> tuple[float, int]:
    """Sort key of a container: its message, or a dummy's first child (whose
    children are sorted already)."""
    while c.item is None:
        c = c.children[0]
    return c.item.key()


def _build_references(items: Iterable[SortItem]) -> list[_C]:
    """RFC 5256 §4 steps 1-4: link, gather roots, prune dummies."""
    table: dict[bytes, _C] = {}
    every: list[_C] = []
    ordered = sorted(items, key=lambda m: m.seq)
    guard = _LoopGuard(len(ordered))
    for item in ordered:
        msg = _Msg(item)
        ids = _msgids(item.header("Message-ID"))
        mid = ids[0] if ids else None
        c = table.get(mid) if mid is not None else None
        if c is None or c.item is not None:
            # New id, no valid id, or a duplicate of an earlier message's id:
            # only the lowest sequence number keeps it (step 1.A).
            c = _C()
            every.append(c)
            if mid is not None and mid not in table:
                table[mid] = c
        c.item = msg
        # (1.A) link the references in order, never re-parenting, never looping.
        prev: _C | None = None
        for ref in _references(item):
            rc = table.get(ref)
            if rc is None:
                rc = table[ref] = _C()
                every.append(rc)
            if prev is not None and rc.parent is None and not guard.would_loop(prev, rc):
                _link(prev, rc)
            prev = rc
        # (1.B) the last reference is the parent, breaking any earlier link.
        _unlink(c)
        if prev is not None and not guard.would_loop(prev, c):
            _link(prev, c)
    # (2) the root set.
    roots = [c for c in every if c.parent is None]
    # (3) prune dummies, children before parents.
    for x in reversed(_preorder(roots)):
        kept: list[_C] = []
        for ch in x.children:
            if ch.item is not None:
                kept.append(ch)
            else:  # its own children are real messages by now
                for g in ch.children:
                    g.parent = x
                kept.extend(ch.children)
        x.children = kept
    out: list[_C] = []
    for r in roots:
        if r.item is None:
            if not r.children:
                continue
            if len(r.children) == 1:  # only a lone child goes up to the root
                only = r.children[0]
                only.parent = None
                out.append(only)
                continue
        out.append(r)
    return out


def _sort_tree(roots: list[_C]) -> None:
    """Sort every sibling set by sent date, deepest first (RFC 5256 §4 step 6)."""
    for x in reversed(_preorder(roots)):
        if len(x.children) > 1:
            x.children.sort(key=_ckey)
    roots.sort(key=_ckey)


def _merge_subjects(roots: list[_C]) -> list[_C]:
    """RFC 5256 §4 step 5: gather top-level threads with the same base subject."""
    def subj(c: _C) -> tuple[str, bool]:
        m = c.item if c.item is not None else c.children[0].item
        assert m is not None  # pruned dummies hold real children
        return m.subject, m.reply

    table: dict[str, _C] = {}
    for r in roots:  # (5.B)
        base, reply = subj(r)
        if not base:
            continue
        t = table.get(base)
        if (t is None or (r.item is None and t.item is not None)
                or (r.item is not None and t.item is not None and t.item.reply and not reply)):
            table[base] = r
    slots: list[_C | None] = list(roots)
    where = {id(r): i for i, r in enumerate(roots)}
    for i, r in enumerate(roots):  # (5.C)
        if r.parent is not None:
            continue  # already merged under a new dummy
        base, reply = subj(r)
        if not base:
            continue
        t = table[base]
        if t is r:
            continue
        if r.item is None and t.item is None:
            for g in r.children:
                g.parent = t
            t.children.extend(r.children)
            r.children = []
        elif t.item is None or (reply and t.item is not None and not t.item.reply):
            _link(t, r)
        else:
            d = _C()
            _link(d, t)
            _link(d, r)
            table[base] = d
            slots[where[id(t)]] = d
            where[id(d)] = where[id(t)]
        slots[i] = None
    return [s for s in slots if s is not None]


def _to_nodes(roots: list[_C], uid: bool) -> list[ThreadNode]:
    def node(c: _C) -> ThreadNode:
        it = c.item.item if c.item is not None else None
        return ThreadNode(None if it is None else (it.uid if uid else it.seq))

    top = [node(r) for r in roots]
    stack = list(zip(roots, top, strict=True))
    while stack:
        c, n = stack.pop()
        for ch in c.children:
            cn = node(ch)
            n.children.append(cn)
            stack.append((ch, cn))
    return top


def thread_references(items: Iterable[SortItem], *, uid: bool = False) -> list[ThreadNode]:
    """THREAD=REFERENCES (RFC 5256 §4)."""
    roots = _build_references(items)
    # (4) sort the top level (dummies by their first child) before grouping, so
    # the subject table meets threads oldest first.
    for r in roots:
        if r.item is None:
            r.children.sort(key=_ckey)
    roots.sort(key=_ckey)
    roots = _merge_subjects(roots)
    _sort_tree(roots)
    return _to_nodes(roots, uid)


def thread_refs(items: Iterable[SortItem], *, uid: bool = False) -> list[ThreadNode]:
    """THREAD=REFS (draft-ietf-morg-inthread): REFERENCES without the subject
    grouping (step 5); siblings by sent date, threads by their newest message.

    What others do: Dovecot offers REFS this way. What we do: the same."""
    roots = _build_references(items)
    _sort_tree(roots)
    newest: dict[int, tuple[float, int]] = {}
    for r in roots:
        newest[id(r)] = max(x.item.key() for x in _preorder([r]) if x.item is not None)
    roots.sort(key=lambda r: newest[id(r)])
    return _to_nodes(roots, uid)


def thread_orderedsubject(items: Iterable[SortItem], *, uid: bool = False) -> list[ThreadNode]:
    """THREAD=ORDEREDSUBJECT (RFC 5256 §4): group by base subject; in each group the
    oldest message is the parent of all the others (siblings by sent date);
    threads ordered by the date of their first message."""
    msgs = sorted((_Msg(it) for it in items), key=lambda m: (m.subject, m.date, m.item.seq))
    threads: list[tuple[tuple[float, int], ThreadNode]] = []
    cur: str | None = None
    for m in msgs:
        n = ThreadNode(m.item.uid if uid else m.item.seq)
        if threads and m.subject == cur:
            threads[-1][1].children.append(n)
        else:
            threads.append((m.key(), n))
            cur = m.subject
    threads.sort(key=lambda t: t[0])
    return [n for _, n in threads]


def thread_messages(items: Iterable[SortItem], algorithm: str, *,
                    uid: bool = False) -> list[ThreadNode]:
    """Dispatch on ``commands.Thread.algorithm``. Raises ValueError if unknown."""
    alg = algorithm.upper()
    if alg == "ORDEREDSUBJECT":
        return thread_orderedsubject(items, uid=uid)
    if alg == "REFERENCES":
        return thread_references(items, uid=uid)
    if alg == "REFS":
        return thread_refs(items, uid=uid)
    raise ValueError(f"unknown THREAD algorithm {algorithm!r}")


def format_threads(threads: Iterable[ThreadNode]) -> str:
    """The THREAD response data after "* THREAD " (RFC 5256 §4, thread-list).

    A node with one child continues its own list ("1 2 3"); with several, each
    child is a nested list ("1 (2)(3)"). A dummy writes no number ("((3)(5))").
    Written with an explicit stack: any depth is fine."""
    out: list[str] = []
    stack: list[str | ThreadNode] = []
    for t in reversed(list(threads)):
        if t.id is None and not t.children:
            continue  # an empty dummy is no thread
        stack += [")", t, "("]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            out.append(x)
            continue
        sep = ""
        if x.id is not None:
            out.append(str(x.id))
            sep = " "
        kids = x.children
        if len(kids) == 1:
            stack += [kids[0], sep]
        elif kids:
            for k in reversed(kids):
                stack += [")", k, "("]
            stack.append(sep)
    return "".join(out)
