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

SCRAM-SHA-256 (RFC 5802, RFC 7677; the machine is protocol/sasl.py) keeps a second
secret per account: salt, iteration count, StoredKey and ServerKey, never the password
(:func:`scram_secret`, stored with the hash whenever a password is set). Accounts from
before have none; their next successful PLAIN or LOGIN derives and stores it
(:meth:`Authenticator.authenticate`), so SCRAM starts working without an admin step.

A SCRAM exchange consults this module twice. :meth:`Authenticator.scram_secrets` answers
the machine's ``NeedSecrets`` step: the per-IP penalty delay is applied there, and every
refusal is decided there too, because a valid proof is answered with the server signature
before the outcome: an unknown, disabled or locked account, a foreign authzid, or an
account with no secret yet gets made-up secrets that no proof matches, with a salt that is
an HMAC of the name under a key kept in the store (``Store.server_secret``), so the same
name always sees the same salt and the exchange looks the same whether the account exists
or not. :meth:`Authenticator.authenticate_proof` takes the verdict and counts failures
exactly as for PLAIN. (A legacy account's salt changes once, from made-up to real, at its
first PLAIN login; a later change of ``SCRAM_ITERATIONS`` shows which accounts predate it.)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from mailyard.policy.addresses import AddressError, canonical_address
from mailyard.protocol import sasl
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

log = logging.getLogger("mailyard.auth")

#: PBKDF2 rounds for new SCRAM-SHA-256 secrets. RFC 7677 §4: at least 4096. Each login
#: costs the *client* this many HMAC-SHA-256 rounds (~2 ms here, perhaps 10 ms on a
#: phone; the server pays it once, when the password is set); an attacker holding a
#: leaked secret pays it per guess. Cyrus SASL clients (mutt, isync, Apple Mail) refuse
#: counts above 65,536, which caps the useful range, and even that cap leaves the secret
#: far cheaper to attack than the argon2id hash beside it: the count buys a constant
#: factor, not a different class. 10,000 is 2.4x the RFC minimum at no cost anyone
#: notices (PostgreSQL, Dovecot and Cyrus default to 4096, MongoDB to 15,000). It is
#: stored with each secret, so raising it later only affects passwords set afterwards.
SCRAM_ITERATIONS = 10_000
SCRAM_SALT_BYTES = 16  # RFC 5802 leaves the size open; Cyrus SASL and PostgreSQL use 16
_FAKE_SALT_KEY = "scram-sha-256-fake-salt"  # Store.server_secret name
PASSWORD_MECHANISMS = ("PLAIN", "LOGIN")  # always offered (where logins are allowed)


