"""The server's side of the SMTP receiver processes (server/smtpworker.py).

``WorkerPool`` starts ``[smtp] workers`` children that accept on the MX listening
socket, answers their store calls with the server's own store, keeps their
connection counts in the server's MX listener (so per-IP and total limits hold
across workers), restarts a worker that dies and stops them all on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mailyard.server.channel import Channel, ChannelClosed, WireBlob, encode_error, open_channel
from mailyard.server.context import ServerContext
from mailyard.server.listeners import Listener
from mailyard.server.smtpworker import CALLS
from mailyard.storage.models import BlobRef, QueueEntry
from mailyard.storage.sqlite.segments import FileSource, StagedBlob

log = logging.getLogger("mailyard.workers")

READY_TIMEOUT = 60.0
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # a worker that keeps dying, backed off
STABLE_AFTER = 30.0  # a worker that ran this long starts the back-off afresh when it dies


def auto_workers() -> int:
    """One receiver per CPU the process may use beyond the server's own, at most 4; none
    on a single CPU (there the hand-off would only add work)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 0 if cpus < 2 else min(cpus - 1, 4)


class _BytesSource:
    """A worker's in-memory message, standing in for its spool."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        data = self.data
        if len(data) <= size:
            yield data
            return
        view = memoryview(data)
        for i in range(0, len(view), size):
            yield view[i : i + size]  # type: ignore[misc]


def _staged(blob: BlobRef) -> BlobRef:
    if not isinstance(blob, WireBlob):
        return blob
    spool: Any = FileSource(Path(blob.path)) if blob.path is not None else \
        _BytesSource(blob.data or b"")
    return StagedBlob(blob_id=blob.blob_id, size=blob.size, prefix=blob.prefix, spool=spool)


@dataclasses.dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    admitted: Counter[str] = dataclasses.field(default_factory=Counter)
    started: float = 0.0
    failures: int = 0


class WorkerPool:
    def __init__(self, ctx: ServerContext, listener: Listener, sock: socket.socket,
                 count: int) -> None:
        self.ctx = ctx
        self.listener = listener  # the MX listener's counts (it accepts nothing itself)
        self.sock = sock
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._supervisors: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for w in self.workers:
            await self._spawn(w)
        waits = [asyncio.create_task(w.ready.wait()) for w in self.workers]
        deadline = loop.time() + READY_TIMEOUT
        for w, t in zip(self.workers, waits, strict=True):
            exited = asyncio.create_task(w.proc.wait()) if w.proc else None
            done, _ = await asyncio.wait({t, *([exited] if exited else [])},
                                         timeout=max(0.1, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if exited is not None and not exited.done():
                exited.cancel()
            if t not in done:
                for x in waits:
                    x.cancel()
                await self.stop(0)
                raise RuntimeError(f"SMTP worker {w.index} did not start")
        self._supervisors = [asyncio.create_task(self._supervise(w)) for w in self.workers]

    async def _spawn(self, w: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        w.ready = asyncio.Event()
        try:
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mailyard.server.smtpworker",
                "--data", self.ctx.config.data_dir, "--index", str(w.index),
                "--listen-fd", str(self.sock.fileno()), "--channel-fd", str(theirs.fileno()),
                "--log-level", self.ctx.config.log.level,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(self.sock.fileno(), theirs.fileno()))
        finally:
            theirs.close()
        w.started = asyncio.get_running_loop().time()
        w.channel = await open_channel(ours)
        self._spawn_task(self._serve(w, w.channel))

    def _spawn_task(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _supervise(self, w: _Worker) -> None:
        loop = asyncio.get_running_loop()
        while True:
            assert w.proc is not None
            code = await w.proc.wait()
            self._forget(w)
            if self.stopping:
                return
            lived = loop.time() - w.started
            w.failures = 0 if lived > STABLE_AFTER else w.failures + 1
            delay = RESTART_DELAYS[min(w.failures, len(RESTART_DELAYS) - 1)]
            log.error("SMTP worker %d exited with status %s; restarting in %.1f s",
                      w.index, code, delay)
            await asyncio.sleep(delay)
            if self.stopping:
                return
            try:
                await self._spawn(w)
            except OSError as e:
                log.error("cannot restart SMTP worker %d: %s", w.index, e)
                w.failures += 1
                await asyncio.sleep(RESTART_DELAYS[-1])
                continue

    def _forget(self, w: _Worker) -> None:
        """A worker is gone: its connections are gone with it."""
        for ip, n in w.admitted.items():
            for _ in range(n):
                self.listener.release_ip(ip)
        w.admitted.clear()
        if w.channel is not None:
            w.channel.close()
            w.channel = None

    async def _serve(self, w: _Worker, channel: Channel) -> None:
        try:
            while True:
                msg = await channel.recv()
                kind = msg[0]
                if kind == "call":
                    self._spawn_task(self._answer(w, channel, msg[1], msg[2], msg[3], msg[4]))
                elif kind == "note":
                    self._spawn_task(self._answer(w, None, 0, msg[1], msg[2], msg[3]))
                elif kind == "ready":
                    w.ready.set()
        except ChannelClosed:
            pass
        except Exception:
            log.exception("SMTP worker %d: bad message on its channel", w.index)
            if w.proc is not None and w.proc.returncode is None:
                w.proc.kill()

    async def _answer(self, w: _Worker, channel: Channel | None, call_id: int, method: str,
                      args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            result = await self._call(w, method, args, kwargs)
        except Exception as e:
            if channel is None:
                log.warning("SMTP worker %d: %s failed: %s", w.index, method, e)
                return
            reply: tuple[Any, ...] = ("err", call_id, encode_error(e))
        else:
            if channel is None:
                return
            reply = ("ok", call_id, result)
        with contextlib.suppress(ChannelClosed):
            channel.send(reply)

    async def _call(self, w: _Worker, method: str, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        if method not in CALLS:
            raise ValueError(f"not a call a worker may make: {method!r}")
        if method == "admit":
            ok = self.listener.try_admit(args[0])
            if ok:
                w.admitted[args[0]] += 1
            return ok
        if method == "release":
            if w.admitted[args[0]] > 0:
                w.admitted[args[0]] -= 1
                if not w.admitted[args[0]]:
                    del w.admitted[args[0]]
                self.listener.release_ip(args[0])
            return None
        store = self.ctx.store
        if method == "deliver":
            queue = kwargs.get("queue")
            if isinstance(queue, QueueEntry):
                kwargs["queue"] = dataclasses.replace(queue, blob=_staged(queue.blob))
            result = await store.deliver(_staged(args[0]), *args[1:], **kwargs)
            if queue is not None:
                self.ctx.wake_queue()
            return result
        if method == "queue_add":
            entry = args[0]
            await store.queue_add(dataclasses.replace(entry, blob=_staged(entry.blob)))
            self.ctx.wake_queue()
            return None
        return await getattr(store, method)(*args, **kwargs)

    def reload(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGHUP)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker (each drains its sessions, still delivering through us),
        wait up to ``grace`` + 5 s, then kill what is left."""
        self.stopping = True
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if procs:
            _done, pending = await asyncio.wait([asyncio.create_task(p.wait()) for p in procs],
                                                timeout=grace + 5)
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for t in self._supervisors:
            t.cancel()
        for w in self.workers:
            self._forget(w)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        self.sock.close()
