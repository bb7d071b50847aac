"""An in-memory :class:`~mailyard.mailauth.resolver.Resolver` built from plain maps.

    FakeResolver({
        "example.com": {"TXT": ["v=spf1 mx -all"], "MX": [(10, "mx.example.com")]},
        "mx.example.com": {"A": ["192.0.2.1"]},
        "1.2.0.192.in-addr.arpa": {"PTR": ["mx.example.com"]},   # or key "192.0.2.1"
        "alias.example.com": {"CNAME": "example.com"},
    }, nxdomain={"gone.example"}, servfail={"broken.example", ("half.example", "TXT")})

Semantics (what the production resolver gives callers):
- a name in the zone map exists; a type it lacks is NODATA (empty list);
- a name absent from the map, or listed in ``nxdomain``, raises :class:`NXDomain`;
- a name in ``servfail`` (or a ``(name, TYPE)`` pair) raises :class:`TempError`;
  so does a record value that is the string ``"TIMEOUT"`` for that type, and the key
  ``"TIMEOUT": True`` makes every type the name does not hold time out;
- ``CNAME`` is followed (up to 8 links) as a recursive resolver would;
- TXT values may be a string or a list of character-strings (joined, RFC 7208 §3.3);
- PTR may be keyed by the reverse name or by the IP address itself.

Every query is recorded in :attr:`queries` as ``(name, TYPE)`` so tests can count lookups.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from mailyard.mailauth.resolver import NXDomain, TempError

_MAX_CNAME_CHAIN = 8


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer


class FakeResolver:
    def __init__(
        self,
        zones: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        nxdomain: Iterable[str] = (),
        servfail: Iterable[str | tuple[str, str]] = (),
    ) -> None:
        self._zones: dict[str, dict[str, Any]] = {}
        for name, rrsets in (zones or {}).items():
            key = _norm(name)
            try:
                key = reverse_name(key)
            except ValueError:
                pass
            merged = self._zones.setdefault(key, {})
            for rtype, value in rrsets.items():
                merged[rtype.upper()] = value
        self._nxdomain = {_norm(n) for n in nxdomain}
        self._servfail_names: set[str] = set()
        self._servfail_pairs: set[tuple[str, str]] = set()
        for item in servfail:
            if isinstance(item, tuple):
                self._servfail_pairs.add((_norm(item[0]), item[1].upper()))
            else:
                self._servfail_names.add(_norm(item))
        self.queries: list[tuple[str, str]] = []

    # -- test helpers -----------------------------------------------------------------------
    @property
    def query_count(self) -> int:
        return len(self.queries)

    def reset_counts(self) -> None:
        self.queries.clear()

    def add(self, name: str, rtype: str, value: Any) -> None:
        self._zones.setdefault(_norm(name), {})[rtype.upper()] = value

    # -- lookup core --------------------------------------------------------------------------
    def _lookup(self, name: str, rtype: str) -> list[Any]:
        name = _norm(name)
        self.queries.append((name, rtype))
        for _ in range(_MAX_CNAME_CHAIN + 1):
            if name in self._servfail_names or (name, rtype) in self._servfail_pairs:
                raise TempError(f"{name}/{rtype}: SERVFAIL (fake)")
            if name in self._nxdomain or name not in self._zones:
                raise NXDomain(name)
            node = self._zones[name]
            if node.get(rtype) == "TIMEOUT" or (node.get("TIMEOUT") and rtype not in node):
                raise TempError(f"{name}/{rtype}: timeout (fake)")
            if rtype in node:
                value = node[rtype]
                return list(value) if isinstance(value, list | tuple) else [value]
            cname = node.get("CNAME")
            if cname and rtype != "CNAME":
                name = _norm(cname[0] if isinstance(cname, list | tuple) else cname)
                continue
            return []
        raise TempError(f"{name}: CNAME chain too long (fake)")

    # -- the Resolver protocol ----------------------------------------------------------------
    async def txt(self, name: str) -> list[str]:
        out = []
        for v in self._lookup(name, "TXT"):
            out.append("".join(v) if isinstance(v, list | tuple) else str(v))
        return out

    async def mx(self, name: str) -> list[tuple[int, str]]:
        out = []
        for pref, host in self._lookup(name, "MX"):
            h = _norm(host)
            out.append((int(pref), "" if h in ("", ".") else h))
        return out

    async def a(self, name: str) -> list[str]:
        return [str(v) for v in self._lookup(name, "A")]

    async def aaaa(self, name: str) -> list[str]:
        return [str(v) for v in self._lookup(name, "AAAA")]

    async def ptr(self, ip: str) -> list[str]:
        return [_norm(str(v)) for v in self._lookup(reverse_name(ip), "PTR")]

    async def srv(self, name: str) -> list[tuple[int, int, int, str]]:
        out = []
        for prio, weight, port, target in self._lookup(name, "SRV"):
            t = _norm(target)
            out.append((int(prio), int(weight), int(port), "" if t in ("", ".") else t))
        return out
