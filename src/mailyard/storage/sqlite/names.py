"""Normalisation of the names the store keys on: domains, addresses, mailboxes, flags.

What we do: domains are stored lower-case in A-label form (IDNA); the local
part of an address is lower-cased too. RFC 5321 §2.4 lets a server treat local
parts as case-sensitive, but every deployed server matches them without case
and users expect ``John@`` and ``john@`` to be one mailbox. Lookups normalise
the same way, so callers may pass any case.

Mailbox names: INBOX is case-insensitive (RFC 9051 §5.1) and is always stored
as "INBOX", also as the first component of a hierarchical name ("inbox/x" ->
"INBOX/x"). Other names are kept as given.

Flags: system flags are case-insensitive (RFC 9051 §2.3.2) and stored in their
canonical spelling; keywords are compared without case and kept as first given.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailyard.storage.interface import StorageError

SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted",
                                        "\\Draft", "\\Recent")}
DELIMITER = "/"


def domain(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    if not name:
        raise StorageError("empty domain")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # keep the U-label lower-cased; the caller validated it
    return name


def address(addr: str) -> str:
    """``Local@Domain`` -> ``local@domain``; ``@domain`` (catch-all) keeps its form."""
    addr = addr.strip()
    local, at, dom = addr.rpartition("@")
    if not at:
        raise StorageError(f"not an address: {addr!r}")
    return f"{local.lower()}@{domain(dom)}"


def domain_of(addr: str) -> str:
    return addr.rpartition("@")[2]


def mailbox(name: str) -> str:
    if not name:
        raise StorageError("empty mailbox name")
    head, sep, rest = name.partition(DELIMITER)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def canon_flag(flag: str) -> str:
    return SYSTEM_FLAGS.get(flag.lower(), flag)


def flags_to_text(flags: Iterable[str]) -> str:
    """Stored form: space separated and space padded, so `instr(flags, ' \\Seen ')` works."""
    out: dict[str, str] = {}
    for f in flags:
        f = canon_flag(f.strip())
        if f and f.lower() not in out:
            out[f.lower()] = f
    return " " + " ".join(sorted(out.values())) + " " if out else " "


def text_to_flags(text: str) -> frozenset[str]:
    return frozenset(text.split())


def apply_flags(current: frozenset[str], flags: Iterable[str], mode: str) -> frozenset[str]:
    given = [canon_flag(f) for f in flags if f]
    if mode == "set":
        return text_to_flags(flags_to_text(given))
    have = {f.lower(): f for f in current}
    if mode == "add":
        for f in given:
            have.setdefault(f.lower(), f)
    elif mode == "remove":
        for f in given:
            have.pop(f.lower(), None)
    else:
        raise StorageError(f"bad flag mode {mode!r}")
    return frozenset(have.values())
