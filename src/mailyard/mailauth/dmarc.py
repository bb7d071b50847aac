"""DMARC (RFC 7489): record parsing, policy discovery, identifier alignment, pct sampling.

Decisions where the RFC leaves room (What others do / What we do):

- No From field, several From fields, or one From naming addresses in *different* domains:
  RFC 7489 §6.6.1 says such messages "are typically rejected" since no single Author Domain
  can be evaluated. We return result "fail" with policy and disposition "reject" and say why
  in ``reason``. A From with several addresses in the *same* domain is evaluated normally.
- Several DMARC records at one name: §6.6.3 says policy discovery ends without applying
  DMARC. We return "permerror" (a publisher mistake worth reporting) with disposition "none".
- A record without a valid ``p=``: §6.6.3 — treated as ``p=none`` if it has ``rua=``,
  otherwise "permerror" with disposition "none". Bad ``adkim``/``aspf``/``pct`` fall back to
  their defaults (§6.3: "syntax errors in the remainder of the record SHOULD be discarded in
  favor of default values").
- A DKIM pass with ``l=`` covering less than the body does not count (our policy, RFC 6376
  §8.2: the unsigned tail can be anything).
"""

from __future__ import annotations

import email.utils
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from mailyard.mailauth.dkim import DKIMResult, split_message
from mailyard.mailauth.resolver import NXDomain, Resolver, TempError
from mailyard.mailauth.spf import SPFResult

DMARCResultCode = Literal["pass", "fail", "none", "temperror", "permerror"]
Policy = Literal["none", "quarantine", "reject"]
_POLICIES = ("none", "quarantine", "reject")
MAX_RECORD_LEN = 4096


class DMARCSyntaxError(ValueError):
    """The text is not a usable DMARC record (RFC 7489 §6.3/§6.4)."""


@dataclass(frozen=True)
class DMARCRecord:
    p: Policy
    sp: Policy | None = None
    adkim: Literal["r", "s"] = "r"
    aspf: Literal["r", "s"] = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    rf: str = "afrf"
    ri: int = 86400
    tags: dict[str, str] = field(default_factory=dict, compare=False)


def is_dmarc_record(text: str) -> bool:
    head = text.split(";", 1)[0].replace(" ", "").replace("\t", "")
    return head == "v=DMARC1"


def parse_record(text: str) -> DMARCRecord:
    """Parse a DMARC TXT record; raises :class:`DMARCSyntaxError` (only) when unusable."""
    if not isinstance(text, str):
        raise DMARCSyntaxError("record must be text")
    if len(text) > MAX_RECORD_LEN:
        raise DMARCSyntaxError("record too long")
    if not is_dmarc_record(text):
        raise DMARCSyntaxError("record does not start with v=DMARC1")
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        name = name.strip(" \t\r\n").lower()
        if not name:
            continue
        if not eq:
            continue  # §6.3: junk in the remainder is discarded
        tags.setdefault(name, value.strip(" \t\r\n"))
    rua = tuple(u.strip() for u in tags.get("rua", "").split(",") if u.strip())
    ruf = tuple(u.strip() for u in tags.get("ruf", "").split(",") if u.strip())
    valid_rua = any(u.lower().startswith("mailto:") and "@" in u for u in rua)
    p = tags.get("p", "").lower()
    if p not in _POLICIES:
        if not valid_rua:
            raise DMARCSyntaxError(f"missing or invalid p= ({tags.get('p', '')!r})")
        p = "none"  # §6.6.3
    sp_raw = tags.get("sp", "").lower()
    sp = sp_raw if sp_raw in _POLICIES else None
    if "sp" in tags and sp is None and not valid_rua:
        raise DMARCSyntaxError(f"invalid sp= ({tags['sp']!r})")
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    pct_raw = tags.get("pct", "100")
    pct = int(pct_raw) if pct_raw.isdigit() and len(pct_raw) <= 3 else 100
    ri_raw = tags.get("ri", "86400")
    return DMARCRecord(
        p=p,  # type: ignore[arg-type]
        sp=sp,  # type: ignore[arg-type]
        adkim=adkim if adkim in ("r", "s") else "r",  # type: ignore[arg-type]
        aspf=aspf if aspf in ("r", "s") else "r",  # type: ignore[arg-type]
        pct=min(pct, 100),
        rua=rua,
        ruf=ruf,
        fo=tags.get("fo", "0"),
        rf=tags.get("rf", "afrf"),
        ri=int(ri_raw) if ri_raw.isdigit() and len(ri_raw) <= 10 else 86400,
        tags=tags,
    )


@functools.lru_cache(maxsize=1024)
def _parse_record_cached(text: str) -> DMARCRecord:
    """parse_record for check_dmarc: the same few records come with every message.
    (A DMARCSyntaxError is not cached: broken records cost a parse each time.)"""
    return parse_record(text)


