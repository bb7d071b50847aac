"""``\\Recent`` for IMAP4rev1 clients (RFC 3501 §2.3.2; RFC 9051 removed it).

RFC 3501: a message is recent in the first session that sees it with the mailbox
selected read-write; no other session sees it as recent. We keep, per mailbox, the
highest UID some session has already claimed ("the watermark"):

* SELECT claims every UID above the watermark for that session (``* n RECENT``);
* new mail announced to a read-write session is claimed by it the same way;
* EXAMINE sees the unclaimed UIDs as recent but claims nothing (RFC 3501 §6.3.2:
  EXAMINE must not make messages lose ``\\Recent``);
* STATUS RECENT counts the UIDs above the watermark.

As Dovecot and Cyrus do, the watermark is stored with the mailbox
(``Mailbox.recent_uid``, raised by ``Store.remember_recent``), so a restart does not
make every message recent again. The process also keeps it in memory, per store and
mailbox: the stored value seeds it the first time, a claim raises both (the store's
without a wait; a crash may lose the last claims: those messages are recent once more).
With several front-end processes each would claim from the stored value it last read.
Sessions that ENABLE IMAP4rev2 see no ``\\Recent`` at all.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from mailyard.storage.interface import Store
from mailyard.storage.models import Mailbox

__all__ = ["claim", "peek", "unclaimed"]

_WATERMARKS: weakref.WeakKeyDictionary[object, dict[int, int]] = weakref.WeakKeyDictionary()


def _marks(store: object) -> dict[int, int]:
    marks = _WATERMARKS.get(store)
    if marks is None:
        marks = {}
        _WATERMARKS[store] = marks
    return marks


def _mark(store: object, mailbox: Mailbox) -> int:
    """The watermark: this process's, or the stored one when that is higher (the first
    time, or another process claimed since)."""
    marks = _marks(store)
    mark = max(marks.get(mailbox.id, 0), mailbox.recent_uid)
    marks[mailbox.id] = mark
    return mark


def peek(store: object, mailbox: Mailbox, uids: Iterable[int]) -> set[int]:
    """The UIDs no session has claimed yet (recent for an EXAMINE)."""
    mark = _mark(store, mailbox)
    return {u for u in uids if u > mark}


def claim(store: Store, mailbox: Mailbox, uids: Iterable[int]) -> set[int]:
    """Claim the unclaimed UIDs for the caller's session; returns them."""
    mark = _mark(store, mailbox)
    mine = {u for u in uids if u > mark}
    if mine:
        top = max(mine)
        _marks(store)[mailbox.id] = top
        store.remember_recent(mailbox.id, top)
    return mine


def unclaimed(store: object, mailbox: Mailbox, uids: Iterable[int]) -> int:
    """STATUS RECENT: how many of ``uids`` are still unclaimed."""
    mark = _mark(store, mailbox)
    return sum(1 for u in uids if u > mark)
