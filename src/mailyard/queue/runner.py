"""The outbound queue runner: due entries -> courier -> persisted results -> DSNs.

Crash safety (DESIGN.md "Nothing lost"): before an entry is attempted, its
next attempt time (``now + backoff(attempts)``) and attempt count are saved with
``queue_update``. A crash or a ``stop()`` in the middle of an attempt therefore
leaves an entry that becomes due again later: a retry (maybe a duplicate), never
a loss. Each entry's per-recipient outcome is saved as soon as the remote server
has answered its transaction, and before the next message on that session reaches
its end of data: a crash in a session that carries many messages repeats only the
one in flight, not all those delivered before it. An entry with no pending
recipient is deleted. A DSN is made durable (queued or delivered locally) *before*
the recipients it reports are marked bounced, for the same reason. A restart needs
no special code: the runner only ever reads due entries.

Grouping: due recipients are grouped by destination domain; the jobs of one
domain share connections (several messages over one SMTP session), spread over
at most ``queue.concurrency_per_destination`` parallel connections, and a
per-domain semaphore keeps that limit across dispatch rounds. TLS reports
(``QueueEntry.tls_report``) go in sessions of their own, which no TLS policy holds
back (RFC 8460 §3).

Delay warnings are sent once per entry (``QueueEntry.delay_warned``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mailyard.config import Config
from mailyard.mailauth.resolver import Resolver
from mailyard.queue.courier import Courier, Job, Outcome, RecipientResult
from mailyard.queue.dsn import DSNRecipient, build_dsn, dsn_entry, load_original, wants
from mailyard.queue.mtasts import MTASTS
from mailyard.queue.routing import domain_of
from mailyard.queue.schedule import backoff, delay_warning_due, is_expired
from mailyard.queue.tlsrpt import TLSReporter
from mailyard.storage.models import BlobRef, QueueEntry, QueueRecipient, RecipientState

MTA_STS_CACHE = Path("cache") / "mta-sts.json"  # under the data folder: policies kept across restarts
TLSRPT_STATE = Path("cache") / "tlsrpt.json"  # TLS report counts not yet sent (queue/tlsrpt.py)

log = logging.getLogger(__name__)

# local_delivery(dsn_bytes, recipient) -> True when the recipient is local and the DSN
# was delivered durably; False when the recipient is not local (the runner queues it).
LocalDelivery = Callable[[bytes, str], Awaitable[bool]]


class _Blobs(Protocol):
    async def put(self, data: bytes) -> BlobRef: ...

    async def read(self, blob_id: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stream(self, blob_id: str, *, offset: int = 0, length: int | None = None,
               chunk: int = 65536) -> AsyncIterator[bytes]: ...


class QueueStore(Protocol):
    """The part of :class:`mailyard.storage.interface.Store` the runner uses."""

    @property
    def blobs(self) -> _Blobs: ...

    async def queue_add(self, entry: QueueEntry) -> None: ...

    async def queue_due(self, now: float, limit: int = 100) -> list[QueueEntry]: ...

    async def queue_update(self, entry_id: str, *, recipients: Sequence[QueueRecipient],
                           next_attempt: float, attempts: int, last_error: str = "",
                           delay_warned: bool | None = None) -> None: ...

    async def queue_delete(self, entry_id: str) -> None: ...


@dataclass
class _EntryState:
    entry: QueueEntry
    remaining: int
    results: dict[str, RecipientResult] = field(default_factory=dict)


def _own_smtp_addresses(config: Config) -> tuple[str, ...]:
    """Addresses where an outbound connection would reach our own MX listener.

    Only a specific listen address on the port we deliver to counts: with a wildcard
    bind we cannot tell our addresses apart without enumerating interfaces, and
    the host name check covers the usual case (RFC 5321 §5.1)."""
    from mailyard.config import ConfigError, parse_hostport

    spec = config.listen.smtp
    if not spec:
        return ()
    try:
        host, port = parse_hostport(spec, key="listen.smtp")
    except ConfigError:
        return ()
    if port != config.queue.outbound_port or host in ("0.0.0.0", "::", "localhost"):
        return ()
    return (host,)


class QueueRunner:
    def __init__(self, store: QueueStore, resolver: Resolver, config: Config, *,
                 clock: Callable[[], float] = time.time, tls_ca_file: str | None = None,
                 local_delivery: LocalDelivery | None = None, hostname: str | None = None,
                 mta_sts: MTASTS | None = None, use_mta_sts: bool = True,
                 courier: Courier | None = None, rng: random.Random | None = None,
                 poll_interval: float = 30.0, batch: int = 200,
                 command_timeout: float = 300.0, data_timeout: float = 600.0) -> None:
        self._store = store
        self._config = config
        self._qcfg = config.queue
        self._clock = clock
        self._local_delivery = local_delivery
        self.hostname = hostname or config.hostname
        ca_file = tls_ca_file or config.queue.ca_file or None
        if mta_sts is None and use_mta_sts:
            port = config.queue.mta_sts_port
            mta_sts = MTASTS(resolver, clock=clock, ca_file=ca_file,
                             https_port=None if port == 443 else port,
                             cache_file=(Path(config.data_dir) / MTA_STS_CACHE
                                         if config.data_dir else None))
        self.tlsrpt: TLSReporter | None = None
        if config.tlsrpt.enabled:
            self.tlsrpt = TLSReporter(
                clock=clock, sending_ip=config.queue.source_address,
                state_file=Path(config.data_dir) / TLSRPT_STATE if config.data_dir else None)
        self.courier = courier or Courier(
            store.blobs, resolver, config.queue, hostname=self.hostname,  # type: ignore[arg-type]
            mtasts=mta_sts, ca_file=ca_file, rng=rng, command_timeout=command_timeout,
            data_timeout=data_timeout, local_names=(self.hostname,),
            local_addresses=_own_smtp_addresses(config), tlsrpt=self.tlsrpt)
        self.poll_interval = poll_interval
        self.batch = batch
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._inflight: dict[str, _EntryState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sems: dict[str, tuple[asyncio.Semaphore, int]] = {}
        self.dsns_sent = 0

    # -- control ------------------------------------------------------------------------------
    def wake(self) -> None:
        """Look for due entries now (call after queueing mail)."""
        self._wake.set()

    async def run(self) -> None:
        """Dispatch due entries until :meth:`stop`."""
        self._stopped.clear()
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    n = await self._dispatch()
                except Exception:
                    log.exception("queue dispatch failed")
                    n = 0
                if n >= self.batch:
                    continue  # more may be due right now
                idle = await self._idle_time()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(idle):
                        await self._wake.wait()
        finally:
            self._stopped.set()

    async def _idle_time(self) -> float:
        """How long to sleep: until the earliest entry not in flight is due, at most
        ``poll_interval`` (so a retry after a restart happens on time, not at the next
        poll). In-flight entries are skipped: their saved time is a crash fallback."""
        now = self._clock()
        try:
            # queue_due's order is "oldest first" (SQLite: by next attempt); a batch
            # is enough to find the earliest, or one close to it.
            upcoming = await self._store.queue_due(now + self.poll_interval,
                                                   len(self._inflight) + self.batch)
        except Exception:
            return self.poll_interval
        times = [e.next_attempt for e in upcoming if e.id not in self._inflight]
        if not times:
            return self.poll_interval
        return min(self.poll_interval, max(0.05, min(times) - now))

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop dispatching; let attempts in flight finish for ``grace`` seconds, then cancel.

        A cancelled attempt is safe: its next attempt time was saved before it began.
        """
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(BaseException):
                    await t
        if self.tlsrpt is not None:
            self.tlsrpt.save()  # the counts not yet reported, for the next start

    async def run_once(self) -> int:
        """One dispatch round, waiting for every attempt it started (tests, the CLI)."""
        n = await self._dispatch()
        await self.drain()
        return n

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- dispatch ------------------------------------------------------------------------------
    async def _dispatch(self) -> int:
        now = self._clock()
        due = await self._store.queue_due(now, self.batch)
        fresh = [e for e in due if e.id not in self._inflight]
        if not fresh:
            return len(due)

        # Save the next attempt time *before* attempting (crash -> retry, not loss).
        claimed: list[QueueEntry] = []

        async def claim(e: QueueEntry) -> None:
            attempts = e.attempts + 1
            nxt = now + backoff(attempts, self._qcfg)
            await self._store.queue_update(e.id, recipients=e.recipients, next_attempt=nxt,
                                           attempts=attempts, last_error=e.last_error)
            claimed.append(dataclasses.replace(e, attempts=attempts, next_attempt=nxt))

        results = await asyncio.gather(*(claim(e) for e in fresh), return_exceptions=True)
        for e, outcome in zip(fresh, results, strict=True):
            if isinstance(outcome, BaseException):
                log.error("could not claim queue entry %s: %s", e.id, outcome)

        # TLS reports go in sessions of their own: they are sent whatever the TLS policy.
        by_domain: dict[tuple[str, bool], list[Job]] = {}
        for e in claimed:
            groups: dict[str, list[QueueRecipient]] = {}
            for r in e.recipients:
                if r.state == RecipientState.PENDING:
                    groups.setdefault(domain_of(r.address), []).append(r)
            if not groups:
                continue
            self._inflight[e.id] = _EntryState(e, remaining=len(groups))
            for domain, rcpts in groups.items():
                by_domain.setdefault((domain, e.tls_report), []).append((e, rcpts))

        limit = max(1, self._qcfg.concurrency_per_destination)
        for (domain, tls_reports), jobs in by_domain.items():
            k = min(limit, len(jobs))
            for i in range(k):
                self._spawn(self._run_jobs(domain, jobs[i::k], tls_reports=tls_reports))
        return len(due)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _semaphore(self, domain: str) -> asyncio.Semaphore:
        sem, users = self._sems.get(domain, (None, 0))
        if sem is None:
            sem = asyncio.Semaphore(max(1, self._qcfg.concurrency_per_destination))
        self._sems[domain] = (sem, users + 1)
        return sem

    def _release_semaphore(self, domain: str) -> None:
        sem, users = self._sems[domain]
        if users <= 1:
            del self._sems[domain]
        else:
            self._sems[domain] = (sem, users - 1)

    async def _run_jobs(self, domain: str, jobs: list[Job], *, tls_reports: bool = False
                        ) -> None:
        sem = self._semaphore(domain)
        reported: set[str] = set()

        async def done(entry: QueueEntry, results: list[RecipientResult]) -> None:
            """A job's results are final: record them now (the courier waits for it before
            the next message's end of data; a crash later repeats none of them)."""
            reported.add(entry.id)
            await self._job_done(entry, results)

        try:
            async with sem:
                try:
                    results = await self.courier.deliver(domain, jobs, on_done=done,
                                                         tls_reports=tls_reports)
                except Exception as e:
                    log.exception("delivery to %s crashed", domain)
                    results = {entry.id: [RecipientResult(r.address, Outcome.DEFERRED, "4.3.0",
                                                          f"local error: {e}") for r in rcpts]
                               for entry, rcpts in jobs}
        finally:
            self._release_semaphore(domain)
        for entry, _ in jobs:
            if entry.id not in reported:
                await self._job_done(entry, results.get(entry.id, []))

    async def _job_done(self, entry: QueueEntry, results: list[RecipientResult]) -> None:
        """One domain's share of ``entry`` is done; record the entry once all its domains are."""
        state = self._inflight.get(entry.id)
        if state is None:
            return
        for res in results:
            state.results[res.address] = res
        state.remaining -= 1
        if state.remaining == 0:
            try:
                await self._finish(state)
            except Exception:
                log.exception("could not record the outcome of queue entry %s", entry.id)
            finally:
                self._inflight.pop(entry.id, None)
                if not self._stopping:
                    self._wake.set()  # recompute the sleep: this entry may be due soon

    # -- outcome -------------------------------------------------------------------------------
    async def _finish(self, state: _EntryState) -> None:
        entry = state.entry
        now = self._clock()
        expired = is_expired(entry.created, now, self._qcfg)
        warned = entry.delay_warned
        warn = delay_warning_due(entry.created, now, self._qcfg, already_warned=warned)
        new: list[QueueRecipient] = []
        failed: list[DSNRecipient] = []
        delayed: list[DSNRecipient] = []
        relayed: list[DSNRecipient] = []
        errors: list[str] = []
        for r in entry.recipients:
            res = state.results.get(r.address)
            if r.state != RecipientState.PENDING or res is None:
                new.append(r)
                continue
            attempts = r.attempts + 1
            outcome = res.outcome
            status = res.status
            diag = res.diagnostic if res.from_remote else f"{res.status} {res.diagnostic}"
            if outcome is Outcome.DEFERRED and expired:
                # RFC 3463 4.4.7: delivery time expired; the last error says why.
                outcome, status = Outcome.BOUNCED, "4.4.7"
                diag = f"{diag} (gave up: delivery time expired)"
            if outcome is Outcome.DELIVERED:
                new.append(dataclasses.replace(r, state=RecipientState.DELIVERED,
                                               last_status=diag, attempts=attempts))
                if not res.peer_dsn and wants(r.notify, "relayed"):
                    # RFC 3461 §6.2.1: NOTIFY=SUCCESS to a next hop that does not offer
                    # DSN: we report "relayed" (one that does reports on its own).
                    relayed.append(DSNRecipient(
                        r.address, "relayed", "2.0.0", diag, from_remote=res.from_remote,
                        remote_mta=res.remote_mta, orcpt=r.orcpt, notify=r.notify,
                        last_attempt=now))
                continue
            dsn_r = DSNRecipient(r.address, "failed" if outcome is Outcome.BOUNCED else "delayed",
                                 status, diag, from_remote=res.from_remote and status == res.status,
                                 remote_mta=res.remote_mta, orcpt=r.orcpt, notify=r.notify,
                                 last_attempt=now)
            if outcome is Outcome.BOUNCED:
                new.append(dataclasses.replace(r, state=RecipientState.BOUNCED,
                                               last_status=diag, attempts=attempts))
                failed.append(dsn_r)
                log.info("bounced %s to %s: %s", entry.id, r.address, diag)
            else:
                new.append(dataclasses.replace(r, last_status=diag, attempts=attempts))
                delayed.append(dsn_r)
                errors.append(f"{r.address}: {diag}")

        # The DSNs are made durable before the bounce is recorded (duplicate, not loss).
        if failed:
            await self._send_dsn(entry, failed, now)
        if relayed:
            await self._send_dsn(entry, relayed, now)
        if warn and delayed:
            until = entry.created + self._qcfg.expire
            await self._send_dsn(entry, delayed, now, will_retry_until=until)
            warned = True

        if not any(r.state == RecipientState.PENDING for r in new):
            await self._store.queue_delete(entry.id)
            return
        await self._store.queue_update(entry.id, recipients=new, next_attempt=entry.next_attempt,
                                       attempts=entry.attempts,
                                       last_error="; ".join(errors)[:2000], delay_warned=warned)

    async def _send_dsn(self, entry: QueueEntry, recipients: list[DSNRecipient], now: float, *,
                        will_retry_until: float | None = None) -> None:
        if not entry.sender:
            return  # a bounce of a bounce goes nowhere
        try:
            original, full = await load_original(self._store.blobs, entry)  # type: ignore[arg-type]
        except Exception as e:
            log.warning("original of %s unreadable for its DSN: %s", entry.id, e)
            original, full = b"", False
        dsn = build_dsn(entry, recipients, reporting_mta=self.hostname, original=original,
                        original_is_full=full, now=now, will_retry_until=will_retry_until)
        if dsn is None:
            return
        self.dsns_sent += 1
        if self._local_delivery is not None and await self._local_delivery(dsn, entry.sender):
            return
        blob = await self._store.blobs.put(dsn)
        await self._store.queue_add(dsn_entry(dsn, blob, entry.sender, now))
        self.wake()
