"""MX routing (RFC 5321 §5.1, RFC 7505) and the retry schedule."""

from __future__ import annotations

import asyncio
import random

import pytest

from mailyard.config import QueueConfig
from mailyard.queue.routing import RoutingError, domain_of, parse_address_literal, resolve_mx
from mailyard.queue.schedule import backoff, delay_warning_due, is_expired
from mailyard.testing.dns import FakeResolver

ZONES = {
    "multi.test": {"MX": [(20, "c.multi.test"), (10, "a.multi.test"), (10, "b.multi.test"),
                          (30, "nowhere.multi.test")]},
    "a.multi.test": {"A": ["192.0.2.1"]},
    "b.multi.test": {"A": ["192.0.2.2"], "AAAA": ["2001:db8::2"]},
    "c.multi.test": {"AAAA": ["2001:db8::3"]},
    "implicit.test": {"A": ["192.0.2.9"], "AAAA": ["2001:db8::9"]},
    "nullmx.test": {"MX": [(0, "")]},
    "empty.test": {"TXT": ["v=spf1 -all"]},
    "dnsfail.test": {"MX": "TIMEOUT"},
    "brokenmx.test": {"MX": [(10, "gone.brokenmx.test")]},
}


def _resolve(domain: str, seed: int = 0) -> list:
    r = FakeResolver(ZONES)
    return asyncio.run(resolve_mx(domain, r, rng=random.Random(seed)))


def test_mx_order_by_preference_with_equal_preferences_shuffled() -> None:
    seen = set()
    for seed in range(30):
        hosts = _resolve("multi.test", seed)
        names = [h.name for h in hosts]
        assert set(names[:2]) == {"a.multi.test", "b.multi.test"}
        assert names[2:] == ["c.multi.test"]  # nowhere.multi.test has no address: dropped
        seen.add(tuple(names[:2]))
    assert len(seen) == 2  # both orders occur
    b = next(h for h in _resolve("multi.test") if h.name == "b.multi.test")
    assert b.addresses == ("192.0.2.2", "2001:db8::2")


def test_implicit_mx() -> None:
    (host,) = _resolve("implicit.test")
    assert host.name == "implicit.test" and host.addresses == ("192.0.2.9", "2001:db8::9")


@pytest.mark.parametrize(
    ("domain", "status", "permanent"),
    [
        ("nullmx.test", "5.1.10", True),
        ("nonexistent.test", "5.1.2", True),
        ("empty.test", "5.1.2", True),
        ("dnsfail.test", "4.4.3", False),
        ("brokenmx.test", "4.4.3", False),
        ("[999.1.1.1]", "5.1.2", True),
    ],
)
def test_routing_failures(domain: str, status: str, permanent: bool) -> None:
    with pytest.raises(RoutingError) as ei:
        _resolve(domain)
    assert ei.value.status == status and ei.value.permanent is permanent


def test_address_literals() -> None:
    assert parse_address_literal("[192.0.2.7]") == "192.0.2.7"
    assert parse_address_literal("[IPv6:2001:db8::1]") == "2001:db8::1"
    assert parse_address_literal("example.com") is None
    (host,) = _resolve("[127.0.0.1]")
    assert host.addresses == ("127.0.0.1",)
    assert domain_of("User@Example.COM") == "example.com"


def test_schedule() -> None:
    cfg = QueueConfig(retry_initial=300, retry_max=3600, expire=5 * 86400, delay_warning=4 * 3600)
    assert [backoff(n, cfg) for n in range(0, 7)] == [0, 300, 600, 1200, 2400, 3600, 3600]
    assert backoff(10_000, cfg) == 3600  # no overflow for huge counts
    assert not is_expired(0, 5 * 86400 - 1, cfg) and is_expired(0, 5 * 86400, cfg)
    assert not delay_warning_due(0, 4 * 3600 - 1, cfg, already_warned=False)
    assert delay_warning_due(0, 4 * 3600, cfg, already_warned=False)
    assert not delay_warning_due(0, 4 * 3600, cfg, already_warned=True)
    assert not delay_warning_due(0, 6 * 86400, cfg, already_warned=False)
    off = QueueConfig(delay_warning=0)
    assert not delay_warning_due(0, 10**9, off, already_warned=False)
