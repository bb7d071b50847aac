"""Unit tests for what the journey needed in the queue and config: RFC 5321 §5.1 "our
own host in the MX list", the runner's sleep until the next due entry, and the new
config keys (listen.https, [mta_sts], queue.source_address, queue.mta_sts_port)."""

from __future__ import annotations

import asyncio

import pytest

from mailyard.config import ConfigError, parse_config
from mailyard.queue.routing import MXHost, RoutingError, drop_self
from mailyard.queue.runner import QueueRunner, _own_smtp_addresses
from mailyard.storage.models import BlobRef, QueueEntry, QueueRecipient
from mailyard.testing.memqueue import MemQueueStore

HOSTS = [MXHost("mx1.example", 10, ("192.0.2.1",)),
         MXHost("mx2.example", 20, ("192.0.2.2",)),
         MXHost("mx3.example", 20, ("192.0.2.3",)),
         MXHost("mx4.example", 30, ("192.0.2.4",))]


@pytest.mark.parametrize(("names", "addresses", "expected"), [
    ((), (), ["mx1.example", "mx2.example", "mx3.example", "mx4.example"]),
    (("other.example",), ("198.51.100.1",), ["mx1.example", "mx2.example", "mx3.example",
                                            "mx4.example"]),
    # we are a preference-20 backup: only the better MX remains (equal ones go too)
    (("MX3.example.",), (), ["mx1.example"]),
    (("mx4.example",), (), ["mx1.example", "mx2.example", "mx3.example"]),
    ((), ("192.0.2.2",), ["mx1.example"]),
])
def test_drop_self_keeps_only_more_preferred(names: tuple[str, ...], addresses: tuple[str, ...],
                                             expected: list[str]) -> None:
    kept = drop_self("example", list(HOSTS), names=names, addresses=addresses)
    assert [h.name for h in kept] == expected


@pytest.mark.parametrize(("names", "addresses"), [(("mx1.example",), ()), ((), ("192.0.2.1",))])
def test_drop_self_when_we_are_the_best_mx_is_a_loop(names: tuple[str, ...],
                                                     addresses: tuple[str, ...]) -> None:
    with pytest.raises(RoutingError) as e:
        drop_self("example", list(HOSTS), names=names, addresses=addresses)
    assert e.value.permanent and e.value.status == "5.4.6"
    assert "loops back to myself" in e.value.text


def _cfg(extra: str = "") -> object:
    return parse_config('hostname = "mx.test"\n[listen]\nsmtp = "127.0.0.2:2525"\n'
                        "[queue]\noutbound_port = 2525\n" + extra, data_dir="/tmp")


def test_own_smtp_address_only_when_it_is_where_we_deliver() -> None:
    assert _own_smtp_addresses(_cfg()) == ("127.0.0.2",)  # type: ignore[arg-type]
    other_port = parse_config('[listen]\nsmtp = "127.0.0.2:2525"\n', data_dir="/tmp")
    assert _own_smtp_addresses(other_port) == ()
    wildcard = parse_config('[listen]\nsmtp = "0.0.0.0:25"\n', data_dir="/tmp")
    assert _own_smtp_addresses(wildcard) == ()


def test_new_config_keys() -> None:
    c = parse_config('[listen]\nhttps = "127.0.0.2:8443"\n[mta_sts]\nmode = "enforce"\n'
                     'max_age = 86400\n[queue]\nsource_address = "127.0.0.2"\n'
                     "mta_sts_port = 8443\n", data_dir="/tmp")
    assert c.listen.https == "127.0.0.2:8443"
    assert (c.mta_sts.mode, c.mta_sts.max_age) == ("enforce", 86400)
    assert (c.queue.source_address, c.queue.mta_sts_port) == ("127.0.0.2", 8443)
    d = parse_config("", data_dir="/tmp")
    assert (d.listen.https, d.mta_sts.mode, d.queue.source_address, d.queue.mta_sts_port) == \
        ("", "testing", "", 443)


@pytest.mark.parametrize(("text", "key"), [
    ('[listen]\nhttps = "nope"', "listen.https"),
    ('[mta_sts]\nmode = "strict"', "mta_sts.mode"),
    ("[mta_sts]\nmax_age = 0", "mta_sts.max_age"),
    ("[mta_sts]\nmax_age = 99999999", "mta_sts.max_age"),
    ('[queue]\nsource_address = "mail.example"', "queue.source_address"),
    ("[queue]\nmta_sts_port = 70000", "queue.mta_sts_port"),
])
def test_new_config_keys_validated(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, data_dir="/tmp")
    assert str(e.value).startswith(key)


def test_runner_sleeps_until_the_next_entry_is_due() -> None:
    async def go() -> tuple[float, float, float]:
        now = 1000.0
        store = MemQueueStore()
        cfg = parse_config("", data_dir="/tmp")
        runner = QueueRunner(store, resolver=None, config=cfg,  # type: ignore[arg-type]
                             clock=lambda: now, use_mta_sts=False, poll_interval=30.0)
        empty = await runner._idle_time()
        blob = BlobRef(blob_id="x", size=1)
        await store.queue_add(QueueEntry(id="e1", sender="a@x.test", blob=blob,
                                         recipients=(QueueRecipient("b@y.test"),),
                                         created=now, next_attempt=now + 2.5))
        soon = await runner._idle_time()
        await store.queue_add(QueueEntry(id="e2", sender="a@x.test", blob=blob,
                                         recipients=(QueueRecipient("b@y.test"),),
                                         created=now, next_attempt=now - 5))
        overdue = await runner._idle_time()
        return empty, soon, overdue

    empty, soon, overdue = asyncio.run(go())
    assert empty == 30.0
    assert soon == pytest.approx(2.5)
    assert overdue == 0.05  # never a busy loop
