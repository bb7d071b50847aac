"""SMTP TLS Reporting (RFC 8460): the courier's sessions counted by TLS outcome over
real sockets, and the daily reports sent by mail (DKIM-signed) and by HTTPS POST."""

from __future__ import annotations

import asyncio
import email
import gzip
import json
from email import policy as email_policy
from pathlib import Path
from typing import Any

import pytest

from mailyard.mailauth.dkim import generate_key, sign_message, verify_dkim
from mailyard.queue import tlsrpt as t
from mailyard.queue.mtasts import MTASTS, PolicyError
from mailyard.testing.clock import FakeClock
from mailyard.testing.dns import FakeResolver
from mailyard.testing.smtpsink import SMTPSink
from tests.queue.helpers import PKI, make_env, start_sinks

POLICY = "version: STSv1\nmode: enforce\nmx: mx1.dest.test\nmax_age: 86400\n"
STS_STRINGS = ["version: STSv1", "mode: enforce", "mx: mx1.dest.test", "max_age: 86400"]
START = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DAY = "2023-11-14"


def _zones(sts: bool) -> dict:
    z: dict[str, Any] = {
        "dest.test": {"MX": [(10, "mx1.dest.test")]},
        "mx1.dest.test": {"A": ["127.0.0.1"]},
    }
    if sts:
        z["_mta-sts.dest.test"] = {"TXT": ["v=STSv1; id=20240101"]}
    return z


async def _one_delivery(sink: SMTPSink, *, sts: bool, pki: PKI, fetch: Any = None
                        ) -> dict[str, Any]:
    """Queue one message to dest.test, attempt it once, return the day's report."""
    port = await start_sinks(sink)
    env = make_env(port, _zones(sts))
    env.ca_file = str(pki.ca)

    async def policy_fetch(url: str) -> str:
        return POLICY

    mta_sts = MTASTS(env.resolver, fetch=fetch or policy_fetch, clock=env.clock)
    runner = env.runner(mta_sts=mta_sts)
    assert runner.tlsrpt is not None
    await env.enqueue("b@dest.test")
    await runner.run_once()
    await sink.close()
    return runner.tlsrpt.report(DAY, "dest.test", organization="o", contact="c",
                                report_id="r")


def _only(report: dict[str, Any]) -> dict[str, Any]:
    assert len(report["policies"]) == 1, report
    return report["policies"][0]


def test_sessions_are_counted_by_tls_outcome(pki: PKI) -> None:
    async def main() -> None:
        # No policy, STARTTLS offered: a success under "no-policy-found".
        p = _only(await _one_delivery(SMTPSink(starttls_context=pki.good), sts=False, pki=pki))
        assert p["policy"] == {"policy-type": "no-policy-found", "policy-domain": "dest.test"}
        assert p["summary"] == {"total-successful-session-count": 1,
                                "total-failure-session-count": 0}
        assert "failure-details" not in p

        # No STARTTLS at all: delivered in plaintext, reported as starttls-not-supported.
        sink = SMTPSink()
        p = _only(await _one_delivery(sink, sts=False, pki=pki))
        assert len(sink.messages) == 1 and not sink.messages[0].tls
        assert p["summary"]["total-failure-session-count"] == 1
        (d,) = p["failure-details"]
        assert d["result-type"] == "starttls-not-supported"
        assert d["receiving-mx-hostname"] == "mx1.dest.test" and d["receiving-ip"] == "127.0.0.1"

        # MTA-STS enforce: the good certificate is a success under the sts policy ...
        p = _only(await _one_delivery(SMTPSink(starttls_context=pki.good), sts=True, pki=pki))
        assert p["policy"] == {"policy-type": "sts", "policy-domain": "dest.test",
                               "policy-string": STS_STRINGS, "mx-host": ["mx1.dest.test"]}
        assert p["summary"]["total-successful-session-count"] == 1
        # ... a self-signed one is not trusted, another host's name is a mismatch.
        for ctx, kind in ((pki.selfsigned, "certificate-not-trusted"),
                          (pki.wrongname, "certificate-host-mismatch")):
            sink = SMTPSink(starttls_context=ctx)
            p = _only(await _one_delivery(sink, sts=True, pki=pki))
            assert sink.messages == []  # deferred, never sent in plaintext
            assert p["summary"] == {"total-successful-session-count": 0,
                                    "total-failure-session-count": 1}
            assert [d["result-type"] for d in p["failure-details"]] == [kind]
        # STARTTLS refused under enforce.
        sink = SMTPSink(starttls_context=pki.good, starttls_reply="454 4.7.0 not now")
        p = _only(await _one_delivery(sink, sts=True, pki=pki))
        assert [d["result-type"] for d in p["failure-details"]] == ["starttls-not-supported"]

        # The policy cannot be fetched: reported under "sts", once per delivery attempt.
        async def broken(url: str) -> str:
            raise OSError("connection refused")

        async def invalid(url: str) -> str:
            raise PolicyError("media type text/html")

        for fetch, kind in ((broken, "sts-policy-fetch-error"), (invalid, "sts-policy-invalid")):
            report = await _one_delivery(SMTPSink(starttls_context=pki.good), sts=True,
                                         pki=pki, fetch=fetch)
            by_type = {p["policy"]["policy-type"]: p for p in report["policies"]}
            assert [d["result-type"] for d in by_type["sts"]["failure-details"]] == [kind]
            # With no policy to apply, the session itself counts under no-policy-found.
            assert by_type["no-policy-found"]["summary"]["total-successful-session-count"] == 1

    asyncio.run(main())


