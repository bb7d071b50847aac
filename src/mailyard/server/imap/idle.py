"""IDLE (RFC 2177, RFC 9051 §6.3.13): push changes from the store's change feed until DONE.

While idling, the session waits on two things at once: the client's next line and the
account's change subscription. Every change is applied to the view and written at once
(EXISTS, FETCH FLAGS, EXPUNGE/VANISHED are all allowed during IDLE), so a delivery reaches
an idling client within the time of one event-loop turn. The autologout timer
(``limits.idle_timeout``, 30 min, RFC 9051 §5.4) is re-armed by every change and every
byte from the client; clients re-issue IDLE well within it (RFC 2177 §3: every 29 min).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import response as r
from mailyard.server.imap.reply import Reply, bad, ok
from mailyard.storage.models import Change

if TYPE_CHECKING:
    from mailyard.server.imap.session import Session


async def cmd_idle(s: Session, cmd: c.Idle) -> Reply:
    from mailyard.server.imap.session import Closed

    await s.sync(expunge_ok=True)
    s.send(r.continuation("idling"))
    s.parser.expect_idle_done(cmd.tag)
    await s.flush()
    sub = s.sub
    read_task: asyncio.Task[bytes] | None = None
    change_task: asyncio.Task[Change] | None = None
    try:
        while True:
            ev = s.parser.next()
            if isinstance(ev, c.IdleDone):
                return ok("IDLE terminated")
            if isinstance(ev, c.ParseError):
                return bad(ev.message)
            if ev is not c.NEED_DATA:  # pragma: no cover - the parser is in DONE mode
                return bad("expected DONE")
            if read_task is None:
                read_task = asyncio.ensure_future(s.read_raw())
            if change_task is None and sub is not None:
                change_task = asyncio.ensure_future(sub.get())
            waiting = {t for t in (read_task, change_task) if t is not None}
            with s.stoppable():  # a stopping server ends IDLE with * BYE
                done, _ = await asyncio.wait(waiting, timeout=s.timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise TimeoutError
            if change_task is not None and change_task in done:
                change = change_task.result()
                change_task = None
                await s.sync(expunge_ok=True, first=change)
                await s.flush()
            if read_task in done:
                data = read_task.result()
                read_task = None
                if not data:
                    raise Closed
                s.parser.feed(data)
    finally:
        for t in (read_task, change_task):
            if t is not None and not t.done():
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