@functools.lru_cache(maxsize=1)
def _psl():  # type: ignore[no-untyped-def]
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2 via the Public Suffix List; a bare public suffix is its own org domain."""
    d = domain.lower().rstrip(".")
    try:
        org = _psl().privatesuffix(d)
    except Exception:
        org = None
    return org or d


def aligned(a: str, b: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 §3.1): strict = same name; relaxed = same org domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    if a == b:
        return True
    return mode != "s" and organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True)
class DMARCResult:
    result: DMARCResultCode
    policy: Policy = "none"
    disposition: Policy = "none"
    domain: str = ""
    org_domain: str = ""
    spf_aligned: bool = False
    dkim_aligned: bool = False
    #: True when pct= sampling put the message under the full policy (always True at pct=100)
    pct_applied: bool = True
    record: DMARCRecord | None = None
    record_domain: str = ""
    reason: str = ""


def from_domains(values: list[str]) -> tuple[str | None, str]:
    """The single Author Domain of the From field(s), or (None, why)."""
    if not values:
        return None, "no From header field"
    if len(values) > 1:
        return None, f"{len(values)} From header fields"
    if len(values[0]) > 998:  # longer than a line may be (RFC 5322 §2.1.1): not cached
        return _from_domain(values[0])
    return _from_domain_cached(values[0])


@functools.lru_cache(maxsize=4096)
def _from_domain_cached(value: str) -> tuple[str | None, str]:
    return _from_domain(value)


def _from_domain(value: str) -> tuple[str | None, str]:
    values = [value]
    addrs = email.utils.getaddresses(values)
    domains = set()
    for _name, addr in addrs:
        _, at, dom = addr.rpartition("@")
        dom = dom.strip().strip(">").rstrip(".").lower()
        if not at or not dom or "." not in dom:
            return None, f"no usable domain in From {values[0][:80]!r}"
        domains.add(dom)
    if not domains:
        return None, "no address in From"
    if len(domains) > 1:
        return None, "From names addresses in several domains (RFC 7489 section 6.6.1)"
    return domains.pop(), ""


async def _lookup(resolver: Resolver, domain: str) -> list[str]:
    """DMARC records at _dmarc.<domain>; [] when none; TempError propagates."""
    try:
        txts = await resolver.txt(f"_dmarc.{domain}")
    except NXDomain:
        return []
    return [t for t in txts if is_dmarc_record(t)]


async def check_dmarc(
    from_header_values: list[str] | bytes,
    spf: SPFResult | None,
    mail_from_domain: str | None,
    dkim: list[DKIMResult],
    *,
    resolver: Resolver,
    rand: Callable[[], float] = random.random,
) -> DMARCResult:
    """Evaluate DMARC for one message. ``from_header_values`` are the raw From field values
    (or the message / its header block as bytes). Never raises."""
    if isinstance(from_header_values, bytes):
        fields, _ = split_message(from_header_values)
        values = [v for n, v in fields if n.lower() == "from"]
    else:
        values = list(from_header_values)
    domain, why = from_domains(values)
    if domain is None:
        return DMARCResult("fail", "reject", "reject", reason=why)
    org = organizational_domain(domain)

    try:
        records = await _lookup(resolver, domain)
        record_domain = domain
        if not records and org != domain:
            records = await _lookup(resolver, org)
            record_domain = org
    except TempError as e:
        return DMARCResult("temperror", domain=domain, org_domain=org, reason=str(e))
    if not records:
        return DMARCResult("none", domain=domain, org_domain=org, reason="no DMARC record")
    if len(records) > 1:
        return DMARCResult(
            "permerror", domain=domain, org_domain=org, record_domain=record_domain,
            reason=f"{len(records)} DMARC records at _dmarc.{record_domain}",
        )  # fmt: skip
    try:
        rec = _parse_record_cached(records[0])
    except DMARCSyntaxError as e:
        return DMARCResult(
            "permerror", domain=domain, org_domain=org, record_domain=record_domain, reason=str(e)
        )
    # §6.6.3: a record found at the org domain for a subdomain applies sp= (default p=).
    policy: Policy = rec.p
    if record_domain != domain and rec.sp is not None:
        policy = rec.sp

    spf_aligned = False
    if spf is not None and spf.result == "pass":
        spf_domain = spf.domain if spf.identity == "helo" else (mail_from_domain or spf.domain)
        spf_aligned = aligned(spf_domain, domain, rec.aspf)
    dkim_aligned = any(
        r.result == "pass" and not r.body_length_limited and aligned(r.domain, domain, rec.adkim)
        for r in dkim
    )
    common = {
        "policy": policy,
        "domain": domain,
        "org_domain": org,
        "spf_aligned": spf_aligned,
        "dkim_aligned": dkim_aligned,
        "record": rec,
        "record_domain": record_domain,
    }
    if spf_aligned or dkim_aligned:
        return DMARCResult("pass", disposition="none", **common)  # type: ignore[arg-type]
    # §6.6.4: a message outside the pct sample gets the next policy down.
    sampled = rec.pct >= 100 or rand() * 100 < rec.pct
    disposition: Policy = policy
    if not sampled:
        disposition = {"reject": "quarantine", "quarantine": "none", "none": "none"}[policy]  # type: ignore[assignment]
    return DMARCResult(
        "fail",
        disposition=disposition,
        pct_applied=sampled,
        reason="no aligned SPF or DKIM pass",
        **common,  # type: ignore[arg-type]
    )
