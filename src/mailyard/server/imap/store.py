"""STORE, COPY, MOVE, EXPUNGE and UID EXPUNGE (RFC 9051 §6.4.3, §6.4.6-8; RFC 6851 MOVE;
RFC 4315 UIDPLUS COPYUID; RFC 7162 §3.1.3 UNCHANGEDSINCE / MODIFIED).

Removals are not written here: EXPUNGE and MOVE put the removed UIDs in the view's
``pending_expunge`` and the session's sync announces them (EXPUNGE, or VANISHED after
ENABLE QRESYNC) before the tagged OK, exactly as removals made by other sessions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import response as r
from mailyard.protocol.imap.sequence import from_numbers
from mailyard.server.imap.fetch import check_sequence
from mailyard.server.imap.reply import Reply, no, ok

if TYPE_CHECKING:
    from mailyard.server.imap.session import Session


async def cmd_store(s: Session, cmd: c.Store) -> Reply:
    view = s.view
    assert view is not None
    check_sequence(s, cmd.sequence, uid=cmd.uid)
    if view.readonly:
        return no("Mailbox is read-only", "READ-ONLY")
    if cmd.unchangedsince is not None:
        s.condstore = True
    uids = view.select_uids(cmd.sequence, uid=cmd.uid, saved=s.saved)
    flags = [f for f in cmd.flags if f.lower() != "\\recent"]  # RFC 9051 §2.3.2
    updates, failed = await s.ctx.store.store_flags(
        view.id, uids, flags, cmd.mode, unchanged_since=cmd.unchangedsince)
    new_keyword = False
    for u in updates:
        if u.uid in view.modseq:
            view.modseq[u.uid] = u.modseq
        new_keyword |= view.note_flags(u.flags)
    if new_keyword:
        s.send_flags()
    changed = {u.uid for u in updates}
    for u in updates:
        seq = view.seq_of(u.uid)
        if seq is None:
            continue
        items: list[tuple[str, Any]] = []
        if cmd.uid or s.condstore:
            items.append(("UID", u.uid))
        if not cmd.silent:
            items.append(("FLAGS", [r.Atom(f) for f in sorted(s.flags_of(u))]))
        if s.condstore:
            items.append(("MODSEQ", [u.modseq]))  # RFC 7162 §3.1.3: even with .SILENT
        if not cmd.silent or s.condstore:
            s.send(r.fetch(seq, items))
    if not cmd.silent:
        # Messages whose flags already were as asked still get their FLAGS
        # (RFC 9051 §6.4.6: "the server returns the updated flags").
        failed_set = set(failed)
        rest = [u for u in uids if u not in changed and u not in failed_set]
        if rest:
            for m in await s.ctx.store.get_messages(view.id, rest):
                seq = view.seq_of(m.uid)
                if seq is not None:
                    items = [("UID", m.uid)] if cmd.uid or s.condstore else []
                    items.append(("FLAGS", [r.Atom(f) for f in sorted(s.flags_of(m))]))
                    if s.condstore:
                        items.append(("MODSEQ", [m.modseq]))
                    s.send(r.fetch(seq, items))
    if failed:
        if cmd.uid:
            numbers = failed
        else:
            numbers = [q for q in (view.seq_of(u) for u in failed) if q is not None]
        return ok("Some messages were modified", f"MODIFIED {from_numbers(numbers)}")
    return ok(("UID " if cmd.uid else "") + "STORE completed")


async def _target(s: Session, name: str) -> Any:
    assert s.account is not None
    mb = await s.ctx.store.get_mailbox(s.account.id, name)
    if mb is None:
        return None
    return mb


async def cmd_copy(s: Session, cmd: c.Copy) -> Reply:
    return await _copy_or_move(s, cmd.sequence, cmd.mailbox, uid=cmd.uid, move=False)


async def cmd_move(s: Session, cmd: c.Move) -> Reply:
    return await _copy_or_move(s, cmd.sequence, cmd.mailbox, uid=cmd.uid, move=True)


async def _copy_or_move(s: Session, seqset: Any, mailbox: str, *, uid: bool,
                        move: bool) -> Reply:
    view = s.view
    assert view is not None
    check_sequence(s, seqset, uid=uid)
    if move and view.readonly:
        return no("Mailbox is read-only", "READ-ONLY")
    dst = await _target(s, mailbox)
    if dst is None:
        return no("No such mailbox", "TRYCREATE")  # RFC 9051 §6.4.7
    uids = view.select_uids(seqset, uid=uid, saved=s.saved)
    verb = ("UID " if uid else "") + ("MOVE" if move else "COPY")
    if not uids:
        return ok(f"{verb} completed (nothing to do)")
    if move and dst.id == view.id:
        return no("Cannot move a message into its own mailbox", "CANNOT")
    store = s.ctx.store
    pairs = (await store.move(view.id, uids, dst.id) if move
             else await store.copy(view.id, uids, dst.id))
    if not pairs:
        return ok(f"{verb} completed (nothing to do)")
    code = (f"COPYUID {dst.uidvalidity} {from_numbers(p[0] for p in pairs)} "
            f"{from_numbers(p[1] for p in pairs)}")
    if move:
        # RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGE responses.
        s.send(r.untagged("OK", "Moved", code))
        view.pending_expunge.update(p[0] for p in pairs if p[0] in view.modseq)
        return ok(f"{verb} completed")
    return ok(f"{verb} completed", code)


async def cmd_expunge(s: Session, cmd: c.Expunge) -> Reply:
    view = s.view
    assert view is not None
    if view.readonly:
        return no("Mailbox is read-only", "READ-ONLY")
    if cmd.uid and cmd.sequence is not None:
        uids = view.select_uids(cmd.sequence, uid=True, saved=s.saved)
    else:
        uids = list(view.uids)
    gone = await s.ctx.store.expunge(view.id, uids) if uids else []
    view.pending_expunge.update(u for u in gone if u in view.modseq)
    return ok(("UID " if cmd.uid else "") + "EXPUNGE completed")
