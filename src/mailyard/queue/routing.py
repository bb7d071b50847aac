"""Where to send mail for a domain: RFC 5321 §5.1 MX resolution.

* MX records sorted by preference, equal preferences shuffled (§5.1: "the
  sender-SMTP ... MUST randomize them to spread the load"); the random source is
  injected so tests are deterministic.
* No MX records but the name exists (NODATA): the domain itself is the single
  implicit MX with preference 0 (§5.1, "implicit MX").
* The null MX (RFC 7505 §3): a single MX record "." -> the domain accepts no
  mail: permanent failure, enhanced status 5.1.10 (RFC 7505 §4.2).
* NXDOMAIN for the domain: permanent failure 5.1.2 (bad destination system).
* A DNS temporary failure: defer (4.4.3), never a bounce.
* Address literals "[192.0.2.1]" and "[IPv6:2001:db8::1]" route directly (§4.1.3).
* Every MX host name is resolved to both A and AAAA addresses.
* Our own host in the MX list (§5.1): that entry and every less preferred one
  are dropped (:func:`drop_self`); if nothing is left the mail would loop
  back to us: permanent failure 5.4.6 (RFC 3463 "routing loop detected").

What others do / what we do: when every MX host name fails to resolve, Postfix
defers; so do we (a broken MX target is usually a transient misconfiguration).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from mailyard.mailauth.resolver import NXDomain, Resolver, TempError


@dataclass(frozen=True, slots=True)
class MXHost:
    name: str  # host name (what the certificate must match), or the literal address
    preference: int
    addresses: tuple[str, ...]


class RoutingError(Exception):
    """No route now; ``permanent`` tells a bounce from a deferral."""

    def __init__(self, status: str, text: str, *, permanent: bool) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text
        self.permanent = permanent


def domain_of(address: str) -> str:
    """The destination part of an address, lower-cased ("" for a bare name)."""
    _, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at else ""


def parse_address_literal(domain: str) -> str | None:
    """"[192.0.2.1]" -> "192.0.2.1"; "[IPv6:::1]" -> "::1"; None if not a literal."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            return None
    try:
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        return None


async def _addresses(resolver: Resolver, host: str) -> tuple[tuple[str, ...], bool]:
    """(addresses, temporary failure seen) for one host: A then AAAA."""
    out: list[str] = []
    temp = False
    for lookup in (resolver.a, resolver.aaaa):
        try:
            out.extend(await lookup(host))
        except NXDomain:
            break
        except TempError:
            temp = True
    return tuple(dict.fromkeys(out)), temp


async def resolve_mx(domain: str, resolver: Resolver, *,
                     rng: random.Random | None = None) -> list[MXHost]:
    """The hosts to try for ``domain``, in order. Raises :class:`RoutingError`."""
    rng = rng or random.Random()
    domain = domain.lower().rstrip(".")
    if domain.startswith("["):
        literal = parse_address_literal(domain)
        if literal is None:
            raise RoutingError("5.1.2", f"bad address literal {domain}", permanent=True)
        return [MXHost(literal, 0, (literal,))]
    if not domain:
        raise RoutingError("5.1.3", "no destination domain", permanent=True)

    try:
        records = await resolver.mx(domain)
    except NXDomain:
        raise RoutingError("5.1.2", f"domain {domain} does not exist", permanent=True)
    except TempError as e:
        raise RoutingError("4.4.3", f"DNS temporary failure looking up MX of {domain}: {e}",
                           permanent=False)

    # RFC 7505 §3: a null MX is one record, exchange ".", preference 0. A "."
    # mixed with real MX records is a misconfiguration; we ignore the "." then.
    if records and all(exchange == "" for _, exchange in records):
        raise RoutingError("5.1.10", f"domain {domain} does not accept mail (null MX)",
                           permanent=True)
    records = [(p, e.lower().rstrip(".")) for p, e in records if e]

    if not records:
        # §5.1: implicit MX -- the domain's own address records.
        addrs, temp = await _addresses(resolver, domain)
        if addrs:
            return [MXHost(domain, 0, addrs)]
        if temp:
            raise RoutingError("4.4.3", f"DNS temporary failure resolving {domain}",
                               permanent=False)
        raise RoutingError("5.1.2", f"no MX or address records for {domain}", permanent=True)

    # Order by preference, shuffle within a preference (§5.1).
    by_pref: dict[int, list[str]] = {}
    for pref, exchange in records:
        names = by_pref.setdefault(pref, [])
        if exchange not in names:
            names.append(exchange)
    hosts: list[MXHost] = []
    any_temp = False
    for pref in sorted(by_pref):
        names = by_pref[pref]
        rng.shuffle(names)
        for name in names:
            literal = None
            try:
                literal = str(ipaddress.ip_address(name))
            except ValueError:
                pass
            if literal is not None:  # not allowed by RFC 5321, but seen; just use it
                hosts.append(MXHost(name, pref, (literal,)))
                continue
            addrs, temp = await _addresses(resolver, name)
            any_temp = any_temp or temp
            if addrs:
                hosts.append(MXHost(name, pref, addrs))
    if not hosts:
        raise RoutingError("4.4.3", f"no MX host of {domain} has an address"
                           + (" (DNS temporary failure)" if any_temp else ""), permanent=False)
    return hosts


def drop_self(domain: str, hosts: list[MXHost], *, names: tuple[str, ...] = (),
              addresses: tuple[str, ...] = ()) -> list[MXHost]:
    """RFC 5321 §5.1: "If it [the SMTP client] finds its own name or address in the
    list, it MUST discard that entry and all entries with equal or higher preference
    values (less preferred)". Raises :class:`RoutingError` (5.4.6) when none is left.

    ``names`` are our host names; ``addresses`` the addresses where a connection
    would reach our own MX listener.
    """
    own_names = {n.lower().rstrip(".") for n in names if n}
    own_addrs = {str(ipaddress.ip_address(a)) for a in addresses if a}
    cutoff: int | None = None
    for h in hosts:
        if h.name.lower().rstrip(".") in own_names or own_addrs.intersection(h.addresses):
            cutoff = h.preference if cutoff is None else min(cutoff, h.preference)
    if cutoff is None:
        return hosts
    kept = [h for h in hosts if h.preference < cutoff]
    if not kept:
        raise RoutingError("5.4.6", f"mail for {domain} loops back to myself", permanent=True)
    return kept
