"""RFC 5322 header parsing on bytes, and RFC 2047 decoding.

We work on the stored message bytes (CRLF line ends; bare LF tolerated) and
return offsets into them, so octet counts for IMAP (RFC822.SIZE, BODY[]
partials, BODYSTRUCTURE sizes) are exact: nothing is re-encoded.

Bounds: at most ``MAX_FIELDS`` fields are parsed from one header block; the
rest of the block still counts as header (its octets are kept) but is not
split into fields. Work is linear in the header size.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.utils
import re
from dataclasses import dataclass

MAX_FIELDS = 5000


@dataclass(frozen=True, slots=True)
class HeaderField:
    name: str  # as written (ASCII); compare with .lower()
    raw: bytes  # the whole field, folding and line end included
    value: bytes  # after the colon, unfolded, outer whitespace stripped


def utc_date(when: float) -> str:
    """RFC 5322 date-time of ``when`` in UTC, "+0000" (formatdate's "-0000" says the zone
    is unknown, RFC 5322 §3.3)."""
    return email.utils.formatdate(when, localtime=False)[:-5] + "+0000"


def find_body_start(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Offset of the first body octet: just after the empty line ending the
    header block. When there is no empty line the whole range is header."""
    if end is None:
        end = len(data)
    pos = start
    while pos < end:
        nl = data.find(b"\n", pos, end)
        if nl < 0:
            return end
        line = data[pos:nl]
        if line in (b"", b"\r"):
            return nl + 1
        pos = nl + 1
    return end


def parse_fields(data: bytes, start: int = 0, end: int | None = None) -> list[HeaderField]:
    """Split a header block ``data[start:end]`` into fields.

    Lines that are neither a field nor a continuation (no colon) are skipped,
    as most MUAs do; the blank line ending the block is not a field.
    """
    if end is None:
        end = len(data)
    fields: list[HeaderField] = []
    pos = start
    cur_start = -1
    while pos < end and len(fields) < MAX_FIELDS:
        nl = data.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        first = data[pos : pos + 1]
        if first in (b" ", b"\t") and cur_start >= 0:
            pos = line_end
            continue
        if cur_start >= 0:
            _add(fields, data[cur_start:pos])
            cur_start = -1
        line = data[pos:line_end].rstrip(b"\r\n")
        if not line:
            break
        if b":" in line:
            cur_start = pos
        pos = line_end
    if cur_start >= 0 and len(fields) < MAX_FIELDS:
        _add(fields, data[cur_start:pos])
    return fields


def drop_fields(data: bytes, names: frozenset[bytes]) -> bytes | None:
    """``data`` (a message) without its header fields named in ``names`` (lower case),
    folded lines included; every other octet kept. None when there is none to drop.
    Unlike ``parse_fields`` this is not bounded by MAX_FIELDS: a field past it is dropped too.
    """
    probe = data.find(b"\r\n\r\n")  # a cheap look first: it never ends before the header
    head = (data if probe < 0 else data[:probe]).lower()
    if not any(n in head for n in names):
        return None
    end = find_body_start(data)
    head = head[:end]
    out: list[bytes] = []
    pos = 0
    dropping = False
    dropped = False
    while pos < end:
        nl = data.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        if data[pos : pos + 1] not in (b" ", b"\t"):  # a new field (or the blank line)
            name, colon, _ = head[pos:line_end].partition(b":")
            dropping = bool(colon) and name.rstrip(b" \t") in names
            dropped = dropped or dropping
        if not dropping:
            out.append(data[pos:line_end])
        pos = line_end
    if not dropped:
        return None
    out.append(data[end:])
    return b"".join(out)


_FOLD_RE = re.compile(rb"\r?\n(?=[ \t])")


def _add(fields: list[HeaderField], raw: bytes) -> None:
    name, _, value = raw.partition(b":")
    name_s = name.rstrip(b" \t").decode("ascii", "replace")
    fields.append(HeaderField(name_s, raw, _FOLD_RE.sub(b"", value).strip(b" \t\r\n")))


def get_all(fields: list[HeaderField], name: str) -> list[bytes]:
    low = name.lower()
    return [f.value for f in fields if f.name.lower() == low]


def get_first(fields: list[HeaderField], name: str) -> bytes | None:
    low = name.lower()
    for f in fields:
        if f.name.lower() == low:
            return f.value
    return None


