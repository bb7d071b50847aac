"""An in-memory store with just the outbound-queue and blob methods (queue tests)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Sequence

from mailyard.storage.interface import NotFound
from mailyard.storage.models import BlobRef, QueueEntry, QueueRecipient, RecipientState


class MemBlobs:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def put(self, data: bytes) -> BlobRef:
        blob_id = hashlib.sha256(data).hexdigest()
        self.data[blob_id] = bytes(data)
        return BlobRef(blob_id, len(data))

    async def read(self, blob_id: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            data = self.data[blob_id]
        except KeyError:
            raise NotFound(blob_id) from None
        end = None if length is None else offset + length
        return data[offset:end]

    async def stream(self, blob_id: str, *, offset: int = 0, length: int | None = None,
                     chunk: int = 65536) -> AsyncIterator[bytes]:
        data = await self.read(blob_id, offset, length)
        for i in range(0, len(data), chunk):
            yield data[i : i + chunk]

    def path(self, blob_id: str) -> str | None:
        return None


class MemQueueStore:
    """queue_* of :class:`mailyard.storage.interface.Store`, in a dict."""

    def __init__(self) -> None:
        self.blobs = MemBlobs()
        self.entries: dict[str, QueueEntry] = {}
        self.updates = 0
        self.delivered: list[tuple[BlobRef, object]] = []

    async def queue_add(self, entry: QueueEntry) -> None:
        self.entries[entry.id] = entry

    async def queue_get(self, entry_id: str) -> QueueEntry | None:
        return self.entries.get(entry_id)

    async def queue_list(self) -> list[QueueEntry]:
        return sorted(self.entries.values(), key=lambda e: e.created)

    async def queue_due(self, now: float, limit: int = 100) -> list[QueueEntry]:
        due = [e for e in self.entries.values()
               if e.next_attempt <= now
               and any(r.state == RecipientState.PENDING for r in e.recipients)]
        due.sort(key=lambda e: (e.created, e.id))
        return due[:limit]

    async def queue_update(self, entry_id: str, *, recipients: Sequence[QueueRecipient],
                           next_attempt: float, attempts: int, last_error: str = "",
                           delay_warned: bool | None = None) -> None:
        e = self.entries.get(entry_id)
        if e is None:
            raise NotFound(entry_id)
        self.updates += 1
        self.entries[entry_id] = dataclasses.replace(
            e, recipients=tuple(recipients), next_attempt=next_attempt, attempts=attempts,
            last_error=last_error,
            delay_warned=e.delay_warned if delay_warned is None else delay_warned)

    async def queue_delete(self, entry_id: str) -> None:
        self.entries.pop(entry_id, None)

    async def queue_retry_now(self, entry_id: str | None, now: float) -> int:
        ids = [entry_id] if entry_id is not None else list(self.entries)
        n = 0
        for i in ids:
            if i in self.entries:
                self.entries[i] = dataclasses.replace(self.entries[i], next_attempt=now)
                n += 1
        return n
