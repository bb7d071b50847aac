"""SORT and THREAD (RFC 5256, RFC 5957) over the core's algorithms (protocol/imap/sortthread.py).

The messages are chosen with the session's SEARCH (search.run_search); each becomes a
``SortItem`` whose headers come from the parsed message header (only the first 64 KiB
of each message is read when the header fits in it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mailyard.message.mime import parse_mime
from mailyard.message.parse import HeaderField, get_first
from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap.sortthread import (
    HeaderSource,
    SortItem,
    format_threads,
    sort_messages,
    thread_messages,
)
from mailyard.server.imap.reply import Reply, bad, ok
from mailyard.server.imap.search import header_bytes, run_search

if TYPE_CHECKING:
    from mailyard.server.imap.session import Session

_HEADER_KEYS = frozenset({"CC", "DATE", "FROM", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})


def _getter(fields: list[HeaderField]) -> Callable[[str], bytes | None]:
    return lambda name: get_first(fields, name)


async def _items(s: Session, key: c.Search | c.Sort | c.Thread, *, headers: bool
                 ) -> list[SortItem]:
    out = []
    for seq, ref in await run_search(s, key.key):
        getter: HeaderSource = _getter(parse_mime(await header_bytes(s, ref)).fields) if headers else {}
        out.append(SortItem(seq=seq, uid=ref.uid, size=ref.size,
                            internaldate=ref.internaldate, headers=getter))
    return out


async def cmd_sort(s: Session, cmd: c.Sort) -> Reply:
    need = any(k in _HEADER_KEYS for _, k in cmd.criteria)
    items = await _items(s, cmd, headers=need)
    try:
        numbers = sort_messages(items, cmd.criteria, uid=cmd.uid)
    except ValueError as e:
        return bad(str(e))
    s.send(b"* SORT" + b"".join(b" %d" % n for n in numbers) + b"\r\n")
    return ok(("UID " if cmd.uid else "") + "SORT completed")


async def cmd_thread(s: Session, cmd: c.Thread) -> Reply:
    items = await _items(s, cmd, headers=True)
    try:
        threads = thread_messages(items, cmd.algorithm, uid=cmd.uid)
    except ValueError as e:
        return bad(str(e))
    data = format_threads(threads)
    s.send(b"* THREAD" + (b" " + data.encode("ascii") if data else b"") + b"\r\n")
    return ok(("UID " if cmd.uid else "") + "THREAD completed")
