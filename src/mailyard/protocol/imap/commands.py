"""Typed IMAP command objects and the other events the parser yields.

Every command carries its ``tag``. Mailbox names are decoded Unicode with "/"
as delimiter (see mailbox.py). Commands that have a UID form carry ``uid``.
``name`` is the canonical command name used by the state table (states.py).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Literal

from mailyard.protocol.imap.search import SearchKey
from mailyard.protocol.imap.sequence import SequenceSet


@dataclass(frozen=True, kw_only=True)
class Command:
    tag: str

    @property
    def name(self) -> str:
        return _NAMES[type(self)]


# -- any state ------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Capability(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Noop(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Logout(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Id(Command):
    """RFC 2971. ``params`` is None for ``ID NIL``."""

    params: tuple[tuple[str, str | None], ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Compress(Command):
    """RFC 4978."""

    mechanism: str


# -- not authenticated ----------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class StartTLS(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Authenticate(Command):
    """RFC 9051 §6.2.2; ``initial_response`` per RFC 4959 (SASL-IR).

    ``initial_response`` is None when absent, ``b""`` for "=" (empty), else
    the base64-decoded bytes.
    """

    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class Login(Command):
    username: str
    password: str


# -- authenticated ----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Enable(Command):
    capabilities: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class QresyncParams:
    """RFC 7162 §3.2.5 SELECT (QRESYNC (uidvalidity modseq [known-uids [seq-match]]))."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None  # (seqnums, uids)


@dataclass(frozen=True, kw_only=True)
class Select(Command):
    """SELECT, or EXAMINE when ``readonly``."""

    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass(frozen=True, kw_only=True)
class Create(Command):
    mailbox: str
    special_use: tuple[str, ...] = ()  # RFC 6154 CREATE ... (USE (\Sent))


@dataclass(frozen=True, kw_only=True)
class Delete(Command):
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class Rename(Command):
    old: str
    new: str


@dataclass(frozen=True, kw_only=True)
class Subscribe(Command):
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class Unsubscribe(Command):
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class List(Command):
    """RFC 9051 §6.3.9 with LIST-EXTENDED (RFC 5258) options.

    ``selection``: upper-case options (SUBSCRIBED, REMOTE, RECURSIVEMATCH,
    SPECIAL-USE). ``returns``: upper-case return options (SUBSCRIBED,
    CHILDREN, SPECIAL-USE, STATUS). ``status_items`` is set when RETURN has
    STATUS (RFC 5819). ``extended`` tells whether the extended syntax was used.
    """

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] | None = None
    extended: bool = False


@dataclass(frozen=True, kw_only=True)
class Lsub(Command):
    reference: str
    pattern: str


@dataclass(frozen=True, kw_only=True)
class Namespace(Command):
    pass


STATUS_ITEMS = frozenset({
    "MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "RECENT",
    "HIGHESTMODSEQ", "APPENDLIMIT", "MAILBOXID",  # RFC 8474 §4.2
})


@dataclass(frozen=True, kw_only=True)
class Status(Command):
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Idle(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class GetQuota(Command):
    root: str


@dataclass(frozen=True, kw_only=True)
class GetQuotaRoot(Command):
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class SetQuota(Command):
    root: str
    limits: tuple[tuple[str, int], ...]


# -- selected ---------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Check(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Close(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Unselect(Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE <set> (RFC 4315 / RFC 9051 §6.4.9) when ``uid``."""

    uid: bool = False
    sequence: SequenceSet | None = None


@dataclass(frozen=True, kw_only=True)
class Search(Command):
    """SEARCH. ``returns`` is None for a plain (untagged SEARCH) reply and a
    tuple (possibly empty, meaning ALL) when RETURN (...) was given (ESEARCH,
    RFC 4731 / RFC 9051 §6.4.4)."""

    key: SearchKey
    charset: str | None = None
    returns: tuple[str, ...] | None = None
    uid: bool = False


@dataclass(frozen=True, kw_only=True)
class Section:
    """BODY[...] section spec (RFC 9051 §6.4.5)."""

    part: tuple[int, ...] = ()
    text: str | None = None  # HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        s = ".".join(str(p) for p in self.part)
        if self.text:
            s = f"{s}.{self.text}" if s else self.text
            if self.fields:
                # upper case in responses, as Dovecot and Cyrus answer
                s += " (" + " ".join(f.upper() for f in self.fields) + ")"
        return s


@dataclass(frozen=True, kw_only=True)
class FetchItem:
    """One fetch attribute. ``name`` is upper-case: FLAGS, UID, ENVELOPE, BODY,
    BODYSTRUCTURE, INTERNALDATE, RFC822, RFC822.HEADER, RFC822.TEXT, RFC822.SIZE,
    BINARY, BINARY.SIZE, MODSEQ, PREVIEW, EMAILID, THREADID, SAVEDATE.

    ``BODY`` with ``section`` set is ``BODY[section]``; ``peek`` for BODY.PEEK /
    BINARY.PEEK; ``partial`` is ``(offset, length)`` from ``<o.n>``.
    """

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None
    lazy: bool = False  # PREVIEW (LAZY), RFC 8970

    def response_name(self) -> str:
        """The name used in the FETCH response (RFC 9051 §7.5.2)."""
        if self.section is None:
            return self.name
        s = f"{self.name}[{self.section}]"
        if self.partial is not None:
            s += f"<{self.partial[0]}>"
        return s


@dataclass(frozen=True, kw_only=True)
class Fetch(Command):
    sequence: SequenceSet
    items: tuple[FetchItem, ...]
    uid: bool = False
    changedsince: int | None = None  # RFC 7162 §3.1.4
    vanished: bool = False  # RFC 7162 §3.2.6 (UID FETCH only)
    macro: str | None = None  # ALL / FAST / FULL when one was used


@dataclass(frozen=True, kw_only=True)
class Store(Command):
    sequence: SequenceSet
    mode: Literal["set", "add", "remove"]
    silent: bool
    flags: tuple[str, ...]
    uid: bool = False
    unchangedsince: int | None = None  # RFC 7162 §3.1.3


@dataclass(frozen=True, kw_only=True)
class Copy(Command):
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, kw_only=True)
class Move(Command):
    sequence: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, kw_only=True)
