"""``\\Recent`` for IMAP4rev1 clients (RFC 3501 §2.3.2; RFC 9051 removed it).

RFC 3501: a message is recent in the first session that sees it with the mailbox
selected read-write; no other session sees it as recent. We keep, per store and
mailbox, the highest UID some session has already claimed ("the watermark"), in
this process only:

* SELECT claims every UID above the watermark for that session (``* n RECENT``);
* new mail announced to a read-write session is claimed by it the same way;
* EXAMINE sees the unclaimed UIDs as recent but claims nothing (RFC 3501 §6.3.2:
  EXAMINE must not make messages lose ``\\Recent``);
* STATUS RECENT counts the UIDs above the watermark.

What others do: Dovecot and Cyrus store the watermark with the mailbox. What we do:
a per-process table, which is what the task allows for now. Its known gap: after a
restart the watermark starts at 0, so the first session to select a mailbox sees
all of its messages as recent once; with several front-end processes each keeps
its own table. Sessions that ENABLE IMAP4rev2 see no ``\\Recent`` at all.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

__all__ = ["claim", "peek", "unclaimed"]

_WATERMARKS: weakref.WeakKeyDictionary[object, dict[int, int]] = weakref.WeakKeyDictionary()


def _marks(store: object) -> dict[int, int]:
    marks = _WATERMARKS.get(store)
    if marks is None:
        marks = {}
        _WATERMARKS[store] = marks
    return marks


def peek(store: object, mailbox_id: int, uids: Iterable[int]) -> set[int]:
    """The UIDs no session has claimed yet (recent for an EXAMINE)."""
    mark = _marks(store).get(mailbox_id, 0)
    return {u for u in uids if u > mark}


def claim(store: object, mailbox_id: int, uids: Iterable[int]) -> set[int]:
    """Claim the unclaimed UIDs for the caller's session; returns them."""
    marks = _marks(store)
    mark = marks.get(mailbox_id, 0)
    mine = {u for u in uids if u > mark}
    if mine:
        marks[mailbox_id] = max(mine)
    return mine


def unclaimed(store: object, mailbox_id: int, uids: Iterable[int]) -> int:
    """STATUS RECENT: how many of ``uids`` are still unclaimed."""
    mark = _marks(store).get(mailbox_id, 0)
    return sum(1 for u in uids if u > mark)
