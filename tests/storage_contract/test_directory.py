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


def test_scram_secrets_travel_with_the_password(make_store):
    """The SCRAM secret is opaque text to the store; it is set and replaced together with
    the password hash, and filled in later only while that hash is unchanged."""
    async def body(s: Store) -> None:
        a = await s.add_account("a@example.com", "h1", scram_sha256="S1")
        assert a.scram_sha256 == "S1"
        assert (await s.get_account("a@example.com")) == a
        assert "S1" not in repr(a)
        legacy = await s.add_account("old@example.com", "h")
        assert legacy.scram_sha256 is None
        assert (await s.get_account_by_id(legacy.id)).scram_sha256 is None  # type: ignore[union-attr]

        await s.set_password("a@example.com", "h2", scram_sha256="S2")
        a2 = await s.get_account("a@example.com")
        assert a2 is not None and (a2.password_hash, a2.scram_sha256) == ("h2", "S2")
        # A new password without a secret clears the old one: it must not keep working.
        await s.set_password("a@example.com", "h3")
        a3 = await s.get_account("a@example.com")
        assert a3 is not None and (a3.password_hash, a3.scram_sha256) == ("h3", None)

        # Compare-and-set: stored only while the hash it was derived beside is current.
        assert not await s.set_scram_secret("a@example.com", "stale", password_hash="h2")
        assert (await s.get_account("a@example.com")).scram_sha256 is None  # type: ignore[union-attr]
        assert await s.set_scram_secret("A@Example.com", "S3", password_hash="h3")
        assert (await s.get_account("a@example.com")).scram_sha256 == "S3"  # type: ignore[union-attr]
        assert not await s.set_scram_secret("nobody@example.com", "S", password_hash="h3")
        assert [x.scram_sha256 for x in await s.list_accounts("example.com")] == ["S3", None]

    run(make_store, body)


def test_server_secrets_are_made_once_and_kept(make_store):
    async def first(s: Store) -> tuple[bytes, bytes]:
        one = await s.server_secret("scram-salt")
        assert len(one) == 32 and await s.server_secret("scram-salt") == one
        other = await s.server_secret("something-else")
        assert len(other) == 32 and other != one
        return one, other

    async def second(s: Store) -> None:
        assert await s.server_secret("scram-salt") == kept[0]
        assert await s.server_secret("something-else") == kept[1]

    kept = run(make_store, first)
    run(make_store, second)


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


def test_accounts_without_a_scram_secret_are_counted(make_store):
    async def body(s: Store) -> None:
        assert await s.count_accounts_without_scram() == 0
        await s.add_account("a@example.com", "hash-a", scram_sha256="SCRAM-SHA-256$4096:c2FsdA==$x:y")
        await s.add_account("b@example.com", "hash-b")
        await s.add_account("c@example.com", "hash-c")
        assert await s.count_accounts_without_scram() == 2
        assert await s.set_scram_secret("b@example.com", "SCRAM-SHA-256$4096:c2FsdA==$x:y",
                                        password_hash="hash-b")
        assert await s.count_accounts_without_scram() == 1
        await s.remove_account("c@example.com")
        assert await s.count_accounts_without_scram() == 0
        await s.set_password("a@example.com", "hash-a2")  # no secret given: cleared
        assert await s.count_accounts_without_scram() == 1

    run(make_store, body)
