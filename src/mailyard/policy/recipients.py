"""Recipient lookup: which local accounts an address reaches, or why it reaches none.

Order (what Postfix's virtual(5) does, simplified):
1. an alias with exactly the address;
2. an account with exactly the address;
3. sub-addressing: "user+tag@" retried as "user@" (alias, then account);
4. the domain's catch-all alias "@domain".
Alias targets are expanded recursively (depth-limited, loops ignored); targets outside
our domains are returned as remote addresses (forwarding).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailyard.policy.addresses import AddressError, base_address, canonical_address, split_address
from mailyard.storage.interface import Store

MAX_ALIAS_DEPTH = 8
MAX_EXPANSION = 1000


class Verdict(enum.Enum):
    LOCAL = "local"  # reaches local accounts and/or forwards
    UNKNOWN_USER = "unknown-user"  # our domain, nobody there: 550 5.1.1
    NOT_LOCAL = "not-local"  # not our domain: relay (denied on port 25)
    INVALID = "invalid"


@dataclass
class Resolution:
    verdict: Verdict
    account_ids: list[int] = field(default_factory=list)
    remote: list[str] = field(default_factory=list)


class RecipientResolver:
    """Resolves recipients, caching each answer for ``ttl`` seconds.

    Every RCPT would otherwise cost several store round trips (alias, account, domain,
    catch-all). The admin CLI changes the store from another process, so the cache is
    time-bounded rather than invalidated: a new user or alias is seen within ``ttl``
    seconds (Postfix's proxymap and Dovecot's auth cache make the same trade).
    """

    def __init__(self, store: Store, *, ttl: float = 2.0, max_entries: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._cache: dict[str, tuple[float, Resolution]] = {}

    async def is_local_domain(self, domain: str) -> bool:
        return await self.store.get_domain(domain) is not None

    async def resolve(self, address: str) -> Resolution:
        now = self._clock()
        hit = self._cache.get(address)
        if hit is not None and now - hit[0] < self.ttl:
            res = hit[1]
            return Resolution(res.verdict, list(res.account_ids), list(res.remote))
        res = await self._resolve(address)
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[address] = (now, res)
        return Resolution(res.verdict, list(res.account_ids), list(res.remote))

    def invalidate(self) -> None:
        self._cache.clear()

    async def _resolve(self, address: str) -> Resolution:
        try:
            addr = canonical_address(address)
        except AddressError:
            return Resolution(Verdict.INVALID)
        _, domain = split_address(addr)
        if not await self.is_local_domain(domain):
            return Resolution(Verdict.NOT_LOCAL)
        res = Resolution(Verdict.LOCAL)
        seen: set[str] = set()
        await self._expand(addr, res, seen, depth=0)
        if not res.account_ids and not res.remote:
            return Resolution(Verdict.UNKNOWN_USER)
        return res

    async def _lookup_one(self, addr: str) -> tuple[list[str] | None, int | None]:
        alias = await self.store.get_alias(addr)
        if alias is not None:
            return list(alias.targets), None
        account = await self.store.get_account(addr)
        if account is not None and not account.disabled:
            return None, account.id
        return None, None

    async def _expand(self, addr: str, res: Resolution, seen: set[str], depth: int) -> None:
        if addr in seen or depth > MAX_ALIAS_DEPTH or len(seen) > MAX_EXPANSION:
            return
        seen.add(addr)
        _, domain = split_address(addr)
        if not await self.is_local_domain(domain):
            if addr not in res.remote:
                res.remote.append(addr)
            return
        targets, account_id = await self._lookup_one(addr)
        if targets is None and account_id is None:
            base = base_address(addr)
            if base != addr:
                targets, account_id = await self._lookup_one(base)
        if targets is None and account_id is None:
            catch_all = await self.store.get_alias("@" + domain)
            if catch_all is not None:
                targets = list(catch_all.targets)
        if account_id is not None and account_id not in res.account_ids:
            res.account_ids.append(account_id)
        for t in targets or ():
            try:
                t_addr = canonical_address(t)
            except AddressError:
                continue
            await self._expand(t_addr, res, seen, depth + 1)