def test_policy_fetch_result_types() -> None:
    import ssl

    assert t.policy_fetch_result_type(OSError("refused")) == "sts-policy-fetch-error"
    assert t.policy_fetch_result_type(PolicyError("bad")) == "sts-policy-invalid"
    try:
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        except ssl.SSLError as e:
            raise OSError("fetch failed") from e
    except OSError as wrapped:
        assert t.policy_fetch_result_type(wrapped) == "sts-webpki-invalid"


def test_parse_tlsrpt_records() -> None:
    assert t.parse_tlsrpt(["v=TLSRPTv1; rua=mailto:a@x.test,https://r.x.test/p"]) == \
        ["mailto:a@x.test", "https://r.x.test/p"]
    assert t.parse_tlsrpt(["v=TLSRPTv1;rua=mailto:a@x.test", "v=spf1 -all"]) == ["mailto:a@x.test"]
    assert t.parse_tlsrpt(["v=TLSRPTv1; rua=mailto:a@x.test", "v=TLSRPTv1; rua=mailto:b@x.test"]) \
        is None  # two records: no reporting (§3)
    assert t.parse_tlsrpt(["v=TLSRPTv1; rua=ftp://x.test/"]) is None
    assert t.parse_tlsrpt(["v=DMARC1; p=none"]) is None
    assert t.parse_tlsrpt([]) is None


def test_mailto_addresses_from_dns_are_checked() -> None:
    assert t.mailto_address("mailto:tls-reports@dest.test") == "tls-reports@dest.test"
    assert t.mailto_address("mailto:a.b+c@x.dest.test?subject=x") == "a.b+c@x.dest.test"
    assert t.mailto_address("mailto:tls%2Dreports@dest.test") == "tls-reports@dest.test"
    for bad in ("mailto:a@dest.test%0D%0ABcc:%20victim@x.test", "mailto:a@dest.test\r\nX: y",
                "mailto:a b@dest.test", "mailto:a@b@dest.test", "mailto:a@dest",
                'mailto:"a"@dest.test', "mailto:", "mailto:a@-dest.test", "mailto:%00@x.test"):
        with pytest.raises(ValueError):
            t.mailto_address(bad)


def _filled(clock: FakeClock, state: Path | None = None) -> t.TLSReporter:
    r = t.TLSReporter(clock=clock, state_file=state, sending_ip="192.0.2.25")
    sts = t.PolicyDesc("sts", tuple(STS_STRINGS), ("mx1.dest.test",))
    for _ in range(3):
        r.success("dest.test", sts)
    r.failure("dest.test", sts, "certificate-expired", mx_host="mx1.dest.test",
              receiving_ip="127.0.0.1", reason="certificate has expired")
    r.failure("Other.Test.", t.PolicyDesc("no-policy-found"), "starttls-not-supported")
    return r


