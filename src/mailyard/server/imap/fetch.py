"""FETCH / UID FETCH (RFC 9051 §6.4.5, §7.5.2; CONDSTORE/QRESYNC RFC 7162 §3.1.4, §3.2.6).

Per message, index items (UID, FLAGS, INTERNALDATE, RFC822.SIZE, MODSEQ, EMAILID,
SAVEDATE) come from the MessageRef; message items go through the core's renderer
(protocol/imap/fetch.py), with three shortcuts that keep memory and work small:

* ``BODY[]``, ``BODY.PEEK[]`` and ``RFC822`` without a partial are streamed from the
  blob store in chunks, with ``drain()`` after each chunk (backpressure): a 50 MB
  message never sits in memory;
* ``BODY[]<o.n>`` reads only that range of the blob;
* when every message item only needs the header (ENVELOPE, RFC822.HEADER,
  BODY[HEADER...]), only the first 64 KiB are read and parsed (the whole message when
  its header is longer).

ENVELOPE, BODYSTRUCTURE and BODY are cached per blob with ``store.cache_get/put``
(their serialised form; the cache key says whether UTF-8 quoting was on); a value
computed during a FETCH is cached without waiting for its commit (``cache_put_later``).

Messages expunged by another session but not yet announced to this one are skipped
(RFC 2180 §4.1.2 lets the server omit them); the FETCH still completes OK.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailyard.message.mime import Part, parse_mime
from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import response as r
from mailyard.protocol.imap.fetch import (
    UnknownCTE,
    format_datetime,
    is_message_item,
    message_item,
    sets_seen,
)
from mailyard.protocol.imap.sequence import SequenceSet
from mailyard.server.imap import objectid
from mailyard.server.imap.reply import CommandFailed, Reply, bad, no, ok
from mailyard.storage.models import MessageRef

if TYPE_CHECKING:
    from mailyard.server.imap.session import Session

BATCH = 256  # messages read from the index per round trip
HEADER_PROBE = 65536  # octets read when only the header is needed
THREAD_PARSE = 1 << 20  # parse messages larger than this in a worker thread
FLAG_CHUNK = 4096  # messages per index range scan for UID/FLAGS/MODSEQ-only FETCH
ROW_BATCH = 1024  # messages per index_rows round trip (cached ENVELOPE etc.)
_FLAG_ITEMS = frozenset({"UID", "FLAGS", "MODSEQ"})
_CACHED = frozenset({"ENVELOPE", "BODYSTRUCTURE"})
_HEADER_ONLY = frozenset({"ENVELOPE", "RFC822.HEADER"})


@dataclass(frozen=True, slots=True)
class _Stream:
    """A literal streamed from the blob store."""

    name: str
    blob_id: str
    size: int


def check_sequence(s: Session, seqset: SequenceSet, *, uid: bool) -> None:
    """RFC 9051 §9: a message sequence number beyond the mailbox is an error (BAD)."""
    view = s.view
    assert view is not None
    if uid:
        return
    for a, b in seqset.ranges:
        if max(a, b) > view.exists:
            raise CommandFailed(bad("Invalid message sequence number"))


def _streamable(item: c.FetchItem) -> bool:
    if item.name == "RFC822":
        return True
    sec = item.section
    return (item.name == "BODY" and sec is not None and not sec.part and sec.text is None
            and item.partial is None)


def _whole_partial(item: c.FetchItem) -> bool:
    sec = item.section
    return (item.name == "BODY" and sec is not None and not sec.part and sec.text is None
            and item.partial is not None)


def _header_only(item: c.FetchItem) -> bool:
    if item.name in _HEADER_ONLY:
        return True
    sec = item.section
    return (item.name == "BODY" and sec is not None and not sec.part
            and sec.text is not None and sec.text.startswith("HEADER"))


async def cmd_fetch(s: Session, cmd: c.Fetch) -> Reply:
    view = s.view
    assert view is not None
    check_sequence(s, cmd.sequence, uid=cmd.uid)
    uids = view.select_uids(cmd.sequence, uid=cmd.uid, saved=s.saved)
    items = list(cmd.items)
    names = {i.name for i in items}
    if cmd.changedsince is not None or "MODSEQ" in names:
        s.condstore = True  # RFC 7162 §3.1: these enable CONDSTORE
    if cmd.changedsince is not None and "MODSEQ" not in names:
        items.append(c.FetchItem(name="MODSEQ"))
    if cmd.uid and "UID" not in names:
        items.insert(0, c.FetchItem(name="UID"))
    if cmd.vanished:
        if not s.qresync:
            return bad("VANISHED needs ENABLE QRESYNC")
        if cmd.changedsince is None:
            return bad("VANISHED needs CHANGEDSINCE")
        gone = await s.ctx.store.expunged_since(view.id, cmd.changedsince)
        gone = [u for u in gone if cmd.sequence.contains(u, view.uids[-1] if view.uids else 0)]
        if gone:
            s.send(r.vanished(gone, earlier=True))
    set_seen = sets_seen(items) and not view.readonly
    if {i.name for i in items} <= _FLAG_ITEMS and await _fetch_flags(
            s, uids, [i.name for i in items], cmd.changedsince):
        return ok(("UID " if cmd.uid else "") + "FETCH completed")
    kinds = {k for k in (_cache_kind(i, s.utf8) for i in items) if k is not None}
    simple = all(i.name in _SIMPLE and (i.name != "BODY" or i.section is None)
                 for i in items) and kinds <= _SIMPLE_KINDS
    get_many = s.ctx.store.cache_get_many
    if simple and not set_seen:
        await _fetch_rows(s, uids, items, kinds, cmd.changedsince)
        return ok(("UID " if cmd.uid else "") + "FETCH completed")
    for i in range(0, len(uids), BATCH):
        refs = await s.ctx.store.get_messages(view.id, uids[i : i + BATCH])
        if cmd.changedsince is not None:
            refs = [m for m in refs if m.modseq > cmd.changedsince]
        seen_changed: set[int] = set()
        if set_seen:
            refs, seen_changed = await _mark_seen(s, refs)
        # One cache lookup per kind for the whole batch, not one per message.
        pre: dict[str, dict[str, str]] = {}
        if refs:
            for kind in kinds:
                pre[kind] = await get_many([m.blob_id for m in refs], kind)
        for ref in refs:
            seq = view.seq_of(ref.uid)
            if seq is None:
                continue
            extra_flags = ref.uid in seen_changed and "FLAGS" not in names
            if simple and not extra_flags:
                line = _cached_line(s, ref, seq, items, pre)
                if line is not None:
                    s.send(line)
                    continue
            try:
                parts = await _render(s, ref, items, extra_flags=extra_flags, pre=pre)
            except UnknownCTE:
                return no("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE")
            await _write(s, seq, parts)
        await s.pace()
    return ok(("UID " if cmd.uid else "") + "FETCH completed")


def _flags_text(text: str, recent: bool) -> str:
    """The FLAGS list of an index row's flags text, \\Recent added when it is recent."""
    names = set(text.split())
    if recent:
        names.add("\\Recent")
    return " ".join(sorted(names))


