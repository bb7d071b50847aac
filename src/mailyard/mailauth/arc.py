"""ARC (RFC 8617) verification and sealing on dkimpy, with async DNS prefetch.

As for DKIM, every ARC-Seal / ARC-Message-Signature is parsed first (d=, s=), the key
records are fetched concurrently through our :class:`Resolver`, then dkimpy verifies with a
dict-backed ``dnsfunc``. A key lookup TempError makes the whole result "temperror" (RFC 8617
§5.2 leaves transient failures to the receiver; we must not call a chain broken because our
DNS hiccupped). More than :data:`MAX_ARC_INSTANCES` sets → "fail" (RFC 8617 §4.2.1: i= ≤ 50).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Literal

from mailyard.mailauth.dkim import DKIMTagError, _dkimpy_private_key, parse_tags, split_message
from mailyard.mailauth.resolver import NXDomain, Resolver, TempError

ARCResultCode = Literal["none", "pass", "fail", "temperror"]
MAX_ARC_INSTANCES = 50
_ARC_NAMES = ("arc-seal", "arc-message-signature")


@dataclass(frozen=True)
class ARCResult:
    result: ARCResultCode
    instances: int = 0
    reason: str = ""
    #: d= of the newest ARC-Seal (who vouches for the chain), for Authentication-Results
    sealer: str = ""


NOT_SIGNED = ARCResult("none", reason="message is not ARC signed")


async def _fetch(resolver: Resolver, name: str) -> str | TempError | None:
    try:
        txts = await resolver.txt(name)
    except NXDomain:
        return None
    except TempError as e:
        return e
    return txts[0] if txts else None


async def verify_arc(
    message: bytes, *, resolver: Resolver, fields: list[tuple[str, str]] | None = None
) -> ARCResult:
    """Validate the ARC chain of ``message`` (RFC 8617 §5.2). Never raises.
    ``fields``: ``split_message(message)[0]`` when the caller already has it."""
    if fields is None:
        fields, _ = split_message(message)
    arc = [(n.lower(), v) for n, v in fields if n.lower() in _ARC_NAMES]
    if not arc and not any(n.lower() == "arc-authentication-results" for n, _ in fields):
        return NOT_SIGNED
    import dkim as dkimpy

    names: set[str] = set()
    newest = (0, "")
    for hname, value in arc:
        try:
            tags = parse_tags(value)
        except DKIMTagError as e:
            return ARCResult("fail", reason=f"{hname} syntax: {e}")
        if "s" not in tags or "d" not in tags:
            return ARCResult("fail", reason=f"{hname} lacks s= or d=")
        inst = tags.get("i", "")
        if not inst.isdigit() or not 1 <= int(inst) <= MAX_ARC_INSTANCES:
            return ARCResult("fail", reason=f"{hname} has a bad instance i={inst[:10]!r}")
        if hname == "arc-seal" and int(inst) > newest[0]:
            newest = (int(inst), tags["d"].lower())
        names.add(f"{tags['s']}._domainkey.{tags['d']}".lower().rstrip("."))
    ordered = sorted(names)
    answers = await asyncio.gather(*(_fetch(resolver, n) for n in ordered))
    keys = dict(zip(ordered, answers, strict=True))
    for n, a in keys.items():
        if isinstance(a, TempError):
            return ARCResult("temperror", reason=f"key lookup {n}: {a}")

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        txt = keys.get(key.lower().rstrip("."))
        return txt.encode() if isinstance(txt, str) else None

    try:
        cv, data, reason = dkimpy.arc_verify(message, dnsfunc=dnsfunc)
    except Exception as e:  # hostile input must not escape
        return ARCResult("fail", reason=f"{type(e).__name__}: {e}"[:200])
    count = len(data) if data else newest[0]
    if cv == dkimpy.CV_Pass:
        return ARCResult("pass", count, str(reason), newest[1])
    if cv == dkimpy.CV_None:
        return ARCResult("none", 0, str(reason))
    return ARCResult("fail", count, str(reason)[:200], newest[1])


def arc_seal(
    message: bytes,
    *,
    domain: str,
    selector: str,
    private_pem: str | bytes,
    authserv_id: str,
    auth_results: str,
    timestamp: int | None = None,
) -> bytes:
    """Return the next ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results),
    CRLF-terminated, to prepend to ``message``.

    ``auth_results`` is our Authentication-Results field (with or without the
    "Authentication-Results:" name) for this hop; its authserv-id must be ``authserv_id``.
    Raises ValueError when sealing is impossible (bad key, too many instances, ...).
    """
    import dkim as dkimpy

    value = re.sub(r"^\s*authentication-results\s*:\s*", "", auth_results, flags=re.I)
    value = value.rstrip("\r\n")
    ar_line = b"Authentication-Results: " + value.encode("utf-8") + b"\r\n"
    key = _dkimpy_private_key(private_pem, "rsa-sha256")
    try:
        headers = dkimpy.arc_sign(
            ar_line + message,
            selector.encode(),
            domain.encode(),
            key,
            authserv_id.encode(),
            timestamp=timestamp,
        )
    except Exception as e:  # dkimpy raises a zoo of exception types
        raise ValueError(f"ARC sealing failed: {type(e).__name__}: {e}") from None
    if not headers:
        raise ValueError("ARC sealing produced no headers (no matching Authentication-Results?)")
    return b"".join(bytes(h) for h in headers)
