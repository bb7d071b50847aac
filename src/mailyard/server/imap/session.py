"""One IMAP connection over asyncio streams: drives the sans-IO parser, owns the I/O.

The command parser (protocol/imap/parser.py) turns bytes into command objects and the
state table (protocol/imap/states.py) says which command is legal where; this module
reads, writes, times out, authenticates, switches to TLS, and hands each command to its
handler (select.py, fetch.py, search.py, store.py, append.py, mailboxes.py, idle.py).
Handlers write untagged data through :meth:`Session.send` and return a
:class:`~mailyard.server.imap.reply.Reply` for the tagged completion.

Change feed (RFC 9051 §7.5.1, §5.2): the session subscribes to its account's changes at
login and applies them to its :class:`MailboxView` at command boundaries (before each
tagged reply) and continuously during IDLE: EXISTS for new mail, FETCH FLAGS for flag
changes, EXPUNGE (or VANISHED after ENABLE QRESYNC, RFC 7162 §3.2.10) for removals.
EXPUNGE is never sent while answering FETCH, STORE or SEARCH (nor SORT, THREAD, COPY)
by sequence number: those removals wait until a command where they are allowed.

Timeouts: ``limits.preauth_timeout`` before login; ``limits.idle_timeout`` (30 min,
RFC 9051 §5.4) after, re-armed by every command and by IDLE. Errors never escape:
unexpected exceptions are logged and the client gets ``* BYE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from mailyard.protocol import sasl
from mailyard.protocol.imap import commands as c
from mailyard.protocol.imap import response as r
from mailyard.protocol.imap import states
from mailyard.protocol.imap.parser import CommandParser
from mailyard.protocol.imap.states import State
from mailyard.server.context import ServerContext
from mailyard.server.imap import recent
from mailyard.server.imap.reply import CommandFailed, Reply, bad, no, ok
from mailyard.server.imap.view import MailboxView
from mailyard.server.streams import SessionStopping, below_high_water, upgrade_to_tls
from mailyard.storage.changes import RESYNC
from mailyard.storage.interface import (
    AlreadyExists,
    ChangeSubscription,
    NotFound,
    QuotaExceeded,
    StorageError,
)
from mailyard.storage.models import Account, Change, FlagUpdate, Mailbox, MessageRef

__all__ = ["Session", "handle_imap"]

log = logging.getLogger("mailyard.imap")

READ_CHUNK = 65536
WRITE_CHUNK = 65536  # collected output handed to the transport in pieces of this size
TLS_HANDSHAKE_TIMEOUT = 30.0
# RFC 4978 §4: raw DEFLATE (RFC 1951), no zlib header; wbits -15 is a 32 KiB window.
DEFLATE_WBITS = -15
DEFLATE_LEVEL = 6
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")

# Commands after which EXPUNGE responses must wait when they use sequence numbers
# (RFC 9051 §7.5.1 names FETCH, STORE and SEARCH; the others also take seqnums).
_NO_EXPUNGE = frozenset({"FETCH", "STORE", "SEARCH", "SORT", "THREAD", "COPY"})

Handler = Callable[["Session", Any], Awaitable[Reply | None]]


MAX_BAD = 10  # BAD replies before "* BYE" (what SMTP and POP3 allow too)

class Closed(Exception):
    """The peer went away, a write failed, or LOGOUT completed: stop quietly."""


async def handle_imap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      ctx: ServerContext, *, implicit_tls: bool) -> None:
    """Serve one IMAP connection; never raises (errors are logged, the connection closed).

    ``implicit_tls``: the listener already runs TLS (imaps, RFC 8314 §3.3).
    """
    session = Session(reader, writer, ctx, implicit_tls=implicit_tls)
    try:
        await session.run()
    except (Closed, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    except TimeoutError:
        session.try_send(r.bye("Autologout; idle for too long"))
    except SessionStopping:
        session.try_send(r.bye("Server shutting down"))
    except asyncio.CancelledError:
        # Server shutdown. The task ends here instead of re-raising: on Python 3.11 the
        # stream server's done-callback logs a cancelled handler task as an error.
        session.try_send(r.bye("Server shutting down"))
    except Exception:
        ctx.log.exception("imap: session from %s failed", session.remote_ip)
        session.try_send(r.bye("Internal server error", "UNAVAILABLE"))
    finally:
        await session.cleanup()


class Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: ServerContext, *, implicit_tls: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.ctx = ctx
        self.bad_replies = 0  # protocol errors so far; MAX_BAD ends the session
        peer = writer.get_extra_info("peername")
        self.remote_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.tls = implicit_tls
        self.parser = CommandParser(max_append=ctx.config.limits.max_message_size)
        self.state = State.NOT_AUTHENTICATED
        self.account: Account | None = None
        self.sub: ChangeSubscription | None = None
        self.view: MailboxView | None = None
        self.enabled: set[str] = set()
        self.condstore = False  # CONDSTORE enabled (explicitly or by a CONDSTORE-enabling command)
        self.saved: list[int] | None = None  # SEARCHRES "$" (RFC 5182), as UIDs
        self.in_literal = False  # a FETCH literal is being streamed: nothing else may be written
        # COMPRESS=DEFLATE (RFC 4978) once active: see send(), flush() and read_raw().
        self.deflate: Any = None  # zlib compressobj for what we send
        self.inflate: Any = None  # zlib decompressobj for what we receive
        self.inflate_full = False  # the last decompress hit READ_CHUNK: more may be pending
        self.out: list[bytes] = []  # sent but not yet handed to the transport (see send())
        self.out_size = 0
        self.task = asyncio.current_task()  # made in the connection's own task
        self.interrupted = False  # the server is stopping (interrupt())

    # -- properties --------------------------------------------------------------------
    @property
    def utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled or "IMAP4REV2" in self.enabled

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    @property
    def timeout(self) -> float:
        limits = self.ctx.config.limits
        return limits.preauth_timeout if self.account is None else limits.idle_timeout

    @property
    def append_limit(self) -> int:
        return self.ctx.config.limits.max_message_size

    def plaintext_ok(self) -> bool:
        return self.tls or self.ctx.allow_plaintext_auth(self.remote_ip)

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "IMAP4rev2"]
        if self.account is None:
            if not self.tls and self.ctx.tls is not None:
                caps.append("STARTTLS")
            if self.plaintext_ok():
                caps += ["AUTH=" + m for m in self.ctx.auth.mechanisms()]
            else:
                caps.append("LOGINDISABLED")
        caps += ["SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT",
                 "UIDPLUS", "MOVE", "CHILDREN", "LIST-EXTENDED", "LIST-STATUS",
                 "SPECIAL-USE", "CREATE-SPECIAL-USE", "ESEARCH", "SEARCHRES", "CONDSTORE",
                 "QRESYNC", "QUOTA", "QUOTA=RES-STORAGE", "STATUS=SIZE",
                 f"APPENDLIMIT={self.append_limit}", "MULTIAPPEND", "UTF8=ACCEPT",
                 "BINARY", "OBJECTID", "PREVIEW", "SAVEDATE", "WITHIN"]
        if self.account is not None and self.deflate is None:
            caps.append("COMPRESS=DEFLATE")  # RFC 4978 §3: only once authenticated
        if _sorting() is not None:
            caps += ["SORT", "SORT=DISPLAY", "ESORT", "THREAD=ORDEREDSUBJECT",
                     "THREAD=REFERENCES"]
        return caps

    # -- output --------------------------------------------------------------------------
    # What handlers send collects in ``self.out`` and goes to the transport in pieces of
    # WRITE_CHUNK or at flush() (handlers call pace() between pieces: backpressure
    # only): a FETCH of 300 envelopes is one or two socket writes
    # instead of thousands of small ones (each transport.write() of a small piece is a
    # send() system call when the transport's buffer is empty). COMPRESS compresses at
    # that point too, so the compressor sees large inputs.
    def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise Closed
        out = self.out
        out.append(data)
        self.out_size += len(data)
        if self.out_size >= WRITE_CHUNK:
            self._push()

    def _push(self) -> None:
        """Hand what send() collected to the transport (compressed once COMPRESS is on)."""
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.out_size = 0
        if self.deflate is not None:
            data = self.deflate.compress(data)
            if not data:
                return
        self.writer.write(data)

    def take_output(self) -> bytes:
        """Remove and return what send() collected (before COMPRESS only: uncompressed)."""
        assert self.deflate is None
        data = b"".join(self.out)
        self.out.clear()
        self.out_size = 0
        return data

    def _sync_flush(self) -> None:
        """Push out what is collected and what the compressor holds (RFC 4978 §4:
        Z_SYNC_FLUSH before waiting)."""
        if self.writer.is_closing():
            return
        self._push()
        if self.deflate is not None:
            self.writer.write(self.deflate.flush(zlib.Z_SYNC_FLUSH))

    async def flush(self) -> None:
        self._sync_flush()
        if below_high_water(self.writer.transport):
            return  # drain() would return at once: skip arming a timer for it
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()

    async def pace(self) -> None:
        """Backpressure between the pieces of one answer, without forcing them out:
        wait only when the transport's buffer is above its high-water mark. What
        send() collected leaves by itself at WRITE_CHUNK, or at the next flush() (before
        the session waits for the client), so a small answer and its tagged reply go
        out in one write instead of one per piece."""
        if not below_high_water(self.writer.transport):
            await self.flush()

    def try_send(self, data: bytes) -> None:
        if self.in_literal or self.writer.is_closing():
            return
        with contextlib.suppress(Exception):
            self.send(data)
            self._sync_flush()

    def tagged(self, tag: str, reply: Reply) -> None:
        self.send(r.tagged(tag, reply.status, reply.text, reply.code))

    # -- input ---------------------------------------------------------------------------
    async def read_raw(self) -> bytes:
        """The next bytes from the client (decompressed once COMPRESS is active);
        b"" at end of stream. Never returns more than READ_CHUNK octets."""
        inflate = self.inflate
        if inflate is None:
            return await self.reader.read(READ_CHUNK)
        while True:
            # Bounded: at most READ_CHUNK octets come out per call; what the
            # decompressor could not yet expand waits in unconsumed_tail (or, when
            # the limit cut a back-reference short, inside zlib: decompress(b"")
            # releases it), so a "zip bomb" costs one chunk of memory at a time
            # (RFC 4978 §6 asks servers to protect themselves).
            if inflate.unconsumed_tail:
                src = inflate.unconsumed_tail
            elif self.inflate_full:
                src = b""
            else:
                src = await self.reader.read(READ_CHUNK)
                if not src:
                    return b""
            try:
                out = inflate.decompress(src, READ_CHUNK)
            except zlib.error:
                self.inflate = None  # only the client's stream is broken, not ours
                self.send(r.bye("Invalid compressed data"))
                await self.flush()
                raise Closed from None
            self.inflate_full = len(out) >= READ_CHUNK
            if inflate.eof:
                raise Closed  # the client ended the deflate stream: nothing may follow
            if out:
                return out

    async def read_more(self) -> None:
        async with asyncio.timeout(self.timeout):
            data = await self.read_raw()
        if not data:
            raise Closed
        self.parser.feed(data)

    async def next_event(self, *, between_commands: bool = False) -> c.Event:
        """The next parsed event. ``between_commands``: the main loop's wait for a new
        command, which a stopping server ends (SessionStopping) unless part of one came."""
        while True:
            ev = self.parser.next()
            if ev is not c.NEED_DATA:
                return ev
            await self.flush()
            if between_commands and self.parser.between_commands:
                with self.stoppable():
                    await self.read_more()
            else:
                await self.read_more()

    @contextlib.contextmanager
    def stoppable(self) -> Iterator[None]:
        """A wait for the client that ``interrupt()`` may end with SessionStopping."""
        quiesce = self.ctx.quiesce
        if quiesce.stopping:
            raise SessionStopping
        quiesce.add(self)
        try:
            yield
        except asyncio.CancelledError:
            if not self.interrupted or self.task is None or self.task.uncancel() > 0:
                raise
            raise SessionStopping from None
        finally:
            quiesce.discard(self)

    def interrupt(self) -> None:
        """The server is stopping: end the wait ``stoppable()`` guards (server/streams.py)."""
        if self.task is not None and not self.interrupted:
            self.interrupted = True
            self.task.cancel()

    # -- main loop -------------------------------------------------------------------------
    async def run(self) -> None:
        self.send(r.untagged("OK", "mailyard ready",
                             "CAPABILITY " + " ".join(self.capabilities())))
        while self.state is not State.LOGOUT:
            ev = await self.next_event(between_commands=True)
            await self.handle_event(ev)
        await self.flush()

    async def handle_event(self, ev: c.Event) -> None:
        from mailyard.server.imap.append import append

        if isinstance(ev, c.NeedContinuation):
            self.send(r.continuation("Ready for literal data"))
        elif isinstance(ev, c.ParseError):
            status = getattr(ev, "status", "NO" if ev.kind == "toobig" else "BAD")
            if ev.tag is None:
                self.send(r.untagged(status, ev.message, ev.code))
            else:
                self.send(r.tagged(ev.tag, status, ev.message, ev.code))
            if ev.fatal or (status == "BAD" and self.count_bad()):
                self.send(r.bye("Too many errors"))
                self.state = State.LOGOUT
        elif isinstance(ev, c.AppendMessage):
            err = states.check("APPEND", self.state)
            if err is not None:
                self.parser.refuse_literal()
                self.send(r.tagged(ev.tag, "BAD", err))
                return
            reply = await self.guard(append(self, ev))
            await self.sync(expunge_ok=True)
            self.tagged(ev.tag, reply)
        elif isinstance(ev, c.Command):
            await self.dispatch(ev)
        # AppendChunk/End/Done, IdleDone, SaslResponse outside their flows cannot occur:
        # the parser only yields them after the events handled by append()/idle/auth.

    def count_bad(self) -> bool:
        """Count a BAD reply; True once a client has earned MAX_BAD of them (cross-protocol
        junk such as an HTTP request, or a broken client looping) and must be cut off."""
        self.bad_replies += 1
        return self.bad_replies >= MAX_BAD

    async def guard(self, work: Awaitable[Reply | None]) -> Reply:
        """Run a handler; turn expected failures into NO replies."""
        try:
            reply = await work
        except CommandFailed as e:
            return e.reply
        except NotFound:
            return no("No such mailbox", "NONEXISTENT")
        except AlreadyExists:
            return no("Mailbox already exists", "ALREADYEXISTS")
        except QuotaExceeded:
            return no("Quota exceeded", "OVERQUOTA")
        except StorageError as e:
            self.ctx.log.warning("imap: storage error: %s", e)
            return no("Cannot do that now", "UNAVAILABLE")
        return reply if reply is not None else ok("done")

    async def dispatch(self, cmd: c.Command) -> None:
        err = states.check(cmd, self.state)
        if handler_for(cmd) is None:
            err = f"{cmd.name} not supported"
        if err is not None:
            self.send(r.tagged(cmd.tag, "BAD", err))
            if self.count_bad():
                self.send(r.bye("Too many errors"))
                self.state = State.LOGOUT
            return
        handler = handler_for(cmd)
        assert handler is not None
        before = self.state
        try:
            reply = await handler(self, cmd)
        except CommandFailed as e:
            reply = e.reply
        except NotFound:
            reply = no("No such mailbox", "NONEXISTENT")
        except AlreadyExists:
            reply = no("Mailbox already exists", "ALREADYEXISTS")
        except QuotaExceeded:
            reply = no("Quota exceeded", "OVERQUOTA")
        except StorageError as e:
            self.ctx.log.warning("imap: storage error in %s: %s", cmd.name, e)
            reply = no("Cannot do that now", "UNAVAILABLE")
        if reply is None:  # the handler already answered (STARTTLS, LOGOUT)
            return
        self.state = states.after(cmd, before, reply.status == "OK")
        if self.state is not State.SELECTED:
            self.view = None
        if self.state is not State.LOGOUT:
            uid = bool(getattr(cmd, "uid", False))
            await self.sync(expunge_ok=uid or cmd.name not in _NO_EXPUNGE)
        self.tagged(cmd.tag, reply)

    # -- authentication ------------------------------------------------------------------
    async def login(self, user: str, password: str, *, authzid: str = "") -> Reply:
        if not self.plaintext_ok():
            return no("Use STARTTLS first", "PRIVACYREQUIRED")
        account = await self.ctx.auth.authenticate(user, password, remote_ip=self.remote_ip,
                                                   authzid=authzid)
        return self.logged_in(account)

    def logged_in(self, account: Account | None) -> Reply:
        """The tagged reply to LOGIN or AUTHENTICATE; the session is the account's now."""
        if account is None:
            return no("Authentication failed", "AUTHENTICATIONFAILED")
        self.account = account
        self.sub = self.ctx.store.subscribe(account.id)
        log.info("imap: %s logged in from %s", account.address, self.remote_ip)
        return ok("Logged in", "CAPABILITY " + " ".join(self.capabilities()))

    # -- change feed -----------------------------------------------------------------------
    async def sync(self, *, expunge_ok: bool, first: Change | None = None) -> None:
        """Apply queued changes to the view and tell the client (see module docstring)."""
        sub = self.sub
        if sub is None:
            return
        changes: list[Change] = [first] if first is not None else []
        while (ch := sub.get_nowait()) is not None:
            changes.append(ch)
        view = self.view
        if view is None:
            self.announce_expunges(expunge_ok)
            return
        resync = False
        appended: set[int] = set()
        flagged: set[int] = set()
        for ch in changes:
            if ch.kind == RESYNC:
                resync = True
            elif ch.mailbox_id != view.id:
                continue
            elif ch.kind == "append":
                appended.update(ch.uids)
            elif ch.kind == "flags":
                # A UID this session was already told about at or past the change's
                # (highest) modseq, typically its own STORE, needs no index read.
                told = view.modseq
                flagged.update(u for u in ch.uids
                               if not ch.modseq or told.get(u, -1) < ch.modseq)
            elif ch.kind == "expunge":
                view.pending_expunge.update(u for u in ch.uids if u in view.modseq)
            elif (ch.kind == "mailbox"
                  and await self.ctx.store.get_mailbox_by_id(view.id) is None):
                self.send(r.bye("The selected mailbox was deleted"))
                self.state = State.LOGOUT
                raise Closed
        store = self.ctx.store
        if resync:
            clear = getattr(sub, "clear_resync", None)
            if clear is not None:
                clear()
            refs = await store.list_messages(view.id)
            present = {m.uid for m in refs}
            view.pending_expunge.update(u for u in view.uids if u not in present)
            new = [m for m in refs if m.uid not in view.modseq]
            self.report_new(new)
            self.report_flags([m for m in refs if m.uid in view.modseq
                               and m.modseq > view.modseq[m.uid]])
        else:
            if appended:
                new = await store.get_messages(view.id, sorted(appended))
                self.report_new([m for m in new if m.uid not in view.modseq])
            flagged -= view.pending_expunge
            if flagged:
                refs = await store.get_messages(view.id, sorted(flagged))
                self.report_flags([m for m in refs if m.uid in view.modseq
                                   and m.modseq > view.modseq[m.uid]])
        self.announce_expunges(expunge_ok)

    def report_new(self, refs: list[MessageRef]) -> None:
        view = self.view
        assert view is not None
        before = len(view.keywords)
        if view.add(refs):
            if len(view.keywords) != before:
                self.send_flags()
            self.send(r.exists(view.exists))
            if not self.rev2:
                was = len(view.recent)
                self.note_recent([m.uid for m in refs])
                if len(view.recent) != was:  # RFC 3501 §7.3.2: when the count changes
                    self.send(b"* %d RECENT\r\n" % len(view.recent))

    # -- \Recent (recent.py) -----------------------------------------------------------
    def note_recent(self, uids: list[int]) -> None:
        """Mark the UIDs no other session has seen as recent in this view."""
        view = self.view
        assert view is not None
        store = self.ctx.store
        if view.readonly:
            view.recent |= recent.peek(store, view.mailbox, uids)
        else:
            view.recent |= recent.claim(store, view.mailbox, uids)

    def flags_of(self, m: MessageRef | FlagUpdate) -> frozenset[str]:
        """The flags to show for a message: its stored flags, plus \\Recent for
        IMAP4rev1 sessions when it is recent in this session."""
        view = self.view
        if view is not None and m.uid in view.recent and not self.rev2:
            return m.flags | {"\\Recent"}
        return m.flags

    async def recent_count(self, mb: Mailbox) -> int:
        view = self.view
        if view is not None and view.id == mb.id and not view.readonly:
            return len(view.recent)  # what this session claimed
        uids = [m.uid for m in await self.ctx.store.list_messages(mb.id)]
        return recent.unclaimed(self.ctx.store, mb, uids)

    def report_flags(self, refs: list[MessageRef]) -> None:
        view = self.view
        assert view is not None
        for m in refs:
            seq = view.seq_of(m.uid)
            if seq is None:
                continue
            if view.note_flags(m.flags):
                self.send_flags()
            view.modseq[m.uid] = m.modseq
            self.send(self.flags_fetch(seq, m.uid, m.flags, m.modseq))

    def flags_fetch(self, seq: int, uid: int, flags: frozenset[str], modseq: int) -> bytes:
        view = self.view
        if view is not None and uid in view.recent and not self.rev2:
            flags = flags | {"\\Recent"}
        items: list[tuple[str, Any]] = [("UID", uid), ("FLAGS", flag_atoms(flags))]
        if self.condstore:
            items.append(("MODSEQ", [modseq]))
        return r.fetch(seq, items)

    def send_flags(self) -> None:
        view = self.view
        assert view is not None
        names = [*SYSTEM_FLAGS, *sorted(view.keywords)]
        self.send(r.flags(names))
        if not view.readonly:
            self.send(r.untagged("OK", "Flags permitted",
                                 "PERMANENTFLAGS (" + " ".join([*names, "\\*"]) + ")"))

    def announce_expunges(self, allowed: bool) -> None:
        view = self.view
        if view is None or not allowed or not view.pending_expunge:
            return
        gone = sorted(view.pending_expunge)
        if self.qresync:
            view.remove(gone)
            self.send(r.vanished(gone))
        else:
            for seq in view.remove(gone):
                self.send(r.expunge(seq))

    # -- teardown --------------------------------------------------------------------------
    async def cleanup(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                self.sub.close()
            self.sub = None
        if not self.in_literal:
            with contextlib.suppress(Exception):
                self._sync_flush()  # e.g. the BYE after a timeout
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.writer.wait_closed()


def take_buffered(reader: asyncio.StreamReader) -> bytes:
    """Remove and return what a StreamReader already holds (bytes sent after COMPRESS).

    Like streams.discard_buffered this reaches into the reader's private buffer:
    asyncio has no public "give me what you have without waiting"."""
    buf = getattr(reader, "_buffer", None)
    if not isinstance(buf, bytearray) or not buf:
        return b""
    data = bytes(buf)
    buf.clear()
    resume = getattr(reader, "_maybe_resume_transport", None)
    if resume is not None:
        resume()  # the reader may have paused reading on a full buffer
    return data


def flag_atoms(flags: frozenset[str] | set[str]) -> list[r.Atom]:
    return [r.Atom(f) for f in sorted(flags)]


# -- small commands -------------------------------------------------------------------------
async def cmd_capability(s: Session, cmd: c.Capability) -> Reply:
    s.send(r.capability(s.capabilities()))
    return ok("CAPABILITY completed")


async def cmd_noop(s: Session, cmd: c.Noop) -> Reply:
    return ok("NOOP completed")


async def cmd_logout(s: Session, cmd: c.Logout) -> Reply | None:
    s.send(r.bye("Logging out"))
    s.send(r.tagged(cmd.tag, "OK", "LOGOUT completed"))
    s.state = State.LOGOUT
    return None


async def cmd_id(s: Session, cmd: c.Id) -> Reply:
    # RFC 2971 §3.3: the server's own identification; we say little on purpose.
    s.send(r.id_response({"name": "mailyard"}))
    return ok("ID completed")


async def cmd_starttls(s: Session, cmd: c.StartTLS) -> Reply | None:
    if s.tls:
        return bad("TLS is already active")
    if s.ctx.tls is None:
        return no("TLS is not available")
    # upgrade_to_tls stops reading *before* the tagged OK goes out: the client's
    # ClientHello may follow the OK at once, and StreamWriter.start_tls awaits drain()
    # before it takes over the socket; a ClientHello read into the StreamReader
    # meanwhile would be lost and both sides would wait for each other. Whatever the
    # client pipelined in plaintext before our OK is dropped (CVE-2011-0411 class,
    # RFC 9051 §6.2.1): here from the parser, there from the StreamReader. Nothing is
    # dropped after the handshake: the client's first command may follow it at once.
    s.send(r.tagged(cmd.tag, "OK", "Begin TLS negotiation now"))
    s.parser.take_buffered()
    await upgrade_to_tls(s.reader, s.writer, s.ctx.tls, s.take_output(),
                         handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
    s.tls = True
    return None


async def cmd_login(s: Session, cmd: c.Login) -> Reply:
    return await s.login(cmd.username, cmd.password)




async def cmd_authenticate(s: Session, cmd: c.Authenticate) -> Reply:
    # PLAIN and LOGIN send the password; SCRAM-SHA-256 does not, but follows the same rule:
    # TLS or loopback only (the capability list shows them all, or LOGINDISABLED).
    name = cmd.mechanism.upper()
    if name not in s.ctx.auth.mechanisms():
        return no("Unsupported authentication mechanism")
    if not s.plaintext_ok():
        return no("Use STARTTLS first", "PRIVACYREQUIRED")
    mech = sasl.server_mechanism(name)
    assert mech is not None
    try:
        step = mech.start(cmd.initial_response)
        while not isinstance(step, sasl.Credentials | sasl.ProofChecked):
            if isinstance(step, sasl.NeedSecrets):
                # SCRAM: the user's stored secrets, made-up ones for an unknown user.
                try:
                    stored = await s.ctx.auth.scram_secrets(step.authcid, authzid=step.authzid,
                                                            remote_ip=s.remote_ip)
                except StorageError as e:
                    s.ctx.log.warning("imap: cannot read SCRAM secrets: %s", e)
                    return no("Temporary authentication failure", "UNAVAILABLE")
                step = mech.secrets(stored)
                continue
            # A challenge; for SCRAM the last one is the server signature (additional data
            # with success), answered with an empty line before the tagged OK.
            s.send(r.continuation_b64(step.data) if step.data else b"+ \r\n")
            s.parser.expect_sasl_response(cmd.tag)
            ev = await s.next_event()
            if isinstance(ev, c.ParseError):
                return bad(ev.message)
            if not isinstance(ev, c.SaslResponse):  # pragma: no cover - parser guarantees
                return bad("expected a SASL response")
            if ev.cancelled:
                return bad("Authentication cancelled")
            step = mech.step(ev.data)
    except sasl.SaslError as e:
        return bad(str(e))
    if isinstance(step, sasl.ProofChecked):
        account = await s.ctx.auth.authenticate_proof(step.authcid, valid=step.valid,
                                                      remote_ip=s.remote_ip, authzid=step.authzid)
        return s.logged_in(account)
    return await s.login(step.authcid, step.password, authzid=step.authzid)


_ENABLE = {"IMAP4REV2", "CONDSTORE", "QRESYNC", "UTF8=ACCEPT"}


async def cmd_enable(s: Session, cmd: c.Enable) -> Reply:
    newly: list[str] = []
    for cap in cmd.capabilities:
        up = cap.upper()
        if up in _ENABLE and up not in s.enabled:
            s.enabled.add(up)
            newly.append("IMAP4rev2" if up == "IMAP4REV2" else up)
            if up == "QRESYNC":  # RFC 7162 §3.2.3: QRESYNC implies CONDSTORE
                s.condstore = True
                s.enabled.add("CONDSTORE")
            if up == "CONDSTORE":
                s.condstore = True
    s.parser.utf8 = s.utf8
    s.send(r.enabled(newly))
    return ok("ENABLE completed")


async def cmd_check(s: Session, cmd: c.Check) -> Reply:
    return ok("CHECK completed")


async def cmd_unselect(s: Session, cmd: c.Unselect) -> Reply:
    s.view = None
    return ok("UNSELECT completed")


async def cmd_close(s: Session, cmd: c.Close) -> Reply:
    view = s.view
    s.view = None
    if view is not None and not view.readonly:
        # RFC 9051 §6.4.1: expunge silently, no EXPUNGE responses.
        await s.ctx.store.expunge(view.id, list(view.uids))
    return ok("CLOSE completed")


async def cmd_compress(s: Session, cmd: c.Compress) -> Reply | None:
    """RFC 4978: after the tagged OK, everything both ways is raw DEFLATE."""
    if cmd.mechanism.upper() != "DEFLATE":
        return bad("Unknown compression mechanism")  # RFC 4978 §3
    if s.deflate is not None:
        return no("Compression is already active", "COMPRESSIONACTIVE")
    s.send(r.tagged(cmd.tag, "OK", "DEFLATE active"))
    await s.flush()
    s.deflate = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, DEFLATE_WBITS)
    s.inflate = zlib.decompressobj(DEFLATE_WBITS)
    # Whatever the client sent after COMPRESS (it may pipeline, RFC 4978 §3) is
    # already compressed: hand it to the decompressor before reading the socket.
    pending = s.parser.take_buffered() + take_buffered(s.reader)
    if pending:
        try:
            out = s.inflate.decompress(pending, READ_CHUNK)
        except zlib.error:
            s.inflate = None
            s.send(r.bye("Invalid compressed data"))
            await s.flush()
            raise Closed from None
        s.inflate_full = len(out) >= READ_CHUNK
        s.parser.feed(out)
    return None


def _sorting() -> Any:
    """The SORT/THREAD module, or None when the core's sortthread module is missing."""
    try:
        from mailyard.server.imap import sorting
    except ImportError:  # pragma: no cover - the core ships sortthread.py
        return None
    return sorting


_TABLE: dict[type, Handler] = {}


def handler_for(cmd: c.Command) -> Handler | None:
    if not _TABLE:
        _TABLE.update(_build_table())
    return _TABLE.get(type(cmd))


def _build_table() -> dict[type, Handler]:
    from mailyard.server.imap import fetch, idle, mailboxes, search, select, store

    table: dict[type, Handler] = {
        c.Capability: cmd_capability, c.Noop: cmd_noop, c.Logout: cmd_logout, c.Id: cmd_id,
        c.StartTLS: cmd_starttls, c.Login: cmd_login, c.Authenticate: cmd_authenticate,
        c.Enable: cmd_enable, c.Check: cmd_check, c.Unselect: cmd_unselect,
        c.Close: cmd_close, c.Compress: cmd_compress,
        c.Select: select.cmd_select,
        c.Create: mailboxes.cmd_create, c.Delete: mailboxes.cmd_delete,
        c.Rename: mailboxes.cmd_rename, c.Subscribe: mailboxes.cmd_subscribe,
        c.Unsubscribe: mailboxes.cmd_unsubscribe, c.List: mailboxes.cmd_list,
        c.Lsub: mailboxes.cmd_lsub, c.Namespace: mailboxes.cmd_namespace,
        c.Status: mailboxes.cmd_status, c.GetQuota: mailboxes.cmd_getquota,
        c.GetQuotaRoot: mailboxes.cmd_getquotaroot, c.SetQuota: mailboxes.cmd_setquota,
        c.Idle: idle.cmd_idle,
        c.Fetch: fetch.cmd_fetch,
        c.Search: search.cmd_search,
        c.Store: store.cmd_store, c.Copy: store.cmd_copy, c.Move: store.cmd_move,
        c.Expunge: store.cmd_expunge,
    }
    sorting = _sorting()
    if sorting is not None:
        table[c.Sort] = sorting.cmd_sort
        table[c.Thread] = sorting.cmd_thread
    return table
