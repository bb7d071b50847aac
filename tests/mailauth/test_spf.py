from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mailyard.mailauth.spf import SPFSyntaxError, check_host, check_spf, parse_record
from mailyard.testing.dns import FakeResolver


def host(ip: str, domain: str, zones: dict, **kw):  # type: ignore[no-untyped-def,type-arg]
    r = FakeResolver(zones, servfail=kw.pop("servfail", ()))
    res = asyncio.run(check_host(ip, domain, f"x@{domain}", resolver=r, **kw))
    return res, r


def test_basic_mechanisms() -> None:
    z = {
        "a.test": {
            "TXT": ["v=spf1 a mx ip6:2001:db8::/32 -all"],
            "A": ["192.0.2.1"],
            "MX": [(10, "mx.a.test")],
        },
        "mx.a.test": {"A": ["192.0.2.2"]},
    }
    assert host("192.0.2.1", "a.test", z)[0].result == "pass"
    assert host("192.0.2.2", "a.test", z)[0].mechanism == "mx"
    assert host("2001:db8::5", "a.test", z)[0].result == "pass"
    res = host("192.0.2.99", "a.test", z)[0]
    assert (res.result, res.mechanism) == ("fail", "-all")


def test_ipv4_mapped_ipv6_is_ipv4() -> None:
    z = {"a.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]}}
    assert host("::ffff:192.0.2.7", "a.test", z)[0].result == "pass"


def test_lookup_limit_counts_queries() -> None:
    z = {f"l{i}.test": {"TXT": [f"v=spf1 include:l{i + 1}.test -all"]} for i in range(12)}
    z["l12.test"] = {"TXT": ["v=spf1 +all"]}
    res, r = host("192.0.2.1", "l0.test", z)
    assert res.result == "permerror" and "10" in res.reason
    assert res.lookups == 11
    assert sum(1 for _, t in r.queries if t == "TXT") == 11  # 1 initial + 10 includes


def test_void_lookup_limit() -> None:
    z = {"a.test": {"TXT": ["v=spf1 a:n1.a.test a:n2.a.test a:n3.a.test +all"]}}
    assert host("192.0.2.1", "a.test", z)[0].result == "permerror"
    z = {"a.test": {"TXT": ["v=spf1 a:n1.a.test a:n2.a.test +all"]}}
    assert host("192.0.2.1", "a.test", z)[0].result == "pass"


def test_mx_limit() -> None:
    z = {"a.test": {"TXT": ["v=spf1 mx -all"], "MX": [(i, f"m{i}.a.test") for i in range(11)]}}
    assert host("192.0.2.1", "a.test", z)[0].result == "permerror"


def test_temperror_and_none() -> None:
    assert host("192.0.2.1", "a.test", {}, servfail={"a.test"})[0].result == "temperror"
    assert host("192.0.2.1", "a.test", {})[0].result == "none"
    assert host("192.0.2.1", "a.test", {"a.test": {"TXT": ["hello"]}})[0].result == "none"
    two = {"a.test": {"TXT": ["v=spf1 -all", "v=spf1 +all"]}}
    assert host("192.0.2.1", "a.test", two)[0].result == "permerror"


def test_macros_and_exp() -> None:
    z = {
        "a.test": {"TXT": ["v=spf1 exists:%{ir}.%{lr-}.lp._spf.%{d} -all exp=why.%{d}"]},
        "1.2.0.192.x.y.lp._spf.a.test": {"A": ["127.0.0.2"]},
        "why.a.test": {"TXT": ["%{i} is not allowed to send for %{d} (%{s})"]},
    }
    r = FakeResolver(z)
    ok = asyncio.run(check_host("192.0.2.1", "a.test", "y-x@a.test", resolver=r))
    assert ok.result == "pass"
    bad = asyncio.run(check_host("192.0.2.9", "a.test", "y-x@a.test", resolver=r))
    assert bad.result == "fail"
    assert bad.explanation == "192.0.2.9 is not allowed to send for a.test (y-x@a.test)"


def test_check_spf_identities() -> None:
    z = {
        "a.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
        "helo.a.test": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
    }
    r = FakeResolver(z)
    res = asyncio.run(check_spf("192.0.2.1", "<bob@a.test>", "helo.a.test", resolver=r))
    assert (res.result, res.identity, res.domain, res.sender) == (
        "pass",
        "mailfrom",
        "a.test",
        "bob@a.test",
    )
    res = asyncio.run(check_spf("192.0.2.1", "<>", "helo.a.test", resolver=r))
    assert (res.result, res.identity, res.domain, res.sender) == (
        "pass",
        "helo",
        "helo.a.test",
        "postmaster@helo.a.test",
    )


def test_parse_record_errors() -> None:
    good = parse_record(
        "v=spf1 ip4:192.0.2.0/24 a:%{d}/24//64 mx ?include:x.test "
        "exists:%{ir}.x.test redirect=r.test exp=e.test foo=bar -all"
    )
    assert [m.name for m in good.mechanisms] == ["ip4", "a", "mx", "include", "exists", "all"]
    assert good.dns_terms == 5
    for bad in (
        "v=spf1 ip4:1.2.3.4/33",
        "v=spf1 a:foo",
        "v=spf1 redirect=a.test redirect=b.test",
        "v=spf1 bogus",
        "v=spf1 %{x}.test",
        "v=spf1 include",
        "v=spf1 a:x.test\t-all",
        "v=spf1 exists:%{z}.a.test",
        "spf1 -all",
        "v=spf1 ip6:1.2.3.4",
    ):
        try:
            parse_record(bad)
        except SPFSyntaxError:
            continue
        raise AssertionError(bad)


SPF_ALPHABET = st.sampled_from(
    [
        " ",
        "a",
        "mx",
        "ptr",
        "all",
        "-",
        "~",
        "+",
        "?",
        ":",
        "/",
        "//",
        "%{",
        "}",
        "%%",
        "ir",
        "d",
        "l",
        "2",
        "32",
        "128",
        "ip4:",
        "ip6:",
        "192.0.2.1",
        "::1",
        "include:",
        "exists:",
        "redirect=",
        "exp=",
        ".test",
        "x",
        "=",
        "\x00",
        "é",
        "%",
        ".",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=120), st.lists(SPF_ALPHABET, max_size=30).map("".join)))
def test_parse_record_fuzz(body: str) -> None:
    for text in (body, "v=spf1 " + body):
        try:
            rec = parse_record(text)
        except SPFSyntaxError:
            continue
        assert rec.dns_terms >= 0


@settings(max_examples=150, deadline=None)
@given(st.lists(SPF_ALPHABET, max_size=25).map("".join))
def test_check_host_fuzz_never_raises(body: str) -> None:
    z = {"a.test": {"TXT": ["v=spf1 " + body], "A": ["192.0.2.1"]}, "x.test": {"A": ["127.0.0.2"]}}
    res = host("192.0.2.1", "a.test", z)[0]
    assert res.result in ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
