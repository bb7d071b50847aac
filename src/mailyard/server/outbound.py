"""Wires the outbound queue runner into the server process.

DSNs for local senders are delivered straight into their mailbox (durably, like any
other delivery); for remote senders the runner queues them with the null sender.
"""

from __future__ import annotations

import functools

from mailyard.queue.runner import QueueRunner
from mailyard.server.context import ServerContext
from mailyard.server.delivery import deliver_dsn_locally


async def start_queue_runner(ctx: ServerContext) -> QueueRunner:
    return QueueRunner(ctx.store, ctx.resolver, ctx.config, clock=ctx.clock,
                       local_delivery=functools.partial(deliver_dsn_locally, ctx),
                       hostname=ctx.hostname,
                       command_timeout=ctx.config.limits.command_timeout,
                       data_timeout=ctx.config.limits.data_timeout)
