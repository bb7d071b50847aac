"""Contract: CREATE/DELETE/RENAME/SUBSCRIBE/STATUS (RFC 9051 §6.3)."""

from __future__ import annotations

import pytest

from mailyard.storage.interface import AlreadyExists, NotFound, StorageError, Store

from .helpers import account, deliver, mailbox, run, stored


def test_create_and_lookup(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        mb = await s.create_mailbox(a.id, "Projects/2024/Q1", special_use="\\Flagged")
        assert mb.name == "Projects/2024/Q1" and mb.special_use == "\\Flagged"
        assert mb.uidnext == 1 and mb.highestmodseq >= 1
        names = [m.name for m in await s.list_mailboxes(a.id)]
        assert {"Projects", "Projects/2024", "Projects/2024/Q1"} <= set(names)
        assert await s.get_mailbox_by_id(mb.id) == mb
        assert await s.get_mailbox(a.id, "Projects/2024/Q1") == mb
        assert await s.get_mailbox(a.id, "projects/2024/q1") is None  # only INBOX is caseless
        assert (await s.get_mailbox(a.id, "inbox")).name == "INBOX"  # type: ignore[union-attr]
        assert await s.get_mailbox_by_id(10**9) is None
        with pytest.raises(AlreadyExists):
            await s.create_mailbox(a.id, "Projects")
        with pytest.raises(AlreadyExists):
            await s.create_mailbox(a.id, "inbox")
        with pytest.raises(StorageError):
            await s.create_mailbox(a.id, "")
        with pytest.raises(StorageError):
            await s.create_mailbox(a.id, "a//b")
        with pytest.raises(NotFound):
            await s.create_mailbox(10**9, "x")
        inbox_child = await s.create_mailbox(a.id, "inbox/Sub")
        assert inbox_child.name == "INBOX/Sub"

    run(make_store, body)


def test_delete(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        await s.create_mailbox(a.id, "a/x")
        d = await deliver(s, a, 1, box="a")
        (m,) = await s.list_messages(d.mailbox_id)
        await s.delete_mailbox(a.id, "a")  # only "a"; "a/x" stays
        names = {mb.name for mb in await s.list_mailboxes(a.id)}
        assert "a" not in names and "a/x" in names
        assert not await stored(s, m.blob_id)
        assert await s.account_usage(a.id) == 0
        with pytest.raises(NotFound):
            await s.delete_mailbox(a.id, "a")
        with pytest.raises(StorageError):
            await s.delete_mailbox(a.id, "INBOX")
        with pytest.raises(StorageError):
            await s.delete_mailbox(a.id, "Inbox")
        assert await s.get_mailbox(a.id, "INBOX") is not None

    run(make_store, body)


def test_rename_moves_children(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        parent = await s.create_mailbox(a.id, "a")
        child = await s.create_mailbox(a.id, "a/x")
        grandchild = await s.create_mailbox(a.id, "a/x/y")
        other = await s.create_mailbox(a.id, "ab")  # a prefix, not a child
        await deliver(s, a, 1, box="a/x")
        await s.rename_mailbox(a.id, "a", "b")
        names = {mb.name: mb for mb in await s.list_mailboxes(a.id)}
        assert "a" not in names and "a/x" not in names
        assert names["b"].id == parent.id and names["b"].uidvalidity == parent.uidvalidity
        assert names["b/x"].id == child.id and names["b/x/y"].id == grandchild.id
        assert names["ab"].id == other.id
        assert len(await s.list_messages(child.id)) == 1
        with pytest.raises(NotFound):
            await s.rename_mailbox(a.id, "a", "c")
        with pytest.raises(AlreadyExists):
            await s.rename_mailbox(a.id, "b", "ab")
        with pytest.raises(StorageError):
            await s.rename_mailbox(a.id, "b", "b/x/z")

    run(make_store, body)


def test_rename_inbox_moves_messages(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        inbox = await mailbox(s, a)
        await s.create_mailbox(a.id, "INBOX/kid")
        for n in range(3):
            await deliver(s, a, n, flags=["\\Seen"] if n == 1 else [])
        await s.rename_mailbox(a.id, "inbox", "Old/Mail")
        new = await mailbox(s, a, "Old/Mail")
        assert new.id != inbox.id
        assert [m.uid for m in await s.list_messages(new.id)] == [1, 2, 3]
        assert (await s.get_messages(new.id, [2]))[0].flags == frozenset({"\\Seen"})
        assert await s.list_messages(inbox.id) == []
        st = await s.mailbox_status(inbox.id)
        assert st.messages == 0 and st.uidnext == 4 and st.uidvalidity == inbox.uidvalidity
        assert await s.get_mailbox(a.id, "INBOX/kid") is not None
        assert (await deliver(s, a, 9)).uid == 4

    run(make_store, body)


def test_subscribe_and_status(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        await s.set_subscribed(a.id, "Junk", False)
        assert not (await mailbox(s, a, "Junk")).subscribed
        await s.set_subscribed(a.id, "Junk", True)
        assert (await mailbox(s, a, "Junk")).subscribed
        with pytest.raises(NotFound):
            await s.set_subscribed(a.id, "Nope", True)

        mb = await mailbox(s, a)
        sizes = 0
        for n in range(4):
            d = await deliver(s, a, n, flags={0: ["\\Seen"], 1: ["\\Deleted", "\\Seen"]}.get(n, []))
            sizes += (await s.get_messages(mb.id, [d.uid]))[0].size
        st = await s.mailbox_status(mb.id)
        assert (st.messages, st.unseen, st.deleted, st.recent) == (4, 2, 1, 0)
        assert st.size == sizes and st.uidnext == 5 and st.uidvalidity == mb.uidvalidity
        with pytest.raises(NotFound):
            await s.mailbox_status(10**9)

    run(make_store, body)


def test_recent_watermark_is_kept_with_the_mailbox(make_store):
    """``remember_recent`` raises ``Mailbox.recent_uid`` (never lowers it); it is not
    waited for, and lands with the next durable write."""
    async def body(s: Store) -> None:
        a = await account(s)
        inbox = await s.get_mailbox(a.id, "INBOX")
        assert inbox is not None and inbox.recent_uid == 0
        s.remember_recent(inbox.id, 7)
        s.remember_recent(inbox.id, 3)  # lower: ignored
        await s.create_mailbox(a.id, "Other")  # any awaited write carries it
        got = await s.get_mailbox_by_id(inbox.id)
        assert got is not None and got.recent_uid == 7
        assert (await s.get_mailbox(a.id, "Other")).recent_uid == 0  # type: ignore[union-attr]

    run(make_store, body)
