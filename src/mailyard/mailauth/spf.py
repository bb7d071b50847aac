"""SPF (RFC 7208): a pure async evaluator over the :class:`Resolver` seam.

Theory of operation
-------------------
``parse_record`` turns record text into a :class:`Record` (or raises :class:`SPFSyntaxError`);
the *whole* record is parsed before anything is evaluated, so a syntax error late in the
record is a permerror even when an earlier mechanism would have matched (RFC 7208 §4.6).

``check_host`` is the function of RFC 7208 §4. The per-evaluation state (the 10-term DNS
budget of §4.6.4, the 2 void-lookup budget, the macro inputs) lives in one ``_Ctx`` shared by
``include``/``redirect`` recursion; recursion depth is bounded by that budget (each level
spends one lookup), so it can never exceed 11 frames.

Results are values (:class:`SPFResult`); DNS outcomes come from the resolver as an answer,
:class:`NXDomain` or :class:`TempError`. Nothing here raises to the caller.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

from mailyard.mailauth.resolver import NXDomain, Resolver, TempError

SPFResultCode = Literal["none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"]

#: RFC 7208 §4.6.4: at most 10 terms that cause DNS queries, at most 2 void lookups.
MAX_DNS_TERMS = 10
MAX_VOID_LOOKUPS = 2
#: RFC 7208 §4.6.4: an "mx" may look at no more than 10 MX names (more → permerror);
#: "ptr" and %{p} look at the first 10 PTR names and ignore the rest.
MAX_MX_NAMES = 10
MAX_PTR_NAMES = 10
#: Bound on record text we are willing to parse (a TXT RRset can be up to 64 KiB).
MAX_RECORD_LEN = 65535

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_DNS_MECHANISMS = {"include", "a", "mx", "ptr", "exists"}


class SPFSyntaxError(ValueError):
    """The record text does not follow the RFC 7208 §12 grammar."""


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class SPFResult:
    result: SPFResultCode
    domain: str = ""
    explanation: str = ""
    mechanism: str = ""
    #: "mailfrom" or "helo" (RFC 7208 §2.3/§2.4), for Authentication-Results.
    identity: str = "mailfrom"
    sender: str = ""
    reason: str = ""
    lookups: int = 0


# --------------------------------------------------------------------------------------------
# Macro strings (RFC 7208 §7)


@dataclass(frozen=True)
class Macro:
    letter: str  # lower-case macro letter
    upper: bool  # upper-case letter: URL-escape the result (§7.3)
    digits: int | None
    reverse: bool
    delimiters: str


MacroToken = str | Macro

_MACRO_RE = re.compile(r"%\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")
_DOMAIN_LETTERS = set("slodiphv")
_EXP_LETTERS = _DOMAIN_LETTERS | set("crt")


def parse_macro_string(text: str, *, explain: bool = False) -> list[MacroToken]:
    """Tokenise a macro-string (RFC 7208 §7.1). ``explain`` allows c/r/t and spaces."""
    letters = _EXP_LETTERS if explain else _DOMAIN_LETTERS
    out: list[MacroToken] = []
    lit: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%":
            nxt = text[i + 1 : i + 2]
            if nxt == "%":
                lit.append("%")
                i += 2
                continue
            if nxt == "_":
                lit.append(" ")
                i += 2
                continue
            if nxt == "-":
                lit.append("%20")
                i += 2
                continue
            m = _MACRO_RE.match(text, i)
            if not m:
                raise SPFSyntaxError(f"bad macro at {text[i : i + 12]!r}")
            letter, digits, rev, delims = m.groups()
            if letter.lower() not in letters:
                raise SPFSyntaxError(f"macro letter {letter!r} not allowed here")
            count = None
            if digits:
                count = int(digits[:6]) if len(digits) <= 6 else 10**6
                if count == 0:
                    raise SPFSyntaxError("macro transformer digit must be nonzero")
            if lit:
                out.append("".join(lit))
                lit = []
            out.append(Macro(letter.lower(), letter.isupper(), count, bool(rev), delims or "."))
            i = m.end()
            continue
        o = ord(ch)
        if not (0x21 <= o <= 0x7E or (explain and ch == " ")):
            raise SPFSyntaxError(f"character {ch!r} not allowed in macro-string")
        lit.append(ch)
        i += 1
    if lit:
        out.append("".join(lit))
    return out


_TOPLABEL_END = re.compile(
    r"\.(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\.?$"
)


def parse_domain_spec(text: str) -> list[MacroToken]:
    """domain-spec = macro-string domain-end (RFC 7208 §7.1)."""
    if not text:
        raise SPFSyntaxError("empty domain-spec")
    tokens = parse_macro_string(text)
    last = tokens[-1]
    ends_with_macro = isinstance(last, Macro) or text.endswith(("%%", "%_", "%-"))
    if not ends_with_macro and not _TOPLABEL_END.search(text):
        raise SPFSyntaxError(f"domain-spec {text!r} does not end in a top label")
    return tokens


# --------------------------------------------------------------------------------------------
# Record parsing (RFC 7208 §4.6.1, §12)


@dataclass(frozen=True)
class Mechanism:
    qualifier: str  # "+", "-", "~", "?"
    name: str
    domain_spec: tuple[MacroToken, ...] | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128
    text: str = ""


@dataclass(frozen=True)
class Record:
    mechanisms: tuple[Mechanism, ...]
    redirect: tuple[MacroToken, ...] | None = None
    exp: tuple[MacroToken, ...] | None = None
    modifiers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def dns_terms(self) -> int:
        """How many terms of this record (not counting includes' own) cause DNS lookups."""
        n = sum(1 for m in self.mechanisms if m.name in _DNS_MECHANISMS)
        return n + (1 if self.redirect is not None else 0)


_CIDR_RE = re.compile(r"(?:/(0|[1-9][0-9]{0,2}))?(?://(0|[1-9][0-9]{0,2}))?$")
_MOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.]*$")


