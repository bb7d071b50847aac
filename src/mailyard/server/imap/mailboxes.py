"""Mailbox management: LIST (RFC 9051 §6.3.9, LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819,
SPECIAL-USE RFC 6154), LSUB, CREATE (with USE), DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE,
NAMESPACE (RFC 2342), STATUS (RFC 9051 §6.3.11, STATUS=SIZE RFC 8438, APPENDLIMIT RFC 7889)
and QUOTA (RFC 9208, STORAGE only).

Patterns: ``*`` matches anything, ``%`` anything but the delimiter "/"; the reference is
prefixed to the pattern (RFC 9051 §6.3.9: "the reference and mailbox name arguments are
interpreted into a canonical form that represents an unambiguous left-to-right
hierarchy"); "INBOX" matches in any case. A parent that does not exist but has children
is listed with ``\\NonExistent`` (extended) or ``\\Noselect`` (basic LIST) when the
pattern matches it, as RFC 5258 §3 and RFC 9051 §6.3.9 ask.

Quota (RFC 9208): one quota root "" per account covering every mailbox, resource
STORAGE in units of 1024 octets (§5.1), from ``account.quota_bytes`` and
``store.account_usage``. SETQUOTA is refused (quotas are set by the administrator).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import response as r
from mailyard.server.imap import objectid
from mailyard.server.imap.reply import Reply, no, ok
from mailyard.storage.models import Mailbox

if TYPE_CHECKING:
    from mailyard.server.imap.session import Session

_USE_OK = frozenset({"\\ARCHIVE", "\\DRAFTS", "\\JUNK", "\\SENT", "\\TRASH"})


def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    full = reference + pattern
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in "/*%"):
        full = "INBOX" + full[5:]
    out = []
    for ch in full:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


async def cmd_list(s: Session, cmd: c.List) -> Reply:
    assert s.account is not None
    if cmd.patterns == ("",):
        # RFC 9051 §6.3.9: the delimiter and the root of the reference
        s.send(b'* LIST (\\Noselect) "/" ""\r\n')
        return ok("LIST completed")
    boxes = await s.ctx.store.list_mailboxes(s.account.id)
    await _list(s, boxes, cmd)
    return ok("LIST completed")


def _matches_selection(mb: Mailbox | None, sel: set[str]) -> bool:
    """RFC 5258 §3.1: a mailbox is selected when it meets every selection option."""
    if "SUBSCRIBED" in sel and (mb is None or not mb.subscribed):
        return False
    return not ("SPECIAL-USE" in sel and (mb is None or not mb.special_use))


async def _list(s: Session, boxes: list[Mailbox], cmd: c.List) -> None:
    sel = set(cmd.selection)
    ret = set(cmd.returns)
    by_name = {b.name: b for b in boxes}
    names = set(by_name)
    implicit = {p for b in boxes for p in _parents(b.name)} - names
    has_children = {p for n in names for p in _parents(n)}
    regexes = [pattern_regex(cmd.reference, p) for p in cmd.patterns]
    show_subscribed = "SUBSCRIBED" in sel or "SUBSCRIBED" in ret
    criteria = sorted(sel & {"SUBSCRIBED", "SPECIAL-USE"})
    # RFC 5258 §3.5 RECURSIVEMATCH: a mailbox that does not meet the selection but
    # has a descendant that does is listed too, with CHILDINFO naming the criteria.
    childinfo: set[str] = set()
    if "RECURSIVEMATCH" in sel and criteria:
        for n in names:
            if _matches_selection(by_name[n], sel):
                childinfo.update(_parents(n))
    for name in sorted(names | implicit, key=lambda n: (n != "INBOX", n)):
        if not any(rx.fullmatch(name) for rx in regexes):
            continue
        mb = by_name.get(name)
        selected = _matches_selection(mb, sel)
        extended: list[tuple[str, object]] = []
        if name in childinfo:
            extended.append(("CHILDINFO", criteria))
        if not selected and not extended:
            continue
        attrs: list[str] = []
        if mb is None:
            attrs.append("\\NonExistent" if cmd.extended else "\\Noselect")
        attrs.append("\\HasChildren" if name in has_children else "\\HasNoChildren")
        if mb is not None and mb.special_use:
            attrs.append(mb.special_use)
        if show_subscribed and mb is not None and mb.subscribed:
            attrs.append("\\Subscribed")
        s.send(r.list_response(name, attributes=attrs, utf8=s.utf8, extended=extended))
        if cmd.status_items is not None and mb is not None:
            s.send(await _status_line(s, mb, cmd.status_items))


async def cmd_lsub(s: Session, cmd: c.Lsub) -> Reply:
    assert s.account is not None
    if cmd.pattern == "":
        s.send(b'* LSUB (\\Noselect) "/" ""\r\n')
        return ok("LSUB completed")
    rx = pattern_regex(cmd.reference, cmd.pattern)
    for mb in sorted(await s.ctx.store.list_mailboxes(s.account.id), key=lambda b: b.name):
        if mb.subscribed and rx.fullmatch(mb.name):
            s.send(r.list_response(mb.name, utf8=s.utf8, kind="LSUB"))
    return ok("LSUB completed")


async def cmd_namespace(s: Session, cmd: c.Namespace) -> Reply:
    s.send(r.namespace())
    return ok("NAMESPACE completed")


async def _status_line(s: Session, mb: Mailbox, items: tuple[str, ...]) -> bytes:
    st = await s.ctx.store.mailbox_status(mb.id)
    values: dict[str, Any] = {
        "MESSAGES": st.messages, "UIDNEXT": st.uidnext, "UIDVALIDITY": st.uidvalidity,
        "UNSEEN": st.unseen, "DELETED": st.deleted, "SIZE": st.size,
        "HIGHESTMODSEQ": st.highestmodseq, "APPENDLIMIT": s.append_limit,
        "MAILBOXID": [r.Atom(objectid.mailbox_id(mb))],  # RFC 8474 §4.2
    }
    if "RECENT" in items:
        values["RECENT"] = await s.recent_count(mb) if not s.rev2 else 0
    return r.status(mb.name, {k: values[k] for k in items if k in values}, utf8=s.utf8)


async def cmd_status(s: Session, cmd: c.Status) -> Reply:
    assert s.account is not None
    mb = await s.ctx.store.get_mailbox(s.account.id, cmd.mailbox)
    if mb is None:
        return no("No such mailbox", "NONEXISTENT")
    if "HIGHESTMODSEQ" in cmd.items:
        s.condstore = True  # RFC 7162 §3.1: STATUS (HIGHESTMODSEQ) enables CONDSTORE
    s.send(await _status_line(s, mb, cmd.items))
    return ok("STATUS completed")


async def cmd_create(s: Session, cmd: c.Create) -> Reply:
    assert s.account is not None
    if cmd.mailbox == "INBOX":
        return no("INBOX always exists", "ALREADYEXISTS")
    use = [u for u in cmd.special_use]
    if len(use) > 1 or any(u.upper() not in _USE_OK for u in use):
        return no("Unsupported special-use attribute", "USEATTR")  # RFC 6154 §3
    special = use[0][0] + use[0][1:].capitalize() if use else None
    store = s.ctx.store
    # RFC 9051 §6.3.4: create the missing superiors too.
    for parent in _parents(cmd.mailbox):
        if await store.get_mailbox(s.account.id, parent) is None:
            await store.create_mailbox(s.account.id, parent)
    mb = await store.create_mailbox(s.account.id, cmd.mailbox, special_use=special)
    return ok("CREATE completed", f"MAILBOXID ({objectid.mailbox_id(mb)})")  # RFC 8474 §4.1


async def cmd_delete(s: Session, cmd: c.Delete) -> Reply:
    assert s.account is not None
    if cmd.mailbox == "INBOX":
        return no("Cannot delete INBOX", "CANNOT")
    if s.view is not None and s.view.mailbox.name == cmd.mailbox:
        return no("Cannot delete the selected mailbox", "INUSE")
    await s.ctx.store.delete_mailbox(s.account.id, cmd.mailbox)
    return ok("DELETE completed")


async def cmd_rename(s: Session, cmd: c.Rename) -> Reply:
    assert s.account is not None
    await s.ctx.store.rename_mailbox(s.account.id, cmd.old, cmd.new)
    return ok("RENAME completed")


async def cmd_subscribe(s: Session, cmd: c.Subscribe) -> Reply:
    assert s.account is not None
    await s.ctx.store.set_subscribed(s.account.id, cmd.mailbox, True)
    return ok("SUBSCRIBE completed")


async def cmd_unsubscribe(s: Session, cmd: c.Unsubscribe) -> Reply:
    assert s.account is not None
    await s.ctx.store.set_subscribed(s.account.id, cmd.mailbox, False)
    return ok("UNSUBSCRIBE completed")


# -- quota ------------------------------------------------------------------------------------
async def _quota(s: Session) -> tuple[int, int] | None:
    """(usage, limit) in KiB (RFC 9208 §5.1 STORAGE units), or None when unlimited."""
    assert s.account is not None
    account = await s.ctx.store.get_account_by_id(s.account.id)
    if account is None or account.quota_bytes is None:
        return None
    usage = await s.ctx.store.account_usage(account.id)
    return (usage + 1023) // 1024, account.quota_bytes // 1024


async def cmd_getquotaroot(s: Session, cmd: c.GetQuotaRoot) -> Reply:
    assert s.account is not None
    if await s.ctx.store.get_mailbox(s.account.id, cmd.mailbox) is None:
        return no("No such mailbox", "NONEXISTENT")
    q = await _quota(s)
    s.send(r.quotaroot(cmd.mailbox, [""] if q else [], utf8=s.utf8))
    if q:
        s.send(r.quota("", [("STORAGE", q[0], q[1])]))
    return ok("GETQUOTAROOT completed")


async def cmd_getquota(s: Session, cmd: c.GetQuota) -> Reply:
    q = await _quota(s)
    if cmd.root != "" or q is None:
        return no("No such quota root", "NONEXISTENT")
    s.send(r.quota("", [("STORAGE", q[0], q[1])]))
    return ok("GETQUOTA completed")


async def cmd_setquota(s: Session, cmd: c.SetQuota) -> Reply:
    return no("Quotas are set by the administrator", "NOPERM")
