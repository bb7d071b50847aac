"""``mailyard serve``: every listener, the queue runner and the HTTP endpoint in one process.

Signals: SIGTERM/SIGINT stop accepting, let in-flight transactions finish (a grace
period), close the store and exit 0. SIGHUP reloads the config file's TLS
certificate and key (users, domains and aliases live in the store and are read
fresh on every lookup, so they need no reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mailyard.config import Config, ConfigError, parse_hostport
from mailyard.mailauth.resolver import DnsResolver, Resolver
from mailyard.policy.auth import Authenticator
from mailyard.policy.recipients import RecipientResolver
from mailyard.server.context import ServerContext
from mailyard.server.listeners import ConnectionGroup, ConnectionLimits, Listener
from mailyard.server.tls import follow_current, server_context
from mailyard.storage.interface import Store

log = logging.getLogger("mailyard")

GRACE_SECONDS = 20.0
MAINTAIN_FIRST = 600.0  # seconds after start of the first storage housekeeping pass ...
MAINTAIN_EVERY = 3600.0  # ... and between passes (Store.maintain)


def open_store(config: Config, *, serving: bool = False) -> Store:
    """The configured store. The server must own its data directory (no second server on it);
    admin commands open it beside a running server without recovery (storage/sqlite/store.py)."""
    from mailyard.storage import open_store as open_backend

    return open_backend(config.data_dir, require_owner=serving)


def load_tls(config: Config) -> ssl.SSLContext:
    cert, key = config.path(config.tls.cert), config.path(config.tls.key)
    for name, path in (("tls.cert", cert), ("tls.key", key)):
        if not path.exists():
            # Without it there is no 465/993/995 and no STARTTLS, so no client could log
            # in and no peer could encrypt: a bad value, not a mode to start in.
            raise ConfigError(f"{name}: no such file {path} (init writes a self-signed one; "
                              "point [tls] cert and key at yours)")
    try:
        return server_context(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"tls: cannot load {cert} / {key}: {e}") from None


def import_package() -> None:
    """Import every module of mailyard now, before the first session.

    Many are imported where first needed (an IMAP command's module, DKIM signing,
    the DSN builder...), some to break import cycles, some to keep a CLI command
    light. In a server that would read them at the first use, from whatever code is
    on disk by then: after an upgrade or a checkout under a running server, a
    session would mix old and new modules, or fail (451, a dropped IMAP session). So
    the server reads all of them at start and runs as one version until restarted.
    The test helpers and the CLI are left out. (Measured: a server starts ~0.05 s
    later, and its peak RSS under bench_smtp is unchanged.)"""
    import importlib
    import pkgutil

    import mailyard

    for info in pkgutil.walk_packages(mailyard.__path__, "mailyard."):
        if info.name.startswith(("mailyard.testing", "mailyard.cli", "mailyard.__main__")):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as e:  # an optional dependency this instance does not use
            log.debug("not imported: %s: %s", info.name, e)


@dataclass
class App:
    config: Config
    store: Store | None = None
    resolver: Resolver | None = None
    ctx: ServerContext | None = None
    listeners: list[Listener] = field(default_factory=list)
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    queue_runner: Any = None
    http_runner: Any = None
    http_ports: dict[str, tuple[str, int]] = field(default_factory=dict)
    workers: Any = None  # the MX listener's receiver processes (server/workerpool.py)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _refresh: Any = None  # the auth refresh a SIGHUP started (a reference keeps it alive)

    async def start(self) -> None:
        import_package()
        cfg = self.config
        tls = load_tls(cfg)
        # Listeners keep this context: a reload replaces ctx.tls, and their handshakes
        # switch to that (STARTTLS reads ctx.tls when it upgrades).
        if tls is not None:
            follow_current(tls, lambda: self.ctx.tls if self.ctx is not None else None)
        if self.store is None:
            self.store = open_store(cfg, serving=True)
        await self.store.open()
        if self.resolver is None:
            self.resolver = DnsResolver(cfg.dns.nameservers or None, timeout=cfg.dns.timeout)
        self.ctx = ServerContext(
            config=cfg,
            store=self.store,
            tls=tls,
            auth=Authenticator(self.store, base_delay=cfg.auth.failure_delay,
                               max_delay=cfg.auth.max_failure_delay),
            recipients=RecipientResolver(self.store),
            resolver=self.resolver,
        )
        await self.ctx.auth.refresh()  # SCRAM-SHA-256 offered or not
        await self._start_queue()
        self.background.append(asyncio.create_task(run_maintenance(self.store)))
        limits = ConnectionLimits(max_connections=cfg.limits.max_connections,
                                  max_per_ip=cfg.limits.max_connections_per_ip,
                                  # a handshake is pre-authentication time too
                                  tls_handshake_timeout=min(30.0, cfg.limits.preauth_timeout))
        group = ConnectionGroup()
        workers = self._smtp_workers()
        for name, handler, implicit in self._handlers():
            spec = getattr(cfg.listen, name)
            if not spec:
                continue
            if implicit and tls is None:
                log.warning("%s: no TLS certificate, listener not started", name)
                continue
            host, port = parse_hostport(spec, key=f"listen.{name}")
            lst = Listener(name=name, host=host, port=port, handler=handler, limits=limits,
                           ssl_context=tls if implicit else None, group=group)
            try:
                if name == "smtp" and workers > 0:
                    await self._start_workers(lst, workers)
                else:
                    await lst.start()
            except OSError as e:
                raise ConfigError(f"listen.{name}: cannot listen on {spec}: {e.strerror or e}") from None
            self.listeners.append(lst)
        if cfg.listen.http or cfg.listen.https:
            await self._start_http()

    def _smtp_workers(self) -> int:
        from mailyard.server.workerpool import auto_workers

        n = self.config.smtp.workers
        return auto_workers() if n == "auto" else int(n)

    async def _start_workers(self, lst: Listener, count: int) -> None:
        """The MX listener in receiver processes: this process binds the socket (so port 0
        resolves here and a restarted worker finds it open), keeps the connection counts
        in ``lst`` and answers the workers' store calls."""
        import socket

        from mailyard.server.workerpool import WorkerPool

        assert self.ctx is not None
        family = socket.AF_INET6 if ":" in lst.host else socket.AF_INET
        sock = socket.create_server((lst.host, lst.port), family=family, backlog=1024)
        sock.setblocking(False)
        lst.port = sock.getsockname()[1]
        pool = WorkerPool(self.ctx, lst, sock, count)
        try:
            await pool.start()
        except RuntimeError as e:
            raise ConfigError(f"listen.smtp: {e}") from None
        self.workers = pool

    def _handlers(self) -> list[tuple[str, Callable[..., Awaitable[None]], bool]]:
        """(listener name, handler, implicit TLS) for every protocol listener."""
        from mailyard.server.imap import handle_imap
        from mailyard.server.pop3 import handle_pop3
        from mailyard.server.smtp import handle_smtp

        assert self.ctx is not None
        ctx = self.ctx
        return [
            ("smtp", functools.partial(handle_smtp, ctx=ctx, mode="mx", implicit_tls=False), False),
            ("submission", functools.partial(handle_smtp, ctx=ctx, mode="submission",
                                             implicit_tls=False), False),
            ("submissions", functools.partial(handle_smtp, ctx=ctx, mode="submission",
                                              implicit_tls=True), True),
            ("imap", functools.partial(handle_imap, ctx=ctx, implicit_tls=False), False),
            ("imaps", functools.partial(handle_imap, ctx=ctx, implicit_tls=True), True),
            ("pop3", functools.partial(handle_pop3, ctx=ctx, implicit_tls=False), False),
            ("pop3s", functools.partial(handle_pop3, ctx=ctx, implicit_tls=True), True),
        ]

    async def _start_queue(self) -> None:
        from mailyard.server.outbound import start_queue_runner

        assert self.ctx is not None
        self.queue_runner = await start_queue_runner(self.ctx)
        self.background.append(asyncio.create_task(self.queue_runner.run()))
        self.ctx.wake_queue = self.queue_runner.wake
        if self.queue_runner.tlsrpt is not None:
            from mailyard.server.outbound import run_tls_reports

            self.background.append(asyncio.create_task(
                run_tls_reports(self.ctx, self.queue_runner)))

    async def _start_http(self) -> None:
        from mailyard.web.app import start_http

        assert self.ctx is not None
        try:
            self.http_runner, self.http_ports = await start_http(self.ctx)
        except OSError as e:
            raise ConfigError(f"listen.http/https: cannot listen: {e.strerror or e}") from None

    def reload(self) -> None:
        """SIGHUP: reload the config file, TLS material and the user/alias cache.

        The certificate and key go into a fresh context (as at start) that replaces
        ``ctx.tls``: STARTTLS uses it from the next upgrade, and the implicit-TLS and
        HTTPS listeners switch to it per handshake (``follow_current``). Loading them
        into the running context instead would keep the old certificate of any other
        key type (OpenSSL holds one per type)."""
        if self.ctx is None:
            return
        try:
            from mailyard.config import load_config

            new = load_config(self.config.data_dir)
            tls = load_tls(new)
        except ConfigError as e:
            log.error("reload failed, keeping the running config: %s", e)
            return
        self.ctx.tls = tls
        if new.listen != self.config.listen:
            log.warning("listen addresses changed: they take effect at the next restart")
            new = dataclasses.replace(new, listen=self.config.listen)
        # The resolver and the queue runner are built once, at start: their settings
        # are kept until a restart (said, not silently ignored).
        for section in ("queue", "dns"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("[%s] changed: it takes effect at the next restart", section)
                new = dataclasses.replace(new, **{section: getattr(self.config, section)})
        # New sessions see the new limits and auth settings; users, domains and
        # aliases are re-read from the store once the recipient cache is dropped.
        self.config = new
        self.ctx.config = new
        self.ctx.recipients.invalidate()
        self.ctx.auth.cache.clear()
        # Passwords set by 'mailyard user' meanwhile may have given the last accounts
        # their SCRAM secrets (or taken one away): offered or not, from now on.
        self._refresh = asyncio.ensure_future(self.ctx.auth.refresh())
        if self.workers is not None:
            self.workers.reload()
        log.info("reloaded configuration, certificates and users")

    async def stop(self) -> None:
        for lst in self.listeners:
            lst.stop_accepting()
        if self.ctx is not None:
            self.ctx.quiesce.stop()  # idle sessions close now, busy ones when done
        if self.queue_runner is not None:
            with contextlib.suppress(Exception):
                await self.queue_runner.stop()
        # Workers drain too, delivering through this process until they exit.
        await asyncio.gather(*(lst.drain(GRACE_SECONDS) for lst in self.listeners),
                             *([self.workers.stop(GRACE_SECONDS)] if self.workers else []))
        for t in self.background:
            t.cancel()
        for t in self.background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.queue_runner is not None and self.queue_runner.tlsrpt is not None:
            self.queue_runner.tlsrpt.save()  # after the report pass, if one was cut short
        if self.http_runner is not None:
            with contextlib.suppress(Exception):
                await self.http_runner.cleanup()
        if self.store is not None:
            await self.store.close()

    def wake_queue(self) -> None:
        if self.ctx is not None:
            self.ctx.wake_queue()

    def write_runtime(self) -> None:
        """Write DIR/run/listeners.json with the bound addresses (port 0 becomes real)."""
        import json
        import os
        from pathlib import Path

        run_dir = Path(self.config.data_dir) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        info = {lst.name: {"host": lst.host, "port": lst.port} for lst in self.listeners}
        if self.ctx is not None:
            self.ctx.bound_ports.update({lst.name: lst.port for lst in self.listeners})
        for name, (host, port) in self.http_ports.items():
            info[name] = {"host": host, "port": port}
        info["pid"] = os.getpid()  # type: ignore[assignment]
        tmp = run_dir / "listeners.json.tmp"
        tmp.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, run_dir / "listeners.json")

    def describe(self) -> list[str]:
        out = [f"{lst.name:<12} {lst.address}" for lst in self.listeners]
        for name, (host, port) in self.http_ports.items():
            out.append(f"{name:<12} {f'[{host}]' if ':' in host else host}:{port}")
        return out