async def _fetch_flags(s: Session, uids: list[int], names: list[str],
                       changedsince: int | None) -> bool:
    """UID/FLAGS/MODSEQ only (what a client's flag resync asks, often for 1:*): one
    range scan of the index per chunk (``Store.flag_rows``), no MessageRef, the lines
    of a chunk written in one piece. False (nothing sent) when the store has no
    ``flag_rows`` or the UIDs are too sparse for a range scan to pay."""
    view = s.view
    assert view is not None
    flag_rows = getattr(s.ctx.store, "flag_rows", None)
    if flag_rows is None or not uids or uids[-1] - uids[0] >= 2 * len(uids):
        return False
    fields = {"UID": "UID {0}", "FLAGS": "FLAGS ({2})", "MODSEQ": "MODSEQ ({1})"}
    line = "* {3} FETCH (" + " ".join(fields[n] for n in names) + ")\r\n"
    recent = view.recent if not s.rev2 else set()
    seq_of = view.seq_of
    for i in range(0, len(uids), FLAG_CHUNK):
        part = uids[i : i + FLAG_CHUNK]
        keep = set(part)
        out: list[str] = []
        for uid, modseq, text in await flag_rows(view.id, part[0], part[-1]):
            if uid not in keep or (changedsince is not None and modseq <= changedsince):
                continue
            seq = seq_of(uid)
            if seq is None:
                continue  # appended since the last announcement: not in this view yet
            if uid in recent:
                text = _flags_text(text, True)
            out.append(line.format(uid, modseq, text, seq))
        if out:
            s.send("".join(out).encode("utf-8"))
            await s.pace()
    return True


