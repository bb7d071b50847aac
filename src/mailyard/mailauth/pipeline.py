"""The one call the SMTP adapter makes: authenticate a received message, decide what to do.

    verdict = await authenticate_message(msg, ip=..., helo=..., mail_from=..., resolver=r,
                                         authserv_id="mx.example.org")
    # verdict.action: "accept" | "junk" | "reject" | "tempfail"
    # verdict.header: the Authentication-Results field to prepend (no trailing CRLF)
    # verdict.reply_code / verdict.reply_text for reject and tempfail

Decision table (DMARC decides; RFC 7489 §6.6/§6.7):

| DMARC                         | action                                                 |
|-------------------------------|--------------------------------------------------------|
| pass, none, permerror         | accept (permerror: the publisher's record is broken)   |
| temperror                     | tempfail 451 4.7.1 (never a 5xx for a transient error) |
| fail, disposition none        | accept                                                 |
| fail, but SPF or a DKIM check | tempfail 451 4.7.1: the failure may be our DNS's fault |
|   was temperror               |   (only when the policy would junk or reject)          |
| fail, quarantine              | junk                                                   |
| fail, reject                  | reject 550 5.7.1 at end of DATA                        |

Local policy override (RFC 7489 §6.7, RFC 8617 §7.2): when DMARC fails but the ARC chain
passes and its newest sealer is in ``trusted_arc_sealers`` (a mailing list or forwarder we
trust), reject/quarantine becomes accept.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mailyard.mailauth.arc import NOT_SIGNED as ARC_NOT_SIGNED
from mailyard.mailauth.arc import ARCResult, verify_arc
from mailyard.mailauth.authresults import IprevResult, check_iprev, format_authentication_results
from mailyard.mailauth.dkim import DKIMResult, split_message, verify_dkim
from mailyard.mailauth.dmarc import DMARCResult, check_dmarc
from mailyard.mailauth.resolver import Resolver
from mailyard.mailauth.spf import SPFResult, check_spf

Action = Literal["accept", "junk", "reject", "tempfail"]


@dataclass(frozen=True)
class AuthVerdict:
    spf: SPFResult
    dkim: list[DKIMResult]
    dmarc: DMARCResult
    arc: ARCResult
    iprev: IprevResult
    header: str
    action: Action
    reply_code: int = 250
    #: "<enhanced code> <text>" for reject/tempfail, "" otherwise
    reply_text: str = ""


async def authenticate_envelope(
    ip: str, helo: str, mail_from: str, *, resolver: Resolver, receiver: str = ""
) -> SPFResult:
    """SPF at MAIL FROM time (RFC 7208 §2.4); pass the result on to authenticate_message."""
    return await check_spf(ip, mail_from, helo, resolver=resolver, receiver=receiver)


def decide(
    spf: SPFResult,
    dkim: list[DKIMResult],
    dmarc: DMARCResult,
    arc: ARCResult,
    *,
    trusted_arc_sealers: frozenset[str] = frozenset(),
) -> tuple[Action, int, str]:
    """Pure decision function (see the module table)."""
    if dmarc.result == "temperror":
        return "tempfail", 451, "4.7.1 Temporary DNS failure checking DMARC; try again later"
    if dmarc.result != "fail" or dmarc.disposition == "none":
        return "accept", 250, ""
    transient = spf.result == "temperror" or any(r.result == "temperror" for r in dkim)
    if transient and dmarc.domain:
        return "tempfail", 451, "4.7.1 Temporary DNS failure authenticating the message"
    if arc.result == "pass" and arc.sealer and arc.sealer in trusted_arc_sealers:
        return "accept", 250, ""
    if dmarc.disposition == "quarantine":
        return "junk", 250, ""
    if dmarc.domain:
        text = f"5.7.1 Message rejected: DMARC policy of {dmarc.domain} (unauthenticated)"
    else:
        reason = dmarc.reason if "RFC 7489" in dmarc.reason else (
            f"{dmarc.reason} (RFC 7489 section 6.6.1)")
        # Reply text is ASCII (RFC 5321 §4.2): the reason may quote the From header.
        text = "5.7.1 Message rejected: " + reason.encode("ascii", "replace").decode("ascii")
    return "reject", 550, text


async def authenticate_message(
    message: bytes,
    *,
    ip: str,
    helo: str,
    mail_from: str,
    resolver: Resolver,
    authserv_id: str,
    spf_result: SPFResult | None = None,
    iprev_result: IprevResult | None = None,
    trusted_arc_sealers: frozenset[str] = frozenset(),
    now: float | None = None,
    rand: Callable[[], float] = random.random,
) -> AuthVerdict:
    """SPF (unless given), DKIM, ARC and iprev (unless given) concurrently, then DMARC
    and the decision.

    The header block is parsed once and shared. Checks with nothing to look up (no
    DKIM-Signature, no ARC set, SPF given) are not scheduled as tasks: then only iprev
    (usually an answer from the resolver's cache) is awaited. ``iprev_result`` is the
    session's earlier answer for the same client address (it is looked up once per
    connection, as MTAs do with the client's name).
    """
    fields, _ = split_message(message)
    has_dkim = has_arc = False
    from_values: list[str] = []
    for name, value in fields:
        lname = name.lower()
        if lname == "from":
            from_values.append(value)
        elif lname == "dkim-signature":
            has_dkim = True
        elif lname.startswith("arc-"):
            has_arc = True

    if spf_result is None or has_dkim or has_arc:

        async def spf_task() -> SPFResult:
            if spf_result is not None:
                return spf_result
            return await check_spf(ip, mail_from, helo, resolver=resolver, now=now)

        async def iprev_task() -> IprevResult:
            if iprev_result is not None:
                return iprev_result
            return await check_iprev(ip, resolver=resolver)

        spf, dkim, arc, iprev = await asyncio.gather(
            spf_task(),
            verify_dkim(message, resolver=resolver, now=now, fields=fields),
            verify_arc(message, resolver=resolver, fields=fields),
            iprev_task(),
        )
    else:
        spf, dkim, arc = spf_result, [], ARC_NOT_SIGNED
        iprev = iprev_result or await check_iprev(ip, resolver=resolver)
    mf = mail_from.strip().strip("<>")
    mail_from_domain = mf.rpartition("@")[2].lower() if mf else None
    dmarc = await check_dmarc(from_values, spf, mail_from_domain, dkim, resolver=resolver,
                              rand=rand)
    header = format_authentication_results(authserv_id, spf, dkim, dmarc, arc=arc, iprev=iprev)
    action, code, text = decide(spf, dkim, dmarc, arc, trusted_arc_sealers=trusted_arc_sealers)
    return AuthVerdict(spf, dkim, dmarc, arc, iprev, header, action, code, text)