async def run_maintenance(store: Store, *, first: float = MAINTAIN_FIRST,
                          every: float = MAINTAIN_EVERY) -> None:
    """Until cancelled: ``store.maintain()`` ``first`` seconds after start, then every
    ``every`` seconds (the SQLite backend reclaims the space of deleted mail)."""
    delay = first
    while True:
        await asyncio.sleep(delay)
        delay = every
        try:
            await store.maintain()
        except Exception:
            log.exception("storage housekeeping failed")


async def serve(config: Config, *, ready: Callable[[App], None] | None = None) -> int:
    app = App(config)
    await app.start()
    # Everything built so far (modules, config, the store) lives as long as the process:
    # move it out of the collector's sight, so that full collections under load scan only
    # the objects made since (they were ~8% of the event loop's time per message). And
    # collect the young generation after 10,000 net allocations instead of 700: nearly
    # every object a session makes dies by reference counting, so the frequent young
    # collections found little and cost ~5 us per SMTP message (240 vs 10 per 6,000).
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(10_000, gen1, gen2)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload)
    # SIGUSR1: look at the queue now (`mailyard queue retry` changed it from outside).
    loop.add_signal_handler(signal.SIGUSR1, app.wake_queue)
    app.write_runtime()
    if ready is not None:
        ready(app)
    await app.stopping.wait()
    log.info("shutting down: finishing in-flight sessions")
    await app.stop()
    return 0


def run(config: Config, *, ready: Callable[[App], None] | None = None) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(config, ready=ready))
    return uvloop.run(serve(config, ready=ready))