async def _fetch_rows(s: Session, uids: list[int], items: Sequence[c.FetchItem],
                      kinds: set[str], changedsince: int | None) -> None:
    """Index fields and cached ENVELOPE/BODYSTRUCTURE/BODY (the common
    ``FETCH 1:* (FLAGS ENVELOPE)``) from plain index rows (``Store.index_rows``): no
    MessageRef per message, the FLAGS text formatted once per distinct flag set, the
    lines of a batch written in one piece. A message whose cached value is missing goes
    through :func:`_render` (which computes and caches it). Gives what the per-message
    path gives."""
    view = s.view
    assert view is not None
    store = s.ctx.store
    recent = view.recent if not s.rev2 else set()
    utf8 = s.utf8
    vuids = view.uids
    nview = len(vuids)
    flag_text: dict[tuple[str, bool], bytes] = {}
    # (kind or None, prefix): what each item needs, decided once for the command
    plan: list[tuple[str, str | None]] = []
    for item in items:
        name = item.name
        kind = None
        if name in ("ENVELOPE", "BODYSTRUCTURE", "BODY"):
            kind = f"imap.{name}" + (".u8" if utf8 else "")
        plan.append((name, kind))
    for i in range(0, len(uids), ROW_BATCH):
        rows = await store.index_rows(view.id, uids[i : i + ROW_BATCH])
        if changedsince is not None:
            rows = [row for row in rows if row[1] > changedsince]
        if not rows:
            continue
        pre: dict[str, dict[str, str]] = {}
        if kinds:
            blob_ids = [row[5] for row in rows]
            for kind in kinds:
                pre[kind] = await store.cache_get_many(blob_ids, kind)
        out: list[bytes] = []
        missing: list[tuple[int, int, int]] = []  # (index in out, seq, uid)
        j = bisect.bisect_left(vuids, rows[0][0])  # rows and view both ascend by UID
        for uid, modseq, text, idate, size, blob_id in rows:
            while j < nview and vuids[j] < uid:
                j += 1
            if j == nview or vuids[j] != uid:
                continue  # appended since the last announcement: not in this view yet
            seq = j + 1
            parts: list[bytes] = []
            for name, kind in plan:
                if kind is not None:
                    got = pre[kind].get(blob_id)
                    if got is None:
                        break
                    parts.append(name.encode("ascii") + b" " + got.encode("latin-1"))
                elif name == "FLAGS":
                    key = (text, uid in recent)
                    flags = flag_text.get(key)
                    if flags is None:
                        flags = b"FLAGS (" + _flags_text(*key).encode("utf-8") + b")"
                        flag_text[key] = flags
                    parts.append(flags)
                elif name == "UID":
                    parts.append(b"UID %d" % uid)
                elif name == "RFC822.SIZE":
                    parts.append(b"RFC822.SIZE %d" % size)
                elif name == "MODSEQ":
                    parts.append(b"MODSEQ (%d)" % modseq)
                else:  # INTERNALDATE
                    parts.append(b"INTERNALDATE " + r.serialize(format_datetime(idate)))
            else:
                out.append(b"* %d FETCH (%b)\r\n" % (seq, b" ".join(parts)))
                continue
            missing.append((len(out), seq, uid))
            out.append(b"")
        if missing:
            refs = {m.uid: m for m in await store.get_messages(view.id,
                                                                [u for _, _, u in missing])}
            for at, seq, uid in missing:
                ref = refs.get(uid)
                if ref is None:
                    continue  # expunged meanwhile (RFC 2180 §4.1.2: may be omitted)
                parts_ = await _render(s, ref, items, extra_flags=False, pre=pre)
                out[at] = b"* %d FETCH (%b)\r\n" % (seq, b" ".join(parts_))  # type: ignore[arg-type]
        s.send(b"".join(out))
        await s.pace()


