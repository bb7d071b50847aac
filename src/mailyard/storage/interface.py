"""The storage seam: the only storage module protocol and server code imports.

Two backends implement it: SQLite + files (the embedded default, ``storage.sqlite``)
and, later, PostgreSQL (``storage.postgres``). Both must pass the contract suite in
``tests/storage_contract``.

Durability contract (RFC 5321 §6.1, DESIGN.md "Nothing lost"):

* ``BlobStore.commit`` returns only once the bytes and their directory entry are
  on stable storage (fsync of the file, rename, fsync of the directory, or an
  equivalent batched fdatasync of an append-only segment).
* ``Store.deliver`` / ``Store.append`` return only once the index records are
  committed durably (SQLite WAL with ``synchronous=FULL``). Concurrent calls are
  funnelled through one writer that commits them in one transaction (group
  commit) so the fsync cost is shared under load.
* UIDs are never reused; ``uidvalidity`` of a mailbox never changes while it exists.

Mailbox names use "/" as the hierarchy delimiter and are stored as UTF-8;
INBOX is case-insensitive (RFC 9051 §5.1) and always stored as "INBOX".
"""

from __future__ import annotations

from array import array
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from mailyard.storage.models import (
    Account,
    Alias,
    BlobRef,
    Change,
    Delivered,
    DeliveryTarget,
    Domain,
    FlagUpdate,
    Mailbox,
    MailboxStatus,
    MessageRef,
    QueueEntry,
    QueueRecipient,
    TextSource,
)


class StorageError(Exception):
    """Base class of the errors the store raises on purpose."""


class NotFound(StorageError):
    pass


class AlreadyExists(StorageError):
    pass


class QuotaExceeded(StorageError):
    def __init__(self, account_id: int, needed: int, limit: int) -> None:
        super().__init__(f"quota exceeded for account {account_id}: {needed} > {limit}")
        self.account_id = account_id
        self.needed = needed
        self.limit = limit


class InsufficientStorage(StorageError):
    """The disk is (nearly) full: ENOSPC or free space under the threshold."""


class Spool(Protocol):
    """A message being received (DATA/BDAT/APPEND), before it is durable.

    ``write`` keeps at most a small bounded buffer in memory and spills to a
    temporary file beyond it, so a 50 MB message costs the same memory as a
    5 KB one. Nothing written here is durable until ``BlobStore.commit``.
    """

    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    def read_all(self) -> bytes:
        """The whole spooled content (for DKIM verification; callers check size first)."""
        ...

    def chunks(self, size: int = 65536) -> Iterable[bytes]:
        """Iterate over the spooled content in bounded chunks."""
        ...

    def abort(self) -> None:
        """Discard the spool and any temporary file. Idempotent."""
        ...


class BlobSetReader(Protocol):
    """Whole-blob reads of a fixed set of blobs (see :meth:`BlobStore.reader`)."""

    async def read(self, blob_id: str) -> bytes:
        """The whole blob (one outside the set too); NotFound when it is gone."""
        ...


