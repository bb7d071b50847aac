"""APPEND with MULTIAPPEND (RFC 9051 §6.3.12, RFC 3502), UIDPLUS APPENDUID (RFC 4315),
APPENDLIMIT (RFC 7889) and LITERAL+ (RFC 7888).

The parser streams each message literal as chunks; they go straight into a store spool
(``blobs.new_spool()``: a bounded buffer spilling to a temporary file), which is made a
durable blob with ``blobs.commit`` when the literal ends. The messages are added to the
mailbox only when the command line ends, so a MULTIAPPEND whose second message is
refused adds nothing (RFC 3502 §6). Refusals before the data:

* no such mailbox: ``NO [TRYCREATE]`` (RFC 9051 §6.3.12);
* over the account quota (usage + literal size): ``NO [OVERQUOTA]`` (RFC 9208 §4.3);
* over the size limit: the parser answers ``NO [TOOBIG]`` (RFC 7889 §4).

For a synchronising literal, refusing means the client never sends the data; for a
non-synchronising one the parser skips it. With a store that stages blobs (SQLite), the
bytes of a message are written in the same durable batch as its mailbox record; in a
MULTIAPPEND the earlier messages are committed as the next one starts, so that one
spool at most is held. The text index (for SEARCH BODY/TEXT) is
fed from the message when it is at most ``INDEX_LIMIT`` octets.

A message may come as a literal8 (``~{n}``, RFC 3516 §4.4 BINARY) or, once the client
enabled UTF8=ACCEPT, as RFC 6855 §4 ``UTF8 (~{n}...)`` (the parser takes the wrapping):
either way its octets are stored as sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailyard.message.text import index_text
from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import response as r
from mailyard.protocol.imap.sequence import from_numbers
from mailyard.server.imap.reply import Reply, bad, no, ok
from mailyard.storage.interface import QuotaExceeded, Spool, Store
from mailyard.storage.models import BlobRef, TextSource

if TYPE_CHECKING:
    from mailyard.server.imap.session import Session

INDEX_LIMIT = 8 * 1024 * 1024


async def _store_blob(store: Store, spool: Spool, held: list[Spool]) -> BlobRef:
    """A store that can stage (the SQLite backend) only hashes here; the bytes are
    written and fdatasynced in the same batch as the mailbox record (one durable step,
    as at SMTP delivery). The staged spool must stay intact until that append returns:
    it goes to ``held``. Otherwise the blob is committed on its own."""
    stage = getattr(store.blobs, "stage", None)
    if stage is None:
        return await store.blobs.commit(spool)
    blob: BlobRef = await stage(spool)
    held.append(spool)
    return blob


async def _over_quota(s: Session, size: int) -> bool:
    assert s.account is not None
    account = await s.ctx.store.get_account_by_id(s.account.id)
    if account is None or account.quota_bytes is None:
        return False
    return await s.ctx.store.account_usage(account.id) + size > account.quota_bytes


async def append(s: Session, first: c.AppendMessage) -> Reply:
    held: list[Spool] = []  # the spool of a staged message not appended yet (at most one)
    try:
        return await _append(s, first, held)
    finally:
        for spool in held:
            spool.abort()


async def _append(s: Session, first: c.AppendMessage, held: list[Spool]) -> Reply:
    assert s.account is not None
    store = s.ctx.store
    mb = await store.get_mailbox(s.account.id, first.mailbox)
    if mb is None:
        s.parser.refuse_literal()
        return no("No such mailbox", "TRYCREATE")
    pending: list[tuple[BlobRef, tuple[str, ...], float | None, TextSource]] = []
    total = 0
    ev: c.Event = first
    while True:
        if isinstance(ev, c.AppendDone):
            break
        if isinstance(ev, c.ParseError):
            if getattr(ev, "status", "NO" if ev.kind == "toobig" else "BAD") == "NO":
                return no(ev.message, ev.code)
            return bad(ev.message, ev.code)
        if not isinstance(ev, c.AppendMessage):  # pragma: no cover - parser order
            return bad("unexpected APPEND data")
        total += ev.size
        if await _over_quota(s, total):
            s.parser.refuse_literal()
            return no("Quota exceeded", "OVERQUOTA")
        if held:  # MULTIAPPEND: the previous message is made durable on its own
            pending[-1] = (await store.blobs.commit(held.pop()), *pending[-1][1:])
        if ev.synchronizing:
            s.send(r.continuation("Ready for literal data"))
        spool = store.blobs.new_spool()
        try:
            while True:
                chunk = await s.next_event()
                if isinstance(chunk, c.AppendChunk):
                    spool.write(chunk.data)
                    continue
                if isinstance(chunk, c.AppendMessageEnd):
                    break
                spool.abort()  # pragma: no cover - the parser ends literals itself
                return bad("unexpected data in APPEND")
            # The store's indexer extracts the text from the stored message later.
            text = index_text if spool.size <= INDEX_LIMIT else None
            blob = await _store_blob(store, spool, held)
        except BaseException:
            if spool not in held:
                spool.abort()
            raise
        idate = ev.internaldate.timestamp() if ev.internaldate is not None else None
        flags = tuple(f for f in ev.flags if f.lower() != "\\recent")
        pending.append((blob, flags, idate, text))
        ev = await s.next_event()
    uids: list[int] = []
    try:
        for ref, flags, idate, index in pending:
            d = await store.append(mb.id, ref, flags=flags, internaldate=idate, text=index)
            uids.append(d.uid)
    except QuotaExceeded:
        return no("Quota exceeded", "OVERQUOTA")
    return ok("APPEND completed", f"APPENDUID {mb.uidvalidity} {from_numbers(uids)}")
