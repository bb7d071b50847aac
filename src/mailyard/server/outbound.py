"""Wires the outbound queue runner into the server process.

DSNs for local senders are delivered straight into their mailbox (durably, like any
other delivery); for remote senders the runner queues them with the null sender.
"""

from __future__ import annotations

from mailyard.message.text import index_text
from mailyard.policy.recipients import Verdict
from mailyard.queue.runner import QueueRunner
from mailyard.server.context import ServerContext
from mailyard.storage.models import DeliveryTarget


async def start_queue_runner(ctx: ServerContext) -> QueueRunner:
    async def local_delivery(dsn: bytes, recipient: str) -> bool:
        res = await ctx.recipients.resolve(recipient)
        if res.verdict is not Verdict.LOCAL or not res.account_ids:
            return False
        content = b"Return-Path: <>\r\n" + dsn
        blob = await ctx.store.blobs.put(content)
        await ctx.store.deliver(blob, [DeliveryTarget(account_id=i) for i in res.account_ids],
                                internaldate=ctx.clock(), text=index_text)
        return True

    return QueueRunner(ctx.store, ctx.resolver, ctx.config, clock=ctx.clock,
                       local_delivery=local_delivery, hostname=ctx.hostname,
                       command_timeout=ctx.config.limits.command_timeout,
                       data_timeout=ctx.config.limits.data_timeout)
