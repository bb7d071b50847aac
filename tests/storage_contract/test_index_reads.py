"""Contract: the compact reads behind SELECT and FETCH FLAGS (``mailbox_index``,
``flag_rows``, ``index_rows``, and ``get_messages`` over dense and sparse UID sets)
agree with ``list_messages``."""

from __future__ import annotations

from mailyard.storage.interface import Store
from mailyard.storage.models import DeliveryTarget

from .helpers import account, blob, mailbox, message, run


def test_mailbox_index_matches_list_messages(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        inbox = await mailbox(s, a)
        empty = await s.mailbox_index(inbox.id)
        assert list(empty.uids) == [] and empty.modseq == 0
        assert empty.keywords == frozenset() and empty.first_unseen is None
        flags = [{"\\Seen"}, {"\\Seen", "$Work"}, set(), {"Later", "\\Flagged"}, {"\\Seen"}]
        for i, f in enumerate(flags):
            ref = await blob(s, message(i))
            await s.deliver(ref, [DeliveryTarget(a.id, flags=frozenset(f))])
        await s.expunge(inbox.id, [])  # nothing flagged \Deleted: a no-op
        await s.store_flags(inbox.id, [1], ["\\Deleted"], "add")
        await s.expunge(inbox.id)
        refs = await s.list_messages(inbox.id)
        idx = await s.mailbox_index(inbox.id)
        assert list(idx.uids) == [m.uid for m in refs] == [2, 3, 4, 5]
        assert idx.modseq == max(m.modseq for m in refs)
        assert idx.keywords == frozenset({"$Work", "Later"})
        assert idx.first_unseen == 3
        await s.store_flags(inbox.id, [3, 4], ["\\Seen"], "add")
        assert (await s.mailbox_index(inbox.id)).first_unseen is None

    run(make_store, body)


def test_flag_rows_and_dense_get_messages(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        inbox = await mailbox(s, a)
        for i in range(40):
            ref = await blob(s, message(i))
            f = frozenset({"\\Seen", "$K"}) if i % 3 == 0 else frozenset()
            await s.deliver(ref, [DeliveryTarget(a.id, flags=f)])
        await s.store_flags(inbox.id, list(range(10, 20)), ["\\Deleted"], "add")
        await s.expunge(inbox.id)
        refs = {m.uid: m for m in await s.list_messages(inbox.id)}
        rows = await s.flag_rows(inbox.id, 5, 30)
        assert [u for u, _, _ in rows] == [u for u in sorted(refs) if 5 <= u <= 30]
        for uid, modseq, text in rows:
            assert modseq == refs[uid].modseq
            assert frozenset(text.split()) == refs[uid].flags
            assert text == text.strip()
        assert await s.flag_rows(inbox.id, 11, 19) == []
        # dense and sparse UID sets, with gaps and UIDs that do not exist
        for wanted in (list(range(1, 41)), list(range(1, 60)), [40, 2, 9, 21, 21, 99],
                       list(range(1, 41, 2)), [25]):
            got = await s.get_messages(inbox.id, wanted)
            assert [m.uid for m in got] == sorted(u for u in set(wanted) if u in refs)
            assert all(m == refs[m.uid] for m in got)
            # index_rows: the same messages as plain rows
            rows_ = await s.index_rows(inbox.id, wanted)
            assert [row[0] for row in rows_] == [m.uid for m in got]
            for (uid, modseq, text, idate, size, blob_id), m in zip(rows_, got, strict=True):
                assert (uid, modseq, idate, size, blob_id) == (
                    m.uid, m.modseq, m.internaldate, m.size, m.blob_id)
                assert frozenset(text.split()) == m.flags and text == text.strip()
        assert await s.index_rows(inbox.id, []) == []

    run(make_store, body)


def test_unindexed_uids(make_store):
    async def body(s: Store) -> None:
        from mailyard.storage.models import SearchableText

        a = await account(s)
        inbox = await mailbox(s, a)
        assert await s.unindexed_uids(inbox.id) == set()
        for i in range(4):
            text = SearchableText(headers=f"Subject: n{i}") if i % 2 else None
            await s.deliver(await blob(s, message(i)), [DeliveryTarget(a.id)], text=text)
        assert await s.unindexed_uids(inbox.id) == {1, 3}
        assert await s.search_text(inbox.id, "Subject: n", field="headers") == {2, 4}

    run(make_store, body)


def test_header_candidates_are_a_superset(make_store):
    """SEARCH's header prefilter: never misses a match, never answers for another mailbox."""
    async def body(s: Store) -> None:
        from mailyard.storage.models import SearchableText

        a = await account(s)
        inbox = await mailbox(s, a)
        for i in range(4):
            text = SearchableText(headers=f"Subject: n{i}") if i % 2 else None
            await s.deliver(await blob(s, message(i)), [DeliveryTarget(a.id)], text=text)
        await s.search_text(inbox.id, "Subject: n")  # a store may index in the background
        got = await s.header_candidates(inbox.id, "Subject: n1")
        assert got is None or {2} <= got <= {1, 2, 3, 4}
        other = await mailbox(s, a, "Archive")
        assert await s.header_candidates(other.id, "Subject: n1") in (None, set())

    run(make_store, body)
