"""SEARCH keys (RFC 9051 §6.4.4) as a tree, and an evaluator over one message.

The parser (parser.py) builds the tree iteratively with a depth limit; the
evaluator here is iterative too, so no key tree, however it was built, can
raise RecursionError. String matching is a case-insensitive substring test on
Unicode text (``str.casefold``), which covers US-ASCII and UTF-8 alike
(RFC 9051 §6.4.4: "In all search keys that use strings ... case-insensitive").

The session supplies a :class:`MessageContext` per message (cheap attributes
first; header/body getters are only called when a key needs them, and ``And``
/ ``Or`` short-circuit) and one :class:`SearchEnv` per command.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Literal, Protocol

from mailyard.protocol.imap.sequence import SequenceSet


# -- the tree ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class All:
    pass


@dataclass(frozen=True, slots=True)
class And:
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class Or:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class Not:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class HasFlag:
    """System flag (``\\Seen``) or keyword; matched case-insensitively."""

    flag: str


@dataclass(frozen=True, slots=True)
class Header:
    """HEADER field string; FROM/TO/CC/BCC/SUBJECT map here too."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class Body:
    value: str


@dataclass(frozen=True, slots=True)
class Text:
    value: str


DateWhich = Literal["internal", "sent", "save"]
DateOp = Literal["before", "on", "since"]


@dataclass(frozen=True, slots=True)
class DateKey:
    which: DateWhich
    op: DateOp
    date: _dt.date


@dataclass(frozen=True, slots=True)
class SizeKey:
    op: Literal["larger", "smaller"]
    size: int


@dataclass(frozen=True, slots=True)
class SeqKey:
    sequence: SequenceSet


@dataclass(frozen=True, slots=True)
class UidKey:
    sequence: SequenceSet


@dataclass(frozen=True, slots=True)
class ModSeqKey:
    """RFC 7162 §3.1.5; the entry name/type are accepted and ignored
    (we keep one modseq per message, as RFC 7162 allows)."""

    modseq: int
    entry: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True, slots=True)
class Within:
    """RFC 5032 OLDER / YOUNGER, in seconds."""

    op: Literal["older", "younger"]
    seconds: int


@dataclass(frozen=True, slots=True)
class SaveDateSupported:
    """RFC 8514 SAVEDATESUPPORTED: true when the mailbox keeps save dates."""


@dataclass(frozen=True, slots=True)
class ObjectIdKey:
    """RFC 8474 EMAILID / THREADID."""

    kind: Literal["EMAILID", "THREADID"]
    value: str


SearchKey = (All | And | Or | Not | HasFlag | Header | Body | Text | DateKey | SizeKey
             | SeqKey | UidKey | ModSeqKey | Within | SaveDateSupported | ObjectIdKey)