def test_report_format_due_days_and_state_file(tmp_path: Path) -> None:
    clock = FakeClock(START)
    state = tmp_path / "cache" / "tlsrpt.json"
    r = _filled(clock, state)
    assert r.due() == []  # the day is not over
    report = r.report(DAY, "dest.test", organization="Example Org",
                      contact="postmaster@src.test", report_id="id-1")
    assert report == {
        "organization-name": "Example Org",
        "date-range": {"start-datetime": "2023-11-14T00:00:00Z",
                       "end-datetime": "2023-11-14T23:59:59Z"},
        "contact-info": "postmaster@src.test",
        "report-id": "id-1",
        "policies": [{
            "policy": {"policy-type": "sts", "policy-domain": "dest.test",
                       "policy-string": STS_STRINGS, "mx-host": ["mx1.dest.test"]},
            "summary": {"total-successful-session-count": 3, "total-failure-session-count": 1},
            "failure-details": [{"result-type": "certificate-expired",
                                 "failed-session-count": 1, "sending-mta-ip": "192.0.2.25",
                                 "receiving-mx-hostname": "mx1.dest.test",
                                 "receiving-ip": "127.0.0.1",
                                 "failure-reason-code": "certificate has expired"}],
        }],
    }
    r.save()
    clock.advance(2 * 3600)  # past midnight UTC
    again = t.TLSReporter(clock=clock, state_file=state, sending_ip="192.0.2.25")
    assert again.due() == [(DAY, "dest.test"), (DAY, "other.test")]
    assert again.report(DAY, "dest.test", organization="Example Org",
                        contact="postmaster@src.test", report_id="id-1") == report
    again.forget(DAY, "dest.test")
    assert again.due() == [(DAY, "other.test")]
    # A file that cannot be read is ignored (and logged), never fatal.
    state.write_text("{not json")
    assert t.TLSReporter(clock=clock, state_file=state).due() == []
    state.write_text(json.dumps({"days": {DAY: {"x.test": {"[1]": {"ok": 1}}}}}))
    assert t.TLSReporter(clock=clock, state_file=state).due() == []


