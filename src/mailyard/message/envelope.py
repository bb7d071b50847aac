"""IMAP ENVELOPE (RFC 9051 §7.5.2) from a header block.

The result is a plain nested list ready for ``protocol.imap.response.serialize``:
``[date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to, message-id]``
with ``bytes`` strings exactly as in the header (unfolded, not RFC 2047
decoded: RFC 9051 says the fields are the header values) and ``None`` for NIL.

Addresses are ``[name, adl, mailbox, host]``. A group is written as
``[None, None, b"group name", None]`` ... ``[None, None, None, None]``
(RFC 9051 §7.5.2). An address without "@" gets an empty host (we do not
invent a domain; what others do: Dovecot writes MISSING_DOMAIN).
Sender and Reply-To default to From when absent or empty.
"""

from __future__ import annotations

from typing import Any

from mailyard.message.parse import HeaderField, get_first, skip_comment
from mailyard.protocol.imap.response import Adjacent

MAX_ADDRESSES = 1000

Address = list[bytes | None]


def _tokens(v: bytes) -> list[tuple[str, bytes]]:
    """Lex an address list: ('q', quoted), ('a', atom/dot-atom run), ('<', angle
    content), or a special (',', ';', ':')."""
    out: list[tuple[str, bytes]] = []
    i = 0
    n = len(v)
    while i < n and len(out) < 20 * MAX_ADDRESSES:
        ch = v[i]
        if ch in b" \t\r\n":
            i += 1
        elif ch == 0x28:
            i = skip_comment(v, i)
        elif ch == 0x22:
            buf = bytearray()
            i += 1
            while i < n and v[i] != 0x22:
                if v[i] == 0x5C and i + 1 < n:
                    i += 1
                buf.append(v[i])
                i += 1
            i += 1
            out.append(("q", bytes(buf)))
        elif ch == 0x3C:  # "<"
            j = i + 1
            buf = bytearray()
            while j < n and v[j] != 0x3E:
                if v[j] == 0x22:  # quoted local part inside <>
                    k = v.find(b'"', j + 1)
                    k = n - 1 if k < 0 else k
                    buf += v[j : k + 1]
                    j = k + 1
                    continue
                if v[j] not in b" \t\r\n":
                    buf.append(v[j])
                j += 1
            out.append(("<", bytes(buf)))
            i = j + 1
        elif ch in b",;:":
            out.append((chr(ch), b""))
            i += 1
        else:
            j = i
            while j < n and v[j] not in b' \t\r\n(",;:<':
                j += 1
            out.append(("a", v[i:j]))
            i = j
    return out


def _split_addr(spec: bytes) -> tuple[bytes | None, bytes, bytes]:
    """'@route:local@host' -> (adl, mailbox, host)."""
    adl = None
    if spec.startswith(b"@") and b":" in spec:
        adl, _, spec = spec.partition(b":")
    local, at, host = spec.rpartition(b"@")
    if not at:
        return adl, spec, b""
    if local.startswith(b'"') and local.endswith(b'"') and len(local) >= 2:
        local = local[1:-1]
    return adl, local, host


def address_list(value: bytes | None) -> Adjacent | None:
    """The ENVELOPE form: addresses juxtaposed inside one list (RFC 9051 §9)."""
    addrs = parse_address_list(value)
    return None if addrs is None else Adjacent(addrs)


def parse_address_list(value: bytes | None) -> list[Address] | None:
    if value is None:
        return None
    toks = _tokens(value)
    out: list[Address] = []
    words: list[tuple[str, bytes]] = []
    in_group = False

    def flush_words() -> None:
        if not words:
            return
        spec = b"".join(w for _, w in words)
        words.clear()
        if spec:
            adl, mbox, host = _split_addr(spec)
            out.append([None, adl, mbox, host])

    for kind, val in toks:
        if len(out) >= MAX_ADDRESSES:
            break
        if kind == ":" and not in_group:
            name = b" ".join(w for _, w in words)
            words.clear()
            out.append([None, None, name, None])
            in_group = True
        elif kind == "<":
            display = b" ".join(w for _, w in words) if words else None
            words.clear()
            adl, mbox, host = _split_addr(val)
            out.append([display, adl, mbox, host])
        elif kind == ",":
            flush_words()
        elif kind == ";":
            flush_words()
            if in_group:
                out.append([None, None, None, None])
                in_group = False
        elif kind == ":":
            words.append(("a", b":"))
        else:
            words.append((kind, val))
    flush_words()
    if in_group:
        out.append([None, None, None, None])
    return out or None


def envelope(fields: list[HeaderField]) -> list[Any]:
    def h(name: str) -> bytes | None:
        v = get_first(fields, name)
        return v if v else None

    def al(name: str) -> list[Any] | None:
        a = address_list(h(name))
        return None if a is None else [a]

    frm = al("From")
    sender = al("Sender") or frm
    reply_to = al("Reply-To") or frm
    return [h("Date"), h("Subject"), frm, sender, reply_to, al("To"), al("Cc"), al("Bcc"),
            h("In-Reply-To"), h("Message-ID")]