async def _mark_seen(s: Session, refs: list[MessageRef]
                     ) -> tuple[list[MessageRef], set[int]]:
    """RFC 9051 §6.4.5: BODY[...] (not PEEK) sets \\Seen; report the new FLAGS."""
    view = s.view
    assert view is not None
    unseen = [m.uid for m in refs if "\\Seen" not in m.flags]
    if not unseen:
        return refs, set()
    updates, _ = await s.ctx.store.store_flags(view.id, unseen, ["\\Seen"], "add")
    by_uid = {u.uid: u for u in updates}
    out: list[MessageRef] = []
    for m in refs:
        u = by_uid.get(m.uid)
        if u is None:
            out.append(m)
            continue
        view.modseq[m.uid] = max(view.modseq.get(m.uid, 0), u.modseq)
        out.append(MessageRef(mailbox_id=m.mailbox_id, uid=m.uid, modseq=u.modseq,
                              flags=u.flags, internaldate=m.internaldate,
                              savedate=m.savedate, size=m.size, blob_id=m.blob_id,
                              email_id=m.email_id))
    return out, set(by_uid)


_SIMPLE = frozenset({"UID", "FLAGS", "RFC822.SIZE", "MODSEQ", "INTERNALDATE", "ENVELOPE",
                     "BODYSTRUCTURE", "BODY"})
_SIMPLE_KINDS = frozenset(f"imap.{n}{u}" for n in ("ENVELOPE", "BODYSTRUCTURE", "BODY")
                          for u in ("", ".u8"))


def _cached_line(s: Session, ref: MessageRef, seq: int, items: Sequence[c.FetchItem],
                 pre: dict[str, dict[str, str]]) -> bytes | None:
    """The whole FETCH response line for items that are index fields or cached per
    blob (the common ``FETCH 1:* (FLAGS ENVELOPE)``), without a coroutine per message;
    None when a cached value is missing (then :func:`_render` computes it). Gives what
    :func:`_render` gives."""
    out: list[bytes] = []
    for item in items:
        name = item.name
        if name == "UID":
            out.append(b"UID %d" % ref.uid)
        elif name == "FLAGS":
            out.append(b"FLAGS (" + " ".join(sorted(s.flags_of(ref))).encode("utf-8") + b")")
        elif name == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % ref.size)
        elif name == "MODSEQ":
            out.append(b"MODSEQ (%d)" % ref.modseq)
        elif name == "INTERNALDATE":
            out.append(b"INTERNALDATE " + r.serialize(format_datetime(ref.internaldate)))
        else:
            got = pre.get(f"imap.{name}" + (".u8" if s.utf8 else ""), {}).get(ref.blob_id)
            if got is None:
                return None
            out.append(name.encode("ascii") + b" " + got.encode("latin-1"))
    return b"* %d FETCH (%b)\r\n" % (seq, b" ".join(out))


def _cache_kind(item: c.FetchItem, utf8: bool) -> str | None:
    """The ``blob_cache`` kind an item's value is cached under, or None."""
    name = item.name
    if name == "PREVIEW":
        return "imap.PREVIEW"
    if name in _CACHED or (name == "BODY" and item.section is None):
        return f"imap.{name}" + (".u8" if utf8 else "")
    return None


async def _cached(s: Session, ref: MessageRef, kind: str,
                  pre: dict[str, dict[str, str]] | None) -> str | None:
    if pre is not None and kind in pre:
        return pre[kind].get(ref.blob_id)
    return await s.ctx.store.cache_get(ref.blob_id, kind)


