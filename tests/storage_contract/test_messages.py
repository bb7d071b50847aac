"""Contract: delivery, UIDs and MODSEQ (RFC 9051 §2.3.1.1, RFC 7162), flags, copy/move, search."""

from __future__ import annotations

import asyncio

import pytest

from mailyard.storage.interface import NotFound, QuotaExceeded, StorageError, Store
from mailyard.storage.models import DeliveryTarget, SearchableText

from .helpers import account, blob, deliver, mailbox, message, run


def test_deliver_to_many_targets_shares_one_blob(make_store):
    async def body(s: Store) -> None:
        a = await account(s, "a@example.com")
        b = await account(s, "b@example.com")
        ref = await blob(s, message(1))
        got = await s.deliver(ref, [
            DeliveryTarget(a.id),
            DeliveryTarget(a.id, "Archive", frozenset({"\\seen", "$Label"})),
            DeliveryTarget(b.id, "No/Such/Box"),  # falls back to INBOX
        ], internaldate=1234.0)
        assert [d.account_id for d in got] == [a.id, a.id, b.id]
        a_inbox, a_arch, b_inbox = (await mailbox(s, a), await mailbox(s, a, "Archive"),
                                    await mailbox(s, b))
        assert [d.mailbox_id for d in got] == [a_inbox.id, a_arch.id, b_inbox.id]
        assert all(d.uid == 1 for d in got)
        (m,) = await s.list_messages(a_arch.id)
        assert m.flags == frozenset({"\\Seen", "$Label"})
        assert m.internaldate == 1234.0 and m.size == len(message(1)) and m.blob_id == ref.blob_id
        assert m.email_id
        assert await s.blobs.read(m.blob_id) == message(1)
        assert await s.account_usage(a.id) == 2 * ref.size
        assert await s.account_usage(b.id) == ref.size

    run(make_store, body)


