"""Canonical forms of addresses and domains, the same for SMTP, IMAP, POP3, AUTH and the CLI.

- Domains: IDNA 2008-ish via Python's ``idna`` codec after NFKC + casefold, stored as the
  lower-case A-label ("bücher.test" -> "xn--bcher-kva.test"); a trailing dot is removed.
- Local parts: NFKC + casefold, so that full-width, compatibility and case variants of one
  name ("Ａlice", "ALICE", "alice") map to one account (RFC 6530 §10.1 leaves local-part
  equivalence to the receiving system; we choose the strictest useful folding).
- Anything with control characters, NUL, CR or LF is refused.
"""

from __future__ import annotations

import functools
import unicodedata


class AddressError(ValueError):
    pass


def _has_controls(s: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F or unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")
               for c in s)


@functools.lru_cache(maxsize=8192)
def canonical_domain(domain: str) -> str:
    d = unicodedata.normalize("NFKC", domain.strip()).casefold().rstrip(".")
    if not d or len(d) > 253 or _has_controls(d) or " " in d:
        raise AddressError(f"invalid domain {domain!r}")
    if d.startswith("[") and d.endswith("]"):
        return d  # address literal, kept as is
    try:
        ascii_d = d.encode("idna").decode("ascii") if not d.isascii() else d
    except UnicodeError:
        raise AddressError(f"invalid domain {domain!r}") from None
    labels = ascii_d.split(".")
    for label in labels:
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            raise AddressError(f"invalid domain {domain!r}")
        if not all(c.isalnum() or c in "-_" for c in label):
            raise AddressError(f"invalid domain {domain!r}")
    return ascii_d.lower()


def canonical_local(local: str) -> str:
    lp = unicodedata.normalize("NFKC", local).casefold()
    if not lp or len(lp.encode("utf-8")) > 64 or _has_controls(lp):
        raise AddressError(f"invalid local part {local!r}")
    return lp


def split_address(address: str) -> tuple[str, str]:
    local, sep, domain = address.rpartition("@")
    if not sep:
        raise AddressError(f"not an address: {address!r}")
    return local, domain


@functools.lru_cache(maxsize=8192)
def canonical_address(address: str) -> str:
    """'Alice@Example.TEST' -> 'alice@example.test'. Raises AddressError."""
    local, domain = split_address(address.strip())
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        local = local[1:-1]
    return f"{canonical_local(local)}@{canonical_domain(domain)}"


def base_address(address: str, separator: str = "+") -> str:
    """Sub-addressing (RFC 5233): 'user+tag@d' -> 'user@d'. Input must be canonical."""
    local, domain = split_address(address)
    if separator in local:
        head = local.split(separator, 1)[0]
        if head:
            return f"{head}@{domain}"
    return address
