"""MTA-STS: a policy that cannot be fetched is not fetched again at every lookup (RFC 8461
§3.3, §5). The failure is remembered per domain and TXT id for a back-off period (5 minutes,
doubling up to an hour); meanwhile lookups answer as right after the failure."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from mailyard.queue.mtasts import (
    FETCH_BACKOFF_INITIAL,
    FETCH_BACKOFF_MAX,
    MTASTS,
    PolicyError,
)
from mailyard.server.tls import make_ca, make_certificate, server_context
from mailyard.testing.clock import FakeClock
from mailyard.testing.dns import FakeResolver
from mailyard.testing.smtpsink import SMTPSink
from tests.queue.helpers import make_env, start_sinks

POLICY = "version: STSv1\nmode: enforce\nmx: mx1.dest.test\nmax_age: 86400\n"
FAILED = "MTA-STS policy fetch for dest.test failed"


def _zones(policy_id: str = "one") -> dict:
    return {
        "dest.test": {"MX": [(10, "mx1.dest.test")]},
        "mx1.dest.test": {"A": ["127.0.0.1"]},
        "_mta-sts.dest.test": {"TXT": [f"v=STSv1; id={policy_id}"]},
    }


def _failures(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records
               if r.levelno >= logging.WARNING and r.getMessage().startswith(FAILED))


class PolicyServer:
    """An HTTPS policy server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.hits = 0
        self.status = 200
        self.body = POLICY
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        async def handler(request: web.Request) -> web.Response:
            assert request.host.startswith("mta-sts.dest.test")
            self.hits += 1
            return web.Response(status=self.status, text=self.body, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mtasts-pki")
    make_ca(d / "ca.pem", d / "ca.key")
    make_certificate(d / "ok.pem", d / "ok.key", hostnames=["mta-sts.dest.test"],
                     ca_cert=d / "ca.pem", ca_key=d / "ca.key")
    make_certificate(d / "self.pem", d / "self.key", hostnames=["mta-sts.dest.test"])
    return {"ca": d / "ca.pem", "ok": d / "ok.pem", "ok.key": d / "ok.key",
            "self": d / "self.pem", "self.key": d / "self.key"}


def _closed_port() -> int:
    """A loopback port with nothing listening on it (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("failure", ["http-503", "bad-policy", "untrusted-cert", "refused"])
def test_failing_policy_server_contacted_once_per_backoff_window(
        certs: dict[str, Path], failure: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailyard.queue.mtasts")

    async def main() -> None:
        trusted = failure != "untrusted-cert"
        server = PolicyServer(server_context(certs["ok" if trusted else "self"],
                                             certs["ok.key" if trusted else "self.key"]))
        port = await server.start()
        if failure == "http-503":
            server.status = 503
        elif failure == "bad-policy":
            server.body = "version: STSv1\nmode: sometimes\nmax_age: 1\n"
        elif failure == "refused":
            await server.stop()
            port = _closed_port()
        clock = FakeClock()
        sts = MTASTS(FakeResolver(_zones()), clock=clock, ca_file=str(certs["ca"]),
                     https_port=port, connect_address="127.0.0.1")
        try:
            for _ in range(5):  # five lookups (deliveries) in a row: one fetch
                assert await sts.policy_for("dest.test") is None
            assert sts.fetches == 1 and _failures(caplog) == 1
            if failure in ("http-503", "bad-policy"):
                assert server.hits == 1  # the server itself saw one request
            clock.advance(FETCH_BACKOFF_INITIAL - 1)  # still inside the window
            assert await sts.policy_for("dest.test") is None
            assert sts.fetches == 1 and _failures(caplog) == 1
            clock.advance(1)  # the window is over: contacted again, once
            assert await sts.policy_for("dest.test") is None
            assert await sts.policy_for("dest.test") is None
            assert sts.fetches == 2 and _failures(caplog) == 2
            if failure in ("http-503", "bad-policy"):
                assert server.hits == 2
            # the second failure doubles the window
            clock.advance(2 * FETCH_BACKOFF_INITIAL - 1)
            assert await sts.policy_for("dest.test") is None
            assert sts.fetches == 2
            clock.advance(1)
            assert await sts.policy_for("dest.test") is None
            assert sts.fetches == 3 and _failures(caplog) == 3
            if failure in ("http-503", "bad-policy"):
                # fixed: once the window is over the policy is fetched and used
                server.status, server.body = 200, POLICY
                clock.advance(4 * FETCH_BACKOFF_INITIAL)
                got = await sts.policy_for("dest.test")
                assert got is not None and got.enforce and got.id == "one"
                assert server.hits == 4 and sts.fetches == 4
        finally:
            await server.stop()

    asyncio.run(main())


def test_backoff_doubles_up_to_an_hour_and_success_resets_it() -> None:
    async def main() -> None:
        clock = FakeClock()
        res = FakeResolver(_zones())
        state = {"fail": True}
        calls: list[float] = []

        async def fetch(url: str) -> str:
            calls.append(clock())
            if state["fail"]:
                raise PolicyError("connection refused")
            return POLICY

        sts = MTASTS(res, fetch=fetch, clock=clock)
        for window in (300, 600, 1200, 2400, 3600, 3600, 3600):
            before = len(calls)
            assert await sts.policy_for("dest.test") is None
            assert len(calls) == before + 1
            clock.advance(window - 1)
            assert await sts.policy_for("dest.test") is None
            assert len(calls) == before + 1, window
            clock.advance(1)
        assert FETCH_BACKOFF_INITIAL == 300 and FETCH_BACKOFF_MAX == 3600
        # a success forgets the failures ...
        state["fail"] = False
        assert await sts.policy_for("dest.test") is not None
        # ... so the next failure (a new id) starts again at 5 minutes
        state["fail"] = True
        res.add("_mta-sts.dest.test", "TXT", ["v=STSv1; id=two"])
        n = len(calls)
        assert (await sts.policy_for("dest.test")).id == "one"  # type: ignore[union-attr]
        clock.advance(FETCH_BACKOFF_INITIAL)
        await sts.policy_for("dest.test")
        assert len(calls) == n + 2
        # a failure long after the previous window ended also starts at 5 minutes
        clock.advance(2 * FETCH_BACKOFF_MAX)
        await sts.policy_for("dest.test")
        assert len(calls) == n + 3
        clock.advance(FETCH_BACKOFF_INITIAL)
        await sts.policy_for("dest.test")
        assert len(calls) == n + 4

    asyncio.run(main())


def test_changed_txt_id_fetches_at_once(certs: dict[str, Path],
                                        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        server = PolicyServer(server_context(certs["ok"], certs["ok.key"]))
        port = await server.start()
        server.status = 500
        clock = FakeClock()
        res = FakeResolver(_zones("one"))
        sts = MTASTS(res, clock=clock, ca_file=str(certs["ca"]), https_port=port,
                     connect_address="127.0.0.1")
        try:
            assert await sts.policy_for("dest.test") is None
            assert await sts.policy_for("dest.test") is None
            assert server.hits == 1
            # a new id inside the window: a new policy is announced, fetched at once
            res.add("_mta-sts.dest.test", "TXT", ["v=STSv1; id=two"])
            assert await sts.policy_for("dest.test") is None
            assert server.hits == 2 and _failures(caplog) == 2
            assert await sts.policy_for("dest.test") is None
            assert server.hits == 2  # and id two is now in its own back-off
            # the server is fixed and the id changes again: fetched at once, and used
            server.status = 200
            res.add("_mta-sts.dest.test", "TXT", ["v=STSv1; id=three"])
            got = await sts.policy_for("dest.test")
            assert got is not None and got.enforce and got.id == "three"
            assert server.hits == 3 and sts.fetches == 3
        finally:
            await server.stop()

    asyncio.run(main())


def test_cached_policy_keeps_applying_during_backoff(caplog: pytest.LogCaptureFixture) -> None:
    """§5.1: a valid cached policy is used while the new one cannot be fetched, and its
    expiry is not stretched by the back-off."""
    async def main() -> None:
        clock = FakeClock()
        res = FakeResolver(_zones("one"))
        state = {"fail": False}

        async def fetch(url: str) -> str:
            if state["fail"]:
                raise PolicyError("certificate verify failed")
            return POLICY.replace("86400", "800")

        sts = MTASTS(res, fetch=fetch, clock=clock)
        first = await sts.policy_for("dest.test")
        assert first is not None and first.id == "one" and sts.fetches == 1
        state["fail"] = True
        res.add("_mta-sts.dest.test", "TXT", ["v=STSv1; id=two"])
        for _ in range(3):
            assert await sts.policy_for("dest.test") == first
        assert sts.fetches == 2 and _failures(caplog) == 1
        assert "the cached policy id one applies" in caplog.text
        clock.advance(FETCH_BACKOFF_INITIAL)
        assert await sts.policy_for("dest.test") == first
        assert sts.fetches == 3
        clock.advance(800 - FETCH_BACKOFF_INITIAL)  # the cached policy's max_age is over
        assert await sts.policy_for("dest.test") is None
        assert sts.fetches == 3  # still in the (doubled) back-off: no policy, no fetch

    asyncio.run(main())


def test_concurrent_lookups_share_one_failing_fetch() -> None:
    async def main() -> None:
        release = asyncio.Event()
        calls = 0

        async def fetch(url: str) -> str:
            nonlocal calls
            calls += 1
            await release.wait()
            raise PolicyError("timeout")

        sts = MTASTS(FakeResolver(_zones()), fetch=fetch, clock=FakeClock())
        lookups = [asyncio.ensure_future(sts.policy_for("dest.test")) for _ in range(5)]
        await asyncio.sleep(0.01)
        release.set()
        assert await asyncio.gather(*lookups) == [None] * 5
        assert calls == 1 and sts.fetches == 1

    asyncio.run(main())


def test_deliveries_during_backoff_fetch_the_policy_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """Through the queue runner: each delivery to a domain whose policy cannot be fetched
    proceeds as without a policy, and the policy server is asked once per window."""
    async def main() -> None:
        sink = SMTPSink()
        port = await start_sinks(sink)
        env = make_env(port, _zones())
        calls = 0

        async def fetch(url: str) -> str:
            nonlocal calls
            calls += 1
            raise PolicyError("connection refused")

        sts = MTASTS(env.resolver, fetch=fetch, clock=env.clock)
        for i in range(3):  # three deliveries (runner rounds) inside the window
            await env.enqueue(f"b{i}@dest.test")
            await env.runner(mta_sts=sts).run_once()
            assert len(sink.messages) == i + 1  # delivered as without a policy
            env.clock.advance(10)
        assert [m.recipients for m in sink.messages] == [[f"b{i}@dest.test"] for i in range(3)]
        assert env.store.entries == {}
        assert calls == 1 and sts.fetches == 1 and _failures(caplog) == 1
        # after the window, the next delivery asks again (and is still delivered)
        env.clock.advance(FETCH_BACKOFF_INITIAL)
        e = await env.enqueue("late@dest.test")
        await env.runner(mta_sts=sts).run_once()
        assert calls == 2 and _failures(caplog) == 2
        assert e.id not in env.store.entries and len(sink.messages) == 4
        await sink.close()

    asyncio.run(main())