class BlobStore(Protocol):
    def new_spool(self) -> Spool: ...

    async def commit(self, spool: Spool, *, prefix: bytes = b"") -> BlobRef:
        """Make ``prefix + spool`` a durable immutable blob; the spool is consumed."""
        ...

    async def put(self, data: bytes) -> BlobRef:
        """Store a small in-memory message durably (DSNs, tests)."""
        ...

    async def read(self, blob_id: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stream(self, blob_id: str, *, offset: int = 0, length: int | None = None,
               chunk: int = 65536) -> AsyncIterator[bytes]: ...

    def path(self, blob_id: str) -> str | None:
        """A local file path holding exactly the blob, when the backend has one (sendfile)."""
        ...

    def reader(self, blob_ids: Sequence[str]) -> BlobSetReader:
        """Reads of these blobs, one after another, cheaper than ``read`` each time.

        For a session that reads many blobs of a list it holds (a POP3 maildrop):
        the backend may look their locations up in batches and keep them for the
        reader's life. A blob removed meanwhile may still be read while its bytes
        exist (the reader sees the set as it was); NotFound once they are gone.
        """
        ...


class ChangeSubscription(Protocol):
    async def get(self) -> Change:
        """Wait for the next change of the subscribed account."""
        ...

    def get_nowait(self) -> Change | None: ...

    def close(self) -> None: ...


FlagMode = Literal["set", "add", "remove"]


@dataclass(frozen=True, slots=True)
class MailboxIndex:
    """What SELECT needs of a mailbox, without one object per message.

    ``uids`` is ascending and compact (4 octets a message: 100k messages cost 400 KB,
    against ~30 MB of MessageRef rows); ``modseq`` is the highest modseq among them
    (0 when empty); ``keywords`` are the non-system flags in use; ``first_unseen`` is
    the lowest UID without ``\\Seen`` (None when all are seen).
    """

    uids: array[int]
    modseq: int
    keywords: frozenset[str]
    first_unseen: int | None


@runtime_checkable
class Store(Protocol):
    blobs: BlobStore

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def maintain(self) -> None:
        """Housekeeping a long-running server calls now and then, while serving (the
        SQLite backend reclaims the space of deleted mail here). Every message stays
        readable, and every write goes on, throughout."""
        ...

    # -- domains, accounts, aliases ------------------------------------------------
    async def add_domain(self, name: str) -> Domain: ...

    async def remove_domain(self, name: str) -> None: ...

    async def list_domains(self) -> list[Domain]: ...

    async def get_domain(self, name: str) -> Domain | None: ...

    async def add_account(self, address: str, password_hash: str, *,
                          quota_bytes: int | None = None,
                          scram_sha256: str | None = None) -> Account:
        """Create the account and its default mailboxes (models.DEFAULT_MAILBOXES).

        ``password_hash`` and ``scram_sha256`` are opaque text to the store (an argon2id
        PHC string and an RFC 5803 SCRAM secret, both made by policy/auth.py)."""
        ...

    async def remove_account(self, address: str) -> None: ...

    async def set_password(self, address: str, password_hash: str, *,
                           scram_sha256: str | None = None) -> None:
        """Replace the password: the hash and the SCRAM secret together. A secret left
        out is cleared (one derived from the old password must not keep working)."""
        ...

    async def set_scram_secret(self, address: str, scram_sha256: str, *,
                               password_hash: str) -> bool:
        """Store the SCRAM secret of an account only while its password hash is still
        ``password_hash`` (compare-and-set: a password changed meanwhile wins and the
        secret, derived from the old one, is dropped). True when stored."""
        ...

    async def count_accounts_without_scram(self) -> int:
        """Accounts with no SCRAM secret (made before SCRAM support, or whose password
        was set without one): while there are any, SCRAM-SHA-256 is not offered."""
        ...

    async def set_quota(self, address: str, quota_bytes: int | None) -> None: ...

    async def get_account(self, address: str) -> Account | None: ...

    async def get_account_by_id(self, account_id: int) -> Account | None: ...

    async def list_accounts(self, domain: str | None = None) -> list[Account]: ...

    async def account_usage(self, account_id: int) -> int:
        """Octets stored across all the account's mailboxes (QUOTA RES-STORAGE)."""
        ...

    async def server_secret(self, name: str) -> bytes:
        """32 random octets kept under ``name``: made on first use, then the same for
        every process that shares the store and across restarts (e.g. the key behind
        the stable SCRAM salts of unknown users, which all front-end nodes must agree on)."""
        ...

    async def add_alias(self, source: str, targets: Sequence[str]) -> Alias: ...

    async def remove_alias(self, source: str) -> None: ...

    async def get_alias(self, source: str) -> Alias | None: ...

    async def list_aliases(self, domain: str | None = None) -> list[Alias]: ...

    # -- DKIM keys -----------------------------------------------------------------
    async def add_dkim_key(self, domain: str, selector: str, algorithm: str,
                           private_pem: str, *, active: bool = True) -> None: ...

    async def list_dkim_keys(self, domain: str | None = None) -> list[tuple[str, str, str, str, bool]]:
        """(domain, selector, algorithm, private_pem, active) rows."""
        ...

    async def set_dkim_active(self, domain: str, selector: str, active: bool) -> None: ...

    # -- delivery --------------------------------------------------------------------
    async def deliver(self, blob: BlobRef, targets: Sequence[DeliveryTarget], *,
                      queue: QueueEntry | None = None,
                      internaldate: float | None = None,
                      text: TextSource = None) -> list[Delivered]:
        """Deliver one blob to every target and enqueue ``queue``, in one durable transaction.

        ``text`` is indexed for ``search_text`` (see ``models.TextSource``); a store may
        index after the delivery returns, but ``search_text`` always sees it.

        Quota is not checked here (callers check at RCPT time with ``account_usage``);
        a target mailbox that does not exist falls back to INBOX.
        """
        ...

    # -- mailboxes -----------------------------------------------------------------
    async def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None: ...

    async def create_mailbox(self, account_id: int, name: str, *,
                             special_use: str | None = None) -> Mailbox: ...

    async def delete_mailbox(self, account_id: int, name: str) -> None: ...

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        """Renaming INBOX moves its messages to the new name and leaves INBOX empty."""
        ...

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None: ...

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus: ...

    # -- messages ------------------------------------------------------------------
    async def list_messages(self, mailbox_id: int) -> list[MessageRef]:
        """All messages of the mailbox in ascending UID order."""
        ...

    async def get_messages(self, mailbox_id: int, uids: Sequence[int]) -> list[MessageRef]: ...

    async def mailbox_index(self, mailbox_id: int) -> MailboxIndex:
        """UIDs, highest modseq, keywords and first unseen UID of a mailbox (SELECT).

        Added for speed; equivalent to deriving them from ``list_messages``.
        """
        ...

    async def flag_rows(self, mailbox_id: int, lo: int, hi: int
                        ) -> list[tuple[int, int, str]]:
        """``(uid, modseq, flags)`` of the messages with ``lo <= uid <= hi``, ascending
        by UID; ``flags`` is the flag names separated by single spaces. Added for FETCH
        FLAGS over large ranges: one indexed range scan, no MessageRef per row.
        """
        ...

    async def index_rows(self, mailbox_id: int, uids: Sequence[int]
                         ) -> list[tuple[int, int, str, float, int, str]]:
        """``(uid, modseq, flags, internaldate, size, blob_id)`` of those of ``uids``
        that exist, ascending by UID; ``flags`` as in ``flag_rows``. Added for FETCH of
        index fields and cached ENVELOPE/BODYSTRUCTURE over many messages: what
        ``get_messages`` gives, without a MessageRef per row.
        """
        ...

    async def changed_since(self, mailbox_id: int, modseq: int) -> list[MessageRef]:
        """Messages whose modseq is greater than ``modseq`` (CONDSTORE/QRESYNC)."""
        ...

    async def expunged_since(self, mailbox_id: int, modseq: int) -> list[int]:
        """UIDs expunged with a modseq greater than ``modseq`` (QRESYNC VANISHED)."""
        ...

    async def append(self, mailbox_id: int, blob: BlobRef, *, flags: Iterable[str] = (),
                     internaldate: float | None = None,
                     text: TextSource = None) -> Delivered:
        """Raises QuotaExceeded when the account would go over its quota."""
        ...

    async def store_flags(self, mailbox_id: int, uids: Sequence[int], flags: Iterable[str],
                          mode: FlagMode, *, unchanged_since: int | None = None
                          ) -> tuple[list[FlagUpdate], list[int]]:
        """Change flags; returns (updates actually made, uids that failed UNCHANGEDSINCE)."""
        ...

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove messages flagged \\Deleted (restricted to ``uids`` when given)."""
        ...

    async def copy(self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
                   ) -> list[tuple[int, int]]:
        """Copy; returns (source uid, new uid) pairs. Raises QuotaExceeded."""
        ...

    async def move(self, src_mailbox_id: int, uids: Sequence[int], dst_mailbox_id: int
                   ) -> list[tuple[int, int]]: ...

    async def search_text(self, mailbox_id: int, query: str, *,
                          field: Literal["body", "text", "headers"] = "text") -> set[int]:
        """UIDs whose indexed text contains ``query`` (case-insensitive substring)."""
        ...

    async def unindexed_uids(self, mailbox_id: int) -> set[int]:
        """UIDs of the messages that have no full-text row (delivered without ``text``)."""
        ...

    async def header_candidates(self, mailbox_id: int, query: str) -> set[int] | None:
        """SEARCH's prefilter for header keys: a superset of the UIDs whose indexed
        header text contains ``query`` (the index's matches plus every message it does
        not hold, or not yet), without waiting for an index that fills in the
        background; None when the index cannot narrow the search for this query."""
        ...

    async def cache_get(self, blob_id: str, kind: str) -> str | None:
        """Per-blob cached parse results (envelope, bodystructure, ...)."""
        ...

    async def cache_get_many(self, blob_ids: Sequence[str], kind: str) -> dict[str, str]:
        """``cache_get`` for many blobs at once: blob id -> value for those that have
        one (absent ids are left out). Added for FETCH of ENVELOPE/BODYSTRUCTURE over
        many messages: one lookup per batch instead of one per message.
        """
        ...

    async def cache_put(self, blob_id: str, kind: str, value: str) -> None: ...

    def cache_put_later(self, blob_id: str, kind: str, value: str) -> None:
        """``cache_put`` without waiting for it: ``cache_get`` may serve the value at
        once, the stored row follows (derived data: a value lost in a crash is computed
        again). Added so that a FETCH or SEARCH that computed a value does not wait for
        a commit before it answers; what is still queued is written by ``close``.
        """
        ...

    # -- POP3 maildrop lock ----------------------------------------------------------
    async def lock_maildrop(self, account_id: int) -> bool:
        """Take the account's exclusive POP3 lock; False when another session holds it."""
        ...

    async def unlock_maildrop(self, account_id: int) -> None: ...

    # -- change feed -----------------------------------------------------------------
    def subscribe(self, account_id: int) -> ChangeSubscription: ...

    # -- outbound queue --------------------------------------------------------------
    async def queue_add(self, entry: QueueEntry) -> None: ...

    async def queue_get(self, entry_id: str) -> QueueEntry | None: ...

    async def queue_list(self) -> list[QueueEntry]: ...

    async def queue_due(self, now: float, limit: int = 100) -> list[QueueEntry]:
        """Entries with pending recipients whose next attempt is due, oldest first."""
        ...

    async def queue_update(self, entry_id: str, *, recipients: Sequence[QueueRecipient],
                           next_attempt: float, attempts: int, last_error: str = "",
                           delay_warned: bool | None = None) -> None:
        """Persist the outcome (and the next attempt time) durably before returning.
        ``delay_warned`` None leaves the entry's flag as it is."""
        ...

    async def queue_delete(self, entry_id: str) -> None:
        """Remove an entry and release its blob reference."""
        ...

    async def queue_retry_now(self, entry_id: str | None, now: float) -> int:
        """Make one entry (or all when None) due now; returns how many."""
        ...

    # -- \Recent (IMAP4rev1) -------------------------------------------------------------
    def remember_recent(self, mailbox_id: int, uid: int) -> None:
        """Raise the mailbox's ``recent_uid`` to ``uid`` (never lower it): the UIDs up to it
        have been recent in some session. Not waited for: written with the next durable
        write or when the store closes; a crash may lose it (those messages are then
        recent once more)."""
        ...

    # -- authentication results (for DMARC aggregate reports, later) ------------------
    async def record_auth_result(self, *, when: float, source_ip: str, header_from: str,
                                 spf: str, dkim: str, dmarc: str, disposition: str,
                                 delivery_follows: bool = False) -> None:
        """Keep one verdict for DMARC aggregate reports. A store may write it later,
        with the next durable write, and lose the last few in a crash.
        ``delivery_follows``: the caller is about to store the message, whose write
        may carry this one (no write of its own is needed)."""
        ...
