"""MTA-STS policy parsing, matching, caching and HTTPS fetch; DSN construction."""

from __future__ import annotations

import asyncio
import email
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from mailyard.queue.dsn import DSNRecipient, build_dsn, header_block, wants
from mailyard.queue.mtasts import MTASTS, PolicyError, mx_matches, parse_policy, parse_txt
from mailyard.server.tls import make_ca, make_certificate, server_context
from mailyard.storage.models import BlobRef, QueueEntry, QueueRecipient
from mailyard.testing.clock import FakeClock
from mailyard.testing.dns import FakeResolver


def test_parse_policy_and_txt() -> None:
    p = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
                     "mx: *.example.net\r\nmax_age: 604800\r\n", policy_id="abc")
    assert p.enforce and p.mx == ("mail.example.com", "*.example.net") and p.max_age == 604800
    assert p.matches("mail.example.com") and p.matches("a.example.net")
    assert not p.matches("a.b.example.net") and not p.matches("example.net")
    assert mx_matches("MAIL.example.com.", "mail.EXAMPLE.com")
    for bad in ("mode: enforce\nmx: a\nmax_age: 1", "version: STSv1\nmode: x\nmx: a\nmax_age: 1",
                "version: STSv1\nmode: enforce\nmax_age: 1",
                "version: STSv1\nmode: enforce\nmx: a"):
        with pytest.raises(PolicyError):
            parse_policy(bad)
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999").max_age == 31557600
    assert parse_txt(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_txt(["v=spf1 -all"]) is None
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # §3.1: more than one
    assert parse_txt(["v=STSv1; id=bad-chars!"]) is None


def test_policy_cache_refresh_on_id_change_and_expiry() -> None:
    async def main() -> None:
        clock = FakeClock()
        res = FakeResolver({"_mta-sts.d.test": {"TXT": ["v=STSv1; id=one"]}})
        served = {"mode": "testing"}

        async def fetch(url: str) -> str:
            return f"version: STSv1\nmode: {served['mode']}\nmx: mx.d.test\nmax_age: 100\n"

        sts = MTASTS(res, fetch=fetch, clock=clock)
        assert (await sts.policy_for("d.test")).mode == "testing"  # type: ignore[union-attr]
        served["mode"] = "enforce"
        assert (await sts.policy_for("d.test")).mode == "testing"  # type: ignore[union-attr]
        assert sts.fetches == 1
        res.add("_mta-sts.d.test", "TXT", ["v=STSv1; id=two"])
        assert (await sts.policy_for("d.test")).mode == "enforce"  # type: ignore[union-attr]
        assert sts.fetches == 2
        # TXT removed: the cached policy applies until max_age (§5.1)
        res.add("_mta-sts.d.test", "TXT", [])
        assert (await sts.policy_for("d.test")) is not None
        clock.advance(100)
        assert (await sts.policy_for("d.test")) is None
        assert await sts.policy_for("none.test") is None

    asyncio.run(main())


def test_policy_cache_survives_a_restart(tmp_path: Path) -> None:
    """§5.1/§10.2: a policy learnt before a restart still applies after it, even when the
    fetch is then blocked (the downgrade the cache exists to stop)."""
    async def main() -> None:
        clock = FakeClock()
        res = FakeResolver({"_mta-sts.d.test": {"TXT": ["v=STSv1; id=one"]}})
        cache = tmp_path / "cache" / "mta-sts.json"

        async def fetch(url: str) -> str:
            return "version: STSv1\nmode: enforce\nmx: mx.d.test\nmx: *.d.test\nmax_age: 100\n"

        async def blocked(url: str) -> str:
            raise PolicyError("connection refused")

        first = MTASTS(res, fetch=fetch, clock=clock, cache_file=cache)
        learnt = await first.policy_for("d.test")
        assert learnt is not None and learnt.enforce and cache.exists()
        assert not list(cache.parent.glob("*.tmp"))

        # Restarted: the TXT id changed and the fetch fails; the cached policy applies.
        res.add("_mta-sts.d.test", "TXT", ["v=STSv1; id=two"])
        second = MTASTS(res, fetch=blocked, clock=clock, cache_file=cache)
        kept = await second.policy_for("d.test")
        assert kept == learnt and second.fetches == 1
        # ... until max_age, counted from the original fetch, not from the restart.
        clock.advance(60)
        third = MTASTS(res, fetch=blocked, clock=clock, cache_file=cache)
        assert await third.policy_for("d.test") == learnt
        clock.advance(40)
        fourth = MTASTS(res, fetch=blocked, clock=clock, cache_file=cache)
        assert await fourth.policy_for("d.test") is None

    asyncio.run(main())


def test_unreadable_policy_cache_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    async def main() -> None:
        res = FakeResolver({"_mta-sts.d.test": {"TXT": ["v=STSv1; id=one"]}})

        async def fetch(url: str) -> str:
            return "version: STSv1\nmode: testing\nmx: mx.d.test\nmax_age: 100\n"

        cache = tmp_path / "mta-sts.json"
        for junk in ("{not json", '{"policies": [1, 2]}', '{"policies": {"d.test": {"mode": 1}}}',
                     '{"policies": {"d.test": {"policy": "version: STSv1\\nmode: bogus\\n'
                     'mx: a\\nmax_age: 1\\n", "id": "x", "expires": 1e12}}}'):
            cache.write_text(junk)
            sts = MTASTS(res, fetch=fetch, clock=FakeClock(), cache_file=cache)
            got = await sts.policy_for("d.test")  # fetched afresh, and the file rewritten
            assert got is not None and got.mode == "testing" and sts.fetches == 1
            again = MTASTS(res, fetch=fetch, clock=FakeClock(), cache_file=cache)
            assert await again.policy_for("d.test") == got and again.fetches == 0

    asyncio.run(main())
    assert "MTA-STS cache" in caplog.text


def test_fetch_over_https_from_local_server(tmp_path: Path) -> None:
    make_ca(tmp_path / "ca.pem", tmp_path / "ca.key")
    make_certificate(tmp_path / "c.pem", tmp_path / "c.key", hostnames=["mta-sts.d.test"],
                     ca_cert=tmp_path / "ca.pem", ca_key=tmp_path / "ca.key")
    make_certificate(tmp_path / "x.pem", tmp_path / "x.key", hostnames=["mta-sts.d.test"])
    policy = "version: STSv1\nmode: enforce\nmx: mx.d.test\nmax_age: 86400\n"

    async def serve(ctx: ssl.SSLContext) -> tuple[web.AppRunner, int]:
        async def handler(request: web.Request) -> web.Response:
            assert request.host.startswith("mta-sts.d.test")
            return web.Response(text=policy, content_type="text/plain")

        app = web.Application()
        app.router.add_get("/.well-known/mta-sts.txt", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return runner, port

    async def main() -> None:
        res = FakeResolver({"_mta-sts.d.test": {"TXT": ["v=STSv1; id=1"]}})
        runner, port = await serve(server_context(tmp_path / "c.pem", tmp_path / "c.key"))
        try:
            sts = MTASTS(res, ca_file=str(tmp_path / "ca.pem"), https_port=port,
                         connect_address="127.0.0.1")
            p = await sts.policy_for("d.test")
            assert p is not None and p.enforce and p.mx == ("mx.d.test",)
        finally:
            await runner.cleanup()
        # an untrusted certificate: no policy (fetch failed, nothing cached)
        runner, port = await serve(server_context(tmp_path / "x.pem", tmp_path / "x.key"))
        try:
            sts = MTASTS(res, ca_file=str(tmp_path / "ca.pem"), https_port=port,
                         connect_address="127.0.0.1")
            assert await sts.policy_for("d.test") is None
        finally:
            await runner.cleanup()

    asyncio.run(main())


def _entry(**kw: object) -> QueueEntry:
    opts: dict = dict(id="e1", sender="alice@src.test", blob=BlobRef("0" * 64, 10),
                      recipients=(QueueRecipient("bob@dest.test"),), created=1_700_000_000.0,
                      next_attempt=0.0)
    opts.update(kw)
    return QueueEntry(**opts)


ORIGINAL = b"From: alice@src.test\r\nSubject: hello\r\n\r\nbody line\r\n"


def test_dsn_structure_parses_as_multipart_report() -> None:
    r = DSNRecipient("bob@dest.test", "failed", "5.1.1", "550 5.1.1 unknown\r\nInjected: x",
                     from_remote=True, remote_mta="mx.dest.test", orcpt="rfc822;bob+2B1@dest.test",
                     last_attempt=1_700_000_100.0)
    data = build_dsn(_entry(envid="E-1"), [r], reporting_mta="out.test", original=ORIGINAL,
                     original_is_full=True, now=1_700_000_100.0)
    assert data is not None
    msg = email.message_from_bytes(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "<alice@src.test>" and "MAILER-DAEMON@out.test" in msg["From"]
    assert "Injected" not in msg
    _text, status, orig = msg.get_payload()  # type: ignore[misc]
    assert status.get_content_type() == "message/delivery-status"
    per_msg, per_rcpt = status.get_payload()
    assert per_msg["Reporting-MTA"] == "dns; out.test"
    assert per_msg["Original-Envelope-Id"] == "E-1"
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@dest.test"
    assert per_rcpt["Original-Recipient"] == "rfc822; bob+1@dest.test"
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Diagnostic-Code"].startswith("smtp; 550 5.1.1 unknown")
    assert orig.get_content_type() == "message/rfc822"
    assert orig.get_payload()[0]["Subject"] == "hello"
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_dsn_headers_only_never_to_null_and_notify() -> None:
    r = DSNRecipient("bob@dest.test", "delayed", "4.4.1", "connect failed")
    data = build_dsn(_entry(ret="HDRS"), [r], reporting_mta="o", original=header_block(ORIGINAL),
                     original_is_full=False, now=0.0, will_retry_until=1e9)
    assert data is not None
    assert b"Content-Type: text/rfc822-headers" in data and b"body line" not in data
    assert b"Action: delayed" in data and b"Will-Retry-Until:" in data
    assert build_dsn(_entry(sender=""), [r], reporting_mta="o", original=b"",
                     original_is_full=False, now=0.0) is None
    assert wants(None, "failed") and wants(None, "delayed")
    assert not wants("NEVER", "failed")
    assert wants("FAILURE", "failed") and not wants("FAILURE", "delayed")
    assert wants("success,delay", "delayed")
    never = DSNRecipient("bob@dest.test", "failed", "5.0.0", "x", notify="NEVER")
    assert build_dsn(_entry(), [never], reporting_mta="o", original=b"",
                     original_is_full=False, now=0.0) is None