def scram_secret(password: str, *, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 secret to store with a new password (RFC 5803 text form).
    Costs ``iterations`` PBKDF2 rounds (hashlib releases the GIL)."""
    return sasl.derive_scram_secrets(password, salt=secrets.token_bytes(SCRAM_SALT_BYTES),
                                     iterations=iterations).to_text()


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
        self._salt_key: bytes | None = None  # Store.server_secret(_FAKE_SALT_KEY), read once
        # SCRAM-SHA-256 is offered once every account has its secret (refresh()): until
        # then a client that picks the strongest mechanism offered (mbsync, mutt with a
        # SASL library) would pick it for an account that cannot use it yet and fail,
        # where PLAIN or LOGIN would have logged in and given the account its secret.
        self.scram_offered = False

    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms offered now (SMTP AUTH, IMAP AUTH=, POP3 SASL)."""
        return PASSWORD_MECHANISMS + ((sasl.SCRAM_SHA_256,) if self.scram_offered else ())

    async def refresh(self, *, announce: bool = True) -> None:
        """Offer SCRAM-SHA-256 when no account lacks its secret (at start, at SIGHUP, and
        after an account got its secret at a PLAIN or LOGIN login)."""
        missing = await self.store.count_accounts_without_scram()
        offered = missing == 0
        if announce and not offered:
            log.info("auth: SCRAM-SHA-256 is not offered while %d accounts have no SCRAM "
                     "secret (each gets one at its next PLAIN or LOGIN login; 'mailyard "
                     "user passwd' sets one)", missing)
        elif offered and not self.scram_offered and not announce:
            log.info("auth: every account has its SCRAM secret: SCRAM-SHA-256 is offered")
        self.scram_offered = offered

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
        address, account, authz_ok = await self._lookup(authcid, authzid)
        # A disabled or locked account is verified against the dummy hash too: same cost.
        stored = account.password_hash if account is not None else _DUMMY_HASH
        if account is not None and self.cache.hit(address, password, stored):
            ok = True
        else:
            ok = await asyncio.to_thread(verify_password, stored, password)
        if ok and account is not None and authz_ok:
            self.by_ip.clear(remote_ip)
            self.by_account.clear(address)
            self.cache.remember(address, password, stored)
            if account.scram_sha256 is None:
                await self._add_scram_secret(account, password)
            return account
        if address:
            self.cache.forget(address)
        self._failed(remote_ip, address)
        return None

    def _failed(self, remote_ip: str, address: str) -> None:
        self.by_ip.record(remote_ip)
        if address:
            self.by_account.record(address)

    async def _add_scram_secret(self, account: Account, password: str) -> None:
        """An account from before SCRAM logged in with its password: derive and keep its
        SCRAM secret (compare-and-set on the hash just verified, so a password changed
        meanwhile wins). Best effort: the login succeeds whatever happens here."""
        try:
            secret = await asyncio.to_thread(scram_secret, password)
            if await self.store.set_scram_secret(account.address, secret,
                                                 password_hash=account.password_hash):
                log.info("auth: stored a SCRAM-SHA-256 secret for %s", account.address)
                if not self.scram_offered:
                    await self.refresh(announce=False)
        except Exception:
            log.exception("auth: cannot store a SCRAM-SHA-256 secret for %s", account.address)

    async def _lookup(self, authcid: str, authzid: str) -> tuple[str, Account | None, bool]:
        """(canonical address or "", the account if it may log in now, authzid allowed)."""
        try:
            address = canonical_address(authcid)
        except AddressError:
            address = ""
        account = await self.store.get_account(address) if address else None
        # Proxy authorisation (authzid != authcid) is not offered.
        authz_ok = True
        if authzid:
            try:
                authz_ok = canonical_address(authzid) == address
            except AddressError:
                authz_ok = False
        locked = address != "" and self.by_account.failures(address) >= self.account_lock_after
        if account is not None and (account.disabled or locked):
            account = None
        return address, account, authz_ok

    async def scram_secrets(self, authcid: str, *, remote_ip: str,
                            authzid: str = "") -> sasl.ScramSecrets:
        """The secrets a SCRAM-SHA-256 exchange for ``authcid`` goes on with (after the
        penalty delay): the account's own, or made-up ones no proof matches whenever the
        login could not succeed (see the module docstring). Never None, never raises for
        an unknown user."""
        delay = self.delay_for(remote_ip)
        if delay:
            await asyncio.sleep(delay)
        address, account, authz_ok = await self._lookup(authcid, authzid)
        if account is not None and authz_ok and account.scram_sha256:
            try:
                return sasl.ScramSecrets.from_text(account.scram_sha256)
            except ValueError:
                log.warning("auth: the SCRAM-SHA-256 secret of %s is unreadable", address)
        if self._salt_key is None:
            self._salt_key = await self.store.server_secret(_FAKE_SALT_KEY)
        name = (address or authcid).encode("utf-8", "surrogatepass")
        salt = hmac.new(self._salt_key, name, "sha256").digest()[:SCRAM_SALT_BYTES]
        return sasl.unmatchable_secrets(salt=salt, iterations=SCRAM_ITERATIONS)

    async def authenticate_proof(self, authcid: str, *, valid: bool, remote_ip: str,
                                 authzid: str = "") -> Account | None:
        """The end of an exchange whose mechanism checked the proof itself (SCRAM): the
        account when ``valid`` and it may still log in, else None (a failure counted
        as for a wrong password)."""
        address, account, authz_ok = await self._lookup(authcid, authzid)
        if valid and account is not None and authz_ok:
            self.by_ip.clear(remote_ip)
            self.by_account.clear(address)
            return account
        self._failed(remote_ip, address)
        return None