class Sort(Command):
    """RFC 5256. ``criteria`` are (reverse, key) pairs, key upper-case."""

    criteria: tuple[tuple[bool, str], ...]
    charset: str
    key: SearchKey
    uid: bool = False
    returns: tuple[str, ...] | None = None  # ESORT (RFC 5267)


@dataclass(frozen=True, kw_only=True)
class Thread(Command):
    algorithm: str  # ORDEREDSUBJECT / REFERENCES
    charset: str
    key: SearchKey
    uid: bool = False


_NAMES: dict[type, str] = {
    Capability: "CAPABILITY", Noop: "NOOP", Logout: "LOGOUT", Id: "ID", Compress: "COMPRESS",
    StartTLS: "STARTTLS", Authenticate: "AUTHENTICATE", Login: "LOGIN", Enable: "ENABLE",
    Select: "SELECT", Create: "CREATE", Delete: "DELETE", Rename: "RENAME",
    Subscribe: "SUBSCRIBE", Unsubscribe: "UNSUBSCRIBE", List: "LIST", Lsub: "LSUB",
    Namespace: "NAMESPACE", Status: "STATUS", Idle: "IDLE", GetQuota: "GETQUOTA",
    GetQuotaRoot: "GETQUOTAROOT", SetQuota: "SETQUOTA", Check: "CHECK", Close: "CLOSE",
    Unselect: "UNSELECT", Expunge: "EXPUNGE", Search: "SEARCH", Fetch: "FETCH",
    Store: "STORE", Copy: "COPY", Move: "MOVE", Sort: "SORT", Thread: "THREAD",
}


# -- parser events that are not commands ------------------------------------------------
@dataclass(frozen=True, slots=True)
class NeedData:
    """Feed more bytes."""


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True)
class NeedContinuation:
    """A synchronising literal ``{n}`` was announced: the adapter sends a
    ``+`` continuation request (RFC 9051 §7.5) and feeds the data."""

    literal_size: int
    tag: str | None = None


ErrorKind = Literal["bad", "toobig", "line_too_long"]


@dataclass(frozen=True, slots=True)
class ParseError:
    """A command that cannot be parsed or accepted.

    The adapter replies ``<tag> <status> [<code>] <message>`` (``*`` when
    ``tag`` is None): ``BAD`` for syntax errors and over-long lines,
    ``NO [TOOBIG]`` for a literal or APPEND message over our limits (RFC 9051
    §7.1, RFC 7889 §3), ``BAD [TOOBIG]`` for a non-synchronising literal over
    4096 octets under LITERAL- (RFC 7888 §5). ``fatal`` asks for ``* BYE`` and
    closing the connection instead. The parser has already skipped the rest of
    the command, including any non-synchronising literal data.
    """

    tag: str | None
    message: str
    kind: ErrorKind = "bad"
    fatal: bool = False
    code: str | None = None  # response code text, e.g. "BADCHARSET (UTF-8)", "TOOBIG"
    status: Literal["BAD", "NO"] = "BAD"


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """APPEND: one message literal begins (RFC 9051 §6.3.12, MULTIAPPEND RFC 3502).

    The literal's bytes follow as :class:`AppendChunk` events, then one
    :class:`AppendMessageEnd`. When ``synchronizing`` the adapter must send
    ``+`` before the client sends the data, or call
    :meth:`CommandParser.refuse_literal` and reply NO (e.g. [TRYCREATE],
    [TOOBIG], [OVERQUOTA]). ``index`` counts the messages of one command.
    """

    tag: str
    mailbox: str
    flags: tuple[str, ...]
    internaldate: _dt.datetime | None
    size: int
    synchronizing: bool
    binary: bool = False  # literal8 "~{n}" (RFC 3516 §4.4)
    index: int = 0
    utf8: bool = False  # sent as RFC 6855 §4 "UTF8 (" literal8 ")" (stored as sent)


@dataclass(frozen=True, slots=True)
class AppendChunk:
    tag: str
    data: bytes


@dataclass(frozen=True, slots=True)
class AppendMessageEnd:
    tag: str


@dataclass(frozen=True, slots=True)
class AppendDone:
    """The APPEND command line ended after ``count`` messages: reply now."""

    tag: str
    count: int


@dataclass(frozen=True, slots=True)
class IdleDone:
    """``DONE`` ended an IDLE (RFC 2177 / RFC 9051 §6.3.13)."""


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """A client line during AUTHENTICATE: decoded base64, or ``cancelled`` ("*")."""

    data: bytes = b""
    cancelled: bool = False


Event = (Command | NeedData | NeedContinuation | ParseError | AppendMessage | AppendChunk
         | AppendMessageEnd | AppendDone | IdleDone | SaslResponse)