def test_reports_go_by_mail_dkim_signed_and_by_https_post(pki: PKI, tmp_path: Path) -> None:
    from aiohttp import web

    private, public_txt = generate_key("rsa", 1024)
    posted: list[tuple[str, str, bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        posted.append((request.path, request.content_type, await request.read()))
        return web.Response(status=201)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/tlsrpt", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.good)  # type: ignore[arg-type]
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        resolver = FakeResolver({
            "_smtp._tls.dest.test": {"TXT": [
                f"v=TLSRPTv1; rua=mailto:tls-reports@dest.test,https://mx1.dest.test:{port}/tlsrpt"]},
            "mx1.dest.test": {"A": ["127.0.0.1"]},
            "sel._domainkey.src.test": {"TXT": [public_txt]},
            # other.test publishes nothing: its counts are dropped, nothing is sent.
        })
        clock = FakeClock(START)
        reporter = _filled(clock, tmp_path / "tlsrpt.json")
        queued: list[tuple[str, bytes]] = []

        async def queue_mail(to: str, message: bytes) -> None:
            queued.append((to, message))

        async def sign(message: bytes) -> bytes:
            return sign_message(message, domain="src.test", selector="sel", private_pem=private)

        post = t.make_aiohttp_post(ca_file=str(pki.ca), resolver=resolver)
        kw: dict[str, Any] = dict(resolver=resolver, submitter="src.test", organization="Src",
                                  contact="postmaster@src.test", queue_mail=queue_mail,
                                  post=post, sign=sign)
        assert await t.send_due(reporter, **kw) == 0  # the day is not over yet
        assert queued == [] and posted == []
        clock.advance(2 * 3600)
        assert await t.send_due(reporter, **kw) == 1
        assert reporter.due() == []
        assert await t.send_due(reporter, **kw) == 0  # sent once

        # By mail: §5.3's headers, a valid DKIM signature of the submitter, the report.
        (to, message), = queued
        assert to == "tls-reports@dest.test"
        (dkim,) = await verify_dkim(message, resolver=resolver, now=clock())
        assert (str(dkim.result), dkim.domain) == ("pass", "src.test")
        msg = email.message_from_bytes(message, policy=email_policy.default)
        assert msg["TLS-Report-Domain"] == "dest.test"
        assert msg["TLS-Report-Submitter"] == "src.test"
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "tlsrpt"
        report_id = json.loads(gzip.decompress(
            next(p for p in msg.walk()
                 if p.get_content_type() == "application/tlsrpt+gzip").get_content()))["report-id"]
        assert msg["Subject"] == (f"Report Domain: dest.test Submitter: src.test "
                                  f"Report-ID: <{report_id}>")
        part = next(p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip")
        start, end = t.day_range(DAY)
        assert part.get_filename() == f"src.test!dest.test!{start}!{end}!{report_id}.json.gz"
        mailed = json.loads(gzip.decompress(part.get_content()))
        assert mailed["policies"][0]["summary"] == {"total-successful-session-count": 3,
                                                    "total-failure-session-count": 1}
        assert mailed["organization-name"] == "Src"

        # By HTTPS: the same report, gzip-compressed, as application/tlsrpt+gzip.
        (path, ctype, body), = posted
        assert (path, ctype) == ("/tlsrpt", "application/tlsrpt+gzip")
        assert json.loads(gzip.decompress(body)) == mailed
        await runner.cleanup()

    asyncio.run(main())


@pytest.mark.parametrize("fail", ["post", "dns"])
def test_a_report_that_cannot_be_sent_is_kept_then_given_up(fail: str) -> None:
    from mailyard.mailauth.resolver import TempError

    class Resolver(FakeResolver):
        async def txt(self, name: str) -> list[str]:
            if fail == "dns":
                raise TempError("SERVFAIL")
            return await super().txt(name)

    async def main() -> None:
        clock = FakeClock(START)
        reporter = _filled(clock)
        resolver = Resolver({"_smtp._tls.dest.test": {
            "TXT": ["v=TLSRPTv1; rua=https://reports.dest.test/tlsrpt"]}})

        async def post(uri: str, gz: bytes) -> None:
            raise OSError("HTTP 503")

        async def never(*a: object) -> Any:
            raise AssertionError("not by mail")

        kw: dict[str, Any] = dict(resolver=resolver, submitter="src.test", organization="Src",
                                  contact="c", queue_mail=never, post=post, sign=never)
        clock.advance(2 * 3600)
        await t.send_due(reporter, **kw)
        assert (DAY, "dest.test") in reporter.due()  # kept for the next pass
        clock.advance(t.REPORT_GIVE_UP * 86400)
        await t.send_due(reporter, **kw)
        assert reporter.due() == []  # given up after REPORT_GIVE_UP days

    asyncio.run(main())


def test_reports_are_delivered_despite_tls_failures_and_not_counted(pki: PKI) -> None:
    """§3: "Sending MTAs MUST deliver reports despite any TLS-related failures and SHOULD
    NOT include this SMTP session in the next report": under MTA-STS enforce and
    require_tls, with STARTTLS refused, the report goes in plaintext, other mail waits."""
    from mailyard.storage.models import RecipientState

    async def policy_fetch(url: str) -> str:
        return POLICY

    async def main() -> None:
        sink = SMTPSink(starttls_context=pki.good, starttls_reply="454 4.7.0 not now")
        port = await start_sinks(sink)
        env = make_env(port, _zones(True), require_tls=True)
        env.ca_file = str(pki.ca)
        runner = env.runner(mta_sts=MTASTS(env.resolver, fetch=policy_fetch, clock=env.clock))
        assert runner.tlsrpt is not None
        normal = await env.enqueue("b@dest.test")
        report = await env.enqueue("tls-reports@dest.test", sender="", tls_report=True)
        await runner.run_once()
        assert [m.recipients for m in sink.messages] == [["tls-reports@dest.test"]]
        assert not sink.messages[0].tls  # plaintext, after STARTTLS was refused
        assert report.id not in env.store.entries  # delivered
        assert env.store.entries[normal.id].recipients[0].state == RecipientState.PENDING
        # Only the other message's session is in the report: one refusal.
        p = _only(runner.tlsrpt.report(DAY, "dest.test", organization="o", contact="c",
                                       report_id="r"))
        assert p["policy"]["policy-type"] == "sts"
        assert p["summary"] == {"total-successful-session-count": 0,
                                "total-failure-session-count": 1}
        assert [d["result-type"] for d in p["failure-details"]] == ["starttls-not-supported"]
        await sink.close()

    asyncio.run(main())
