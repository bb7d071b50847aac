"""TCP listeners with connection accounting and graceful shutdown.

A :class:`Listener` wraps ``asyncio.start_server`` for one protocol handler. It
- refuses connections past the global and per-IP limits (the handler is never run;
  the socket is closed at once so a flood cannot pin file descriptors);
- keeps track of the tasks serving connections so that ``close()`` can stop
  accepting, let in-flight work finish for a grace period, then cancel the rest;
- survives accept() failures such as EMFILE: asyncio's server logs and pauses
  accepting briefly instead of spinning (Python's base_events does this).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("mailyard.listener")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Admit = Callable[[str], Awaitable[bool]]

# StreamReader buffer limit: bounds memory per connection (a line longer than this is
# an error the handler sees as LimitOverrunError / ValueError).
STREAM_LIMIT = 64 * 1024


@dataclass
class ConnectionLimits:
    max_connections: int = 10000
    max_per_ip: int = 100
    tls_handshake_timeout: float = 30.0


@dataclass
class ConnectionGroup:
    """Connection counts shared by the listeners of one server (for the global limit)."""

    active: int = 0


@dataclass
class Listener:
    name: str
    host: str
    port: int
    handler: Handler
    limits: ConnectionLimits
    ssl_context: ssl.SSLContext | None = None
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    per_ip: Counter[str] = field(default_factory=Counter)
    group: ConnectionGroup = field(default_factory=ConnectionGroup)
    #: a listening socket made elsewhere (an SMTP worker's, shared with the server)
    sock: socket.socket | None = None
    #: where the connection counts live when not here (an SMTP worker asks the server)
    admit: Admit | None = None
    release: Callable[[str], None] | None = None

    async def start(self) -> None:
        tls_timeout = self.limits.tls_handshake_timeout if self.ssl_context else None
        if self.sock is not None:
            self.server = await asyncio.start_server(
                self._on_connection, sock=self.sock, ssl=self.ssl_context,
                ssl_handshake_timeout=tls_timeout, limit=STREAM_LIMIT)
            return
        self.server = await asyncio.start_server(
            self._on_connection,
            self.host,
            self.port,
            family=socket.AF_INET6 if ":" in self.host else socket.AF_INET,
            ssl=self.ssl_context,
            ssl_handshake_timeout=tls_timeout,
            limit=STREAM_LIMIT,
            reuse_address=True,
            backlog=1024,
        )
        sock = self.server.sockets[0]
        self.port = sock.getsockname()[1]

    def try_admit(self, ip: str) -> bool:
        """Count a connection from ``ip`` in, unless it is past a limit."""
        if self.group.active >= self.limits.max_connections or \
                self.per_ip[ip] >= self.limits.max_per_ip:
            return False
        self.per_ip[ip] += 1
        self.group.active += 1
        return True

    def release_ip(self, ip: str) -> None:
        self.group.active -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = peer[0] if peer else "?"
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)  # type: ignore[arg-type]  # (drain also waits for an admission)
        if self.admit is None:
            admitted = self.try_admit(ip)
        else:
            try:
                admitted = await self.admit(ip)
            except Exception:
                admitted = False  # the server is gone: the worker is about to exit
        if not admitted:
            self.tasks.discard(task)  # type: ignore[arg-type]
            log.warning("%s: refusing %s: too many connections", self.name, ip)
            writer.transport.abort()
            return
        try:
            await self.handler(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # drain() gave up on it: the connection task ends here (re-raising would
            # only make asyncio's stream callback log the cancellation as an error).
            pass
        except Exception:  # the handler must not take the listener down
            log.exception("%s: unhandled error serving %s", self.name, ip)
        finally:
            self.tasks.discard(task)  # type: ignore[arg-type]
            if self.release is not None:
                self.release(ip)
            else:
                self.release_ip(ip)
            with contextlib.suppress(Exception):
                writer.transport.abort() if writer.transport.is_closing() else writer.close()

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for in-flight connections, then cancel them."""
        if self.tasks:
            _done, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