def _split_dual_cidr(arg: str) -> tuple[str, int, int]:
    m = _CIDR_RE.search(arg)
    assert m is not None  # the pattern can match the empty string
    c4 = int(m.group(1)) if m.group(1) is not None else 32
    c6 = int(m.group(2)) if m.group(2) is not None else 128
    if c4 > 32 or c6 > 128:
        raise SPFSyntaxError("CIDR length out of range")
    return arg[: m.start()], c4, c6


def _parse_mechanism(term: str) -> Mechanism:
    qual = "+"
    body = term
    if body[:1] in _QUALIFIERS:
        qual, body = body[0], body[1:]
    m = re.match(r"([A-Za-z][A-Za-z0-9\-_.]*)", body)
    if not m:
        raise SPFSyntaxError(f"bad term {term!r}")
    name = m.group(1).lower()
    rest = body[m.end() :]
    if name not in _MECHANISMS:
        raise SPFSyntaxError(f"unknown mechanism {m.group(1)!r}")
    if name == "all":
        if rest:
            raise SPFSyntaxError(f"bad term {term!r}")
        return Mechanism(qual, name, text=term)
    if name in ("include", "exists"):
        if not rest.startswith(":"):
            raise SPFSyntaxError(f"{name} needs a domain-spec")
        return Mechanism(qual, name, tuple(parse_domain_spec(rest[1:])), text=term)
    if name == "ptr":
        if not rest:
            return Mechanism(qual, name, text=term)
        if not rest.startswith(":"):
            raise SPFSyntaxError(f"bad term {term!r}")
        return Mechanism(qual, name, tuple(parse_domain_spec(rest[1:])), text=term)
    if name in ("a", "mx"):
        spec_text, c4, c6 = _split_dual_cidr(rest)
        spec = None
        if spec_text:
            if not spec_text.startswith(":"):
                raise SPFSyntaxError(f"bad term {term!r}")
            spec = tuple(parse_domain_spec(spec_text[1:]))
        return Mechanism(qual, name, spec, cidr4=c4, cidr6=c6, text=term)
    # ip4 / ip6
    if not rest.startswith(":"):
        raise SPFSyntaxError(f"{name} needs an address")
    addr, _, plen = rest[1:].partition("/")
    limit = 32 if name == "ip4" else 128
    if plen and not re.fullmatch(r"0|[1-9][0-9]{0,2}", plen):
        raise SPFSyntaxError(f"bad CIDR length in {term!r}")
    length = int(plen) if plen else limit
    if length > limit:
        raise SPFSyntaxError(f"CIDR length out of range in {term!r}")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address
        ip = ipaddress.IPv4Address(addr) if name == "ip4" else ipaddress.IPv6Address(addr)
    except ValueError:
        raise SPFSyntaxError(f"bad address in {term!r}") from None
    net = ipaddress.ip_network(f"{ip}/{length}", strict=False)
    return Mechanism(qual, name, network=net, cidr4=length, cidr6=length, text=term)


