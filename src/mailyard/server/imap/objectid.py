"""OBJECTID (RFC 8474): MAILBOXID, EMAILID and THREADID.

RFC 8474 §3: an objectid is 1-255 of ALPHA / DIGIT / "_" / "-", unique in its kind
for the account and never reused for another object.

* MAILBOXID (§4): ``F`` + 24 hex digits of a hash of (account, mailbox row id,
  UIDVALIDITY). The row id is never reused (AUTOINCREMENT) and survives RENAME, so the
  id stays with the mailbox across renames, as §4.2.1 asks; a deleted and re-created
  mailbox gets a new row and so a new id.
* EMAILID (§5.1): ``M`` + the first 24 hex digits of the body's content hash, which the
  store already reports (``MessageRef.email_id``). Copies and moves keep the blob, so
  they keep the id; two byte-identical deliveries share it, which §5.1 allows.
* THREADID (§5.2): ``T`` + a hash of the thread's root Message-ID. The root is taken
  from the header alone, without looking at other messages: the first msg-id of
  References (RFC 5322 §3.6.4 puts the thread's first message first), else the
  In-Reply-To parent, else the message's own Message-ID, else the content hash (a
  message with no ids is a thread of one). What others do: Dovecot and Cyrus keep
  thread tables; what we do: this header-only rule, which groups every reply that
  carries References (all common clients) and costs one header read, cached per blob.
"""

from __future__ import annotations

import hashlib
import re

from mailyard.message.mime import parse_mime
from mailyard.message.parse import HeaderField, get_first
from mailyard.storage.interface import Store
from mailyard.storage.models import Mailbox, MessageRef

__all__ = ["email_id", "mailbox_id", "thread_id", "thread_id_of", "thread_root"]

_MSGID_RE = re.compile(rb"<([^<>\s]{1,998})>")


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def mailbox_id(mb: Mailbox) -> str:
    return "F" + _digest(f"{mb.account_id}/{mb.id}/{mb.uidvalidity}".encode())


def email_id(ref: MessageRef) -> str:
    return ref.email_id or "M" + ref.blob_id[:24]


def thread_root(fields: list[HeaderField]) -> bytes | None:
    """The Message-ID (without brackets) that names the message's thread, or None."""
    for name in ("References", "In-Reply-To", "Message-ID"):
        value = get_first(fields, name)
        if value:
            m = _MSGID_RE.search(value)
            if m:
                return m.group(1)
    return None


def thread_id(fields: list[HeaderField], blob_id: str) -> str:
    root = thread_root(fields)
    return "T" + (_digest(root) if root is not None else blob_id[:24])


HEADER_PROBE = 65536


async def thread_id_of(store: Store, ref: MessageRef) -> str:
    """THREADID of a stored message: from the cache, else from its header."""
    kind = "imap.THREADID"
    cached = await store.cache_get(ref.blob_id, kind)
    if cached is not None:
        return cached
    head = await store.blobs.read(ref.blob_id, 0, HEADER_PROBE)
    if len(head) >= HEADER_PROBE and b"\r\n\r\n" not in head and b"\n\n" not in head:
        head = await store.blobs.read(ref.blob_id)
    tid = thread_id(parse_mime(head).fields, ref.blob_id)
    store.cache_put_later(ref.blob_id, kind, tid)
    return tid
