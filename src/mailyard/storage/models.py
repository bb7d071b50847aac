"""Plain value types that cross the storage seam.

Everything here is immutable data: no database handles, no I/O. Protocol
adapters receive these from :class:`mailyard.storage.interface.Store` and never
see a SQL row or a file descriptor.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

# The mailboxes every new account gets, with their RFC 6154 special-use flags.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


@dataclass(frozen=True, slots=True)
class Domain:
    name: str  # lower-case A-label form
    created: float


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str  # canonical lower-case local@domain
    password_hash: str
    quota_bytes: int | None = None  # None: unlimited
    disabled: bool = False
    # SCRAM-SHA-256 secret (salt, iterations, StoredKey, ServerKey) in the RFC 5803 text
    # form ``SCRAM-SHA-256$i:salt$StoredKey:ServerKey`` (protocol.sasl.ScramSecrets);
    # None for an account whose password was set before we kept one (see policy/auth.py).
    scram_sha256: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Alias:
    source: str  # "local@domain" or "@domain" (catch-all)
    targets: tuple[str, ...]  # addresses, local or remote


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str  # hierarchy delimiter "/", UTF-8 (not modified UTF-7)
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None = None
    subscribed: bool = True
    # The highest UID some IMAP session has seen as \Recent (RFC 3501 §2.3.2): above it,
    # a message is still recent for the next session to select the mailbox.
    recent_uid: int = 0


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    messages: int
    unseen: int
    recent: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int
    size: int  # STATUS=SIZE: sum of RFC822.SIZE
    deleted: int


@dataclass(frozen=True, slots=True)
class MessageRef:
    """One message in one mailbox (a row of the IMAP view)."""

    mailbox_id: int
    uid: int
    modseq: int
    flags: frozenset[str]  # system flags (\\Seen ...) and keywords, as given
    internaldate: float  # unix time
    savedate: float
    size: int  # octets of the stored message, CRLF line ends
    blob_id: str
    email_id: str = ""  # OBJECTID EMAILID (blob id based)


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A stored, fsynced, immutable message body."""

    blob_id: str  # hex sha256 of the content
    size: int


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    account_id: int
    mailbox: str = "INBOX"  # a name; a missing name falls back to INBOX
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Delivered:
    account_id: int
    mailbox_id: int
    uid: int


class RecipientState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class QueueRecipient:
    address: str
    state: RecipientState = RecipientState.PENDING
    notify: str | None = None  # DSN NOTIFY= value, e.g. "FAILURE,DELAY"
    orcpt: str | None = None  # DSN ORCPT= value (addr-type;xtext)
    last_status: str = ""  # last reply / diagnostic from the remote
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A message waiting for remote delivery (one per accepted transaction)."""

    id: str
    sender: str  # envelope sender, "" for <>
    blob: BlobRef
    recipients: tuple[QueueRecipient, ...]
    created: float
    next_attempt: float
    attempts: int = 0
    ret: str | None = None  # DSN RET=FULL|HDRS
    envid: str | None = None  # DSN ENVID=
    smtputf8: bool = False
    body_8bit: bool = False
    last_error: str = ""
    delay_warned: bool = False  # the "delayed" DSN went out (sent once per entry)
    # An RFC 8460 TLS report: delivered despite any TLS failure (no MTA-STS or require_tls
    # for it, §3), and its own sessions are not counted in the next report.
    tls_report: bool = False


@dataclass(frozen=True, slots=True)
class Change:
    """One event on the change feed (published after commit)."""

    account_id: int
    mailbox_id: int
    kind: str  # "append" | "flags" | "expunge" | "mailbox"
    uids: tuple[int, ...] = ()
    modseq: int = 0


@dataclass(slots=True)
class FlagUpdate:
    uid: int
    flags: frozenset[str]
    modseq: int


@dataclass(slots=True)
class SearchableText:
    """Decoded text fed to the full-text index at delivery."""

    headers: str = ""
    body: str = ""
    extra: dict[str, str] = field(default_factory=dict)


# What ``deliver`` and ``append`` index: the text itself; a function that makes it from
# the stored message's bytes, which a store may run later, off the caller's path (it
# returns None for a message it cannot index); or None: the message is not indexed.
TextSource = SearchableText | Callable[[bytes], SearchableText | None] | None
