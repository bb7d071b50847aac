from __future__ import annotations

import asyncio
import re

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from mailyard.mailauth.dkim import (
    DKIMTagError,
    generate_key,
    parse_tags,
    sign_message,
    signing_headers,
    verify_dkim,
)
from mailyard.testing.dns import FakeResolver

MSG = (
    b"From: Alice <alice@a.test>\r\n"
    b"To: bob@b.test\r\n"
    b"Subject: hello\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@a.test>\r\n"
    b"\r\n"
    b"Hi Bob,\r\nthis is a test.\r\n"
)

RSA_PRIV, RSA_TXT = generate_key("rsa", bits=2048)
ED_PRIV, ED_TXT = generate_key("ed25519")


def resolver(**extra: dict) -> FakeResolver:  # type: ignore[type-arg]
    zones = {
        "rsa._domainkey.a.test": {"TXT": [RSA_TXT]},
        "ed._domainkey.a.test": {"TXT": [ED_TXT]},
    }
    zones.update(extra)
    return FakeResolver(zones, servfail={"broken._domainkey.a.test"})


def verify(msg: bytes, res: FakeResolver | None = None, now: float | None = None) -> list:  # type: ignore[type-arg]
    return asyncio.run(verify_dkim(msg, resolver=res or resolver(), now=now))


def signed(msg: bytes = MSG, selector: str = "rsa", alg: str = "rsa-sha256") -> bytes:
    priv = RSA_PRIV if alg == "rsa-sha256" else ED_PRIV
    return (
        sign_message(msg, domain="a.test", selector=selector, private_pem=priv, algorithm=alg) + msg
    )


def test_unsigned_gives_no_results() -> None:
    assert verify(MSG) == []


def test_rsa_and_ed25519_pass_and_report_fields() -> None:
    msg = (
        sign_message(
            MSG, domain="a.test", selector="ed", private_pem=ED_PRIV, algorithm="ed25519-sha256"
        )
        + signed()
    )
    results = verify(msg)
    assert [(r.result, r.algorithm, r.selector, r.domain) for r in results] == [
        ("pass", "ed25519-sha256", "ed", "a.test"),
        ("pass", "rsa-sha256", "rsa", "a.test"),
    ]
    assert all(r.b_prefix and not r.body_length_limited for r in results)


def test_tampered_body_fails() -> None:
    msg = signed().replace(b"this is a test", b"this is a TEST")
    [r] = verify(msg)
    assert r.result == "fail" and "body hash" in r.reason


def test_tampered_header_fails() -> None:
    msg = signed().replace(b"Subject: hello", b"Subject: hellO")
    [r] = verify(msg)
    assert r.result == "fail"


def test_added_from_breaks_oversigned_signature() -> None:
    msg = signed()
    assert verify(msg)[0].result == "pass"
    [r] = verify(b"From: ceo@a.test\r\n" + msg)
    assert r.result == "fail"


def test_sign_oversigns_from_and_uses_recommended_set() -> None:
    h = signing_headers(MSG)
    assert h.count("from") == 2 and "subject" in h and "cc" not in h
    sig = sign_message(MSG, domain="a.test", selector="rsa", private_pem=RSA_PRIV)
    tags = parse_tags(sig.decode().split(":", 1)[1])
    assert [x.strip() for x in tags["h"].split(":")].count("from") == 2
    assert tags["c"] == "relaxed/relaxed" and tags["d"] == "a.test"


def test_one_good_one_bad_signature() -> None:
    good = signed()
    other_priv, _ = generate_key("rsa", bits=1024)
    bad_sig = sign_message(MSG, domain="a.test", selector="rsa", private_pem=other_priv)
    results = verify(bad_sig + good)
    assert [r.result for r in results] == ["fail", "pass"]


def test_rsa_sha1_is_fail_by_policy() -> None:
    pem = serialization.load_pem_private_key(RSA_PRIV.encode(), None).private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    sig = dkimpy.sign(MSG, b"rsa", b"a.test", pem, signature_algorithm=b"rsa-sha1")
    assert dkimpy.verify(sig + MSG, dnsfunc=lambda n, timeout=5: RSA_TXT.encode())
    [r] = verify(sig + MSG)
    assert r.result == "fail" and "sha1" in r.reason


