"""In-process change bus (the SQLite backend's change feed).

The store publishes a :class:`~mailyard.storage.models.Change` for every
committed change (append, flags, expunge, mailbox create/delete/rename/
subscribe), always *after* the transaction committed, from the event loop
thread. IMAP sessions (IDLE, or between commands) and POP3 subscribe per
account.

Back-pressure: each subscription holds at most ``maxsize`` changes. A
subscriber that falls behind does not slow the writer and does not grow
memory: on overflow its queue is emptied, ``resync_needed`` is set and one
``Change(kind="resync", mailbox_id=0)`` is queued in place of what was dropped.
A consumer that sees ``kind == "resync"`` must re-read the state it cares
about (e.g. IMAP: compare UIDNEXT/HIGHESTMODSEQ and fetch ``changed_since`` /
``expunged_since``), then call :meth:`ChangeSubscription.clear_resync`.
Changes published after the overflow are queued after the resync marker.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable

from mailyard.storage.interface import StorageError
from mailyard.storage.models import Change

DEFAULT_MAXSIZE = 1024
RESYNC = "resync"


class SubscriptionClosed(StorageError):
    """``get`` on a closed subscription (the store is shutting down)."""


class Subscription:
    """One consumer's bounded view of one account's changes."""

    def __init__(self, bus: ChangeBus, account_id: int, maxsize: int) -> None:
        self._bus = bus
        self.account_id = account_id
        self._maxsize = max(1, maxsize)
        self._items: collections.deque[Change] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.resync_needed = False
        self.closed = False

    def _push(self, change: Change) -> None:
        if self.closed:
            return
        if len(self._items) >= self._maxsize:
            self._items.clear()
            self.resync_needed = True
            self._items.append(Change(account_id=self.account_id, mailbox_id=0, kind=RESYNC))
        self._items.append(change)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def get_nowait(self) -> Change | None:
        return self._items.popleft() if self._items else None

    async def get(self) -> Change:
        while not self._items:
            if self.closed:
                raise SubscriptionClosed("subscription closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def pending(self) -> int:
        return len(self._items)

    def clear_resync(self) -> None:
        self.resync_needed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._items.clear()
        self._bus._remove(self)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)


class ChangeBus:
    """Fan-out of committed changes to per-account subscriptions (one event loop)."""

    def __init__(self, *, maxsize: int = DEFAULT_MAXSIZE) -> None:
        self._maxsize = maxsize
        self._subs: dict[int, set[Subscription]] = {}

    def subscribe(self, account_id: int, *, maxsize: int | None = None) -> Subscription:
        sub = Subscription(self, account_id, self._maxsize if maxsize is None else maxsize)
        self._subs.setdefault(account_id, set()).add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.account_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.account_id]

    def publish(self, change: Change) -> None:
        for sub in tuple(self._subs.get(change.account_id, ())):
            sub._push(change)

    def publish_many(self, changes: Iterable[Change]) -> None:
        for c in changes:
            self.publish(c)

    def subscribers(self, account_id: int) -> int:
        return len(self._subs.get(account_id, ()))

    def close(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()
