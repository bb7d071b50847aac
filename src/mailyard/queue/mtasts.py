"""MTA-STS for outbound delivery (RFC 8461).

Discovery (§3.1): a TXT record at ``_mta-sts.<domain>`` of the form
``v=STSv1; id=<1-32 alphanumerics>``; exactly one such record must exist.
Policy (§3.2): fetched over HTTPS from
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` with a verified
certificate, no redirects (§3.3), media type text/plain; lines ``key: value``
with ``version: STSv1``, ``mode: enforce|testing|none``, one or more ``mx:``
patterns (a leading ``*.`` matches exactly one label, §4.1) and ``max_age``
(seconds, at most 31557600).

Caching (§5.1): a fetched policy is kept until ``max_age`` and used while the
TXT id is unchanged; a changed id triggers a refresh; if discovery or the fetch
fails, a cached, unexpired policy still applies. With no policy at all, the
domain is treated as not using MTA-STS. The cache is kept on disk as well
(``cache_file``, JSON, replaced atomically at each new policy) and read back at
start: a policy is "trust on first use", and a cache that a restart emptied
would let an attacker who blocks the policy fetch downgrade the next delivery to
the domain (§10.2). A cache file that cannot be read is logged and ignored.

Failed fetches (§3.3, §5): when a domain publishes a TXT id but its policy cannot
be fetched (refused or timed-out connection, bad certificate, HTTP error, invalid
policy text), the failure is remembered for that domain *and* TXT id, and no new
fetch is made for a back-off period: 5 minutes (``FETCH_BACKOFF_INITIAL``) after a
first failure, doubled at each further failure for the same id up to one hour
(``FETCH_BACKOFF_MAX``). The failure is logged once, when it happens, not at each
lookup during its back-off. Meanwhile lookups answer as right after the failed
fetch: the cached, unexpired policy if there is one (§5.1), else no policy. A
changed TXT id is a new policy announced, fetched at once; a successful fetch
forgets the failure; a failure more than ``FETCH_BACKOFF_MAX`` after the end of
the previous back-off starts again at 5 minutes. Lookups made while a fetch for the
same domain and id is under way wait for it rather than fetch again. Failures are
kept in memory only: after a restart the policy is fetched again once.

Application (§5): ``enforce`` -> deliver only to MX hosts matching a pattern,
over TLS with a certificate valid for the MX host name; ``testing`` -> deliver
anyway and log what would have failed; ``none`` -> no restriction.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailyard.mailauth.resolver import DNSError, Resolver
from mailyard.queue.statefile import read_json, write_json
from mailyard.queue.tlsrpt import policy_fetch_result_type

log = logging.getLogger(__name__)

MAX_POLICY_BYTES = 64 * 1024  # §3.3: policy bodies are small; refuse anything larger
MAX_AGE_LIMIT = 31_557_600  # §3.2: one year
FETCH_BACKOFF_INITIAL = 300.0  # after a failed policy fetch, no new fetch for 5 minutes...
FETCH_BACKOFF_MAX = 3600.0  # ... doubled at each further failure, up to an hour
_ID_RE = re.compile(r"^[A-Za-z0-9]{1,32}$")

Fetch = Callable[[str], Awaitable[str]]


class PolicyError(Exception):
    """The policy text (or its fetch) is not usable."""


@dataclass(frozen=True, slots=True)
class Policy:
    mode: str  # "enforce" | "testing" | "none"
    mx: tuple[str, ...]
    max_age: int
    id: str = ""

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"

    def matches(self, host: str) -> bool:
        return any(mx_matches(p, host) for p in self.mx)


@dataclass(frozen=True, slots=True)
class _FetchFailure:
    """A failed policy fetch for one domain: no new fetch for ``policy_id`` before ``until``."""

    policy_id: str
    until: float
    backoff: float  # the length of this back-off period, doubled at the next failure
    result_type: str = "sts-policy-fetch-error"  # for TLS reports (queue/tlsrpt.py)


def mx_matches(pattern: str, host: str) -> bool:
    """§4.1: exact match, or "*.example.com" matching exactly one extra leftmost label."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return pattern == host


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the ``_mta-sts`` TXT records, or None (§3.1)."""
    ids = []
    for rec in records:
        fields = [f.strip() for f in rec.split(";")]
        if not fields or fields[0] != "v=STSv1":
            continue
        rid = None
        for f in fields[1:]:
            k, eq, v = f.partition("=")
            if eq and k.strip() == "id":
                rid = v.strip()
        if rid is not None and _ID_RE.match(rid):
            ids.append(rid)
        else:
            ids.append("")  # a v=STSv1 record without a valid id still counts (and invalidates)
    if len(ids) != 1 or not ids[0]:
        return None  # §3.1: more than one record (or none valid): no policy
    return ids[0]


def parse_policy(text: str, *, policy_id: str = "") -> Policy:
    """§3.2 policy body; raises :class:`PolicyError` when invalid."""
    version = mode = None
    max_age: int | None = None
    mx: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            continue  # §3.2: unknown/garbled lines are ignored
        key, value = key.strip(), value.strip()
        if key == "version":
            version = value
        elif key == "mode":
            mode = value
        elif key == "max_age":
            if not value.isdigit() or len(value) > 10:
                raise PolicyError(f"bad max_age {value!r}")
            max_age = min(int(value), MAX_AGE_LIMIT)
        elif key == "mx":
            mx.append(value.lower())
    if version != "STSv1":
        raise PolicyError("missing or bad version")
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"bad mode {mode!r}")
    if max_age is None:
        raise PolicyError("missing max_age")
    if mode != "none" and not mx:
        raise PolicyError("no mx patterns")
    return Policy(mode=mode, mx=tuple(mx), max_age=max_age, id=policy_id)


def policy_text(policy: Policy) -> str:
    """The §3.2 body of ``policy``: what :func:`parse_policy` reads back into it."""
    lines = ["version: STSv1", f"mode: {policy.mode}"]
    lines += [f"mx: {m}" for m in policy.mx]
    lines.append(f"max_age: {policy.max_age}")
    return "\n".join(lines) + "\n"


async def _host_addresses(resolver: Resolver, host: str) -> list[str]:
    """A then AAAA of ``host`` through our resolver (the one MX routing uses)."""
    out: list[str] = []
    for lookup in (resolver.a, resolver.aaaa):
        try:
            out.extend(await lookup(host))
        except DNSError:
            continue
    return out


def aiohttp_connector(*, ca_file: str | None = None, connect_address: str | None = None,
                      resolver: Resolver | None = None) -> Any:
    """An aiohttp connector with verified TLS whose host names are resolved with
    ``resolver`` (the same DNS view as the MX lookup: ``dns.nameservers`` applies) when
    given, else by the system; ``connect_address`` (tests) replaces every address."""
    import socket

    import aiohttp
    from aiohttp.abc import AbstractResolver

    from mailyard.server.tls import client_context

    def _entry(host: str, addr: str, port: int) -> dict[str, object]:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        return {"hostname": host, "host": addr, "port": port,
                "family": fam, "proto": 0, "flags": socket.AI_NUMERICHOST}

    class _Static(AbstractResolver):
        async def resolve(self, host: str, port: int = 0,
                          family: int = socket.AF_INET) -> list:  # type: ignore[override]
            if connect_address is not None:
                return [_entry(host, connect_address, port)]
            assert resolver is not None
            addrs = await _host_addresses(resolver, host)
            if not addrs:
                raise OSError(f"{host}: no address")
            return [_entry(host, a, port) for a in addrs]

        async def close(self) -> None:
            return None

    ctx = client_context(ca_file=ca_file, verify=True)
    ours = connect_address is not None or resolver is not None
    return aiohttp.TCPConnector(ssl=ctx, resolver=_Static() if ours else None)


def make_aiohttp_fetch(*, ca_file: str | None = None, timeout: float = 30.0,
                       port: int | None = None, connect_address: str | None = None,
                       resolver: Resolver | None = None) -> Fetch:
    """The production fetcher: aiohttp, verified TLS, no redirects, bounded size.

    The policy host is resolved with ``resolver`` when given -- the same DNS view as
    the MX lookup, so ``dns.nameservers`` (split horizon, tests) applies to both; with
    none, the system resolver. Test hooks: ``port`` replaces the HTTPS port and
    ``connect_address`` the address every host name resolves to (the certificate is
    still checked against the policy host name).
    """

    async def fetch(url: str) -> str:
        import aiohttp
        import yarl

        u = yarl.URL(url)
        if port is not None:
            u = u.with_port(port)
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        connector = aiohttp_connector(ca_file=ca_file, connect_address=connect_address,
                                      resolver=resolver)
        async with aiohttp.ClientSession(timeout=client_timeout, connector=connector) as session, \
                session.get(u, allow_redirects=False) as resp:
            if resp.status != 200:
                raise PolicyError(f"HTTP {resp.status}")
            if resp.content_type != "text/plain":
                raise PolicyError(f"media type {resp.content_type}")  # §3.2
            body = await resp.content.read(MAX_POLICY_BYTES + 1)
            if len(body) > MAX_POLICY_BYTES:
                raise PolicyError("policy too large")
            return body.decode("utf-8", "replace")

    return fetch


class MTASTS:
    """Policy discovery with a cache in memory, kept in ``cache_file`` when given."""

    def __init__(self, resolver: Resolver, *, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.time, ca_file: str | None = None,
                 https_port: int | None = None, connect_address: str | None = None,
                 cache_file: Path | None = None) -> None:
        self._resolver = resolver
        self._fetch = fetch or make_aiohttp_fetch(ca_file=ca_file, port=https_port,
                                                  connect_address=connect_address,
                                                  resolver=resolver)
        self._clock = clock
        self._cache: dict[str, tuple[Policy, float]] = {}  # domain -> (policy, expires)
        self._failures: dict[str, _FetchFailure] = {}  # domain -> last failed fetch
        self._pending: dict[tuple[str, str], asyncio.Future[Policy | None]] = {}
        self._file = cache_file
        self.fetches = 0
        if cache_file is not None:
            self._load(cache_file)

    def _load(self, path: Path) -> None:
        doc = read_json(path, what="MTA-STS cache")
        if doc is None:
            return
        try:
            entries = doc["policies"]
        except (KeyError, TypeError) as exc:
            log.warning("MTA-STS cache %s not read (%s): starting without it", path, exc)
            return
        now = self._clock()
        for domain, entry in entries.items() if isinstance(entries, dict) else ():
            try:  # the policy is kept as its text: parse_policy checks it as at fetch time
                policy = parse_policy(str(entry["policy"]), policy_id=str(entry["id"]))
                expires = float(entry["expires"])
            except (KeyError, TypeError, ValueError, PolicyError):
                log.warning("MTA-STS cache %s: entry for %r skipped", path, domain)
                continue
            if expires > now:
                self._cache[str(domain)] = (policy, expires)

    def _save(self) -> None:
        """Write the cache to a new file and rename it over the old one (atomic)."""
        if self._file is None:
            return
        now = self._clock()
        doc = {"policies": {
            d: {"policy": policy_text(p), "id": p.id, "expires": expires}
            for d, (p, expires) in self._cache.items() if expires > now}}
        write_json(self._file, doc, what="MTA-STS cache", indent=1)

    def _cached(self, domain: str) -> Policy | None:
        hit = self._cache.get(domain)
        if hit is None:
            return None
        policy, expires = hit
        if self._clock() >= expires:
            del self._cache[domain]
            return None
        return policy

    async def policy_for(self, domain: str) -> Policy | None:
        domain = domain.lower().rstrip(".")
        if domain.startswith("["):
            return None
        cached = self._cached(domain)
        try:
            txt = await self._resolver.txt(f"_mta-sts.{domain}")
        except DNSError:
            return cached  # NXDOMAIN or failure: a cached policy keeps applying (§5.1)
        policy_id = parse_txt(txt)
        if policy_id is None:
            return cached
        if cached is not None and cached.id == policy_id:
            return cached
        if self._backing_off(domain, policy_id):
            log.debug("MTA-STS policy fetch for %s (id %s) failed recently: not retried yet",
                      domain, policy_id)
            return cached  # as right after the failed fetch (§5.1)
        key = (domain, policy_id)
        pending = self._pending.get(key)
        if pending is None:  # one fetch at a time per domain and id; others wait for it
            pending = asyncio.ensure_future(self._refresh(domain, policy_id, cached))
            self._pending[key] = pending

            def _done(fut: asyncio.Future[Policy | None], key: tuple[str, str] = key) -> None:
                if self._pending.get(key) is fut:
                    del self._pending[key]

            pending.add_done_callback(_done)
        fetched = await asyncio.shield(pending)
        return cached if fetched is None else fetched

    def _backing_off(self, domain: str, policy_id: str) -> bool:
        """True while a failed fetch of ``policy_id`` for ``domain`` is in its back-off."""
        failure = self._failures.get(domain)
        if failure is None or failure.policy_id != policy_id:
            return False  # never failed, or a new id: fetch now
        left = failure.until - self._clock()
        return 0 < left <= failure.backoff  # (a clock set back does not stretch the period)

    def fetch_failing(self, domain: str) -> str | None:
        """While the last policy fetch for ``domain`` failed (its back-off), the TLS
        report result type of that failure (RFC 8460 §4.3.2.2); else None."""
        failure = self._failures.get(domain.lower().rstrip("."))
        if failure is None or failure.until <= self._clock():
            return None
        return failure.result_type

    def _record_failure(self, domain: str, policy_id: str,
                        result_type: str = "sts-policy-fetch-error") -> float:
        """Start (or double) the back-off for ``domain``/``policy_id``; its length."""
        now = self._clock()
        prev = self._failures.get(domain)
        if prev is not None and prev.policy_id == policy_id and now < prev.until + FETCH_BACKOFF_MAX:
            backoff = min(prev.backoff * 2, FETCH_BACKOFF_MAX)
        else:
            backoff = FETCH_BACKOFF_INITIAL
        for d in [d for d, f in self._failures.items() if now >= f.until + FETCH_BACKOFF_MAX]:
            del self._failures[d]  # long over: they would start again at the first period
        self._failures[domain] = _FetchFailure(policy_id, now + backoff, backoff, result_type)
        return backoff

    async def _refresh(self, domain: str, policy_id: str, cached: Policy | None
                       ) -> Policy | None:
        """Fetch and cache the policy ``policy_id`` of ``domain``; None when that failed."""
        try:
            self.fetches += 1
            text = await self._fetch(f"https://mta-sts.{domain}/.well-known/mta-sts.txt")
            policy = parse_policy(text, policy_id=policy_id)
        except Exception as e:  # any fetch problem: fall back to the cache (§5.1)
            backoff = self._record_failure(domain, policy_id, policy_fetch_result_type(e))
            log.warning("MTA-STS policy fetch for %s failed: %s (id %s; not tried again for "
                        "%d s; meanwhile %s)", domain, e, policy_id, backoff,
                        f"the cached policy id {cached.id} applies" if cached is not None
                        else "no policy applies")
            return None
        self._failures.pop(domain, None)
        log.info("MTA-STS policy for %s: mode %s, mx %s, max_age %d (id %s)", domain,
                 policy.mode, ",".join(policy.mx), policy.max_age, policy_id)
        self._cache[domain] = (policy, self._clock() + policy.max_age)
        self._save()
        return policy
