"""An SMTP receiver process: the MX listener's sessions, off the server's event loop.

Python runs one thread of Python at a time per process, and on the MX path that
thread was the limit: the SMTP session, the SPF/DKIM/DMARC checks and the trace
headers cost ~200-250 us of it per message, against ~60-80 us for the store's part
(bench_smtp; the notes on issue #2). So ``mailyard serve`` may run the MX listener
in ``[smtp] workers`` child processes (this module) that accept on the listening
socket the server made and share with them, while the server keeps the store,
the queue and every other listener.

A worker owns no storage. It spools a message itself, hashes it (the blob id),
and hands the finished message — trace and verdict headers, the spooled bytes or,
for a message that spilled to disk, the spool file's path — to the server with
one ``deliver``/``queue_add`` call over the channel (server/channel.py). It answers
250 only when the server's reply to that call says the group commit is durable,
exactly as the in-process path does. Reads (recipients, quota, DKIM keys for
ARC) are calls too, mostly absorbed by the recipient cache.

Connection limits stay global: a worker asks the server to admit each connection
(the per-IP and total counts live in the server) and tells it when one ends.

A worker exits when the server goes away (the channel closes): without the
store it could only refuse mail. SIGTERM drains it like the server; SIGHUP reloads
its configuration and certificate. The server restarts a worker that died.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from mailyard.server.channel import Channel, ChannelClosed, WireBlob, decode_error, open_channel
from mailyard.storage.blobs import FileSpool
from mailyard.storage.interface import Spool, StorageError
from mailyard.storage.models import BlobRef, DeliveryTarget, QueueEntry
from mailyard.storage.sqlite.segments import content_id

log = logging.getLogger("mailyard.worker")

# What a worker may ask of the server's store: the MX path's reads and its writes.
CALLS = frozenset({"get_domain", "get_account", "get_account_by_id", "get_alias",
                   "account_usage", "list_dkim_keys", "record_auth_result",
                   "deliver", "queue_add", "admit", "release"})


class RemoteBlobs:
    """The ``BlobStore`` part a receiver needs: spools and ``stage``."""

    def __init__(self, tmp_dir: Any) -> None:
        self.tmp_dir = tmp_dir

    def new_spool(self) -> FileSpool:
        return FileSpool(self.tmp_dir)

    async def stage(self, spool: Spool, *, prefix: bytes = b"") -> WireBlob:
        """Hashed as the server's store stages (the same blob id); a spilled spool goes
        by its file's path, an in-memory one by value."""
        blob_id, size = await content_id(spool, prefix)
        path = spool.spill_path() if isinstance(spool, FileSpool) else None
        return WireBlob(blob_id=blob_id, size=size, prefix=prefix, path=path,
                        data=None if path is not None else spool.read_all())


