"""Contract: domains, accounts, aliases, DKIM keys, auth results."""

from __future__ import annotations

import pytest

from mailyard.storage.interface import AlreadyExists, NotFound, StorageError, Store
from mailyard.storage.models import DEFAULT_MAILBOXES

from .helpers import account, deliver, run, stored


def test_domains(make_store):
    async def body(s: Store) -> None:
        d = await s.add_domain("Example.COM.")
        assert d.name == "example.com"
        assert (await s.get_domain("EXAMPLE.com")) == d
        assert await s.get_domain("other.org") is None
        with pytest.raises(AlreadyExists):
            await s.add_domain("example.com")
        await s.add_domain("b.example")
        assert [x.name for x in await s.list_domains()] == ["b.example", "example.com"]
        await s.remove_domain("b.example")
        assert [x.name for x in await s.list_domains()] == ["example.com"]
        with pytest.raises(NotFound):
            await s.remove_domain("b.example")

    run(make_store, body)


def test_remove_domain_with_accounts_is_refused(make_store):
    async def body(s: Store) -> None:
        await account(s, "a@example.com")
        with pytest.raises(StorageError):
            await s.remove_domain("example.com")
        await s.remove_account("a@example.com")
        await s.remove_domain("example.com")
        assert await s.get_domain("example.com") is None

    run(make_store, body)


def test_accounts(make_store):
    async def body(s: Store) -> None:
        a = await s.add_account("Alice@Example.COM", "h1", quota_bytes=1000)
        assert a.address == "alice@example.com" and a.quota_bytes == 1000
        assert (await s.get_domain("example.com")) is not None  # created on demand
        assert await s.get_account("ALICE@example.com") == a
        assert await s.get_account_by_id(a.id) == a
        assert await s.get_account("nobody@example.com") is None
        assert await s.get_account("not-an-address") is None
        with pytest.raises(AlreadyExists):
            await s.add_account("alice@EXAMPLE.com", "h")
        boxes = {m.name: m for m in await s.list_mailboxes(a.id)}
        assert set(boxes) == {n for n, _ in DEFAULT_MAILBOXES}
        for name, special in DEFAULT_MAILBOXES:
            assert boxes[name].special_use == special
            assert boxes[name].uidnext == 1 and boxes[name].subscribed
        assert len({m.uidvalidity for m in boxes.values()}) == len(boxes)

        await s.set_password("alice@example.com", "h2")
        await s.set_quota("alice@example.com", None)
        a2 = await s.get_account_by_id(a.id)
        assert a2 is not None and a2.password_hash == "h2" and a2.quota_bytes is None
        with pytest.raises(NotFound):
            await s.set_password("bob@example.com", "x")
        with pytest.raises(NotFound):
            await s.set_quota("bob@example.com", 1)

        b = await s.add_account("bob@other.org", "h")
        assert [x.address for x in await s.list_accounts()] == [
            "alice@example.com", "bob@other.org"]
        assert [x.id for x in await s.list_accounts("OTHER.org")] == [b.id]
        await s.remove_account("bob@other.org")
        assert await s.get_account_by_id(b.id) is None
        assert await s.list_mailboxes(b.id) == []
        with pytest.raises(NotFound):
            await s.remove_account("bob@other.org")

    run(make_store, body)


def test_account_usage_and_removal_releases_blobs(make_store):
    async def body(s: Store) -> None:
        a = await account(s)
        assert await s.account_usage(a.id) == 0
        d1 = await deliver(s, a, 1)
        await deliver(s, a, 2, box="Archive")
        msgs = await s.list_messages(d1.mailbox_id)
        size1 = msgs[0].size
        usage = await s.account_usage(a.id)
        assert usage > size1
        assert await stored(s, msgs[0].blob_id)
        await s.remove_account(a.address)
        assert not await stored(s, msgs[0].blob_id)
        with pytest.raises(NotFound):
            await s.account_usage(a.id)

    run(make_store, body)


def test_aliases(make_store):
    async def body(s: Store) -> None:
        al = await s.add_alias("Info@Example.com", ["Alice@example.com", "x@Remote.ORG"])
        assert al.source == "info@example.com"
        assert al.targets == ("alice@example.com", "x@remote.org")
        assert await s.get_alias("INFO@example.com") == al
        catch = await s.add_alias("@example.com", ["alice@example.com"])
        assert catch.source == "@example.com"
        await s.add_alias("sales@other.org", ["bob@other.org"])
        with pytest.raises(AlreadyExists):
            await s.add_alias("info@example.com", ["y@example.com"])
        assert [x.source for x in await s.list_aliases("example.com")] == [
            "@example.com", "info@example.com"]
        assert len(await s.list_aliases()) == 3
        await s.remove_alias("info@example.com")
        assert await s.get_alias("info@example.com") is None
        with pytest.raises(NotFound):
            await s.remove_alias("info@example.com")

    run(make_store, body)


def test_dkim_keys(make_store):
    async def body(s: Store) -> None:
        await s.add_dkim_key("Example.com", "s1", "rsa-sha256", "PEM1")
        await s.add_dkim_key("example.com", "s2", "ed25519-sha256", "PEM2", active=False)
        await s.add_dkim_key("other.org", "s1", "rsa-sha256", "PEM3")
        with pytest.raises(AlreadyExists):
            await s.add_dkim_key("example.com", "s1", "rsa-sha256", "x")
        assert await s.list_dkim_keys("example.com") == [
            ("example.com", "s1", "rsa-sha256", "PEM1", True),
            ("example.com", "s2", "ed25519-sha256", "PEM2", False),
        ]
        await s.set_dkim_active("example.com", "s1", False)
        await s.set_dkim_active("example.com", "s2", True)
        keys = await s.list_dkim_keys()
        assert [(k[0], k[1], k[4]) for k in keys] == [
            ("example.com", "s1", False), ("example.com", "s2", True), ("other.org", "s1", True)]
        with pytest.raises(NotFound):
            await s.set_dkim_active("example.com", "nope", True)

    run(make_store, body)


def test_record_auth_result(make_store):
    async def body(s: Store) -> None:
        await s.record_auth_result(when=10.0, source_ip="127.0.0.1", header_from="example.org",
                                   spf="pass", dkim="fail", dmarc="fail", disposition="reject")

    run(make_store, body)


def test_reopen_keeps_directory(make_store):
    async def first(s: Store) -> int:
        a = await account(s, "keep@example.com")
        await s.add_alias("a@example.com", ["keep@example.com"])
        return a.id

    async def second(s: Store) -> None:
        a = await s.get_account("keep@example.com")
        assert a is not None and a.id == account_id
        assert (await s.get_alias("a@example.com")) is not None

    account_id = run(make_store, first)
    run(make_store, second)
