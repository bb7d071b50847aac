"""Contract: the durable outbound queue."""

from __future__ import annotations

import dataclasses

import pytest

from mailyard.storage.interface import AlreadyExists, NotFound, Store
from mailyard.storage.models import (
    DeliveryTarget,
    QueueEntry,
    QueueRecipient,
    RecipientState,
)

from .helpers import account, blob, message, run, stored


def entry(ref, id_: str, *, next_attempt: float = 100.0, created: float = 1.0,
          recipients=("x@remote.org", "y@remote.org")) -> QueueEntry:
    return QueueEntry(
        id=id_, sender="alice@example.com", blob=ref,
        recipients=tuple(QueueRecipient(r, notify="FAILURE", orcpt=f"rfc822;{r}")
                         for r in recipients),
        created=created, next_attempt=next_attempt, ret="HDRS", envid="env1",
        smtputf8=True, body_8bit=True)


def test_queue_roundtrip_due_update_delete(make_store):
    async def body(s: Store) -> None:
        ref = await blob(s, message(1))
        e1 = entry(ref, "q1", next_attempt=100.0, created=1.0)
        e2 = entry(ref, "q2", next_attempt=50.0, created=2.0, recipients=("z@r.org",))
        await s.queue_add(e1)
        await s.queue_add(e2)
        with pytest.raises(AlreadyExists):
            await s.queue_add(e1)
        assert await s.queue_get("q1") == e1
        assert await s.queue_get("nope") is None
        report = dataclasses.replace(entry(ref, "q3", next_attempt=1e12), tls_report=True)
        await s.queue_add(report)  # an RFC 8460 report keeps its flag
        assert await s.queue_get("q3") == report
        assert not (await s.queue_get("q1")).tls_report  # type: ignore[union-attr]
        await s.queue_delete("q3")
        assert [e.id for e in await s.queue_list()] == ["q1", "q2"]
        assert await s.queue_due(40.0) == []
        assert [e.id for e in await s.queue_due(100.0)] == ["q2", "q1"]  # next attempt order
        assert [e.id for e in await s.queue_due(100.0, limit=1)] == ["q2"]

        r0, r1 = e1.recipients
        done = (dataclasses.replace(r0, state=RecipientState.DELIVERED, last_status="250 ok",
                                    attempts=1),
                dataclasses.replace(r1, last_status="451 later", attempts=1))
        await s.queue_update("q1", recipients=done, next_attempt=500.0, attempts=1,
                             last_error="451 later")
        got = await s.queue_get("q1")
        assert got is not None and got.recipients == done
        assert (got.next_attempt, got.attempts, got.last_error) == (500.0, 1, "451 later")
        assert not got.delay_warned
        await s.queue_update("q1", recipients=done, next_attempt=600.0, attempts=1,
                             last_error="451 later", delay_warned=True)
        await s.queue_update("q1", recipients=done, next_attempt=500.0, attempts=1,
                             last_error="451 later")  # None: the flag stays
        got = await s.queue_get("q1")
        assert got is not None and got.delay_warned
        with pytest.raises(NotFound):
            await s.queue_update("nope", recipients=done, next_attempt=1.0, attempts=1)

        # all recipients final: never due again
        final = tuple(dataclasses.replace(r, state=RecipientState.BOUNCED) for r in done)
        await s.queue_update("q1", recipients=final, next_attempt=0.0, attempts=2)
        assert [e.id for e in await s.queue_due(1e9)] == ["q2"]

        await s.queue_update("q2", recipients=e2.recipients, next_attempt=10_000.0, attempts=1)
        assert await s.queue_retry_now("q2", 60.0) == 1
        assert [e.id for e in await s.queue_due(60.0)] == ["q2"]
        assert await s.queue_retry_now("q1", 60.0) == 0  # nothing pending
        assert await s.queue_retry_now(None, 70.0) == 1

        await s.queue_delete("q1")
        await s.queue_delete("q1")  # idempotent
        assert await stored(s, ref.blob_id)  # q2 still holds it
        await s.queue_delete("q2")
        assert not await stored(s, ref.blob_id)
        assert await s.queue_list() == []

    run(make_store, body)


def test_deliver_and_enqueue_in_one_transaction(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        ref = await blob(s, message(1))
        e = entry(ref, "mixed")
        got = await s.deliver(ref, [DeliveryTarget(a.id)], queue=e)
        assert len(got) == 1
        assert await s.queue_get("mixed") == e
        # a failing delivery enqueues nothing
        ref2 = await blob(s, message(2))
        with pytest.raises(NotFound):
            await s.deliver(ref2, [DeliveryTarget(10**9)], queue=entry(ref2, "never"))
        assert await s.queue_get("never") is None
        # message gone, queue still holds the blob
        inbox = await s.get_mailbox(a.id, "INBOX")
        assert inbox is not None
        await s.store_flags(inbox.id, [1], ["\\Deleted"], "add")
        await s.expunge(inbox.id)
        assert await s.blobs.read(ref.blob_id) == message(1)
        await s.queue_delete("mixed")
        assert not await stored(s, ref.blob_id)

    run(make_store, body)


def test_queue_survives_reopen(make_store):
    async def first(s: Store) -> QueueEntry:
        ref = await blob(s, message(1))
        e = entry(ref, "durable")
        await s.queue_add(e)
        return e

    async def second(s: Store) -> None:
        assert await s.queue_get("durable") == e
        assert await s.blobs.read(e.blob.blob_id) == message(1)

    e = run(make_store, first)
    run(make_store, second)
