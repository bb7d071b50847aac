"""Judge what a mail domain publishes in DNS: MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, the
RFC 6186 SRV records of the client services, FCrDNS.

``check_domain`` returns :class:`Finding` values (never raises on DNS trouble: a temporary
failure is itself a finding); ``render_findings`` and ``findings_json`` present them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mailyard.config import CLIENT_LISTENERS
from mailyard.mailauth.authresults import check_iprev
from mailyard.mailauth.dkim import DKIMTagError, _rsa_bits, key_record_problem, parse_tags
from mailyard.mailauth.dmarc import DMARCSyntaxError, is_dmarc_record
from mailyard.mailauth.dmarc import parse_record as parse_dmarc
from mailyard.mailauth.resolver import NXDomain, Resolver, TempError
from mailyard.mailauth.spf import MAX_DNS_TERMS, SPFSyntaxError, is_spf_record
from mailyard.mailauth.spf import parse_record as parse_spf

Status = Literal["ok", "warn", "error"]
#: How deep and wide the static SPF include walk goes before giving up.
MAX_SPF_WALK = 50


@dataclass(frozen=True)
class Finding:
    kind: str
    status: Status
    message: str
    records: list[str] = field(default_factory=list)


async def _txt(resolver: Resolver, name: str) -> list[str] | None:
    """TXT strings, [] for NODATA/NXDOMAIN; None (caller reports) on TempError."""
    try:
        return await resolver.txt(name)
    except NXDomain:
        return []
    except TempError:
        return None


def _temp(kind: str, name: str) -> Finding:
    return Finding(kind, "warn", f"temporary DNS failure looking up {name}; try again")


async def count_spf_lookups(resolver: Resolver, domain: str) -> tuple[int, list[str]]:
    """Statically count DNS-querying terms (RFC 7208 §4.6.4) through include/redirect.

    Macros are not expanded (a term with a macro counts once and is not followed).
    Returns (count, problems found in included records).
    """
    problems: list[str] = []
    seen: set[str] = set()
    budget = [MAX_SPF_WALK]

    async def walk(d: str) -> int:
        if d in seen or budget[0] <= 0:
            return 0
        seen.add(d)
        budget[0] -= 1
        txts = await _txt(resolver, d)
        if txts is None:
            problems.append(f"{d}: temporary DNS failure")
            return 0
        recs = [t for t in txts if is_spf_record(t)]
        if len(recs) != 1:
            problems.append(f"{d}: {len(recs)} SPF records")
            return 0
        try:
            rec = parse_spf(recs[0])
        except SPFSyntaxError as e:
            problems.append(f"{d}: {e}")
            return 0
        n = rec.dns_terms
        targets = []
        for m in rec.mechanisms:
            if (
                m.name == "include"
                and m.domain_spec
                and all(isinstance(t, str) for t in m.domain_spec)
            ):
                targets.append("".join(m.domain_spec))  # type: ignore[arg-type]
        if rec.redirect and all(isinstance(t, str) for t in rec.redirect):
            targets.append("".join(rec.redirect))  # type: ignore[arg-type]
        for t in targets:
            n += await walk(t.rstrip(".").lower())
        return n

    total = await walk(domain.rstrip(".").lower())
    return total, problems


async def _check_mx(
    domain: str, resolver: Resolver, expected: dict[str, Any]
) -> tuple[list[Finding], list[str]]:
    try:
        mxs = await resolver.mx(domain)
    except NXDomain:
        return [Finding("mx", "error", f"{domain} does not exist")], []
    except TempError:
        return [_temp("mx", domain)], []
    recs = [f"{p} {h or '.'}" for p, h in sorted(mxs)]
    if not mxs:
        return [Finding("mx", "error", "no MX record: senders fall back to the A record", recs)], []
    hosts = [h for _, h in sorted(mxs) if h]
    if not hosts:
        return [Finding("mx", "warn", "null MX (RFC 7505): the domain accepts no mail", recs)], []
    want = expected.get("hostname")
    if want and want.rstrip(".").lower() not in hosts:
        return [Finding("mx", "warn", f"MX does not point at {want}", recs)], hosts
    return [Finding("mx", "ok", f"{len(hosts)} mail exchanger(s)", recs)], hosts


async def _check_spf(domain: str, resolver: Resolver) -> Finding:
    txts = await _txt(resolver, domain)
    if txts is None:
        return _temp("spf", domain)
    recs = [t for t in txts if is_spf_record(t)]
    if not recs:
        return Finding("spf", "error", "no SPF record (v=spf1)")
    if len(recs) > 1:
        return Finding("spf", "error", f"{len(recs)} SPF records: receivers see permerror", recs)
    try:
        rec = parse_spf(recs[0])
    except SPFSyntaxError as e:
        return Finding("spf", "error", f"syntax error: {e}", recs)
    count, problems = await count_spf_lookups(resolver, domain)
    if count > MAX_DNS_TERMS:
        return Finding(
            "spf", "error", f"{count} DNS-querying terms (limit {MAX_DNS_TERMS}): permerror", recs
        )
    if problems:
        return Finding("spf", "error", "included records broken: " + "; ".join(problems[:5]), recs)
    last = rec.mechanisms[-1] if rec.mechanisms else None
    if last is not None and last.name == "all" and last.qualifier == "+":
        return Finding("spf", "error", "+all authorises every host on the Internet", recs)
    if rec.redirect is None and (last is None or last.name != "all" or last.qualifier == "?"):
        return Finding(
            "spf", "warn", f"no -all/~all: unlisted hosts get neutral ({count} lookups)", recs
        )
    return Finding("spf", "ok", f"valid, {count} DNS lookup(s) of {MAX_DNS_TERMS}", recs)


async def _check_dkim(
    domain: str, selector: str, resolver: Resolver, expected: dict[str, Any]
) -> Finding:
    kind = f"dkim:{selector}"
    name = f"{selector}._domainkey.{domain}"
    txts = await _txt(resolver, name)
    if txts is None:
        return _temp(kind, name)
    if not txts:
        return Finding(kind, "error", f"no key at {name}")
    txt = txts[0]
    problem = key_record_problem(txt)
    if problem is not None:
        return Finding(kind, "error", problem[1], txts)
    tags = parse_tags(txt)
    want = (expected.get("dkim") or {}).get(selector)
    if want:
        try:
            if parse_tags(want).get("p", "").replace(" ", "") != tags.get("p", "").replace(" ", ""):
                return Finding(kind, "error", "published key differs from our signing key", txts)
        except DKIMTagError:
            pass
    if tags.get("k", "rsa") == "rsa":
        bits = _rsa_bits(tags["p"])
        if bits < 2048:
            return Finding(kind, "warn", f"RSA key of {bits} bits: use 2048", txts)
        return Finding(kind, "ok", f"RSA {bits}-bit key", txts)
    return Finding(kind, "ok", "Ed25519 key (RFC 8463): also publish an RSA selector", txts)


async def _check_dmarc(domain: str, resolver: Resolver) -> Finding:
    name = f"_dmarc.{domain}"
    txts = await _txt(resolver, name)
    if txts is None:
        return _temp("dmarc", name)
    recs = [t for t in txts if is_dmarc_record(t)]
    if not recs:
        return Finding("dmarc", "error", f"no DMARC record at {name}")
    if len(recs) > 1:
        return Finding("dmarc", "error", f"{len(recs)} DMARC records: receivers ignore them", recs)
    try:
        rec = parse_dmarc(recs[0])
    except DMARCSyntaxError as e:
        return Finding("dmarc", "error", f"syntax error: {e}", recs)
    if rec.p == "none":
        return Finding(
            "dmarc", "warn", "p=none: monitoring only; move to quarantine, then reject", recs
        )
    if rec.pct < 100:
        return Finding("dmarc", "warn", f"p={rec.p} applied to {rec.pct}% only", recs)
    if not rec.rua:
        return Finding("dmarc", "warn", f"p={rec.p} but no rua=: you get no reports", recs)
    return Finding("dmarc", "ok", f"p={rec.p}", recs)


async def _check_tagged(
    kind: str, name: str, version: str, required: str, resolver: Resolver
) -> Finding:
    txts = await _txt(resolver, name)
    if txts is None:
        return _temp(kind, name)
    recs = [t for t in txts if t.replace(" ", "").startswith(f"v={version}")]
    if not recs:
        return Finding(kind, "warn", f"no {version} record at {name}")
    if len(recs) > 1:
        return Finding(kind, "error", f"{len(recs)} {version} records at {name}", recs)
    fields = dict(
        (k.strip(), v.strip())
        for k, _, v in (p.partition("=") for p in recs[0].split(";"))
        if k.strip()
    )
    value = fields.get(required, "")
    if not value:
        return Finding(kind, "error", f"{version} record lacks {required}=", recs)
    if required == "id" and not re.fullmatch(r"[A-Za-z0-9]{1,32}", value):
        return Finding(kind, "error", "id= must be 1-32 letters/digits (RFC 8461 §3.1)", recs)
    return Finding(kind, "ok", f"{version} published", recs)


async def _check_srv(domain: str, resolver: Resolver, expected: dict[str, Any]) -> Finding:
    """The SRV record of each client service (RFC 6186 §3). With ``expected["ports"]``
    (our listeners' ports by name, None when not listened on) each is compared with what
    ``dns records`` prints: the port, and the target ``expected["hostname"]``."""
    recs: list[str] = []
    problems: list[str] = []
    published = 0
    ports: dict[str, int | None] | None = expected.get("ports")
    host = (expected.get("hostname") or "").rstrip(".").lower() or None
    for service, _, _, _ in CLIENT_LISTENERS:
        name = f"_{service}._tcp.{domain}"
        try:
            answers = await resolver.srv(name)
        except NXDomain:
            answers = []
        except TempError:
            return _temp("srv", name)
        recs += [f"{name} {p} {w} {port} {t or '.'}" for p, w, port, t in sorted(answers)]
        published += bool(answers)
        if ports is None:
            continue
        want = ports.get(service)
        offered = [(port, t) for _, _, port, t in answers if t]  # "." = not offered (§4)
        if want is None:
            if offered:
                problems.append(f"_{service} is published but not listened on")
        elif want == 0:  # the kernel picks the port at start: nothing fixed to compare
            continue
        elif not answers:
            problems.append(f"_{service} missing (port {want} on {host})")
        elif not any(port == want and (host is None or t == host) for port, t in offered):
            problems.append(f"_{service} does not give port {want} on {host}")
    if not published:
        return Finding("srv", "warn", "no SRV records (RFC 6186): mail clients cannot find "
                       "the servers from the address alone")
    if problems:
        return Finding("srv", "warn", "; ".join(problems), recs)
    return Finding("srv", "ok", f"{published} client service(s) published", recs)


async def _check_ptr(host: str, resolver: Resolver) -> list[Finding]:
    out = []
    addrs: list[str] = []
    for fn in (resolver.a, resolver.aaaa):
        try:
            addrs += await fn(host)
        except (NXDomain, TempError):
            continue
    if not addrs:
        return [Finding(f"ptr:{host}", "error", f"{host} has no address")]
    for ip in addrs:
        res = await check_iprev(ip, resolver=resolver)
        if res.result == "pass":
            status: Status = "ok" if res.hostname == host else "warn"
            msg = f"{ip} → {res.hostname} → {ip}" + ("" if status == "ok" else f" (not {host})")
        elif res.result == "temperror":
            status, msg = "warn", f"{ip}: temporary DNS failure on PTR"
        else:
            status, msg = (
                "error",
                f"{ip}: no forward-confirmed PTR ({res.reason}); many receivers reject",
            )
        out.append(Finding(f"ptr:{host}", status, msg, [res.hostname] if res.hostname else []))
    return out


async def check_domain(
    domain: str,
    *,
    resolver: Resolver,
    selectors: list[str],
    expected: dict[str, Any] | None = None,
) -> list[Finding]:
    """Check everything a mail domain publishes. ``expected`` may hold ``hostname`` (our MX),
    ``dkim`` ({selector: TXT value we sign with}) and ``ports`` (our client listeners'
    ports by name, for the SRV records)."""
    expected = expected or {}
    d = domain.rstrip(".").lower()
    findings, hosts = await _check_mx(d, resolver, expected)
    findings.append(await _check_spf(d, resolver))
    if not selectors:
        findings.append(Finding("dkim", "warn", "no DKIM selector given to check"))
    for s in selectors:
        findings.append(await _check_dkim(d, s, resolver, expected))
    findings.append(await _check_dmarc(d, resolver))
    findings.append(await _check_tagged("mta-sts", f"_mta-sts.{d}", "STSv1", "id", resolver))
    findings.append(await _check_tagged("tls-rpt", f"_smtp._tls.{d}", "TLSRPTv1", "rua", resolver))
    findings.append(await _check_srv(d, resolver, expected))
    for h in hosts[:10]:
        findings.extend(await _check_ptr(h, resolver))
    return findings


_MARK = {"ok": "  ok ", "warn": " WARN", "error": "ERROR"}


def render_findings(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"[{_MARK[f.status]}] {f.kind:<12} {f.message}")
        lines += [f"{'':21}{r}" for r in f.records]
    errors = sum(f.status == "error" for f in findings)
    warns = sum(f.status == "warn" for f in findings)
    lines.append(f"{errors} error(s), {warns} warning(s)")
    return "\n".join(lines) + "\n"


def findings_json(findings: list[Finding]) -> str:
    return json.dumps([asdict(f) for f in findings], indent=2)
