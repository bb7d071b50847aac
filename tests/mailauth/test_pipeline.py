"""The seed walk-through, both ways, end to end through authenticate_message.

Legitimate: alice@a.test via 192.0.2.10 (in a.test's SPF), DKIM-signed by a.test, From aligned
→ SPF pass, DKIM pass, DMARC pass, accept. Spoofed: From ceo@a.test, envelope
attacker@evil.test from 198.51.100.5, no valid signature, a.test publishes p=reject → reject.
"""

from __future__ import annotations

import asyncio

from mailyard.mailauth.dkim import generate_key, sign_message
from mailyard.mailauth.pipeline import authenticate_envelope, authenticate_message, decide
from mailyard.testing.dns import FakeResolver

PRIV, PUB = generate_key("rsa", bits=2048)


def zones(dmarc: str = "v=DMARC1; p=reject; rua=mailto:dmarc@a.test", **extra: dict) -> dict:  # type: ignore[type-arg]
    z = {
        "a.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"], "MX": [(10, "mx.a.test")]},
        "mx.a.test": {"A": ["192.0.2.10"]},
        "sel._domainkey.a.test": {"TXT": [PUB]},
        "_dmarc.a.test": {"TXT": [dmarc]},
        "192.0.2.10": {"PTR": ["mx.a.test"]},
        "evil.test": {"TXT": ["v=spf1 ip4:198.51.100.0/24 -all"]},
    }
    z.update(extra)
    return z


def message(frm: str = "Alice <alice@a.test>", body: bytes = b"Hi Bob.\r\n") -> bytes:
    return (
        f"From: {frm}\r\nTo: bob@b.test\r\nSubject: Hello!\r\n"
        f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@a.test>\r\n\r\n"
    ).encode() + body


def signed(msg: bytes) -> bytes:
    return sign_message(msg, domain="a.test", selector="sel", private_pem=PRIV) + msg


def run(msg: bytes, ip: str, mail_from: str, resolver: FakeResolver, **kw):  # type: ignore[no-untyped-def]
    return asyncio.run(
        authenticate_message(
            msg,
            ip=ip,
            helo="mx.a.test",
            mail_from=mail_from,
            resolver=resolver,
            authserv_id="mx.b.test",
            **kw,
        )
    )


def test_legitimate_message_passes() -> None:
    v = run(signed(message()), "192.0.2.10", "bounce@a.test", FakeResolver(zones()))
    assert v.spf.result == "pass"
    assert [d.result for d in v.dkim] == ["pass"]
    assert (v.dmarc.result, v.dmarc.spf_aligned, v.dmarc.dkim_aligned) == ("pass", True, True)
    assert v.iprev.result == "pass" and v.iprev.hostname == "mx.a.test"
    assert v.action == "accept" and v.reply_code == 250
    assert v.header.startswith("Authentication-Results: mx.b.test;")
    for part in (
        "spf=pass",
        "smtp.mailfrom=bounce@a.test",
        "dkim=pass",
        "header.d=a.test",
        "dmarc=pass",
        "header.from=a.test",
        "iprev=pass",
    ):
        assert part in v.header, part


def test_spoofed_message_is_rejected() -> None:
    v = run(
        message("CEO <ceo@a.test>"), "198.51.100.5", "attacker@evil.test", FakeResolver(zones())
    )
    assert v.spf.result == "pass" and v.spf.domain == "evil.test"  # passes, but unaligned
    assert v.dkim == []
    assert (v.dmarc.result, v.dmarc.policy, v.dmarc.disposition) == ("fail", "reject", "reject")
    assert not v.dmarc.spf_aligned and not v.dmarc.dkim_aligned
    assert v.action == "reject" and v.reply_code == 550 and v.reply_text.startswith("5.7.1")
    assert "dmarc=fail" in v.header


def test_spoofed_with_envelope_in_a_test_fails_spf_and_is_rejected() -> None:
    v = run(message("CEO <ceo@a.test>"), "198.51.100.5", "ceo@a.test", FakeResolver(zones()))
    assert v.spf.result == "fail" and v.action == "reject"


