"""The DNS seam: everything that needs DNS takes a :class:`Resolver`.

Production uses :class:`DnsResolver` (dnspython's async resolver, nameservers
configurable for tests and split-horizon). Tests use
``mailyard.testing.dns.FakeResolver`` built from plain maps.

Results are values; the three outcomes SPF/DMARC/MX routing must tell apart are:
- an answer (possibly empty list when the name exists without that type: NODATA),
- :class:`NXDomain` (the name does not exist),
- :class:`TempError` (SERVFAIL, timeout, network: retry later; never a 5xx).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Protocol


class DNSError(Exception):
    pass


class NXDomain(DNSError):
    """The name does not exist (RCODE 3)."""


class TempError(DNSError):
    """SERVFAIL, timeout or network failure: a temporary condition."""


class Resolver(Protocol):
    async def txt(self, name: str) -> list[str]:
        """TXT strings of ``name``; each record's character-strings joined (RFC 7208 §3.3)."""
        ...

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) pairs; exchange without the trailing dot, "" for the null MX."""
        ...

    async def a(self, name: str) -> list[str]: ...

    async def aaaa(self, name: str) -> list[str]: ...

    async def ptr(self, ip: str) -> list[str]:
        """Reverse names of ``ip``, without the trailing dot."""
        ...

    async def srv(self, name: str) -> list[tuple[int, int, int, str]]:
        """(priority, weight, port, target) of each SRV record (RFC 2782); the target
        without the trailing dot, lower-case, "" for "." (service not offered)."""
        ...


def parse_nameserver(spec: str) -> tuple[str, int]:
    """ "127.0.0.1:5353" -> ("127.0.0.1", 5353); "[::1]:53" and a bare address work too."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
        return host, port
    if spec.count(":") == 1:
        host, _, port_s = spec.partition(":")
        return host, int(port_s)
    return spec, 53


@functools.lru_cache(maxsize=4096)
def _reverse_name(ip: str) -> str:
    """1.2.3.4 -> 4.3.2.1.in-addr.arpa. (RFC 1035 §3.5, RFC 3596 §2.5 for IPv6)."""
    import dns.reversename

    return str(dns.reversename.from_address(ip).to_text())


MAX_CACHE = 20_000  # cached answers
MAX_TTL = 3600.0  # seconds an answer is kept at most, whatever its TTL says
NEGATIVE_TTL = 60.0  # NXDOMAIN / NODATA (RFC 2308 allows the SOA minimum; we keep it short)


class DnsResolver:
    """dnspython-backed resolver with its own cache."""

    def __init__(self, nameservers: list[str] | None = None, *, timeout: float = 5.0) -> None:
        import dns.asyncresolver
        import dns.resolver

        if nameservers:
            res = dns.asyncresolver.Resolver(configure=False)
            # dnspython takes one port for all nameservers; use the first one's.
            parsed = [parse_nameserver(n) for n in nameservers]
            res.nameservers = [h for h, _ in parsed]
            res.port = parsed[0][1]
        else:
            res = dns.asyncresolver.Resolver()
        res.lifetime = timeout
        res.timeout = timeout
        self._res = res
        # Our own answer cache, in front of dnspython's resolver: a hit costs a dict lookup
        # instead of building a query, and NXDOMAIN/NODATA are cached too (RFC 2308), which
        # matters for SPF/DMARC/iprev lookups on every inbound message.
        self._cache: dict[tuple[str, str], tuple[float, list | None]] = {}  # type: ignore[type-arg]
        self._clock = time.monotonic

    def _cached(self, key: tuple[str, str]) -> tuple[bool, list | None]:  # type: ignore[type-arg]
        hit = self._cache.get(key)
        if hit is None:
            return False, None
        if hit[0] < self._clock():
            del self._cache[key]
            return False, None
        return True, hit[1]

    def _remember(self, key: tuple[str, str], ttl: float, value: list | None) -> None:  # type: ignore[type-arg]
        if len(self._cache) >= MAX_CACHE:
            # Drop the oldest tenth (dicts keep insertion order): bounded memory.
            for k in list(self._cache)[: MAX_CACHE // 10]:
                del self._cache[k]
        self._cache[key] = (self._clock() + max(0.0, min(ttl, MAX_TTL)), value)

    async def _query(self, name: str, rdtype: str,
                     convert: Callable[[list], list] | None = None) -> list:  # type: ignore[type-arg]
        """The records of ``name``, or ``convert(records)`` when given: the converted
        value is what is cached, so a hit costs no conversion. Callers get a copy."""
        key = (name.lower().rstrip("."), rdtype)
        found, value = self._cached(key)
        if found:
            if value is None:
                raise NXDomain(name)
            return list(value)
        return list(await self._resolve(name, rdtype, key, convert))

    async def _resolve(self, name: str, rdtype: str, key: tuple[str, str],
                       convert: Callable[[list], list] | None) -> list:  # type: ignore[type-arg]
        import dns.exception
        import dns.resolver

        try:
            answer = await self._res.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            self._remember(key, NEGATIVE_TTL, None)
            raise NXDomain(name) from None
        except dns.resolver.NoAnswer:
            self._remember(key, NEGATIVE_TTL, [])
            return []
        except (dns.resolver.NoNameservers, dns.exception.Timeout, OSError) as e:
            raise TempError(f"{name}/{rdtype}: {e.__class__.__name__}") from None
        except dns.exception.DNSException as e:
            raise TempError(f"{name}/{rdtype}: {e}") from None
        records = list(answer)
        if convert is not None:
            records = convert(records)
        ttl = answer.rrset.ttl if answer.rrset is not None else NEGATIVE_TTL
        self._remember(key, ttl, records)
        return records

    async def txt(self, name: str) -> list[str]:
        return await self._query(name, "TXT", _txt_strings)

    async def mx(self, name: str) -> list[tuple[int, str]]:
        return await self._query(name, "MX", _mx_pairs)

    async def a(self, name: str) -> list[str]:
        return await self._query(name, "A", _addresses)

    async def aaaa(self, name: str) -> list[str]:
        return await self._query(name, "AAAA", _addresses)

    async def ptr(self, ip: str) -> list[str]:
        return await self._query(_reverse_name(ip), "PTR", _ptr_names)

    async def srv(self, name: str) -> list[tuple[int, int, int, str]]:
        return await self._query(name, "SRV", _srv_tuples)


def _txt_strings(records: list) -> list[str]:  # type: ignore[type-arg]
    return [b"".join(r.strings).decode("utf-8", "replace") for r in records]


def _mx_pairs(records: list) -> list[tuple[int, str]]:  # type: ignore[type-arg]
    out = []
    for r in records:
        host = r.exchange.to_text(omit_final_dot=True)
        out.append((int(r.preference), "" if host in ("", ".") else host.lower()))
    return out


def _addresses(records: list) -> list[str]:  # type: ignore[type-arg]
    return [r.address for r in records]


def _srv_tuples(records: list) -> list[tuple[int, int, int, str]]:  # type: ignore[type-arg]
    out = []
    for r in records:
        target = r.target.to_text(omit_final_dot=True).lower()
        out.append((int(r.priority), int(r.weight), int(r.port),
                    "" if target in ("", ".") else target))
    return out


def _ptr_names(records: list) -> list[str]:  # type: ignore[type-arg]
    return [r.target.to_text(omit_final_dot=True) for r in records]
