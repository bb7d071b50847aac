"""Shared helpers for the outbound queue tests: sinks on 127.0.0.x, a runner, a queue entry."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mailyard.config import Config, QueueConfig
from mailyard.queue.runner import QueueRunner
from mailyard.server.tls import make_ca, make_certificate, server_context
from mailyard.storage.models import QueueEntry, QueueRecipient
from mailyard.testing.clock import FakeClock
from mailyard.testing.dns import FakeResolver
from mailyard.testing.memqueue import MemQueueStore
from mailyard.testing.smtpsink import SMTPSink

MESSAGE = b"From: a@src.test\r\nTo: b@dest.test\r\nSubject: hi\r\n\r\nHello.\r\n"


async def start_sinks(*sinks: SMTPSink) -> int:
    """Start every sink on the same port, on 127.0.0.1, 127.0.0.2, ... (one port per MX set,
    since ``queue.outbound_port`` is one port for every MX)."""
    for _ in range(20):
        port = await sinks[0].start("127.0.0.1", 0)
        try:
            for i, s in enumerate(sinks[1:], start=2):
                await s.start(f"127.0.0.{i}", port)
        except OSError:
            for s in sinks:
                await s.stop_listening()
            continue
        return port
    raise RuntimeError("no common port")


@dataclass
class Env:
    store: MemQueueStore  # or SQLiteStore (same queue_* and blobs)
    clock: FakeClock
    resolver: FakeResolver
    port: int
    qcfg: QueueConfig
    dsns: list[tuple[bytes, str]] = field(default_factory=list)
    ca_file: str | None = None

    def runner(self, **kw: object) -> QueueRunner:
        async def local(dsn: bytes, rcpt: str) -> bool:
            if rcpt.endswith("@src.test"):
                self.dsns.append((dsn, rcpt))
                return True
            return False

        cfg = Config(hostname="out.mailyard.test", queue=self.qcfg)
        opts: dict = dict(clock=self.clock, local_delivery=local, rng=random.Random(1),
                          command_timeout=3.0, data_timeout=1.0, tls_ca_file=self.ca_file)
        opts.update(kw)
        return QueueRunner(self.store, self.resolver, cfg, **opts)

    async def enqueue(self, *rcpts: str, sender: str = "a@src.test", data: bytes = MESSAGE,
                      **kw: object) -> QueueEntry:
        blob = await self.store.blobs.put(data)
        now = self.clock()
        recipients = tuple(r if isinstance(r, QueueRecipient) else QueueRecipient(r)
                           for r in rcpts)
        entry = QueueEntry(id=uuid.uuid4().hex, sender=sender, blob=blob, recipients=recipients,
                           created=now, next_attempt=now, **kw)  # type: ignore[arg-type]
        await self.store.queue_add(entry)
        return entry


def make_env(port: int, zones: dict | None = None, *, store: object = None,
             clock: FakeClock | None = None, **qcfg: object) -> Env:
    zones = zones or {
        "dest.test": {"MX": [(10, "mx1.dest.test")]},
        "mx1.dest.test": {"A": ["127.0.0.1"]},
    }
    opts: dict = dict(outbound_port=port, retry_initial=60.0, retry_max=600.0,
                      expire=86400.0, delay_warning=3600.0, connect_timeout=2.0)
    opts.update(qcfg)
    return Env(store or MemQueueStore(), clock or FakeClock(), FakeResolver(zones),  # type: ignore[arg-type]
               port, QueueConfig(**opts))


@dataclass
class PKI:
    ca: Path
    good: object  # ssl.SSLContext for mx1.dest.test signed by the CA
    selfsigned: object  # ssl.SSLContext, self-signed mx1.dest.test
    wrongname: object  # ssl.SSLContext signed by the CA for another name


def make_pki(d: Path) -> PKI:
    make_ca(d / "ca.pem", d / "ca.key")
    make_certificate(d / "good.pem", d / "good.key", hostnames=["mx1.dest.test", "mx2.dest.test"],
                     ca_cert=d / "ca.pem", ca_key=d / "ca.key")
    make_certificate(d / "self.pem", d / "self.key", hostnames=["mx1.dest.test"])
    make_certificate(d / "other.pem", d / "other.key", hostnames=["other.test"],
                     ca_cert=d / "ca.pem", ca_key=d / "ca.key")
    return PKI(d / "ca.pem", server_context(d / "good.pem", d / "good.key"),
               server_context(d / "self.pem", d / "self.key"),
               server_context(d / "other.pem", d / "other.key"))