def test_tampered_body_dkim_fail_but_spf_aligned_passes_dmarc() -> None:
    msg = signed(message()).replace(b"Hi Bob.", b"Hi Bob!")
    v = run(msg, "192.0.2.10", "bounce@a.test", FakeResolver(zones()))
    assert [d.result for d in v.dkim] == ["fail"]
    assert v.dmarc.result == "pass" and v.dmarc.spf_aligned and not v.dmarc.dkim_aligned
    # the same tampered message from elsewhere: nothing aligned passes
    v = run(msg, "198.51.100.5", "x@evil.test", FakeResolver(zones()))
    assert v.dmarc.result == "fail" and v.action == "reject"


def test_quarantine_goes_to_junk_and_none_is_accepted() -> None:
    v = run(
        message("x@a.test"),
        "198.51.100.5",
        "x@evil.test",
        FakeResolver(zones("v=DMARC1; p=quarantine")),
    )
    assert v.action == "junk" and v.reply_code == 250
    v = run(
        message("x@a.test"), "198.51.100.5", "x@evil.test", FakeResolver(zones("v=DMARC1; p=none"))
    )
    assert v.dmarc.result == "fail" and v.action == "accept"


def test_dns_temperror_is_tempfail_never_5xx() -> None:
    r = FakeResolver(zones(), servfail={"_dmarc.a.test"})
    v = run(message(), "198.51.100.5", "x@evil.test", r)
    assert v.dmarc.result == "temperror" and v.action == "tempfail"
    assert v.reply_code == 451 and v.reply_text.startswith("4.7.")
    # DKIM key lookup fails transiently and SPF can't save it: tempfail, not reject
    r = FakeResolver(zones(), servfail={"sel._domainkey.a.test"})
    v = run(signed(message()), "198.51.100.5", "x@evil.test", r)
    assert [d.result for d in v.dkim] == ["temperror"]
    assert v.action == "tempfail" and v.reply_code == 451
    # ... but if SPF aligns anyway, the temperror does not matter
    v = run(signed(message()), "192.0.2.10", "bounce@a.test", r)
    assert v.action == "accept"


def test_envelope_stage_and_given_spf_result() -> None:
    r = FakeResolver(zones())
    spf = asyncio.run(
        authenticate_envelope("192.0.2.10", "mx.a.test", "<bounce@a.test>", resolver=r)
    )
    assert spf.result == "pass"
    r.reset_counts()
    v = run(signed(message()), "192.0.2.10", "bounce@a.test", r, spf_result=spf)
    assert v.spf is spf and ("a.test", "TXT") not in r.queries  # SPF not evaluated again


def test_missing_or_double_from_is_rejected() -> None:
    no_from = b"To: bob@b.test\r\nSubject: x\r\n\r\nbody\r\n"
    v = run(no_from, "192.0.2.10", "bounce@a.test", FakeResolver(zones()))
    assert v.action == "reject" and "From" in v.reply_text
    two = b"From: a@a.test\r\nFrom: b@evil.test\r\n\r\nbody\r\n"
    v = run(two, "192.0.2.10", "bounce@a.test", FakeResolver(zones()))
    assert v.action == "reject"
    # SMTP reply text is ASCII (RFC 5321 §4.2), and says its reference once.
    for w in (run(no_from, "192.0.2.10", "bounce@a.test", FakeResolver(zones())), v):
        assert w.reply_text.isascii() and w.reply_text.count("RFC 7489") == 1, w.reply_text


def test_trusted_arc_sealer_overrides_reject() -> None:
    from mailyard.mailauth.arc import ARCResult
    from mailyard.mailauth.dmarc import DMARCResult
    from mailyard.mailauth.spf import SPFResult

    dmarc = DMARCResult("fail", "reject", "reject", domain="a.test")
    arc = ARCResult("pass", 1, "success", "list.test")
    spf = SPFResult("fail", "list.test")
    assert decide(spf, [], dmarc, arc)[0] == "reject"
    assert decide(spf, [], dmarc, arc, trusted_arc_sealers=frozenset({"list.test"}))[0] == "accept"
