"""POP3 over asyncio streams: drives :class:`mailyard.protocol.pop3.POP3Connection`.

One call of :func:`handle_pop3` serves one connection, from the greeting to the
close. It owns exactly what the sans-IO core cannot: credentials checks, the
maildrop lock, reading message blobs, the TLS handshake, timeouts.

* Maildrop = the account's INBOX (DESIGN.md "Access"), locked exclusively for
  the session (RFC 1939 §8); a second session gets ``-ERR [IN-USE]``
  (RFC 2449 §8.1.2). The list of messages is a snapshot taken at login: mail
  delivered during the session shows up in the next one (RFC 1939 §5 numbers
  must not change within a session).
* Sizes in STAT/LIST are ``MessageRef.size``, the stored octets, which are
  exactly what RETR sends before dot-stuffing (stored messages are CRLF).
* Unique ids are ``"{uidvalidity}.{uid}"``: UIDs are never reused and
  uidvalidity never changes while the mailbox exists, so the id is stable across
  sessions and restarts (RFC 1939 §7 UIDL).
* RETR/TOP of a message up to :data:`WHOLE_READ_MAX` octets (nearly all mail)
  read it in one piece through ``BlobStore.reader`` (made at login for the
  maildrop: the segment store then locates blobs in batches, not with one
  SQLite read per RETR) and answer in one write: "+OK", the stuffed body and
  the final dot. Larger ones stream the blob in chunks of that size with ``drain()``
  after each, so a large message never sits in memory. RETR marks the message
  ``\\Seen`` (as Dovecot does), TOP does not.
* Pipelined commands (RFC 2449 §6.6 PIPELINING) are answered together: while
  another complete command waits in the input, a RETR/TOP answer stays in the
  core's output and goes out with the following ones, one write per
  ``FLUSH_AT`` octets. The core counts -ERR replies itself and closes after
  :data:`MAX_ERRORS` of them.
* QUIT in TRANSACTION sets ``\\Deleted`` on the marked messages and expunges
  exactly those UIDs (RFC 1939 §6). A dropped connection or a timeout removes
  nothing. The lock is always released.
* Timeouts: ``limits.preauth_timeout`` while waiting for a command before
  login, 10 minutes after (RFC 1939 §3: the autologout timer "MUST be of at
  least 10 minutes duration"). Waiting for a command is timed by one lazy timer
  per session (``streams.ReadWatchdog``, shared with SMTP), not by an
  ``asyncio.timeout`` per read: a client fetching a maildrop sends a command
  every few tens of microseconds, and arming and cancelling a timer for each
  cost more than the rest of a small RETR's Python work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator

from mailyard.protocol.pop3 import (
    FLUSH,
    FLUSH_AT,
    NEED_DATA,
    PAUSED,
    AuthCredentials,
    AuthNeedSecrets,
    AuthProof,
    ConnectionClosed,
    Pass,
    POP3Connection,
    Quit,
    Retr,
    Stls,
    Top,
)
from mailyard.server.context import ServerContext
from mailyard.server.streams import (
    ReadWatchdog,
    SessionStopping,
    below_high_water,
    upgrade_to_tls,
)
from mailyard.storage.interface import BlobSetReader, StorageError
from mailyard.storage.models import Account, Mailbox, MessageRef

SEEN_BATCH = 256  # RETRs per batched \\Seen write
# RETR/TOP of a message up to this size: one read, one write (larger ones stream in
# chunks of this size). The memory a session holds is the same either way.
WHOLE_READ_MAX = 65536

__all__ = ["TRANSACTION_TIMEOUT", "handle_pop3"]

TRANSACTION_TIMEOUT = 600.0  # RFC 1939 §3: at least 10 minutes
READ_CHUNK = 65536
# Error replies before the session is cut (RFC 5321 §4.3.2 lets SMTP do the same; POP3
# says nothing): a client that is not speaking POP3 (an HTTP request, a port scanner)
# gets a few -ERR lines, not one per line it sends.
MAX_ERRORS = 10
TLS_HANDSHAKE_TIMEOUT = 30.0

log = logging.getLogger("mailyard.pop3")


class _Closed(Exception):
    """The peer went away or a write failed: stop quietly."""


async def handle_pop3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      ctx: ServerContext, *, implicit_tls: bool,
                      transaction_timeout: float = TRANSACTION_TIMEOUT) -> None:
    """Serve one POP3 connection; never raises (errors are logged, the connection closed).

    ``implicit_tls``: the listener already runs TLS (pop3s, RFC 8314 §3.3).
    ``transaction_timeout``: the autologout timer after login (tests shorten it).
    """
    session = _Session(reader, writer, ctx, implicit_tls=implicit_tls,
                       transaction_timeout=transaction_timeout)
    try:
        await session.run()
    except (_Closed, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    except TimeoutError:
        session.try_send(b"-ERR Disconnected for inactivity\r\n")
    except SessionStopping:
        session.try_send(b"-ERR [SYS/TEMP] Server shutting down\r\n")
    except asyncio.CancelledError:
        raise
    except Exception:
        ctx.log.exception("pop3: session from %s failed", session.remote_ip)
        session.try_send(b"-ERR [SYS/TEMP] Internal server error\r\n")
    finally:
        await session.cleanup()


class _Session:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: ServerContext, *, implicit_tls: bool, transaction_timeout: float) -> None:
        self.reader = reader
        self.transaction_timeout = transaction_timeout
        self.writer = writer
        self.ctx = ctx
        peer = writer.get_extra_info("peername")
        self.remote_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.conn = POP3Connection(
            tls_active=implicit_tls,
            tls_available=ctx.tls is not None and not implicit_tls,
            allow_plaintext_auth=ctx.allow_plaintext_auth(self.remote_ip),
            max_errors=MAX_ERRORS,
            mechanisms=ctx.auth.mechanisms(),
        )
        self.account: Account | None = None
        self.locked = False
        self.inbox: Mailbox | None = None
        self.messages: list[MessageRef] = []
        self.bodies: BlobSetReader | None = None  # reads the maildrop's blobs (set at login)
        self.in_body = False  # a multi-line body is being written: no -ERR can follow
        self.seen_pending: list[int] = []  # RETRieved UIDs whose \Seen is not stored yet
        self.seen_write: asyncio.Future[None] | None = None  # the last \Seen write started
        self.loop = asyncio.get_running_loop()
        self.watchdog = ReadWatchdog()  # made in the connection's own task

    # -- I/O helpers ---------------------------------------------------------------------
    @property
    def timeout(self) -> float:
        if self.account is None:
            return self.ctx.config.limits.preauth_timeout
        return self.transaction_timeout

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if not data:
            # Nothing written since the last flush, which left the transport below its
            # high-water mark (or drained it): no backpressure to apply.
            return
        if self.writer.is_closing():
            raise _Closed
        self.writer.write(data)
        if below_high_water(self.writer.transport):
            return  # drain() would return at once: skip arming a timer for it
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()

    async def read(self) -> bytes:
        """The next octets from the peer; TimeoutError after ``timeout`` s of silence,
        SessionStopping when the server stops meanwhile (every POP3 wait is between
        commands: nothing is left half done, and without QUIT no DELE takes effect)."""
        return await self.watchdog.read(self.reader, READ_CHUNK, self.loop.time() + self.timeout,
                                        self.ctx.quiesce)

    def try_send(self, data: bytes) -> None:
        """A last word before closing; after the replies the core still holds."""
        if self.in_body or self.writer.is_closing():
            return
        with contextlib.suppress(Exception):
            self.writer.write(self.conn.data_to_send() + data)

    # -- main loop -------------------------------------------------------------------------
    async def run(self) -> None:
        self.conn.greet(f"{self.ctx.hostname} mailyard POP3 ready")
        while True:
            event = self.conn.next_event()
            if not isinstance(event, Retr | Top):
                # RETR/TOP answers go out with (or after) the message.
                await self.flush()
            if event is NEED_DATA:
                self.conn.receive_data(await self.read())
            elif event is FLUSH:
                continue
            elif event is PAUSED:  # pragma: no cover - every event is answered below
                raise RuntimeError("POP3 core paused with no event to answer")
            elif isinstance(event, ConnectionClosed):
                return
            elif isinstance(event, Pass):
                await self.login(event.user, event.password, authzid="")
            elif isinstance(event, AuthCredentials):
                c = event.credentials
                await self.login(c.authcid, c.password, authzid=c.authzid)
            elif isinstance(event, AuthNeedSecrets):
                await self.need_secrets(event)
            elif isinstance(event, AuthProof):
                p = event.proof
                account = await self.ctx.auth.authenticate_proof(
                    p.authcid, valid=p.valid, remote_ip=self.remote_ip, authzid=p.authzid)
                await self.open_maildrop(account)
            elif isinstance(event, Retr | Top):
                await self.send_message(event)
            elif isinstance(event, Stls):
                await self.start_tls()
            elif isinstance(event, Quit):
                await self.update(event.deleted)

    async def need_secrets(self, event: AuthNeedSecrets) -> None:
        """SCRAM-SHA-256: the user's stored secrets (made-up ones for an unknown user)."""
        r = event.request
        try:
            stored = await self.ctx.auth.scram_secrets(r.authcid, remote_ip=self.remote_ip,
                                                       authzid=r.authzid)
        except StorageError as e:
            self.ctx.log.warning("pop3: cannot read SCRAM secrets: %s", e)
            self.conn.err("Temporary authentication failure", code="SYS/TEMP")
            return
        self.conn.provide_secrets(stored)

    async def login(self, user: str, password: str, *, authzid: str) -> None:
        account = await self.ctx.auth.authenticate(user, password, remote_ip=self.remote_ip,
                                                   authzid=authzid)
        await self.open_maildrop(account)

    async def open_maildrop(self, account: Account | None) -> None:
        """Answer a login: lock and list the maildrop of ``account``, or -ERR."""
        if account is None:
            # RFC 3206 §4 / AUTH-RESP-CODE: a credentials problem.
            self.conn.err("Authentication failed", code="AUTH")
            return
        if not await self.ctx.store.lock_maildrop(account.id):
            # RFC 2449 §8.1.2: another session holds the maildrop.
            self.conn.err("Maildrop is locked by another session", code="IN-USE")
            return
        self.locked = True
        self.account = account
        try:
            inbox = await self.ctx.store.get_mailbox(account.id, "INBOX")
            messages = await self.ctx.store.list_messages(inbox.id) if inbox else []
        except Exception:
            self.ctx.log.exception("pop3: cannot open the maildrop of %s", account.address)
            await self.release()
            self.conn.err("Cannot open the maildrop, try again later", code="SYS/TEMP")
            return
        self.inbox = inbox
        self.messages = messages
        self.bodies = self.ctx.store.blobs.reader([m.blob_id for m in messages])
        uidvalidity = inbox.uidvalidity if inbox else 0
        self.conn.login_ok([(m.size, f"{uidvalidity}.{m.uid}") for m in messages])
        log.info("pop3: %s logged in from %s, %d messages", account.address, self.remote_ip,
                 len(messages))

    async def send_message(self, event: Retr | Top) -> None:
        ref = self.messages[event.msg - 1]
        if ref.size <= WHOLE_READ_MAX and self.bodies is not None:
            # Read before "+OK": a missing blob is still a clean -ERR.
            try:
                data = await self.bodies.read(ref.blob_id)
            except Exception:
                self.ctx.log.exception("pop3: cannot read blob %s", ref.blob_id)
                self.conn.err("Cannot read the message, try again later", code="SYS/TEMP")
                return
            self.conn.ok_multiline(f"{ref.size} octets")
            self.in_body = True
            self.conn.send_body(data)
            self.conn.end_body()
            self.in_body = False
            # Pipelined commands (RFC 2449 §6.6) are answered together, in one write
            # per FLUSH_AT octets; the replies the core answers itself join them.
            if not (self.conn.input_pending and self.conn.output_size < FLUSH_AT):
                await self.flush()
        else:
            if not await self.stream_message(ref):
                return
            self.conn.end_body()
            await self.flush()
            self.in_body = False
        if isinstance(event, Retr) and "\\Seen" not in ref.flags:
            # \Seen is batched: one store write per SEEN_BATCH RETRs and one at the end,
            # not a durable commit per message (a lost \Seen after a crash is harmless).
            self.seen_pending.append(ref.uid)
            if len(self.seen_pending) >= SEEN_BATCH:
                self.start_seen_write()

    async def stream_message(self, ref: MessageRef) -> bool:
        """Answer "+OK" and send a large message chunk by chunk; False after -ERR."""
        chunks: AsyncIterator[bytes] = aiter(
            self.ctx.store.blobs.stream(ref.blob_id, chunk=WHOLE_READ_MAX))
        # Open the blob before "+OK": a missing blob is still a clean -ERR.
        try:
            first: bytes | None = await anext(chunks)
        except StopAsyncIteration:
            first = None
        except Exception:
            self.ctx.log.exception("pop3: cannot read blob %s", ref.blob_id)
            self.conn.err("Cannot read the message, try again later", code="SYS/TEMP")
            return False
        self.conn.ok_multiline(f"{ref.size} octets")
        self.in_body = True
        try:
            if first is not None:
                # Flushed chunk by chunk (backpressure via drain).
                self.conn.send_body(first)
                sent = len(first)
                while not self.conn.body_done and sent < ref.size:
                    await self.flush()
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    self.conn.send_body(chunk)
                    sent += len(chunk)
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
        return True

    def start_seen_write(self) -> None:
        """Store \\Seen for the pending UIDs in the background, after the previous write.

        RETRs do not wait for it: a durable commit (an fsync, slow when the disk is
        busy) every SEEN_BATCH messages stalled the download. ``flush_seen`` (at
        QUIT and at the end of the session) waits for all of them.
        """
        uids, self.seen_pending = self.seen_pending, []
        if not uids or self.inbox is None:
            return
        self.seen_write = asyncio.ensure_future(
            self._store_seen(self.inbox.id, uids, self.seen_write))

    async def _store_seen(self, mailbox_id: int, uids: list[int],
                          previous: asyncio.Future[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # in order; its failure is logged by itself
        try:
            await self.ctx.store.store_flags(mailbox_id, uids, ["\\Seen"], "add")
        except Exception:  # the messages were sent; a flag failure must not end the session
            self.ctx.log.exception("pop3: cannot set \\Seen on %d messages", len(uids))

    async def flush_seen(self) -> None:
        self.start_seen_write()
        if self.seen_write is not None:
            await asyncio.wait([self.seen_write])
            self.seen_write = None

    async def start_tls(self) -> None:
        # The core queued "+OK" and dropped its own buffered input. Write "+OK" and go
        # straight into the handshake: no await in between, so the ClientHello cannot
        # be read as plaintext. Octets the peer pipelined before it saw "+OK" may sit
        # in the StreamReader; they were sent in the clear, so they are dropped
        # (CVE-2011-0411).
        assert self.ctx.tls is not None
        await upgrade_to_tls(self.reader, self.writer, self.ctx.tls, self.conn.data_to_send(),
                             handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        self.conn.tls_started()

    async def update(self, deleted: tuple[int, ...]) -> None:
        """RFC 1939 §6 UPDATE state: remove the marked messages, then say goodbye."""
        if deleted and self.inbox is not None:
            uids = [self.messages[n - 1].uid for n in deleted]
            try:
                await self.ctx.store.store_flags(self.inbox.id, uids, ["\\Deleted"], "add")
                await self.ctx.store.expunge(self.inbox.id, uids)
            except Exception:
                self.ctx.log.exception("pop3: UPDATE failed for %s",
                                       self.account.address if self.account else "?")
                self.conn.err("Some deleted messages not removed", code="SYS/TEMP")
                await self.release()
                return
        await self.release()
        self.conn.ok("Bye")

    # -- teardown --------------------------------------------------------------------------
    async def release(self) -> None:
        await self.flush_seen()
        if self.locked and self.account is not None:
            self.locked = False
            try:
                await self.ctx.store.unlock_maildrop(self.account.id)
            except Exception:
                self.ctx.log.exception("pop3: cannot release the maildrop lock")

    async def cleanup(self) -> None:
        self.watchdog.close()
        try:
            await self.release()
        finally:
            with contextlib.suppress(Exception):
                self.writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.writer.wait_closed()

