"""What every protocol adapter is handed: the injected world of one server process.

Adapters get a :class:`ServerContext` and nothing global: store, config, TLS
context, authenticator, recipient resolver, DNS resolver and clock. Tests build one
with fakes; ``mailyard serve`` builds the real one (server/app.py).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailyard.config import Config
from mailyard.mailauth.resolver import Resolver
from mailyard.policy.auth import Authenticator
from mailyard.policy.recipients import RecipientResolver
from mailyard.server.streams import Quiesce
from mailyard.storage.interface import Store


@dataclass
class ServerContext:
    config: Config
    store: Store
    tls: ssl.SSLContext | None
    auth: Authenticator
    recipients: RecipientResolver
    resolver: Resolver
    clock: Callable[[], float] = time.time
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("mailyard"))
    # Set by the app: wakes the outbound queue after a submission queued mail.
    wake_queue: Callable[[], None] = lambda: None
    # Set by the app once its listeners are bound: listener name -> port (a configured
    # port 0 becomes the real one), for what the HTTP endpoints tell mail clients.
    bound_ports: dict[str, int] = field(default_factory=dict)
    # Stopping: sessions idle between commands close at once (server/streams.py).
    quiesce: Quiesce = field(default_factory=Quiesce)

    @property
    def hostname(self) -> str:
        return self.config.hostname

    def allow_plaintext_auth(self, remote_ip: str) -> bool:
        """LOGIN/AUTH without TLS: only from loopback, and only when configured."""
        if not self.config.auth.allow_plaintext_loopback:
            return False
        return remote_ip.startswith("127.") or remote_ip == "::1"
