"""Delivery of queued messages to one destination domain over SMTP (asyncio).

The courier is the I/O half of outbound delivery: it resolves the route
(:mod:`routing`), applies the MTA-STS policy (:mod:`mtasts`), connects, and
drives the sans-IO pieces of :mod:`mailyard.protocol.smtp.client`. It never
touches the queue tables: it returns one :class:`RecipientResult` per
recipient and the runner persists them.

Decisions, with their sources:

* MX hosts in order, minus our own host and anything less preferred
  (RFC 5321 §5.1; a list that is only us bounces 5.4.6); next MX on connect failure, a 4xx/5xx greeting
  (RFC 5321 §3.1, §5.1) or a failed TLS handshake.
* EHLO, falling back to HELO when EHLO is refused (RFC 5321 §3.2).
* STARTTLS whenever offered (RFC 3207). The certificate is verified (chain and
  MX host name) only when TLS is required: MTA-STS ``enforce`` (RFC 8461 §4.2)
  or ``queue.require_tls``. Otherwise any certificate is accepted
  (opportunistic TLS, RFC 7435). When STARTTLS fails on every MX, and nothing
  requires TLS, the failed hosts are tried once more in plaintext.
  Bytes the server sent ahead of its STARTTLS 220 are a protocol error
  (the CVE-2011-0411 class of injection).
* PIPELINING: MAIL and all RCPTs in one write (RFC 2920 §3.1).
* SIZE (RFC 1870), BODY=8BITMIME (RFC 6152; 8-bit content to a peer without
  it bounces 5.6.3, §3), SMTPUTF8 (RFC 6531; a message that needs it to a peer
  without it bounces 5.6.7, §3.2), BDAT when CHUNKING
  is offered (RFC 3030), DSN parameters relayed when DSN is offered (RFC 3461 §4).
* Per-recipient results: 2xx delivered, 4xx deferred, 5xx bounced; a message
  level 4xx/5xx (MAIL, DATA, the final reply) applies to every recipient still
  pending. A connection lost or a timeout after the final dot is a deferral:
  the peer may have kept the message (a duplicate), but we must not lose it.
* The body is streamed from the blob store; a read failure mid-body drops the
  connection without the terminator so no truncated message is ever accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import ipaddress
import logging
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mailyard.config import QueueConfig
from mailyard.mailauth.resolver import Resolver
from mailyard.protocol.smtp.client import (
    HELO_CAPABILITIES,
    BodyEncoder,
    Capabilities,
    ReplyParser,
    ServerReply,
    SMTPProtocolError,
    cmd_bdat,
    cmd_data,
    cmd_ehlo,
    cmd_helo,
    cmd_mail,
    cmd_quit,
    cmd_rcpt,
    cmd_rset,
    cmd_starttls,
    needs_smtputf8,
    parse_ehlo,
)
from mailyard.queue.mtasts import MTASTS, Policy
from mailyard.queue.routing import MXHost, RoutingError, drop_self, resolve_mx
from mailyard.queue.tlsrpt import (
    STARTTLS_NOT_SUPPORTED,
    VALIDATION_FAILURE,
    PolicyDesc,
    TLSReporter,
    tls_result_type,
)
from mailyard.server.tls import client_context
from mailyard.storage.interface import BlobStore
from mailyard.storage.models import QueueEntry, QueueRecipient

log = logging.getLogger(__name__)

_READ_CHUNK = 65536


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class RecipientResult:
    address: str
    outcome: Outcome
    status: str  # RFC 3463 enhanced status, e.g. "5.1.1"
    diagnostic: str  # the remote reply ("550 5.1.1 ...") or our own explanation
    remote_mta: str = ""  # MX host name that answered, "" when none did
    from_remote: bool = False  # diagnostic is an SMTP reply (DSN "smtp;" type)
    peer_dsn: bool = False  # the peer took the DSN request on (it offered DSN)


Job = tuple[QueueEntry, Sequence[QueueRecipient]]
# A session's TLS outcome for the domain's TLS report: (host, address, failure or None).
TLSSeen = Callable[["MXHost", str, "_HostFailure | None"], None]
# Awaited just before a message's end of data (the final dot or the LAST chunk).
BeforeEnd = Callable[[], Awaitable[None]]
# Called with a job's entry and its results once they are final (``deliver``'s ``on_done``).
JobDone = Callable[[QueueEntry, list["RecipientResult"]], Awaitable[None]]


class _HostFailure(Exception):
    """This host cannot be used now; try the next one."""

    def __init__(self, status: str, text: str, *, tls: bool = False,
                 result_type: str = "") -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text
        self.tls = tls
        self.result_type = result_type  # a TLS failure's RFC 8460 result type, for reports


class _ConnectionLost(Exception):
    """The connection broke mid-session; results of the current job are already set."""


class _TLSMode(enum.Enum):
    OPPORTUNISTIC = "opportunistic"  # STARTTLS if offered, any certificate; failure -> next MX
    REQUIRED = "required"  # STARTTLS must succeed with a verified certificate
    PLAIN = "plain"  # do not STARTTLS (second pass after TLS failures)


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = ReplyParser()
        self.tls = False

    async def reply(self, limit: float) -> ServerReply:
        while True:
            r = self.parser.next_reply()
            if r is not None:
                return r
            async with asyncio.timeout(limit):
                data = await self.reader.read(_READ_CHUNK)
            if not data:
                raise ConnectionError("connection closed by peer")
            self.parser.feed(data)

    async def send(self, data: bytes, limit: float) -> None:
        self.writer.write(data)
        async with asyncio.timeout(limit):
            await self.writer.drain()

    async def command(self, data: bytes, limit: float) -> ServerReply:
        await self.send(data, limit)
        return await self.reply(limit)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


_EIGHT_BIT = re.compile(rb"[\x80-\xff]")
_NET_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, SMTPProtocolError)


class Courier:
    def __init__(self, blobs: BlobStore, resolver: Resolver, config: QueueConfig, *,
                 hostname: str, mtasts: MTASTS | None = None, ca_file: str | None = None,
                 rng: random.Random | None = None, command_timeout: float = 300.0,
                 data_timeout: float = 600.0, local_names: Sequence[str] = (),
                 local_addresses: Sequence[str] = (), tlsrpt: TLSReporter | None = None) -> None:
        self._blobs = blobs
        self.tlsrpt = tlsrpt
        self._local_names = tuple(local_names) or (hostname,)
        self._local_addresses = tuple(local_addresses)
        self._resolver = resolver
        self._config = config
        self._hostname = hostname
        self._mtasts = mtasts
        self._ca_file = ca_file or config.ca_file or None
        self._rng = rng or random.Random()
        # RFC 5321 §4.5.3.2: 5 minutes per command, 10 minutes for the final reply.
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self._verify_ctx: ssl.SSLContext | None = None
        self._any_ctx: ssl.SSLContext | None = None

    # -- TLS contexts (built once, reused) ---------------------------------------------------
    def _tls_context(self, verify: bool) -> ssl.SSLContext:
        if verify:
            if self._verify_ctx is None:
                self._verify_ctx = client_context(ca_file=self._ca_file, verify=True)
            return self._verify_ctx
        if self._any_ctx is None:
            ctx = client_context(verify=False)
            # Opportunistic TLS (RFC 7435): take what the server offers, TLS 1.0+ included,
            # since the alternative is plaintext.
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            self._any_ctx = ctx
        return self._any_ctx

    # -- the public entry point -----------------------------------------------------------------
    async def deliver(self, domain: str, jobs: Sequence[Job], *,
                      on_done: JobDone | None = None, tls_reports: bool = False
                      ) -> dict[str, list[RecipientResult]]:
        """Deliver every job (entry, its pending recipients for ``domain``) and report.

        ``tls_reports``: the jobs are RFC 8460 TLS reports, which "MUST be delivered
        despite any TLS-related failures" (§3): no MTA-STS policy and no ``require_tls``
        apply (STARTTLS when offered, plaintext after it failed), and their sessions are
        not counted in the next report.

        ``on_done(entry, results)``, when given, is started as soon as a job's results
        are final (the remote server answered its transaction, or it failed there), so
        that the caller can record each outcome at once. It runs while the next
        transaction's envelope goes out and is finished before that message's end of
        data, and all are finished when ``deliver`` returns. A crash in the middle of a
        session that carries many messages then repeats only the one in flight (RFC 5321
        §6.1 accepts that duplicate), not every message the session had delivered. Jobs
        that never reached a transaction (every host failed) are reported only by the
        return value.
        """
        results: dict[str, list[RecipientResult]] = {e.id: [] for e, _ in jobs}

        def fail_all(todo: Sequence[Job], outcome: Outcome, status: str, text: str) -> None:
            for entry, rcpts in todo:
                results[entry.id].extend(
                    RecipientResult(r.address, outcome, status, text) for r in rcpts)

        try:
            hosts = await resolve_mx(domain, self._resolver, rng=self._rng)
            hosts = drop_self(domain, hosts, names=self._local_names,
                              addresses=self._local_addresses)
        except RoutingError as e:
            fail_all(jobs, Outcome.BOUNCED if e.permanent else Outcome.DEFERRED, e.status, e.text)
            return results

        policy: Policy | None = None
        if self._mtasts is not None and not domain.startswith("[") and not tls_reports:
            policy = await self._mtasts.policy_for(domain)
        reporter = self.tlsrpt if not (domain.startswith("[") or tls_reports) else None
        described = PolicyDesc.of(policy)
        if reporter is not None and self._mtasts is not None:
            fetch_failure = self._mtasts.fetch_failing(domain)
            if fetch_failure is not None:
                reporter.failure(domain, described if policy is not None else PolicyDesc("sts"),
                                 fetch_failure)
        if policy is not None and policy.mode in ("enforce", "testing"):
            matching = [h for h in hosts if policy.matches(h.name)]
            if len(matching) != len(hosts):
                bad = [h.name for h in hosts if h not in matching]
                log.warning("MTA-STS %s for %s: MX %s not in policy", policy.mode, domain, bad)
                if reporter is not None:
                    reporter.failure(domain, described, VALIDATION_FAILURE, mx_host=bad[0],
                                     reason="mx-not-in-policy")
            if policy.enforce:
                hosts = matching

        def tls_seen(host: MXHost, addr: str, failure: _HostFailure | None) -> None:
            """One session's TLS outcome, for the domain's TLS report."""
            if reporter is None:
                return
            if failure is None:
                reporter.success(domain, described)
            elif failure.result_type:
                reporter.failure(domain, described, failure.result_type, mx_host=host.name,
                                 receiving_ip=addr, reason=failure.text)

        tls_required = not tls_reports and (self._config.require_tls
                                            or (policy is not None and policy.enforce))
        if not hosts:
            fail_all(jobs, Outcome.DEFERRED, "4.7.5",
                     f"no MX host of {domain} matches its MTA-STS policy")
            return results

        todo = list(jobs)
        last = _HostFailure("4.4.1", f"no MX host of {domain} could be reached")
        tls_failed: list[MXHost] = []
        mode = _TLSMode.REQUIRED if tls_required else _TLSMode.OPPORTUNISTIC
        for host in hosts:
            if not todo:
                break
            try:
                await self._host(host, mode, todo, results, on_done, tls_seen)
            except _HostFailure as e:
                log.info("delivery to %s via %s failed: %s", domain, host.name, e)
                last = e
                if e.tls:
                    tls_failed.append(host)
        if todo and tls_failed and not tls_required:
            # Every usable host failed STARTTLS: plaintext beats not delivering,
            # as long as nothing asked for TLS (RFC 7435 §3).
            for host in tls_failed:
                if not todo:
                    break
                try:
                    await self._host(host, _TLSMode.PLAIN, todo, results, on_done, tls_seen)
                except _HostFailure as e:
                    last = e
        if todo:
            fail_all(todo, Outcome.DEFERRED, last.status, last.text)
        return results

    # -- one MX host ------------------------------------------------------------------------------
    async def _host(self, host: MXHost, mode: _TLSMode, todo: list[Job],
                    results: dict[str, list[RecipientResult]],
                    on_done: JobDone | None = None, tls_seen: TLSSeen | None = None) -> None:
        """Try the host's addresses in turn; deliver what can be delivered; pop done jobs."""
        last: _HostFailure | None = None
        for addr in host.addresses:
            try:
                conn = await self._connect(addr)
            except _HostFailure as e:
                last = e
                continue
            try:
                await self._session(conn, host, mode, todo, results, on_done,
                                    None if tls_seen is None else functools.partial(tls_seen, host, addr))
                return
            finally:
                conn.abort()
        raise last or _HostFailure("4.4.1", f"{host.name}: no address")

    async def _connect(self, addr: str) -> _Conn:
        port = self._config.outbound_port
        src = self._config.source_address
        # Bind the source only when it is of the destination's family (an IPv4 source
        # cannot reach an IPv6 MX).
        local = (src, 0) if src and ((":" in src) == (":" in addr)) else None
        try:
            async with asyncio.timeout(self._config.connect_timeout):
                reader, writer = await asyncio.open_connection(addr, port, local_addr=local,
                                                               limit=_READ_CHUNK * 2)
        except TimeoutError:
            raise _HostFailure("4.4.1", f"connect to {addr}:{port} timed out")
        except OSError as e:
            raise _HostFailure("4.4.1", f"connect to {addr}:{port}: {e.strerror or e}")
        return _Conn(reader, writer)

    async def _hello(self, conn: _Conn) -> Capabilities:
        t = self.command_timeout
        r = await conn.command(cmd_ehlo(self._hostname), t)
        if r.is_success:
            return parse_ehlo(r)
        # RFC 5321 §3.2: a server that does not know EHLO gets HELO.
        r = await conn.command(cmd_helo(self._hostname), t)
        if not r.is_success:
            raise _HostFailure(r.status(), f"HELO refused: {r.diagnostic()}")
        return HELO_CAPABILITIES

    async def _session(self, conn: _Conn, host: MXHost, mode: _TLSMode, todo: list[Job],
                       results: dict[str, list[RecipientResult]],
                       on_done: JobDone | None = None,
                       tls_seen: Callable[[_HostFailure | None], None] | None = None) -> None:
        t = self.command_timeout
        name = host.name
        try:
            greeting = await conn.reply(t)
            if not greeting.is_success:
                raise _HostFailure(greeting.status(), f"{name} greeted with {greeting.diagnostic()}")
            caps = await self._hello(conn)
            if mode is not _TLSMode.PLAIN and (caps.starttls or mode is _TLSMode.REQUIRED):
                if not caps.starttls:
                    raise _HostFailure("4.7.5", f"{name} does not offer STARTTLS and TLS is required",
                                       tls=True, result_type=STARTTLS_NOT_SUPPORTED)
                caps = await self._starttls(conn, host, verify=mode is _TLSMode.REQUIRED)
                if tls_seen is not None:
                    tls_seen(None)
            elif mode is _TLSMode.OPPORTUNISTIC and tls_seen is not None:
                # No STARTTLS offered: the session goes on in plaintext, a failure to report.
                tls_seen(_HostFailure("", f"{name} does not offer STARTTLS",
                                      result_type=STARTTLS_NOT_SUPPORTED))
        except _HostFailure as e:
            if tls_seen is not None and e.result_type:
                tls_seen(e)
            raise
        except ssl.SSLError as e:
            failure = _HostFailure("4.7.5", f"TLS with {name} failed: {e.reason or e}", tls=True,
                                   result_type=tls_result_type(e))
            if tls_seen is not None:
                tls_seen(failure)
            raise failure from e
        except _NET_ERRORS as e:
            raise _HostFailure("4.4.2", f"{name}: {_describe(e)} before mail transaction")

        # A job's outcome is recorded (on_done) while the next transaction's envelope is
        # under way; settle() waits for it before that message's end of data, the point
        # from which the remote may accept it. So at most the message in flight has an
        # unrecorded acceptance when the process dies.
        recording: asyncio.Future[None] | None = None

        async def settle() -> None:
            nonlocal recording
            if recording is not None:
                pending, recording = recording, None
                try:
                    await pending
                except Exception:
                    log.exception("recording a delivery outcome failed")

        def record(entry: QueueEntry) -> None:
            nonlocal recording
            if on_done is not None:
                recording = asyncio.ensure_future(on_done(entry, results[entry.id]))

        first = True
        try:
            while todo:
                entry, rcpts = todo[0]
                try:
                    if not first:
                        r = await conn.command(cmd_rset(), t)
                        if not r.is_success:
                            return
                except _NET_ERRORS:
                    return  # the remaining jobs go to the next host
                first = False
                todo.pop(0)
                try:
                    results[entry.id].extend(
                        await self._transaction(conn, host, caps, entry, rcpts, settle))
                except _ConnectionLost as e:
                    # Results of this job were set inside; the connection is gone.
                    results[entry.id].extend(e.args[0])
                    await settle()
                    record(entry)
                    return
                await settle()  # one outcome in flight at a time
                record(entry)
            with contextlib.suppress(*_NET_ERRORS):
                await conn.command(cmd_quit(), min(t, 10.0))
        finally:
            await settle()

    async def _starttls(self, conn: _Conn, host: MXHost, *, verify: bool) -> Capabilities:
        t = self.command_timeout
        r = await conn.command(cmd_starttls(), t)
        if r.code != 220:
            raise _HostFailure("4.7.5", f"{host.name} refused STARTTLS: {r.diagnostic()}",
                               tls=True, result_type=STARTTLS_NOT_SUPPORTED)
        if conn.parser.buffered:
            # Plaintext bytes after the 220 would be read as if they came over TLS.
            raise _HostFailure("4.7.5", f"{host.name} sent data after STARTTLS 220", tls=True,
                               result_type=VALIDATION_FAILURE)
        try:
            is_ip = True
            ipaddress.ip_address(host.name)
        except ValueError:
            is_ip = False
        server_hostname = host.name if (verify or not is_ip) else None
        try:
            await conn.writer.start_tls(self._tls_context(verify), server_hostname=server_hostname,
                                        ssl_handshake_timeout=t)
        except (ssl.SSLError, ssl.CertificateError) as e:
            raise _HostFailure("4.7.5", f"TLS handshake with {host.name} failed: "
                               f"{getattr(e, 'verify_message', '') or e}", tls=True,
                               result_type=tls_result_type(e))
        except (*_NET_ERRORS, ConnectionError) as e:
            raise _HostFailure("4.7.5", f"TLS handshake with {host.name} failed: {_describe(e)}",
                               tls=True, result_type=VALIDATION_FAILURE)
        conn.tls = True
        # RFC 3207 §4.2: forget everything learnt before TLS and say EHLO again.
        try:
            return await self._hello(conn)
        except _NET_ERRORS as e:
            raise _HostFailure("4.7.5", f"{host.name}: {_describe(e)} after STARTTLS", tls=True)

    # -- one mail transaction ------------------------------------------------------------------------
    async def _transaction(self, conn: _Conn, host: MXHost, caps: Capabilities,
                           entry: QueueEntry, rcpts: Sequence[QueueRecipient],
                           before_end: BeforeEnd | None = None
                           ) -> list[RecipientResult]:
        """One MAIL/RCPT/DATA (or BDAT) transaction; ``before_end`` is awaited just before
        the end of the data (the final dot or the LAST chunk), nothing being accepted yet."""
        t = self.command_timeout
        name = host.name

        def res(addr: str, r: ServerReply) -> RecipientResult:
            outcome = (Outcome.DELIVERED if r.is_success else
                       Outcome.BOUNCED if r.is_permanent else Outcome.DEFERRED)
            status = r.status() if r.kind != 3 else "4.0.0"
            if r.kind == 3:  # an intermediate reply where a final one belongs
                outcome = Outcome.DEFERRED
            return RecipientResult(addr, outcome, status, r.diagnostic(), name, True,
                                   caps.dsn)

        def ours(addr: str, outcome: Outcome, status: str, text: str) -> RecipientResult:
            return RecipientResult(addr, outcome, status, text, name, False)

        utf8 = entry.smtputf8 or needs_smtputf8(entry.sender, *(r.address for r in rcpts))
        if utf8 and not caps.smtputf8:
            return [ours(r.address, Outcome.BOUNCED, "5.6.7",
                         f"{name} does not support SMTPUTF8, which this message needs")
                    for r in rcpts]
        if caps.size and entry.blob.size > caps.size:
            return [ours(r.address, Outcome.BOUNCED, "5.3.4",
                         f"message size {entry.blob.size} exceeds the limit of {name} "
                         f"({caps.size})") for r in rcpts]
        if not caps.eightbitmime and await self._has_8bit(entry):
            # RFC 6152 §3: 8-bit content goes only to a server that offers 8BITMIME;
            # the relay must otherwise convert it or return it. Converting would break
            # the DKIM signatures on it (ours and the author's), so it is returned, as
            # KumoMTA does by default (Postfix converts). Another MX may offer it.
            return [ours(r.address, Outcome.BOUNCED, "5.6.3",
                         f"{name} does not support 8BITMIME, which this message needs "
                         "(8-bit octets in its content)") for r in rcpts]
        mail = cmd_mail(
            entry.sender,
            size=entry.blob.size if caps.size is not None else None,
            # RFC 6152: declare 8-bit content when the peer knows 8BITMIME.
            body="8BITMIME" if entry.body_8bit and caps.eightbitmime else None,
            smtputf8=utf8,
            ret=entry.ret if caps.dsn else None,
            envid=entry.envid if caps.dsn else None,
        )
        rcpt_cmds = [cmd_rcpt(r.address, notify=r.notify if caps.dsn else None,
                              orcpt=r.orcpt if caps.dsn else None) for r in rcpts]
        out: list[RecipientResult] = []
        accepted: list[str] = []

        def lost(e: BaseException, during: str) -> _ConnectionLost:
            done = {x.address for x in out}
            rest = [ours(r.address, Outcome.DEFERRED, "4.4.2",
                         f"{name}: {_describe(e)} during {during}")
                    for r in rcpts if r.address not in done]
            return _ConnectionLost(out + rest)

        try:
            if caps.pipelining:
                # RFC 2920 §3.1: MAIL and every RCPT in one write, then the replies in order.
                await conn.send(mail + b"".join(rcpt_cmds), t)
                mail_reply = await conn.reply(t)
                rcpt_replies = [await conn.reply(t) for _ in rcpt_cmds]
            else:
                mail_reply = await conn.command(mail, t)
                rcpt_replies = []
                if mail_reply.is_success:
                    for c in rcpt_cmds:
                        rcpt_replies.append(await conn.command(c, t))
        except _NET_ERRORS as e:
            raise lost(e, "MAIL/RCPT")
        if not mail_reply.is_success:
            return [res(r.address, mail_reply) for r in rcpts]
        for r, reply in zip(rcpts, rcpt_replies, strict=True):
            if reply.is_success:
                accepted.append(r.address)
            else:
                out.append(res(r.address, reply))
        if not accepted:
            return out

        try:
            if caps.chunking:
                final = await self._send_bdat(conn, entry, before_end)
            else:
                final = await self._send_data(conn, entry, before_end)
        except _PreDataReply as e:
            # DATA refused (or a BDAT chunk refused): nothing was accepted.
            return out + [res(a, e.reply) for a in accepted]
        except _NET_ERRORS as e:
            raise lost(e, "message transfer (delivery may be duplicated)")
        except _LocalReadError as e:
            return out + [ours(a, Outcome.DEFERRED, "4.3.0", f"local error reading message: {e}")
                          for a in accepted]
        out.extend(res(a, final) for a in accepted)
        if final.is_success:
            log.info("delivered %s to %s via %s (%s)%s", entry.id, ",".join(accepted), name,
                     final.diagnostic(), " TLS" if conn.tls else "")
        return out

    async def _send_data(self, conn: _Conn, entry: QueueEntry,
                         before_end: BeforeEnd | None = None) -> ServerReply:
        t = self.command_timeout
        r = await conn.command(cmd_data(), t)
        if r.code != 354:
            raise _PreDataReply(r)
        enc = BodyEncoder(dot_stuff=True)
        await self._pump(conn, entry, enc, None)
        if before_end is not None:
            await before_end()
        await conn.send(enc.finish(), t)
        return await conn.reply(self.data_timeout)

    async def _has_8bit(self, entry: QueueEntry) -> bool:
        """Whether the stored message holds an octet over 127, declared or not (a client
        may send 8-bit without BODY=8BITMIME, or declare it and send 7-bit). A message
        that cannot be read is left to the send, which defers it."""
        stream = self._blobs.stream(entry.blob.blob_id)
        try:
            async for chunk in stream:
                if _EIGHT_BIT.search(chunk):
                    return True
        except Exception:
            return False
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        return False

    async def _send_bdat(self, conn: _Conn, entry: QueueEntry,
                         before_end: BeforeEnd | None = None) -> ServerReply:
        enc = BodyEncoder(dot_stuff=False)
        await self._pump(conn, entry, enc, self.command_timeout, before_end)
        return await conn.reply(self.data_timeout)

    async def _pump(self, conn: _Conn, entry: QueueEntry, enc: BodyEncoder,
                    bdat_timeout: float | None,
                    before_end: BeforeEnd | None = None) -> None:
        """Stream the blob through ``enc``. For BDAT (``bdat_timeout`` set) each encoded
        block becomes one chunk; one block is held back so the last one carries LAST."""
        t = self.command_timeout
        held: bytes | None = None
        stream = self._blobs.stream(entry.blob.blob_id)
        try:
            while True:
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    break
                except Exception as e:  # the store failed: never finish the message
                    conn.abort()
                    raise _LocalReadError(str(e)) from e
                data = enc.feed(chunk)
                if not data:
                    continue
                if bdat_timeout is None:
                    await conn.send(data, t)
                    continue
                if held is not None:
                    r = await conn.command(cmd_bdat(len(held)) + held, bdat_timeout)
                    if not r.is_success:
                        raise _PreDataReply(r)
                held = data
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        if bdat_timeout is not None:
            tail = (held or b"") + enc.finish()
            if before_end is not None:
                await before_end()
            await conn.send(cmd_bdat(len(tail), last=True) + tail, t)


class _PreDataReply(Exception):
    def __init__(self, reply: ServerReply) -> None:
        super().__init__(reply.diagnostic())
        self.reply = reply


class _LocalReadError(Exception):
    pass


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, asyncio.IncompleteReadError | ConnectionError):
        return "connection lost"
    if isinstance(e, SMTPProtocolError):
        return f"protocol error ({e})"
    return str(e) or e.__class__.__name__
