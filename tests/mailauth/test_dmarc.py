from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mailyard.mailauth.dkim import DKIMResult
from mailyard.mailauth.dmarc import (
    DMARCSyntaxError,
    aligned,
    check_dmarc,
    organizational_domain,
    parse_record,
)
from mailyard.mailauth.spf import SPFResult
from mailyard.testing.dns import FakeResolver


def run(
    frm: list[str] | bytes,
    spf: SPFResult | None,
    mf: str | None,
    dkim: list[DKIMResult],
    resolver: FakeResolver,
    rand: float = 0.0,
):  # type: ignore[no-untyped-def]
    return asyncio.run(check_dmarc(frm, spf, mf, dkim, resolver=resolver, rand=lambda: rand))


def zone(**records: str) -> FakeResolver:
    return FakeResolver({f"_dmarc.{d.replace('_', '.')}": {"TXT": [t]} for d, t in records.items()})


def test_parse_record() -> None:
    r = parse_record(
        "v=DMARC1; p=reject; sp=quarantine; adkim=s; aspf=r; pct=20; "
        "rua=mailto:a@x.test,mailto:b@x.test"
    )
    assert (r.p, r.sp, r.adkim, r.aspf, r.pct) == ("reject", "quarantine", "s", "r", 20)
    assert r.rua == ("mailto:a@x.test", "mailto:b@x.test")
    assert parse_record("v=DMARC1;p=none").p == "none"
    # no/invalid p= but valid rua → p=none (RFC 7489 §6.6.3)
    assert parse_record("v=DMARC1; rua=mailto:d@x.test").p == "none"
    # bad optional values → defaults
    r = parse_record("v=DMARC1; p=quarantine; adkim=x; pct=abc")
    assert (r.adkim, r.pct) == ("r", 100)
    for bad in ("v=DMARC2; p=none", "p=none; v=DMARC1", "v=DMARC1; p=bogus", "", "v=spf1 -all"):
        try:
            parse_record(bad)
        except DMARCSyntaxError:
            continue
        raise AssertionError(bad)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_parse_record_fuzz(text: str) -> None:
    for candidate in (text, "v=DMARC1;" + text, "v=DMARC1; p=reject;" + text):
        try:
            r = parse_record(candidate)
        except DMARCSyntaxError:
            continue
        assert r.p in ("none", "quarantine", "reject") and 0 <= r.pct <= 100


def test_org_domain_and_alignment() -> None:
    assert organizational_domain("mail.sub.example.co.uk") == "example.co.uk"
    assert organizational_domain("a.test") == "a.test"
    assert aligned("bounce.example.com", "example.com", "r")
    assert not aligned("bounce.example.com", "example.com", "s")
    assert aligned("Example.COM", "example.com", "s")
    assert not aligned("example.com", "example.org", "r")
    assert not aligned("a.example.co.uk", "b.other.co.uk", "r")


DKIM_SUB = DKIMResult("pass", domain="mail.example.com", selector="s")


def test_relaxed_vs_strict_dkim_alignment() -> None:
    relaxed = zone(example_com="v=DMARC1; p=reject")
    strict = zone(example_com="v=DMARC1; p=reject; adkim=s")
    r = run(["a@example.com"], None, None, [DKIM_SUB], relaxed)
    assert r.result == "pass" and r.dkim_aligned
    r = run(["a@example.com"], None, None, [DKIM_SUB], strict)
    assert r.result == "fail" and not r.dkim_aligned and r.disposition == "reject"


def test_relaxed_vs_strict_spf_alignment() -> None:
    spf = SPFResult("pass", "bounces.example.com")
    r = run(
        ["a@example.com"], spf, "bounces.example.com", [], zone(example_com="v=DMARC1; p=reject")
    )
    assert r.result == "pass" and r.spf_aligned
    r = run(
        ["a@example.com"],
        spf,
        "bounces.example.com",
        [],
        zone(example_com="v=DMARC1; p=reject; aspf=s"),
    )
    assert r.result == "fail" and not r.spf_aligned
    # SPF that did not pass never aligns
    r = run(
        ["a@example.com"],
        SPFResult("softfail", "example.com"),
        "example.com",
        [],
        zone(example_com="v=DMARC1; p=reject"),
    )
    assert r.result == "fail"


def test_org_domain_fallback_uses_sp() -> None:
    res = zone(example_com="v=DMARC1; p=reject; sp=quarantine")
    r = run(["x@news.example.com"], None, None, [], res)
    assert (r.result, r.policy, r.record_domain, r.org_domain) == (
        "fail",
        "quarantine",
        "example.com",
        "example.com",
    )
    assert ("_dmarc.news.example.com", "TXT") in res.queries
    # no sp=: p applies to subdomains
    r = run(["x@news.example.com"], None, None, [], zone(example_com="v=DMARC1; p=reject"))
    assert r.policy == "reject"
    # a record at the subdomain itself wins, and its p= applies
    r = run(
        ["x@news.example.com"],
        None,
        None,
        [],
        zone(example_com="v=DMARC1; p=reject", news_example_com="v=DMARC1; p=none"),
    )
    assert (r.policy, r.record_domain) == ("none", "news.example.com")


def test_pct_sampling() -> None:
    res = zone(example_com="v=DMARC1; p=reject; pct=25")
    inside = run(["x@example.com"], None, None, [], res, rand=0.10)
    assert (inside.disposition, inside.pct_applied) == ("reject", True)
    outside = run(["x@example.com"], None, None, [], res, rand=0.30)
    assert (outside.disposition, outside.pct_applied) == ("quarantine", False)
    res = zone(example_com="v=DMARC1; p=quarantine; pct=0")
    assert run(["x@example.com"], None, None, [], res, rand=0.0).disposition == "none"


def test_none_temperror_permerror() -> None:
    assert run(["x@nodmarc.test"], None, None, [], FakeResolver({})).result == "none"
    tf = FakeResolver({}, servfail={"_dmarc.example.com"})
    assert run(["x@example.com"], None, None, [], tf).result == "temperror"
    two = FakeResolver({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=none", "v=DMARC1; p=reject"]}})
    r = run(["x@example.com"], None, None, [], two)
    assert r.result == "permerror" and r.disposition == "none"
    bad = zone(example_com="v=DMARC1; p=whatever")
    assert run(["x@example.com"], None, None, [], bad).result == "permerror"
    # a non-DMARC TXT at _dmarc is ignored
    other = zone(example_com="some verification token")
    assert run(["x@example.com"], None, None, [], other).result == "none"


def test_from_header_problems() -> None:
    res = zone(example_com="v=DMARC1; p=none")
    for values in (
        [],
        ["a@example.com", "b@example.com"],
        ["a@example.com, b@other.test"],
        ["undisclosed"],
    ):
        r = run(values, None, None, [], res)
        assert (r.result, r.disposition) == ("fail", "reject"), values
        assert r.reason
    # two addresses, same domain: evaluated normally
    r = run(["a@example.com, b@example.com"], None, None, [], res)
    assert r.result == "fail" and r.policy == "none" and r.domain == "example.com"
    # header block input
    msg = b'From: "Alice" <alice@Example.COM>\r\nSubject: x\r\n\r\nbody'
    r = run(msg, None, None, [DKIMResult("pass", domain="example.com")], res)
    assert r.result == "pass" and r.domain == "example.com"


def test_length_limited_dkim_does_not_count() -> None:
    res = zone(example_com="v=DMARC1; p=reject")
    d = DKIMResult("pass", domain="example.com", body_length_limited=True)
    r = run(["x@example.com"], None, None, [d], res)
    assert r.result == "fail" and not r.dkim_aligned