class RemoteStore:
    """The store of the server process, reached over the channel (the calls in CALLS)."""

    def __init__(self, channel: Channel, tmp_dir: Any) -> None:
        self.channel = channel
        self.blobs = RemoteBlobs(tmp_dir)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = asyncio.Event()

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.closed.is_set():
            raise StorageError("the server process is gone")
        call_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        try:
            self.channel.send(("call", call_id, method, args, kwargs))
        except ChannelClosed:
            self._pending.pop(call_id, None)
            raise StorageError("the server process is gone") from None
        return await fut

    def _note(self, method: str, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(ChannelClosed):
            self.channel.send(("note", method, args, kwargs))

    async def run(self) -> None:
        """Read the server's answers until the channel closes."""
        try:
            while True:
                msg = await self.channel.recv()
                fut = self._pending.pop(msg[1], None) if len(msg) == 3 else None
                if fut is None or fut.done():
                    continue
                if msg[0] == "ok":
                    fut.set_result(msg[2])
                else:
                    fut.set_exception(decode_error(msg[2]))
        except ChannelClosed:
            pass
        finally:
            self.closed.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(StorageError("the server process is gone"))
            self._pending.clear()

    # -- reads ---------------------------------------------------------------------------
    async def get_domain(self, name: str) -> Any:
        return await self._call("get_domain", name)

    async def get_account(self, address: str) -> Any:
        return await self._call("get_account", address)

    async def get_account_by_id(self, account_id: int) -> Any:
        return await self._call("get_account_by_id", account_id)

    async def get_alias(self, source: str) -> Any:
        return await self._call("get_alias", source)

    async def account_usage(self, account_id: int) -> int:
        return int(await self._call("account_usage", account_id))

    async def list_dkim_keys(self, domain: str | None = None) -> Any:
        return await self._call("list_dkim_keys", domain)

    # -- writes --------------------------------------------------------------------------
    async def record_auth_result(self, **kwargs: Any) -> None:
        # Written with the next group commit and never waited for (as in-process):
        # sent before the deliver call, it is queued on the server before that runs.
        self._note("record_auth_result", **kwargs)

    async def deliver(self, blob: BlobRef, targets: Sequence[DeliveryTarget], *,
                      queue: QueueEntry | None = None, internaldate: float | None = None,
                      text: Any = None) -> Any:
        return await self._call("deliver", blob, list(targets), queue=queue,
                                internaldate=internaldate, text=text)

    async def queue_add(self, entry: QueueEntry) -> Any:
        return await self._call("queue_add", entry)

    # -- connection accounting -----------------------------------------------------------
    async def admit(self, ip: str) -> bool:
        return bool(await self._call("admit", ip))

    def release(self, ip: str) -> None:
        self._note("release", ip)


# -- the worker process ------------------------------------------------------------------


async def _serve(data_dir: str, listen_fd: int, channel_fd: int, index: int) -> int:
    from mailyard.config import ConfigError, load_config
    from mailyard.mailauth.resolver import DnsResolver
    from mailyard.policy.auth import Authenticator
    from mailyard.policy.recipients import RecipientResolver
    from mailyard.server.app import GRACE_SECONDS, import_package, load_tls
    from mailyard.server.context import ServerContext
    from mailyard.server.listeners import ConnectionLimits, Listener
    from mailyard.server.smtp import handle_smtp

    import_package()  # as the server does: one version of the code until restarted
    config = load_config(data_dir)
    channel = await open_channel(socket.socket(fileno=channel_fd))
    lsock = socket.socket(fileno=listen_fd)
    host, port = lsock.getsockname()[:2]
    store = RemoteStore(channel, os.path.join(config.data_dir, "blobs", "tmp"))
    reader = asyncio.create_task(store.run())
    tls = load_tls(config)
    ctx = ServerContext(
        config=config, store=store, tls=tls,  # type: ignore[arg-type]
        auth=Authenticator(store),  # type: ignore[arg-type]  # (no AUTH on the MX port)
        recipients=RecipientResolver(store),  # type: ignore[arg-type]
        resolver=DnsResolver(config.dns.nameservers or None, timeout=config.dns.timeout),
    )
    limits = ConnectionLimits(max_connections=config.limits.max_connections,
                              max_per_ip=config.limits.max_connections_per_ip,
                              tls_handshake_timeout=min(30.0, config.limits.preauth_timeout))
    listener = Listener(name="smtp", host=str(host), port=int(port),
                        handler=functools.partial(handle_smtp, ctx=ctx, mode="mx",
                                                  implicit_tls=False),
                        limits=limits, sock=lsock, admit=store.admit, release=store.release)
    await listener.start()
    stopping = asyncio.Event()

    def reload() -> None:
        try:
            new = load_config(data_dir)
            fresh = load_tls(new)
        except ConfigError as e:
            log.error("worker %d: reload failed, keeping the running config: %s", index, e)
            return
        if fresh is not None:
            # A fresh context, not load_cert_chain on the running one: that adds a
            # certificate per key type, so an RSA cert replacing an EC one never showed.
            # STARTTLS reads ctx.tls at each upgrade.
            ctx.tls = fresh
        ctx.config = new
        ctx.recipients.invalidate()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    gc.freeze()  # as the server does (server/app.py)
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(10_000, gen1, gen2)
    channel.send(("ready",))
    stop = asyncio.create_task(stopping.wait())
    gone = asyncio.create_task(store.closed.wait())
    await asyncio.wait({stop, gone}, return_when=asyncio.FIRST_COMPLETED)
    listener.stop_accepting()
    ctx.quiesce.stop()
    if gone.done():
        log.error("worker %d: the server process is gone, exiting", index)
        code = 1
    else:
        await listener.drain(GRACE_SECONDS)
        code = 0
    for t in (stop, gone, reader):
        t.cancel()
    channel.close()
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mailyard-smtp-worker")
    p.add_argument("--data", required=True)
    p.add_argument("--listen-fd", type=int, required=True)
    p.add_argument("--channel-fd", type=int, required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    from mailyard.server.logsink import configure

    configure(args.log_level, name_suffix=f"[w{args.index}]")
    coro = _serve(args.data, args.listen_fd, args.channel_fd, args.index)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    sys.exit(main())
