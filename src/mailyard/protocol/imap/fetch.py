"""FETCH item rendering from message bytes (RFC 9051 §6.4.5, §7.5.2).

The session owns the storage side (flags, UID, MODSEQ, dates come from the
MessageRef); this module turns the message-derived items into
``(response name, value)`` pairs for :func:`response.fetch`:

    if needs_message(cmd.items): data = await blobs.read(ref.blob_id); root = parse_mime(data)
    pairs = [message_item(item, root) for item in cmd.items if is_message_item(item)]

and tells the session which items set ``\\Seen`` (:func:`sets_seen`).

Partial fetches (RFC 9051 §6.4.5): ``BODY[]<0.2048>`` of a 1500-octet message
is answered as ``BODY[]<0>`` with 1500 octets; the origin is always echoed.
A section that does not exist is answered with NIL (what others do: Dovecot
sends an empty string for some, NIL for others).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import Any

from mailyard.message.bodystructure import body, bodystructure
from mailyard.message.envelope import envelope
from mailyard.message.mime import Part
from mailyard.message.sections import (
    UnknownCTE,
    binary_bytes,
    find_part,
    partial,
    section_bytes,
)
from mailyard.message.text import preview
from mailyard.protocol.imap.commands import FetchItem
from mailyard.protocol.imap.response import Atom, Literal, Literal8

__all__ = ["UnknownCTE", "format_datetime", "index_item", "is_message_item", "message_item",
           "needs_message", "sets_seen"]

_MESSAGE_ITEMS = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822", "RFC822.HEADER",
                            "RFC822.TEXT", "BINARY", "BINARY.SIZE", "PREVIEW"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def is_message_item(item: FetchItem) -> bool:
    """True for items computed from the message bytes (not from the index)."""
    return item.name in _MESSAGE_ITEMS


def needs_message(items: Iterable[FetchItem]) -> bool:
    return any(is_message_item(i) for i in items)


def sets_seen(items: Iterable[FetchItem]) -> bool:
    """RFC 9051 §6.4.5: BODY[...] and BINARY[...] (not .PEEK), RFC822 and
    RFC822.TEXT set \\Seen; RFC822.HEADER does not."""
    for i in items:
        if i.name in ("RFC822", "RFC822.TEXT"):
            return True
        if i.name in ("BODY", "BINARY") and i.section is not None and not i.peek:
            return True
    return False


def format_datetime(ts: float, tz: _dt.tzinfo = _dt.UTC) -> str:
    """INTERNALDATE / SAVEDATE text: ``17-Jul-1996 02:44:25 -0700`` (RFC 9051 §9)."""
    d = _dt.datetime.fromtimestamp(ts, tz)
    off = d.utcoffset() or _dt.timedelta(0)
    mins = int(off.total_seconds()) // 60
    sign = "+" if mins >= 0 else "-"
    mins = abs(mins)
    return (f"{d.day:2d}-{_MONTHS[d.month - 1]}-{d.year:04d} "
            f"{d.hour:02d}:{d.minute:02d}:{d.second:02d} {sign}{mins // 60:02d}{mins % 60:02d}")


def _with_partial(item: FetchItem, data: bytes | None) -> tuple[str, Any]:
    name = item.response_name()
    if data is None:
        return name, None
    if item.partial is not None:
        data = partial(data, item.partial[0], item.partial[1])
    return name, data


def message_item(item: FetchItem, root: Part, *, utf8: bool = False) -> tuple[str, Any]:
    """One message-derived FETCH item. Raises :class:`UnknownCTE` for BINARY
    of an undecodable part (reply ``NO [UNKNOWN-CTE]``, RFC 3516 §4.3)."""
    name = item.name
    if name == "ENVELOPE":
        return name, envelope(root.fields)
    if name == "BODYSTRUCTURE":
        return name, bodystructure(root)
    if name == "BODY" and item.section is None:
        return name, body(root)
    if name == "BODY":
        sec = item.section
        assert sec is not None
        rname, data = _with_partial(item, section_bytes(root, sec.part, sec.text, sec.fields))
        return rname, None if data is None else Literal(data)
    if name == "RFC822":
        return name, Literal(section_bytes(root) or b"")
    if name == "RFC822.HEADER":
        return name, Literal(root.header)
    if name == "RFC822.TEXT":
        return name, Literal(root.body)
    if name == "BINARY":
        sec = item.section
        rname, data = _with_partial(item, binary_bytes(root, sec.part if sec else ()))
        if data is None:
            return rname, None
        # RFC 3516 §4.2: literal8 where the content may hold NUL; like Dovecot we use
        # it for every part we decoded (base64, quoted-printable) and plain literals
        # for identity encodings.
        target = find_part(root, sec.part) if sec and sec.part else None
        cte = target.header_value("Content-Transfer-Encoding") if target else None
        decoded = (target is not None and not target.is_multipart and target.message is None
                   and cte is not None
                   and cte.strip().lower() not in (b"7bit", b"8bit", b"binary"))
        return rname, Literal8(data) if decoded or b"\0" in data else Literal(data)
    if name == "BINARY.SIZE":
        sec = item.section
        data = binary_bytes(root, sec.part if sec else ())
        return item.response_name(), None if data is None else len(data)
    if name == "PREVIEW":
        return name, preview(root)
    raise ValueError(f"{name} is not a message item")


def index_item(item: FetchItem, *, uid: int, flags: Iterable[str], internaldate: float,
               size: int, modseq: int = 0, savedate: float | None = None,
               email_id: str = "", thread_id: str = "",
               tz: _dt.tzinfo = _dt.UTC) -> tuple[str, Any]:
    """Items answered from the index row (storage.models.MessageRef), no blob read.

    RFC 9051 §7.5.2 / RFC 7162 §3.1.4.1 (MODSEQ is a parenthesised number) /
    RFC 8474 §5 (EMAILID, THREADID; NIL when threads are not kept) / RFC 8514
    (SAVEDATE, NIL when unknown).
    """
    name = item.name
    if name == "UID":
        return name, uid
    if name == "FLAGS":
        return name, [Atom(f) for f in flags]
    if name == "INTERNALDATE":
        return name, format_datetime(internaldate, tz)
    if name == "RFC822.SIZE":
        return name, size
    if name == "MODSEQ":
        return name, [modseq]
    if name == "SAVEDATE":
        return name, None if savedate is None else format_datetime(savedate, tz)
    if name == "EMAILID":
        return name, [Atom(email_id)] if email_id else None
    if name == "THREADID":
        return name, [Atom(thread_id)] if thread_id else None
    raise ValueError(f"{name} is not an index item")
