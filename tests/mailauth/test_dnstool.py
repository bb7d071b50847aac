"""dnstool: the records we tell admins to publish pass our own checker (round trip), and the
checker catches the usual mistakes."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, cast

from mailyard.config import DEV_PORTS, STANDARD_PORTS, listener_ports, parse_config
from mailyard.dnstool.check import check_domain, findings_json, render_findings
from mailyard.dnstool.records import mta_sts_policy, records_for
from mailyard.mailauth.dkim import generate_key
from mailyard.testing.dns import FakeResolver

_, RSA_TXT = generate_key("rsa", bits=2048)
_, ED_TXT = generate_key("ed25519")


def zone_from_lines(lines: list[str]) -> dict:  # type: ignore[type-arg]
    """A tiny BIND-line reader for what records_for emits."""
    z: dict = {}  # type: ignore[type-arg]
    for line in lines:
        if not line or line.startswith((";", "$")):
            continue
        name, _in, rtype, rdata = line.split(None, 3)
        node = z.setdefault(name.rstrip("."), {})
        if rtype == "TXT":
            value = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', rdata))
            node.setdefault("TXT", []).append(value)
        elif rtype == "MX":
            pref, host = rdata.split()
            node.setdefault("MX", []).append((int(pref), host))
        elif rtype in ("A", "AAAA"):
            node.setdefault(rtype, []).append(rdata)
        elif rtype == "CNAME":
            node["CNAME"] = rdata
        elif rtype == "SRV":
            prio, weight, port, target = rdata.split()
            node.setdefault("SRV", []).append((int(prio), int(weight), int(port), target))
    return z


def lines() -> list[str]:
    return records_for(
        "example.com",
        hostname="mail.example.com",
        ip4="192.0.2.1",
        ip6="2001:db8::1",
        dkim_selectors=[("r1", "rsa-sha256", RSA_TXT), ("e1", "ed25519-sha256", ED_TXT)],
        ports=STANDARD_PORTS,
    )


def test_records_content() -> None:
    out = lines()
    text = "\n".join(out)
    assert "example.com. IN MX 10 mail.example.com." in out
    assert 'example.com. IN TXT "v=spf1 mx ip4:192.0.2.1 ip6:2001:db8::1 -all"' in out
    assert (
        "r1._domainkey.example.com. IN TXT" in text and "e1._domainkey.example.com. IN TXT" in text
    )
    assert re.search(r'_dmarc\.example\.com\. IN TXT "v=DMARC1; p=none; rua=mailto:', text)
    assert "p=quarantine" in text and "p=reject" in text  # rollout advice
    assert re.search(r'_mta-sts\.example\.com\. IN TXT "v=STSv1; id=[0-9a-f]{20}"', text)
    assert ";   mode: testing" in out and ";   mx: mail.example.com" in out
    assert '_smtp._tls.example.com. IN TXT "v=TLSRPTv1; rua=mailto:' in text
    for srv in (
        "_submissions._tcp",
        "_submission._tcp",
        "_imaps._tcp",
        "_imap._tcp",
        "_pop3s._tcp",
        "_pop3._tcp",
    ):
        assert f"{srv}.example.com. IN SRV" in text
    # RFC 6186 §3 / RFC 8314 §5.1 with the standard ports, implicit TLS first
    assert [line for line in out if " IN SRV " in line] == [
        "_submissions._tcp.example.com. IN SRV 0 1 465 mail.example.com.",
        "_submission._tcp.example.com. IN SRV 10 1 587 mail.example.com.",
        "_imaps._tcp.example.com. IN SRV 0 1 993 mail.example.com.",
        "_imap._tcp.example.com. IN SRV 10 1 143 mail.example.com.",
        "_pop3s._tcp.example.com. IN SRV 20 1 995 mail.example.com.",
        "_pop3._tcp.example.com. IN SRV 30 1 110 mail.example.com.",
    ]
    assert "autoconfig.example.com. IN CNAME mail.example.com." in out
    # long DKIM values are split into ≤255-octet strings
    for line in out:
        for chunk in re.findall(r'"([^"]*)"', line):
            assert len(chunk) <= 255
    assert mta_sts_policy(["mx.example.com"], mode="enforce").splitlines() == [
        "version: STSv1",
        "mode: enforce",
        "mx: mx.example.com",
        "max_age: 604800",
    ]


def _srv(ports: Any) -> dict[str, str]:
    out = records_for("example.com", hostname="mail.example.com", dkim_selectors=[],
                      ports=ports)
    return {line.split(".", 1)[0]: line.split(" IN SRV ", 1)[1]
            for line in out if " IN SRV " in line and not line.startswith(";")}


def test_srv_records_carry_the_configured_ports() -> None:
    assert _srv(DEV_PORTS) == {
        "_submissions": "0 1 2465 mail.example.com.",
        "_submission": "10 1 2587 mail.example.com.",
        "_imaps": "0 1 2993 mail.example.com.",
        "_imap": "10 1 2143 mail.example.com.",
        "_pop3s": "20 1 2995 mail.example.com.",
        "_pop3": "30 1 2110 mail.example.com.",
    }
    # The ports come from [listen]; a listener set to "" (or absent from the mapping) is
    # published as not offered: target "." (RFC 6186 §4, RFC 2782).
    cfg = parse_config('[listen]\nimap = "0.0.0.0:1143"\npop3 = ""\npop3s = ""\n',
                       data_dir="/nonexistent")
    srv = _srv(listener_ports(cfg.listen))
    assert srv["_imap"] == "10 1 1143 mail.example.com."
    assert srv["_submissions"] == "0 1 2465 mail.example.com."  # the config's default
    assert srv["_pop3"] == "0 0 0 ." and srv["_pop3s"] == "0 0 0 ."
    assert _srv({"imaps": 993})["_submission"] == "0 0 0 ."
    # Port 0 (picked at start) has no fixed port to publish: a comment, not a record.
    out = records_for("example.com", hostname="mail.example.com", dkim_selectors=[],
                      ports={**DEV_PORTS, "imaps": 0})
    assert not [line for line in out if line.startswith("_imaps.")]
    assert any(line.startswith("; _imaps._tcp.example.com. IN SRV") and "port 0" in line
               for line in out)


def test_srv_records_match_the_autoconfig_endpoints() -> None:
    """`dns records` and the HTTP autoconfig answer name the same services and ports."""
    from mailyard.server.context import ServerContext
    from mailyard.web.app import autoconfig_xml

    cfg = parse_config('hostname = "mail.example.com"\n[listen]\nsubmissions = ":4650"\n'
                       'pop3 = ""\n', data_dir="/nonexistent")
    none = cast(Any, None)
    ctx = ServerContext(config=cfg, store=none, tls=None, auth=none, recipients=none,
                        resolver=FakeResolver({}))
    xml = autoconfig_xml(ctx, "example.com")
    advertised = sorted(int(p) for p in re.findall(r"<port>(\d+)</port>", xml))
    srv = _srv(listener_ports(cfg.listen))
    published = sorted(int(v.split()[2]) for v in srv.values() if not v.endswith(" ."))
    assert published == advertised and 4650 in published and 2110 not in published
    assert srv["_pop3"] == "0 0 0 ."


def check(z: dict, selectors: list[str] = ["r1", "e1"], **kw):  # type: ignore[no-untyped-def,type-arg]  # noqa: B006
    return asyncio.run(
        check_domain(
            "example.com",
            resolver=FakeResolver(z, **kw),
            selectors=selectors,
            expected={"hostname": "mail.example.com"},
        )
    )


def by_kind(findings) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return {f.kind: f for f in findings}


def test_round_trip_records_pass_checker() -> None:
    z = zone_from_lines(lines())
    z["192.0.2.1"] = {"PTR": ["mail.example.com"]}
    z["2001:db8::1"] = {"PTR": ["mail.example.com"]}
    f = by_kind(check(z))
    statuses = {k: v.status for k, v in f.items()}
    assert statuses == {
        "mx": "ok",
        "spf": "ok",
        "dkim:r1": "ok",
        "dkim:e1": "ok",
        "dmarc": "warn",
        "mta-sts": "ok",
        "tls-rpt": "ok",
        "srv": "ok",
        "ptr:mail.example.com": "ok",
    }, statuses
    assert "6 client service(s) published" in f["srv"].message
    assert "p=none" in f["dmarc"].message
    text = render_findings(check(z))
    assert "0 error(s), 1 warning(s)" in text
    assert json.loads(findings_json(check(z)))[0]["kind"] == "mx"


def test_checker_catches_mistakes() -> None:
    weak = (
        "k=rsa; p=MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBANmBe10IgY+u7h3enWTukkqtUD5PR52T"
        "b/mPfjC0QJTocVBq6Za/PlzfV+Py92VaCak19F4WrbVTK5Gg5tW220MCAwEAAQ=="
    )
    _, rsa1024 = generate_key("rsa", bits=1024)
    z = {
        "example.com": {
            "MX": [(10, "mail.example.com")],
            "TXT": ["v=spf1 " + " ".join(f"include:i{i}.test" for i in range(6)) + " -all"],
        },
        **{f"i{i}.test": {"TXT": ["v=spf1 a mx -all"]} for i in range(6)},
        "mail.example.com": {"A": ["192.0.2.1"]},
        "192.0.2.1": {"PTR": ["other.example.net"]},
        "r1._domainkey.example.com": {"TXT": [weak]},
        "m1._domainkey.example.com": {"TXT": [rsa1024]},
        "_dmarc.example.com": {"TXT": ["v=DMARC1; p=bogus"]},
        "_mta-sts.example.com": {"TXT": ["v=STSv1; id=not valid!"]},
    }
    f = by_kind(check(z, ["r1", "m1", "gone"]))
    assert f["spf"].status == "error" and "18 DNS-querying terms" in f["spf"].message
    assert f["dkim:r1"].status == "error" and "512" in f["dkim:r1"].message
    assert f["dkim:m1"].status == "warn" and "1024" in f["dkim:m1"].message
    assert f["dkim:gone"].status == "error"
    assert f["dmarc"].status == "error" and "syntax" in f["dmarc"].message
    assert f["mta-sts"].status == "error" and f["tls-rpt"].status == "warn"
    assert f["ptr:mail.example.com"].status == "error"


def test_checker_missing_everything_and_temp_failures() -> None:
    f = by_kind(check({"example.com": {}}, []))
    assert f["mx"].status == "error" and f["spf"].status == "error"
    assert f["dmarc"].status == "error" and f["dkim"].status == "warn"
    assert f["srv"].status == "warn" and "no SRV records" in f["srv"].message
    f = by_kind(check({"example.com": {"MX": [(0, "")]}}, [], servfail={"_dmarc.example.com"}))
    assert f["mx"].status == "warn" and "null MX" in f["mx"].message
    assert f["dmarc"].status == "warn" and "temporary" in f["dmarc"].message
    bad_spf = {
        "example.com": {"TXT": ["v=spf1 +all"], "MX": [(10, "mail.example.com")]},
        "mail.example.com": {},
    }
    assert by_kind(check(bad_spf, []))["spf"].status == "error"
    two = {"example.com": {"TXT": ["v=spf1 -all", "v=spf1 mx -all"]}}
    assert "2 SPF records" in by_kind(check(two, []))["spf"].message
