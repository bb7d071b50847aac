"""Authentication-Results (RFC 8601) formatting and stripping; iprev (FCrDNS, RFC 8601 §3).

:func:`format_authentication_results` renders result values into one folded header field.
:func:`strip_our_authentication_results` removes fields claiming our authserv-id that arrived
with the message (RFC 8601 §5: a forged result under our name must not survive).
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mailyard.mailauth.resolver import NXDomain, Resolver, TempError
from mailyard.mailauth.spf import parse_client_ip

if TYPE_CHECKING:
    from mailyard.mailauth.arc import ARCResult
    from mailyard.mailauth.dkim import DKIMResult
    from mailyard.mailauth.dmarc import DMARCResult
    from mailyard.mailauth.spf import SPFResult

IprevResultCode = Literal["pass", "fail", "temperror", "permerror"]
MAX_PTR_NAMES = 10


@dataclass(frozen=True)
class IprevResult:
    result: IprevResultCode
    ip: str
    hostname: str = ""
    reason: str = ""


async def check_iprev(ip: str, *, resolver: Resolver) -> IprevResult:
    """Forward-confirmed reverse DNS: a PTR name of ``ip`` whose A/AAAA include ``ip``."""
    addr = parse_client_ip(ip)
    if addr is None:
        return IprevResult("permerror", ip, reason="not an IP address")
    text = str(addr)
    try:
        names = await resolver.ptr(text)
    except NXDomain:
        return IprevResult("fail", text, reason="no PTR record")
    except TempError as e:
        return IprevResult("temperror", text, reason=str(e))
    if not names:
        return IprevResult("fail", text, reason="no PTR record")

    async def forward(name: str) -> list[str] | TempError:
        try:
            return await (resolver.a(name) if addr.version == 4 else resolver.aaaa(name))
        except NXDomain:
            return []
        except TempError as e:
            return e

    checked = names[:MAX_PTR_NAMES]
    if len(checked) == 1:  # the usual case: no task for one lookup
        answers = [await forward(checked[0])]
    else:
        answers = list(await asyncio.gather(*(forward(n) for n in checked)))
    temp = False
    for name, ans in zip(checked, answers, strict=True):
        if isinstance(ans, TempError):
            temp = True
            continue
        for a in ans:
            if parse_client_ip(a) == addr:
                return IprevResult("pass", text, name.rstrip(".").lower())
    if temp:
        return IprevResult("temperror", text, reason="forward lookup failed")
    return IprevResult("fail", text, checked[0].rstrip("."), "PTR name does not resolve back")


# --------------------------------------------------------------------------------------------
# Formatting

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~@]+$")


@functools.lru_cache(maxsize=4096)
def _value(v: str) -> str:
    """A property value: bare when it is a token/addr-spec, else a quoted-string."""
    v = re.sub(r"[\x00-\x1f\x7f]", "", v)
    if v and _TOKEN.match(v):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.lru_cache(maxsize=1024)
def _comment(text: str) -> str:
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text).strip()
    if not text:
        return ""
    text = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f" ({text[:200]})"


def _spf_part(spf: SPFResult) -> str:
    if spf.identity == "helo":
        prop = f"smtp.helo={_value(spf.domain)}"
    else:
        prop = f"smtp.mailfrom={_value(spf.sender or spf.domain)}"
    why = spf.reason if spf.result in ("temperror", "permerror") else ""
    return f"spf={spf.result}{_comment(why)} {prop}"


def _dkim_part(r: DKIMResult) -> str:
    parts = [f"dkim={r.result}"]
    reason = r.reason
    if r.result != "pass" or r.body_length_limited:
        parts[0] += _comment(reason)
    if r.domain:
        parts.append(f"header.d={_value(r.domain)}")
    if r.identity:
        parts.append(f"header.i={_value(r.identity)}")
    if r.selector:
        parts.append(f"header.s={_value(r.selector)}")
    if r.algorithm:
        parts.append(f"header.a={_value(r.algorithm)}")
    if r.b_prefix:
        parts.append(f"header.b={_value(r.b_prefix)}")
    return " ".join(parts)


def _dmarc_part(d: DMARCResult) -> str:
    comment = ""
    if d.result in ("pass", "fail"):
        comment = f"p={d.policy} dis={d.disposition}"
        if not d.pct_applied:
            comment += " pct-sampled-out"
    elif d.reason:
        comment = d.reason
    out = f"dmarc={d.result}{_comment(comment)}"
    if d.domain:
        out += f" header.from={_value(d.domain)}"
    return out


def format_authentication_results(
    authserv_id: str,
    spf: SPFResult | None,
    dkim_results: list[DKIMResult] | None,
    dmarc: DMARCResult | None,
    arc: ARCResult | None = None,
    iprev: IprevResult | None = None,
) -> str:
    """One Authentication-Results header field, folded, without the trailing CRLF."""
    parts: list[str] = []
    if iprev is not None:
        extra = f" ({iprev.hostname})" if iprev.hostname and iprev.result == "pass" else ""
        parts.append(f"iprev={iprev.result} policy.iprev={_value(iprev.ip)}{extra}")
    if spf is not None:
        parts.append(_spf_part(spf))
    if dkim_results is not None:
        if dkim_results:
            parts.extend(_dkim_part(r) for r in dkim_results)
        else:
            parts.append("dkim=none")
    if dmarc is not None:
        parts.append(_dmarc_part(dmarc))
    if arc is not None:
        arc_part = f"arc={arc.result}"
        if arc.result != "none":
            arc_part += _comment(f"i={arc.instances} {arc.reason}".strip())
        if arc.sealer:
            arc_part += f" header.d={_value(arc.sealer)}"
        parts.append(arc_part)
    serv = _authserv(authserv_id)
    if not parts:
        return f"Authentication-Results: {serv}; none"
    return f"Authentication-Results: {serv};\r\n\t" + ";\r\n\t".join(parts)


@functools.lru_cache(maxsize=64)
def _authserv(authserv_id: str) -> str:
    return re.sub(r"[\s;()\x00-\x1f]", "", authserv_id) or "localhost"


# --------------------------------------------------------------------------------------------
# Stripping


def _strip_comments(text: str) -> str:
    out, depth, esc = [], 0, False
    for ch in text:
        if esc:
            esc = False
            continue
        if ch == "\\":
            esc = True
            continue
        if ch == "(":
            depth += 1
            continue
        if ch == ")" and depth:
            depth -= 1
            continue
        if not depth:
            out.append(ch)
    return "".join(out)


def authserv_id_of(value: str) -> str:
    """The authserv-id of an Authentication-Results value ("" if none)."""
    head = _strip_comments(value).split(";", 1)[0].strip()
    if head.startswith('"'):
        end = head.find('"', 1)
        return head[1:end].lower() if end > 0 else ""
    return head.split()[0].lower() if head.split() else ""


def strip_our_authentication_results(header_block: bytes, authserv_id: str) -> bytes:
    """Drop every Authentication-Results field whose authserv-id is ours (case-insensitive).

    ``header_block`` may be the header section alone or a whole message; the body (after the
    first empty line) is passed through untouched, as are all other fields, byte for byte.
    """
    ours = authserv_id.strip().lower()
    m = re.search(rb"\r?\n(?=\r?\n)", header_block)
    split = m.end() if m else len(header_block)
    head, tail = header_block[:split], header_block[split:]
    lines = head.splitlines(keepends=True)
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    kept: list[bytes] = []
    for f in fields:
        first = f[0]
        name, colon, rest = first.partition(b":")
        if colon and name.strip().lower() == b"authentication-results":
            value = (rest + b"".join(f[1:])).decode("utf-8", "replace")
            if authserv_id_of(value) == ours:
                continue
        kept.extend(f)
    return b"".join(kept) + tail
