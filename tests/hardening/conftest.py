from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailyard.testing.dnsserver import DNSServer
from tests.hardening.helpers import ZONE


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DNSServer]:
    with DNSServer(ZONE) as srv:
        yield srv


@pytest.fixture
def nameserver(dns_server: DNSServer) -> str:
    return dns_server.nameserver
