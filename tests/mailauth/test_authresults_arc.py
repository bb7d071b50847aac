from __future__ import annotations

import asyncio

from mailyard.mailauth.arc import arc_seal, verify_arc
from mailyard.mailauth.authresults import (
    authserv_id_of,
    check_iprev,
    format_authentication_results,
    strip_our_authentication_results,
)
from mailyard.mailauth.dkim import DKIMResult, generate_key
from mailyard.mailauth.dmarc import DMARCResult
from mailyard.mailauth.spf import SPFResult
from mailyard.testing.dns import FakeResolver


def test_format_all_parts() -> None:
    h = format_authentication_results(
        "mx.b.test",
        SPFResult("pass", "a.test", sender="bob@a.test"),
        [
            DKIMResult("pass", "a.test", "sel", "rsa-sha256", b_prefix="abcdEFGH"),
            DKIMResult("fail", "x.test", "s", "ed25519-sha256", reason="body hash (mismatch)"),
        ],
        DMARCResult("pass", "reject", "none", domain="a.test"),
    )
    lines = h.split("\r\n")
    assert lines[0] == "Authentication-Results: mx.b.test;"
    assert all(line.startswith("\t") for line in lines[1:])
    assert "spf=pass smtp.mailfrom=bob@a.test" in h
    assert "dkim=pass header.d=a.test header.s=sel header.a=rsa-sha256 header.b=abcdEFGH" in h
    assert r"dkim=fail (body hash \(mismatch\))" in h
    assert "dmarc=pass (p=reject dis=none) header.from=a.test" in h
    assert format_authentication_results("mx.b.test", None, None, None) == (
        "Authentication-Results: mx.b.test; none"
    )
    helo = format_authentication_results(
        "m", SPFResult("none", "h.test", identity="helo"), [], None
    )
    assert "spf=none smtp.helo=h.test" in helo and "dkim=none" in helo


def test_format_resists_injection() -> None:
    h = format_authentication_results(
        "mx.b.test",
        SPFResult("permerror", "a.test", sender='x"y@a.test', reason="bad\r\nX: y"),
        None,
        None,
    )
    assert "\r\nX:" not in h and '"x\\"y@a.test"' in h


def test_strip_only_our_authserv_id() -> None:
    msg = (
        b"Received: from x\r\n"
        b"Authentication-Results: MX.B.TEST; spf=pass\r\n\tsmtp.mailfrom=forged@a.test\r\n"
        b"Authentication-Results: (comment) mx.b.test 1; dkim=pass\r\n"
        b"Authentication-Results: other.test; dkim=pass\r\n"
        b"Subject: x\r\n"
        b"\r\n"
        b"Authentication-Results: mx.b.test; in the body stays\r\n"
    )
    out = strip_our_authentication_results(msg, "mx.b.test")
    assert out == (
        b"Received: from x\r\n"
        b"Authentication-Results: other.test; dkim=pass\r\n"
        b"Subject: x\r\n"
        b"\r\n"
        b"Authentication-Results: mx.b.test; in the body stays\r\n"
    )
    assert authserv_id_of(' "quoted.id" ; none') == "quoted.id"


def test_iprev() -> None:
    z = {
        "192.0.2.1": {"PTR": ["mx.a.test"]},
        "mx.a.test": {"A": ["192.0.2.1"]},
        "192.0.2.2": {"PTR": ["liar.a.test"]},
        "liar.a.test": {"A": ["192.0.2.99"]},
    }
    r = FakeResolver(z, servfail={"3.2.0.192.in-addr.arpa"})
    assert asyncio.run(check_iprev("192.0.2.1", resolver=r)).result == "pass"
    assert asyncio.run(check_iprev("192.0.2.2", resolver=r)).result == "fail"
    assert asyncio.run(check_iprev("192.0.2.3", resolver=r)).result == "temperror"
    assert asyncio.run(check_iprev("192.0.2.4", resolver=r)).result == "fail"
    assert asyncio.run(check_iprev("nonsense", resolver=r)).result == "permerror"


MSG = (
    b"From: a@a.test\r\nTo: list@l.test\r\nSubject: hi\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n"
)


def test_arc_seal_and_verify_two_hops() -> None:
    priv1, pub1 = generate_key("rsa")
    priv2, pub2 = generate_key("rsa")
    r = FakeResolver(
        {"arc._domainkey.l.test": {"TXT": [pub1]}, "arc._domainkey.m.test": {"TXT": [pub2]}}
    )
    assert asyncio.run(verify_arc(MSG, resolver=r)).result == "none"
    hop1 = arc_seal(
        MSG,
        domain="l.test",
        selector="arc",
        private_pem=priv1,
        authserv_id="mx.l.test",
        auth_results="mx.l.test; spf=pass smtp.mailfrom=a.test",
    )
    one = hop1 + MSG
    res = asyncio.run(verify_arc(one, resolver=r))
    assert (res.result, res.instances, res.sealer) == ("pass", 1, "l.test")
    ar2 = format_authentication_results("mx.m.test", None, None, None, arc=res)
    hop2 = arc_seal(
        one,
        domain="m.test",
        selector="arc",
        private_pem=priv2,
        authserv_id="mx.m.test",
        auth_results=ar2,
    )
    res2 = asyncio.run(verify_arc(hop2 + one, resolver=r))
    assert (res2.result, res2.instances, res2.sealer) == ("pass", 2, "m.test")
    tampered = (hop2 + one).replace(b"body", b"bodY")
    assert asyncio.run(verify_arc(tampered, resolver=r)).result == "fail"
    broken = FakeResolver(
        {"arc._domainkey.m.test": {"TXT": [pub2]}}, servfail={"arc._domainkey.l.test"}
    )
    assert asyncio.run(verify_arc(hop2 + one, resolver=broken)).result == "temperror"


def test_arc_garbage_is_fail() -> None:
    r = FakeResolver({})
    for junk in (
        b"ARC-Seal: nonsense\r\n",
        b"ARC-Seal: i=99; s=a; d=b.test; b=x\r\n",
        b"ARC-Authentication-Results: i=1; x\r\n",
    ):
        assert asyncio.run(verify_arc(junk + MSG, resolver=r)).result == "fail", junk
