"""BODY[section]<partial> and BINARY[section] extraction (RFC 9051 §6.4.5, RFC 3516).

Part numbering (RFC 9051 §6.4.5): a non-multipart message has only part 1
(its body); parts of a multipart are numbered from 1; the parts of a
message/rfc822 part are numbered within the encapsulated message.

:func:`section_bytes` returns the octets, or None when the section does not
exist (the session sends NIL, or an empty string; RFC 9051 leaves it open —
what we do: NIL for a missing part).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from mailyard.message.mime import Part
from mailyard.message.parse import parse_fields


class UnknownCTE(ValueError):
    """BINARY of a part whose Content-Transfer-Encoding we cannot decode
    (RFC 3516 §4.3: NO [UNKNOWN-CTE])."""


def find_part(root: Part, path: Sequence[int]) -> Part | None:
    cur = root
    is_part = False
    for n in path:
        if is_part and cur.message is not None:
            cur = cur.message
        elif is_part and not cur.is_multipart:
            return None
        if cur.is_multipart:
            if not 1 <= n <= len(cur.children):
                return None
            cur = cur.children[n - 1]
        elif n != 1:
            return None
        is_part = True
    return cur


def _header_fields(header: bytes, names: Sequence[str], *, negate: bool) -> bytes:
    """RFC 9051 §6.4.5: the blank line is included in all header fetches,
    except for a message which has no body and no blank line (what others
    do: Dovecot adds it for HEADER.FIELDS but not for HEADER.FIELDS.NOT;
    what we do: the RFC rule for both)."""
    wanted = {n.lower() for n in names}
    out = bytearray()
    for f in parse_fields(header):
        if (f.name.lower() in wanted) != negate:
            raw = f.raw
            out += raw if raw.endswith(b"\n") else raw + b"\r\n"
    if header.endswith(b"\n\r\n") or header.endswith(b"\n\n") or header in (b"\r\n", b"\n"):
        out += b"\r\n"
    return bytes(out)


def section_bytes(root: Part, part: Sequence[int] = (), text: str | None = None,
                  fields: Sequence[str] = ()) -> bytes | None:
    """The octets of ``BODY[part.text (fields)]`` (without partial)."""
    target = find_part(root, part) if part else root
    if target is None:
        return None
    if text is None:
        if not part:
            return target.data[target.start : target.end]
        return target.body
    if text == "MIME":
        if not part:
            return None
        return target.header
    # HEADER / HEADER.FIELDS[.NOT] / TEXT: of the message itself, or of the
    # message/rfc822 part named by ``part``.
    msg = target if not part else target.message
    if msg is None:
        return None
    if text == "HEADER":
        return msg.header
    if text == "TEXT":
        return msg.body
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return _header_fields(msg.header, fields, negate=text.endswith(".NOT"))
    return None


def partial(data: bytes, offset: int, length: int) -> bytes:
    """``<offset.length>``: past the end gives the empty string (RFC 9051 §6.4.5)."""
    return data[offset : offset + length]


_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/=]")


def decode_cte(data: bytes, encoding: bytes | None) -> bytes:
    enc = (encoding or b"7bit").strip().lower()
    if enc in (b"7bit", b"8bit", b"binary"):
        return data
    if enc == b"base64":
        clean = _B64_JUNK.sub(b"", data).rstrip(b"=")
        clean = clean[: len(clean) - (len(clean) % 4 == 1)]  # drop a lone trailing sextet
        try:
            return base64.b64decode(clean + b"=" * (-len(clean) % 4))
        except (binascii.Error, ValueError):
            raise UnknownCTE("corrupt base64")
    if enc == b"quoted-printable":
        return binascii.a2b_qp(data)
    raise UnknownCTE(f"unknown transfer encoding {enc[:40]!r}")


def binary_bytes(root: Part, part: Sequence[int] = ()) -> bytes | None:
    """``BINARY[part]``: the part's body with its transfer encoding removed.

    An empty ``part`` (BINARY[]) and multipart/message parts are returned as
    they are: only leaf bodies carry a transfer encoding (RFC 3516 §4.2).
    """
    if not part:
        return root.data[root.start : root.end]
    target = find_part(root, part)
    if target is None:
        return None
    if target.is_multipart or target.message is not None:
        return target.body
    return decode_cte(target.body, target.header_value("Content-Transfer-Encoding"))


def binary_size(root: Part, part: Sequence[int] = ()) -> int | None:
    data = binary_bytes(root, part)
    return None if data is None else len(data)
