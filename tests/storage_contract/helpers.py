"""Small helpers shared by the contract tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from mailyard.storage.interface import Store
from mailyard.storage.models import (
    Account,
    BlobRef,
    Delivered,
    DeliveryTarget,
    Mailbox,
    SearchableText,
)


def run(make_store: Callable[..., Store], body: Callable[[Store], Awaitable[Any]],
        **kw: Any) -> Any:
    """Open a store, run ``body(store)`` in a fresh event loop, close the store."""

    async def main() -> Any:
        store = make_store(**kw)
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def message(n: int, size: int = 0) -> bytes:
    head = f"From: a@example.org\r\nSubject: message {n}\r\n\r\n".encode()
    body = f"body of message {n}\r\n".encode()
    if size > len(head) + len(body):
        body += b"x" * (size - len(head) - len(body) - 2) + b"\r\n"
    return head + body


async def account(store: Store, address: str = "alice@example.com", **kw: Any) -> Account:
    return await store.add_account(address, "hash", **kw)


async def mailbox(store: Store, acc: Account, name: str = "INBOX") -> Mailbox:
    mb = await store.get_mailbox(acc.id, name)
    assert mb is not None
    return mb


async def blob(store: Store, data: bytes) -> BlobRef:
    return await store.blobs.put(data)


async def deliver(store: Store, acc: Account, n: int = 0, *, box: str = "INBOX",
                  flags: Iterable[str] = (), data: bytes | None = None,
                  text: SearchableText | None = None) -> Delivered:
    ref = await blob(store, message(n) if data is None else data)
    got = await store.deliver(ref, [DeliveryTarget(acc.id, box, frozenset(flags))], text=text)
    assert len(got) == 1
    return got[0]


async def stored(store: Store, blob_id: str) -> bool:
    """Whether the blob store still holds ``blob_id`` (backend-neutral: ``path`` may be None)."""
    from mailyard.storage.interface import NotFound

    try:
        await store.blobs.read(blob_id, 0, 1)
    except NotFound:
        return False
    return True