# -- the evaluation context ----------------------------------------------------------------
class MessageContext(Protocol):
    """What the evaluator may ask about one message. Getters may be lazy."""

    @property
    def uid(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def flags(self) -> frozenset[str]: ...
    @property
    def size(self) -> int: ...
    @property
    def internaldate(self) -> float: ...
    @property
    def savedate(self) -> float | None: ...
    @property
    def modseq(self) -> int: ...
    @property
    def email_id(self) -> str: ...
    @property
    def thread_id(self) -> str: ...

    def header(self, name: str) -> list[str]:
        """Decoded (RFC 2047) values of every header field ``name`` (any case)."""
        ...

    def sent_date(self) -> _dt.date | None:
        """The Date: header's date in its own zone (RFC 9051 SENTBEFORE etc.)."""
        ...

    def body_text(self) -> str:
        """Decoded text of the body (text parts), for BODY."""
        ...

    def full_text(self) -> str:
        """Decoded headers plus body, for TEXT."""
        ...


@dataclass(frozen=True, slots=True)
class SearchEnv:
    """Per-command facts: ``*`` resolution, ``$`` (RFC 5182), now, date zone."""

    max_seq: int
    max_uid: int
    now: float = 0.0
    saved_uids: frozenset[int] | None = None
    tz: _dt.tzinfo = _dt.UTC
    savedate_supported: bool = True


class SearchError(ValueError):
    pass


def depth(key: SearchKey) -> int:
    """Nesting depth of a tree, computed without recursion."""
    best = 0
    stack: list[tuple[SearchKey, int]] = [(key, 1)]
    while stack:
        node, d = stack.pop()
        best = max(best, d)
        if isinstance(node, And):
            stack.extend((k, d + 1) for k in node.keys)
        elif isinstance(node, Or):
            stack.append((node.left, d + 1))
            stack.append((node.right, d + 1))
        elif isinstance(node, Not):
            stack.append((node.key, d + 1))
    return best


def _contains(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def _date_cmp(value: _dt.date, op: DateOp, ref: _dt.date) -> bool:
    if op == "before":
        return value < ref
    if op == "on":
        return value == ref
    return value >= ref  # SINCE: "within or later than the specified date"


def _leaf(node: SearchKey, msg: MessageContext, env: SearchEnv) -> bool:
    if isinstance(node, All):
        return True
    if isinstance(node, HasFlag):
        return node.flag.casefold() in {f.casefold() for f in msg.flags}
    if isinstance(node, SeqKey | UidKey):
        # RFC 5182 §2.1: "$" stands for the saved UIDs, even in a SeqKey.
        if node.sequence.saved and env.saved_uids is not None and msg.uid in env.saved_uids:
            return True
        if isinstance(node, SeqKey):
            return node.sequence.contains(msg.seq, env.max_seq)
        return node.sequence.contains(msg.uid, env.max_uid)
    if isinstance(node, SizeKey):
        return msg.size > node.size if node.op == "larger" else msg.size < node.size
    if isinstance(node, ModSeqKey):
        return msg.modseq >= node.modseq
    if isinstance(node, Within):
        age = env.now - msg.internaldate
        younger = age <= node.seconds
        return younger if node.op == "younger" else not younger
    if isinstance(node, DateKey):
        if node.which == "sent":
            d = msg.sent_date()
            return d is not None and _date_cmp(d, node.op, node.date)
        ts = msg.internaldate if node.which == "internal" else msg.savedate
        if ts is None:
            # RFC 8514 §4.3: no save date -> use the internal date.
            ts = msg.internaldate
        d = _dt.datetime.fromtimestamp(ts, env.tz).date()
        return _date_cmp(d, node.op, node.date)
    if isinstance(node, Header):
        values = msg.header(node.field)
        if not node.value:
            return bool(values)
        return any(_contains(v, node.value) for v in values)
    if isinstance(node, Body):
        return _contains(msg.body_text(), node.value)
    if isinstance(node, Text):
        return _contains(msg.full_text(), node.value)
    if isinstance(node, SaveDateSupported):
        return env.savedate_supported
    if isinstance(node, ObjectIdKey):
        got = msg.email_id if node.kind == "EMAILID" else msg.thread_id
        return got == node.value
    raise SearchError(f"unknown search key {type(node).__name__}")


def evaluate(key: SearchKey, msg: MessageContext, env: SearchEnv) -> bool:
    """True when ``msg`` matches ``key``. Iterative, short-circuiting."""
    result = False
    # frame: [node, next child index]
    stack: list[list[object]] = [[key, 0]]
    while stack:
        frame = stack[-1]
        node = frame[0]
        i = frame[1]
        assert isinstance(i, int)
        if isinstance(node, And):
            if (i > 0 and not result) or i == len(node.keys):
                stack.pop()
                if i == 0:
                    result = True
                continue
            frame[1] = i + 1
            stack.append([node.keys[i], 0])
        elif isinstance(node, Or):
            if (i > 0 and result) or i == 2:
                stack.pop()
                continue
            frame[1] = i + 1
            stack.append([node.left if i == 0 else node.right, 0])
        elif isinstance(node, Not):
            if i == 0:
                frame[1] = 1
                stack.append([node.key, 0])
            else:
                stack.pop()
                result = not result
        else:
            stack.pop()
            result = _leaf(node, msg, env)  # type: ignore[arg-type]
    return result


def needs_text(key: SearchKey) -> set[str]:
    """Which expensive getters a tree uses: subset of {"header", "body", "text", "sent"}.

    Lets the session skip loading message bodies for flag-only searches.
    """
    out: set[str] = set()
    stack: list[SearchKey] = [key]
    while stack:
        node = stack.pop()
        if isinstance(node, And):
            stack.extend(node.keys)
        elif isinstance(node, Or):
            stack.extend((node.left, node.right))
        elif isinstance(node, Not):
            stack.append(node.key)
        elif isinstance(node, Header):
            out.add("header")
        elif isinstance(node, Body):
            out.add("body")
        elif isinstance(node, Text):
            out.add("text")
        elif isinstance(node, DateKey) and node.which == "sent":
            out.add("sent")
    return out
