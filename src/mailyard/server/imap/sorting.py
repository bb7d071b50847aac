"""SORT and THREAD (RFC 5256, RFC 5957) over the core's algorithms (protocol/imap/sortthread.py).

The messages are chosen with the session's SEARCH (search.run_search); each becomes a
``SortItem`` whose headers come from the parsed message header (only the first 64 KiB
of each message is read when the header fits in it).

``SORT RETURN (...)`` is ESORT (RFC 5267 §3.2): the answer is an ESEARCH response
whose MIN and MAX are the first and last messages *in sort order* and whose ALL keeps
that order (a range only for an ascending run); ``RETURN ()`` means ALL. SAVE
(RFC 5182 §2.4) keeps the matching messages for ``$``, or just MIN/MAX when only those
are asked for. A search on MODSEQ adds the highest mod-sequence of the matches
(RFC 7162 §3.1.5), to the ``* SORT`` line as to the ESEARCH one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mailyard.message.mime import parse_mime
from mailyard.message.parse import HeaderField, get_first
from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import response as r
from mailyard.protocol.imap.sortthread import (
    HeaderSource,
    SortItem,
    format_threads,
    sort_messages,
    thread_messages,
)
from mailyard.server.imap.reply import Reply, bad, ok
from mailyard.server.imap.search import answer_returns, has_modseq, header_bytes, run_search

if TYPE_CHECKING:
    from mailyard.server.imap.session import Session

_HEADER_KEYS = frozenset({"CC", "DATE", "FROM", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})


def _getter(fields: list[HeaderField]) -> Callable[[str], bytes | None]:
    return lambda name: get_first(fields, name)


async def _items(s: Session, key: c.Search | c.Sort | c.Thread, *, headers: bool,
                 modseqs: list[int] | None = None) -> list[SortItem]:
    out = []
    for seq, ref in await run_search(s, key.key):
        getter: HeaderSource = _getter(parse_mime(await header_bytes(s, ref)).fields) if headers else {}
        out.append(SortItem(seq=seq, uid=ref.uid, size=ref.size,
                            internaldate=ref.internaldate, headers=getter))
        if modseqs is not None:
            modseqs.append(ref.modseq)
    return out


def ordered_set(numbers: list[int]) -> str:
    """``numbers`` as a sequence-set that keeps their order (RFC 5267 §3.2 ESORT ALL):
    ``a:b`` only for a run ascending by one, so ``5,3:4,1`` is 5, 3, 4, 1."""
    parts: list[str] = []
    i, n = 0, len(numbers)
    while i < n:
        j = i
        while j + 1 < n and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(parts)


async def cmd_sort(s: Session, cmd: c.Sort) -> Reply:
    need = any(k in _HEADER_KEYS for _, k in cmd.criteria)
    modseq_key = has_modseq(cmd.key)
    if modseq_key:
        s.condstore = True
    modseqs: list[int] = []
    items = await _items(s, cmd, headers=need, modseqs=modseqs)
    try:
        numbers = sort_messages(items, cmd.criteria, uid=cmd.uid)
    except ValueError as e:
        return bad(str(e))
    highest = max(modseqs, default=0) if modseq_key else None
    done = ("UID " if cmd.uid else "") + "SORT completed"
    if cmd.returns is None:
        s.send(r.search(numbers, modseq=highest, kind="SORT"))
        return ok(done)
    uid_of = {m.seq: m.uid for m in items}
    return answer_returns(s, cmd.tag, cmd.returns, uid=cmd.uid, numbers=numbers,
                          uids=numbers if cmd.uid else [uid_of[n] for n in numbers],
                          all_set=ordered_set(numbers), highest=highest, done=done)


async def cmd_thread(s: Session, cmd: c.Thread) -> Reply:
    items = await _items(s, cmd, headers=True)
    try:
        threads = thread_messages(items, cmd.algorithm, uid=cmd.uid)
    except ValueError as e:
        return bad(str(e))
    data = format_threads(threads)
    s.send(b"* THREAD" + (b" " + data.encode("ascii") if data else b"") + b"\r\n")
    return ok(("UID " if cmd.uid else "") + "THREAD completed")