def test_deliver_to_unknown_account_fails_whole_transaction(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        ref = await blob(s, message(1))
        with pytest.raises(NotFound):
            await s.deliver(ref, [DeliveryTarget(a.id), DeliveryTarget(9999)])
        assert await s.list_messages((await mailbox(s, a)).id) == []

    run(make_store, body)


def test_uids_ascend_and_are_never_reused(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        uids = [(await deliver(s, a, n)).uid for n in range(5)]
        assert uids == [1, 2, 3, 4, 5]
        mb = await mailbox(s, a)
        await s.store_flags(mb.id, [4, 5], ["\\Deleted"], "add")
        assert await s.expunge(mb.id) == [4, 5]
        assert (await deliver(s, a, 9)).uid == 6
        assert (await mailbox(s, a)).uidnext == 7

        # delete + recreate: a new UIDVALIDITY, so old UIDs can never be confused.
        old = await s.create_mailbox(a.id, "Tmp")
        await deliver(s, a, 10, box="Tmp")
        await s.delete_mailbox(a.id, "Tmp")
        new = await s.create_mailbox(a.id, "Tmp")
        assert new.uidvalidity != old.uidvalidity and new.id != old.id
        assert await s.list_messages(new.id) == []

    run(make_store, body)


def test_uidvalidity_unique_even_with_a_stopped_clock(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        seen = {m.uidvalidity for m in await s.list_mailboxes(a.id)}
        for i in range(5):
            mb = await s.create_mailbox(a.id, f"box{i}")
            assert mb.uidvalidity not in seen
            seen.add(mb.uidvalidity)

    run(make_store, body, clock=lambda: 1000.0)


def test_modseq_rules(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        mb0 = await mailbox(s, a)
        d1 = await deliver(s, a, 1)
        d2 = await deliver(s, a, 2)
        msgs = await s.list_messages(mb0.id)
        assert msgs[0].modseq < msgs[1].modseq
        st = await s.mailbox_status(mb0.id)
        assert st.highestmodseq == msgs[1].modseq > mb0.highestmodseq
        base = st.highestmodseq

        updates, failed = await s.store_flags(mb0.id, [d1.uid], ["\\Seen"], "add")
        assert failed == [] and [u.uid for u in updates] == [1]
        assert updates[0].modseq > base
        assert [m.uid for m in await s.changed_since(mb0.id, base)] == [d1.uid]
        # a no-op store does not bump modseq
        updates, _ = await s.store_flags(mb0.id, [d1.uid], ["\\SEEN"], "add")
        assert updates == []
        assert (await s.mailbox_status(mb0.id)).highestmodseq == base + 1

        await s.store_flags(mb0.id, [d2.uid], ["\\Deleted"], "add")
        before = (await s.mailbox_status(mb0.id)).highestmodseq
        assert await s.expunge(mb0.id) == [d2.uid]
        after = (await s.mailbox_status(mb0.id)).highestmodseq
        assert after > before
        assert await s.expunged_since(mb0.id, before) == [d2.uid]
        assert await s.expunged_since(mb0.id, after) == []
        assert await s.expunged_since(mb0.id, 0) == [d2.uid]

    run(make_store, body)


def test_store_flags_modes_and_unchangedsince(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        mb = await mailbox(s, a)
        for n in range(3):
            await deliver(s, a, n, flags=["\\Seen"] if n == 0 else [])
        up, _ = await s.store_flags(mb.id, [1, 2, 3], ["\\Flagged", "Work"], "add")
        assert [u.uid for u in up] == [1, 2, 3]
        assert up[0].flags == frozenset({"\\Seen", "\\Flagged", "Work"})
        up, _ = await s.store_flags(mb.id, [1, 2], ["\\flagged", "work"], "remove")
        assert [u.flags for u in up] == [frozenset({"\\Seen"}), frozenset()]
        up, _ = await s.store_flags(mb.id, [3], ["\\Answered"], "set")
        assert up[0].flags == frozenset({"\\Answered"})

        m3 = (await s.get_messages(mb.id, [3]))[0]
        m1 = (await s.get_messages(mb.id, [1]))[0]
        # RFC 7162 §3.1.3: messages changed after UNCHANGEDSINCE fail and are untouched
        up, failed = await s.store_flags(mb.id, [1, 3], ["\\Draft"], "add",
                                         unchanged_since=m1.modseq)
        assert failed == ([3] if m3.modseq > m1.modseq else [])
        assert 1 in [u.uid for u in up]
        assert (await s.get_messages(mb.id, [3]))[0].flags == frozenset({"\\Answered"})
        # unknown uids are ignored; a bad mode is refused
        assert await s.store_flags(mb.id, [99], ["\\Seen"], "add") == ([], [])
        with pytest.raises(StorageError):
            await s.store_flags(mb.id, [1], ["\\Seen"], "toggle")  # type: ignore[arg-type]

    run(make_store, body)


def test_expunge_only_deleted_and_restricted(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        mb = await mailbox(s, a)
        for n in range(4):
            await deliver(s, a, n, flags=["\\Deleted"] if n != 1 else [])
        assert await s.expunge(mb.id, [1, 2]) == [1]
        assert [m.uid for m in await s.list_messages(mb.id)] == [2, 3, 4]
        assert await s.expunge(mb.id) == [3, 4]
        assert [m.uid for m in await s.list_messages(mb.id)] == [2]
        assert await s.expunge(mb.id) == []

    run(make_store, body)


def test_get_messages_many_uids(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        mb = await mailbox(s, a)
        await asyncio.gather(*(deliver(s, a, n) for n in range(30)))
        got = await s.get_messages(mb.id, list(range(30, 0, -1)) + list(range(100, 2000)))
        assert [m.uid for m in got] == list(range(1, 31))

    run(make_store, body)


def test_copy_and_move(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        inbox = await mailbox(s, a)
        arch = await mailbox(s, a, "Archive")
        for n in range(3):
            await deliver(s, a, n, flags=["\\Seen"] if n == 0 else [])
        await deliver(s, a, 50, box="Archive")  # Archive uid 1 taken
        pairs = await s.copy(inbox.id, [1, 3, 77], arch.id)
        assert pairs == [(1, 2), (3, 3)]
        copied = await s.get_messages(arch.id, [2])
        assert copied[0].flags == frozenset({"\\Seen"})
        original = (await s.get_messages(inbox.id, [1]))[0]
        assert copied[0].blob_id == original.blob_id
        assert copied[0].internaldate == original.internaldate
        assert len(await s.list_messages(inbox.id)) == 3

        usage = await s.account_usage(a.id)
        moved = await s.move(inbox.id, [2], arch.id)
        assert moved == [(2, 4)]
        assert [m.uid for m in await s.list_messages(inbox.id)] == [1, 3]
        assert await s.expunged_since(inbox.id, 0) == [2]
        assert await s.account_usage(a.id) == usage
        with pytest.raises(StorageError):
            await s.move(inbox.id, [1], inbox.id)
        with pytest.raises(NotFound):
            await s.copy(inbox.id, [1], 987654)

    run(make_store, body)


def test_quota(make_store):
    async def body(s: Store) -> None:
        size = len(message(1, 1000))
        a = await account(s, quota_bytes=2 * size + 10)
        inbox = await mailbox(s, a)
        ref1 = await blob(s, message(1, 1000))
        await s.append(inbox.id, ref1)
        ref2 = await blob(s, message(2, 1000))
        await s.append(inbox.id, ref2)
        ref3 = await blob(s, message(3, 1000))
        with pytest.raises(QuotaExceeded) as info:
            await s.append(inbox.id, ref3)
        assert info.value.limit == 2 * size + 10 and info.value.account_id == a.id
        arch = await mailbox(s, a, "Archive")
        with pytest.raises(QuotaExceeded):
            await s.copy(inbox.id, [1], arch.id)
        assert await s.move(inbox.id, [1], arch.id) == [(1, 1)]  # a move frees what it takes
        # deliver does not check quota (callers check at RCPT time)
        await s.deliver(ref3, [DeliveryTarget(a.id)])
        assert await s.account_usage(a.id) == 3 * size
        await s.set_quota(a.address, None)
        await s.append(inbox.id, await blob(s, message(4, 1000)))

    run(make_store, body)


def test_append_returns_uid_flags_and_date(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        drafts = await mailbox(s, a, "Drafts")
        ref = await blob(s, message(7))
        d = await s.append(drafts.id, ref, flags=["\\Draft", "\\Seen"], internaldate=99.5)
        assert (d.account_id, d.mailbox_id, d.uid) == (a.id, drafts.id, 1)
        (m,) = await s.list_messages(drafts.id)
        assert m.flags == frozenset({"\\Draft", "\\Seen"}) and m.internaldate == 99.5
        with pytest.raises(NotFound):
            await s.append(424242, ref)

    run(make_store, body)


def test_search_text(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        mb = await mailbox(s, a)
        await deliver(s, a, 1, text=SearchableText(headers="Subject: Quarterly Report",
                                                      body="Numbers are UP this quarter"))
        await deliver(s, a, 2, text=SearchableText(headers="Subject: lunch",
                                                      body="Café au lait? say \"yes\""))
        await deliver(s, a, 3)  # no text indexed
        assert await s.search_text(mb.id, "quarter") == {1}
        assert await s.search_text(mb.id, "REPORT", field="headers") == {1}
        assert await s.search_text(mb.id, "report", field="body") == set()
        assert await s.search_text(mb.id, "this qua", field="body") == {1}
        assert await s.search_text(mb.id, "CAFÉ") == {2}
        assert await s.search_text(mb.id, '"yes"') == {2}
        assert await s.search_text(mb.id, "up") == {1}  # short query
        assert await s.search_text(mb.id, "é") == {2}
        assert await s.search_text(mb.id, "nothing like this") == set()
        assert await s.search_text(mb.id, "") == {1, 2, 3}
        assert await s.search_text(mb.id, "AND OR NOT *") == set()  # no query syntax leaks
        # copies share the index
        arch = await mailbox(s, a, "Archive")
        await s.copy(mb.id, [2], arch.id)
        assert await s.search_text(arch.id, "lunch") == {1}

    run(make_store, body)


def test_cache(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        d = await deliver(s, a, 1, flags=["\\Deleted"])
        (m,) = await s.list_messages(d.mailbox_id)
        assert await s.cache_get(m.blob_id, "envelope") is None
        await s.cache_put(m.blob_id, "envelope", "(NIL)")
        await s.cache_put(m.blob_id, "envelope", "(ENV)")
        await s.cache_put(m.blob_id, "bodystructure", "(BS)")
        assert await s.cache_get(m.blob_id, "envelope") == "(ENV)"
        assert await s.cache_get(m.blob_id, "bodystructure") == "(BS)"
        await s.expunge(d.mailbox_id)
        assert await s.cache_get(m.blob_id, "envelope") is None

    run(make_store, body)


def test_cache_get_many(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        for i in range(1, 4):
            await deliver(s, a, i)
        mb = await mailbox(s, a)
        m1, m2, m3 = await s.list_messages(mb.id)
        assert await s.cache_get_many([], "envelope") == {}
        assert await s.cache_get_many([m1.blob_id, m2.blob_id], "envelope") == {}
        await s.cache_put(m1.blob_id, "envelope", "(E1)")
        await s.cache_put(m3.blob_id, "envelope", "(E3)")
        await s.cache_put(m2.blob_id, "bodystructure", "(B2)")
        ids = [m1.blob_id, m2.blob_id, m3.blob_id, m1.blob_id, "no-such-blob"]
        assert await s.cache_get_many(ids, "envelope") == {m1.blob_id: "(E1)",
                                                           m3.blob_id: "(E3)"}
        assert await s.cache_get_many(ids, "bodystructure") == {m2.blob_id: "(B2)"}
        # agrees with cache_get one by one
        for m in (m1, m2, m3):
            one = await s.cache_get(m.blob_id, "envelope")
            many = await s.cache_get_many([m.blob_id], "envelope")
            assert many.get(m.blob_id) == one

    run(make_store, body)


def test_cache_put_later(make_store):
    """cache_put_later: served at once, stored by the time the store closes, and not
    kept for a blob that is gone."""
    async def body(s: Store) -> None:
        a = await account(s)
        d = await deliver(s, a, 1, flags=["\\Deleted"])
        d2 = await deliver(s, a, 2)
        (m,) = await s.get_messages(d.mailbox_id, [d.uid])
        (m2,) = await s.get_messages(d2.mailbox_id, [d2.uid])
        s.cache_put_later(m2.blob_id, "envelope", "(E2)")
        assert await s.cache_get(m2.blob_id, "envelope") == "(E2)"
        assert await s.cache_get_many([m2.blob_id], "envelope") == {m2.blob_id: "(E2)"}
        await s.expunge(d.mailbox_id)  # m's blob is gone
        s.cache_put_later(m.blob_id, "envelope", "(GONE)")
        # the row is refused when it is written (at the latest with the next write it
        # may ride with) and the value dropped
        await s.store_flags(d2.mailbox_id, [d2.uid], ["\\Seen"], "add")
        for _ in range(100):
            if await s.cache_get(m.blob_id, "envelope") is None:
                break
            await asyncio.sleep(0.01)
        assert await s.cache_get(m.blob_id, "envelope") is None
        s.cache_put_later(m2.blob_id, "bodystructure", "(B2)")  # in flight at close

    run(make_store, body)

    async def reopened(s: Store) -> None:
        a = await s.get_account("alice@example.com")
        assert a is not None
        mb = await s.get_mailbox(a.id, "INBOX")
        assert mb is not None
        (m2,) = await s.list_messages(mb.id)
        assert await s.cache_get(m2.blob_id, "envelope") == "(E2)"
        assert await s.cache_get(m2.blob_id, "bodystructure") == "(B2)"

    run(make_store, reopened)


def test_maildrop_lock(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        b = await account(s, "b@example.com")
        assert await s.lock_maildrop(a.id)
        assert not await s.lock_maildrop(a.id)
        assert await s.lock_maildrop(b.id)
        await s.unlock_maildrop(a.id)
        assert await s.lock_maildrop(a.id)

    run(make_store, body)


def test_cache_values_go_with_their_blob(make_store):
    """A cached value read once is not served after its blob is gone, and comes back
    (from the database) when the same bytes are delivered again."""
    async def body(s: Store) -> None:
        a = await account(s)
        d = await deliver(s, a, 1, flags=["\\Deleted"])
        (m,) = await s.list_messages(d.mailbox_id)
        await s.cache_put(m.blob_id, "envelope", "(ENV)")
        assert await s.cache_get(m.blob_id, "envelope") == "(ENV)"
        assert await s.cache_get_many([m.blob_id], "envelope") == {m.blob_id: "(ENV)"}
        await s.expunge(d.mailbox_id)
        assert await s.cache_get(m.blob_id, "envelope") is None
        assert await s.cache_get_many([m.blob_id], "envelope") == {}
        await s.cache_put(m.blob_id, "envelope", "(GONE)")  # no such blob: ignored
        assert await s.cache_get(m.blob_id, "envelope") is None
        d2 = await deliver(s, a, 1)
        (m2,) = await s.list_messages(d2.mailbox_id)
        assert m2.blob_id == m.blob_id
        assert await s.cache_get(m2.blob_id, "envelope") is None
        await s.cache_put(m2.blob_id, "envelope", "(ENV2)")
        assert await s.cache_get_many([m2.blob_id], "envelope") == {m2.blob_id: "(ENV2)"}

    run(make_store, body)
