"""Wires the outbound queue runner into the server process.

DSNs for local senders are delivered straight into their mailbox (durably, like any
other delivery); for remote senders the runner queues them with the null sender.

TLS reports (queue/tlsrpt.py): ``run_tls_reports`` saves the counts every
TLSRPT_INTERVAL seconds (and first TLSRPT_FIRST seconds after start) and sends the
reports of complete days, DKIM-signed with the submitter domain's active keys and
queued from the null sender.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging

from mailyard.queue.dsn import dsn_entry
from mailyard.queue.runner import QueueRunner
from mailyard.queue.tlsrpt import make_aiohttp_post, send_due
from mailyard.server.context import ServerContext
from mailyard.server.delivery import deliver_dsn_locally

log = logging.getLogger(__name__)

TLSRPT_INTERVAL = 300.0  # seconds between passes: counts saved, complete days reported
TLSRPT_FIRST = 5.0  # the first pass, soon after start: days that ended while we were down


async def start_queue_runner(ctx: ServerContext) -> QueueRunner:
    return QueueRunner(ctx.store, ctx.resolver, ctx.config, clock=ctx.clock,
                       local_delivery=functools.partial(deliver_dsn_locally, ctx),
                       hostname=ctx.hostname,
                       command_timeout=ctx.config.limits.command_timeout,
                       data_timeout=ctx.config.limits.data_timeout)


async def send_tls_reports(ctx: ServerContext, runner: QueueRunner) -> int:
    """One pass: the reports of every complete day, sent or queued; returns how many."""
    reporter = runner.tlsrpt
    if reporter is None:
        return 0
    cfg = ctx.config.tlsrpt
    submitter = cfg.submitter
    if not submitter:
        domains = await ctx.store.list_domains()
        submitter = domains[0].name if domains else ctx.hostname
    submitter = submitter.lower().rstrip(".")

    async def sign(message: bytes) -> bytes:
        """§3: reports by mail carry a DKIM signature of the reporting domain."""
        from mailyard.mailauth.dkim import sign_message

        out = b""
        for _d, selector, algorithm, pem, active in await ctx.store.list_dkim_keys(submitter):
            if active:
                out += sign_message(message, domain=submitter, selector=selector,
                                    private_pem=pem, algorithm=algorithm)
        if not out:
            raise ValueError(f"no active DKIM key for {submitter}: receivers ignore "
                             "unsigned reports (mailyard dkim add)")
        return out

    async def queue_mail(to: str, message: bytes) -> None:
        blob = await ctx.store.blobs.put(message)
        entry = dataclasses.replace(dsn_entry(message, blob, to, ctx.clock()), tls_report=True)
        await ctx.store.queue_add(entry)
        runner.wake()

    ca_file = ctx.config.queue.ca_file or None
    return await send_due(reporter, resolver=ctx.resolver, submitter=submitter,
                          organization=cfg.organization or submitter,
                          contact=cfg.contact or f"postmaster@{submitter}",
                          queue_mail=queue_mail,
                          post=make_aiohttp_post(ca_file=ca_file, resolver=ctx.resolver),
                          sign=sign)


async def run_tls_reports(ctx: ServerContext, runner: QueueRunner,
                          interval: float = TLSRPT_INTERVAL, first: float = TLSRPT_FIRST) -> None:
    """Until cancelled: save the counts and send what is due, ``first`` seconds after
    start, then every ``interval`` seconds."""
    delay = first
    while True:
        await asyncio.sleep(delay)
        delay = interval
        try:
            await send_tls_reports(ctx, runner)
        except Exception:
            log.exception("sending TLS reports failed")
