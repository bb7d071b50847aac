"""The shared authenticator: argon2 verification, the credential cache, failure delays."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailyard.policy.auth import Authenticator, CredentialCache, hash_password
from mailyard.storage.sqlite import SQLiteStore


def test_cache_hits_only_the_same_password_and_hash() -> None:
    now = [0.0]
    cache = CredentialCache(ttl=10, clock=lambda: now[0])
    cache.remember("a@x.test", "pw-one", "$hash1")
    assert cache.hit("a@x.test", "pw-one", "$hash1")
    assert not cache.hit("a@x.test", "pw-two", "$hash1")
    assert not cache.hit("a@x.test", "pw-one", "$hash2")  # password changed: a new hash
    cache.remember("a@x.test", "pw-one", "$hash1")
    now[0] = 11
    assert not cache.hit("a@x.test", "pw-one", "$hash1")  # expired


def test_cache_is_bounded() -> None:
    cache = CredentialCache(max_entries=100)
    for i in range(1000):
        cache.remember(f"u{i}@x.test", "pw", "$h")
    assert len(cache._entries) == 100


def test_authenticator_uses_and_invalidates_the_cache(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteStore(tmp_path)
        await store.open()
        await store.add_account("a@x.test", hash_password("right-pw"))
        auth = Authenticator(store, base_delay=0, max_delay=0)
        assert await auth.authenticate("A@X.test", "right-pw", remote_ip="127.0.0.1")
        assert auth.cache.hit("a@x.test", "right-pw",
                              (await store.get_account("a@x.test")).password_hash)  # type: ignore[union-attr]
        assert await auth.authenticate("a@x.test", "right-pw", remote_ip="127.0.0.1")
        assert await auth.authenticate("a@x.test", "wrong", remote_ip="127.0.0.1") is None
        await store.set_password("a@x.test", hash_password("new-pw"))
        assert await auth.authenticate("a@x.test", "right-pw", remote_ip="127.0.0.1") is None
        assert await auth.authenticate("a@x.test", "new-pw", remote_ip="127.0.0.1")
        assert await auth.authenticate("nobody@x.test", "new-pw", remote_ip="127.0.0.1") is None
        await store.close()

    asyncio.run(go())