# A 512-bit RSA public key (from dkimpy's test suite); cryptography will not make one.
WEAK_TXT = (
    "k=rsa; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBANmBe10IgY+u7h3enWTukkqtUD5PR52T"
    "b/mPfjC0QJTocVBq6Za/PlzfV+Py92VaCak19F4WrbVTK5Gg5tW220MCAwEAAQ=="
)


def test_short_rsa_key_is_fail() -> None:
    [r] = verify(signed(), resolver(**{"rsa._domainkey.a.test": {"TXT": [WEAK_TXT]}}))
    assert r.result == "fail" and "512" in r.reason


def test_expired_signature_fails() -> None:
    sig = sign_message(MSG, domain="a.test", selector="rsa", private_pem=RSA_PRIV)
    t = int(re.search(rb"t=(\d+)", sig).group(1))  # type: ignore[union-attr]
    with_x = sig.replace(b"t=", b"x=%d; t=" % (t + 60), 1)
    [r] = verify(with_x + MSG, now=t + 3600)
    assert r.result == "fail" and "expired" in r.reason


def test_body_length_limit_flagged() -> None:
    pem = serialization.load_pem_private_key(RSA_PRIV.encode(), None).private_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    sig = dkimpy.sign(MSG, b"rsa", b"a.test", pem, length=True)
    [exact] = verify(sig + MSG)
    assert exact.result == "pass" and not exact.body_length_limited
    [extended] = verify(sig + MSG + b"Click here: http://evil.test/\r\n")
    assert extended.result == "pass" and extended.body_length_limited


def test_dns_outcomes() -> None:
    [r] = verify(signed(selector="missing"))
    assert r.result == "permerror" and "no key" in r.reason
    [r] = verify(signed(selector="broken"))
    assert r.result == "temperror"
    [r] = verify(signed(), resolver(**{"rsa._domainkey.a.test": {"TXT": ["v=DKIM1; p="]}}))
    assert r.result == "permerror" and "revoked" in r.reason
    [r] = verify(signed(), resolver(**{"rsa._domainkey.a.test": {"TXT": [ED_TXT]}}))
    assert r.result == "permerror"


def test_from_not_signed_is_permerror() -> None:
    sig = sign_message(MSG, domain="a.test", selector="rsa", private_pem=RSA_PRIV)
    unsigned_from = re.sub(rb"h=[^;]*;", b"h=subject:to;", sig.replace(b"\r\n ", b" "))
    [r] = verify(unsigned_from + MSG)
    assert r.result == "permerror" and "From" in r.reason


def test_garbage_signature_is_permerror() -> None:
    for junk in (
        b"DKIM-Signature: garbage\r\n",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=;\r\n",
        b"DKIM-Signature: v=1; v=1\r\n",
    ):
        [r] = verify(junk + MSG)
        assert r.result == "permerror", junk


def test_parse_tags() -> None:
    assert parse_tags("v=1; a=rsa-sha256;\r\n\t d=example.com ;") == {
        "v": "1",
        "a": "rsa-sha256",
        "d": "example.com",
    }
    for bad in ("v", "v=1; v=2", "=x", "1a=b", "a=b\x00c"):
        try:
            parse_tags(bad)
        except DKIMTagError:
            continue
        raise AssertionError(bad)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_parse_tags_fuzz(data: str | bytes) -> None:
    try:
        out = parse_tags(data)
    except DKIMTagError:
        return
    assert isinstance(out, dict)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_verify_never_raises(tail: bytes) -> None:
    results = verify(b"DKIM-Signature: " + tail + b"\r\n" + MSG)
    assert all(r.result in ("permerror", "fail", "neutral", "temperror") for r in results)


def test_generate_key_formats() -> None:
    assert RSA_PRIV.startswith("-----BEGIN PRIVATE KEY-----")
    assert parse_tags(RSA_TXT)["k"] == "rsa" and parse_tags(ED_TXT)["k"] == "ed25519"
    for bad in (("dsa", 2048), ("rsa", 512)):
        try:
            generate_key(*bad)
        except ValueError:
            continue
        raise AssertionError(bad)
