"""The shared authenticator: argon2 verification, the credential cache, failure delays."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailyard.policy.auth import (
    SCRAM_ITERATIONS,
    Authenticator,
    CredentialCache,
    hash_password,
    scram_secret,
)
from mailyard.protocol import sasl
from mailyard.storage.sqlite import SQLiteStore
from mailyard.testing.scram import ScramClient


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


# -- SCRAM-SHA-256 ---------------------------------------------------------------------------

def _scram(secrets: sasl.ScramSecrets, user: str, password: str) -> bool:
    """One exchange of the server machine against the test client; True when logged in."""
    client = ScramClient(user, password)
    machine = sasl.ScramSha256()
    assert isinstance(machine.start(client.first()), sasl.NeedSecrets)
    server_first = machine.secrets(secrets)
    assert isinstance(server_first, sasl.Challenge)
    step = machine.step(client.final(server_first.data))
    if isinstance(step, sasl.Challenge):
        client.check(step.data)
        step = machine.step(b"")
    assert isinstance(step, sasl.ProofChecked)
    return step.valid


def test_scram_secret_is_fresh_per_password_set() -> None:
    one = sasl.ScramSecrets.from_text(scram_secret("pw"))
    two = sasl.ScramSecrets.from_text(scram_secret("pw"))
    assert one.iterations == two.iterations == SCRAM_ITERATIONS >= 4096  # RFC 7677 §4
    assert len(one.salt) == 16 and one.salt != two.salt and one.stored_key != two.stored_key
    assert _scram(one, "a@x.test", "pw") and not _scram(one, "a@x.test", "pw2")


def test_scram_secrets_of_known_and_unknown_users(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteStore(tmp_path)
        await store.open()
        await store.add_account("a@x.test", hash_password("pw"), scram_sha256=scram_secret("pw"))
        auth = Authenticator(store, base_delay=0, max_delay=0)
        real = await auth.scram_secrets("A@X.test", remote_ip="127.0.0.1")
        assert _scram(real, "A@X.test", "pw")
        assert await auth.authenticate_proof("A@X.test", valid=True, remote_ip="127.0.0.1")

        ghost = await auth.scram_secrets("nobody@x.test", remote_ip="127.0.0.1")
        again = await auth.scram_secrets("NOBODY@x.test", remote_ip="127.0.0.1")
        other = await auth.scram_secrets("someone@x.test", remote_ip="127.0.0.1")
        assert ghost.salt == again.salt and ghost.salt != other.salt  # stable, per name
        assert (len(ghost.salt), ghost.iterations) == (len(real.salt), real.iterations)
        assert not _scram(ghost, "nobody@x.test", "pw")
        assert ghost.stored_key != again.stored_key  # made up each time: nothing to match
        # The key behind the salts lives in the store: another process agrees.
        auth2 = Authenticator(store, base_delay=0, max_delay=0)
        assert (await auth2.scram_secrets("nobody@x.test", remote_ip="1.2.3.4")).salt == ghost.salt
        assert (await auth2.scram_secrets("not an address", remote_ip="1.2.3.4")).salt

        # A foreign authzid gets made-up secrets too (no proxy authorisation).
        foreign = await auth.scram_secrets("a@x.test", authzid="b@x.test", remote_ip="127.0.0.1")
        assert not _scram(foreign, "a@x.test", "pw")
        same = await auth.scram_secrets("a@x.test", authzid="A@x.test", remote_ip="127.0.0.1")
        assert _scram(same, "a@x.test", "pw")
        assert await auth.authenticate_proof("a@x.test", valid=True, authzid="b@x.test",
                                             remote_ip="127.0.0.1") is None

        # A disabled account looks like an unknown one.
        await store.set_disabled("a@x.test", True)
        disabled = await auth.scram_secrets("a@x.test", remote_ip="127.0.0.1")
        assert not _scram(disabled, "a@x.test", "pw")
        assert await auth.authenticate_proof("a@x.test", valid=True, remote_ip="127.0.0.1") is None
        await store.close()

    asyncio.run(go())


def test_scram_failures_count_like_plain_ones(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteStore(tmp_path)
        await store.open()
        await store.add_account("a@x.test", hash_password("pw"), scram_sha256=scram_secret("pw"))
        auth = Authenticator(store, base_delay=0.2, max_delay=1.0, account_lock_after=3)
        assert await auth.authenticate_proof("a@x.test", valid=False, remote_ip="10.0.0.1") is None
        assert auth.by_ip.failures("10.0.0.1") == 1 and auth.by_account.failures("a@x.test") == 1
        # The penalty delay comes before the secrets (the first answer of the exchange).
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await auth.scram_secrets("a@x.test", remote_ip="10.0.0.1")
        assert loop.time() - t0 >= 0.19
        t0 = loop.time()
        await auth.scram_secrets("a@x.test", remote_ip="10.0.0.2")  # another address: none
        assert loop.time() - t0 < 0.19
        # A PLAIN failure and a SCRAM one share the counters; a locked account gets made-up
        # secrets and a valid proof no longer logs in.
        assert await auth.authenticate("a@x.test", "wrong", remote_ip="10.0.0.3") is None
        assert await auth.authenticate_proof("a@x.test", valid=False, remote_ip="10.0.0.4") is None
        assert auth.by_account.failures("a@x.test") == 3
        locked = await auth.scram_secrets("a@x.test", remote_ip="10.0.0.5")
        assert not _scram(locked, "a@x.test", "pw")
        assert await auth.authenticate_proof("a@x.test", valid=True, remote_ip="10.0.0.5") is None
        await store.close()

    asyncio.run(go())


def test_plain_login_gives_an_old_account_its_scram_secret(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteStore(tmp_path)
        await store.open()
        await store.add_account("old@x.test", hash_password("pw"))  # before SCRAM existed
        auth = Authenticator(store, base_delay=0, max_delay=0)
        before = await auth.scram_secrets("old@x.test", remote_ip="127.0.0.1")
        assert not _scram(before, "old@x.test", "pw")
        assert await auth.authenticate("old@x.test", "wrong", remote_ip="127.0.0.1") is None
        assert (await store.get_account("old@x.test")).scram_sha256 is None  # type: ignore[union-attr]
        assert await auth.authenticate("old@x.test", "pw", remote_ip="127.0.0.1")
        secret = (await store.get_account("old@x.test")).scram_sha256  # type: ignore[union-attr]
        assert secret is not None
        after = await auth.scram_secrets("old@x.test", remote_ip="127.0.0.1")
        assert after.iterations == SCRAM_ITERATIONS and after.salt != before.salt
        assert _scram(after, "old@x.test", "pw")
        # Logging in again (a cache hit) keeps the secret; a new password replaces both.
        assert await auth.authenticate("old@x.test", "pw", remote_ip="127.0.0.1")
        assert (await store.get_account("old@x.test")).scram_sha256 == secret  # type: ignore[union-attr]
        await store.set_password("old@x.test", hash_password("new"), scram_sha256=scram_secret("new"))
        assert not _scram(await auth.scram_secrets("old@x.test", remote_ip="127.0.0.1"),
                          "old@x.test", "pw")
        await store.close()

    asyncio.run(go())


def test_a_password_changed_during_the_upgrade_wins(tmp_path: Path) -> None:
    """The secret is derived from the password just verified; if the admin set a new
    password meanwhile, the compare-and-set drops it (it would let the old one in)."""
    async def go() -> None:
        store = SQLiteStore(tmp_path)
        await store.open()
        await store.add_account("old@x.test", hash_password("pw"))
        auth = Authenticator(store, base_delay=0, max_delay=0)
        real_set = store.set_scram_secret

        async def racing(address: str, secret: str, *, password_hash: str) -> bool:
            await store.set_password("old@x.test", hash_password("admin-set"))
            return await real_set(address, secret, password_hash=password_hash)

        store.set_scram_secret = racing  # type: ignore[method-assign]
        assert await auth.authenticate("old@x.test", "pw", remote_ip="127.0.0.1")
        assert (await store.get_account("old@x.test")).scram_sha256 is None  # type: ignore[union-attr]
        await store.close()

    asyncio.run(go())


def test_scram_is_offered_once_every_account_has_its_secret(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteStore(tmp_path)
        await store.open()
        try:
            await store.add_account("new@x.test", hash_password("pw-new"),
                                    scram_sha256=scram_secret("pw-new"))
            await store.add_account("old@x.test", hash_password("pw-old"))  # before SCRAM
            assert await store.count_accounts_without_scram() == 1
            auth = Authenticator(store, base_delay=0, max_delay=0)
            assert auth.mechanisms() == ("PLAIN", "LOGIN")  # until refresh() has looked
            await auth.refresh()
            assert auth.mechanisms() == ("PLAIN", "LOGIN")
            assert await auth.authenticate("new@x.test", "pw-new", remote_ip="127.0.0.1")
            assert auth.mechanisms() == ("PLAIN", "LOGIN")  # old@ still has none
            assert await auth.authenticate("old@x.test", "pw-old", remote_ip="127.0.0.1")
            assert await store.count_accounts_without_scram() == 0
            assert auth.mechanisms() == ("PLAIN", "LOGIN", "SCRAM-SHA-256")
            # A password set without a secret (another tool, say) takes it back at refresh().
            await store.set_password("new@x.test", hash_password("pw-2"))
            await auth.refresh()
            assert auth.mechanisms() == ("PLAIN", "LOGIN")
        finally:
            await store.close()

    asyncio.run(go())