def is_spf_record(text: str) -> bool:
    """RFC 7208 §4.5: exactly "v=spf1" followed by a space or the end (case-insensitive)."""
    head = text[:7].lower()
    return head == "v=spf1" or head == "v=spf1 "


def parse_record(text: str) -> Record:
    """Parse an SPF record ("v=spf1 ..."). Raises :class:`SPFSyntaxError`, nothing else."""
    if not isinstance(text, str):
        raise SPFSyntaxError("record must be text")
    return _parse_record_cached(text)


@functools.lru_cache(maxsize=4096)
def _parse_record_cached(text: str) -> Record:
    """Records are immutable values: a domain's record is parsed once, not per message."""
    if len(text) > MAX_RECORD_LEN:
        raise SPFSyntaxError("record too long")
    if not is_spf_record(text):
        raise SPFSyntaxError("not an SPF record (v=spf1)")
    mechanisms: list[Mechanism] = []
    redirect = exp = None
    mods: list[tuple[str, str]] = []
    # RFC 7208 §4.6.1: terms are separated by SP only; any other whitespace is part of a term.
    for term in text[6:].split(" "):
        if not term:
            continue
        eq = term.find("=")
        colon = term.find(":")
        slash = term.find("/")
        is_mod = eq > 0 and (colon < 0 or eq < colon) and (slash < 0 or eq < slash)
        if is_mod and _MOD_NAME.match(term[:eq]):
            name, value = term[:eq].lower(), term[eq + 1 :]
            if name == "redirect":
                if redirect is not None:
                    raise SPFSyntaxError("redirect= given twice")
                redirect = tuple(parse_domain_spec(value))
            elif name == "exp":
                if exp is not None:
                    raise SPFSyntaxError("exp= given twice")
                exp = tuple(parse_domain_spec(value))
            else:
                parse_macro_string(value)  # unknown modifiers are ignored but must parse
            mods.append((name, value))
            continue
        mechanisms.append(_parse_mechanism(term))
    return Record(tuple(mechanisms), redirect, exp, tuple(mods))


# --------------------------------------------------------------------------------------------
# Evaluation


