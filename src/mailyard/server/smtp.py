"""The asyncio adapter for the sans-IO SMTP core: MX (port 25) and submission (587/465).

The core (``protocol.smtp.server``) parses, keeps the state table and answers
everything that needs no outside knowledge. This module answers the events
that do — who may send, who may receive, and what happens to a message once its
last octet arrived — and moves bytes between the socket and the core.

Decisions (each cites where it is decided):
- MX mode accepts RCPT only for local domains; unknown users get 550 5.1.1 and
  everything else 554 5.7.1 (never an open relay; RFC 5321 §3.6.2, §7.1).
- Submission requires AUTH (RFC 6409 §4.3) and the sender must be the user's own
  address, a sub-address of it, or an alias that reaches it (553 5.7.1).
- No 250 until the blob and its index record are durable (RFC 5321 §6.1): the
  blob store fsyncs file and directory, the store commits with synchronous=FULL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shutil
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from mailyard.ids import token_hex
from mailyard.policy.addresses import AddressError, base_address, canonical_address, split_address
from mailyard.policy.recipients import Verdict
from mailyard.protocol.smtp import server as core
from mailyard.protocol.smtp.replies import Reply
from mailyard.server.context import ServerContext
from mailyard.server.delivery import Submission, accept_message, auth_pipeline
from mailyard.server.streams import ReadWatchdog, SessionStopping, upgrade_to_tls
from mailyard.storage.interface import InsufficientStorage, Spool, StorageError
from mailyard.storage.models import Account

READ_CHUNK = 64 * 1024
MIN_DATA_RATE = 1024  # octets per second a DATA sender must sustain beyond data_timeout
SPF_REUSE_SECONDS = 30.0  # an SPF verdict serves the same (HELO, sender) on a connection this long
DISK_MARGIN = 1024 * 1024 * 1024  # free space above min_free_bytes that is re-read once a second
_disk_ok_until: dict[Any, float] = {}  # data_dir -> loop time until which it has room


def R(code: int, enhanced: str | None, text: str) -> Reply:
    return Reply.make(code, text, enhanced)


# The replies of the common path, built once (a Reply renders its wire form once).
_SENDER_OK = R(250, "2.1.0", "Sender OK")
_RECIPIENT_OK = R(250, "2.1.5", "Recipient OK")


# Local-part characters that route mail onward in old conventions (the %-hack, UUCP bang
# paths, a quoted address): refused on the MX (on_rcpt).
_ROUTING_CHARS = frozenset("%!@")
# Core states with no transaction in progress: a stopping server may close there.
_IDLE = frozenset((core.State.GREETED, core.State.READY))


@dataclass
class Transaction:
    sender: str = ""  # canonical envelope sender, "" for <>
    raw_sender: str = ""
    mail: Any = None  # the core's MailFrom event
    local_rcpts: list[tuple[str, list[int]]] = field(default_factory=list)
    remote_rcpts: list[Any] = field(default_factory=list)  # RcptTo events for the queue
    # Local recipients whose RCPT asked NOTIFY=SUCCESS: (address, ORCPT, DSN action).
    notify_success: list[tuple[str, tuple[str, str] | None, str]] = field(default_factory=list)
    spool: Spool | None = None
    spf: Any = None  # mailauth SPF result from MAIL FROM time (MX mode)
    failed: Reply | None = None  # the spool failed (ENOSPC...): the reply to the final dot

    def fresh(self) -> bool:
        """Nothing learnt yet (as a new Transaction)."""
        return (self.mail is None and self.spool is None and self.spf is None
                and self.failed is None and not self.sender and not self.raw_sender
                and not self.local_rcpts and not self.remote_rcpts
                and not self.notify_success)

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.abort()
            self.spool = None


class SMTPSession:
    # Slots: a session is per connection, and most connections are idle (no __dict__).
    __slots__ = ("_buffered", "_high_water", "_iprev", "_quotas", "_spf_last", "_watchdog",
                 "account", "conn", "ctx", "data_started",
                 "deadline", "helo", "loop", "mode", "reader", "remote_ip", "session_id",
                 "settings", "tls_active", "txn", "writer")

    def __init__(self, ctx: ServerContext, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, mode: Literal["mx", "submission"],
                 implicit_tls: bool) -> None:
        self.ctx = ctx
        self.reader = reader
        self.writer = writer
        self.mode = mode
        self.tls_active = implicit_tls
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)
        self.remote_ip: str = peer[0]
        self.helo = ""
        self.account: Account | None = None
        self.txn = Transaction()
        self.session_id = token_hex(6)
        limits = ctx.config.limits
        allow_plain = ctx.allow_plaintext_auth(self.remote_ip)
        self.settings = core.ServerSettings(
            hostname=ctx.hostname,
            mode=mode,
            max_message_size=limits.max_message_size,
            max_recipients=limits.max_recipients,
            tls_available=ctx.tls is not None,
            auth_mechanisms=ctx.auth.mechanisms(),
            auth_requires_tls=not allow_plain,
            auth_required=(mode == "submission"),
            allow_auth=(mode == "submission"),
        )
        self.conn = core.SMTPServerConnection(self.settings, tls_active=implicit_tls)
        self.loop = asyncio.get_running_loop()
        self.deadline = 0.0
        self.data_started = 0.0
        self._watchdog = ReadWatchdog()  # made in the connection's own task
        self._quotas: dict[int, tuple[float, int | None]] = {}
        # MX: the client's iprev (FCrDNS) result, looked up with the first message and
        # kept for the connection (the address does not change), unless temporary.
        self._iprev: Any = None
        # MX: the last SPF verdict, (helo, sender, until, result): a client sending
        # several messages from the same sender on one connection is checked once
        # per SPF_REUSE_SECONDS, not once per message.
        self._spf_last: tuple[str, str, float, Any] | None = None
        self._high_water = -1
        self._buffered: Any = _zero
        self._watch_transport()

    # -- I/O helpers --------------------------------------------------------------------
    async def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            # A reply ends a command, whoever answered it (the core answers NOOP, RSET,
            # HELP... itself): the client's time for the next one starts now (RFC 5321
            # §4.5.3.2.7, a timeout per command).
            self._arm_deadline()
            self.writer.write(out)
            if self._buffered() <= self._high_water:
                return  # drain() would return at once
            await self.writer.drain()

    def _watch_transport(self) -> None:
        """Look up the transport's write-buffer size and high-water mark once (again
        after STARTTLS, which replaces the transport)."""
        transport = self.writer.transport
        try:
            self._high_water = transport.get_write_buffer_limits()[1]  # type: ignore[attr-defined]
            self._buffered = transport.get_write_buffer_size  # type: ignore[attr-defined]
            self._buffered()
        except (AttributeError, NotImplementedError):
            self._high_water = -1  # unknown: always drain()
            self._buffered = _zero

    def _arm_deadline(self) -> None:
        """Commands must complete within command_timeout, however slowly bytes trickle in."""
        self.deadline = self.loop.time() + self.ctx.config.limits.command_timeout

    def _current_deadline(self) -> float:
        if self.txn.spool is None:
            return self.deadline
        # In DATA/BDAT: data_timeout for the message, extended only while the peer keeps up
        # a minimum rate (MIN_DATA_RATE octets/s), so a 10 B/s sender is cut off.
        return self.data_started + self.ctx.config.limits.data_timeout + \
            self.txn.spool.size / MIN_DATA_RATE

    async def read_more(self) -> bool:
        # Between transactions (GREETED, READY) a stopping server may end the wait: the
        # core then answers 421 and closes; a transaction in progress is finished first.
        quiesce = self.ctx.quiesce if self.conn.state in _IDLE else None
        # Moving the deadline costs an assignment: the watchdog keeps one lazy timer.
        try:
            data = await self._watchdog.read(self.reader, READ_CHUNK, self._current_deadline(),
                                             quiesce)
        except TimeoutError:
            return await self._timeout()
        except SessionStopping:
            self.conn.shutdown()
            return True
        if not data:
            self.conn.receive_eof()
            return True
        self.conn.receive_data(data)
        return True

    async def _timeout(self) -> bool:
        self.writer.write(R(421, "4.4.2", f"{self.ctx.hostname} timeout, closing").to_bytes())
        with contextlib.suppress(Exception):
            await self.writer.drain()
        return False

    # -- main loop ----------------------------------------------------------------------
    async def run(self) -> None:
        self._arm_deadline()
        self.data_started = 0.0
        self.writer.write(self.conn.greeting())
        await self.writer.drain()
        try:
            await self._loop()
        finally:
            self._watchdog.close()
            self.txn.discard()

    async def _loop(self) -> None:
        conn = self.conn
        next_event = conn.next_event
        need_data = core.NEED_DATA
        message_data = core.MessageData
        while True:
            ev = next_event()
            if ev is need_data:
                await self.flush()
                if not await self.read_more():
                    return
                continue
            if ev is core.PAUSED:  # pragma: no cover - we always answer before asking again
                raise RuntimeError("SMTP core paused without an outstanding decision")
            kind = type(ev)
            if kind is message_data:
                self.on_data(ev)
                continue
            if kind is core.ConnectionClosed or kind is core.Quit:
                await self.flush()
                return
            if kind is core.StartTLS:
                if not await self._start_tls():
                    return
                continue
            self._arm_deadline()
            if kind is core.AuthNeedSecrets:
                await self.on_need_secrets(ev)  # type: ignore[arg-type]
                continue
            reply = await self.dispatch(ev)
            if ev.needs_decision:  # type: ignore[union-attr]  # NEED_DATA, PAUSED handled above
                conn.respond(reply)  # None: the core's default acceptance

    async def _start_tls(self) -> bool:
        if self.ctx.tls is None:
            return False
        try:
            # The core queued "220 Ready to start TLS"; reading stops before it goes out.
            await upgrade_to_tls(self.reader, self.writer, self.ctx.tls,
                                 self.conn.data_to_send(), handshake_timeout=30.0)
        except (TimeoutError, OSError, ConnectionError) as e:
            self.ctx.log.info("smtp %s: STARTTLS failed: %s", self.remote_ip, e)
            return False
        self.tls_active = True
        self.helo = ""
        self.txn.discard()
        self.txn = Transaction()
        self.conn.tls_started()
        self._watch_transport()
        return True

    async def dispatch(self, ev: Any) -> Reply | None:
        kind = type(ev)
        if kind is core.MailFrom:
            return await self.on_mail(ev)
        if kind is core.RcptTo:
            return await self.on_rcpt(ev)
        if kind is core.MessageComplete:
            return await self.on_message()
        if kind is core.MessageData:
            self.on_data(ev)
            return None
        if isinstance(ev, core.Hello):
            self.helo = ev.name
            self.txn.discard()
            self.txn = Transaction()
            return None
        if isinstance(ev, core.AuthCredentials):
            return await self.on_auth(ev)
        if isinstance(ev, core.AuthProof):
            return await self.on_auth_proof(ev)
        if isinstance(ev, core.MessageAborted):
            self.txn.discard()
            self.txn.local_rcpts.clear()
            self.txn.remote_rcpts.clear()
            self.txn.notify_success.clear()
            return None
        return None

    def on_data(self, ev: Any) -> None:
        """A piece of message content: to the spool (no await: nothing to wait for)."""
        txn = self.txn
        if txn.failed is not None:
            return  # keep reading to the end of DATA, store nothing
        if txn.spool is None:
            txn.spool = self.ctx.store.blobs.new_spool()
            self.data_started = self.loop.time()
        try:
            txn.spool.write(ev.chunk)
        except (StorageError, OSError) as e:
            # ENOSPC while spooling: drop what was spooled now (freeing the space),
            # read the rest and answer the final dot with 452 (RFC 3463 X.3.1).
            self.ctx.log.warning("smtp %s: spooling failed: %s", self.remote_ip, e)
            txn.discard()
            txn.failed = (R(452, "4.3.1", "Insufficient system storage")
                          if _is_no_space(e) else
                          R(451, "4.3.0", "Local error in processing"))

    # -- AUTH ------------------------------------------------------------------------------
    async def on_auth(self, ev: Any) -> Reply:
        account = await self.ctx.auth.authenticate(ev.authcid, ev.password,
                                                   remote_ip=self.remote_ip, authzid=ev.authzid)
        if account is None:
            return R(535, "5.7.8", "Authentication credentials invalid")
        self.account = account
        self.ctx.log.info("smtp %s: authenticated %s", self.remote_ip, account.address)
        return R(235, "2.7.0", "Authentication successful")

    async def on_need_secrets(self, ev: core.AuthNeedSecrets) -> None:
        """SCRAM-SHA-256: the user's stored secrets (made-up ones for an unknown user)."""
        try:
            stored = await self.ctx.auth.scram_secrets(ev.authcid, remote_ip=self.remote_ip,
                                                       authzid=ev.authzid)
        except StorageError as e:
            self.ctx.log.warning("smtp %s: cannot read SCRAM secrets: %s", self.remote_ip, e)
            self.conn.respond(R(454, "4.7.0", "Temporary authentication failure"))  # RFC 4954 §6
            return
        self.conn.provide_secrets(stored)

    async def on_auth_proof(self, ev: core.AuthProof) -> Reply:
        account = await self.ctx.auth.authenticate_proof(
            ev.authcid, valid=ev.valid, remote_ip=self.remote_ip, authzid=ev.authzid)
        if account is None:
            return R(535, "5.7.8", "Authentication credentials invalid")
        self.account = account
        self.ctx.log.info("smtp %s: authenticated %s (%s)", self.remote_ip, account.address,
                          ev.mechanism)
        return R(235, "2.7.0", "Authentication successful")

    # -- MAIL ------------------------------------------------------------------------------
    def _disk_low(self) -> bool:
        threshold = self.ctx.config.limits.min_free_bytes
        if threshold <= 0:
            return False
        # A reading far above the threshold stays good for a second: no statvfs per
        # MAIL under load. Near the threshold every MAIL looks again. (This is the early
        # warning; ENOSPC while spooling still gets 452, see dispatch.)
        now = time.monotonic()
        if now < _disk_ok_until.get(self.ctx.config.data_dir, 0.0):
            return False
        try:
            free = shutil.disk_usage(self.ctx.config.data_dir).free
        except OSError:
            return False
        if free >= threshold + DISK_MARGIN:
            _disk_ok_until[self.ctx.config.data_dir] = now + 1.0
        return free < threshold

    async def on_mail(self, ev: Any) -> Reply:
        if not self.txn.fresh():  # (after a message the session already holds a new one)
            self.txn.discard()
            self.txn = Transaction()
        if self._disk_low():
            return R(452, "4.3.1", "Insufficient system storage")
        raw = "" if ev.path.is_null else ev.path.mailbox  # source route stripped
        sender = ""
        if raw:
            try:
                sender = canonical_address(raw)
            except AddressError:
                return R(553, "5.1.7", "Invalid sender address")
        if self.mode == "submission":
            if self.account is None:
                return R(530, "5.7.0", "Authentication required")
            if not sender or not await self._may_send_as(sender):
                return R(553, "5.7.1", f"Sender address not owned by {self.account.address}")
        else:
            spf = await self._check_spf(sender)
            if spf is not None and getattr(spf, "result", "") == "temperror":
                return R(451, "4.7.24", "SPF DNS lookup failed, try again later")
            self.txn.spf = spf
        self.txn.sender = sender
        self.txn.raw_sender = raw
        self.txn.mail = ev
        return _SENDER_OK

    async def _may_send_as(self, sender: str) -> bool:
        assert self.account is not None
        own = self.account.address
        if sender == own or base_address(sender) == own:
            return True
        # An alias (not a catch-all) whose expansion reaches this account.
        for candidate in {sender, base_address(sender)}:
            alias = await self.ctx.store.get_alias(candidate)
            if alias is None:
                continue
            res = await self.ctx.recipients.resolve(candidate)
            if self.account.id in res.account_ids:
                return True
        return False

    async def _check_spf(self, sender: str) -> Any:
        last = self._spf_last
        now = self.loop.time()
        if last is not None and last[0] == self.helo and last[1] == sender and now < last[2]:
            return last[3]
        try:
            spf = await auth_pipeline().authenticate_envelope(
                self.remote_ip, self.helo, sender, resolver=self.ctx.resolver)
        except Exception:
            self.ctx.log.exception("SPF check failed")
            return None
        if getattr(spf, "result", "temperror") != "temperror":  # a DNS failure is retried
            self._spf_last = (self.helo, sender, now + SPF_REUSE_SECONDS, spf)
        return spf

    # -- RCPT ------------------------------------------------------------------------------
    async def on_rcpt(self, ev: Any) -> Reply:
        raw = ev.path.mailbox
        if "@" not in raw and raw.lower() == "postmaster":
            raw = await self._postmaster()
        try:
            addr = canonical_address(raw)
        except AddressError:
            return R(553, "5.1.3", "Invalid recipient address")
        if self.mode != "submission" and _ROUTING_CHARS.intersection(split_address(addr)[0]):
            # "user%other@ours", "other!user@ours", '"user@other"@ours': routing syntax older
            # MTAs relayed on (RFC 5321 §3.6.1, §2.3.5). Refused whoever the domain is, as
            # Postfix does (allow_untrusted_routing = no): a catch-all must not take them.
            return R(554, "5.7.1", "Relay access denied")
        res = await self.ctx.recipients.resolve(addr)
        if res.verdict is Verdict.LOCAL:
            size = getattr(self.txn.mail, "size", None) or 0  # SIZE= of MAIL, if given
            for account_id in res.account_ids:
                room = await self._room(account_id)
                if room is not None and size > room[0]:
                    return R(552, "5.2.2", "Message larger than the mailbox's quota")
                if room is not None and (room[1] >= room[0] or room[1] + size > room[0]):
                    return R(452, "4.2.2", "Mailbox full")
            if res.account_ids:
                self.txn.local_rcpts.append((addr, list(res.account_ids)))
                if ev.notify is not None and "SUCCESS" in ev.notify:
                    # RFC 3461 §6.2.7: "expanded" when the address fanned out.
                    fanned = len(res.account_ids) + len(res.remote) > 1
                    self.txn.notify_success.append(
                        (addr, ev.orcpt, "expanded" if fanned else "delivered"))
            # An alias onto ONE remote address is a relay: the DSN request goes with it
            # (RFC 3461 §6.2.7.3); a fan-out's copies ask for failures only.
            alone = not res.account_ids and len(res.remote) == 1
            for fwd in res.remote:
                self.txn.remote_rcpts.append(
                    _Forward(fwd, ev.notify, ev.orcpt, via=addr) if alone else _Forward(fwd, via=addr))
            return _RECIPIENT_OK
        if res.verdict is Verdict.UNKNOWN_USER:
            return R(550, "5.1.1", "No such user here")
        if self.mode == "submission" and res.verdict is Verdict.NOT_LOCAL:
            if _is_routable(addr):
                # Remote local parts keep their case (RFC 5321 §2.4): only we fold ours.
                self.txn.remote_rcpts.append(_Forward(ev.path.mailbox, ev.notify, ev.orcpt))
                return _RECIPIENT_OK
            return R(553, "5.1.3", "Invalid recipient address")
        return R(554, "5.7.1", "Relay access denied")

    async def _postmaster(self) -> str:
        """Where a bare <postmaster> goes (RFC 5321 §4.5.1, accepted without a domain):
        postmaster@ of our host name, or of the nearest parent of it that is one of our
        domains (mail.example.org -> example.org)."""
        host = self.ctx.hostname.lower().rstrip(".")
        labels = host.split(".")
        for i in range(len(labels) - 1):
            domain = ".".join(labels[i:])
            if await self.ctx.recipients.is_local_domain(domain):
                return f"postmaster@{domain}"
        return f"postmaster@{host}"

    async def _room(self, account_id: int) -> tuple[int, int] | None:
        """(quota, usage) of an account with a quota, else None. With the size a client
        declared (RFC 1870 SIZE=), a message that would overshoot the quota is refused at
        RCPT: 552 5.2.2 when it is larger than the whole quota (it never fits), else
        452 4.2.2 (RFC 3463); without it, only a mailbox already full is."""
        # The account's quota, remembered for a second within the session (a session
        # delivering many messages to one mailbox looks it up once, not per RCPT).
        now = self.loop.time()
        hit = self._quotas.get(account_id)
        if hit is not None and hit[0] > now:
            quota = hit[1]
        else:
            account = await self.ctx.store.get_account_by_id(account_id)
            quota = None if account is None else account.quota_bytes
            if len(self._quotas) >= 64:
                self._quotas.clear()
            self._quotas[account_id] = (now + 1.0, quota)
        if quota is None:
            return None
        return quota, await self.ctx.store.account_usage(account_id)

    # -- end of DATA ---------------------------------------------------------------------
    async def on_message(self) -> Reply:
        txn = self.txn
        if txn.failed is not None:
            self.txn = Transaction()
            return txn.failed
        spool = txn.spool or self.ctx.store.blobs.new_spool()
        txn.spool = None
        sub = Submission(
            mode=self.mode,
            session_id=self.session_id,
            remote_ip=self.remote_ip,
            remote_host=self.helo,
            helo=self.helo,
            tls=self.tls_active,
            account=self.account,
            sender=txn.sender,
            mail=txn.mail,
            local_rcpts=txn.local_rcpts,  # the session moves on to a new Transaction
            remote_rcpts=txn.remote_rcpts,
            notify_success=txn.notify_success,
            spf=txn.spf,
            iprev=self._iprev,
        )
        self.txn = Transaction()
        try:
            return await accept_message(self.ctx, sub, spool)
        finally:
            spool.abort()
            if sub.iprev is not None and getattr(sub.iprev, "result", "") != "temperror":
                self._iprev = sub.iprev


@dataclass(frozen=True)
class _Forward:
    """A forwarding target from an alias, shaped like a RcptTo event for the queue."""

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    via: str = ""  # the local alias that forwards here (its domain ARC-seals the copy)


def _zero() -> int:
    return 0


def _is_no_space(e: Exception) -> bool:
    return isinstance(e, InsufficientStorage) or (
        isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))


def _is_routable(addr: str) -> bool:
    try:
        _, domain = split_address(addr)
    except AddressError:
        return False
    if domain.startswith("["):
        return True
    return "." in domain


async def handle_smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      ctx: ServerContext, *, mode: Literal["mx", "submission"],
                      implicit_tls: bool) -> None:
    session = SMTPSession(ctx, reader, writer, mode=mode, implicit_tls=implicit_tls)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await session.run()
