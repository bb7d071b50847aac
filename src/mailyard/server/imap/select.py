"""SELECT / EXAMINE (RFC 9051 §6.3.2, §6.3.3), with CONDSTORE and QRESYNC (RFC 7162 §3.2.5).

The mailbox row is read before the message list, so the HIGHESTMODSEQ we report is never
newer than the list we built the view from (a client that resyncs from it may fetch a
little twice, never miss anything). Changes committed in between reach the session as
change events and are applied by the normal sync before the tagged OK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import response as r
from mailyard.server.imap import objectid
from mailyard.server.imap.reply import Reply, bad, no, ok
from mailyard.server.imap.view import MailboxView

if TYPE_CHECKING:
    from mailyard.server.imap.session import Session


async def cmd_select(s: Session, cmd: c.Select) -> Reply:
    s.view = None  # RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected
    s.saved = None
    assert s.account is not None
    if cmd.qresync is not None and not s.qresync:
        return bad("QRESYNC parameter without ENABLE QRESYNC")  # RFC 7162 §3.2.5
    store = s.ctx.store
    mb = await store.get_mailbox(s.account.id, cmd.mailbox)
    if mb is None:
        return no("No such mailbox", "NONEXISTENT")
    if cmd.condstore or cmd.qresync is not None:
        s.condstore = True
    index = getattr(store, "mailbox_index", None)
    if index is not None:  # compact: no object per message (interface.MailboxIndex)
        view = MailboxView.from_index(mb, await index(mb.id), readonly=cmd.readonly)
    else:
        view = MailboxView(mb, await store.list_messages(mb.id), readonly=cmd.readonly)
    s.view = view
    s.send_flags()
    if view.readonly:
        s.send(r.untagged("OK", "No permanent flags", "PERMANENTFLAGS ()"))
    s.send(r.exists(view.exists))
    if not s.rev2:
        s.note_recent(view.uids.tolist())  # RFC 3501 §6.3.1 (recent.py)
        s.send(b"* %d RECENT\r\n" % len(view.recent))
        first = view.seq_of(view.first_unseen) if view.first_unseen is not None else None
        if first is not None:
            s.send(r.untagged("OK", "First unseen", f"UNSEEN {first}"))
    s.send(r.untagged("OK", "UIDs valid", f"UIDVALIDITY {mb.uidvalidity}"))
    s.send(r.untagged("OK", "Predicted next UID", f"UIDNEXT {mb.uidnext}"))
    s.send(r.untagged("OK", "Highest", f"HIGHESTMODSEQ {mb.highestmodseq}"))
    s.send(r.untagged("OK", "Ok", f"MAILBOXID ({objectid.mailbox_id(mb)})"))  # RFC 8474 §4.1
    if s.rev2:
        attrs = [mb.special_use] if mb.special_use else []
        s.send(r.list_response(mb.name, attributes=attrs, utf8=s.utf8))
    q = cmd.qresync
    if q is not None and q.uidvalidity == mb.uidvalidity:
        # RFC 7162 §3.2.5.2: VANISHED (EARLIER) for known UIDs expunged since, then
        # FETCH for messages changed since the client's modseq.
        known = q.known_uids
        gone = await store.expunged_since(mb.id, q.modseq)
        if known is not None:
            gone = [u for u in gone if known.contains(u, 0xFFFFFFFF)]
        if gone:
            s.send(r.vanished(gone, earlier=True))
        for m in await store.changed_since(mb.id, q.modseq):
            seq = view.seq_of(m.uid)
            if seq is not None and (known is None or known.contains(m.uid, 0xFFFFFFFF)):
                s.send(s.flags_fetch(seq, m.uid, m.flags, m.modseq))
    code = "READ-ONLY" if view.readonly else "READ-WRITE"
    return ok(f"{'EXAMINE' if view.readonly else 'SELECT'} completed", code)
