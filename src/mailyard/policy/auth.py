"""Password hashing and the authenticator every protocol shares.

Passwords are hashed with argon2id (argon2-cffi releases the GIL while hashing, so
verification runs in a worker thread without stalling the event loop).

Failure handling (RFC 4954 §4 leaves it to the server; we follow what Postfix's
anvil and Dovecot's auth penalty do):
- an unknown user costs the same as a wrong password: we verify against a dummy
  hash, so reply and latency do not reveal which accounts exist;
- each failure from an IP doubles a delay applied before the *next* reply to that IP,
  capped at ``max_delay``; counters live in a bounded LRU table, so a flood of
  source addresses cannot grow memory without bound.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mailyard.policy.addresses import AddressError, canonical_address
from mailyard.storage.interface import Store
from mailyard.storage.models import Account

# Moderate cost: ~10-20 ms per verification on this class of machine.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


_DUMMY_HASH = hash_password("mailyard-dummy-password-for-timing")


class FailureTable:
    """Bounded per-key failure counters with an LRU eviction policy."""

    def __init__(self, *, max_entries: int = 100_000, forget_after: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._max = max_entries
        self._forget = forget_after
        self._clock = clock

    def failures(self, key: str) -> int:
        entry = self._entries.get(key)
        if entry is None:
            return 0
        count, last = entry
        if self._clock() - last > self._forget:
            del self._entries[key]
            return 0
        return count

    def record(self, key: str) -> int:
        count = self.failures(key) + 1
        self._entries[key] = (count, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return count

    def clear(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class CredentialCache:
    """Recently verified credentials, so a client that logs in again and again (IMAP
    clients open several connections, phones reconnect constantly) does not pay a full
    argon2 verification each time — Dovecot's auth_cache makes the same trade.

    It holds an HMAC of the password under a per-process random key, never the password,
    together with the stored hash it was verified against: a password change (a new
    stored hash) misses the cache at once. Entries expire after ``ttl`` seconds.
    """

    def __init__(self, *, ttl: float = 300.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[str, tuple[bytes, str, float]] = OrderedDict()
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock

    def _mac(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode("utf-8", "surrogatepass"), "sha256").digest()

    def hit(self, address: str, password: str, stored_hash: str) -> bool:
        entry = self._entries.get(address)
        if entry is None:
            return False
        mac, verified_hash, expires = entry
        if expires < self._clock() or verified_hash != stored_hash:
            del self._entries[address]
            return False
        return hmac.compare_digest(mac, self._mac(password))

    def remember(self, address: str, password: str, stored_hash: str) -> None:
        self._entries[address] = (self._mac(password), stored_hash, self._clock() + self.ttl)
        self._entries.move_to_end(address)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, address: str) -> None:
        self._entries.pop(address, None)

    def clear(self) -> None:
        self._entries.clear()


class Authenticator:
    def __init__(self, store: Store, *, base_delay: float = 1.0, max_delay: float = 15.0,
                 account_lock_after: int = 20) -> None:
        self.store = store
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.account_lock_after = account_lock_after
        self.by_ip = FailureTable()
        self.by_account = FailureTable()
        self.cache = CredentialCache()

    def delay_for(self, remote_ip: str) -> float:
        n = self.by_ip.failures(remote_ip)
        if n == 0 or self.base_delay <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * (2 ** min(n - 1, 16)))

    async def authenticate(self, authcid: str, password: str, *, remote_ip: str,
                           authzid: str = "") -> Account | None:
        """The account when the credentials are right, else None (after the penalty delay)."""
        delay = self.delay_for(remote_ip)
        if delay:
            await asyncio.sleep(delay)
        account: Account | None = None
        try:
            address = canonical_address(authcid)
        except AddressError:
            address = ""
        if address:
            account = await self.store.get_account(address)
        # Proxy authorisation (authzid != authcid) is not offered.
        authz_ok = True
        if authzid:
            try:
                authz_ok = canonical_address(authzid) == address
            except AddressError:
                authz_ok = False
        stored = account.password_hash if account and not account.disabled else _DUMMY_HASH
        if account is not None and self.cache.hit(address, password, stored):
            ok = True
        else:
            ok = await asyncio.to_thread(verify_password, stored, password)
        locked = address != "" and self.by_account.failures(address) >= self.account_lock_after
        if ok and account is not None and not account.disabled and authz_ok and not locked:
            self.by_ip.clear(remote_ip)
            self.by_account.clear(address)
            self.cache.remember(address, password, stored)
            return account
        if address:
            self.cache.forget(address)
        self.by_ip.record(remote_ip)
        if address:
            self.by_account.record(address)
        return None
