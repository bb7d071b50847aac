from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailyard.testing.dnsserver import DNSServer
from tests.integration.harness import Server, make_server

# What the outside world looks like to a single test server: a remote sender domain
# with SPF and DMARC, and our own domain's records.
ZONE = {
    "remote.example": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"], "MX": [(10, "mx.remote.example")]},
    "_dmarc.remote.example": {"TXT": ["v=DMARC1; p=none"]},
    "mx.remote.example": {"A": ["127.0.0.1"]},
    "example.test": {"TXT": ["v=spf1 ip4:127.0.0.0/8 -all"], "MX": [(10, "mail.example.test")]},
    "mail.example.test": {"A": ["127.0.0.1"]},
    "elsewhere.example": {"MX": [(10, "mx.elsewhere.example")]},
}


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DNSServer]:
    with DNSServer(ZONE) as srv:
        yield srv


@pytest.fixture
def server(tmp_path: Path, dns_server: DNSServer) -> Iterator[Server]:
    srv = make_server(tmp_path, nameserver=dns_server.nameserver)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