async def _render(s: Session, ref: MessageRef, items: Sequence[c.FetchItem], *,
                  extra_flags: bool, pre: dict[str, dict[str, str]] | None = None
                  ) -> list[bytes | _Stream]:
    """The response items for one message. ``pre``: cache values already looked up
    for this message's batch, by kind (a kind present there is not looked up again)."""
    store = s.ctx.store
    utf8 = s.utf8
    parts: list[bytes | _Stream] = []
    root: Part | None = None
    root_is_header_only = False

    async def get_root(full: bool) -> Part:
        nonlocal root, root_is_header_only
        if root is not None and (not full or not root_is_header_only):
            return root
        if not full and ref.size > HEADER_PROBE:
            head = await store.blobs.read(ref.blob_id, 0, HEADER_PROBE)
            if b"\r\n\r\n" in head or b"\n\n" in head:
                root = parse_mime(head)
                root_is_header_only = True
                return root
        data = await store.blobs.read(ref.blob_id)
        if len(data) > THREAD_PARSE:
            root = await asyncio.to_thread(parse_mime, data)
        else:
            root = parse_mime(data)
        root_is_header_only = False
        return root

    def add(name: str, value: Any) -> None:
        parts.append(name.encode("ascii") + b" " + r.serialize(value, utf8=utf8))

    for item in items:
        name = item.name
        # The common index items are formatted here directly (what r.serialize would
        # give: flags are atoms, written as they are).
        if name == "UID":
            parts.append(b"UID %d" % ref.uid)
        elif name == "FLAGS":
            parts.append(b"FLAGS (" + " ".join(sorted(s.flags_of(ref))).encode("utf-8")
                         + b")")
        elif name == "RFC822.SIZE":
            parts.append(b"RFC822.SIZE %d" % ref.size)
        elif name == "MODSEQ":
            parts.append(b"MODSEQ (%d)" % ref.modseq)
        elif name == "INTERNALDATE":
            add(name, format_datetime(ref.internaldate))
        elif name == "SAVEDATE":
            add(name, format_datetime(ref.savedate))
        elif name == "EMAILID":  # RFC 8474 §5.1
            add(name, [r.Atom(objectid.email_id(ref))])
        elif name == "THREADID":  # RFC 8474 §5.2
            add(name, [r.Atom(await objectid.thread_id_of(store, ref))])
        elif name == "PREVIEW":  # RFC 8970 §3; cached per blob like ENVELOPE
            text = await _cached(s, ref, "imap.PREVIEW", pre)
            if text is None:
                _, text = message_item(item, await get_root(True), utf8=utf8)
                store.cache_put_later(ref.blob_id, "imap.PREVIEW", text)
            add(name, text)
        elif _streamable(item):
            parts.append(_Stream(item.response_name(), ref.blob_id, ref.size))
        elif _whole_partial(item):
            assert item.partial is not None
            off, length = item.partial
            data = b"" if off >= ref.size else await store.blobs.read(ref.blob_id, off, length)
            add(item.response_name(), r.Literal(data))
        elif name in _CACHED or (name == "BODY" and item.section is None):
            kind = f"imap.{name}" + (".u8" if utf8 else "")
            cached = await _cached(s, ref, kind, pre)
            if cached is None:
                root_ = await get_root(name not in _HEADER_ONLY)
                _, value = message_item(item, root_, utf8=utf8)
                raw = r.serialize(value, utf8=utf8)
                store.cache_put_later(ref.blob_id, kind, raw.decode("latin-1"))
            else:
                raw = cached.encode("latin-1")
            parts.append(name.encode("ascii") + b" " + raw)
        elif is_message_item(item):
            root_ = await get_root(not _header_only(item))
            rname, value = message_item(item, root_, utf8=utf8)
            add(rname, value)
        else:  # the grammar only lets known items through
            add(name, None)
    if extra_flags:
        add("FLAGS", [r.Atom(f) for f in sorted(s.flags_of(ref))])
    return parts


async def _write(s: Session, seq: int, parts: list[bytes | _Stream]) -> None:
    if not any(isinstance(p, _Stream) for p in parts):  # one piece: no literal to stream
        s.send(b"* %d FETCH (%b)\r\n" % (seq, b" ".join(parts)))  # type: ignore[arg-type]
        return
    s.send(r.fetch_prefix(seq))
    for i, p in enumerate(parts):
        if i:
            s.send(b" ")
        if isinstance(p, bytes):
            s.send(p)
            continue
        s.send(p.name.encode("ascii") + b" " + r.literal_header(p.size))
        s.in_literal = True
        sent = 0
        async for chunk in s.ctx.store.blobs.stream(p.blob_id):
            chunk = chunk[: p.size - sent]
            s.send(r.no_nul(chunk))  # a plain literal carries no NUL (protocol/imap/response.py)
            sent += len(chunk)
            await s.pace()
            if sent >= p.size:
                break
        if sent < p.size:  # a short blob: keep the literal length honest
            s.send(b" " * (p.size - sent))
        s.in_literal = False
    s.send(b")\r\n")  # the caller flushes (once per batch)