class _Abort(Exception):
    """Ends evaluation with a temperror/permerror result."""

    def __init__(self, result: SPFResultCode, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class _Ctx:
    resolver: Resolver
    ip: IPAddr
    sender: str
    local: str
    sender_domain: str
    helo: str
    receiver: str
    now: float
    upper_hex: bool = False
    lookups: int = 0
    voids: int = 0
    validated_cache: str | None = None

    def spend_lookup(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_DNS_TERMS:
            raise _Abort("permerror", f"more than {MAX_DNS_TERMS} DNS-querying terms at {term}")

    def void(self, name: str) -> None:
        self.voids += 1
        if self.voids > MAX_VOID_LOOKUPS:
            raise _Abort("permerror", f"more than {MAX_VOID_LOOKUPS} void lookups ({name})")


def valid_domain(domain: str) -> bool:
    """RFC 7208 §4.3: a multi-label name with 1..63 octet labels, ≤ 253 octets."""
    d = domain[:-1] if domain.endswith(".") else domain
    if not d or len(d) > 253 or d.startswith("["):
        return False
    labels = d.split(".")
    if len(labels) < 2:
        return False
    return all(0 < len(label) <= 63 for label in labels)


def _truncate(name: str) -> str:
    """RFC 7208 §7.3: drop labels from the left until the name fits in 253 octets."""
    name = name[:-1] if name.endswith(".") else name
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    return name


def _ip_nibbles(ip: IPAddr) -> str:
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


async def _addresses(ctx: _Ctx, name: str) -> list[IPAddr]:
    """A or AAAA of ``name`` matching the client's family; NXDomain → []."""
    try:
        raw = await (ctx.resolver.a(name) if ctx.ip.version == 4 else ctx.resolver.aaaa(name))
    except NXDomain:
        return []
    out: list[IPAddr] = []
    for r in raw:
        try:
            out.append(ipaddress.ip_address(r))
        except ValueError:
            continue
    return out


async def _validated_ptr_names(ctx: _Ctx) -> list[str]:
    """PTR names of the client that resolve back to it (§5.5), first 10 only (§4.6.4)."""
    try:
        names = await ctx.resolver.ptr(str(ctx.ip))
    except (NXDomain, TempError):
        return []
    good = []
    for n in names[:MAX_PTR_NAMES]:
        try:
            if ctx.ip in await _addresses(ctx, n):
                good.append(n.lower().rstrip("."))
        except TempError:
            continue
    return good


async def _macro_p(ctx: _Ctx, domain: str) -> str:
    if ctx.validated_cache is None:
        names = await _validated_ptr_names(ctx)
        d = domain.lower()
        pick = "unknown"
        for n in names:
            if n == d:
                pick = n
                break
        else:
            for n in names:
                if n.endswith("." + d):
                    pick = n
                    break
            else:
                if names:
                    pick = names[0]
        ctx.validated_cache = pick
    return ctx.validated_cache


async def _expand(ctx: _Ctx, tokens: tuple[MacroToken, ...] | list[MacroToken], domain: str) -> str:
    out: list[str] = []
    for t in tokens:
        if isinstance(t, str):
            out.append(t)
            continue
        letter = t.letter
        if letter == "s":
            value = ctx.sender
        elif letter == "l":
            value = ctx.local
        elif letter == "o":
            value = ctx.sender_domain
        elif letter == "d":
            value = domain
        elif letter == "i":
            value = _ip_nibbles(ctx.ip)
            if ctx.upper_hex:
                # Keep the letter case the address was given in (the RFC 7208 suite's
                # v-macro-ip6 expects it; DNS names are case-insensitive either way).
                value = value.upper()
        elif letter == "p":
            value = await _macro_p(ctx, domain)
        elif letter == "v":
            value = "in-addr" if ctx.ip.version == 4 else "ip6"
        elif letter == "h":
            value = ctx.helo
        elif letter == "c":
            value = str(ctx.ip)
        elif letter == "r":
            value = ctx.receiver or "unknown"
        else:  # "t"
            value = str(int(ctx.now))
        if t.digits is not None or t.reverse or t.delimiters != ".":
            parts = re.split("[" + re.escape(t.delimiters) + "]", value)
            if t.reverse:
                parts.reverse()
            if t.digits is not None:
                parts = parts[-t.digits :]
            value = ".".join(parts)
        if t.upper:
            value = urllib.parse.quote(value, safe="")
        out.append(value)
    return "".join(out)


async def _target(ctx: _Ctx, mech: Mechanism, domain: str) -> str:
    if mech.domain_spec is None:
        return domain
    return _truncate(await _expand(ctx, mech.domain_spec, domain))


async def _fetch_record(ctx: _Ctx, domain: str) -> Record | None:
    """RFC 7208 §4.4/§4.5. None when there is no SPF record; _Abort on errors."""
    try:
        txts = await ctx.resolver.txt(domain)
    except NXDomain:
        return None
    except TempError as e:
        raise _Abort("temperror", f"DNS error looking up {domain}: {e}") from None
    spf = [t for t in txts if is_spf_record(t)]
    if not spf:
        return None
    if len(spf) > 1:
        raise _Abort("permerror", f"{domain} has {len(spf)} SPF records")
    try:
        return parse_record(spf[0])
    except SPFSyntaxError as e:
        raise _Abort("permerror", f"{domain}: {e}") from None


async def _match(ctx: _Ctx, mech: Mechanism, domain: str) -> bool:
    name = mech.name
    ip = ctx.ip
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        assert mech.network is not None
        return ip.version == mech.network.version and ip in mech.network
    ctx.spend_lookup(mech.text)
    if name == "include":
        target = await _target(ctx, mech, domain)
        sub = await _check(ctx, target, want_exp=False)
        if sub.result == "pass":
            return True
        if sub.result in ("fail", "softfail", "neutral"):
            return False
        if sub.result == "temperror":
            raise _Abort("temperror", sub.reason or f"include:{target}")
        raise _Abort("permerror", sub.reason or f"include:{target} gave {sub.result}")
    if name == "exists":
        target = await _target(ctx, mech, domain)
        if not valid_domain(target):
            ctx.void(target)
            return False
        try:
            found = await ctx.resolver.a(target)  # always A, whatever the client (§5.7)
        except NXDomain:
            found = []
        except TempError as e:
            raise _Abort("temperror", str(e)) from None
        if not found:
            ctx.void(target)
        return bool(found)
    cidr = mech.cidr4 if ip.version == 4 else mech.cidr6

    def in_net(addrs: list[IPAddr]) -> bool:
        for a in addrs:
            if a.version == ip.version:
                net = ipaddress.ip_network(f"{a}/{cidr}", strict=False)
                if ip in net:
                    return True
        return False

    if name == "a":
        target = await _target(ctx, mech, domain)
        if not valid_domain(target):
            ctx.void(target)
            return False
        try:
            addrs = await _addresses(ctx, target)
        except TempError as e:
            raise _Abort("temperror", str(e)) from None
        if not addrs:
            ctx.void(target)
        return in_net(addrs)
    if name == "mx":
        target = await _target(ctx, mech, domain)
        if not valid_domain(target):
            ctx.void(target)
            return False
        try:
            mxs = await ctx.resolver.mx(target)
        except NXDomain:
            mxs = []
        except TempError as e:
            raise _Abort("temperror", str(e)) from None
        if not mxs:
            ctx.void(target)
            return False
        if len(mxs) > MAX_MX_NAMES:
            raise _Abort("permerror", f"{target} has more than {MAX_MX_NAMES} MX records")
        for _pref, host in sorted(mxs):
            if not host:  # null MX (RFC 7505)
                continue
            try:
                if in_net(await _addresses(ctx, host)):
                    return True
            except TempError as e:
                raise _Abort("temperror", str(e)) from None
        return False
    # ptr (§5.5)
    target = (await _target(ctx, mech, domain)).lower()
    try:
        names = await ctx.resolver.ptr(str(ip))
    except NXDomain:
        names = []
    except TempError:
        return False  # §5.5: a DNS error on the PTR lookup means no match
    if not names:
        ctx.void(str(ip))
        return False
    for n in names[:MAX_PTR_NAMES]:
        n = n.lower().rstrip(".")
        if n != target and not n.endswith("." + target):
            continue
        try:
            if ip in await _addresses(ctx, n):
                return True
        except TempError:
            continue
    return False


async def _explanation(ctx: _Ctx, record: Record, domain: str) -> str:
    """RFC 7208 §6.2: any problem fetching or expanding exp= means no explanation."""
    if record.exp is None:
        return ""
    try:
        target = _truncate(await _expand(ctx, record.exp, domain))
        if not valid_domain(target):
            return ""
        txts = await ctx.resolver.txt(target)
        if len(txts) != 1:
            return ""
        text = txts[0]
        if not text.isascii():
            return ""
        return await _expand(ctx, parse_macro_string(text, explain=True), domain)
    except (SPFSyntaxError, NXDomain, TempError):
        return ""


async def _check(ctx: _Ctx, domain: str, *, want_exp: bool = True) -> SPFResult:
    """check_host() proper (RFC 7208 §4), on a shared context."""
    domain = domain.rstrip(".")
    if not valid_domain(domain):
        return SPFResult("none", domain, reason="malformed domain")
    try:
        record = await _fetch_record(ctx, domain)
        if record is None:
            return SPFResult("none", domain, reason=f"no SPF record at {domain}")
        for mech in record.mechanisms:
            if await _match(ctx, mech, domain):
                result: SPFResultCode = _QUALIFIERS[mech.qualifier]  # type: ignore[assignment]
                exp = ""
                if result == "fail" and want_exp:
                    exp = await _explanation(ctx, record, domain)
                return SPFResult(result, domain, exp, mech.text)
        if record.redirect is not None:
            # §6.1: only reached when no mechanism matched (so no "all" was present).
            ctx.spend_lookup("redirect")
            target = _truncate(await _expand(ctx, record.redirect, domain))
            sub = await _check(ctx, target, want_exp=want_exp)
            if sub.result == "none":
                return SPFResult("permerror", domain, reason=f"redirect={target}: no SPF record")
            return sub
        return SPFResult("neutral", domain, mechanism="default", reason="no mechanism matched")
    except _Abort as e:
        return SPFResult(e.result, domain, reason=e.reason)


@functools.lru_cache(maxsize=1024)
def parse_client_ip(ip: str) -> IPAddr | None:
    """A client address (IPv4-mapped IPv6 as IPv4), or None; parsed once per address
    (not per message). Shared with the iprev check."""
    try:
        addr = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # IPv4-mapped IPv6 is treated as IPv4 (RFC 7208 §5)
    return addr


async def check_host(
    ip: str,
    domain: str,
    sender: str,
    *,
    resolver: Resolver,
    helo: str = "",
    receiver: str = "",
    now: float | None = None,
) -> SPFResult:
    """RFC 7208 §4 check_host(<ip>, <domain>, <sender>). Never raises."""
    return await _check_host(ip, domain, sender, resolver=resolver, helo=helo,
                             receiver=receiver, now=now, identity="mailfrom")


async def _check_host(ip: str, domain: str, sender: str, *, resolver: Resolver, helo: str,
                      receiver: str, now: float | None, identity: str) -> SPFResult:
    addr = parse_client_ip(ip)
    if addr is None:
        return SPFResult("permerror", domain, identity=identity,
                         reason=f"bad client address {ip!r}")
    local, at, sdom = sender.rpartition("@")
    if not at:
        local, sdom = "", sender
    if not local:
        local = "postmaster"  # RFC 7208 §4.3
    full_sender = f"{local}@{sdom}"
    ctx = _Ctx(
        resolver=resolver,
        ip=addr,
        sender=full_sender,
        local=local,
        sender_domain=sdom,
        helo=helo,
        receiver=receiver,
        now=time.time() if now is None else now,
        upper_hex=addr.version == 6 and any(c in "ABCDEF" for c in ip),
    )
    res = await _check(ctx, domain)
    return SPFResult(
        res.result,
        domain.rstrip(".").lower(),
        res.explanation,
        res.mechanism,
        identity=identity,
        sender=full_sender,
        reason=res.reason,
        lookups=ctx.lookups,
    )


async def check_spf(
    ip: str,
    mail_from: str,
    helo: str,
    *,
    resolver: Resolver,
    receiver: str = "",
    now: float | None = None,
) -> SPFResult:
    """SPF for an SMTP transaction: the MAIL FROM identity, or HELO for ``<>``.

    RFC 7208 §2.4: the "MAIL FROM" identity is checked; when the reverse-path is null
    the "HELO" identity is used, as ``postmaster@<helo>`` (§2.3/§4.3).
    """
    mail_from = mail_from.strip().strip("<>")
    if mail_from:
        _, _, domain = mail_from.rpartition("@")
        sender, identity = mail_from, "mailfrom"
    else:
        domain = helo
        sender, identity = f"postmaster@{helo}", "helo"
    return await _check_host(ip, domain, sender, resolver=resolver, helo=helo,
                             receiver=receiver, now=now, identity=identity)