# -- RFC 2047 ------------------------------------------------------------------------------
_EW_RE = re.compile(rb"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_WS_RE = re.compile(rb"[ \t\r\n]+")


def _decode_ew(charset: bytes, enc: bytes, text: bytes) -> str | None:
    cs = charset.split(b"*", 1)[0].decode("ascii", "replace")  # RFC 2231 language
    try:
        if enc in (b"B", b"b"):
            raw = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
        else:
            raw = binascii.a2b_qp(text.replace(b"_", b" "))
    except (binascii.Error, ValueError):
        return None
    try:
        codecs.lookup(cs)
        return raw.decode(cs, "replace")
    except (LookupError, ValueError, UnicodeError):  # unknown, NUL-bearing or odd charset names
        return None


def decode_header(value: bytes) -> str:
    """Decode RFC 2047 encoded-words; other 8-bit text is taken as UTF-8
    (RFC 6532). Whitespace between adjacent encoded-words is dropped
    (RFC 2047 §6.2). Never raises."""
    out: list[str] = []
    pos = 0
    last_was_ew = False
    for m in _EW_RE.finditer(value):
        between = value[pos : m.start()]
        decoded = _decode_ew(m.group(1), m.group(2), m.group(3))
        if decoded is None:
            continue  # leave the undecodable word as plain text below
        if not (last_was_ew and _WS_RE.fullmatch(between)):
            out.append(between.decode("utf-8", "replace"))
        out.append(decoded)
        pos = m.end()
        last_was_ew = True
    out.append(value[pos:].decode("utf-8", "replace"))
    return "".join(out)


# -- MIME parameters (Content-Type, Content-Disposition) -------------------------------------
def skip_comment(v: bytes, i: int) -> int:
    """The index after the RFC 5322 §3.2.2 comment opening at ``v[i]`` ("("): nesting
    counted without recursion, quoted-pairs skipped; ``len(v)`` when it never closes."""
    depth = 0
    n = len(v)
    while i < n:
        ch = v[i]
        if ch == 0x5C:
            i += 2
            continue
        if ch == 0x28:
            depth += 1
        elif ch == 0x29:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return n


def _skip_ws_comments(v: bytes, i: int) -> int:
    n = len(v)
    while i < n:
        ch = v[i]
        if ch in b" \t\r\n":
            i += 1
        elif ch == 0x28:
            i = skip_comment(v, i)
        else:
            break
    return i


_TSPECIALS = b'()<>@,;:\\"/[]?= \t'


def _token(v: bytes, i: int) -> tuple[bytes, int]:
    j = i
    n = len(v)
    while j < n and v[j] not in _TSPECIALS and v[j] > 0x20:
        j += 1
    return v[i:j], j


def _quoted(v: bytes, i: int) -> tuple[bytes, int]:
    out = bytearray()
    i += 1
    n = len(v)
    while i < n:
        ch = v[i]
        if ch == 0x5C and i + 1 < n:
            out.append(v[i + 1])
            i += 2
            continue
        if ch == 0x22:
            return bytes(out), i + 1
        out.append(ch)
        i += 1
    return bytes(out), i


def parse_params(v: bytes, i: int) -> list[tuple[str, bytes]]:
    """``; name=value`` pairs from offset ``i``. RFC 2231 continuations
    (``name*0``, ``name*1``) are joined; other RFC 2231 values are kept raw."""
    params: list[tuple[str, bytes]] = []
    n = len(v)
    while len(params) < 100:
        i = _skip_ws_comments(v, i)
        if i >= n:
            break
        if v[i] != 0x3B:  # ";"
            i += 1
            continue
        i = _skip_ws_comments(v, i + 1)
        name, i = _token(v, i)
        i = _skip_ws_comments(v, i)
        if not name or i >= n or v[i] != 0x3D:
            continue
        i = _skip_ws_comments(v, i + 1)
        if i < n and v[i] == 0x22:
            val, i = _quoted(v, i)
        else:
            val, i = _token(v, i)
        params.append((name.decode("ascii", "replace"), val))
    # join RFC 2231 continuations name*0 name*1 ... (unencoded ones only)
    joined: list[tuple[str, bytes]] = []
    conts: dict[str, list[tuple[int, bytes]]] = {}
    for k, val in params:
        base, star, idx = k.partition("*")
        if star and idx.isdigit():
            conts.setdefault(base, []).append((int(idx), val))
        else:
            joined.append((k, val))
    for base, parts in conts.items():
        joined.append((base, b"".join(p for _, p in sorted(parts))))
    return joined


def parse_content_type(value: bytes | None) -> tuple[str, str, list[tuple[str, bytes]]] | None:
    """``(type, subtype, params)`` as written, or None when absent/invalid."""
    if value is None:
        return None
    i = _skip_ws_comments(value, 0)
    typ, i = _token(value, i)
    i = _skip_ws_comments(value, i)
    if not typ or i >= len(value) or value[i] != 0x2F:
        return None
    i = _skip_ws_comments(value, i + 1)
    sub, i = _token(value, i)
    if not sub or not (typ.isascii() and sub.isascii()):
        return None  # 8-bit octets in a type are not a MIME type (RFC 2045 §5.1 token)
    return (typ.decode("ascii"), sub.decode("ascii"), parse_params(value, i))


def parse_disposition(value: bytes | None) -> tuple[str, list[tuple[str, bytes]]] | None:
    if value is None:
        return None
    i = _skip_ws_comments(value, 0)
    typ, i = _token(value, i)
    if not typ or not typ.isascii():
        return None
    return typ.decode("ascii"), parse_params(value, i)
